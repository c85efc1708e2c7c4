"""Approval rules for risky tools: a person approves, denies (the agent is told why) or edits the call."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime, ToolCall, tool
from tether.cli import app
from tether.errors import InvalidAnswerError
from tether.tools import ApprovalRule


class Desk:
    """A refund tool that needs approval above $100, and a model that asks for one refund."""

    def __init__(self, amount: float, rule: Any = None) -> None:
        self.refunds: list[float] = []
        self.requests: list[ModelRequest] = []

        @tool(side_effect="write", idempotent=True, approval=rule or (lambda a: a["amount_usd"] > 100))
        def refund(order_id: str, amount_usd: float) -> str:
            """Refund an order."""
            self.refunds.append(amount_usd)
            return f"refunded {amount_usd}"

        def respond(request: ModelRequest) -> ModelResponse:
            self.requests.append(request)
            if request.turn == 0:
                arguments = {"order_id": "A-1", "amount_usd": amount}
                return ModelResponse(
                    tool_calls=(ToolCall("call_0", "refund", arguments, json.dumps(arguments)),)
                )
            return ModelResponse(content="handled")

        self.agent = Agent("desk", model=FunctionModel(respond, name="desk"), tools=[refund])


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'approvals.db'}") as rt:
        yield rt


async def test_small_refund_needs_no_approval(runtime: Runtime) -> None:
    """Below the threshold the call runs at once."""
    desk = Desk(50)
    run = await runtime.run(desk.agent, "refund")
    assert run.status == RunStatus.SUCCEEDED
    assert desk.refunds == [50]
    assert await runtime.inbox() == []


async def test_large_refund_waits_and_runs_once_approved(runtime: Runtime) -> None:
    """Above the threshold the run waits, the tool untouched; once approved it runs exactly once."""
    desk = Desk(150)
    run = await runtime.run(desk.agent, "refund")
    assert run.status == RunStatus.WAITING_HUMAN
    assert desk.refunds == []
    [question] = await runtime.inbox()
    assert question.reason == "approval"
    assert question.context["context"]["calls"][0]["arguments"] == {"order_id": "A-1", "amount_usd": 150}
    await runtime.answer(question.id, "approve", by="ana")
    done = await runtime.execute(run.id)
    assert done.status == RunStatus.SUCCEEDED
    assert desk.refunds == [150]
    assert len(desk.requests) == 2  # the recorded turn was not asked again


async def test_denial_reaches_the_model_and_the_tool_never_runs(runtime: Runtime) -> None:
    """A denial is a tool result the model reads, with the person's message; nothing is refunded."""
    desk = Desk(500)
    run = await runtime.run(desk.agent, "refund")
    [question] = await runtime.inbox()
    await runtime.answer(question.id, "deny", text="over the store credit limit", by="ana")
    done = await runtime.execute(run.id)
    assert done.status == RunStatus.SUCCEEDED
    assert desk.refunds == []
    tool_messages = [m.content for m in desk.requests[-1].messages if m.role == "tool"]
    assert tool_messages == [
        "A person denied this call: over the store credit limit. Do not retry it; adapt or explain."
    ]


async def test_edited_arguments_replace_the_models(runtime: Runtime) -> None:
    """ "edit" runs the call with the person's arguments."""
    desk = Desk(500)
    run = await runtime.run(desk.agent, "refund")
    [question] = await runtime.inbox()
    await runtime.answer(question.id, "edit", text='{"order_id": "A-1", "amount_usd": 100}', by="ana")
    await runtime.execute(run.id)
    assert desk.refunds == [100]


async def test_bad_edits_are_refused(runtime: Runtime) -> None:
    """An edit that is not a JSON object is refused before anything changes."""
    desk = Desk(500)
    await runtime.run(desk.agent, "refund")
    [question] = await runtime.inbox()
    for bad in ("not json", "[1, 2]"):
        with pytest.raises(InvalidAnswerError, match="JSON object"):
            await runtime.answer(question.id, "edit", text=bad)
    assert (await runtime.store.get_escalation(question.id)).status == "open"


async def test_keyword_rule(runtime: Runtime) -> None:
    """A keyword rule asks for approval when the arguments mention the keyword."""
    desk = Desk(10, rule=ApprovalRule(keywords=("A-1",)))
    run = await runtime.run(desk.agent, "refund")
    assert run.status == RunStatus.WAITING_HUMAN


async def test_unanswered_approval_expires_as_denied(runtime: Runtime) -> None:
    """An approval nobody answers in time is denied by expiry and the agent is told so."""
    desk = Desk(10, rule=ApprovalRule(expires_s=0.05))
    run = await runtime.run(desk.agent, "refund")
    assert await runtime.expire_escalations() == 0
    await asyncio.sleep(0.1)
    assert await runtime.expire_escalations() == 1
    [question] = await runtime.inbox(status="answered")
    assert question.answered_by == "expiry"
    done = await runtime.execute(run.id)
    assert done.status == RunStatus.SUCCEEDED
    assert desk.refunds == []


async def test_cli_approve_flag(runtime: Runtime, tmp_path: Path) -> None:
    """`tether inbox answer ID --approve` answers; the second answer exits 1 and changes nothing."""
    desk = Desk(500)
    await runtime.run(desk.agent, "refund")
    [question] = await runtime.inbox()
    db = f"sqlite:///{tmp_path / 'approvals.db'}"
    first = await asyncio.to_thread(
        CliRunner().invoke, app, ["inbox", "answer", question.id, "--approve", "--db", db]
    )
    assert first.exit_code == 0, first.output
    again = await asyncio.to_thread(
        CliRunner().invoke, app, ["inbox", "answer", question.id, "--deny", "no", "--db", db]
    )
    assert again.exit_code == 1
    assert "already answered" in again.output
    both = await asyncio.to_thread(
        CliRunner().invoke, app, ["inbox", "answer", question.id, "--approve", "--deny", "x", "--db", db]
    )
    assert both.exit_code == 2
