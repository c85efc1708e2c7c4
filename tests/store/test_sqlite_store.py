"""SqliteRunStore only: files, WAL, connections on one file, a busy database, `sqlite:` URLs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tether.errors import ConfigurationError, LeaseLostError, RunNotFoundError, StoreError
from tether.store import EventDraft, NewRun, SqliteRunStore, store_from_url
from tether.types import RunStatus

if TYPE_CHECKING:
    from conftest import Clock


def new(run_id: str, *, key: str | None = None) -> NewRun:
    return NewRun(id=run_id, agent_name="support", input="where is my order?", idempotency_key=key)


async def claimed(store: SqliteRunStore, run_id: str, owner: str = "A") -> None:
    await store.create_run(new(run_id))
    assert await store.claim_run(owner, 30.0, run_id=run_id) is not None


async def test_within_runs_in_the_append_transaction(sqlite_store: SqliteRunStore) -> None:
    """A `within` step that raises rolls its append back; one that returns commits with it."""
    await claimed(sqlite_store, "r1")

    def refuse() -> None:
        raise RuntimeError("refused inside the transaction")

    with pytest.raises(RuntimeError, match="refused"):
        await sqlite_store.append_events("r1", "A", 1, [EventDraft("model.request")], within=refuse)
    assert [e.kind for e in await sqlite_store.load_events("r1")] == ["run.started"]
    seen: list[bool] = []
    await sqlite_store.append_events(
        "r1",
        "A",
        1,
        [EventDraft("model.request")],
        within=lambda: seen.append(sqlite_store.connection.in_transaction),
    )
    assert seen == [True]
    assert [e.kind for e in await sqlite_store.load_events("r1")] == ["run.started", "model.request"]


async def open_and_close(url: str) -> None:
    opened = store_from_url(url)
    await opened.close()


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


async def test_busy_database_is_a_store_error(sqlite_store: SqliteRunStore, db_path: Path) -> None:
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
        await sqlite_store.get_run("r1")


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


async def test_store_from_url_rejects_malformed_sqlite_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`sqlite:runs.db` (no slashes) is a malformed URL, not a file literally named `sqlite:runs.db`."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match=r"sqlite:runs\.db"):
        await open_and_close("sqlite:runs.db")
    assert not (tmp_path / "sqlite:runs.db").exists()
