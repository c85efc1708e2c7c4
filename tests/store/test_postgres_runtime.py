"""The runtime on PostgreSQL end to end: an agent with a write tool that needs approval runs to completion,
and workers on two hosts drain one queue."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tether import (
    Agent,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RunStatus,
    Runtime,
    ToolCall,
    Worker,
    tool,
)
from tether.store import PostgresRunStore
from tether.types import EventKind


class Desk:
    """A refund tool that needs approval above $100, and a model that asks for one refund, then answers."""

    def __init__(self, amount: float) -> None:
        self.refunds: list[float] = []

        @tool(side_effect="write", idempotent=True, approval=lambda a: a["amount_usd"] > 100)
        def refund(order_id: str, amount_usd: float) -> str:
            """Refund an order."""
            self.refunds.append(amount_usd)
            return f"refunded {amount_usd}"

        def respond(request: ModelRequest) -> ModelResponse:
            if request.turn == 0:
                arguments = {"order_id": "A-1", "amount_usd": amount}
                return ModelResponse(
                    tool_calls=(ToolCall("call_0", "refund", arguments, json.dumps(arguments)),)
                )
            return ModelResponse(content=f"refund handled: {request.messages[-1].content}")

        self.agent = Agent("desk", model=FunctionModel(respond, name="desk"), tools=[refund])


@pytest.fixture
async def pg_store(postgres_url: str, pg_schema: str) -> AsyncIterator[PostgresRunStore]:
    store = PostgresRunStore(postgres_url, schema=pg_schema)
    yield store
    await store.close()


async def test_an_approved_refund_runs_once_to_completion(pg_store: PostgresRunStore) -> None:
    """The run parks for approval with the tool untouched; once approved it refunds once and succeeds."""
    desk = Desk(150)
    async with Runtime(pg_store, worker_id="host-a") as runtime:
        run = await runtime.run(desk.agent, "refund order A-1")
        assert run.status is RunStatus.WAITING_HUMAN
        assert desk.refunds == []
        [question] = await runtime.inbox()
        assert question.reason == "approval"
        assert question.context["context"]["calls"][0]["arguments"] == {"order_id": "A-1", "amount_usd": 150}
        await runtime.answer(question.id, "approve", by="ana")
        done = await runtime.execute(run.id)
    assert done.status is RunStatus.SUCCEEDED
    assert done.output == "refund handled: refunded 150.0"
    assert desk.refunds == [150]
    events = await pg_store.load_events(run.id)
    assert [event.seq for event in events] == list(range(len(events)))
    kinds = [event.kind for event in events]
    for kind in (
        EventKind.ESCALATION_OPENED,
        EventKind.ESCALATION_ANSWERED,
        EventKind.TOOL_INTENT,
        EventKind.TOOL_RESULT,
        EventKind.RUN_COMPLETED,
    ):
        assert kind in kinds
    [operation] = await pg_store.list_operations(run.id)
    assert (operation.tool, operation.status, operation.attempts) == ("refund", "succeeded", 1)
    assert (await pg_store.get_escalation(question.id)).answered_by == "ana"


async def test_workers_on_two_hosts_drain_one_queue(postgres_url: str, pg_schema: str) -> None:
    """Twenty runs started on one host are each finished once by workers on two hosts."""
    desk = Desk(20)  # below the approval threshold
    hosts = [PostgresRunStore(postgres_url, schema=pg_schema) for _ in range(2)]
    try:
        async with (
            Runtime(hosts[0], agents=[desk.agent]) as api,
            Runtime(hosts[1], agents=[desk.agent]) as other,
        ):
            runs = [await api.start(desk.agent, f"refund {n}") for n in range(20)]
            stats = await asyncio.gather(
                Worker(api, concurrency=4, worker_id="host-a").run(exit_when_idle=True),
                Worker(other, concurrency=4, worker_id="host-b").run(exit_when_idle=True),
            )
            finished = [await api.store.get_run(run.id) for run in runs]
        assert {run.status for run in finished} == {RunStatus.SUCCEEDED}
        assert sum(s.claimed for s in stats) == 20
        assert all(run.attempts == 1 for run in finished)
        assert desk.refunds == [20.0] * 20
    finally:
        for store in hosts:
            await store.close()


async def reaches(runtime: Runtime, run_id: str, status: RunStatus) -> None:
    for _ in range(1000):  # 20 s at most
        if (await runtime.store.get_run(run_id)).status is status:
            return
        await asyncio.sleep(0.02)
    pytest.fail(f"run {run_id} never reached {status}")


class CountingClaims(PostgresRunStore):
    """Counts claim attempts: how often an idle worker looked for work."""

    claims = 0

    async def claim_run(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        type(self).claims += 1
        return await super().claim_run(*args, **kwargs)  # type: ignore[arg-type]


async def test_an_idle_worker_sleeps_until_a_run_is_announced(postgres_url: str, pg_schema: str) -> None:
    """On PostgreSQL an idle worker does not poll every 50 ms: it waits for NOTIFY (or 1 s), and an
    answer given on another host wakes it to finish the run."""
    desk = Desk(150)
    CountingClaims.claims = 0
    worker_store = CountingClaims(postgres_url, schema=pg_schema)
    other = PostgresRunStore(postgres_url, schema=pg_schema)
    try:
        async with Runtime(worker_store, agents=[desk.agent]) as runtime, Runtime(other) as api:
            stop = asyncio.Event()
            working = asyncio.create_task(Worker(runtime, poll_s=0.05, worker_id="host-a").run(stop=stop))
            run = await api.start(desk.agent, "refund order A-1")
            await reaches(api, run.id, RunStatus.WAITING_HUMAN)
            CountingClaims.claims = 0
            await asyncio.sleep(2.0)
            idle_claims = CountingClaims.claims
            [question] = await api.inbox()
            await api.answer(question.id, "approve", by="ana")
            await reaches(api, run.id, RunStatus.SUCCEEDED)
            stop.set()
            await working
    finally:
        await worker_store.close()
        await other.close()
    assert idle_claims <= 6  # about one look a second; polling at 50 ms would be about 40
    assert desk.refunds == [150]
