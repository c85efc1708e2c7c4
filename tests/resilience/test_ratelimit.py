"""Token buckets: their invariants in memory and in Redis, the limiter's bounded waits, sharing."""

from __future__ import annotations

import asyncio
import re
import sys
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.errors import ConfigurationError, RateLimitExceededError
from tether.resilience.ratelimit import (
    InMemoryRateLimitStore,
    RateLimit,
    RateLimiter,
    RateLimitStore,
    RedisRateLimitStore,
)

TOLERANCE = 1e-6

limits = st.builds(RateLimit, capacity=st.floats(1, 50), refill_per_s=st.floats(0.05, 20))
# (seconds to advance, fraction of the capacity to take, whether to wait out a refusal and take again)
steps = st.lists(st.tuples(st.floats(0, 3), st.floats(0.01, 1), st.booleans()), max_size=40)


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        # Escaped: a parametrized test's prefix holds "[", which SCAN would read as a glob class.
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", redis_prefix) + "*"
        keys = [key async for key in client.scan_iter(match=pattern)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


class FakeTime:
    """A wall clock that only moves when the fake sleep is awaited."""

    def __init__(self) -> None:
        self.now_s = 1_700_000_000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now_s

    async def sleep(self, delay_s: float) -> None:
        self.sleeps.append(delay_s)
        self.now_s += delay_s


async def check_bucket_invariants(
    store: RateLimitStore, limit: RateLimit, plan: list[tuple[float, float, bool]]
) -> None:
    key = uuid.uuid4().hex
    now_s = 1000.0
    grants: list[tuple[float, float]] = []
    for advance_s, fraction, wait_out in plan:
        now_s += advance_s
        cost = fraction * limit.capacity
        wait_s = await store.take(key, limit, cost, now_s)
        # A wait beyond cost / refill would mean the bucket had gone below zero.
        assert 0.0 <= wait_s <= cost / limit.refill_per_s + TOLERANCE
        if wait_s == 0.0:
            grants.append((now_s, cost))
        elif wait_out:
            now_s += wait_s
            assert await store.take(key, limit, cost, now_s) == 0.0, "the promised wait was not enough"
            grants.append((now_s, cost))
    for first in range(len(grants)):
        granted = 0.0
        for last in range(first, len(grants)):
            granted += grants[last][1]
            elapsed_s = grants[last][0] - grants[first][0]
            assert granted <= limit.capacity + limit.refill_per_s * elapsed_s + TOLERANCE
    # Whatever happened, a full refill time later the whole capacity is there again.
    assert await store.take(key, limit, limit.capacity, now_s + limit.capacity / limit.refill_per_s) == 0.0


@settings(max_examples=100, deadline=None)
@given(limit=limits, plan=steps)
async def test_memory_bucket_never_grants_more_than_capacity_plus_refill(
    limit: RateLimit, plan: list[tuple[float, float, bool]]
) -> None:
    """In memory, grants in any interval stay within capacity + refill * elapsed, never below zero."""
    await check_bucket_invariants(InMemoryRateLimitStore(), limit, plan)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=limits, plan=steps)
async def test_redis_bucket_never_grants_more_than_capacity_plus_refill(
    redis_client: redis.asyncio.Redis,
    redis_prefix: str,
    limit: RateLimit,
    plan: list[tuple[float, float, bool]],
) -> None:
    """In Redis, grants in any interval stay within capacity + refill * elapsed, never below zero."""
    await check_bucket_invariants(RedisRateLimitStore(redis_client, prefix=redis_prefix), limit, plan)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bucket_limits=st.lists(limits, min_size=1, max_size=3),
    plan=st.lists(st.tuples(st.floats(0, 3), st.integers(0, 2), st.floats(0.01, 1.2)), max_size=40),
)
async def test_redis_store_answers_exactly_like_the_memory_store(
    redis_client: redis.asyncio.Redis,
    redis_prefix: str,
    bucket_limits: list[RateLimit],
    plan: list[tuple[float, int, float]],
) -> None:
    """Over any sequence of takes on several buckets, Redis and memory give the same answers."""
    memory = InMemoryRateLimitStore()
    shared = RedisRateLimitStore(redis_client, prefix=f"{redis_prefix}{uuid.uuid4().hex}:")
    now_s = 1_700_000_000.0
    for advance_s, index, fraction in plan:
        now_s += advance_s
        limit = bucket_limits[index % len(bucket_limits)]
        key, cost = f"bucket-{index % len(bucket_limits)}", fraction * limit.capacity
        expected = await memory.take(key, limit, cost, now_s)
        assert await shared.take(key, limit, cost, now_s) == expected


