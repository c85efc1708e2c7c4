"""SqliteRunStore on real files: runs, idempotent creation, leases, fencing, events, operations."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tether.errors import (
    ConfigurationError,
    IdempotencyConflictError,
    LeaseLostError,
    RunNotFoundError,
    StoreError,
)
from tether.store import EventDraft, NewRun, OperationWrite, SqliteRunStore, store_from_url
from tether.types import EventKind, RunStatus, Usage

if TYPE_CHECKING:
    from conftest import Clock


def new(
    run_id: str, *, key: str | None = None, input: str = "where is my order?", agent: str = "support"
) -> NewRun:
    return NewRun(id=run_id, agent_name=agent, input=input, idempotency_key=key)


async def claimed(store: SqliteRunStore, run_id: str, owner: str = "A", lease_s: float = 30.0) -> None:
    await store.create_run(new(run_id))
    run = await store.claim_run(owner, lease_s, run_id=run_id)
    assert run is not None


# --- creating runs ------------------------------------------------------------------------------


async def test_create_run_is_queued_with_a_started_event(store: SqliteRunStore, clock: Clock) -> None:
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


async def test_started_event_omits_absent_principal(store: SqliteRunStore) -> None:
    """Without a principal the started event carries no principal key."""
    await store.create_run(new("r1"))
    [event] = await store.load_events("r1")
    assert "principal" not in event.data


async def test_run_fields_round_trip(store: SqliteRunStore) -> None:
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


async def test_get_unknown_run(store: SqliteRunStore) -> None:
    """Getting a run that does not exist raises RunNotFoundError naming it."""
    with pytest.raises(RunNotFoundError, match="'nope'"):
        await store.get_run("nope")


async def test_same_idempotency_key_returns_the_same_run(store: SqliteRunStore) -> None:
    """Creating with a key already used for the same input returns that run with created=False."""
    first, created_first = await store.create_run(new("r1", key="order-42"))
    second, created_second = await store.create_run(new("r2", key="order-42"))
    assert (created_first, created_second) == (True, False)
    assert second.id == first.id == "r1"
    assert [r.id for r in await store.list_runs()] == ["r1"]
    assert len(await store.load_events("r1")) == 1
    with pytest.raises(RunNotFoundError):
        await store.get_run("r2")


async def test_idempotent_create_returns_the_run_as_stored(store: SqliteRunStore) -> None:
    """The run returned for a reused key is the same as `get_run` reports (event count included)."""
    await store.create_run(new("r1", key="k"))
    again, _ = await store.create_run(new("r2", key="k"))
    assert again == await store.get_run("r1")


@pytest.mark.parametrize(
    ("agent", "input"), [("support", "another input"), ("billing", "where is my order?")]
)
async def test_same_key_different_request_conflicts(store: SqliteRunStore, agent: str, input: str) -> None:
    """Reusing a key with a different input or agent raises IdempotencyConflictError and creates nothing."""
    await store.create_run(new("r1", key="order-42"))
    with pytest.raises(IdempotencyConflictError, match=r"'order-42'.*r1"):
        await store.create_run(new("r2", key="order-42", input=input, agent=agent))
    assert [r.id for r in await store.list_runs()] == ["r1"]


async def test_list_runs_newest_first_filtered_and_limited(store: SqliteRunStore, clock: Clock) -> None:
    """list_runs returns newest first, filters by status and honours the limit."""
    for run_id in ("r1", "r2", "r3"):
        await store.create_run(new(run_id))
        clock.advance(1)
    await store.claim_run("A", 30, run_id="r2")
    assert [r.id for r in await store.list_runs()] == ["r3", "r2", "r1"]
    assert [r.id for r in await store.list_runs(limit=2)] == ["r3", "r2"]
    assert [r.id for r in await store.list_runs(status=RunStatus.QUEUED)] == ["r3", "r1"]
    assert [r.id for r in await store.list_runs(status=RunStatus.RUNNING)] == ["r2"]


async def test_list_runs_reports_event_counts(store: SqliteRunStore) -> None:
    """Each listed run carries its real event count, as get_run does."""
    await claimed(store, "r1")
    await store.append_events("r1", "A", 1, [EventDraft("x"), EventDraft("y")])
    [listed] = await store.list_runs()
    assert listed.event_count == (await store.get_run("r1")).event_count == 3


# --- claiming and leases ------------------------------------------------------------------------


async def test_claim_takes_the_oldest_run_first(store: SqliteRunStore, clock: Clock) -> None:
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


async def test_claim_leases_the_run(store: SqliteRunStore, clock: Clock) -> None:
    """A claim marks the run running, records owner and expiry, and counts the attempt."""
    await store.create_run(new("r1"))
    run = await store.claim_run("worker-A", 2.5)
    assert run is not None
    assert run.status is RunStatus.RUNNING
    assert run.lease_owner == "worker-A"
    assert run.lease_expires_at_epoch_ms == clock.now_ms + 2500
    assert run.attempts == 1
    assert (await store.get_run("r1")).lease_owner == "worker-A"


async def test_leased_run_is_claimable_only_after_expiry(store: SqliteRunStore, clock: Clock) -> None:
    """A live lease keeps others out; once it expires the run is claimable and the attempt counted."""
    await claimed(store, "r1", owner="A", lease_s=10)
    clock.advance(9.999)
    assert await store.claim_run("B", 10) is None
    assert await store.claim_run("B", 10, run_id="r1") is None
    clock.advance(0.002)
    run = await store.claim_run("B", 10)
    assert run is not None
    assert (run.id, run.lease_owner, run.attempts) == ("r1", "B", 2)


async def test_claim_by_id(store: SqliteRunStore) -> None:
    """Claiming a given run id takes that run even when older runs are queued."""
    await store.create_run(new("old"))
    await store.create_run(new("wanted"))
    run = await store.claim_run("A", 30, run_id="wanted")
    assert run is not None
    assert run.id == "wanted"
    assert (await store.get_run("old")).status is RunStatus.QUEUED
    assert await store.claim_run("A", 30, run_id="missing") is None


async def test_heartbeat_extends_the_lease(store: SqliteRunStore, clock: Clock) -> None:
    """A heartbeat by the owner pushes the expiry forward, keeping others out past the first expiry."""
    await claimed(store, "r1", owner="A", lease_s=10)
    clock.advance(8)
    assert await store.heartbeat("r1", "A", 10) is True
    assert (await store.get_run("r1")).lease_expires_at_epoch_ms == clock.now_ms + 10_000
    clock.advance(5)  # past the original expiry
    assert await store.claim_run("B", 10) is None


async def test_heartbeat_by_non_owner_fails(store: SqliteRunStore) -> None:
    """A heartbeat from a worker that does not own the lease returns False and changes nothing."""
    await claimed(store, "r1", owner="A", lease_s=10)
    before = await store.get_run("r1")
    assert await store.heartbeat("r1", "B", 60) is False
    assert (await store.get_run("r1")).lease_expires_at_epoch_ms == before.lease_expires_at_epoch_ms


async def test_heartbeat_after_takeover_fails(store: SqliteRunStore, clock: Clock) -> None:
    """Once another worker took the expired lease, the old owner's heartbeat returns False."""
    await claimed(store, "r1", owner="A", lease_s=1)
    clock.advance(2)
    assert await store.claim_run("B", 30) is not None
    assert await store.heartbeat("r1", "A", 30) is False
    assert (await store.get_run("r1")).lease_owner == "B"


