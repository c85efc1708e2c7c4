"""Three-tier recovery: correction first, then the agent's alternative model once, then a person."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime, ToolCall, tool


@tool(side_effect="read")
def lookup(order_id: str) -> str:
    """Look up an order."""
    return "shipped"


def confused() -> FunctionModel:
    """A model that keeps calling a tool that does not exist."""

    def respond(request: ModelRequest) -> ModelResponse:
        return ModelResponse(tool_calls=(ToolCall(f"c{request.turn}", "lookup_v2", {}, "{}"),))

    return FunctionModel(respond, name="small")


def capable(answer: str = "It shipped.") -> FunctionModel:
    def respond(request: ModelRequest) -> ModelResponse:
        if not any(m.role == "tool" and m.content == "shipped" for m in request.messages):
            arguments = {"order_id": "A-1"}
            return ModelResponse(
                tool_calls=(ToolCall(f"b{request.turn}", "lookup", arguments, json.dumps(arguments)),)
            )
        return ModelResponse(content=answer)

    return FunctionModel(respond, name="big")


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'recovery.db'}") as rt:
        yield rt


async def test_alternative_model_takes_over_after_repeated_invalid_calls(runtime: Runtime) -> None:
    """After 3 invalid turns the alternative model takes over once and finishes the run."""
    agent = Agent("desk", model=confused(), recovery_model=capable(), tools=[lookup])
    run = await runtime.run(agent, "where is A-1?")
    assert run.status == RunStatus.SUCCEEDED
    assert run.output == "It shipped."
    events = await runtime.events(run.id)
    [switch] = [e.data for e in events if e.kind == "recovery.alternative"]
    assert switch["reason"] == "invalid_tool_calls"
    assert [e.data["model"] for e in events if e.kind == "model.request"][-1] == "big"


async def test_without_an_alternative_a_person_decides(runtime: Runtime) -> None:
    """With no alternative model the same run goes straight to a person."""
    run = await runtime.run(Agent("desk", model=confused(), tools=[lookup]), "where is A-1?")
    assert run.status == RunStatus.WAITING_HUMAN


async def test_alternative_failing_too_goes_to_a_person(runtime: Runtime) -> None:
    """The alternative is tried once; when it fails as well, a person decides."""
    agent = Agent("desk", model=confused(), recovery_model=confused(), tools=[lookup])
    run = await runtime.run(agent, "where is A-1?")
    assert run.status == RunStatus.WAITING_HUMAN
    kinds = [e.kind for e in await runtime.events(run.id)]
    assert kinds.count("recovery.alternative") == 1


class Verdict(pydantic.BaseModel):
    approved: bool


async def test_alternative_fixes_structured_output(runtime: Runtime) -> None:
    """A bad structured answer, corrected once in vain, is answered by the alternative model."""
    bad = FunctionModel(lambda r: ModelResponse(content="yes!"), name="small")
    good = FunctionModel(lambda r: ModelResponse(content='{"approved": true}'), name="big")
    run = await runtime.run(Agent("judge", model=bad, recovery_model=good, output_type=Verdict), "ok?")
    assert run.status == RunStatus.SUCCEEDED
    assert Verdict.model_validate_json(run.output or "").approved
