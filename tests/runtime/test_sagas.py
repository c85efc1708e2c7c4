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


def test_only_write_tools_compensate() -> None:
    """Declaring an undo on a read tool is a configuration error."""
    with pytest.raises(ConfigurationError, match="only write tools"):

        @tool(side_effect="read", compensate=lambda: None)
        def lookup() -> str:
            """Look."""
            return ""
