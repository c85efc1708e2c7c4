"""Every store (SQLite and PostgreSQL) against one suite: runs, idempotent creation, leases, fencing, events,
operations, people, canaries, audit, listings."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tether.errors import (
    ConfigurationError,
    EscalationNotFoundError,
    IdempotencyConflictError,
    LeaseLostError,
    RunNotFoundError,
)
from tether.store import EventDraft, NewEscalation, NewRun, OperationWrite, RunStore, store_from_url
from tether.store.base import AuditEntry, Canary
from tether.types import EventKind, RunStatus, Usage

if TYPE_CHECKING:
    from conftest import Clock


def new(
    run_id: str, *, key: str | None = None, input: str = "where is my order?", agent: str = "support"
) -> NewRun:
    return NewRun(id=run_id, agent_name=agent, input=input, idempotency_key=key)


async def claimed(store: RunStore, run_id: str, owner: str = "A", lease_s: float = 30.0) -> None:
    await store.create_run(new(run_id))
    run = await store.claim_run(owner, lease_s, run_id=run_id)
    assert run is not None


# --- creating runs ------------------------------------------------------------------------------


async def test_create_run_is_queued_with_a_started_event(store: RunStore, clock: Clock) -> None:
    """A new run is queued, unleased, with a `run.started` event at seq 0 holding agent, version, input."""
    run, created = await store.create_run(
        NewRun(id="r1", agent_name="support", input="hi", agent_version="7", principal="alice")
    )
    assert created is True
    assert run.status is RunStatus.QUEUED
    assert (run.attempts, run.lease_owner, run.lease_expires_at_epoch_ms) == (0, None, None)
    assert run.created_at_epoch_ms == clock.now_ms
    assert run.event_count == 1
    [event] = await store.load_events("r1")
    assert (event.seq, event.kind) == (0, EventKind.RUN_STARTED)
    assert event.created_at_epoch_ms == clock.now_ms
    assert event.data == {"agent": "support", "version": "7", "input": "hi", "principal": "alice"}


async def test_started_event_omits_absent_principal(store: RunStore) -> None:
    """Without a principal the started event carries no principal key."""
    await store.create_run(new("r1"))
    [event] = await store.load_events("r1")
    assert "principal" not in event.data


async def test_run_fields_round_trip(store: RunStore) -> None:
    """Every field of NewRun is stored and read back."""
    await store.create_run(
        NewRun(
            id="r1",
            agent_name="support",
            input="in",
            agent_version="3",
            agent_target="pkg.mod:agent",
            model_spec="scripted:x.json",
            principal="bob",
            idempotency_key="k1",
            parent_run_id="r0",
        )
    )
    run = await store.get_run("r1")
    assert (run.agent_target, run.model_spec, run.principal) == ("pkg.mod:agent", "scripted:x.json", "bob")
    assert (run.idempotency_key, run.parent_run_id, run.agent_version) == ("k1", "r0", "3")
    assert run.usage == Usage(0, 0, None)


async def test_get_unknown_run(store: RunStore) -> None:
    """Getting a run that does not exist raises RunNotFoundError naming it."""
    with pytest.raises(RunNotFoundError, match="'nope'"):
        await store.get_run("nope")


async def test_same_idempotency_key_returns_the_same_run(store: RunStore) -> None:
    """Creating with a key already used for the same input returns that run with created=False."""
    first, created_first = await store.create_run(new("r1", key="order-42"))
    second, created_second = await store.create_run(new("r2", key="order-42"))
    assert (created_first, created_second) == (True, False)
    assert second.id == first.id == "r1"
    assert [r.id for r in await store.list_runs()] == ["r1"]
    assert len(await store.load_events("r1")) == 1
    with pytest.raises(RunNotFoundError):
        await store.get_run("r2")


async def test_idempotent_create_returns_the_run_as_stored(store: RunStore) -> None:
    """The run returned for a reused key is the same as `get_run` reports (event count included)."""
    await store.create_run(new("r1", key="k"))
    again, _ = await store.create_run(new("r2", key="k"))
    assert again == await store.get_run("r1")


@pytest.mark.parametrize(
    ("agent", "input"), [("support", "another input"), ("billing", "where is my order?")]
)
async def test_same_key_different_request_conflicts(store: RunStore, agent: str, input: str) -> None:
    """Reusing a key with a different input or agent raises IdempotencyConflictError and creates nothing."""
    await store.create_run(new("r1", key="order-42"))
    with pytest.raises(IdempotencyConflictError, match=r"'order-42'.*r1"):
        await store.create_run(new("r2", key="order-42", input=input, agent=agent))
    assert [r.id for r in await store.list_runs()] == ["r1"]


async def test_list_runs_newest_first_filtered_and_limited(store: RunStore, clock: Clock) -> None:
    """list_runs returns newest first, filters by status and honours the limit."""
    for run_id in ("r1", "r2", "r3"):
        await store.create_run(new(run_id))
        clock.advance(1)
    await store.claim_run("A", 30, run_id="r2")
    assert [r.id for r in await store.list_runs()] == ["r3", "r2", "r1"]
    assert [r.id for r in await store.list_runs(limit=2)] == ["r3", "r2"]
    assert [r.id for r in await store.list_runs(status=RunStatus.QUEUED)] == ["r3", "r1"]
    assert [r.id for r in await store.list_runs(status=RunStatus.RUNNING)] == ["r2"]


async def test_list_runs_reports_event_counts(store: RunStore) -> None:
    """Each listed run carries its real event count, as get_run does."""
    await claimed(store, "r1")
    await store.append_events("r1", "A", 1, [EventDraft("x"), EventDraft("y")])
    [listed] = await store.list_runs()
    assert listed.event_count == (await store.get_run("r1")).event_count == 3


# --- claiming and leases ------------------------------------------------------------------------


async def test_claim_takes_the_oldest_run_first(store: RunStore, clock: Clock) -> None:
    """Claims follow creation time, not insertion order or id order."""
    clock.advance(5)
    await store.create_run(new("a_newest"))
    clock.advance(-5)
    await store.create_run(new("z_oldest"))
    clock.advance(1)
    await store.create_run(new("m_middle"))
    order = []
    for owner in ("A", "B", "C"):
        run = await store.claim_run(owner, 30)
        assert run is not None
        order.append(run.id)
    assert order == ["z_oldest", "m_middle", "a_newest"]
    assert await store.claim_run("D", 30) is None


async def test_claim_leases_the_run(store: RunStore, clock: Clock) -> None:
    """A claim marks the run running, records owner and expiry, and counts the attempt."""
    await store.create_run(new("r1"))
    run = await store.claim_run("worker-A", 2.5)
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert run.lease_owner == "worker-A"
    assert run.lease_expires_at_epoch_ms == clock.now_ms + 2500
    assert run.attempts == 1
    assert (await store.get_run("r1")).lease_owner == "worker-A"


async def test_leased_run_is_claimable_only_after_expiry(store: RunStore, clock: Clock) -> None:
    """A live lease keeps others out; once it expires the run is claimable and the attempt counted."""
    await claimed(store, "r1", owner="A", lease_s=10)
    clock.advance(9.999)
    assert await store.claim_run("B", 10) is None
    assert await store.claim_run("B", 10, run_id="r1") is None
    clock.advance(0.002)
    run = await store.claim_run("B", 10)
    assert run is not None
    assert (run.id, run.lease_owner, run.attempts) == ("r1", "B", 2)


async def test_claim_by_id(store: RunStore) -> None:
    """Claiming a given run id takes that run even when older runs are queued."""
    await store.create_run(new("old"))
    await store.create_run(new("wanted"))
    run = await store.claim_run("A", 30, run_id="wanted")
    assert run is not None
    assert run.id == "wanted"
    assert (await store.get_run("old")).status is RunStatus.QUEUED
    assert await store.claim_run("A", 30, run_id="missing") is None


async def test_heartbeat_extends_the_lease(store: RunStore, clock: Clock) -> None:
    """A heartbeat by the owner pushes the expiry forward, keeping others out past the first expiry."""
    await claimed(store, "r1", owner="A", lease_s=10)
    clock.advance(8)
    assert await store.heartbeat("r1", "A", 10) is True
    assert (await store.get_run("r1")).lease_expires_at_epoch_ms == clock.now_ms + 10_000
    clock.advance(5)  # past the original expiry
    assert await store.claim_run("B", 10) is None


async def test_heartbeat_by_non_owner_fails(store: RunStore) -> None:
    """A heartbeat from a worker that does not own the lease returns False and changes nothing."""
    await claimed(store, "r1", owner="A", lease_s=10)
    before = await store.get_run("r1")
    assert await store.heartbeat("r1", "B", 60) is False
    assert (await store.get_run("r1")).lease_expires_at_epoch_ms == before.lease_expires_at_epoch_ms


async def test_heartbeat_after_takeover_fails(store: RunStore, clock: Clock) -> None:
    """Once another worker took the expired lease, the old owner's heartbeat returns False."""
    await claimed(store, "r1", owner="A", lease_s=1)
    clock.advance(2)
    assert await store.claim_run("B", 30) is not None
    assert await store.heartbeat("r1", "A", 30) is False
    assert (await store.get_run("r1")).lease_owner == "B"


