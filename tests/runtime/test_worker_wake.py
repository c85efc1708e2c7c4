"""An idle worker wakes as soon as its own process queues work (start, answer, replay), not at its
next poll."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, Runtime, ToolCall, Worker, tool
from tether.types import RunStatus

LONG_POLL_S = 60.0  # were the worker to wait for its poll, the test's 10 s deadlines would pass first


def desk() -> tuple[Agent, list[float]]:
    refunds: list[float] = []

    @tool(side_effect="write", idempotent=True, approval=lambda a: a["amount_usd"] > 100)
    def refund(order_id: str, amount_usd: float) -> str:
        """Refund an order."""
        refunds.append(amount_usd)
        return "refunded"

    def respond(request: ModelRequest) -> ModelResponse:
        if request.turn == 0:
            arguments = {"order_id": "A-1", "amount_usd": 150}
            return ModelResponse(tool_calls=(ToolCall("c0", "refund", arguments, json.dumps(arguments)),))
        return ModelResponse(content="done")

    return Agent("wake-desk", model=FunctionModel(respond, name="m"), tools=[refund]), refunds


async def reaches(runtime: Runtime, run_id: str, status: RunStatus) -> None:
    for _ in range(1000):  # 10 s at most
        if (await runtime.store.get_run(run_id)).status is status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"run {run_id} never reached {status}")


async def test_start_and_answer_wake_an_idle_worker_at_once(tmp_path: Path) -> None:
    """With a 60 s poll, a started run parks and an answered one finishes within seconds."""
    agent, refunds = desk()
    async with Runtime(f"sqlite:///{tmp_path / 'w.db'}", agents=[agent]) as runtime:
        stop = asyncio.Event()
        working = asyncio.create_task(Worker(runtime, poll_s=LONG_POLL_S).run(stop=stop))
        await asyncio.sleep(0.1)  # the worker found nothing and sleeps
        run = await runtime.start(agent, "refund A-1")
        await reaches(runtime, run.id, RunStatus.WAITING_HUMAN)
        [question] = await runtime.inbox()
        await runtime.answer(question.id, "approve", by="ana")
        await reaches(runtime, run.id, RunStatus.SUCCEEDED)
        stop.set()
        await working
    assert refunds == [150]
