"""Durable run stores behind the RunStore protocol; `store_from_url` picks one from a URL."""

from __future__ import annotations

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

__all__ = [
    "Escalation",
    "EventDraft",
    "NewEscalation",
    "NewRun",
    "Operation",
    "OperationWrite",
    "RunStore",
    "SqliteRunStore",
    "store_from_url",
]

DEFAULT_DB_URL = "sqlite:///tether.db"


def store_from_url(url: str) -> RunStore:
    """Open the store a URL names: `sqlite:///path.db` (the default) or a bare file path."""
    if url.startswith(("postgresql://", "postgres://")):
        raise ConfigurationError(
            f"database URL {url!r}: the PostgreSQL store is not available in this version; "
            "use sqlite:///path.db"
        )
    if url.startswith("sqlite:") and not url.startswith("sqlite:///"):
        raise ConfigurationError(
            f"database URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    if "://" in url and not url.startswith("sqlite:"):
        raise ConfigurationError(f"database URL {url!r} has an unknown scheme; use sqlite:///path.db")
    return SqliteRunStore.from_url(url)