async def test_release_requeues_only_for_the_owner(store: RunStore) -> None:
    """release by the owner puts the run back in the queue; by anyone else it does nothing."""
    await claimed(store, "r1", owner="A")
    await store.release("r1", "B")
    assert (await store.get_run("r1")).lease_owner == "A"
    await store.release("r1", "A")
    run = await store.get_run("r1")
    assert (run.status, run.lease_owner, run.lease_expires_at_epoch_ms) == (RunStatus.QUEUED, None, None)
    assert await store.claim_run("B", 30) is not None


# --- events, usage and fencing ------------------------------------------------------------------


async def test_append_and_load_events(store: RunStore, clock: Clock) -> None:
    """Appended events get consecutive seqs and the store's time; load_events reads them back in order."""
    await claimed(store, "r1")
    clock.advance(1)
    appended = await store.append_events(
        "r1", "A", 1, [EventDraft("model.request", {"turn": 0}), EventDraft("model.response", {"x": [1]})]
    )
    assert [(e.seq, e.kind) for e in appended] == [(1, "model.request"), (2, "model.response")]
    assert {e.created_at_epoch_ms for e in appended} == {clock.now_ms}
    loaded = await store.load_events("r1")
    assert loaded[1:] == appended
    assert [e.seq for e in await store.load_events("r1", after_seq=1)] == [2]
    assert (await store.get_run("r1")).event_count == 3


