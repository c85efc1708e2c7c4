"""Structured output: the final answer must fit the agent's pydantic type; one correction, then a person."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime


class Ticket(pydantic.BaseModel):
    category: str
    priority: int = pydantic.Field(ge=1, le=5)


def answering(*answers: str) -> tuple[FunctionModel, list[ModelRequest]]:
    seen: list[ModelRequest] = []

    def respond(request: ModelRequest) -> ModelResponse:
        seen.append(request)
        return ModelResponse(content=answers[min(request.turn, len(answers) - 1)])

    return FunctionModel(respond, name="classifier"), seen


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'out.db'}") as rt:
        yield rt


async def test_valid_answer_is_the_normalised_json(runtime: Runtime) -> None:
    """A fitting answer (even fenced in ```json) becomes the run's output as normalised JSON."""
    model, seen = answering('```json\n{"priority": 2, "category": "billing"}\n```')
    run = await runtime.run(Agent("triage", model=model, output_type=Ticket), "my invoice is wrong")
    assert run.status == RunStatus.SUCCEEDED
    assert Ticket.model_validate_json(run.output or "") == Ticket(category="billing", priority=2)
    assert "JSON schema" in seen[0].messages[0].content  # the model was told the schema


async def test_bad_answer_is_sent_back_once_with_the_error(runtime: Runtime) -> None:
    """A bad answer is corrected once: the model sees the validation error and answers again."""
    model, seen = answering(
        '{"category": "billing", "priority": 9}', '{"category": "billing", "priority": 5}'
    )
    run = await runtime.run(Agent("triage", model=model, output_type=Ticket), "urgent")
    assert run.status == RunStatus.SUCCEEDED
    assert len(seen) == 2
    correction = seen[1].messages[-1]
    assert correction.role == "user"
    assert "priority" in correction.content
    kinds = [e.kind for e in await runtime.events(run.id)]
    assert kinds.count("output.invalid") == 1


async def test_second_bad_answer_goes_to_a_person(runtime: Runtime) -> None:
    """Still wrong after the correction: the run waits for a person with the answer and the errors."""
    model, seen = answering("it's billing, I think")
    run = await runtime.run(Agent("triage", model=model, output_type=Ticket), "??")
    assert run.status == RunStatus.WAITING_HUMAN
    assert len(seen) == 2
    [question] = await runtime.inbox()
    assert question.reason == "invalid_output"
    assert question.context["context"]["answer"] == "it's billing, I think"
