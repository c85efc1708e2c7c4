"""Worker: drains the queue with bounded concurrency, takes over runs of dead workers, stops cleanly."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tether import (
    Agent,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RunStatus,
    Runtime,
    SqliteRunStore,
    ToolCall,
    Worker,
    tool,
)
from tether.errors import ConfigurationError
from tether.store import EventDraft, NewRun

if TYPE_CHECKING:
    from conftest import ScriptModel

LEASE_S = 0.3


@pytest.fixture
async def live_store(tmp_path: Path) -> AsyncIterator[SqliteRunStore]:
    """A store on the real clock, so leases really expire."""
    opened = SqliteRunStore(tmp_path / "worker.db")
    yield opened
    await opened.close()


def ask(name: str, **arguments: Any) -> ModelResponse:
    return ModelResponse(tool_calls=(ToolCall(id="call_0", name=name, arguments=arguments),))


def say(content: str) -> ModelResponse:
    return ModelResponse(content=content)


class Gauge:
    """Counts tool invocations and the most that ran at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.inputs: list[str] = []

    def agent(self, model: Any, name: str = "busy") -> Agent:
        @tool(side_effect="read")
        async def work(item: str) -> str:
            self.inputs.append(item)
            self.now += 1
            self.peak = max(self.peak, self.now)
            await asyncio.sleep(0.1)
            self.now -= 1
            return f"worked on {item}"

        return Agent(name=name, model=model, tools=[work])


def per_input_model() -> FunctionModel:
    """Turn 0 calls `work` with the run's input; turn 1 answers."""

    def answer(request: ModelRequest) -> ModelResponse:
        user = next(m.content for m in request.messages if m.role == "user")
        return ask("work", item=user) if request.turn == 0 else say(f"done {user}")

    return FunctionModel(answer)


async def test_worker_drains_the_queue_with_bounded_concurrency(live_store: SqliteRunStore) -> None:
    """Worker(concurrency=2) runs every queued run to success, never more than two at once."""
    gauge = Gauge()
    agent = gauge.agent(per_input_model())
    async with Runtime(live_store, lease_s=LEASE_S) as runtime:
        runs = [await runtime.start(agent, f"job {i}") for i in range(5)]
        stats = await Worker(runtime, concurrency=2, poll_s=0.02).run(exit_when_idle=True)
    assert (stats.claimed, stats.finished) == (5, 5)
    for run in runs:
        done = await live_store.get_run(run.id)
        assert (done.status, done.output) == (RunStatus.SUCCEEDED, f"done {run.input}")
    assert sorted(gauge.inputs) == [f"job {i}" for i in range(5)]
    assert gauge.peak == 2
    assert await live_store.count_unfinished() == 0


async def test_worker_with_nothing_to_do_exits_at_once(live_store: SqliteRunStore) -> None:
    """exit_when_idle on an empty queue returns straight away with nothing claimed."""
    async with Runtime(live_store) as runtime:
        stats = await asyncio.wait_for(Worker(runtime, poll_s=0.01).run(exit_when_idle=True), 2)
    assert (stats.claimed, stats.finished) == (0, 0)


