"""Confidence gates: act when sure, ask the user to confirm when unsure, a person when doubtful."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime
from tether.errors import ConfigurationError
from tether.policy.gates import ConfidenceGate, asks_for_a_human, rephrasings


def answering(*turns: tuple[str, float | None]) -> FunctionModel:
    def respond(request: ModelRequest) -> ModelResponse:
        content, confidence = turns[min(request.turn, len(turns) - 1)]
        return ModelResponse(content=content, confidence=confidence)

    return FunctionModel(respond, name="gated")


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'gates.db'}") as rt:
        yield rt


async def test_confident_answer_is_acted_on(runtime: Runtime) -> None:
    """Above 0.85 the answer goes out; the decision is recorded with its score."""
    run = await runtime.run(
        Agent("a", model=answering(("Your order shipped.", 0.93)), gate=ConfidenceGate()), "q"
    )
    assert run.status == RunStatus.SUCCEEDED
    events = await runtime.events(run.id)
    [decision] = [e.data for e in events if e.kind == "gate.decision"]
    assert decision == {"turn": 0, "confidence": 0.93, "action": "act"}


async def test_middle_confidence_asks_the_user_to_confirm(runtime: Runtime) -> None:
    """Between 0.60 and 0.85 the run waits for confirmation; confirmed, the answer goes out."""
    agent = Agent("a", model=answering(("Cancel the whole order?", 0.7)), gate=ConfidenceGate())
    run = await runtime.run(agent, "cancel my stuff")
    assert run.status == RunStatus.WAITING_HUMAN
    [question] = await runtime.inbox()
    assert (question.reason, question.options) == ("user_confirmation", ("confirm", "reject"))
    await runtime.answer(question.id, "confirm", by="customer")
    done = await runtime.execute(run.id)
    assert done.status == RunStatus.SUCCEEDED
    assert done.output == "Cancel the whole order?"


async def test_rejected_answer_goes_back_to_the_model(runtime: Runtime) -> None:
    """A rejected answer is not sent; the model hears why and answers again."""
    agent = Agent(
        "a", model=answering(("Cancel everything?", 0.7), ("Only item 2 then.", 0.95)), gate=ConfidenceGate()
    )
    run = await runtime.run(agent, "cancel")
    [question] = await runtime.inbox()
    await runtime.answer(question.id, "reject", text="only the second item", by="customer")
    done = await runtime.execute(run.id)
    assert done.output == "Only item 2 then."


async def test_low_confidence_goes_to_a_person(runtime: Runtime) -> None:
    """Below 0.60 the run is handed to a person, who may let it proceed."""
    run = await runtime.run(Agent("a", model=answering(("Maybe?", 0.3)), gate=ConfidenceGate()), "q")
    [question] = await runtime.inbox()
    assert question.reason == "low_confidence"
    await runtime.answer(question.id, "proceed", by="ana")
    assert (await runtime.execute(run.id)).output == "Maybe?"


async def test_verifier_supplies_the_confidence(runtime: Runtime) -> None:
    """Without a model-stated confidence the verifier hook decides."""
    agent = Agent("a", model=answering(("x", None)), gate=ConfidenceGate(), verifier=lambda req, resp: 0.1)
    run = await runtime.run(agent, "q")
    assert run.status == RunStatus.WAITING_HUMAN


async def test_asking_for_a_human_transfers_at_once(runtime: Runtime) -> None:
    """ "I want to talk to a human" skips the model entirely."""
    calls: list[int] = []
    model = FunctionModel(lambda r: calls.append(1) or ModelResponse(content="hi"), name="m")
    run = await runtime.run(Agent("a", model=model, gate=ConfidenceGate()), "Let me talk to a human please")
    assert run.status == RunStatus.WAITING_HUMAN
    assert calls == []
    [question] = await runtime.inbox()
    assert question.reason == "human_requested"


def test_human_request_detection() -> None:
    """Requests for a person are recognised; ordinary questions are not."""
    assert asks_for_a_human("Can I speak to a manager?")
    assert asks_for_a_human("I want a real person")
    assert not asks_for_a_human("Where is my parcel?")


def test_thresholds_are_validated() -> None:
    """confirm_at above act_at is a configuration error."""
    with pytest.raises(ConfigurationError):
        ConfidenceGate(act_at=0.5, confirm_at=0.9)


async def test_a_user_rephrasing_the_same_question_is_transferred(runtime: Runtime) -> None:
    """The third asking of one question in a session, in other words, goes to a person, not the model."""
    calls: list[int] = []
    model = FunctionModel(lambda r: calls.append(1) or ModelResponse(content="Try again later."), name="m")
    agent = Agent("a", model=model, gate=ConfidenceGate())
    first = await runtime.run(agent, "Where is my refund for order A-1002?", session_id="chat-9")
    second = await runtime.run(agent, "where is the refund for my order A-1002", session_id="chat-9")
    other = await runtime.run(agent, "Where is my refund for order A-1002?", session_id="chat-10")
    third = await runtime.run(agent, "My refund for A-1002, where is it??", session_id="chat-9")
    assert [r.status for r in (first, second, other)] == [RunStatus.SUCCEEDED] * 3
    assert third.status == RunStatus.WAITING_HUMAN
    assert len(calls) == 3
    [decision] = [e.data for e in await runtime.events(third.id) if e.kind == "gate.decision"]
    assert decision == {"turn": 0, "action": "transfer", "trigger": "rephrasing", "rephrasings": 2}
    [question] = await runtime.inbox()
    assert question.reason == "human_requested"


def test_rephrasings_count_similar_messages_in_a_row() -> None:
    """Counting stops at the first earlier message that asks something else."""
    earlier = ["where is my refund for A-1", "refund A-1 where", "what are your opening hours", "refund A-1"]
    assert rephrasings("where's the refund for A-1?", earlier, 0.5) == 2
    assert rephrasings("opening hours?", earlier, 0.5) == 0
    assert rephrasings("refund for A-1", ["refund for A-1", "refund for A-1"], 0.5) == 2
