"""Where budget counters live: atomic reserve, settle and release, in memory, in SQLite or in Redis
(PostgreSQL: `budget_postgres`).

Amounts are integers (millionths of a token, dollar, call …; `limits.UNITS_PER_ONE`), so every store
computes exactly the same sums, and no limit is passed, nor two stores disagree, by a rounding error.
Each store keeps per (scope key, counter): `used` (settled), `reserved` (held by calls in flight) and
whether the warning level was reached; and per reservation: its holds, expiry and whether it settled.
"""

from __future__ import annotations

import functools
import heapq
import json
import math
import sqlite3
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from tether.errors import ConfigurationError, StoreError

if TYPE_CHECKING:
    import redis.asyncio

Synchronous = Literal["NORMAL", "FULL"]
_PRUNE_EVERY_S = 60.0  # forgotten counters are dropped at most this often, not on every call


@dataclass(frozen=True, slots=True)
class Check:
    """Charge `amount` to one counter of one scope; refuse past `limit` (None: track only); warn at `warn_at`.

    The counter may be forgotten after `keep_until_s` (a day scope a day after it ends, a run or
    session a retention period after its last use).
    """

    scope_key: str
    counter: str
    amount: int
    limit: int | None
    warn_at: int | None
    keep_until_s: float


@dataclass(frozen=True, slots=True)
class Refusal:
    """Check `index` did not fit, given its counter's `used` and `reserved`; nothing was reserved."""

    index: int
    used: int
    reserved: int


@dataclass(frozen=True, slots=True)
class Crossed:
    """Check `index` brought its counter to `level` (used + reserved) >= its warn_at, the first time."""

    index: int
    level: int


@dataclass(frozen=True, slots=True)
class ReserveResult:
    refusal: Refusal | None = None
    crossed: tuple[Crossed, ...] = ()


class BudgetBackend(Protocol):
    """Budget counters shared by every run using the same backend; each call is one atomic step.

    Checks name each (scope key, counter) at most once. A reservation lapses at `expires_at_s`: the
    next `reserve` (by anyone) gives its holds back, so a crashed worker cannot hold budget forever.
    """

    async def reserve(
        self, reservation_id: str, checks: Sequence[Check], now_s: float, expires_at_s: float
    ) -> ReserveResult:
        """Reclaim lapsed reservations; then hold every check's amount if every check fits, else none.

        A check fits when `used + reserved + amount <= limit`. Reserving an id already known
        changes nothing and succeeds (a retried call).
        """
        ...

    async def settle(
        self, reservation_id: str, charges: Sequence[Check], now_s: float
    ) -> tuple[Crossed, ...]:
        """Give the reservation's holds back and add `charges` to `used`: never refused, the call happened.

        Settling again is a no-op while the settled reservation is remembered (until it would have
        lapsed); a lapsed or unknown reservation's charges are still recorded.
        """
        ...

    async def release(self, reservation_id: str) -> None:
        """Give the holds back: the call did not happen. No-op once settled, released or lapsed."""
        ...

    async def usage(self, scope_key: str) -> dict[str, tuple[int, int]]:
        """(used, reserved) of each counter of one scope; lapsed holds count until reclaimed."""
        ...


def _fits(used: int, reserved: int, check: Check) -> bool:
    return check.limit is None or used + reserved + check.amount <= check.limit


def _crosses(check: Check, level: int, warned: bool) -> bool:
    return check.warn_at is not None and not warned and level >= check.warn_at


@dataclass(slots=True)
class _Counter:
    used: int = 0
    reserved: int = 0
    warned: bool = False
    keep_until_s: float = -math.inf
    read_keep_until_s: float = math.nan  # SqliteBudgetBackend: as read from the file (NaN: a new row)


def _warn(counter: _Counter, check: Check) -> bool:
    """Mark the counter warned if the check brought it to warn_at the first time."""
    if _crosses(check, counter.used + counter.reserved, counter.warned):
        counter.warned = True
        return True
    return False


@dataclass(slots=True)
class _Held:
    expires_at_s: float
    holds: list[tuple[str, str, int]] = field(default_factory=list)
    settled: bool = False


