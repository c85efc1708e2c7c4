"""PostgresBudgetBackend: budget counters in PostgreSQL, shared by every worker process on every host."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
from collections.abc import AsyncIterator, Collection, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from tether.errors import ConfigurationError, StoreError
from tether.policy.budget_stores import (
    _PRUNE_EVERY_S,
    Check,
    Crossed,
    Refusal,
    ReserveResult,
    _Counter,
    _Counters,
    _crosses,
    _dumps,
    _give_back,
    _holds,
    _Key,
    _warn,
)

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}\Z")  # as PostgresRunStore's
# The advisory lock ("tetherBU") that lets one process at a time create the tables.
_SCHEMA_LOCK = 0x7465_7468_6572_4255
_RECLAIM_BATCH = 1_000  # lapsed reservations given back per reserve; the rest by the next ones
_PRUNE_BATCH = 10_000  # forgotten counters deleted per prune, so that one prune stays a short transaction
_NEW = -math.inf  # keep_until_s of a counter row this transaction created only to lock it

# "{t}" stands for the schema prefix. Integers are BIGINT: sums of millionths stay exact far beyond any
# limit (limits.MAX_AMOUNT).
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS {t}budget_counters (scope_key TEXT NOT NULL, counter TEXT NOT NULL, "
    "used BIGINT NOT NULL DEFAULT 0, reserved BIGINT NOT NULL DEFAULT 0, "
    "warned BOOLEAN NOT NULL DEFAULT false, keep_until_s DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (scope_key, counter))",
    "CREATE INDEX IF NOT EXISTS budget_counters_keep_until ON {t}budget_counters (keep_until_s)",
    # As in SQLite: one row per reservation, its holds inline as JSON [[scope key, counter, amount], ...];
    # a settled one is kept until it would have lapsed, so that settling twice counts once.
    "CREATE TABLE IF NOT EXISTS {t}budget_reservation_holds (id TEXT PRIMARY KEY, "
    "expires_at_s DOUBLE PRECISION NOT NULL, settled BOOLEAN NOT NULL DEFAULT false, holds TEXT NOT NULL)",
    "CREATE INDEX IF NOT EXISTS budget_reservation_holds_expiry "
    "ON {t}budget_reservation_holds (expires_at_s)",
)
# Read from the catalog tables, not through to_regclass: after waiting for the advisory lock, a
# statement's snapshot sees the tables another process just committed; the catalog cache may not yet.
_SQL_TABLES_EXIST = (
    "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE n.nspname = coalesce(%s, current_schema()) AND c.relname = ANY(%s)"
)
_OBJECTS = (
    "budget_counters",
    "budget_counters_keep_until",
    "budget_reservation_holds",
    "budget_reservation_holds_expiry",
)

_WRITE = (
    "WITH unused AS (DELETE FROM {t}budget_counters AS c USING unnest(%s::text[], %s::text[]) "
    "AS d(scope_key, counter) WHERE c.scope_key = d.scope_key AND c.counter = d.counter) "
    "UPDATE {t}budget_counters AS c SET used = v.used, reserved = v.reserved, warned = v.warned, "
    "keep_until_s = v.keep_until_s FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::bigint[], "
    "%s::boolean[], %s::float8[]) AS v(scope_key, counter, used, reserved, warned, keep_until_s) "
    "WHERE c.scope_key = v.scope_key AND c.counter = v.counter"
)


class _Statements(NamedTuple):
    """The statements on the backend's tables; "{t}" in the templates stands for the schema prefix."""

    reclaim: str
    insert_reservation: str
    by_id: str
    delete_reservation: str
    release: str
    lock: str
    write: str
    write_settled: str
    prune: str
    usage: str

    def within(self, prefix: str) -> _Statements:
        return _Statements._make(statement.replace("{t}", prefix) for statement in self)


