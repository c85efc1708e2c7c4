"""Where budget counters live: atomic reserve, settle and release, in memory, in SQLite or in Redis.

Amounts are integers (millionths of a token, dollar, call …; `limits.UNITS_PER_ONE`), so every store
computes exactly the same sums, and no limit is passed, nor two stores disagree, by a rounding error.
Each store keeps per (scope key, counter): `used` (settled), `reserved` (held by calls in flight) and
whether the warning level was reached; and per reservation: its holds, expiry and whether it settled.
"""

from __future__ import annotations

import heapq
import math
import sqlite3
from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, cast

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
            if self._warn(counter, check):
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
            if self._warn(counter, charge):
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

    @staticmethod
    def _warn(counter: _Counter, check: Check) -> bool:
        if _crosses(check, counter.used + counter.reserved, counter.warned):
            counter.warned = True
            return True
        return False

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
    "CREATE TABLE IF NOT EXISTS budget_reservations (id TEXT PRIMARY KEY, expires_at_s REAL NOT NULL, "
    "settled INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS budget_reservations_expiry ON budget_reservations (expires_at_s)",
    "CREATE TABLE IF NOT EXISTS budget_holds (reservation_id TEXT NOT NULL, scope_key TEXT NOT NULL, "
    "counter TEXT NOT NULL, amount INTEGER NOT NULL, PRIMARY KEY (reservation_id, scope_key, counter)) "
    "WITHOUT ROWID",
)


class SqliteBudgetBackend:
    """Counters in one SQLite file (WAL), shared by every process that opens it; may be the run store's.

    Each call is one BEGIN IMMEDIATE transaction: it takes the write lock before reading, so two
    processes can never both see room for the last tokens. Calls run on the event loop's thread, like
    SqliteRunStore's: a few indexed statements cost less than a thread hop. `synchronous` as there:
    NORMAL keeps every commit across a process crash, FULL also across power loss.
    """

    def __init__(
        self, path: str | Path, *, synchronous: Synchronous = "NORMAL", busy_timeout_s: float = 10.0
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = str(path)
        try:
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not the module's.
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            with self._write() as db:
                for statement in _SQLITE_SCHEMA:
                    db.execute(statement)
        except (sqlite3.Error, StoreError) as exc:
            raise ConfigurationError(f"cannot use {self.path!r} for budget counters: {exc}") from exc
        self._next_prune_s = -math.inf

    async def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"SQLite database {self.path!r} is busy or unwritable: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    async def reserve(
        self, reservation_id: str, checks: Sequence[Check], now_s: float, expires_at_s: float
    ) -> ReserveResult:
        with self._write() as db:  # a refusal still commits the reclaim
            self._reclaim(db, now_s)
            if db.execute("SELECT 1 FROM budget_reservations WHERE id = ?", (reservation_id,)).fetchone():
                return ReserveResult()
            for index, check in enumerate(checks):
                row = db.execute(
                    "SELECT used, reserved FROM budget_counters WHERE scope_key = ? AND counter = ?",
                    (check.scope_key, check.counter),
                ).fetchone()
                used, reserved = row if row is not None else (0, 0)
                if not _fits(used, reserved, check):
                    return ReserveResult(Refusal(index, used, reserved))
            crossed = [
                Crossed(index, level)
                for index, check in enumerate(checks)
                if (level := self._add(db, check, "reserved")) is not None
            ]
            db.execute(
                "INSERT INTO budget_reservations (id, expires_at_s) VALUES (?, ?)",
                (reservation_id, expires_at_s),
            )
            db.executemany(
                "INSERT INTO budget_holds (reservation_id, scope_key, counter, amount) VALUES (?, ?, ?, ?)",
                [(reservation_id, check.scope_key, check.counter, check.amount) for check in checks],
            )
        return ReserveResult(crossed=tuple(crossed))

    async def settle(
        self, reservation_id: str, charges: Sequence[Check], now_s: float
    ) -> tuple[Crossed, ...]:
        with self._write() as db:
            row = db.execute(
                "SELECT settled FROM budget_reservations WHERE id = ?", (reservation_id,)
            ).fetchone()
            if row is not None:
                if row[0]:
                    return ()
                self._give_back(db, (reservation_id,))
                db.execute("UPDATE budget_reservations SET settled = 1 WHERE id = ?", (reservation_id,))
            crossed = [
                Crossed(index, level)
                for index, charge in enumerate(charges)
                if (level := self._add(db, charge, "used")) is not None
            ]
        return tuple(crossed)

    async def release(self, reservation_id: str) -> None:
        with self._write() as db:
            row = db.execute(
                "SELECT settled FROM budget_reservations WHERE id = ?", (reservation_id,)
            ).fetchone()
            if row is not None and not row[0]:
                self._give_back(db, (reservation_id,))
                db.execute("DELETE FROM budget_reservations WHERE id = ?", (reservation_id,))

    async def usage(self, scope_key: str) -> dict[str, tuple[int, int]]:
        rows = self._db.execute(
            "SELECT counter, used, reserved FROM budget_counters WHERE scope_key = ?", (scope_key,)
        )
        return {name: (used, reserved) for name, used, reserved in rows}

    @staticmethod
    def _add(db: sqlite3.Connection, check: Check, column: str) -> int | None:
        """Add the check's amount to `column` ("used" or "reserved"); the level if it crossed warn_at."""
        used_amount, reserved_amount = (check.amount, 0) if column == "used" else (0, check.amount)
        used, reserved, warned = db.execute(
            "INSERT INTO budget_counters (scope_key, counter, used, reserved, keep_until_s) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (scope_key, counter) DO UPDATE SET "
            "used = used + excluded.used, reserved = reserved + excluded.reserved, "
            "keep_until_s = max(keep_until_s, excluded.keep_until_s) RETURNING used, reserved, warned",
            (check.scope_key, check.counter, used_amount, reserved_amount, check.keep_until_s),
        ).fetchone()
        if not _crosses(check, used + reserved, bool(warned)):
            return None
        db.execute(
            "UPDATE budget_counters SET warned = 1 WHERE scope_key = ? AND counter = ?",
            (check.scope_key, check.counter),
        )
        return int(used + reserved)

    @staticmethod
    def _give_back(db: sqlite3.Connection, reservation_ids: Sequence[str]) -> None:
        for reservation_id in reservation_ids:
            holds = db.execute(
                "SELECT scope_key, counter, amount FROM budget_holds WHERE reservation_id = ?",
                (reservation_id,),
            ).fetchall()
            db.executemany(
                "UPDATE budget_counters SET reserved = max(0, reserved - ?) "
                "WHERE scope_key = ? AND counter = ?",
                [(amount, scope_key, name) for scope_key, name, amount in holds],
            )
            db.execute("DELETE FROM budget_holds WHERE reservation_id = ?", (reservation_id,))

    def _reclaim(self, db: sqlite3.Connection, now_s: float) -> None:
        lapsed = db.execute(
            "SELECT id, settled FROM budget_reservations WHERE expires_at_s <= ?", (now_s,)
        ).fetchall()
        if lapsed:
            self._give_back(db, [reservation_id for reservation_id, settled in lapsed if not settled])
            db.execute("DELETE FROM budget_reservations WHERE expires_at_s <= ?", (now_s,))
        if now_s >= self._next_prune_s:
            self._next_prune_s = now_s + _PRUNE_EVERY_S
            db.execute("DELETE FROM budget_counters WHERE keep_until_s < ? AND reserved = 0", (now_s,))


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