class InMemoryBudgetBackend:
    """Counters in this process only: one worker, or tests."""

    def __init__(self) -> None:
        self._scopes: dict[str, dict[str, _Counter]] = {}
        self._reservations: dict[str, _Held] = {}
        self._expiries: list[tuple[float, str]] = []  # a heap; entries of finished reservations go stale
        self._next_prune_s = -math.inf

    async def reserve(
        self, reservation_id: str, checks: Sequence[Check], now_s: float, expires_at_s: float
    ) -> ReserveResult:
        self._reclaim(now_s)
        if reservation_id in self._reservations:
            return ReserveResult()
        for index, check in enumerate(checks):
            counter = self._scopes.get(check.scope_key, {}).get(check.counter, _Counter())
            if not _fits(counter.used, counter.reserved, check):
                return ReserveResult(Refusal(index, counter.used, counter.reserved))
        crossed = []
        for index, check in enumerate(checks):
            counter = self._counter(check)
            counter.reserved += check.amount
            if _warn(counter, check):
                crossed.append(Crossed(index, counter.used + counter.reserved))
        holds = [(check.scope_key, check.counter, check.amount) for check in checks]
        self._reservations[reservation_id] = _Held(expires_at_s, holds)
        heapq.heappush(self._expiries, (expires_at_s, reservation_id))
        return ReserveResult(crossed=tuple(crossed))

    async def settle(
        self, reservation_id: str, charges: Sequence[Check], now_s: float
    ) -> tuple[Crossed, ...]:
        held = self._reservations.get(reservation_id)
        if held is not None:
            if held.settled:
                return ()
            self._give_back(held)
            held.settled = True
        crossed = []
        for index, charge in enumerate(charges):
            counter = self._counter(charge)
            counter.used += charge.amount
            if _warn(counter, charge):
                crossed.append(Crossed(index, counter.used + counter.reserved))
        return tuple(crossed)

    async def release(self, reservation_id: str) -> None:
        held = self._reservations.get(reservation_id)
        if held is not None and not held.settled:
            self._give_back(held)
            del self._reservations[reservation_id]

    async def usage(self, scope_key: str) -> dict[str, tuple[int, int]]:
        counters = self._scopes.get(scope_key, {})
        return {name: (counter.used, counter.reserved) for name, counter in counters.items()}

    def _counter(self, check: Check) -> _Counter:
        counter = self._scopes.setdefault(check.scope_key, {}).setdefault(check.counter, _Counter())
        counter.keep_until_s = max(counter.keep_until_s, check.keep_until_s)
        return counter

    def _give_back(self, held: _Held) -> None:
        for scope_key, name, amount in held.holds:
            counter = self._scopes.get(scope_key, {}).get(name)
            if counter is not None:
                counter.reserved = max(0, counter.reserved - amount)
        held.holds = []

    def _reclaim(self, now_s: float) -> None:
        while self._expiries and self._expiries[0][0] <= now_s:
            expires_at_s, reservation_id = heapq.heappop(self._expiries)
            held = self._reservations.get(reservation_id)
            if held is not None and held.expires_at_s == expires_at_s:
                self._give_back(held)
                del self._reservations[reservation_id]
        if now_s >= self._next_prune_s:
            self._next_prune_s = now_s + _PRUNE_EVERY_S
            for scope_key, counters in list(self._scopes.items()):
                for name, counter in list(counters.items()):
                    if counter.keep_until_s < now_s and counter.reserved == 0:
                        del counters[name]
                if not counters:
                    del self._scopes[scope_key]


