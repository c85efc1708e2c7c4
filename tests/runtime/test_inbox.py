"""People in the loop: escalations land in the inbox, answers resume runs exactly as they say."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tether import (
    Agent,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RunStatus,
    Runtime,
    ToolCall,
    ToolContext,
    tool,
)
from tether.errors import EscalationNotFoundError, InvalidAnswerError
from tether.store import EventDraft, OperationWrite, SqliteRunStore


def calling(name: str, **arguments: Any) -> Any:
    """A model that calls `name` on every turn, forever."""

    def respond(request: ModelRequest) -> ModelResponse:
        call = ToolCall(f"call_{request.turn}", name, arguments, json.dumps(arguments))
        return ModelResponse(tool_calls=(call,))

    return FunctionModel(respond, name="looper")


def calling_then_answering(name: str, calls: int, answer: str, **arguments: Any) -> FunctionModel:
    def respond(request: ModelRequest) -> ModelResponse:
        if request.turn < calls:
            return ModelResponse(tool_calls=(ToolCall(f"call_{request.turn}", name, arguments, "{}"),))
        return ModelResponse(content=answer)

    return FunctionModel(respond, name="planner")


@tool(side_effect="read")
def ping() -> str:
    """Ping."""
    return "pong"


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'inbox.db'}") as rt:
        yield rt


async def test_step_limit_question_is_in_the_inbox_and_continue_grants_more_steps(runtime: Runtime) -> None:
    """A run out of steps waits in the inbox; "continue" grants another max_steps and it finishes."""
    agent = Agent("planner", model=calling_then_answering("ping", 3, "done"), tools=[ping], max_steps=2)
    run = await runtime.run(agent, "go")
    assert run.status == RunStatus.WAITING_HUMAN
    [question] = await runtime.inbox()
    assert (question.run_id, question.reason, question.options) == (
        run.id,
        "step_limit",
        ("continue", "takeover"),
    )
    escalation, applied = await runtime.answer(question.id, "continue", by="ana")
    assert applied
    assert (await runtime.store.get_run(run.id)).status == RunStatus.QUEUED
    assert await runtime.inbox() == []
    resumed = await runtime.execute(run.id)
    assert resumed.status == RunStatus.SUCCEEDED
    assert resumed.output == "done"
    kinds = [e.kind for e in await runtime.events(run.id)]
    assert kinds.count("escalation.answered") == kinds.count("escalation.applied") == 1
    assert escalation.answered_by == "ana"


async def test_takeover_ends_the_run_with_the_persons_reply(runtime: Runtime) -> None:
    """ "takeover" hands the run over for good: status escalated, output is the person's text."""
    agent = Agent("looper", model=calling("ping"), tools=[ping], max_steps=1)
    run = await runtime.run(agent, "go")
    [question] = await runtime.inbox()
    await runtime.answer(question.id, "takeover", text="I refunded you myself.", by="ana")
    ended = await runtime.execute(run.id)
    assert ended.status == RunStatus.ESCALATED
    assert ended.output == "I refunded you myself."


async def test_second_answer_is_not_applied(runtime: Runtime) -> None:
    """Answering twice applies the first answer once; the second reports who answered."""
    agent = Agent("looper", model=calling("ping"), tools=[ping], max_steps=1)
    run = await runtime.run(agent, "go")
    [question] = await runtime.inbox()
    first, second = await asyncio.gather(
        runtime.answer(question.id, "takeover", text="first", by="ana"),
        runtime.answer(question.id, "continue", by="bo"),
    )
    assert [first[1], second[1]] == [True, False]
    assert second[0].answered_by == "ana"
    assert second[0].answer == {"choice": "takeover", "text": "first"}
    kinds = [e.kind for e in await runtime.events(run.id)]
    assert kinds.count("escalation.answered") == 1


