"""Shadow mode: a candidate beside production on the same inputs, with its side effects suppressed."""

from __future__ import annotations

import json
from pathlib import Path

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime, ToolCall, tool


class Desk:
    """Refunds (a write needing approval above $100) and a model whose version decides the amount."""

    def __init__(self) -> None:
        self.refunds: list[tuple[str, float]] = []

        @tool(side_effect="write", idempotent=True, approval=lambda a: a["amount_usd"] > 100)
        def refund(order_id: str, amount_usd: float) -> str:
            """Refund an order."""
            self.refunds.append((order_id, amount_usd))
            return "refunded"

        self.refund = refund

    def agent(self, version: str, amount: float) -> Agent:
        def respond(request: ModelRequest) -> ModelResponse:
            if request.turn == 0:
                arguments = {"order_id": "A-1", "amount_usd": amount}
                return ModelResponse(tool_calls=(ToolCall("c0", "refund", arguments, json.dumps(arguments)),))
            return ModelResponse(content=f"Refunded ${amount:g}.")

        return Agent(
            "desk", version=version, model=FunctionModel(respond, name=f"v{version}"), tools=[self.refund]
        )


async def test_a_shadow_run_suppresses_writes_and_is_compared(tmp_path: Path) -> None:
    """The candidate runs on the same input; its refund is recorded as a would-be call, never made."""
    desk = Desk()
    production, candidate = desk.agent("1", 40), desk.agent("2", 45)
    async with Runtime(f"sqlite:///{tmp_path / 's.db'}", shadows={"desk": candidate}) as runtime:
        run = await runtime.run(production, "refund A-1", principal="cust-1")
        [shadow] = await runtime.store.list_runs(shadows=True)
        assert shadow.shadow_of == run.id
        assert (shadow.agent_version, shadow.principal, shadow.input) == ("2", "cust-1", "refund A-1")
        shadow = await runtime.execute(shadow.id)
        assert (run.status, shadow.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED)
        assert desk.refunds == [("A-1", 40)]  # only production refunded
        [result] = [e.data for e in await runtime.events(shadow.id) if e.kind == "tool.result"]
        assert (result["outcome"], result["arguments"]) == (
            "suppressed",
            {"order_id": "A-1", "amount_usd": 45},
        )
        report = (await runtime.shadow_report("desk")).to_dict()
        assert [r.id for r in await runtime.store.list_runs()] == [run.id]  # shadows are listed apart
    assert (report["compared"], report["same_outcome"], report["same_output"], report["same_writes"]) == (
        1,
        1.0,
        0.0,
        0.0,
    )
    pair = report["pairs"][0]
    assert pair["production_writes"] == [
        {"tool": "refund", "arguments": {"order_id": "A-1", "amount_usd": 40}}
    ]
    assert pair["shadow_writes"] == [{"tool": "refund", "arguments": {"order_id": "A-1", "amount_usd": 45}}]


async def test_a_shadow_never_asks_a_person(tmp_path: Path) -> None:
    """Production waits for approval of a large refund; the shadow needs none and asks nobody."""
    desk = Desk()
    async with Runtime(f"sqlite:///{tmp_path / 's.db'}", shadows={"desk": desk.agent("2", 500)}) as runtime:
        run = await runtime.run(desk.agent("1", 500), "refund A-1")
        [shadow] = await runtime.store.list_runs(shadows=True)
        shadow = await runtime.execute(shadow.id)
        assert run.status == RunStatus.WAITING_HUMAN
        assert shadow.status == RunStatus.SUCCEEDED
        assert len(await runtime.inbox()) == 1  # production's approval only
        assert desk.refunds == []
        report = await runtime.shadow_report("desk")
    assert report.pairs[0].same_outcome is False  # production needed a person; the shadow answered