_SQLITE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS budget_counters (scope_key TEXT NOT NULL, counter TEXT NOT NULL, "
    "used INTEGER NOT NULL DEFAULT 0, reserved INTEGER NOT NULL DEFAULT 0, "
    "warned INTEGER NOT NULL DEFAULT 0, keep_until_s REAL NOT NULL, "
    "PRIMARY KEY (scope_key, counter)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS budget_counters_keep_until ON budget_counters (keep_until_s)",
    # One row per reservation, its holds inline (JSON [[scope key, counter, amount], ...]), so that one
    # statement writes or reads them all. Kept, settled, until it would have lapsed: settling twice
    # counts once.
    "CREATE TABLE IF NOT EXISTS budget_reservation_holds (id TEXT PRIMARY KEY, "
    "expires_at_s REAL NOT NULL, settled INTEGER NOT NULL DEFAULT 0, holds TEXT NOT NULL) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS budget_reservation_holds_expiry ON budget_reservation_holds (expires_at_s)",
)
# Reservation rows and counter rows come back from one statement, told apart by the first column:
# (0, id, expires_at_s, settled, holds, NULL, NULL) and (1, scope_key, counter, used, reserved, warned,
# keep_until_s).
_SQL_RESERVATION_ROWS = "SELECT 0, id, expires_at_s, settled, holds, NULL, NULL FROM budget_reservation_holds"
_SQL_LAPSED_OR_ID = f"{_SQL_RESERVATION_ROWS} WHERE expires_at_s <= ? OR id = ?"  # a MULTI-INDEX OR
_SQL_BY_ID = f"{_SQL_RESERVATION_ROWS} WHERE id = ?"
_SQL_COUNTER_ROWS = (
    "SELECT 1, scope_key, counter, used, reserved, warned, keep_until_s FROM budget_counters "
    "WHERE scope_key IN ({})"
)
_SQL_INSERT_RESERVATION = (
    "INSERT INTO budget_reservation_holds (id, expires_at_s, settled, holds) VALUES (?, ?, 0, ?)"
)
_SQL_SETTLED = "UPDATE budget_reservation_holds SET settled = 1, holds = '[]' WHERE id = ?"
_SQL_DELETE_RESERVATION = "DELETE FROM budget_reservation_holds WHERE id = ?"
_SQL_DELETE_LAPSED = "DELETE FROM budget_reservation_holds WHERE expires_at_s <= ?"
_SQL_GIVE_BACK = (
    "UPDATE budget_counters SET reserved = max(0, reserved - ?) WHERE scope_key = ? AND counter = ?"
)
_SQL_PRUNE = "DELETE FROM budget_counters WHERE keep_until_s < ? AND reserved = 0"
_SQL_BATCH = 200  # scope keys or rows per statement: far below SQLite's bound on parameters


@functools.cache
def _sql_read(reservations: str | None, scopes: int) -> str:
    """The reservation rows selected by `reservations` (if any), then every counter of `scopes` scope keys."""
    counters = _SQL_COUNTER_ROWS.format(", ".join("?" * scopes)) if scopes else None
    return " UNION ALL ".join(part for part in (reservations, counters) if part is not None)


@functools.cache
def _sql_write_counters(rows: int, keep_until: bool) -> str:
    # Absolute values, computed from what this transaction read under the write lock. keep_until_s is
    # set only when it moved: then the index on it, another page to commit, is left alone.
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    moved = ", keep_until_s = excluded.keep_until_s" if keep_until else ""
    return (
        "INSERT INTO budget_counters (scope_key, counter, used, reserved, warned, keep_until_s) "
        f"VALUES {values} ON CONFLICT (scope_key, counter) DO UPDATE SET used = excluded.used, "
        f"reserved = excluded.reserved, warned = excluded.warned{moved}"
    )


_Key = tuple[str, str]  # (scope key, counter)
_Counters = dict[_Key, _Counter]


