"""A PostgreSQL store's connections: the URL (password masked), the pool opened on first use, the schema
created or migrated under an advisory lock, and the LISTEN connection that wakes idle workers."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from tether.errors import ConfigurationError, StoreError
from tether.store.sql import BASE_VERSION, POSTGRES, SCHEMA_VERSION

Connection = psycopg.AsyncConnection[tuple[Any, ...]]

CHANNEL = "tether_runs"
# NOTIFY'd in the transaction of every write that makes a run claimable; the payload is the schema,
# since channels are per database and several tether schemas may share one.
NOTIFY = f"pg_notify('{CHANNEL}', current_schema())"
_MIGRATION_LOCKS = 0x7E7E  # advisory lock (this, hashtext(schema)): one migration at a time
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def masked_url(text: str) -> str:
    """`text` with the password of every URL in it (user part or query) replaced by ***; regexes, not
    a parser, so malformed URLs and error messages quoting them are masked too."""
    return _QUERY_PASSWORD.sub(r"\1***", _USER_PASSWORD.sub(r"\1:***@", text))


_USER_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#\s\"']*):[^@\s\"']*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s\"']*")


class PostgresConnections:
    """Opened lazily: `store_from_url` is synchronous and a pool opens asynchronously. The first
    `connection()` connects once on its own (for an error that says what is wrong), migrates, then
    opens the pool; concurrent first callers wait for it (an asyncio.Lock)."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.url = masked_url(url)
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(
                f"database URL {self.url!r}: use postgresql://user:password@host:5432/database"
            )
        try:
            parts = urlsplit(url)
            query = parse_qsl(parts.query, keep_blank_values=True)
            kept = [(key, value) for key, value in query if key != "schema"]
            conninfo = urlunsplit(parts._replace(query=urlencode(kept)))
            params = conninfo_to_dict(conninfo)
        except (ValueError, psycopg.ProgrammingError) as exc:
            reason = masked_url(str(exc).strip())  # libpq quotes the URL, password included
            raise ConfigurationError(
                f"database URL {self.url!r} is not a valid PostgreSQL URL ({reason}); use "
                "postgresql://user:password@host:5432/database, optionally with ?schema=name"
            ) from exc
        schema = schema or next((value for key, value in query if key == "schema"), None)
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise ConfigurationError(
                f"PostgreSQL schema {schema!r} (database URL {self.url!r}): use lower-case letters, "
                "digits and underscores, starting with a letter or underscore, at most 63 characters"
            )
        if not 1 <= min_connections <= max_connections:
            raise ConfigurationError(
                f"connections: need 1 <= min_connections ({min_connections}) <= max_connections "
                f"({max_connections})"
            )
        self.schema = schema
        self._conninfo = conninfo
        # autocommit: a statement is its own transaction unless inside `transaction()`.
        self._kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params:
            self._kwargs["connect_timeout"] = max(1, round(connect_timeout_s))
        if schema is not None:
            self._kwargs["options"] = f"{params.get('options', '')} -c search_path={schema}".strip()
        self._sizes = (min_connections, max_connections)
        self._connect_timeout_s = connect_timeout_s
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._opening = asyncio.Lock()
        self._listener: Connection | None = None
        self._listened_schema: str | None = None
        self._listening = asyncio.Lock()
        self._closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection; a lost server or a full pool raises StoreError naming the URL."""
        pool = self._pool or await self._open()
        try:
            async with pool.connection() as db:
                yield db
        except psycopg.OperationalError as exc:
            raise StoreError(f"PostgreSQL at {self.url!r}: {exc}") from exc

    async def wait_for_notify(self, timeout_s: float) -> bool:
        """True when a run of this schema became claimable, False after `timeout_s` without one.

        Listening starts with the first call and lasts until `close`, on a connection of its own;
        notifications that arrive between calls are kept, so claim, then wait, then claim again."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with self._listening:
            try:
                listener = self._listener or await self._listen()
                while (left := deadline - loop.time()) > 0:
                    async for notice in listener.notifies(timeout=left, stop_after=1):
                        if notice.payload == self._listened_schema:
                            return True
            except psycopg.OperationalError as exc:
                if self._closed:  # `close` shut the connection under us: no work for this store
                    return False
                if self._listener is not None:
                    await self._listener.close()
                self._listener = None
                raise StoreError(f"PostgreSQL at {self.url!r}: listening for work failed: {exc}") from exc
        return False

    async def close(self) -> None:
        self._closed = True
        # Not under `_listening`: a waiter holds it for up to its timeout; closing the connection
        # ends its wait at once.
        listener, self._listener = self._listener, None
        if listener is not None:
            await listener.close()
        async with self._opening:
            if self._pool is not None:
                await self._pool.close()
                self._pool = None

    async def _open(self) -> AsyncConnectionPool[Connection]:
        async with self._opening:
            if self._pool is not None:
                return self._pool
            if self._closed:
                raise StoreError(f"the PostgreSQL store at {self.url!r} is closed")
            first = await self._connect()
            try:
                await self._migrate(first)
            except psycopg.Error as exc:
                raise ConfigurationError(
                    f"PostgreSQL at {self.url!r} is not a usable tether database: {exc}"
                ) from exc
            finally:
                await first.close()
            minimum, maximum = self._sizes
            pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
                self._conninfo, kwargs=self._kwargs, min_size=minimum, max_size=maximum, open=False
            )
            try:
                await pool.open(wait=True, timeout=self._connect_timeout_s)
            except psycopg.OperationalError as exc:
                await pool.close()
                raise ConfigurationError(f"PostgreSQL at {self.url!r}: cannot open a pool: {exc}") from exc
            self._pool = pool
            return pool

    async def _connect(self) -> Connection:
        try:
            return await psycopg.AsyncConnection.connect(self._conninfo, **self._kwargs)
        except psycopg.OperationalError as exc:
            reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
            reason = reason or type(exc).__name__
            stop = "" if reason.endswith((".", "?", "!")) else "."
            raise ConfigurationError(
                f"cannot connect to PostgreSQL at {self.url!r}: {reason}{stop} Check that the server runs "
                "and accepts TCP connections at that host and port, and the user, password and database "
                "name in the URL"
            ) from exc

    async def _migrate(self, db: Connection) -> None:
        """Create or upgrade the schema in one transaction. The advisory lock makes processes that
        start together take turns: IF NOT EXISTS alone races in PostgreSQL (a duplicate-key error)."""
        async with db.transaction():
            await db.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_MIGRATION_LOCKS, self.schema or "")
            )
            if (
                self.schema is not None
                and not (await one(db, "SELECT to_regnamespace(%s)", (self.schema,)))[0]
            ):
                # A savepoint: another program (a budget backend) may create it at the same moment.
                with contextlib.suppress(errors.UniqueViolation, errors.DuplicateSchema):
                    async with db.transaction():
                        await db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema)))
            # No CREATE ... IF NOT EXISTS on a current schema: CREATE INDEX would queue for a lock
            # behind every worker's writes.
            if not (await one(db, "SELECT to_regclass('tether_schema') IS NOT NULL"))[0]:
                for statement in POSTGRES.schema():
                    await db.execute(statement)
                await db.execute("INSERT INTO tether_schema (version) VALUES (%s)", (BASE_VERSION,))
            (found,) = await one(db, "SELECT max(version) FROM tether_schema")
            current = BASE_VERSION if found is None else max(found, BASE_VERSION)
            if current > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"database {self.url!r} has schema version {current}, newer than this tether "
                    f"({SCHEMA_VERSION}); upgrade tether"
                )
            if current < SCHEMA_VERSION:
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in POSTGRES.migration(version):
                        await db.execute(statement)
                await db.execute("UPDATE tether_schema SET version = %s", (SCHEMA_VERSION,))

    async def _listen(self) -> Connection:
        if self._pool is None:
            await self._open()  # the schema exists before we ask for its name
        listener = await self._connect()
        await listener.execute(f"LISTEN {CHANNEL}")
        self._listened_schema = (await one(listener, "SELECT current_schema()"))[0]
        self._listener = listener
        return listener


async def rows(db: Connection, query: str, args: Any = ()) -> list[tuple[Any, ...]]:
    cursor = await db.execute(query, args or None)
    return await cursor.fetchall()


async def one_or_none(db: Connection, query: str, args: Any = ()) -> tuple[Any, ...] | None:
    cursor = await db.execute(query, args or None)
    return await cursor.fetchone()


async def one(db: Connection, query: str, args: Any = ()) -> tuple[Any, ...]:
    row = await one_or_none(db, query, args)
    if row is None:
        raise StoreError(f"expected a row from {query.split(maxsplit=1)[0]}, got none")
    return row
