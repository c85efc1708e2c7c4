"""Fixtures for runtime tests: a real SQLite file, a hand-moved clock, a scripted FunctionModel."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tether import FunctionModel, ModelRequest, ModelResponse, Runtime, SqliteRunStore
from tether.errors import ScriptExhaustedError


class Clock:
    """Milliseconds since the epoch, advanced only when the test says so."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


class ScriptModel:
    """Turn N answers with `turns[N]` (or raises it, if it is an exception); records every request."""

    def __init__(self, *turns: ModelResponse | BaseException, name: str = "script") -> None:
        self.turns: Sequence[ModelResponse | BaseException] = turns
        self.requests: list[ModelRequest] = []
        self.model = FunctionModel(self._answer, name=name)

    def _answer(self, request: ModelRequest) -> ModelResponse:
        self.requests.append(request)
        if request.turn >= len(self.turns):
            raise ScriptExhaustedError(f"no turn {request.turn} in the test script")
        answer = self.turns[request.turn]
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def requested_turns(self) -> list[int]:
        return [request.turn for request in self.requests]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tether.db"


@pytest.fixture
async def store(db_path: Path, clock: Clock) -> AsyncIterator[SqliteRunStore]:
    """A store on a real file whose time only moves when the test moves `clock`."""
    opened = SqliteRunStore(db_path, clock=clock)
    yield opened
    await opened.close()


@pytest.fixture
async def runtime(store: SqliteRunStore) -> AsyncIterator[Runtime]:
    opened = Runtime(store, worker_id="test-worker")
    yield opened
    await opened.aclose()


@pytest.fixture
def script() -> type[ScriptModel]:
    """The ScriptModel class: `script(turn0, turn1, ...)` builds one."""
    return ScriptModel