class SqliteBudgetBackend:
    """Counters in one SQLite file (WAL), shared by every process that opens it; may be the run store's.

    Each call is one BEGIN IMMEDIATE transaction: it takes the write lock before reading, so two
    processes can never both see room for the last tokens. Within it, a call reads what it needs (its
    reservation, lapsed ones, the counters of its scopes) in one statement, decides here, and writes
    the counters back in one statement, exactly: nobody else can write in between. A reservation's
    holds are one row. Calls run on the event loop's thread, like SqliteRunStore's: a few indexed
    statements cost less than a thread hop. `synchronous` as there: NORMAL keeps every commit across
    a process crash, FULL also across power loss.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_s: float = 10.0,
        connection: sqlite3.Connection | None = None,
    ) -> None:
        """`connection`: share the run store's connection (same file, same thread, autocommit mode).
        Measured: a second connection to the file pays ~70 µs a transaction re-reading pages the
        other one just wrote; sharing keeps the page cache warm."""
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = str(path)
        self._owns_connection = connection is None
        try:
            if connection is not None:
                self._db = connection
            else:
                # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
                self._db = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
                )
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(f"PRAGMA synchronous={synchronous}")
            db = self._begin()
            try:
                for statement in _SQLITE_SCHEMA:
                    db.execute(statement)
            except BaseException:
                self._rollback()
                raise
            db.execute("COMMIT")
        except (sqlite3.Error, StoreError) as exc:
            raise ConfigurationError(f"cannot use {self.path!r} for budget counters: {exc}") from exc
        self._next_prune_s = -math.inf

    async def close(self) -> None:
        if self._owns_connection:
            self._db.close()

    def _begin(self) -> sqlite3.Connection:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"SQLite database {self.path!r} is busy or unwritable: {exc}") from exc
        return db

    def _rollback(self) -> None:
        if self._db.in_transaction:  # an error may have rolled it back already
            self._db.execute("ROLLBACK")

    def joins(self, connection: object) -> bool:
        """Whether this backend's counters live in `connection` (a run store's), so that a reservation
        can be written in the same transaction as the event that records the call."""
        return connection is self._db

    def reserve_joined(
        self, reservation_id: str, checks: Sequence[Check], now_s: float, expires_at_s: float
    ) -> ReserveResult:
        """`reserve` inside the transaction the connection's owner has open (see `joins`)."""
        if not self._db.in_transaction:
            raise StoreError("reserve_joined needs a transaction open on the shared connection")
        return self._reserve(self._db, reservation_id, checks, now_s, expires_at_s)

    def settle_joined(
        self, reservation_id: str, charges: Sequence[Check], now_s: float
    ) -> tuple[Crossed, ...]:
        """`settle` inside the transaction the connection's owner has open (see `joins`)."""
        if not self._db.in_transaction:
            raise StoreError("settle_joined needs a transaction open on the shared connection")
        return self._settle(self._db, reservation_id, charges)

    async def reserve(
        self, reservation_id: str, checks: Sequence[Check], now_s: float, expires_at_s: float
    ) -> ReserveResult:
        db = self._begin()
        try:  # a refusal still commits the reclaim
            result = self._reserve(db, reservation_id, checks, now_s, expires_at_s)
        except BaseException:
            self._rollback()
            raise
        db.execute("COMMIT")
        return result

    async def settle(
        self, reservation_id: str, charges: Sequence[Check], now_s: float
    ) -> tuple[Crossed, ...]:
        db = self._begin()
        try:
            crossed = self._settle(db, reservation_id, charges)
        except BaseException:
            self._rollback()
            raise
        db.execute("COMMIT")
        return crossed

    async def release(self, reservation_id: str) -> None:
        db = self._begin()
        try:
            row = db.execute(_SQL_BY_ID, (reservation_id,)).fetchone()
            if row is not None and not row[3]:
                holds = _holds(row[4])
                _, counters = _read(db, None, (), {scope_key for scope_key, _, _ in holds})
                _write(db, counters, _give_back(counters, holds))
                db.execute(_SQL_DELETE_RESERVATION, (reservation_id,))
        except BaseException:
            self._rollback()
            raise
        db.execute("COMMIT")

    async def usage(self, scope_key: str) -> dict[str, tuple[int, int]]:
        rows = self._db.execute(
            "SELECT counter, used, reserved FROM budget_counters WHERE scope_key = ?", (scope_key,)
        )
        return {name: (used, reserved) for name, used, reserved in rows}

    def _reserve(
        self,
        db: sqlite3.Connection,
        reservation_id: str,
        checks: Sequence[Check],
        now_s: float,
        expires_at_s: float,
    ) -> ReserveResult:
        scopes = {check.scope_key for check in checks}
        rows, counters = _read(db, _SQL_LAPSED_OR_ID, (now_s, reservation_id), scopes)
        known = False
        lapsed: dict[str, str | None] = {}  # id -> holds to give back (None: settled, nothing held)
        for _, row_id, row_expires_at_s, settled, holds, _, _ in rows:
            if row_expires_at_s <= now_s:
                lapsed[row_id] = None if settled else holds
            else:
                known = True  # this id, not lapsed: a retried call
        if lapsed:  # reclaim: give the holds of lapsed reservations back, then read the counters again
            given = [
                (amount, scope_key, name)
                for text in lapsed.values()
                if text is not None
                for scope_key, name, amount in _holds(text)
            ]
            if given:
                db.executemany(_SQL_GIVE_BACK, given)
            db.execute(_SQL_DELETE_LAPSED, (now_s,))
            _, counters = _read(db, None, (), scopes)
        if now_s >= self._next_prune_s:
            self._next_prune_s = now_s + _PRUNE_EVERY_S
            db.execute(_SQL_PRUNE, (now_s,))
            counters = {
                key: counter
                for key, counter in counters.items()
                if not (counter.keep_until_s < now_s and counter.reserved == 0)  # as _SQL_PRUNE
            }
        if known:
            return ReserveResult()
        for index, check in enumerate(checks):
            counter = counters.get((check.scope_key, check.counter))
            used, reserved = (0, 0) if counter is None else (counter.used, counter.reserved)
            if check.limit is not None and used + reserved + check.amount > check.limit:
                return ReserveResult(Refusal(index, used, reserved))
        crossed = []
        changed: list[_Key] = []
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
        _write(db, counters, changed)
        holds = [[check.scope_key, check.counter, check.amount] for check in checks if check.amount]
        db.execute(_SQL_INSERT_RESERVATION, (reservation_id, expires_at_s, _dumps(holds)))
        return ReserveResult(crossed=tuple(crossed))

    @staticmethod
    def _settle(db: sqlite3.Connection, reservation_id: str, charges: Sequence[Check]) -> tuple[Crossed, ...]:
        scopes = {charge.scope_key for charge in charges}
        rows, counters = _read(db, _SQL_BY_ID, (reservation_id,), scopes)
        holds: list[tuple[str, str, int]] = []
        if rows:
            if rows[0][3]:
                return ()  # settled already
            holds = _holds(rows[0][4])
            others = {scope_key for scope_key, _, _ in holds} - scopes
            if others:  # held at levels it is not charged at: read those too
                counters.update(_read(db, None, (), others)[1])
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
        _write(db, counters, changed)
        if rows:
            db.execute(_SQL_SETTLED, (reservation_id,))
        return tuple(crossed)