async def test_release_requeues_only_for_the_owner(store: SqliteRunStore) -> None:
    """release by the owner puts the run back in the queue; by anyone else it does nothing."""
    await claimed(store, "r1", owner="A")
    await store.release("r1", "B")
    assert (await store.get_run("r1")).lease_owner == "A"
    await store.release("r1", "A")
    run = await store.get_run("r1")
    assert (run.status, run.lease_owner, run.lease_expires_at_epoch_ms) == (RunStatus.QUEUED, None, None)
    assert await store.claim_run("B", 30) is not None


# --- events, usage and fencing ------------------------------------------------------------------


async def test_append_and_load_events(store: SqliteRunStore, clock: Clock) -> None:
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


async def test_append_by_non_owner_is_fenced(store: SqliteRunStore, clock: Clock) -> None:
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


async def test_append_with_a_taken_seq_writes_nothing(store: SqliteRunStore) -> None:
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


async def test_within_runs_in_the_append_transaction(store: SqliteRunStore) -> None:
    """A `within` step that raises rolls its append back; one that returns commits with it."""
    await claimed(store, "r1")

    def refuse() -> None:
        raise RuntimeError("refused inside the transaction")

    with pytest.raises(RuntimeError, match="refused"):
        await store.append_events("r1", "A", 1, [EventDraft("model.request")], within=refuse)
    assert [e.kind for e in await store.load_events("r1")] == ["run.started"]
    seen: list[bool] = []
    await store.append_events(
        "r1",
        "A",
        1,
        [EventDraft("model.request")],
        within=lambda: seen.append(store.connection.in_transaction),
    )
    assert seen == [True]
    assert [e.kind for e in await store.load_events("r1")] == ["run.started", "model.request"]


