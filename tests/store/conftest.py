"""Fixtures for store tests: every store (a SQLite file in tmp_path, a fresh PostgreSQL schema) and a
clock the test moves by hand."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tether.store import PostgresRunStore, RunStore, SqliteRunStore


class Clock:
    """Milliseconds since the epoch, advanced only when the test says so."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = start_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tether.db"


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET lock_timeout = '10s'")
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A schema name of this test alone (xdist workers never share one), dropped afterwards."""
    schema = f"tether_test_{secrets.token_hex(6)}"
    yield schema
    drop_schema(postgres_url, schema)


@pytest.fixture
async def pg_stores(
    postgres_url: str, pg_schema: str, clock: Clock
) -> AsyncIterator[Callable[..., PostgresRunStore]]:
    """`pg_stores(**options)` opens another PostgresRunStore on this test's schema (another host);
    each is closed after the test."""
    opened: list[PostgresRunStore] = []

    def open_store(**options: object) -> PostgresRunStore:
        options.setdefault("clock", clock)
        store = PostgresRunStore(postgres_url, schema=pg_schema, **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        await store.close()


@pytest.fixture
async def sqlite_store(db_path: Path, clock: Clock) -> AsyncIterator[SqliteRunStore]:
    opened = SqliteRunStore(db_path, clock=clock)
    yield opened
    await opened.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, db_path: Path, clock: Clock) -> AsyncIterator[RunStore]:
    """Each store in turn, with the same semantics expected of both."""
    if request.param == "sqlite":
        opened: RunStore = SqliteRunStore(db_path, clock=clock)
    else:  # sync fixtures only: an async one cannot be requested from here
        url, schema = request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema")
        opened = PostgresRunStore(url, schema=schema, clock=clock)
    yield opened
    await opened.close()
