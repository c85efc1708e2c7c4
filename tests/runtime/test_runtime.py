"""Runtime: start (idempotent), run, execute, wait, cancel, agents and models, targets, isolation."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tether import (
    Agent,
    ModelResponse,
    RunStatus,
    Runtime,
    ScriptedModel,
    SqliteRunStore,
    ToolCall,
    Worker,
    tool,
)
from tether.errors import ConfigurationError, IdempotencyConflictError, RunNotFoundError
from tether.runtime import load_target

if TYPE_CHECKING:
    from conftest import Clock, ScriptModel


def say(content: str) -> ModelResponse:
    return ModelResponse(content=content)


def answering(content: str = "done") -> ScriptedModel:
    return ScriptedModel([{"content": content}])


# --- start, run, execute ------------------------------------------------------------------------


async def test_start_enqueues_a_run(runtime: Runtime) -> None:
    """start records a queued run with agent name and version, principal, target and model spec."""
    agent = Agent(name="support", version="4", model=answering())
    run = await runtime.start(agent, "hello", principal="alice", target="pkg.agents:support")
    assert run.status is RunStatus.QUEUED
    assert (run.agent_name, run.agent_version, run.input, run.principal) == ("support", "4", "hello", "alice")
    assert run.agent_target == "pkg.agents:support"
    assert run.model_spec is None
    assert run.id.startswith("run_")
    assert [e.kind for e in await runtime.events(run.id)] == ["run.started"]


async def test_run_ids_are_unique_and_time_ordered(runtime: Runtime) -> None:
    """Run ids sort in creation order and never repeat."""
    agent = Agent(name="a", model=answering())
    ids = []
    for i in range(5):
        ids.append((await runtime.start(agent, f"input {i}")).id)
        await asyncio.sleep(0.002)
    assert len(set(ids)) == 5
    assert ids == sorted(ids)


async def test_start_twice_with_one_key_returns_the_same_run(runtime: Runtime) -> None:
    """Starting the same idempotency key twice returns the first run; a different input conflicts."""
    agent = Agent(name="a", model=answering())
    first = await runtime.start(agent, "refund A1", idempotency_key="req-1")
    second = await runtime.start(agent, "refund A1", idempotency_key="req-1")
    assert second.id == first.id
    assert len(await runtime.store.list_runs()) == 1
    with pytest.raises(IdempotencyConflictError):
        await runtime.start(agent, "refund B2", idempotency_key="req-1")


async def test_run_twice_with_one_key_executes_once(runtime: Runtime, script: type[ScriptModel]) -> None:
    """`run` with a key that already finished returns the finished run without calling the model again."""
    model = script(say("only once"), say("WRONG"))
    agent = Agent(name="a", model=model.model)
    first = await runtime.run(agent, "hi", idempotency_key="k")
    second = await runtime.run(agent, "hi", idempotency_key="k")
    assert (first.id, first.status) == (second.id, RunStatus.SUCCEEDED)
    assert second.output == "only once"
    assert model.requested_turns == [0]


async def test_run_executes_in_process(runtime: Runtime) -> None:
    """`run` starts and executes a run here and returns it finished, lease released."""
    run = await runtime.run(Agent(name="a", model=answering("hello there")), "hi")
    assert (run.status, run.output, run.attempts, run.lease_owner) == (
        RunStatus.SUCCEEDED,
        "hello there",
        1,
        None,
    )


@pytest.mark.parametrize("model", [None, "gpt-4o-mini"], ids=["no-model", "malformed-spec"])
async def test_agent_without_a_usable_model_fails_at_start(runtime: Runtime, model: str | None) -> None:
    """An agent with no model (or an unparseable model spec) is refused by start; no run is queued."""
    with pytest.raises(ConfigurationError):
        await runtime.start(Agent(name="nomodel", model=model), "hi")
    assert await runtime.store.list_runs() == []


async def test_bad_model_override_fails_at_start(runtime: Runtime) -> None:
    """A bad `model=` spec fails at start, naming the spec, and queues nothing."""
    with pytest.raises(ConfigurationError, match="'gpt-4o' must look like PROVIDER:NAME"):
        await runtime.start(Agent(name="a", model=answering()), "hi", model="gpt-4o")
    assert await runtime.store.list_runs() == []


async def test_model_override_uses_the_factory_once_per_spec(store: SqliteRunStore) -> None:
    """`model=` is stored on the run and built by the runtime's factory, once per spec."""
    built: list[str] = []

    def factory(spec: str) -> ScriptedModel:
        built.append(spec)
        return ScriptedModel([{"content": f"via {spec}"}], name=spec)

    agent = Agent(name="a", model=answering("agent's own model"))
    async with Runtime(store, model_factory=factory) as runtime:
        first = await runtime.run(agent, "one", model="fake:x")
        second = await runtime.run(agent, "two", model="fake:x")
        plain = await runtime.run(agent, "three")
    assert (first.output, second.output, plain.output) == ("via fake:x", "via fake:x", "agent's own model")
    assert first.model_spec == "fake:x"
    assert built == ["fake:x"]