async def test_bad_answers_are_refused_with_the_options(runtime: Runtime) -> None:
    """An answer outside the options, a takeover without text or an unknown id is refused clearly."""
    agent = Agent("looper", model=calling("ping"), tools=[ping], max_steps=1)
    await runtime.run(agent, "go")
    [question] = await runtime.inbox()
    with pytest.raises(InvalidAnswerError, match="continue, takeover"):
        await runtime.answer(question.id, "maybe")
    with pytest.raises(InvalidAnswerError, match="--text"):
        await runtime.answer(question.id, "takeover")
    with pytest.raises(EscalationNotFoundError, match="esc_nope"):
        await runtime.answer("esc_nope", "continue")
    assert len(await runtime.inbox()) == 1  # nothing was lost or changed


class Mailer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []

    def tool(self) -> Any:
        @tool(side_effect="write", idempotent=False)
        def send_email(to: str, ctx: ToolContext) -> str:
            """Send an email (no idempotency keys)."""
            self.sent.append((to, ctx.attempt))
            return "sent"

        return send_email


async def crashed_with_intent(store: SqliteRunStore, agent: Agent) -> str:
    """A run whose worker recorded send_email's intent and then died (lease released to expiry)."""
    from tether.runtime.runner import new_run_id
    from tether.store import NewRun

    run, _ = await store.create_run(NewRun(id=new_run_id(), agent_name=agent.name, input="mail bob"))
    await store.claim_run("dead-worker", 0.001, run_id=run.id)
    call = {"id": "call_0", "name": "send_email", "arguments": {"to": "bob"}, "raw_arguments": "{}"}
    intent = {"turn": 0, "index": 0, "call_id": "call_0", "tool": "send_email", "attempt": 1}
    intent.update(idempotency_key=f"{run.id}:0:0", arguments={"to": "bob"})
    await store.append_events(
        run.id,
        "dead-worker",
        1,
        [
            EventDraft("model.request", {"turn": 0}),
            EventDraft("model.response", {"turn": 0, "content": "", "tool_calls": [call]}),
            EventDraft("tool.intent", intent),
        ],
        operations=[OperationWrite(f"{run.id}:0:0", run.id, "send_email", "intent", arguments={"to": "bob"})],
    )
    await asyncio.sleep(0.01)  # the dead worker's lease expires
    return run.id


@pytest.mark.parametrize(("choice", "sent"), [("happened", []), ("did_not_happen", [("bob", 2)])])
async def test_unknown_outcome_answer_decides_whether_the_write_runs_again(
    runtime: Runtime, choice: str, sent: list[tuple[str, int]]
) -> None:
    """ "happened" records the person's word and never re-sends; "did_not_happen" sends once more."""
    mailer = Mailer()
    agent = Agent(
        "mailer", model=calling_then_answering("send_email", 1, "mailed", to="bob"), tools=[mailer.tool()]
    )
    runtime.register(agent)
    assert isinstance(runtime.store, SqliteRunStore)
    run_id = await crashed_with_intent(runtime.store, agent)
    parked = await runtime.execute(run_id)
    assert parked.status == RunStatus.WAITING_HUMAN
    assert mailer.sent == []
    [question] = await runtime.inbox()
    assert question.reason == "unknown_outcome"
    await runtime.answer(question.id, choice, text="checked the mail log", by="ana")
    done = await runtime.execute(run_id)
    assert done.status == RunStatus.SUCCEEDED
    assert mailer.sent == sent
    [operation] = await runtime.store.list_operations(run_id)
    assert operation.status == "succeeded"


async def test_answers_export_as_labelled_jsonl(runtime: Runtime, tmp_path: Path) -> None:
    """`tether feedback export` writes each answered question with its context and the choice made."""
    from typer.testing import CliRunner

    from tether.cli import app

    agent = Agent("looper", model=calling("ping"), tools=[ping], max_steps=1)
    await runtime.run(agent, "go")
    await runtime.run(agent, "again")
    first, _ = await runtime.inbox()
    await runtime.answer(first.id, "takeover", text="done by hand", by="ana")
    out = tmp_path / "labels.jsonl"
    db = f"sqlite:///{tmp_path / 'inbox.db'}"
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["feedback", "export", "--out", str(out), "--db", db]
    )
    assert result.exit_code == 0, result.output
    [line] = out.read_text().splitlines()
    example = json.loads(line)
    assert example["id"] == first.id
    assert example["reason"] == "step_limit"
    assert example["answer"] == {"choice": "takeover", "text": "done by hand"}
    assert example["answered_by"] == "ana"
    assert example["context"]["input"] == "go"


