"""Durable run stores behind the RunStore protocol; `store_from_url` picks one from a URL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.errors import ConfigurationError
from tether.store.base import (
    Escalation,
    EventDraft,
    NewEscalation,
    NewRun,
    Operation,
    OperationWrite,
    RunStore,
)
from tether.store.sqlite import SqliteRunStore

if TYPE_CHECKING:
    from tether.store.postgres import PostgresRunStore

__all__ = [
    "Escalation",
    "EventDraft",
    "NewEscalation",
    "NewRun",
    "Operation",
    "OperationWrite",
    "PostgresRunStore",
    "RunStore",
    "SqliteRunStore",
    "store_from_url",
]

DEFAULT_DB_URL = "sqlite:///tether.db"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def __getattr__(name: str) -> Any:
    # psycopg is an optional extra that takes ~100 ms to import: only PostgreSQL users pay for it.
    if name == "PostgresRunStore":
        return _postgres_store_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _postgres_store_class() -> type[PostgresRunStore]:
    try:
        from tether.store.postgres import PostgresRunStore
    except ImportError as exc:
        raise ConfigurationError(
            f"the PostgreSQL store needs psycopg ({exc}); install it with: pip install 'tether[postgres]'"
        ) from exc
    return PostgresRunStore


def store_from_url(url: str) -> RunStore:
    """Open the store a URL names: `sqlite:///path.db` (the default), a bare file path, or
    `postgresql://user:password@host:5432/database[?schema=name]` (also `postgres://`)."""
    if url.startswith(_POSTGRES_SCHEMES):
        return _postgres_store_class().from_url(url)
    if url.startswith("sqlite:") and not url.startswith("sqlite:///"):
        raise ConfigurationError(
            f"database URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if "://" in url and not url.startswith("sqlite:"):
        raise ConfigurationError(
            f"database URL {url!r} has an unknown scheme; use sqlite:///path.db or "
            "postgresql://user:password@host:5432/database"
        )
    return SqliteRunStore.from_url(url)