def _read(
    db: sqlite3.Connection, reservations: str | None, params: tuple[object, ...], scope_keys: set[str]
) -> tuple[list[tuple[Any, ...]], _Counters]:
    """The reservation rows `reservations` selects, and every counter of the given scopes; all in one
    statement unless there are more than _SQL_BATCH scopes."""
    keys = list(scope_keys)
    rows: list[tuple[Any, ...]] = []
    counters: _Counters = {}
    for start in range(0, max(1, len(keys)), _SQL_BATCH):
        batch = keys[start : start + _SQL_BATCH]
        sql = _sql_read(reservations if start == 0 else None, len(batch))
        if not sql:
            break
        for row in db.execute(sql, (*params, *batch) if start == 0 else batch):
            if row[0]:
                counters[row[1], row[2]] = _Counter(row[3], row[4], bool(row[5]), row[6], row[6])
            else:
                rows.append(row)
    return rows, counters


def _write(db: sqlite3.Connection, counters: _Counters, changed: Sequence[_Key]) -> None:
    """Store the changed counters (each key once), in one statement per _SQL_BATCH rows."""
    keys = list(dict.fromkeys(changed))
    for start in range(0, len(keys), _SQL_BATCH):
        batch = keys[start : start + _SQL_BATCH]
        params: list[object] = []
        moved = False
        for key in batch:
            counter = counters[key]
            moved = moved or counter.keep_until_s != counter.read_keep_until_s
            params += (*key, counter.used, counter.reserved, int(counter.warned), counter.keep_until_s)
        db.execute(_sql_write_counters(len(batch), moved), params)


def _dumps(holds: list[list[str | int]]) -> str:
    return json.dumps(holds, separators=(",", ":"))


def _holds(text: str) -> list[tuple[str, str, int]]:
    return [(scope_key, name, amount) for scope_key, name, amount in json.loads(text)]


def _give_back(counters: _Counters, holds: Sequence[tuple[str, str, int]]) -> list[_Key]:
    """Take the holds off the counters still there (a forgotten one stays forgotten); the changed keys."""
    changed: list[_Key] = []
    for scope_key, name, amount in holds:
        counter = counters.get((scope_key, name))
        if counter is not None and counter.reserved:
            counter.reserved = max(0, counter.reserved - amount)
            changed.append((scope_key, name))
    return changed


