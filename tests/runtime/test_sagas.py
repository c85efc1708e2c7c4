"""Saga compensation: a run that fails for good undoes its successful writes, newest first, once."""

from __future__ import annotations

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
from tether.errors import BadRequestError, ConfigurationError
from tether.runtime.state import RunState


class Shop:
    def __init__(self, undo_fails: bool = False) -> None:
        self.log: list[str] = []

        def unreserve(sku: str, ctx: ToolContext) -> None:
            self.log.append(f"unreserve {sku} {ctx.idempotency_key.split(':', 1)[1]}")

        def refund(order_id: str, amount_usd: float) -> None:
            if undo_fails:
                raise ConnectionError("payments down")
            self.log.append(f"refund {order_id} {amount_usd}")

        @tool(side_effect="write", idempotent=True, compensate=unreserve)
        def reserve(sku: str) -> str:
            """Reserve stock."""
            self.log.append(f"reserve {sku}")
            return "reserved"

        @tool(side_effect="write", idempotent=True, compensate=refund)
        def charge(order_id: str, amount_usd: float) -> str:
            """Charge the card."""
            self.log.append(f"charge {order_id} {amount_usd}")
            return "charged"

        def respond(request: ModelRequest) -> ModelResponse:
            steps = [("reserve", {"sku": "KETTLE"}), ("charge", {"order_id": "A-1", "amount_usd": 30.0})]
            if request.turn < len(steps):
                name, arguments = steps[request.turn]
                return ModelResponse(
                    tool_calls=(ToolCall(f"c{request.turn}", name, arguments, json.dumps(arguments)),)
                )
            raise BadRequestError("the provider rejected the conversation")

        self.agent = Agent("shop", model=FunctionModel(respond, name="shop"), tools=[reserve, charge])


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'saga.db'}") as rt:
        yield rt


async def test_failed_run_undoes_its_writes_in_reverse(runtime: Runtime) -> None:
    """A fatal failure after two writes refunds, then unreserves; each undo is an event."""
    shop = Shop()
    run = await runtime.run(shop.agent, "buy a kettle")
    assert run.status == RunStatus.FAILED
    assert shop.log == [
        "reserve KETTLE",
        "charge A-1 30.0",
        "refund A-1 30.0",
        "unreserve KETTLE 0:0:compensate",
    ]
    events = await runtime.events(run.id)
    ran = [e.data for e in events if e.kind == "compensation.ran"]
    assert [(r["tool"], r["ok"]) for r in ran] == [("charge", True), ("reserve", True)]
    assert events[-1].kind == "run.failed"


async def test_a_failing_undo_is_recorded_and_the_others_still_run(runtime: Runtime) -> None:
    """An undo that raises is recorded with its error; the remaining undos still run."""
    shop = Shop(undo_fails=True)
    run = await runtime.run(shop.agent, "buy a kettle")
    assert run.status == RunStatus.FAILED
    ran = [e.data for e in await runtime.events(run.id) if e.kind == "compensation.ran"]
    assert ran[0]["ok"] is False
    assert "payments down" in ran[0]["error"]
    assert shop.log[-1] == "unreserve KETTLE 0:0:compensate"


def test_resumed_compensation_skips_undos_already_done() -> None:
    """The fold remembers which undos succeeded, so a resumed saga does not repeat them."""
    from tether.types import RunEvent

    events = [
        RunEvent("r", 0, "run.started", 0, {"input": "x"}),
        RunEvent("r", 1, "compensation.started", 0, {"error": "e", "detail": {}}),
        RunEvent("r", 2, "compensation.ran", 0, {"idempotency_key": "r:1:0:compensate", "ok": True}),
        RunEvent("r", 3, "compensation.ran", 0, {"idempotency_key": "r:0:0:compensate", "ok": False}),
    ]
    state = RunState.fold("r", events)
    assert state.compensating == {"error": "e", "detail": {}}
    assert state.compensated == {"r:1:0:compensate"}


def test_an_approval_setting_of_the_wrong_kind_is_refused() -> None:
    """approval="always" (a string) is an error naming the accepted forms, not silently no approval."""
    with pytest.raises(ConfigurationError, match="approval must be True, False, a predicate"):

        @tool(side_effect="write", approval="always")  # type: ignore[arg-type]
        def charge() -> str:
            """Charge."""
            return ""


def test_only_write_tools_compensate() -> None:
    """Declaring an undo on a read tool is a configuration error."""
    with pytest.raises(ConfigurationError, match="only write tools"):

        @tool(side_effect="read", compensate=lambda: None)
        def lookup() -> str:
            """Look."""
            return ""


