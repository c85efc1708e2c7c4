"""Bulkheads: bounded concurrency pools per tool group or provider, in memory or shared via Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from tether.errors import BulkheadFullError, ConfigurationError
from tether.resilience.retry import duration_s

if TYPE_CHECKING:
    import redis.asyncio


class BulkheadStore(Protocol):
    """Who holds the slots of each pool. A holder's slot is a lease: it lapses at `now_s + lease_s`."""

    async def try_enter(self, name: str, limit: int, holder: str, now_s: float, lease_s: float) -> bool:
        """Take (or renew) a slot of pool `name` for `holder` if fewer than `limit` live leases exist."""
        ...

    async def leave(self, name: str, holder: str) -> None:
        """Give the slot back; leaving twice, or after the lease lapsed, is harmless."""
        ...


class InMemoryBulkheadStore:
    """Pools in this process only: one worker, or tests."""

    def __init__(self) -> None:
        self._pools: dict[str, dict[str, float]] = {}  # name -> holder -> lease expiry

    async def try_enter(self, name: str, limit: int, holder: str, now_s: float, lease_s: float) -> bool:
        pool = self._pools.setdefault(name, {})
        for expired in [h for h, expiry_s in pool.items() if expiry_s <= now_s]:
            del pool[expired]
        if holder not in pool and len(pool) >= limit:
            return False
        pool[holder] = now_s + lease_s
        return True

    async def leave(self, name: str, holder: str) -> None:
        pool = self._pools.get(name)
        if pool is not None:
            pool.pop(holder, None)
            if not pool:
                del self._pools[name]


# KEYS[1] = sorted set of holders scored by lease expiry; ARGV = limit, holder, now_s, lease_s.
# Dropping lapsed leases first is what keeps a crashed process from holding its slots forever.
_ENTER_LUA = """
local now = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.17g', now))
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], string.format('%.17g', now + tonumber(ARGV[4])), ARGV[2])
-- The set lives as long as its longest lease, so an abandoned pool leaves nothing behind.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
local ttl_ms = math.ceil((tonumber(last[2]) - now) * 1000) + 1000
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl_ms))
return 1
"""


class RedisBulkheadStore:
    """Pools shared by every process using the same Redis; entering is one atomic Lua script.

    Lease expiry is judged by the callers' clocks (wall time by default), so hosts must keep them in sync.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "tether:bh:") -> None:
        self._client = client
        self._prefix = prefix
        self._enter = client.register_script(_ENTER_LUA)

    async def try_enter(self, name: str, limit: int, holder: str, now_s: float, lease_s: float) -> bool:
        args: list[str | float] = [limit, holder, float(now_s), float(lease_s)]
        return bool(await self._enter(keys=[self._prefix + name], args=args))

    async def leave(self, name: str, holder: str) -> None:
        await self._client.zrem(self._prefix + name, holder)


class Bulkhead:
    """At most `max_concurrent` holders of `slot()` at once, across every process sharing `store`.

    A full pool is polled every `poll_s` for up to `max_wait_s`, then BulkheadFullError. Each slot is a
    lease of `lease_s`, so a crashed holder frees its slot when the lease lapses; `lease_s` must
    therefore exceed the longest call the pool guards (its timeout), or a slow call loses its slot.
    """

    def __init__(
        self,
        name: str,
        max_concurrent: int,
        *,
        store: BulkheadStore | None = None,
        max_wait_s: float | timedelta = 0.0,
        lease_s: float | timedelta = 60.0,
        poll_s: float | timedelta = 0.01,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1:
            raise ConfigurationError(
                f"bulkhead {name!r}: max_concurrent must be an int of at least 1, not {max_concurrent!r}"
            )
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_wait_s = duration_s(f"bulkhead {name!r}: max_wait_s", max_wait_s)
        self.lease_s = duration_s(f"bulkhead {name!r}: lease_s", lease_s)
        self.poll_s = duration_s(f"bulkhead {name!r}: poll_s", poll_s)
        if self.lease_s <= 0 or self.poll_s <= 0:
            raise ConfigurationError(f"bulkhead {name!r}: lease_s and poll_s must be positive")
        self._store: BulkheadStore = store if store is not None else InMemoryBulkheadStore()
        self._clock = clock
        # Unique across hosts and processes; the readable part tells an operator who holds a slot.
        self._holder_prefix = f"{socket.gethostname()}:{os.getpid()}:"

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of `async with`; BulkheadFullError if none frees in time."""
        holder = self._holder_prefix + uuid.uuid4().hex
        try:
            await self._enter(holder)
        except asyncio.CancelledError:
            # Cancelled mid-call, the store may have granted the slot anyway; hand it back now rather
            # than leave it to the lease.
            await self._store.leave(self.name, holder)
            raise
        try:
            yield
        finally:
            await self._store.leave(self.name, holder)

    async def _enter(self, holder: str) -> None:
        deadline_s = self._clock() + self.max_wait_s
        while not await self._store.try_enter(
            self.name, self.max_concurrent, holder, self._clock(), self.lease_s
        ):
            remaining_s = deadline_s - self._clock()
            if remaining_s <= 0:
                raise BulkheadFullError(
                    f"bulkhead {self.name!r} is full: all {self.max_concurrent} slots stayed busy for "
                    f"{self.max_wait_s:g} s; retry later, allow a longer wait, or raise max_concurrent",
                    name=self.name,
                    retry_in_s=None,
                )
            await asyncio.sleep(min(self.poll_s, remaining_s))


class BulkheadRegistry:
    """One Bulkhead per name, all on one store, with shared waiting and lease settings."""

    def __init__(
        self,
        store: BulkheadStore | None = None,
        *,
        max_wait_s: float | timedelta = 0.0,
        lease_s: float | timedelta = 60.0,
        poll_s: float | timedelta = 0.01,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store: BulkheadStore = store if store is not None else InMemoryBulkheadStore()
        self._max_wait_s = max_wait_s
        self._lease_s = lease_s
        self._poll_s = poll_s
        self._clock = clock
        self._bulkheads: dict[str, Bulkhead] = {}

    def get(self, name: str, max_concurrent: int) -> Bulkhead:
        """The bulkhead called `name`, made on first use; asking again with another size is an error."""
        bulkhead = self._bulkheads.get(name)
        if bulkhead is None:
            bulkhead = self._bulkheads[name] = Bulkhead(
                name,
                max_concurrent,
                store=self._store,
                max_wait_s=self._max_wait_s,
                lease_s=self._lease_s,
                poll_s=self._poll_s,
                clock=self._clock,
            )
        elif bulkhead.max_concurrent != max_concurrent:
            raise ConfigurationError(
                f"bulkhead {name!r} already exists with max_concurrent={bulkhead.max_concurrent}, "
                f"not {max_concurrent}; one pool has one size"
            )
        return bulkhead
