"""Shared-state stores that keep working when Redis does not: fall back to this process's memory.

A Redis outage must not take every model and tool call down with it. While Redis errors, each
process keeps its own breakers, buckets and pools (weaker: limits are per process, not global) and
logs that it does; the next successful Redis call switches back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.exceptions import RedisError

from tether.resilience.breaker import (
    BreakerEvent,
    BreakerPolicy,
    BreakerStep,
    BreakerStore,
    InMemoryBreakerStore,
)
from tether.resilience.bulkhead import BulkheadStore, InMemoryBulkheadStore
from tether.resilience.ratelimit import InMemoryRateLimitStore, RateLimit, RateLimitStore

logger = logging.getLogger("tether.resilience")

T = TypeVar("T")
_UNREACHABLE = (RedisError, OSError)


class _Failover:
    def __init__(self, what: str) -> None:
        self._what = what
        self._logged_at_s = 0.0
        self.degraded = False

    async def run(self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]) -> T:
        try:
            result = await shared()
        except _UNREACHABLE as exc:
            now_s = time.monotonic()
            if not self.degraded or now_s - self._logged_at_s > 60:
                logger.warning("%s: Redis unreachable (%s); using this process's memory", self._what, exc)
                self._logged_at_s = now_s
            self.degraded = True
            return await local()
        if self.degraded:
            logger.warning("%s: Redis reachable again; state is shared once more", self._what)
            self.degraded = False
        return result


class FailoverBreakerStore:
    def __init__(self, shared: BreakerStore, local: BreakerStore | None = None) -> None:
        self.shared = shared
        self.local = local or InMemoryBreakerStore()
        self.failover = _Failover("circuit breakers")

    async def apply(self, name: str, policy: BreakerPolicy, event: BreakerEvent, now_s: float) -> BreakerStep:
        return await self.failover.run(
            lambda: self.shared.apply(name, policy, event, now_s),
            lambda: self.local.apply(name, policy, event, now_s),
        )


class FailoverRateLimitStore:
    def __init__(self, shared: RateLimitStore, local: RateLimitStore | None = None) -> None:
        self.shared = shared
        self.local = local or InMemoryRateLimitStore()
        self.failover = _Failover("rate limits")

    async def take(self, key: str, limit: RateLimit, cost: float, now_s: float) -> float:
        return await self.failover.run(
            lambda: self.shared.take(key, limit, cost, now_s),
            lambda: self.local.take(key, limit, cost, now_s),
        )


class FailoverBulkheadStore:
    def __init__(self, shared: BulkheadStore, local: BulkheadStore | None = None) -> None:
        self.shared = shared
        self.local = local or InMemoryBulkheadStore()
        self.failover = _Failover("bulkheads")

    async def try_enter(self, name: str, limit: int, holder: str, now_s: float, lease_s: float) -> bool:
        return await self.failover.run(
            lambda: self.shared.try_enter(name, limit, holder, now_s, lease_s),
            lambda: self.local.try_enter(name, limit, holder, now_s, lease_s),
        )

    async def leave(self, name: str, holder: str) -> None:
        # Leave both: the holder may have entered either, and leaving where it is absent is harmless.
        await self.local.leave(name, holder)
        await self.failover.run(lambda: self.shared.leave(name, holder), _nothing)


async def _nothing() -> None:
    return None