_TEMPLATES = _Statements(
    # Lapsed reservations are locked in id order, so that two calls reclaiming them never wait on each
    # other in a cycle; then deleted, their holds returned to be given back.
    reclaim="DELETE FROM {t}budget_reservation_holds WHERE id IN (SELECT id FROM {t}budget_reservation_holds "
    f"WHERE expires_at_s <= %s ORDER BY id LIMIT {_RECLAIM_BATCH} FOR UPDATE) RETURNING settled, holds",
    insert_reservation="INSERT INTO {t}budget_reservation_holds (id, expires_at_s, settled, holds) "
    "VALUES (%s, %s, false, %s) ON CONFLICT (id) DO NOTHING RETURNING id",
    by_id="SELECT settled, holds FROM {t}budget_reservation_holds WHERE id = %s FOR UPDATE",
    delete_reservation="DELETE FROM {t}budget_reservation_holds WHERE id = %s",
    release="DELETE FROM {t}budget_reservation_holds WHERE id = %s AND NOT settled RETURNING holds",
    # Locks the counter rows in the order given (sorted: no two calls wait on each other in a cycle),
    # first creating the missing ones, marked _NEW, and returns them as they are. The no-op update is
    # what locks a row and returns it as last committed.
    lock="INSERT INTO {t}budget_counters AS c (scope_key, counter, used, reserved, warned, keep_until_s) "
    "SELECT k.scope_key, k.counter, 0, 0, false, '-Infinity' "
    "FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS k(scope_key, counter, n) ORDER BY k.n "
    "ON CONFLICT (scope_key, counter) DO UPDATE SET keep_until_s = c.keep_until_s "
    "RETURNING c.scope_key, c.counter, c.used, c.reserved, c.warned, c.keep_until_s",
    # Absolute values, computed from what this transaction read under the locks; and the rows created
    # only to lock them, not used after all, deleted (never the same rows: one statement may not touch
    # a row twice).
    write=_WRITE,
    write_settled="WITH settled AS (UPDATE {t}budget_reservation_holds SET settled = true, holds = '[]' "
    f"WHERE id = %s), {_WRITE.removeprefix('WITH ')}",
    # SKIP LOCKED: a counter some call holds is left for a later prune, and the prune never waits.
    prune="DELETE FROM {t}budget_counters WHERE (scope_key, counter) IN (SELECT scope_key, counter "
    "FROM {t}budget_counters WHERE keep_until_s < %s AND reserved = 0 "
    f"LIMIT {_PRUNE_BATCH} FOR UPDATE SKIP LOCKED)",
    usage="SELECT counter, used, reserved FROM {t}budget_counters WHERE scope_key = %s",
)


class _RelockError(Exception):
    """The transaction must also lock counters it could not know of in advance: roll back, start again."""

    def __init__(self, keys: set[_Key]) -> None:
        super().__init__()
        self.keys = keys


