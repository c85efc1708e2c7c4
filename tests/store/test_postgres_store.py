"""PostgresRunStore only: many hosts at once (claims, fencing, creation, migrations), wake-ups, the schema
and its migrations, the append-only audit table, URLs and errors."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

from tether.errors import ConfigurationError, LeaseLostError, StoreError
from tether.store import EventDraft, NewRun, PostgresRunStore, store_from_url
from tether.store.base import AuditEntry, NewEscalation
from tether.store.sql import BASE_VERSION, POSTGRES, SCHEMA_VERSION
from tether.types import EventKind, RunStatus

if TYPE_CHECKING:
    from conftest import Clock

Stores = Callable[..., PostgresRunStore]


def new(run_id: str, *, key: str | None = None, input: str = "hi") -> NewRun:
    return NewRun(id=run_id, agent_name="support", input=input, idempotency_key=key)


def raw(postgres_url: str, schema: str) -> psycopg.Connection[tuple[object, ...]]:
    """A plain connection to the test's schema, as another program would open one."""
    return psycopg.connect(postgres_url, autocommit=True, options=f"-c search_path={schema}")


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# --- many hosts --------------------------------------------------------------------------------------


async def test_concurrent_claims_on_two_hosts_never_share_a_run(pg_stores: Stores) -> None:
    """Two stores (two pools, as two hosts) claiming 80 times at once from 50 runs claim each exactly once."""
    first, second = pg_stores(), pg_stores()
    for n in range(50):
        await first.create_run(new(f"r{n:02d}"))
    claims = [
        (first if n % 2 else second).claim_run(f"worker-{n}", 30, max_attempts=3 if n % 3 else None)
        for n in range(80)
    ]
    results = await asyncio.gather(*claims)
    claimed = [run for run in results if run is not None]
    assert len(claimed) == 50
    assert sorted(run.id for run in claimed) == [f"r{n:02d}" for n in range(50)]
    for run in claimed:
        stored = await second.get_run(run.id)
        assert (stored.status, stored.lease_owner, stored.attempts) == (RunStatus.RUNNING, run.lease_owner, 1)
    assert await first.claim_run("late", 30) is None


async def test_concurrent_claims_dead_letter_each_exhausted_run_once(pg_stores: Stores, clock: Clock) -> None:
    """Runs whose attempts are used up are parked by exactly one of many concurrent claims."""
    first, second = pg_stores(), pg_stores()
    for n in range(10):
        await first.create_run(new(f"r{n}"))
        assert await first.claim_run("gone", 1, run_id=f"r{n}") is not None
    clock.advance(2)
    results = await asyncio.gather(
        *((first if n % 2 else second).claim_run(f"w{n}", 30, max_attempts=1) for n in range(30))
    )
    parked = [run.id for run in results if run is not None]
    assert sorted(parked) == [f"r{n}" for n in range(10)]
    for n in range(10):
        kinds = [event.kind for event in await first.load_events(f"r{n}")]
        assert kinds == ["run.started", "run.dead_lettered"]
    assert (await first.count_by_status())[RunStatus.DEAD_LETTERED] == 10


async def test_fencing_after_takeover_by_another_host(pg_stores: Stores, clock: Clock) -> None:
    """Once host B took over an expired lease, every write of host A's worker is rejected."""
    host_a, host_b = pg_stores(), pg_stores()
    await host_a.create_run(new("r1"))
    assert await host_a.claim_run("A", 1) is not None
    await host_a.append_events("r1", "A", 1, [EventDraft("model.request")])
    clock.advance(2)
    taken = await host_b.claim_run("B", 30)
    assert taken is not None
    assert (taken.lease_owner, taken.attempts, taken.event_count) == ("B", 2, 2)
    with pytest.raises(LeaseLostError, match=r"'A'.*r1"):
        await host_a.append_events("r1", "A", 2, [EventDraft("stale")])
    with pytest.raises(LeaseLostError):
        await host_a.finish("r1", "A", 2, RunStatus.SUCCEEDED, EventDraft("run.completed"), output="stale")
    assert await host_a.heartbeat("r1", "A", 30) is False
    await host_a.release("r1", "A")
    await host_b.append_events("r1", "B", 2, [EventDraft("fresh")])
    with pytest.raises(LeaseLostError, match="already written"):
        await host_b.append_events("r1", "B", 2, [EventDraft("again")])
    assert [e.kind for e in await host_a.load_events("r1")] == ["run.started", "model.request", "fresh"]
    run = await host_a.get_run("r1")
    assert (run.status, run.lease_owner, run.output) == (RunStatus.RUNNING, "B", None)