async def test_model_override_survives_to_another_runtime(
    store: SqliteRunStore, db_path: Path, clock: Clock
) -> None:
    """A run's model spec is durable: another runtime on the same file executes it with that spec."""
    agent = Agent(name="a", model=answering("agent's own model"))
    starter = Runtime(store, model_factory=lambda spec: answering(f"starter {spec}"))
    run = await starter.start(agent, "hi", model="fake:big")
    other_store = SqliteRunStore(db_path, clock=clock)
    async with Runtime(
        other_store, agents=[agent], model_factory=lambda spec: answering(f"executor {spec}")
    ) as rt:
        done = await rt.execute(run.id)
    await other_store.close()
    assert done.output == "executor fake:big"


async def test_execute_unknown_run(runtime: Runtime) -> None:
    """Executing a run id that does not exist raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await runtime.execute("run_missing")


async def test_execute_leaves_a_run_held_by_a_live_worker(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A run whose lease another live worker holds is only reported, not executed here."""
    model = script(say("WRONG"))
    run = await runtime.start(Agent(name="a", model=model.model), "hi")
    assert await runtime.store.claim_run("other-worker", 30, run_id=run.id) is not None
    seen = await runtime.execute(run.id)
    assert (seen.status, seen.lease_owner) == (RunStatus.RUNNING, "other-worker")
    assert model.requests == []


