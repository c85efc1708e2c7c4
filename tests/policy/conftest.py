"""Fixtures for policy tests: a PostgreSQL schema of the test's own, and budget backends on it."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

from tether.policy import PostgresBudgetBackend


def drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        db.execute("SET lock_timeout = '10s'")
        db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schema(postgres_url: str) -> Iterator[str]:
    """A schema name of this test alone (xdist workers never share one), dropped afterwards."""
    schema = f"tether_test_{secrets.token_hex(6)}"
    yield schema
    drop_schema(postgres_url, schema)


@pytest.fixture
async def pg_backends(
    postgres_url: str, pg_schema: str
) -> AsyncIterator[Callable[..., PostgresBudgetBackend]]:
    """`pg_backends(**options)` opens another PostgresBudgetBackend on this test's schema (as another
    process would); each is closed after the test, pass or fail, before the schema is dropped. Declare
    it: an async fixture cannot be looked up (`getfixturevalue`) from a running test."""
    opened: list[PostgresBudgetBackend] = []

    def open_backend(**options: object) -> PostgresBudgetBackend:
        backend = PostgresBudgetBackend(postgres_url, schema=pg_schema, **options)  # type: ignore[arg-type]
        opened.append(backend)
        return backend

    yield open_backend
    for backend in opened:
        await backend.close()