async def test_concurrent_starts_with_one_key_make_one_run(pg_stores: Stores) -> None:
    """Ten starts with one idempotency key at once, on two hosts, create one run and return it to all."""
    first, second = pg_stores(), pg_stores()
    results = await asyncio.gather(
        *((first if n % 2 else second).create_run(new(f"r{n}", key="order-42")) for n in range(10))
    )
    assert [created for _, created in results].count(True) == 1
    assert len({run.id for run, _ in results}) == 1
    assert len(await first.list_runs()) == 1


async def test_answer_and_cancel_at_once_do_not_deadlock(pg_stores: Stores) -> None:
    """Answering a question while its run is cancelled ends in one consistent state, every time."""
    first, second = pg_stores(), pg_stores()
    for n in range(10):
        run_id = f"r{n}"
        await first.create_run(new(run_id))
        assert await first.claim_run("A", 30, run_id=run_id) is not None
        question = NewEscalation(f"e{n}", "approval", "ok?", ("approve", "deny"), {})
        await first.finish(
            run_id, "A", 1, RunStatus.WAITING_HUMAN, EventDraft("escalation.opened"), escalation=question
        )
        (_, applied), cancelled = await asyncio.gather(
            first.answer_escalation(f"e{n}", {"choice": "approve"}, "ana"), second.cancel(run_id, "stop")
        )
        assert cancelled.status is RunStatus.CANCELLED
        assert (await first.get_run(run_id)).status is RunStatus.CANCELLED
        status = (await first.get_escalation(f"e{n}")).status
        assert status == ("answered" if applied else "cancelled")


# --- wake-ups ----------------------------------------------------------------------------------------


async def test_wait_for_work_times_out_without_work(pg_stores: Stores) -> None:
    """With nothing queued meanwhile, wait_for_work returns False after its timeout."""
    store = pg_stores()
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await store.wait_for_work(0.2) is False
    assert loop.time() - started >= 0.19