async def test_agent_asks_a_targeted_question_and_gets_the_chosen_option(runtime: Runtime) -> None:
    """`ask_person` parks the run with the agent's options; the chosen one comes back as the tool result."""
    from tether import ask_person

    seen: list[ModelRequest] = []

    def respond(request: ModelRequest) -> ModelResponse:
        seen.append(request)
        if request.turn == 0:
            arguments = {"question": "Refund or replace the kettle?", "options": ["refund", "replace"]}
            return ModelResponse(tool_calls=(ToolCall("q0", "ask_person", arguments, json.dumps(arguments)),))
        return ModelResponse(content="ok")

    agent = Agent("asker", model=FunctionModel(respond, name="asker"), tools=[ask_person])
    run = await runtime.run(agent, "broken kettle")
    assert run.status == RunStatus.WAITING_HUMAN
    [question] = await runtime.inbox()
    assert question.reason == "question"
    assert question.message == "Refund or replace the kettle?"
    assert question.options == ("refund", "replace", "takeover")
    with pytest.raises(InvalidAnswerError):
        await runtime.answer(question.id, "both")
    await runtime.answer(question.id, "replace", text="stock is fine", by="ana")
    done = await runtime.execute(run.id)
    assert done.status == RunStatus.SUCCEEDED
    tool_messages = [m.content for m in seen[-1].messages if m.role == "tool"]
    assert tool_messages == ["A person answered: replace (stock is fine)"]


def drafting() -> tuple[FunctionModel, list[list[str]]]:
    """A model that drafts a reply, and redrafts it with the reviewer's comment when asked."""
    seen: list[list[str]] = []

    def respond(request: ModelRequest) -> ModelResponse:
        seen.append([m.content for m in request.messages if m.role == "user"])
        if any("revision" in m.content for m in request.messages if m.role == "user"):
            return ModelResponse(content="Dear customer, your refund of $40 is on its way.")
        return ModelResponse(content="refund sent lol")

    return FunctionModel(respond, name="drafter"), seen


async def test_collaborative_review_sends_the_draft_the_person_approves(runtime: Runtime) -> None:
    """A reviewed answer waits in the inbox with the draft; `send` delivers it as the agent wrote it."""
    model, _ = drafting()
    run = await runtime.run(Agent("desk", model=model, review=True), "where is my refund?")
    assert run.status == RunStatus.WAITING_HUMAN
    [question] = await runtime.inbox()
    assert (question.reason, question.options) == ("review", ("send", "revise", "takeover"))
    assert question.context["context"]["draft"] == "refund sent lol"
    await runtime.answer(question.id, "send", by="lead")
    run = await runtime.execute(run.id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "refund sent lol")


async def test_collaborative_review_revision_keeps_the_agent_primary(runtime: Runtime) -> None:
    """`revise` hands the comment to the agent, which redrafts; the new draft is reviewed again."""
    model, seen = drafting()
    run = await runtime.run(Agent("desk", model=model, review=True), "where is my refund?")
    [question] = await runtime.inbox()
    with pytest.raises(InvalidAnswerError, match="comment"):
        await runtime.answer(question.id, "revise")
    await runtime.answer(question.id, "revise", text="be polite and give the amount ($40)")
    run = await runtime.execute(run.id)
    assert run.status == RunStatus.WAITING_HUMAN
    [second] = await runtime.inbox()
    assert second.context["context"]["draft"] == "Dear customer, your refund of $40 is on its way."
    assert "be polite and give the amount ($40)" in seen[-1][-1]
    await runtime.answer(second.id, "send")
    run = await runtime.execute(run.id)
    assert run.output == "Dear customer, your refund of $40 is on its way."


async def test_review_predicate_selects_which_answers_wait(runtime: Runtime) -> None:
    """With a predicate, only answers it selects are reviewed; the others go out at once."""
    model, _ = drafting()
    agent = Agent("desk", model=model, review=lambda answer: "refund" in answer and "lol" not in answer)
    run = await runtime.run(agent, "where is my refund?")
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "refund sent lol")