async def test_usage_accumulates(store: SqliteRunStore) -> None:
    """Usage of each append adds up; a missing cost does not erase a known one."""
    await claimed(store, "r1")
    await store.append_events("r1", "A", 1, [EventDraft("a")], usage=Usage(10, 5, 0.25))
    await store.append_events("r1", "A", 2, [EventDraft("b")], usage=Usage(3, 2, None))
    await store.append_events("r1", "A", 3, [EventDraft("c")], usage=Usage(1, 1, 0.5))
    assert (await store.get_run("r1")).usage == Usage(14, 8, 0.75)


async def test_unknown_cost_stays_unknown(store: SqliteRunStore) -> None:
    """When no append reports a cost, the run's cost stays None (unknown), not 0."""
    await claimed(store, "r1")
    await store.append_events("r1", "A", 1, [EventDraft("a")], usage=Usage(10, 5, None))
    assert (await store.get_run("r1")).usage == Usage(10, 5, None)


async def test_operations_upsert(store: SqliteRunStore) -> None:
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


async def test_finish_sets_status_output_and_drops_the_lease(store: SqliteRunStore) -> None:
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


async def test_finish_stores_output_and_error(store: SqliteRunStore) -> None:
    """finish keeps the output of a success and the error of a failure."""
    await claimed(store, "ok")
    await claimed(store, "bad")
    await store.finish("ok", "A", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"), output="the answer")
    await store.finish("bad", "A", 1, RunStatus.FAILED, EventDraft("run.failed"), error="Boom: it broke")
    assert (await store.get_run("ok")).output == "the answer"
    failed = await store.get_run("bad")
    assert (failed.status, failed.error) == (RunStatus.FAILED, "Boom: it broke")


async def test_finish_by_non_owner_is_fenced(store: SqliteRunStore) -> None:
    """finish from a worker without the lease raises LeaseLostError and changes nothing."""
    await claimed(store, "r1", owner="A")
    with pytest.raises(LeaseLostError):
        await store.finish("r1", "B", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"), output="x")
    run = await store.get_run("r1")
    assert (run.status, run.output, run.event_count) == (RunStatus.RUNNING, None, 1)


async def test_cancel_running_run_fences_its_worker(store: SqliteRunStore) -> None:
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
async def test_cancel_idle_runs(store: SqliteRunStore, status: RunStatus) -> None:
    """Queued and waiting runs can be cancelled; afterwards they cannot be claimed."""
    await store.create_run(new("r1"))
    if status is RunStatus.WAITING_HUMAN:
        await store.claim_run("A", 30)
        await store.finish("r1", "A", 1, RunStatus.WAITING_HUMAN, EventDraft("escalation.opened"))
    run = await store.cancel("r1", "no longer needed")
    assert run.status is RunStatus.CANCELLED
    assert (await store.load_events("r1"))[-1].kind == EventKind.RUN_CANCELLED
    assert await store.claim_run("B", 30) is None


async def test_cancel_terminal_run_changes_nothing(store: SqliteRunStore, clock: Clock) -> None:
    """Cancelling a finished run leaves its status, output, events and timestamps untouched."""
    await claimed(store, "r1")
    await store.finish("r1", "A", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"), output="done")
    before = await store.get_run("r1")
    events_before = await store.load_events("r1")
    clock.advance(10)
    after = await store.cancel("r1", "too late")
    assert after == before
    assert await store.load_events("r1") == events_before


async def test_cancel_unknown_run(store: SqliteRunStore) -> None:
    """Cancelling a run that does not exist raises RunNotFoundError."""
    with pytest.raises(RunNotFoundError):
        await store.cancel("ghost", "why")


async def test_count_unfinished(store: SqliteRunStore) -> None:
    """Queued and running runs are unfinished; terminal and waiting runs are not."""
    for run_id in ("queued", "running", "done", "waiting", "cancelled"):
        await store.create_run(new(run_id))
    for run_id in ("running", "done", "waiting"):
        await store.claim_run("A", 30, run_id=run_id)
    await store.finish("done", "A", 1, RunStatus.SUCCEEDED, EventDraft("run.completed"))
    await store.finish("waiting", "A", 1, RunStatus.WAITING_HUMAN, EventDraft("escalation.opened"))
    await store.cancel("cancelled", "x")
    assert await store.count_unfinished() == 2


async def open_and_close(url: str) -> None:
    opened = store_from_url(url)
    await opened.close()


# --- files, connections and URLs ----------------------------------------------------------------


async def test_two_stores_on_one_file_see_each_others_writes(db_path: Path, clock: Clock) -> None:
    """Two connections on one WAL file share runs, events and leases; fencing works across them."""
    first = SqliteRunStore(db_path, clock=clock)
    second = SqliteRunStore(db_path, clock=clock)
    try:
        await first.create_run(new("r1"))
        assert (await second.get_run("r1")).status is RunStatus.QUEUED
        assert await first.claim_run("A", 1) is not None
        assert (await second.get_run("r1")).lease_owner == "A"
        assert await second.claim_run("B", 30) is None
        clock.advance(2)
        assert await second.claim_run("B", 30) is not None
        with pytest.raises(LeaseLostError):
            await first.append_events("r1", "A", 1, [EventDraft("stale")])
        await second.append_events("r1", "B", 1, [EventDraft("fresh")])
        assert [e.kind for e in await first.load_events("r1")] == ["run.started", "fresh"]
    finally:
        await first.close()
        await second.close()
    with sqlite3.connect(db_path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()


async def test_data_survives_reopening(db_path: Path) -> None:
    """Runs and events are durable: a new store on the same file reads them."""
    store = SqliteRunStore(db_path)
    await store.create_run(new("r1", key="k"))
    await store.close()
    reopened = SqliteRunStore(db_path)
    try:
        assert (await reopened.get_run("r1")).idempotency_key == "k"
        assert len(await reopened.load_events("r1")) == 1
    finally:
        await reopened.close()


async def test_busy_database_is_a_store_error(store: SqliteRunStore, db_path: Path) -> None:
    """When another connection holds the write lock past the busy timeout, writes raise StoreError."""
    impatient = SqliteRunStore(db_path, busy_timeout_s=0.05)
    blocker = sqlite3.connect(db_path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreError, match="busy"):
            await impatient.create_run(new("r1"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        await impatient.close()
    with pytest.raises(RunNotFoundError):
        await store.get_run("r1")


def test_newer_schema_is_refused(db_path: Path) -> None:
    """A database written by a newer tether is refused with an upgrade hint."""
    with sqlite3.connect(db_path) as raw:
        raw.execute("CREATE TABLE tether_schema (version INTEGER NOT NULL)")
        raw.execute("INSERT INTO tether_schema VALUES (99)")
    raw.close()
    with pytest.raises(ConfigurationError, match=r"schema version 99.*upgrade tether"):
        SqliteRunStore(db_path)


def test_invalid_synchronous_setting(db_path: Path) -> None:
    """Only NORMAL and FULL are accepted for `synchronous`."""
    with pytest.raises(ConfigurationError, match="OFF"):
        SqliteRunStore(db_path, synchronous="OFF")  # type: ignore[arg-type]


def test_file_that_is_not_a_database(tmp_path: Path) -> None:
    """Opening a file that is not SQLite gives a ConfigurationError naming the file."""
    notes = tmp_path / "notes.txt"
    notes.write_text("these are my notes, not a database\n" * 200, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"notes\.txt"):
        SqliteRunStore(notes)


@pytest.mark.parametrize("form", ["relative", "absolute", "plain"])
async def test_from_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    """`sqlite:///relative.db`, `sqlite:////absolute.db` and a bare path all open that file."""
    monkeypatch.chdir(tmp_path)
    url = {
        "relative": "sqlite:///runs.db",
        "absolute": f"sqlite:///{tmp_path / 'runs.db'}",
        "plain": str(tmp_path / "runs.db"),
    }[form]
    store = store_from_url(url)
    try:
        assert isinstance(store, SqliteRunStore)
        await store.create_run(new("r1"))
    finally:
        await store.close()
    assert (tmp_path / "runs.db").exists()


def test_from_url_missing_directory(tmp_path: Path) -> None:
    """A URL in a directory that does not exist names the directory."""
    with pytest.raises(ConfigurationError, match=r"directory .*no-such-dir.* does not exist"):
        SqliteRunStore.from_url(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")


@pytest.mark.parametrize("url", ["sqlite://bad", "sqlite://host/x.db"])
def test_from_url_two_slashes(url: str) -> None:
    """`sqlite://` with a host part is refused with the forms that work."""
    with pytest.raises(ConfigurationError, match=r"use sqlite:///relative/path.db"):
        SqliteRunStore.from_url(url)


def test_from_url_without_a_file() -> None:
    """`sqlite:///` names no file."""
    with pytest.raises(ConfigurationError, match="names no file"):
        SqliteRunStore.from_url("sqlite:///")


@pytest.mark.parametrize("url", ["mysql://localhost/db", "redis://127.0.0.1:6379/0", "file:///tmp/x.db"])
def test_store_from_url_rejects_unknown_schemes(url: str) -> None:
    """A URL with an unknown scheme is refused, quoting the URL and the supported form."""
    with pytest.raises(ConfigurationError, match=r"unknown scheme; use sqlite:///path.db"):
        store_from_url(url)


def test_store_from_url_postgres_not_available() -> None:
    """A PostgreSQL URL says that store is not available rather than failing obscurely."""
    with pytest.raises(ConfigurationError, match="PostgreSQL store is not available"):
        store_from_url("postgresql://127.0.0.1/tether")


async def test_store_from_url_rejects_malformed_sqlite_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:runs.db` (no slashes) is a malformed URL, not a file literally named `sqlite:runs.db`."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"sqlite:runs\.db"):
        await open_and_close("sqlite:runs.db")
    assert not (tmp_path / "sqlite:runs.db").exists()


# --- listings for the API and the console ------------------------------------------------------------


async def spent(
    store: SqliteRunStore,
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


async def test_list_runs_filters_tenants_before_the_limit(store: SqliteRunStore, clock: Clock) -> None:
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


async def test_cost_by_groups_and_orders_by_cost(store: SqliteRunStore, clock: Clock) -> None:
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


async def test_cost_by_an_unknown_group_is_refused(store: SqliteRunStore) -> None:
    """Grouping by a column that is not offered names the groups that are."""
    with pytest.raises(ConfigurationError, match="agent_version, principal, tenant"):
        await store.cost_by("input")  # type: ignore[arg-type]
