"""The Prometheus alert rules in deploy/prometheus: valid, and behaving as their promtool unit tests say."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = Path("deploy/prometheus/tether-alerts.yml")
RULE_TESTS = Path("deploy/prometheus/tether-alerts.test.yml")
INSTALL_HINT = (
    "promtool is not on PATH; install Debian's prometheus package "
    "(apt-get install --no-install-recommends prometheus), as .ci/run does"
)


def _promtool() -> str:
    """The promtool executable; skips the test locally, fails it in CI, when it is missing."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{INSTALL_HINT}: it is required in CI")
        pytest.skip(INSTALL_HINT)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=30, check=False
    )


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_rule_file_passes_promtool_check() -> None:
    """`promtool check rules` accepts the rule file and finds all five tether alerts."""
    proc = _run("check", "rules", str(RULES))
    assert proc.returncode == 0, _output(proc)
    assert "SUCCESS: 6 rules found" in proc.stdout, _output(proc)


def test_rule_unit_tests_pass() -> None:
    """Every alert fires on its firing series and stays silent below threshold or `for:`."""
    proc = _run("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, _output(proc)
    assert "SUCCESS" in proc.stdout, _output(proc)


def test_broken_rule_file_fails_promtool_check(tmp_path: Path) -> None:
    """A copy of the rule file with an unparsable PromQL expression makes `promtool check rules` fail."""
    good = (ROOT / RULES).read_text()
    broken = good.replace("> 0.30", "> > 0.30")
    assert broken != good, "the mutation no longer applies; pick another expression to break"
    path = tmp_path / "tether-alerts.yml"
    path.write_text(broken)
    proc = _run("check", "rules", str(path))
    assert proc.returncode != 0, _output(proc)
    assert "TetherEscalationRateHigh" in proc.stdout + proc.stderr, _output(proc)
    assert "parse error" in proc.stdout + proc.stderr, _output(proc)


def test_missing_promtool_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """With CI=true and no promtool on PATH the tests fail, naming the package to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="install Debian's prometheus package"):
        _promtool()


def test_missing_promtool_skips_locally(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Outside CI, no promtool on PATH skips the tests instead of failing them."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="install Debian's prometheus package"):
        _promtool()