async def test_wait_for_work_wakes_on_a_new_run(pg_stores: Stores) -> None:
    """A worker waiting on one host wakes as soon as another host creates a run."""
    worker, api = pg_stores(), pg_stores()
    assert await worker.wait_for_work(0.05) is False  # listening from here on
    waiting = asyncio.create_task(worker.wait_for_work(10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await api.create_run(new("r1"))
    assert await waiting is True
    assert loop.time() - started < 5
    assert await worker.wait_for_work(0.1) is False  # the notification was used up


async def test_wait_for_work_wakes_whenever_a_run_becomes_claimable(pg_stores: Stores, clock: Clock) -> None:
    """Answered, released, given back, replayed and `notify_queued`: each wakes a waiting worker once."""
    worker, other = pg_stores(), pg_stores()
    await other.create_run(new("r1"))
    assert await worker.wait_for_work(0.05) is False  # listening starts after the creation
    assert await other.claim_run("A", 30) is not None
    question = NewEscalation("e1", "approval", "ok?", ("approve",), {})
    await other.finish(
        "r1", "A", 1, RunStatus.WAITING_HUMAN, EventDraft("escalation.opened"), escalation=question
    )
    assert await worker.wait_for_work(0.1) is False  # parking wakes nobody
    await other.answer_escalation("e1", {"choice": "approve"}, "ana")
    assert await worker.wait_for_work(5) is True
    assert await other.claim_run("A", 30) is not None
    await other.release("r1", "A")
    assert await worker.wait_for_work(5) is True
    assert await other.claim_run("A", 30) is not None
    await other.finish("r1", "A", 3, RunStatus.QUEUED, EventDraft("run.attempt_failed"), error="boom")
    assert await worker.wait_for_work(5) is True
    parked = await other.claim_run("B", 30, max_attempts=1)
    assert parked is not None
    assert parked.status is RunStatus.DEAD_LETTERED
    assert await worker.wait_for_work(0.1) is False
    await other.replay("r1", "ana")
    assert await worker.wait_for_work(5) is True
    await other.notify_queued()
    assert await worker.wait_for_work(5) is True
    assert await worker.wait_for_work(0.1) is False


async def test_close_ends_a_wait_at_once(pg_stores: Stores) -> None:
    """Closing the store while a worker waits ends the wait (False) instead of after its timeout."""
    store = pg_stores()
    assert await store.wait_for_work(0.01) is False
    waiting = asyncio.create_task(store.wait_for_work(30))
    await asyncio.sleep(0.05)
    await store.close()
    assert await asyncio.wait_for(waiting, 5) is False


async def test_wait_for_work_ignores_other_schemas(pg_stores: Stores, postgres_url: str) -> None:
    """Runs queued in another tether schema of the same database do not wake this one's workers."""
    worker = pg_stores()
    elsewhere_schema = f"tether_test_{secrets.token_hex(6)}"
    elsewhere = PostgresRunStore(postgres_url, schema=elsewhere_schema)
    try:
        assert await worker.wait_for_work(0.05) is False
        await elsewhere.create_run(new("r1"))
        assert await worker.wait_for_work(0.3) is False
    finally:
        await elsewhere.close()
        drop_schema(postgres_url, elsewhere_schema)


# --- the schema --------------------------------------------------------------------------------------


async def test_stores_starting_together_migrate_once(
    pg_stores: Stores, postgres_url: str, pg_schema: str
) -> None:
    """Four stores opening a fresh schema at the same moment all work; it holds one version row."""
    stores = [pg_stores() for _ in range(4)]
    assert await asyncio.gather(*(store.count_unfinished() for store in stores)) == [0, 0, 0, 0]
    await stores[0].create_run(new("r1"))
    assert (await stores[3].get_run("r1")).status is RunStatus.QUEUED
    with raw(postgres_url, pg_schema) as db:
        assert db.execute("SELECT version FROM tether_schema").fetchall() == [(SCHEMA_VERSION,)]


async def test_an_old_schema_is_migrated(pg_stores: Stores, postgres_url: str, pg_schema: str) -> None:
    """A database at the base version gets every migration in order, its runs kept."""
    with raw(postgres_url, pg_schema) as db:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(pg_schema)))
        for statement in POSTGRES.schema():
            db.execute(statement)  # type: ignore[call-overload]
        db.execute("INSERT INTO tether_schema VALUES (%s)", (BASE_VERSION,))
        db.execute(
            "INSERT INTO runs (id, agent_name, agent_version, status, input, created_at_epoch_ms, "
            "updated_at_epoch_ms) VALUES ('old', 'support', '1', 'queued', 'hi', 1, 1)"
        )
    store = pg_stores()
    old = await store.get_run("old")
    assert (old.status, old.tenant, old.shadow_of) == (RunStatus.QUEUED, None, None)
    await store.append_audit([AuditEntry("permission", "allow", "old", "support", "ok")])
    with raw(postgres_url, pg_schema) as db:
        assert db.execute("SELECT version FROM tether_schema").fetchall() == [(SCHEMA_VERSION,)]


async def test_newer_schema_is_refused(pg_stores: Stores, postgres_url: str, pg_schema: str) -> None:
    """A schema written by a newer tether is refused with an upgrade hint."""
    await pg_stores().count_unfinished()
    with raw(postgres_url, pg_schema) as db:
        db.execute("UPDATE tether_schema SET version = 99")
    with pytest.raises(ConfigurationError, match=r"schema version 99.*upgrade tether"):
        await pg_stores().count_unfinished()