# Shared by the scripts: give a reservation's holds back. A reservation is a list
# [state ('0' held, '1' settled), counter hash, counter, amount, counter hash, counter, amount, ...].
# A counter hash that expired is left alone: recreating it with a negative `reserved` would let later
# calls past the limit.
_GIVE_BACK_LUA = """
local function give_back(held)
  for i = 2, #held, 3 do
    if redis.call('EXISTS', held[i]) == 1 then
      local field = 'r:' .. held[i + 1]
      if redis.call('HINCRBY', held[i], field, string.format('%d', -tonumber(held[i + 2]))) < 0 then
        redis.call('HSET', held[i], field, 0)
      end
    end
  end
end
"""

# One counter hash per scope key, fields u:<counter> (used), r:<counter> (reserved), w:<counter>
# (warned); integers, so HINCRBY is exact. Returns the level if the warn level was reached first now.
_ADD_LUA = """
local function add(key, counter, column, amount, warn, ttl_ms)
  redis.call('HINCRBY', key, column .. counter, amount)
  local state = redis.call('HMGET', key, 'u:' .. counter, 'r:' .. counter)
  local level = (tonumber(state[1]) or 0) + (tonumber(state[2]) or 0)
  redis.call('PEXPIRE', key, ttl_ms)
  if warn ~= '' and level >= tonumber(warn) and redis.call('HSETNX', key, 'w:' .. counter, 1) == 1 then
    return level
  end
  return nil
end
"""

# KEYS[1] = expiry zset (reservation ids scored by expiry), KEYS[2] = this reservation's list,
# KEYS[2 + i] = counter hash of check i. ARGV = prefix, now_s, expires_at_s, reservation id, then per
# check: counter, amount, limit ('' = none), warn_at ('' = none), ttl_ms. Lapsed reservations are
# reclaimed first; their counter hashes are not in KEYS (see RedisBudgetBackend on Redis Cluster).
_RESERVE_LUA = (
    _GIVE_BACK_LUA
    + _ADD_LUA
    + """
local lapsed = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1000)
for _, id in ipairs(lapsed) do
  local key = ARGV[1] .. 'res:' .. id
  local held = redis.call('LRANGE', key, 0, -1)
  if held[1] == '0' then give_back(held) end
  redis.call('DEL', key)
  redis.call('ZREM', KEYS[1], id)
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {1} end
local n = #KEYS - 2
for i = 1, n do
  local base = 4 + (i - 1) * 5
  if ARGV[base + 3] ~= '' then
    local state = redis.call('HMGET', KEYS[2 + i], 'u:' .. ARGV[base + 1], 'r:' .. ARGV[base + 1])
    local used = tonumber(state[1]) or 0
    local reserved = tonumber(state[2]) or 0
    if used + reserved + tonumber(ARGV[base + 2]) > tonumber(ARGV[base + 3]) then
      return {0, i - 1, used, reserved}
    end
  end
end
local reply = {1}
local held = {'0'}
for i = 1, n do
  local base = 4 + (i - 1) * 5
  local level = add(KEYS[2 + i], ARGV[base + 1], 'r:', ARGV[base + 2], ARGV[base + 4], ARGV[base + 5])
  if level then
    table.insert(reply, i - 1)
    table.insert(reply, level)
  end
  table.insert(held, KEYS[2 + i])
  table.insert(held, ARGV[base + 1])
  table.insert(held, ARGV[base + 2])
end
redis.call('RPUSH', KEYS[2], unpack(held))
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
return reply
"""
)

# KEYS[1] = the reservation's list, KEYS[1 + i] = counter hash of charge i.
# ARGV per charge: counter, amount, warn_at ('' = none), ttl_ms. The list is kept as a settled marker
# ('1') until its expiry, so settling twice counts once.
_SETTLE_LUA = (
    _GIVE_BACK_LUA
    + _ADD_LUA
    + """
local state = redis.call('LINDEX', KEYS[1], 0)
if state == '1' then return {} end
if state == '0' then
  give_back(redis.call('LRANGE', KEYS[1], 0, -1))
  redis.call('LTRIM', KEYS[1], 0, 0)
  redis.call('LSET', KEYS[1], 0, '1')
end
local reply = {}
for i = 1, #KEYS - 1 do
  local base = (i - 1) * 4
  local level = add(KEYS[1 + i], ARGV[base + 1], 'u:', ARGV[base + 2], ARGV[base + 3], ARGV[base + 4])
  if level then
    table.insert(reply, i - 1)
    table.insert(reply, level)
  end
end
return reply
"""
)