async def test_worker_takes_over_a_dead_workers_run(
    live_store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """A run leased by a worker that died is taken over once the lease expires, and completed."""
    model = script(say("recovered"))
    agent = Agent(name="a", model=model.model)
    async with Runtime(live_store, lease_s=LEASE_S, worker_id="rescuer") as runtime:
        run = await runtime.start(agent, "hi")
        assert await live_store.claim_run("dead-worker", LEASE_S) is not None
        stats = await asyncio.wait_for(Worker(runtime, poll_s=0.02).run(exit_when_idle=True), 10)
    done = await live_store.get_run(run.id)
    assert (done.status, done.output, done.attempts) == (RunStatus.SUCCEEDED, "recovered", 2)
    assert stats.claimed == 1
    resumed = [e for e in await live_store.load_events(run.id) if e.kind == "run.resumed"]
    assert [(e.data["attempt"], e.data["worker"]) for e in resumed] == [(2, "rescuer")]


async def test_idle_worker_waits_for_an_expiring_lease(
    live_store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """exit_when_idle does not exit while a run is running but unclaimed; it waits and takes it over."""
    model = script(say("WRONG: turn 0 requested again"), say("finished"))
    agent = Agent(name="a", model=model.model, tools=[])
    await live_store.create_run(NewRun(id="run_orphan", agent_name="a", input="hi"))
    assert await live_store.claim_run("dead-worker", LEASE_S) is not None
    await live_store.append_events(
        "run_orphan",
        "dead-worker",
        1,
        [
            EventDraft("model.request", {"turn": 0}),
            EventDraft("model.response", {**ask("nope").to_dict(), "turn": 0}),
        ],
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Runtime(live_store, agents=[agent], lease_s=LEASE_S) as runtime:
        stats = await asyncio.wait_for(Worker(runtime, poll_s=0.02).run(exit_when_idle=True), 10)
    waited_s = loop.time() - started
    done = await live_store.get_run("run_orphan")
    assert (done.status, done.output) == (RunStatus.SUCCEEDED, "finished")
    assert stats.claimed == 1
    assert model.requested_turns == [1]
    assert waited_s > 0.1  # it did not leave while the dead worker's lease was still live


async def test_worker_exits_when_only_waiting_runs_remain(
    live_store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """Runs waiting for a person are not unfinished work: an idle worker leaves them and exits."""

    @tool(side_effect="read")
    def lookup(order_id: str) -> str:
        return order_id

    model = script(ask("lookup", order_id="A"), ask("lookup", order_id="B"))
    agent = Agent(name="a", model=model.model, tools=[lookup], max_steps=1)
    async with Runtime(live_store, lease_s=LEASE_S) as runtime:
        run = await runtime.start(agent, "hi")
        stats = await asyncio.wait_for(Worker(runtime, poll_s=0.02).run(exit_when_idle=True), 5)
    assert stats.claimed == 1
    assert (await live_store.get_run(run.id)).status is RunStatus.WAITING_HUMAN


async def test_stop_lets_in_flight_runs_finish(live_store: SqliteRunStore, script: type[ScriptModel]) -> None:
    """Setting `stop` ends the worker loop, but only after the runs it holds have finished."""
    stop = asyncio.Event()

    @tool(side_effect="read")
    async def slow() -> str:
        stop.set()
        await asyncio.sleep(0.2)
        return "ok"

    model = script(ask("slow"), say("finished anyway"))
    agent = Agent(name="a", model=model.model, tools=[slow])
    async with Runtime(live_store, lease_s=LEASE_S) as runtime:
        runs = [await runtime.start(agent, f"job {i}") for i in range(2)]
        stats = await asyncio.wait_for(Worker(runtime, concurrency=1, poll_s=0.02).run(stop=stop), 5)
    assert (stats.claimed, stats.finished) == (1, 1)
    done = [await live_store.get_run(run.id) for run in runs]
    assert sorted((run.status, run.output or "") for run in done) == [
        (RunStatus.QUEUED, ""),
        (RunStatus.SUCCEEDED, "finished anyway"),
    ]


async def test_two_workers_share_the_queue_without_duplicates(tmp_path: Path) -> None:
    """Two workers with their own stores on one file run every run exactly once between them."""
    path = tmp_path / "shared.db"
    gauge = Gauge()
    agent = gauge.agent(per_input_model())
    first_store, second_store = SqliteRunStore(path), SqliteRunStore(path)
    try:
        async with (
            Runtime(first_store, agents=[agent], lease_s=LEASE_S, worker_id="w1") as first,
            Runtime(second_store, agents=[agent], lease_s=LEASE_S, worker_id="w2") as second,
        ):
            runs = [await first.start(agent, f"job {i}") for i in range(6)]
            stats = await asyncio.wait_for(
                asyncio.gather(
                    Worker(first, concurrency=2, poll_s=0.02).run(exit_when_idle=True),
                    Worker(second, concurrency=2, poll_s=0.02).run(exit_when_idle=True),
                ),
                10,
            )
        assert sum(s.claimed for s in stats) == 6
        assert sorted(gauge.inputs) == sorted(r.input for r in runs)
        for run in runs:
            done = await first_store.get_run(run.id)
            assert (done.status, done.attempts) == (RunStatus.SUCCEEDED, 1)
    finally:
        await first_store.close()
        await second_store.close()


async def test_concurrency_must_be_positive(live_store: SqliteRunStore) -> None:
    """A worker needs a concurrency of at least one."""
    with pytest.raises(ConfigurationError, match="concurrency must be >= 1, not 0"):
        Worker(Runtime(live_store), concurrency=0)