@pytest.mark.parametrize(
    "statement",
    ["UPDATE audit SET decision = 'allow'", "DELETE FROM audit", "TRUNCATE audit"],
)
async def test_the_audit_table_refuses_rewrites(
    pg_stores: Stores, postgres_url: str, pg_schema: str, statement: str
) -> None:
    """UPDATE, DELETE and TRUNCATE of the audit log fail in the database itself, whoever issues them."""
    store = pg_stores()
    await store.append_audit([AuditEntry("permission", "deny", "r1", "support", "no grant")])
    with (
        raw(postgres_url, pg_schema) as db,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        db.execute(statement)  # type: ignore[call-overload]
    [entry] = await store.list_audit()
    assert entry.decision == "deny"


async def test_within_runs_before_the_commit(pg_stores: Stores, postgres_url: str, pg_schema: str) -> None:
    """While `within` runs, the append is not visible to anyone else yet: it is inside the transaction."""
    store = pg_stores()
    await store.create_run(new("r1"))
    assert await store.claim_run("A", 30) is not None
    seen: list[object] = []
    with raw(postgres_url, pg_schema) as other:
        count = "SELECT count(*) FROM run_events WHERE run_id = 'r1'"
        await store.append_events(
            "r1", "A", 1, [EventDraft("x")], within=lambda: seen.append(other.execute(count).fetchone())
        )
        assert seen == [(1,)]
        assert other.execute(count).fetchone() == (2,)


# --- URLs and errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
async def test_store_from_url_opens_postgres(postgres_url: str, pg_schema: str, scheme: str) -> None:
    """`postgresql://` and `postgres://` URLs open a PostgresRunStore; `?schema=` picks its schema."""
    url = postgres_url.replace("postgresql://", f"{scheme}://", 1)
    store = store_from_url(f"{url}{'&' if '?' in url else '?'}schema={pg_schema}")
    try:
        assert isinstance(store, PostgresRunStore)
        assert store.schema == pg_schema
        await store.create_run(new("r1"))
    finally:
        await store.close()
    with raw(postgres_url, pg_schema) as db:
        assert db.execute("SELECT id FROM runs").fetchall() == [("r1",)]


async def test_unreachable_server_names_the_url_without_its_password() -> None:
    """A server that is not there fails on first use with the URL (password masked) and what to check."""
    store = store_from_url("postgresql://tether:s3cret@127.0.0.1:1/tether")
    with pytest.raises(ConfigurationError) as caught:
        await store.count_unfinished()
    message = str(caught.value)
    assert "postgresql://tether:***@127.0.0.1:1/tether" in message
    assert "Check that the server runs" in message
    assert "s3cret" not in message
    await store.close()


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("postgresql://u@h/db?schema=Bad-Name", "schema 'Bad-Name'"),
        ("postgresql://u:pw@[::1/db", "not a valid PostgreSQL URL"),
        ("postgresql://u:pw@h/db%zz", "not a valid PostgreSQL URL"),
        ("postgresql://u@h/db?nonsense=1", "nonsense"),
    ],
)
def test_bad_postgres_urls_are_refused_at_once(url: str, needle: str) -> None:
    """A malformed URL or schema name is refused when the store is made, not on first use."""
    with pytest.raises(ConfigurationError, match=needle) as caught:
        store_from_url(url)
    assert ":pw@" not in str(caught.value)
    assert "pw" not in str(caught.value).replace("postgresql", "")


async def test_a_closed_store_refuses_work(pg_stores: Stores) -> None:
    """After close, calls raise StoreError instead of reconnecting behind the caller's back."""
    store = pg_stores()
    await store.count_unfinished()
    await store.close()
    with pytest.raises(StoreError, match="closed"):
        await store.count_unfinished()


async def test_events_kinds_are_stored_as_their_values(pg_stores: Stores) -> None:
    """Enum kinds are written as their string values (`run.resumed`), not their Python names."""
    store = pg_stores()
    await store.create_run(new("r1"))
    assert await store.claim_run("A", 30) is not None
    await store.append_events("r1", "A", 1, [EventDraft(EventKind.RUN_RESUMED, {"attempt": 2})])
    assert [event.kind for event in await store.load_events("r1")] == ["run.started", "run.resumed"]