# KEYS[1] = the reservation's list, KEYS[2] = expiry zset; ARGV[1] = reservation id.
_RELEASE_LUA = (
    _GIVE_BACK_LUA
    + """
if redis.call('LINDEX', KEYS[1], 0) == '0' then
  give_back(redis.call('LRANGE', KEYS[1], 0, -1))
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return 1
"""
)


def _ttl_ms(check: Check, now_s: float) -> int:
    # Relative, from the callers' clock: PEXPIREAT would read Redis's own clock instead.
    return max(1000, math.ceil((check.keep_until_s - now_s) * 1000))


def _crossed_from_reply(reply: Sequence[object]) -> tuple[Crossed, ...]:
    pairs = [int(value) for value in reply]  # type: ignore[call-overload]
    return tuple(Crossed(pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2))


class RedisBudgetBackend:
    """Counters shared by every process using the same Redis; each call is one atomic Lua script.

    Reclaiming lapsed reservations touches counter hashes the script cannot declare in advance: fine
    on a single Redis; on Redis Cluster give `prefix` a hash tag (e.g. "tether:{budget}:") so every
    key lives in one slot. At most 1,000 lapsed reservations are reclaimed per reserve (the rest on
    the next ones), which keeps each script short. Expiry is judged by the callers' clocks.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "tether:budget:") -> None:
        self._client = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE_LUA)
        self._settle = client.register_script(_SETTLE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def _counter_key(self, scope_key: str) -> str:
        return f"{self._prefix}c:{scope_key}"

    def _reservation_key(self, reservation_id: str) -> str:
        return f"{self._prefix}res:{reservation_id}"

    async def reserve(
        self, reservation_id: str, checks: Sequence[Check], now_s: float, expires_at_s: float
    ) -> ReserveResult:
        keys = [f"{self._prefix}expiry", self._reservation_key(reservation_id)]
        args: list[str] = [self._prefix, repr(float(now_s)), repr(float(expires_at_s)), reservation_id]
        for check in checks:
            keys.append(self._counter_key(check.scope_key))
            args += [
                check.counter,
                str(check.amount),
                "" if check.limit is None else str(check.limit),
                "" if check.warn_at is None else str(check.warn_at),
                str(_ttl_ms(check, now_s)),
            ]
        reply = await self._reserve(keys=keys, args=args)
        if int(reply[0]) == 0:
            return ReserveResult(Refusal(int(reply[1]), int(reply[2]), int(reply[3])))
        return ReserveResult(crossed=_crossed_from_reply(reply[1:]))

    async def settle(
        self, reservation_id: str, charges: Sequence[Check], now_s: float
    ) -> tuple[Crossed, ...]:
        keys = [self._reservation_key(reservation_id)]
        args: list[str] = []
        for charge in charges:
            keys.append(self._counter_key(charge.scope_key))
            warn_at = "" if charge.warn_at is None else str(charge.warn_at)
            args += [charge.counter, str(charge.amount), warn_at, str(_ttl_ms(charge, now_s))]
        return _crossed_from_reply(await self._settle(keys=keys, args=args))

    async def release(self, reservation_id: str) -> None:
        keys = [self._reservation_key(reservation_id), f"{self._prefix}expiry"]
        await self._release(keys=keys, args=[reservation_id])

    async def usage(self, scope_key: str) -> dict[str, tuple[int, int]]:
        # redis-py types hash commands for both clients (`Awaitable | dict`); this one is async.
        reply = self._client.hgetall(self._counter_key(scope_key))
        fields = await cast("Awaitable[dict[bytes | str, bytes | str]]", reply)
        counters: dict[str, list[int]] = {}
        for raw_field, raw_value in fields.items():
            field_name = raw_field.decode() if isinstance(raw_field, bytes) else str(raw_field)
            column, _, name = field_name.partition(":")
            if column in ("u", "r"):
                counters.setdefault(name, [0, 0])[1 if column == "r" else 0] = int(raw_value)
        return {name: (used, reserved) for name, (used, reserved) in counters.items()}