async def test_append_by_non_owner_is_fenced(store: RunStore, clock: Clock) -> None:
    """A worker whose lease was taken over gets LeaseLostError and writes nothing at all."""
    await claimed(store, "r1", owner="A", lease_s=1)
    clock.advance(2)
    assert await store.claim_run("B", 30) is not None
    with pytest.raises(LeaseLostError, match=r"'A'.*r1"):
        await store.append_events(
            "r1",
            "A",
            1,
            [EventDraft("tool.intent")],
            usage=Usage(100, 100, 1.0),
            operations=[OperationWrite("r1:0:0", "r1", "charge", "intent")],
        )
    assert [e.kind for e in await store.load_events("r1")] == [EventKind.RUN_STARTED]
    assert await store.get_operation("r1:0:0") is None
    assert (await store.get_run("r1")).usage == Usage(0, 0, None)


async def test_append_with_a_taken_seq_writes_nothing(store: RunStore) -> None:
    """Appending at a seq that already exists raises LeaseLostError and rolls the whole batch back."""
    await claimed(store, "r1")
    await store.append_events("r1", "A", 1, [EventDraft("one")])
    with pytest.raises(LeaseLostError, match="seq 1"):
        await store.append_events(
            "r1",
            "A",
            1,
            [EventDraft("dup"), EventDraft("more")],
            usage=Usage(5, 5, 0.5),
            operations=[OperationWrite("k", "r1", "charge", "intent")],
        )
    assert [e.kind for e in await store.load_events("r1")] == ["run.started", "one"]
    assert (await store.get_run("r1")).usage == Usage(0, 0, None)
    assert await store.get_operation("k") is None


async def test_usage_accumulates(store: RunStore) -> None:
    """Usage of each append adds up; a missing cost does not erase a known one."""
    await claimed(store, "r1")
    await store.append_events("r1", "A", 1, [EventDraft("a")], usage=Usage(10, 5, 0.25))
    await store.append_events("r1", "A", 2, [EventDraft("b")], usage=Usage(3, 2, None))
    await store.append_events("r1", "A", 3, [EventDraft("c")], usage=Usage(1, 1, 0.5))
    assert (await store.get_run("r1")).usage == Usage(14, 8, 0.75)


async def test_unknown_cost_stays_unknown(store: RunStore) -> None:
    """When no append reports a cost, the run's cost stays None (unknown), not 0."""
    await claimed(store, "r1")
    await store.append_events("r1", "A", 1, [EventDraft("a")], usage=Usage(10, 5, None))
    assert (await store.get_run("r1")).usage == Usage(10, 5, None)


async def test_operations_upsert(store: RunStore) -> None:
    """intent then succeeded updates one row; a repeated intent counts another attempt; results are kept."""
    await claimed(store, "r1")
    key = "r1:0:0"
    await store.append_events(
        "r1",
        "A",
        1,
        [EventDraft("tool.intent")],
        operations=[OperationWrite(key, "r1", "charge", "intent", {"n": 1})],
    )
    op = await store.get_operation(key)
    assert op is not None
    assert (op.status, op.attempts, op.arguments, op.result, op.tool) == (
        "intent",
        1,
        {"n": 1},
        None,
        "charge",
    )
    await store.append_events(
        "r1",
        "A",
        2,
        [EventDraft("tool.intent")],
        operations=[OperationWrite(key, "r1", "charge", "intent", {"n": 1})],
    )
    assert (await store.get_operation(key)).attempts == 2  # type: ignore[union-attr]
    await store.append_events(
        "r1",
        "A",
        3,
        [EventDraft("tool.result")],
        operations=[OperationWrite(key, "r1", "charge", "succeeded", result={"value": "ok"})],
    )
    op = await store.get_operation(key)
    assert op is not None
    assert (op.status, op.attempts, op.arguments, op.result) == ("succeeded", 2, {"n": 1}, {"value": "ok"})
    assert [o.idempotency_key for o in await store.list_operations("r1")] == [key]
    assert await store.list_operations("other") == []
    assert await store.get_operation("missing") is None


# --- finishing and cancelling -------------------------------------------------------------------


async def test_finish_sets_status_output_and_drops_the_lease(store: RunStore) -> None:
    """finish records the closing event, the status and output, and releases the lease for good."""
    await claimed(store, "r1")
    event = await store.finish(
        "r1", "A", 1, RunStatus.SUCCEEDED, EventDraft("run.completed", {"output": "done"})
    )
    assert (event.seq, event.kind) == (1, "run.completed")
    run = await store.get_run("r1")
    assert run.status is RunStatus.SUCCEEDED
    assert (run.lease_owner, run.lease_expires_at_epoch_ms) == (None, None)
    assert await store.claim_run("B", 30) is None
    with pytest.raises(LeaseLostError):
        await store.append_events("r1", "A", 2, [EventDraft("late")])