async def test_execute_leaves_a_waiting_run_alone(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A run waiting for a person is not picked up again by execute."""

    @tool(side_effect="read")
    def lookup(order_id: str) -> str:
        return order_id

    call = ModelResponse(tool_calls=(ToolCall(id="c", name="lookup", arguments={"order_id": "A"}),))
    model = script(call, call, call)
    run = await runtime.run(Agent(name="a", model=model.model, tools=[lookup], max_steps=1), "hi")
    assert run.status is RunStatus.WAITING_HUMAN
    again = await runtime.execute(run.id)
    assert again.status is RunStatus.WAITING_HUMAN
    assert model.requested_turns == [0]
    assert again.event_count == run.event_count


async def test_wait_returns_when_the_run_ends(runtime: Runtime) -> None:
    """wait polls until another task finishes the run, then returns it."""
    run = await runtime.start(Agent(name="a", model=answering("finally")), "hi")
    waiting = asyncio.create_task(runtime.wait(run.id, timeout_s=5, poll_s=0.01))
    await asyncio.sleep(0.03)
    assert not waiting.done()
    await runtime.execute(run.id)
    done = await waiting
    assert (done.status, done.output) == (RunStatus.SUCCEEDED, "finally")


async def test_wait_times_out(runtime: Runtime) -> None:
    """wait on a run nobody executes raises TimeoutError saying where the run is."""
    run = await runtime.start(Agent(name="a", model=answering()), "hi")
    with pytest.raises(TimeoutError, match=r"still queued"):
        await runtime.wait(run.id, timeout_s=0.1, poll_s=0.02)


# --- cancel ---------------------------------------------------------------------------------------


async def test_cancel_a_queued_run(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A cancelled queued run is cancelled for good: it cannot be claimed or executed."""
    model = script(say("WRONG"))
    run = await runtime.start(Agent(name="a", model=model.model), "hi")
    cancelled = await runtime.cancel(run.id, "duplicate ticket")
    assert (cancelled.status, cancelled.error) == (RunStatus.CANCELLED, "duplicate ticket")
    events = await runtime.events(run.id)
    assert (events[-1].kind, events[-1].data) == ("run.cancelled", {"reason": "duplicate ticket"})
    assert await runtime.store.claim_run("any", 30) is None
    assert (await runtime.execute(run.id)).status is RunStatus.CANCELLED
    assert model.requests == []


async def test_cancel_a_running_run_stops_it(store: SqliteRunStore, script: type[ScriptModel]) -> None:
    """Cancelling a run mid-tool stops its worker: the tool is abandoned and no further model call happens."""
    entered = asyncio.Event()

    @tool(side_effect="read", timeout_s=30)
    async def slow() -> str:
        entered.set()
        await asyncio.sleep(10)
        return "WRONG"

    model = script(ModelResponse(tool_calls=(ToolCall(id="c", name="slow", arguments={}),)), say("WRONG"))
    async with Runtime(store, lease_s=0.3) as runtime:
        running = asyncio.create_task(runtime.run(Agent(name="a", model=model.model, tools=[slow]), "hi"))
        await asyncio.wait_for(entered.wait(), 5)
        [started] = await store.list_runs()
        await runtime.cancel(started.id, "operator stop")
        run = await asyncio.wait_for(running, 5)
    assert run.status is RunStatus.CANCELLED
    assert model.requested_turns == [0]
    events = await store.load_events(run.id)
    assert events[-1].kind == "run.cancelled"
    assert "tool.result" not in [e.kind for e in events]


# --- leases -----------------------------------------------------------------------------------


async def test_heartbeat_keeps_the_lease_through_a_long_tool(
    tmp_path: Path, script: type[ScriptModel]
) -> None:
    """A tool running longer than the lease keeps it (heartbeats): no other worker can claim the run."""
    path = tmp_path / "hb.db"
    own, other = SqliteRunStore(path), SqliteRunStore(path)
    stolen: list[object] = []

    @tool(side_effect="read")
    async def long_job(run_id: str) -> str:
        await asyncio.sleep(0.6)  # twice the lease
        stolen.append(await other.claim_run("intruder", 30, run_id=run_id))
        return "ok"

    try:
        async with Runtime(own, lease_s=0.3) as runtime:
            agent_run = await runtime.start(Agent(name="a", model=answering()), "hi")
            model = script(
                ModelResponse(
                    tool_calls=(ToolCall(id="c", name="long_job", arguments={"run_id": agent_run.id}),)
                ),
                say("done"),
            )
            runtime.register(Agent(name="a", model=model.model, tools=[long_job]))
            run = await runtime.execute(agent_run.id)
    finally:
        await own.close()
        await other.close()
    assert stolen == [None]
    assert (run.status, run.attempts) == (RunStatus.SUCCEEDED, 1)


def test_lease_must_be_positive(tmp_path: Path) -> None:
    """A runtime with a non-positive lease is a configuration error."""
    with pytest.raises(ConfigurationError, match="lease_s"):
        Runtime(str(tmp_path / "x.db"), lease_s=0)


# --- agents and targets -------------------------------------------------------------------------


async def test_unknown_agent_without_target_fails_the_run(
    store: SqliteRunStore, db_path: Path, clock: Clock, runtime: Runtime
) -> None:
    """A runtime that does not know the run's agent (and has no target) fails it with an actionable error."""
    run = await runtime.start(Agent(name="billing", model=answering()), "hi")
    other_store = SqliteRunStore(db_path, clock=clock)
    async with Runtime(other_store) as stranger:
        failed = await stranger.execute(run.id)
    await other_store.close()
    assert failed.status is RunStatus.FAILED
    assert failed.lease_owner is None
    event = (await store.load_events(run.id))[-1]
    assert event.kind == "run.failed"
    assert event.data["error"] == "ConfigurationError"
    assert "'billing'" in event.data["message"]
    assert "Runtime(agents=[...])" in event.data["message"]


@pytest.fixture
def target_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh importable module holding an agent, a nested attribute and a non-agent."""
    name = f"tether_target_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        "from tether import Agent, ScriptedModel\n"
        "agent = Agent(name='targeted', model=ScriptedModel([{'content': 'from the target'}]))\n"
        "class holder:\n"
        "    inner = agent\n"
        "not_an_agent = 42\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


async def test_run_with_a_target_is_executable_anywhere(
    store: SqliteRunStore, db_path: Path, clock: Clock, target_module: str
) -> None:
    """A runtime that has never seen the agent imports it from the run's target and executes the run."""
    agent = load_target(f"{target_module}:agent")
    async with Runtime(store) as starter:
        run = await starter.start(agent, "hi", target=f"{target_module}:agent")
    other_store = SqliteRunStore(db_path, clock=clock)
    async with Runtime(other_store) as executor:
        done = await executor.execute(run.id)
    await other_store.close()
    assert (done.status, done.output) == (RunStatus.SUCCEEDED, "from the target")


def test_load_target_resolves_nested_attributes(target_module: str) -> None:
    """`module:a.b` walks attributes down to the agent."""
    assert load_target(f"{target_module}:holder.inner") is load_target(f"{target_module}:agent")
    assert load_target(f"{target_module}:agent").name == "targeted"


@pytest.mark.parametrize("target", ["no_colon", "module:", ":agent", ".relative:agent"])
def test_load_target_bad_format(target: str) -> None:
    """A target not shaped module:attribute is a ConfigurationError quoting it."""
    with pytest.raises(ConfigurationError, match=f"'{target}'"):
        load_target(target)


def test_load_target_missing_module() -> None:
    """A module that cannot be imported is named in the error."""
    with pytest.raises(ConfigurationError, match=r"cannot import 'no_such_module_xyz'"):
        load_target("no_such_module_xyz:agent")


def test_load_target_missing_attribute(target_module: str) -> None:
    """A missing attribute is named in the error."""
    with pytest.raises(ConfigurationError, match=r"has no attribute 'nobody'"):
        load_target(f"{target_module}:nobody")


def test_load_target_not_an_agent(target_module: str) -> None:
    """An attribute that is not an Agent is refused, saying what it is."""
    with pytest.raises(ConfigurationError, match=r"is a int, not a tether.Agent"):
        load_target(f"{target_module}:not_an_agent")


def test_load_target_module_that_fails_on_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A module that raises while importing gives a ConfigurationError naming the target and the error."""
    name = f"tether_broken_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text("raise RuntimeError('missing env var API_KEY')\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigurationError, match="API_KEY"):
        load_target(f"{name}:agent")


# --- isolation and ownership --------------------------------------------------------------------


async def test_two_runtimes_on_two_files_are_isolated(tmp_path: Path) -> None:
    """Two runtimes in one process share no state: neither sees nor executes the other's runs."""
    agent = Agent(name="a", model=answering("from one"))
    async with (
        Runtime(f"sqlite:///{tmp_path / 'one.db'}") as one,
        Runtime(f"sqlite:///{tmp_path / 'two.db'}") as two,
    ):
        finished = await one.run(agent, "hi")
        queued = await one.start(agent, "later")
        with pytest.raises(RunNotFoundError):
            await two.store.get_run(finished.id)
        assert await two.store.list_runs() == []
        stats = await Worker(two, poll_s=0.01).run(exit_when_idle=True)
        assert stats.claimed == 0
        assert (await one.store.get_run(queued.id)).status is RunStatus.QUEUED
        assert two.worker_id != one.worker_id


async def test_runtime_from_url_owns_its_store(tmp_path: Path) -> None:
    """A runtime opened from a URL closes its store on exit; the runs stay in the file."""
    path = tmp_path / "owned.db"
    async with Runtime(f"sqlite:///{path}") as runtime:
        run = await runtime.run(Agent(name="a", model=answering("kept")), "hi")
    with pytest.raises(sqlite3.ProgrammingError):
        await runtime.store.get_run(run.id)
    reopened = SqliteRunStore(path)
    assert (await reopened.get_run(run.id)).output == "kept"
    await reopened.close()


async def test_runtime_leaves_a_given_store_open(store: SqliteRunStore) -> None:
    """A runtime given a store object does not close it."""
    async with Runtime(store) as runtime:
        run = await runtime.start(Agent(name="a", model=answering()), "hi")
    assert (await store.get_run(run.id)).status is RunStatus.QUEUED
