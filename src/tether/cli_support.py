"""What the `tether` command modules share: options, errors and exit codes, settings, async entry.

Exit codes: 0 the command did its job, 1 the run (or gate) did not succeed, 2 usage or configuration
error (the message names the bad value).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, cast

import typer
from rich.console import Console

from tether.config import Settings, load_settings
from tether.errors import ConfigurationError, EscalationNotFoundError, InvalidAnswerError, TetherError
from tether.policy.redaction import Redactor

T = TypeVar("T")

DbOption = Annotated[
    str | None, typer.Option("--db", help="Run store URL (default sqlite:///tether.db, or TETHER_DB).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="Settings file (default ./tether.toml if present).")
]
RawOption = Annotated[bool, typer.Option("--raw", help="Print payloads as stored, PII and secrets included.")]


def console() -> Console:
    return Console(stderr=False, highlight=False)


def err(message: str, code: int = 2) -> typer.Exit:
    """Print an error and return the exit to raise (2: bad usage or configuration)."""
    Console(stderr=True, highlight=False).print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_settings(config, **overrides)
    except ConfigurationError as exc:
        raise err(str(exc)) from None


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a command's coroutine; tether's errors become exit codes with their message."""
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except (ConfigurationError, InvalidAnswerError, EscalationNotFoundError) as exc:
        raise err(str(exc)) from None
    except TetherError as exc:
        raise err(f"{type(exc).__name__}: {exc}", 1) from None


def importable_cwd() -> None:
    """Let `module:attribute` targets name modules in the working directory."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def masked(items: list[dict[str, Any]], raw: bool) -> list[dict[str, Any]]:
    """Payloads as people and files outside the store should see them: PII and secrets masked."""
    if raw:
        return items
    redactor = Redactor()
    return [cast("dict[str, Any]", redactor.redact_json(item)) for item in items]


def clip(value: Any, width: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def when(epoch_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_ms / 1000))
