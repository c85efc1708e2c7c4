#!/usr/bin/env bash
# The whole check, the same locally and in CI: install, lint, type-check, layer contract, tests.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev,semantic,postgres]'

echo "== ruff"
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
echo "== mypy (strict)"
.venv/bin/mypy
echo "== import layers"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/python -m pytest -n "${TETHER_TEST_WORKERS:-2}" "$@"