async def test_acquire_waits_when_the_wait_is_allowed() -> None:
    """An empty bucket is waited for (up to max_wait_s) and the seconds waited are returned."""
    time = FakeTime()
    limiter = RateLimiter(clock=time.clock, sleep=time.sleep)
    limit = RateLimit(capacity=2, refill_per_s=0.5)
    assert await limiter.acquire("tool:search", limit, 2) == 0.0
    assert await limiter.acquire("tool:search", limit, max_wait_s=5) == pytest.approx(2.0)
    assert time.sleeps == [pytest.approx(2.0)]


async def test_acquire_refuses_beyond_max_wait_saying_when_to_retry() -> None:
    """Past max_wait_s, RateLimitExceededError names the key and says when the tokens will be there."""
    time = FakeTime()
    limiter = RateLimiter(clock=time.clock, sleep=time.sleep)
    limit = RateLimit.per_minute(60, burst=3)
    await limiter.acquire("principal:ada", limit, 3)
    with pytest.raises(RateLimitExceededError, match=r"principal:ada.*1 s.*retry later") as excinfo:
        await limiter.acquire("principal:ada", limit, max_wait_s=0.5)
    assert excinfo.value.name == "principal:ada"
    assert excinfo.value.retry_in_s == pytest.approx(1.0)
    assert time.sleeps == []


async def test_cost_above_capacity_is_refused_at_once() -> None:
    """A cost larger than the bucket can ever hold raises at once, without waiting or taking tokens."""
    time = FakeTime()
    limiter = RateLimiter(clock=time.clock, sleep=time.sleep)
    limit = RateLimit.per_minute(1000)
    with pytest.raises(RateLimitExceededError, match="can never fit") as excinfo:
        await limiter.acquire("tpm:openai", limit, 1001, max_wait_s=3600)
    assert excinfo.value.retry_in_s is None
    assert time.sleeps == []
    assert await limiter.acquire("tpm:openai", limit, 1000) == 0.0


async def test_buckets_are_separate_per_key() -> None:
    """Draining one key's bucket leaves other keys untouched."""
    limiter = RateLimiter()
    limit = RateLimit(capacity=1, refill_per_s=0.001)
    await limiter.acquire("rpm:openai", limit)
    await limiter.acquire("rpm:anthropic", limit)
    with pytest.raises(RateLimitExceededError):
        await limiter.acquire("rpm:openai", limit)


def test_per_minute_and_validation() -> None:
    """per_minute refills n/60 per second with burst defaulting to n; non-positive values are refused."""
    assert RateLimit.per_minute(120) == RateLimit(capacity=120, refill_per_s=2)
    assert RateLimit.per_minute(120, burst=10) == RateLimit(capacity=10, refill_per_s=2)
    with pytest.raises(ConfigurationError, match="refill_per_s"):
        RateLimit(capacity=1, refill_per_s=0)
    with pytest.raises(ConfigurationError, match="capacity"):
        RateLimit(capacity=float("nan"), refill_per_s=1)


DRAIN = """
import asyncio, sys
import redis.asyncio
from tether.resilience.ratelimit import RateLimit, RateLimiter, RedisRateLimitStore

async def main():
    client = redis.asyncio.Redis.from_url(sys.argv[1])
    limiter = RateLimiter(RedisRateLimitStore(client, prefix=sys.argv[2]))
    for _ in range(3):
        await limiter.acquire("rpm:shared", RateLimit.per_minute(3))
    await client.aclose()

asyncio.run(main())
"""


async def test_redis_bucket_is_shared_across_processes(
    redis_client: redis.asyncio.Redis, redis_url: str, redis_prefix: str
) -> None:
    """A bucket drained by another OS process refuses this process's limiter (its own client)."""
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", DRAIN, redis_url, redis_prefix)
    assert await asyncio.wait_for(process.wait(), 10) == 0
    limiter = RateLimiter(RedisRateLimitStore(redis_client, prefix=redis_prefix))
    with pytest.raises(RateLimitExceededError) as excinfo:
        await limiter.acquire("rpm:shared", RateLimit.per_minute(3))
    assert excinfo.value.retry_in_s is not None
    assert 10 < excinfo.value.retry_in_s <= 20
    assert await redis_client.pttl(f"{redis_prefix}rpm:shared") > 0, "bucket keys must expire"
