"""Token-bucket rate limits (requests or tokens per minute) keyed by caller, in memory or shared via Redis."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Protocol

from tether.errors import ConfigurationError, RateLimitExceededError
from tether.resilience.retry import duration_s

if TYPE_CHECKING:
    import redis.asyncio

# Float sums such as tokens + wait * refill can land one ulp short of `cost`; without this slack a
# caller that waited exactly the promised time would be refused again for a nanosecond.
_SLACK = 1e-9


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A bucket holding up to `capacity` tokens (the burst), refilled continuously at `refill_per_s`."""

    capacity: float
    refill_per_s: float

    def __post_init__(self) -> None:
        for field in ("capacity", "refill_per_s"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigurationError(f"RateLimit.{field} must be a finite number, not {value!r}")
            if value <= 0:
                raise ConfigurationError(f"RateLimit.{field} must be positive, not {value!r}")
            object.__setattr__(self, field, float(value))

    @classmethod
    def per_minute(cls, n: float, burst: float | None = None) -> RateLimit:
        """`n` per minute, refilled smoothly; `burst` (default `n`) is how many may come at once."""
        return cls(capacity=n if burst is None else burst, refill_per_s=n / 60.0)


class RateLimitStore(Protocol):
    """Where buckets live. One call is atomic: it refills, then takes `cost` tokens or nothing."""

    async def take(self, key: str, limit: RateLimit, cost: float, now_s: float) -> float:
        """0.0 when `cost` tokens were taken; otherwise the seconds until they will be there (none taken)."""
        ...


def _take(
    tokens: float, updated_s: float, limit: RateLimit, cost: float, now_s: float
) -> tuple[float, float, float]:
    """(tokens, updated_s, wait_s) after one take. The Redis script mirrors this line by line."""
    # A clock that steps back credits nothing rather than refilling twice.
    tokens = min(limit.capacity, tokens + max(0.0, now_s - updated_s) * limit.refill_per_s)
    updated_s = max(updated_s, now_s)
    if tokens + _SLACK * max(1.0, cost) >= cost:
        return max(0.0, tokens - cost), updated_s, 0.0
    return tokens, updated_s, (cost - tokens) / limit.refill_per_s


class InMemoryRateLimitStore:
    """Buckets in this process only: one worker, or tests."""

    def __init__(self, *, prune_above: int = 10_000) -> None:
        self._buckets: dict[str, tuple[float, float, RateLimit]] = {}
        # Per-principal keys come and go; a full bucket is the same as no bucket, so drop those.
        self._prune_above = prune_above

    async def take(self, key: str, limit: RateLimit, cost: float, now_s: float) -> float:
        tokens, updated_s, _ = self._buckets.get(key, (limit.capacity, now_s, limit))
        tokens, updated_s, wait_s = _take(tokens, updated_s, limit, cost, now_s)
        self._buckets[key] = (tokens, updated_s, limit)
        if len(self._buckets) > self._prune_above:
            self._prune(now_s)
        return wait_s

    def _prune(self, now_s: float) -> None:
        for key, (tokens, updated_s, limit) in list(self._buckets.items()):
            if tokens + (now_s - updated_s) * limit.refill_per_s >= limit.capacity:
                del self._buckets[key]
        self._prune_above = max(self._prune_above, 2 * len(self._buckets))


# KEYS[1] = bucket hash {tokens, updated_s}; ARGV = capacity, refill_per_s, cost, now_s, slack.
# Numbers are stored and returned with %.17g: Lua's tostring keeps 14 digits and a plain number reply
# is truncated to an integer, and either would drift from the in-memory arithmetic.
_TAKE_LUA = """
local capacity = tonumber(ARGV[1])
local refill = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
local slack = tonumber(ARGV[5])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated_s')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  tokens = capacity
  updated = now
end
tokens = math.min(capacity, tokens + math.max(0, now - updated) * refill)
updated = math.max(updated, now)
local wait = 0
if tokens + slack * math.max(1, cost) >= cost then
  tokens = math.max(0, tokens - cost)
else
  wait = (cost - tokens) / refill
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
  'updated_s', string.format('%.17g', updated))
-- Once full again the bucket equals a missing one, so it may expire then (plus a second of slack).
local ttl_ms = math.min(math.ceil((capacity - tokens) / refill * 1000) + 1000, 2592000000)
redis.call('PEXPIRE', KEYS[1], string.format('%d', ttl_ms))
return string.format('%.17g', wait)
"""


class RedisRateLimitStore:
    """Buckets shared by every process using the same Redis; each take is one atomic Lua script.

    `now_s` comes from the callers' clocks (wall time by default), so hosts must keep them in sync:
    a skew of d seconds credits at most `refill_per_s * d` extra tokens.
    """

    def __init__(self, client: redis.asyncio.Redis, *, prefix: str = "tether:rl:") -> None:
        self._prefix = prefix
        self._script = client.register_script(_TAKE_LUA)

    async def take(self, key: str, limit: RateLimit, cost: float, now_s: float) -> float:
        args = [limit.capacity, limit.refill_per_s, float(cost), float(now_s), _SLACK]
        return float(await self._script(keys=[self._prefix + key], args=args))


class RateLimiter:
    """Takes tokens from buckets, waiting up to `max_wait_s` for them; keys and limits are the caller's.

    Waiters are not queued: after a wait they compete again, so under contention the bound holds but
    the order does not.
    """

    def __init__(
        self,
        store: RateLimitStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store: RateLimitStore = store if store is not None else InMemoryRateLimitStore()
        self._clock = clock
        self._sleep = sleep

    async def acquire(
        self, key: str, limit: RateLimit, cost: float = 1.0, *, max_wait_s: float | timedelta = 0.0
    ) -> float:
        """Take `cost` tokens from bucket `key`; return the seconds waited.

        Raises RateLimitExceededError (`retry_in_s` says when the tokens will be there) if they will
        not be there within `max_wait_s`, and at once, with `retry_in_s=None`, if `cost` exceeds the
        bucket's capacity and so can never fit.
        """
        max_wait = duration_s("max_wait_s", max_wait_s)
        if isinstance(cost, bool) or not isinstance(cost, int | float) or not cost >= 0 or math.isinf(cost):
            raise ConfigurationError(f"rate limit {key!r}: cost must be a finite number >= 0, not {cost!r}")
        if cost > limit.capacity:
            raise RateLimitExceededError(
                f"rate limit {key!r}: a cost of {cost:g} can never fit a bucket of capacity "
                f"{limit.capacity:g}; split the request or raise the limit's burst",
                name=key,
                retry_in_s=None,
            )
        started_s = self._clock()
        while True:
            now_s = self._clock()
            wait_s = await self._store.take(key, limit, cost, now_s)
            if wait_s <= 0:
                return max(0.0, now_s - started_s)
            if now_s + wait_s > started_s + max_wait:
                raise RateLimitExceededError(
                    f"rate limit {key!r} ({limit.refill_per_s * 60:g}/min, burst {limit.capacity:g}) is "
                    f"exhausted: a cost of {cost:g} fits again in {wait_s:.3g} s, beyond the allowed "
                    f"wait of {max_wait:g} s; retry later, lower the load, or raise the limit",
                    name=key,
                    retry_in_s=wait_s,
                )
            await self._sleep(wait_s)
