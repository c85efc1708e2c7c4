"""Deterministic models for tests and the demo: a scripted list of turns, or a Python function."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tether.errors import ConfigurationError, ScriptExhaustedError
from tether.models.base import estimate_tokens
from tether.types import ModelRequest, ModelResponse, ToolCall, Usage


class ScriptedToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    arguments: dict[str, Any] = Field(default_factory=dict)


class ScriptedTurn(BaseModel):
    """One assistant turn of a script: tool calls, or content, optionally with a confidence."""

    model_config = ConfigDict(extra="forbid")

    content: str | None = None
    tool_calls: list[ScriptedToolCall] | None = None
    confidence: float | None = Field(default=None, ge=0.0, le=1.0)

    def model_post_init(self, context: Any, /) -> None:
        if self.content is None and not self.tool_calls:
            raise ValueError("a turn needs 'content' or a non-empty 'tool_calls'")


def load_script(path: str | Path) -> list[ScriptedTurn]:
    """Read a script file: a JSON list of turns. Errors name the file and the bad turn."""
    file = Path(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"script file {str(file)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"script file {str(file)!r} cannot be read as UTF-8 text: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"script file {str(file)!r} is not valid JSON: {exc}") from None
    if not isinstance(raw, list) or not raw:
        raise ConfigurationError(f"script file {str(file)!r} must hold a non-empty JSON list of turns")
    turns = []
    for index, item in enumerate(raw):
        try:
            turns.append(ScriptedTurn.model_validate(item))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "turn"
            raise ConfigurationError(
                f"script file {str(file)!r}, turn {index}: {where}: {first['msg']}"
            ) from None
    return turns


class ScriptedModel:
    """Answers turn N of every run with the script's turn N; stateless, so replay and crashes are safe."""

    def __init__(self, turns: Sequence[ScriptedTurn | dict[str, Any]], *, name: str = "scripted") -> None:
        self._turns = [t if isinstance(t, ScriptedTurn) else ScriptedTurn.model_validate(t) for t in turns]
        self._name = name

    @classmethod
    def from_file(cls, path: str | Path) -> ScriptedModel:
        return cls(load_script(path), name=f"scripted:{path}")

    @property
    def name(self) -> str:
        return self._name

    async def request(self, request: ModelRequest) -> ModelResponse:
        if request.turn >= len(self._turns):
            raise ScriptExhaustedError(
                f"{self._name} has {len(self._turns)} turns; the run asked for turn {request.turn + 1}"
            )
        turn = self._turns[request.turn]
        calls = tuple(
            ToolCall(
                id=f"call_{request.turn}_{index}",
                name=call.name,
                arguments=call.arguments,
                raw_arguments=json.dumps(call.arguments),
            )
            for index, call in enumerate(turn.tool_calls or ())
        )
        prompt = sum(estimate_tokens(m.content) for m in request.messages)
        answer = estimate_tokens((turn.content or "") + "".join(c.raw_arguments for c in calls))
        return ModelResponse(
            content=turn.content or "",
            tool_calls=calls,
            usage=Usage(input_tokens=prompt, output_tokens=answer, cost_usd=0.0),
            model=self._name,
            finish_reason="tool_calls" if calls else "stop",
            confidence=turn.confidence,
        )

    async def aclose(self) -> None:
        return None


ModelFunction = Callable[[ModelRequest], ModelResponse | Awaitable[ModelResponse]]


class FunctionModel:
    """A model whose every turn is computed by a Python function of the request (tests, demos)."""

    def __init__(self, function: ModelFunction, *, name: str = "function") -> None:
        self._function = function
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    async def request(self, request: ModelRequest) -> ModelResponse:
        result = self._function(request)
        if inspect.isawaitable(result):
            result = await result
        assert isinstance(result, ModelResponse)
        if result.usage.cost_usd is None:  # a local function bills nothing
            result = replace(result, usage=replace(result.usage, cost_usd=0.0))
        return result

    async def aclose(self) -> None:
        return None