class ApprovalShop:
    """Reserves stock, then asks for a charge that needs a person's approval."""

    def __init__(self) -> None:
        self.log: list[str] = []

        def unreserve(sku: str) -> None:
            self.log.append(f"unreserve {sku}")

        @tool(side_effect="write", idempotent=True, compensate=unreserve)
        def reserve(sku: str) -> str:
            """Reserve stock."""
            self.log.append(f"reserve {sku}")
            return "reserved"

        @tool(side_effect="write", idempotent=True, approval=True)
        def charge(order_id: str) -> str:
            """Charge the card."""
            self.log.append(f"charge {order_id}")
            return "charged"

        def respond(request: ModelRequest) -> ModelResponse:
            steps = [("reserve", {"sku": "KETTLE"}), ("charge", {"order_id": "A-1"})]
            if request.turn < len(steps):
                name, arguments = steps[request.turn]
                return ModelResponse(
                    tool_calls=(ToolCall(f"c{request.turn}", name, arguments, json.dumps(arguments)),)
                )
            return ModelResponse(content="done")

        self.agent = Agent("shop", model=FunctionModel(respond, name="shop"), tools=[reserve, charge])


async def test_cancelling_a_run_undoes_its_writes_and_withdraws_its_question(runtime: Runtime) -> None:
    """A run waiting for approval after a write is cancelled: the write is undone, the question withdrawn."""
    shop = ApprovalShop()
    run = await runtime.run(shop.agent, "buy a kettle")
    assert run.status == RunStatus.WAITING_HUMAN
    run = await runtime.cancel(run.id, "customer changed their mind")
    assert run.status == RunStatus.CANCELLED
    assert shop.log == ["reserve KETTLE", "unreserve KETTLE"]
    assert await runtime.inbox() == []
    events = await runtime.events(run.id)
    assert [e.kind for e in events[-3:]] == ["compensation.started", "compensation.ran", "run.cancelled"]
    assert events[-1].data == {"reason": "customer changed their mind", "compensated": True}


async def test_a_cancel_from_a_runtime_without_the_agent_leaves_the_undo_to_a_worker(tmp_path: Path) -> None:
    """Cancelled where the agent is unknown (e.g. the CLI), the run is queued to be undone by a worker."""
    shop = ApprovalShop()
    url = f"sqlite:///{tmp_path / 'saga.db'}"
    async with Runtime(url) as first:
        run = await first.run(shop.agent, "buy a kettle")
    async with Runtime(url) as cli:
        run = await cli.cancel(run.id, "operator")
    assert run.status == RunStatus.QUEUED
    assert shop.log == ["reserve KETTLE"]
    async with Runtime(url, agents=[shop.agent]) as worker:
        run = await worker.execute(run.id)
    assert run.status == RunStatus.CANCELLED
    assert shop.log == ["reserve KETTLE", "unreserve KETTLE"]


async def test_a_run_without_writes_is_cancelled_at_once(runtime: Runtime) -> None:
    """Nothing took effect, so nothing is undone: the cancel ends the run immediately."""
    shop = ApprovalShop()
    run = await runtime.start(shop.agent, "buy a kettle")
    run = await runtime.cancel(run.id)
    assert run.status == RunStatus.CANCELLED
    assert "compensation.started" not in [e.kind for e in await runtime.events(run.id)]


async def test_discarding_a_dead_letter_undoes_its_writes(tmp_path: Path) -> None:
    """A run dead-lettered after a write is discarded: the write is undone and the run ends cancelled."""
    from tether.policy import ConfidenceGate

    shop = ApprovalShop()

    def verifier(request: ModelRequest, response: ModelResponse) -> float:
        if request.turn >= 1:
            raise RuntimeError("verifier bug")
        return 0.99

    agent = Agent(
        "shop", model=shop.agent.model, tools=shop.agent.tools, gate=ConfidenceGate(), verifier=verifier
    )
    async with Runtime(f"sqlite:///{tmp_path / 'saga.db'}", max_attempts=1) as runtime:
        run = await runtime.run(agent, "buy a kettle")
        assert run.status == RunStatus.DEAD_LETTERED
        assert shop.log == ["reserve KETTLE"]
        run = await runtime.discard(run.id)
    assert run.status == RunStatus.CANCELLED
    assert shop.log == ["reserve KETTLE", "unreserve KETTLE"]