class PostgresBudgetBackend:
    """Counters in PostgreSQL, shared by every process on every host that uses the same database.

    Each call is one READ COMMITTED transaction that locks the rows it decides on: first the reservation
    rows (its own; lapsed ones in id order), then the counter rows of every scope it touches, in sorted
    order, creating missing ones — so no two calls wait on each other in a cycle, and no two can both see
    room for the last tokens. It then decides here, as SqliteBudgetBackend does, and writes the counters
    back exactly. Statements are pipelined: a reserve or settle is two round trips. Tables (prefixed
    `budget_`) live in `schema` (created if missing), else where the connection's search_path puts them;
    they are created on first use, under an advisory lock, unless they exist. Connects lazily. A call
    waits at most `lock_timeout_s` for a counter another call holds, and the server aborts a transaction
    left idle that long (its process frozen), so that nobody holds counters for ever.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        max_connections: int = 8,
        connect_timeout_s: float = 10.0,
        lock_timeout_s: float = 10.0,
    ) -> None:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError("PostgresBudgetBackend needs a postgresql://user:password@host/db URL")
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        schema = schema or next((value for key, value in query if key == "schema"), None)
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(
                f"PostgreSQL schema {schema!r}: use lower-case letters, digits and underscores, starting "
                "with a letter or underscore, at most 63 characters"
            )
        if max_connections < 1 or connect_timeout_s <= 0 or lock_timeout_s <= 0:
            raise ConfigurationError("max_connections must be >= 1 and the timeouts positive")
        # libpq refuses a parameter it does not know: `?schema=` is ours (and PostgresRunStore's). Spaces
        # as %20: libpq does not read "+" as a space (e.g. in ?options=-c%20synchronous_commit%3Doff).
        rest = [(key, value) for key, value in query if key != "schema"]
        self._conninfo = url
        if len(rest) < len(query):
            self._conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
        self.schema = schema
        self._max_connections = max_connections
        self._connect_timeout_s = connect_timeout_s
        lock_timeout = f"{max(1, round(lock_timeout_s * 1000))}ms"
        self._settings = {"lock_timeout": lock_timeout, "idle_in_transaction_session_timeout": lock_timeout}
        self._prefix = "" if schema is None else f'"{schema}".'
        self._sql = _TEMPLATES.within(self._prefix)
        self._pool: psycopg_pool.AsyncConnectionPool[Any] | None = None
        self._opening = asyncio.Lock()
        self._closed = False
        self._next_prune_s = -math.inf

    @property
    def where(self) -> str:
        """The server and database, for messages: never the password."""
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(self._conninfo)
        except Exception:
            return "PostgreSQL (unparsable URL)"
        host, port, dbname = (params.get(key) or "" for key in ("host", "port", "dbname"))
        return f"PostgreSQL at {host or 'localhost'}:{port or 5432}/{dbname}"

    async def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _ready(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        """The pool, opened and the tables created on first use."""
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._closed:
                raise StoreError("PostgresBudgetBackend is closed")
            if self._pool is None:
                self._pool = await self._open()
        return self._pool

    async def _open(self) -> psycopg_pool.AsyncConnectionPool[Any]:
        import psycopg
        from psycopg_pool import AsyncConnectionPool

        settings = self._settings

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            calls = ", ".join(["set_config(%s, %s, false)"] * len(settings))
            await conn.execute(f"SELECT {calls}", [item for pair in settings.items() for item in pair])

        pool: psycopg_pool.AsyncConnectionPool[Any] = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=self._max_connections,
            open=False,
            timeout=self._connect_timeout_s,
            kwargs={"autocommit": True, "connect_timeout": max(1, math.ceil(self._connect_timeout_s))},
            configure=configure,
            name="tether-budget",
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout_s)
            async with pool.connection() as conn:
                await self._create_tables(conn)
        except BaseException as exc:
            await pool.close()  # else it would keep trying to connect in the background
            if isinstance(exc, psycopg.Error):  # PoolTimeout too: the server did not answer in time
                raise StoreError(f"cannot use {self.where} for budget counters: {exc}") from exc
            raise
        return pool

    async def _create_tables(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if await self._tables_exist(conn):
            return  # no DDL: a role without CREATE rights can use tables made by another
        async with conn.transaction():
            # Two processes running CREATE ... IF NOT EXISTS at once can still collide on the catalog.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            # Made by whoever held the lock before: no DDL either, or its locks on the tables could
            # deadlock with the calls that already use them.
            if await self._tables_exist(conn):
                return
            if self.schema is not None:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            for statement in _SCHEMA:
                await conn.execute(statement.replace("{t}", self._prefix))

    async def _tables_exist(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        cursor = await conn.execute(_SQL_TABLES_EXIST, (self.schema, list(_OBJECTS)))
        row = await cursor.fetchone()
        return row is not None and row[0] == len(_OBJECTS)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection; the server gone, a lock waited for too long: StoreError, as SQLite's busy."""
        import psycopg

        pool = await self._ready()
        try:
            async with pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:
            raise StoreError(f"{self.where}, budget counters: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction, its statements pipelined. Explicit BEGIN and COMMIT: psycopg's transaction
        blocks add a round trip each in pipeline mode."""
        async with self._connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute("BEGIN")
                    yield conn
                    await conn.execute("COMMIT")
            except BaseException:
                if not conn.closed:
                    with contextlib.suppress(Exception):  # else the pool discards the connection
                        await conn.rollback()
                raise

    async def reserve(
        self, reservation_id: str, checks: Sequence[Check], now_s: float, expires_at_s: float
    ) -> ReserveResult:
        if now_s >= self._next_prune_s:
            await self._prune(now_s)
        try:
            async with self._transaction() as conn:
                return await self._reserve(
                    conn, reservation_id, checks, now_s, expires_at_s, reclaim_first=False
                )
        except _RelockError:  # lapsed holds on other counters: reclaim first, then lock those too
            async with self._transaction() as conn:
                return await self._reserve(
                    conn, reservation_id, checks, now_s, expires_at_s, reclaim_first=True
                )

    async def _reserve(
        self,
        conn: psycopg.AsyncConnection[Any],
        reservation_id: str,
        checks: Sequence[Check],
        now_s: float,
        expires_at_s: float,
        *,
        reclaim_first: bool,
    ) -> ReserveResult:
        """Reclaim lapsed reservations, insert this one (a conflict: a retried call), lock and read the
        counters, decide. Unless `reclaim_first`, guess that the lapsed holds (if any) are on this call's
        counters, and send all of it in one round trip; else learn them first, and lock theirs too."""
        sql = self._sql
        lapsed_rows = await conn.execute(sql.reclaim, (now_s,))
        lapsed: list[tuple[str, str, int]] = []
        if reclaim_first:
            lapsed = [
                hold for settled, text in await lapsed_rows.fetchall() if not settled for hold in _holds(text)
            ]
        holds: list[list[str | int]] = [[c.scope_key, c.counter, c.amount] for c in checks if c.amount]
        inserted = await conn.execute(sql.insert_reservation, (reservation_id, expires_at_s, _dumps(holds)))
        keys = {(check.scope_key, check.counter) for check in checks}
        keys |= {(scope_key, name) for scope_key, name, _ in lapsed}
        read = await self._lock(conn, keys)
        if not reclaim_first:
            lapsed = [
                hold for settled, text in await lapsed_rows.fetchall() if not settled for hold in _holds(text)
            ]
            missing = {(scope_key, name) for scope_key, name, _ in lapsed} - keys
            if missing:
                raise _RelockError(missing)
        counters, created = _counters(await read.fetchall())
        changed = _give_back(counters, lapsed)
        # A conflict: this id is known and not lapsed, a retried call (or lapsed but past this reclaim's
        # batch: its holds are still there, so it is as good as held).
        known = await inserted.fetchone() is None
        result = ReserveResult()
        if not known:
            result = _hold(counters, checks, changed)
            if result.refusal is not None:
                await conn.execute(sql.delete_reservation, (reservation_id,))
        await self._write(conn, counters, changed, created)
        return result

    async def settle(
        self, reservation_id: str, charges: Sequence[Check], now_s: float
    ) -> tuple[Crossed, ...]:
        also: set[_Key] = set()
        while True:
            try:
                async with self._transaction() as conn:
                    return await self._settle(conn, reservation_id, charges, also)
            except _RelockError as relock:  # held on counters it is not charged on: lock those too
                also |= relock.keys

    async def _settle(
        self,
        conn: psycopg.AsyncConnection[Any],
        reservation_id: str,
        charges: Sequence[Check],
        also: set[_Key],
    ) -> tuple[Crossed, ...]:
        row = await conn.execute(self._sql.by_id, (reservation_id,))
        keys = {(charge.scope_key, charge.counter) for charge in charges} | also
        read = await self._lock(conn, keys)
        reservation = await row.fetchone()
        holds = [] if reservation is None or reservation[0] else _holds(reservation[1])
        missing = {(scope_key, name) for scope_key, name, _ in holds} - keys
        if missing:
            raise _RelockError(missing)
        counters, created = _counters(await read.fetchall())
        if reservation is not None and reservation[0]:
            await self._write(conn, counters, [], created)
            return ()  # settled already
        changed = _give_back(counters, holds)
        crossed = []
        for index, charge in enumerate(charges):
            key = (charge.scope_key, charge.counter)
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = _Counter(keep_until_s=charge.keep_until_s)
            elif (
                not charge.amount
                and charge.keep_until_s <= counter.keep_until_s
                and not _crosses(charge, counter.used + counter.reserved, counter.warned)
            ):
                continue  # nothing to change
            counter.used += charge.amount
            counter.keep_until_s = max(counter.keep_until_s, charge.keep_until_s)
            if _warn(counter, charge):
                crossed.append(Crossed(index, counter.used + counter.reserved))
            changed.append(key)
        settled = None if reservation is None else reservation_id
        await self._write(conn, counters, changed, created, settled=settled)
        return tuple(crossed)

    async def release(self, reservation_id: str) -> None:
        async with self._transaction() as conn:
            row = await (await conn.execute(self._sql.release, (reservation_id,))).fetchone()
            if row is None:
                return  # settled, released, lapsed or unknown
            holds = _holds(row[0])
            read = await self._lock(conn, {(scope_key, name) for scope_key, name, _ in holds})
            counters, created = _counters(await read.fetchall())
            await self._write(conn, counters, _give_back(counters, holds), created)

    async def usage(self, scope_key: str) -> dict[str, tuple[int, int]]:
        async with self._connection() as conn:
            rows = await (await conn.execute(self._sql.usage, (scope_key,))).fetchall()
        return {name: (used, reserved) for name, used, reserved in rows}

    async def _prune(self, now_s: float) -> None:
        """Forget counters kept past their date with nothing reserved; at most once a minute, in a
        transaction of its own."""
        self._next_prune_s = now_s + _PRUNE_EVERY_S
        async with self._connection() as conn:
            await conn.execute(self._sql.prune, (now_s,))

    async def _lock(
        self, conn: psycopg.AsyncConnection[Any], keys: Collection[_Key]
    ) -> psycopg.AsyncCursor[Any]:
        """Lock the counters of `keys` (creating missing rows, marked _NEW); the cursor returning them."""
        ordered = sorted(keys)
        columns = ([scope_key for scope_key, _ in ordered], [name for _, name in ordered])
        return await conn.execute(self._sql.lock, columns)

    async def _write(
        self,
        conn: psycopg.AsyncConnection[Any],
        counters: _Counters,
        changed: Sequence[_Key],
        created: set[_Key],
        *,
        settled: str | None = None,
    ) -> None:
        """Store the changed counters, delete the rows created only to lock them and not used after all,
        and mark reservation `settled` settled: one statement."""
        keys = list(dict.fromkeys(changed))
        unused = sorted(created - counters.keys())
        if not keys and not unused and settled is None:
            return
        rows = [counters[key] for key in keys]
        params: list[object] = [] if settled is None else [settled]
        params += (
            [scope_key for scope_key, _ in unused],
            [name for _, name in unused],
            [scope_key for scope_key, _ in keys],
            [name for _, name in keys],
            [counter.used for counter in rows],
            [counter.reserved for counter in rows],
            [counter.warned for counter in rows],
            [float(counter.keep_until_s) for counter in rows],  # an int among floats: refused
        )
        await conn.execute(self._sql.write if settled is None else self._sql.write_settled, params)


def _counters(rows: Sequence[tuple[Any, ...]]) -> tuple[_Counters, set[_Key]]:
    """The counters read, and the keys whose rows this transaction created (not counters yet)."""
    counters: _Counters = {}
    created: set[_Key] = set()
    for scope_key, name, used, reserved, warned, keep_until_s in rows:
        if keep_until_s == _NEW:
            created.add((scope_key, name))
        else:
            counters[scope_key, name] = _Counter(used, reserved, warned, keep_until_s, keep_until_s)
    return counters, created


def _hold(counters: _Counters, checks: Sequence[Check], changed: list[_Key]) -> ReserveResult:
    """Hold every check's amount if every check fits, else none; the keys it changed join `changed`."""
    for index, check in enumerate(checks):
        counter = counters.get((check.scope_key, check.counter))
        used, reserved = (0, 0) if counter is None else (counter.used, counter.reserved)
        if check.limit is not None and used + reserved + check.amount > check.limit:
            return ReserveResult(Refusal(index, used, reserved))
    crossed = []
    for index, check in enumerate(checks):
        key = (check.scope_key, check.counter)
        counter = counters.get(key)
        if counter is None:
            counter = counters[key] = _Counter(keep_until_s=check.keep_until_s)
        counter.reserved += check.amount
        counter.keep_until_s = max(counter.keep_until_s, check.keep_until_s)
        if _warn(counter, check):
            crossed.append(Crossed(index, counter.used + counter.reserved))
        changed.append(key)
    return ReserveResult(crossed=tuple(crossed))