async def test_finish_stores_output_and_error(store: RunStore) -> None:
    """finish keeps the output of a success and the error of a failure."""
    await claimed(store, "ok")
    await claimed(store, "bad")
    await store.finish("ok", "A", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"), output="the answer")
    await store.finish("bad", "A", 1, RunStatus.FAILED, EventDraft("run.failed"), error="Boom: it broke")
    assert (await store.get_run("ok")).output == "the answer"
    failed = await store.get_run("bad")
    assert (failed.status, failed.error) == (RunStatus.FAILED, "Boom: it broke")


async def test_finish_by_non_owner_is_fenced(store: RunStore) -> None:
    """finish from a worker without the lease raises LeaseLostError and changes nothing."""
    await claimed(store, "r1", owner="A")
    with pytest.raises(LeaseLostError):
        await store.finish("r1", "B", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"), output="x")
    run = await store.get_run("r1")
    assert (run.status, run.output, run.event_count) == (RunStatus.RUNNING, None, 1)


async def test_cancel_running_run_fences_its_worker(store: RunStore) -> None:
    """Cancelling a running run appends run.cancelled, drops the lease, and the old owner's writes fail."""
    await claimed(store, "r1", owner="A")
    await store.append_events("r1", "A", 1, [EventDraft("model.request")])
    run = await store.cancel("r1", "customer gave up")
    assert run.status is RunStatus.CANCELLED
    assert (run.lease_owner, run.error) == (None, "customer gave up")
    events = await store.load_events("r1")
    assert (events[-1].seq, events[-1].kind, events[-1].data) == (
        2,
        EventKind.RUN_CANCELLED,
        {"reason": "customer gave up"},
    )
    with pytest.raises(LeaseLostError):
        await store.append_events("r1", "A", 3, [EventDraft("model.response")])
    with pytest.raises(LeaseLostError):
        await store.finish("r1", "A", 3, RunStatus.SUCCEEDED, EventDraft("run.completed"))
    assert await store.claim_run("B", 30) is None
    assert (await store.get_run("r1")).status is RunStatus.CANCELLED


@pytest.mark.parametrize("status", [RunStatus.QUEUED, RunStatus.WAITING_HUMAN])
async def test_cancel_idle_runs(store: RunStore, status: RunStatus) -> None:
    """Queued and waiting runs can be cancelled; afterwards they cannot be claimed."""
    await store.create_run(new("r1"))
    if status is RunStatus.WAITING_HUMAN:
        await store.claim_run("A", 30)
        await store.finish("r1", "A", 1, RunStatus.WAITING_HUMAN, EventDraft("escalation.opened"))
    run = await store.cancel("r1", "no longer needed")
    assert run.status is RunStatus.CANCELLED
    assert (await store.load_events("r1"))[-1].kind == EventKind.RUN_CANCELLED
    assert await store.claim_run("B", 30) is None


async def test_cancel_terminal_run_changes_nothing(store: RunStore, clock: Clock) -> None:
    """Cancelling a finished run leaves its status, output, events and timestamps untouched."""
    await claimed(store, "r1")
    await store.finish("r1", "A", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"), output="done")
    before = await store.get_run("r1")
    events_before = await store.load_events("r1")
    clock.advance(10)
    after = await store.cancel("r1", "too late")
    assert after == before
    assert await store.load_events("r1") == events_before


async def test_cancel_unknown_run(store: RunStore) -> None:
    """Cancelling a run that does not exist raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await store.cancel("ghost", "why")


async def test_count_unfinished(store: RunStore) -> None:
    """Queued and running runs are unfinished; terminal and waiting runs are not."""
    for run_id in ("queued", "running", "done", "waiting", "cancelled"):
        await store.create_run(new(run_id))
    for run_id in ("running", "done", "waiting"):
        await store.claim_run("A", 30, run_id=run_id)
    await store.finish("done", "A", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"))
    await store.finish("waiting", "A", 1, RunStatus.WAITING_HUMAN, EventDraft("escalation.opened"))
    await store.cancel("cancelled", "x")
    assert await store.count_unfinished() == 2


# --- listings for the API and the console ------------------------------------------------------------


async def spent(
    store: RunStore,
    run_id: str,
    cost: float | None,
    *,
    agent: str = "support",
    version: str = "1",
    principal: str | None = None,
    tenant: str | None = None,
) -> None:
    await store.create_run(
        NewRun(
            id=run_id, agent_name=agent, input="hi", agent_version=version, principal=principal, tenant=tenant
        )
    )
    assert await store.claim_run("A", 30.0, run_id=run_id) is not None
    await store.append_events(run_id, "A", 1, [EventDraft("model.response")], usage=Usage(100, 20, cost))


async def test_list_runs_filters_tenants_before_the_limit(store: RunStore, clock: Clock) -> None:
    """A tenant's page is full of its own runs even when other tenants' runs are newer; None is a tenant."""
    await spent(store, "a1", 0.1, tenant="acme", principal="ada")
    await spent(store, "a2", 0.1, tenant="acme", principal="bob")
    clock.advance(1)
    for n in range(5):
        await spent(store, f"g{n}", 0.1, tenant="globex")
    await spent(store, "n1", 0.1)
    acme = await store.list_runs(tenants=["acme"], limit=2)
    assert [run.id for run in acme] == ["a1", "a2"]
    assert [run.id for run in await store.list_runs(tenants=[None])] == ["n1"]
    assert await store.list_runs(tenants=[]) == []
    assert [run.id for run in await store.list_runs(tenants=["acme"], principal="bob")] == ["a2"]


async def test_cost_by_groups_and_orders_by_cost(store: RunStore, clock: Clock) -> None:
    """Cost sums per agent version, principal and tenant, costliest first; unknown cost counts as 0."""
    await spent(store, "r1", 0.25, version="1", principal="ada", tenant="acme")
    await spent(store, "r2", 0.5, version="2", principal="ada", tenant="acme")
    await spent(store, "r3", None, version="2", principal="bob", tenant="globex")
    await spent(store, "r4", 0.8, version="2", principal="cy", tenant="globex")
    by_version = await store.cost_by("agent_version")
    assert [(row.label, row.runs, row.cost_usd, row.tokens) for row in by_version] == [
        ("support v2", 3, 1.3, 360),
        ("support v1", 1, 0.25, 120),
    ]
    by_principal = await store.cost_by("principal", tenants=["acme"])
    assert [(row.principal, row.runs, row.cost_usd) for row in by_principal] == [("ada", 2, 0.75)]
    by_tenant = await store.cost_by("tenant")
    assert [(row.tenant, row.cost_usd) for row in by_tenant] == [("globex", 0.8), ("acme", 0.75)]
    clock.advance(10)
    assert await store.cost_by("tenant", since_epoch_ms=clock.now_ms) == []


async def test_cost_by_an_unknown_group_is_refused(store: RunStore) -> None:
    """Grouping by a column that is not offered names the groups that are."""
    with pytest.raises(ConfigurationError, match="agent_version, principal, tenant"):
        await store.cost_by("input")  # type: ignore[arg-type]


# --- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["mysql://localhost/db", "redis://127.0.0.1:6379/0", "file:///tmp/x.db"])
def test_store_from_url_rejects_unknown_schemes(url: str) -> None:
    """A URL with an unknown scheme is refused, quoting the URL and the supported forms."""
    with pytest.raises(ConfigurationError, match=r"unknown scheme; use sqlite:///path.db or postgresql://"):
        store_from_url(url)


# --- events written with something else --------------------------------------------------------------


async def test_within_runs_once_after_the_writes(store: RunStore) -> None:
    """`within` is called once per append, inside it; the append's writes are kept."""
    await claimed(store, "r1")
    calls: list[int] = []
    await store.append_events("r1", "A", 1, [EventDraft("x")], within=lambda: calls.append(1))
    assert calls == [1]
    assert [e.kind for e in await store.load_events("r1")] == ["run.started", "x"]


async def test_within_raising_writes_nothing(store: RunStore) -> None:
    """When `within` raises, no event, usage or operation of the append is written; the error propagates."""

    def refuse() -> None:
        raise RuntimeError("over budget")

    await claimed(store, "r1")
    with pytest.raises(RuntimeError, match="over budget"):
        await store.append_events(
            "r1",
            "A",
            1,
            [EventDraft("tool.intent")],
            usage=Usage(5, 5, 0.1),
            operations=[OperationWrite("r1:0:0", "r1", "charge", "intent")],
            within=refuse,
        )
    run = await store.get_run("r1")
    assert (run.event_count, run.usage) == (1, Usage(0, 0, None))
    assert await store.get_operation("r1:0:0") is None


async def test_within_is_not_called_for_a_fenced_append(store: RunStore, clock: Clock) -> None:
    """A worker that lost the lease gets LeaseLostError before `within` runs."""
    await claimed(store, "r1", owner="A", lease_s=1)
    clock.advance(2)
    assert await store.claim_run("B", 30) is not None
    calls: list[int] = []
    with pytest.raises(LeaseLostError):
        await store.append_events("r1", "A", 1, [EventDraft("x")], within=lambda: calls.append(1))
    assert calls == []


async def test_one_key_twice_in_one_append_applies_in_order(store: RunStore) -> None:
    """Two writes of one idempotency key in one append are applied one after the other."""
    await claimed(store, "r1")
    await store.append_events(
        "r1",
        "A",
        1,
        [EventDraft("tool.intent"), EventDraft("tool.result")],
        operations=[
            OperationWrite("k", "r1", "charge", "intent", arguments={"n": 1}),
            OperationWrite("k", "r1", "charge", "succeeded", result={"ok": True}),
        ],
    )
    op = await store.get_operation("k")
    assert op is not None
    assert (op.status, op.attempts, op.arguments, op.result) == ("succeeded", 1, {"n": 1}, {"ok": True})


async def test_finish_queued_gives_the_run_back(store: RunStore) -> None:
    """Finishing `queued` drops the lease and keeps the attempts; any worker can claim it again."""
    await claimed(store, "r1", owner="A")
    await store.finish("r1", "A", 1, RunStatus.QUEUED, EventDraft("run.attempt_failed"), error="Boom")
    run = await store.get_run("r1")
    assert (run.status, run.lease_owner, run.attempts, run.error) == (RunStatus.QUEUED, None, 1, "Boom")
    again = await store.claim_run("B", 30)
    assert again is not None
    assert (again.id, again.attempts) == ("r1", 2)


# --- people ----------------------------------------------------------------------------------------


def question(escalation_id: str = "e1", expires_s: float | None = None) -> NewEscalation:
    return NewEscalation(
        id=escalation_id,
        reason="approval",
        message="refund 150?",
        options=("approve", "deny"),
        context={"amount": 150},
        expires_s=expires_s,
    )


async def parked(store: RunStore, run_id: str, escalation_id: str, **kwargs: Any) -> None:
    await claimed(store, run_id)
    await store.finish(
        run_id,
        "A",
        1,
        RunStatus.WAITING_HUMAN,
        EventDraft(EventKind.ESCALATION_OPENED),
        escalation=question(escalation_id, **kwargs),
    )


async def test_finish_with_a_question_opens_it(store: RunStore, clock: Clock) -> None:
    """Parking a run for a person writes the question with it, open, expiring when asked."""
    await parked(store, "r1", "e1", expires_s=60)
    assert (await store.get_run("r1")).status is RunStatus.WAITING_HUMAN
    [open_question] = await store.list_escalations()
    assert open_question == await store.get_escalation("e1")
    assert (open_question.run_id, open_question.status, open_question.options) == (
        "r1",
        "open",
        ("approve", "deny"),
    )
    assert open_question.context == {"amount": 150}
    assert open_question.created_at_epoch_ms == clock.now_ms
    assert open_question.expires_at_epoch_ms == clock.now_ms + 60_000
    assert await store.expired_escalations(clock.now_ms + 59_999) == []
    assert [e.id for e in await store.expired_escalations(clock.now_ms + 60_000)] == ["e1"]


async def test_answer_queues_the_run_once(store: RunStore, clock: Clock) -> None:
    """An answer is recorded with `escalation.answered` and queues the run; a second is not applied."""
    await parked(store, "r1", "e1")
    clock.advance(3)
    answered, applied = await store.answer_escalation("e1", {"choice": "approve"}, "ana")
    assert applied is True
    assert (answered.status, answered.answer, answered.answered_by) == (
        "answered",
        {"choice": "approve"},
        "ana",
    )
    assert answered.answered_at_epoch_ms == clock.now_ms
    run = await store.get_run("r1")
    assert run.status is RunStatus.QUEUED
    last = (await store.load_events("r1"))[-1]
    assert (last.seq, last.kind) == (2, EventKind.ESCALATION_ANSWERED)
    assert last.data == {
        "escalation_id": "e1",
        "reason": "approval",
        "opened_at_epoch_ms": clock.now_ms - 3000,
        "answer": {"choice": "approve"},
        "by": "ana",
    }
    again, applied_again = await store.answer_escalation("e1", {"choice": "deny"}, "bob")
    assert applied_again is False
    assert again.answer == {"choice": "approve"}
    assert (await store.get_run("r1")).event_count == 3
    assert await store.list_escalations() == []
    assert [e.id for e in await store.list_escalations(status="answered", run_id="r1")] == ["e1"]


async def test_answering_an_unknown_question(store: RunStore) -> None:
    """Answering or reading a question that does not exist raises EscalationNotFoundError."""
    with pytest.raises(EscalationNotFoundError, match="'nope'"):
        await store.answer_escalation("nope", {}, "ana")
    with pytest.raises(EscalationNotFoundError):
        await store.get_escalation("nope")


async def test_cancel_withdraws_open_questions(store: RunStore) -> None:
    """A cancelled run's questions are withdrawn; answering one later changes nothing."""
    await parked(store, "r1", "e1")
    await store.cancel("r1", "no longer needed")
    assert (await store.get_escalation("e1")).status == "cancelled"
    _, applied = await store.answer_escalation("e1", {"choice": "approve"}, "ana")
    assert applied is False
    assert (await store.get_run("r1")).status is RunStatus.CANCELLED


async def test_list_escalations_by_tenant(store: RunStore) -> None:
    """Questions are listed oldest first, only those of the given tenants' runs."""
    for run_id, tenant in (("a", "acme"), ("g", "globex"), ("n", None)):
        await store.create_run(NewRun(id=run_id, agent_name="support", input="hi", tenant=tenant))
        assert await store.claim_run("A", 30, run_id=run_id) is not None
        await store.finish(
            run_id,
            "A",
            1,
            RunStatus.WAITING_HUMAN,
            EventDraft("escalation.opened"),
            escalation=question(f"e-{run_id}"),
        )
    assert [e.id for e in await store.list_escalations()] == ["e-a", "e-g", "e-n"]
    assert [e.id for e in await store.list_escalations(tenants=["acme", None])] == ["e-a", "e-n"]
    assert await store.list_escalations(tenants=[]) == []
    assert [e.id for e in await store.list_escalations(limit=1)] == ["e-a"]


# --- attempts, dead letters and replays -------------------------------------------------------------


async def test_claim_dead_letters_a_run_whose_attempts_failed(store: RunStore, clock: Clock) -> None:
    """A claim with max_attempts parks a run whose workers all died without a result, in one step."""
    await store.create_run(new("r1"))
    for owner in ("A", "B", "C"):
        assert await store.claim_run(owner, 1, max_attempts=3) is not None
        clock.advance(2)
    parked_run = await store.claim_run("D", 30, max_attempts=3)
    assert parked_run is not None
    assert (parked_run.id, parked_run.status, parked_run.lease_owner) == ("r1", RunStatus.DEAD_LETTERED, None)
    assert parked_run.attempts == 3
    assert parked_run.error is not None
    assert parked_run.error.startswith("dead-lettered after 3 failed attempts in a row")
    assert parked_run.event_count == 2
    last = (await store.load_events("r1"))[-1]
    assert last.kind == EventKind.RUN_DEAD_LETTERED
    assert (last.data["failed_attempts"], last.data["max_attempts"]) == (3, 3)
    assert "worker C" in last.data["last_error"]
    assert await store.claim_run("E", 30, max_attempts=3) is None
    assert (await store.count_by_status())[RunStatus.DEAD_LETTERED] == 1


async def test_progress_keeps_a_run_out_of_the_dead_letters(store: RunStore, clock: Clock) -> None:
    """An attempt that recorded a result does not count as failed: the run is claimed again."""
    await store.create_run(new("r1"))
    for owner in ("A", "B", "C"):
        run = await store.claim_run(owner, 1, max_attempts=3)
        assert run is not None
        if owner == "C":
            await store.append_events(
                "r1",
                "C",
                run.event_count,
                [EventDraft(EventKind.RUN_RESUMED, {"attempt": 3}), EventDraft(EventKind.MODEL_RESPONSE)],
            )
        clock.advance(2)
    again = await store.claim_run("D", 30, max_attempts=3)
    assert again is not None
    assert (again.status, again.lease_owner, again.attempts) == (RunStatus.RUNNING, "D", 4)


async def test_claim_takes_the_next_run_after_parking_one(store: RunStore, clock: Clock) -> None:
    """A claim that dead-letters the oldest run returns it parked; the next claim takes the next run."""
    await store.create_run(new("old"))
    assert await store.claim_run("A", 1, max_attempts=1) is not None
    clock.advance(2)
    await store.create_run(new("young"))
    first = await store.claim_run("B", 30, max_attempts=1)
    assert first is not None
    assert (first.id, first.status) == ("old", RunStatus.DEAD_LETTERED)
    second = await store.claim_run("B", 30, max_attempts=1)
    assert second is not None
    assert (second.id, second.status) == ("young", RunStatus.RUNNING)


async def test_replay_queues_a_dead_letter_once(store: RunStore, clock: Clock) -> None:
    """Replay queues a dead-lettered run with attempts reset and `run.replayed`; other runs are left."""
    await store.create_run(new("r1"))
    assert await store.claim_run("A", 1, max_attempts=1) is not None
    clock.advance(2)
    assert (await store.claim_run("B", 30, max_attempts=1)).status is RunStatus.DEAD_LETTERED  # type: ignore[union-attr]
    run, applied = await store.replay("r1", "ana")
    assert applied is True
    assert (run.status, run.attempts, run.error) == (RunStatus.QUEUED, 0, None)
    last = (await store.load_events("r1"))[-1]
    assert (last.kind, last.data) == (EventKind.RUN_REPLAYED, {"by": "ana", "previous_attempts": 1})
    _, again = await store.replay("r1", "ana")
    assert again is False
    claimed_again = await store.claim_run("C", 30, max_attempts=1)
    assert claimed_again is not None
    assert (claimed_again.status, claimed_again.attempts) == (RunStatus.RUNNING, 1)
    with pytest.raises(RunNotFoundError):
        await store.replay("ghost", "ana")


async def test_cancel_with_compensation_queues_the_undo(store: RunStore) -> None:
    """Cancelling with `compensate` a run whose write took effect queues it with `compensation.started`."""
    await claimed(store, "r1")
    await store.append_events(
        "r1",
        "A",
        1,
        [EventDraft("tool.result")],
        operations=[OperationWrite("k", "r1", "charge", "succeeded")],
    )
    run = await store.cancel("r1", "customer gave up", compensate=True)
    assert (run.status, run.attempts, run.lease_owner, run.error) == (
        RunStatus.QUEUED,
        0,
        None,
        "customer gave up",
    )
    assert (await store.load_events("r1"))[-1].kind == EventKind.COMPENSATION_STARTED
    await claimed(store, "r2")
    assert (await store.cancel("r2", "nothing to undo", compensate=True)).status is RunStatus.CANCELLED


async def test_count_by_status_names_every_status(store: RunStore) -> None:
    """Every status is present, 0 when no run has it."""
    await store.create_run(new("q"))
    await claimed(store, "r")
    counts = await store.count_by_status()
    assert set(counts) == set(RunStatus)
    assert (counts[RunStatus.QUEUED], counts[RunStatus.RUNNING], counts[RunStatus.FAILED]) == (1, 1, 0)


async def test_shadow_runs_are_listed_apart(store: RunStore) -> None:
    """Shadow runs stay out of the production listing and costs; `shadows=True` lists them."""
    await store.create_run(new("prod"))
    await store.create_run(NewRun(id="shadow", agent_name="support", input="hi", shadow_of="prod"))
    assert [r.id for r in await store.list_runs()] == ["prod"]
    [shadow] = await store.list_runs(shadows=True)
    assert (shadow.id, shadow.shadow_of) == ("shadow", "prod")


# --- canaries and comparisons --------------------------------------------------------------------------


def canary(canary_id: str, *, started: int, status: str = "running") -> Canary:
    return Canary(
        id=canary_id,
        agent_name="support",
        baseline_version="1",
        candidate_version="2",
        share=0.25,
        status=status,  # type: ignore[arg-type]
        thresholds={"max_failure_rate": 0.1},
        started_at_epoch_ms=started,
    )


async def test_canary_lifecycle(store: RunStore, clock: Clock) -> None:
    """One running canary per agent; it routes until rolled back; it ends once."""
    started = await store.create_canary(canary("c1", started=clock.now_ms))
    assert await store.current_canary("support") == started
    with pytest.raises(ConfigurationError, match="already has canary c1 running"):
        await store.create_canary(canary("c2", started=clock.now_ms))
    clock.advance(5)
    ended, applied = await store.end_canary("c1", "rolled_back", "failures up")
    assert applied is True
    assert (ended.status, ended.reason, ended.ended_at_epoch_ms) == (
        "rolled_back",
        "failures up",
        clock.now_ms,
    )
    assert await store.current_canary("support") is None
    _, again = await store.end_canary("c1", "promoted", "changed my mind")
    assert again is False
    await store.create_canary(canary("c2", started=clock.now_ms))
    await store.end_canary("c2", "promoted", "good")
    current = await store.current_canary("support")
    assert current is not None
    assert (current.id, current.status, current.share) == ("c2", "promoted", 0.25)
    assert [c.id for c in await store.list_canaries(agent_name="support")] == ["c2", "c1"]
    assert [c.id for c in await store.list_canaries(limit=1)] == ["c2"]
    assert await store.list_canaries(agent_name="other") == []
    with pytest.raises(ConfigurationError, match="promoted or rolled_back"):
        await store.end_canary("c2", "paused", "x")
    with pytest.raises(ConfigurationError, match="no canary"):
        await store.end_canary("ghost", "promoted", "x")


async def test_outcomes_and_tool_usage(store: RunStore, clock: Clock) -> None:
    """Outcomes per version since a time (shadows excluded); tool calls and writes of succeeded runs."""
    await spent(store, "r1", 0.5, version="2")
    await store.append_events(
        "r1",
        "A",
        2,
        [
            EventDraft("tool.intent", {"tool": "refund"}),
            EventDraft("tool.result", {"tool": "refund"}),
            EventDraft("tool.result", {"tool": "lookup"}),
            EventDraft("tool.result", {"tool": "lookup"}),
        ],
    )
    clock.advance(2)
    await store.finish("r1", "A", 6, RunStatus.SUCCEEDED, EventDraft("run.completed"))
    await store.create_run(
        NewRun(id="s1", agent_name="support", input="hi", agent_version="2", shadow_of="r1")
    )
    [outcome] = await store.outcomes("support", "2", 0)
    assert (outcome.status, outcome.cost_usd, outcome.duration_ms) == (RunStatus.SUCCEEDED, 0.5, 2000)
    assert await store.outcomes("support", "1", 0) == []
    assert await store.outcomes("support", "2", clock.now_ms) == []
    assert await store.tool_usage("support", runs=10) == [({"refund": 1, "lookup": 2}, 1)]
    assert await store.tool_usage("billing", runs=10) == []


# --- audit -------------------------------------------------------------------------------------------


async def test_audit_is_listed_newest_first_and_filtered(store: RunStore, clock: Clock) -> None:
    """Entries get the store's time (unless given) and an increasing id; filters and tenants apply."""
    await store.append_audit(
        [
            AuditEntry(
                "permission",
                "allow",
                "r1",
                "support",
                "granted",
                principal="ada",
                tenant="acme",
                tool="refund",
            ),
            AuditEntry("guardrail", "block", "r1", "support", "injection", principal="ada", tenant="acme"),
        ]
    )
    clock.advance(1)
    await store.append_audit(
        [AuditEntry("permission", "deny", "r2", "support", "no grant", detail={"why": 1})]
    )
    await store.append_audit([AuditEntry("permission", "allow", "r3", "support", "old", at_epoch_ms=5)])
    entries = await store.list_audit()
    assert [(e.run_id, e.decision) for e in entries] == [
        ("r3", "allow"),
        ("r2", "deny"),
        ("r1", "block"),
        ("r1", "allow"),
    ]
    assert entries[0].id > entries[1].id > entries[2].id > entries[3].id
    assert (entries[0].at_epoch_ms, entries[1].at_epoch_ms) == (5, clock.now_ms)
    assert entries[1].detail == {"why": 1}
    assert entries[3].tool == "refund"
    assert [e.decision for e in await store.list_audit(run_id="r1", decision="allow")] == ["allow"]
    assert [e.run_id for e in await store.list_audit(tenants=[None])] == ["r3", "r2"]
    assert [e.run_id for e in await store.list_audit(principal="ada", limit=1)] == ["r1"]
    assert [e.run_id for e in await store.list_audit(since_epoch_ms=clock.now_ms)] == ["r2"]
    assert await store.list_audit(tenants=[]) == []
    await store.append_audit([])


async def test_claims_are_fair_across_tenants(store: RunStore, clock: Clock) -> None:
    """A tenant's burst of older runs does not hold every worker: the tenant with the fewest runs in
    progress goes next, oldest first within it."""
    for n in range(4):
        await store.create_run(NewRun(id=f"acme_{n}", agent_name="support", input="hi", tenant="acme"))
        clock.advance(1)
    await store.create_run(NewRun(id="globex_0", agent_name="support", input="hi", tenant="globex"))
    order = []
    for owner in ("A", "B", "C", "D"):
        run = await store.claim_run(owner, 30)
        assert run is not None
        order.append(run.id)
    assert order == ["acme_0", "globex_0", "acme_1", "acme_2"]
    clock.advance(60)  # every lease lapsed: nobody is working on anything, so age decides again
    taken = await store.claim_run("E", 30)
    assert taken is not None
    assert taken.id == "acme_0"
