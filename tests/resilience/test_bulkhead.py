"""Bulkheads: bounded concurrency, bounded waits, shared pools across processes, leases that lapse."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from tether.errors import BulkheadFullError, ConfigurationError
from tether.resilience.bulkhead import (
    Bulkhead,
    BulkheadRegistry,
    BulkheadStore,
    InMemoryBulkheadStore,
    RedisBulkheadStore,
)


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


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_prefix: str) -> BulkheadStore:
    if request.param == "memory":
        return InMemoryBulkheadStore()
    client = request.getfixturevalue("redis_client")
    return RedisBulkheadStore(client, prefix=redis_prefix)


async def hold(bulkhead: Bulkhead, release: asyncio.Event) -> None:
    async with bulkhead.slot():
        await release.wait()


async def test_at_most_n_holders_at_once(store: BulkheadStore) -> None:
    """Racing tasks never exceed max_concurrent holders, and all of them get their turn."""
    bulkhead = Bulkhead("tools:db", 3, store=store, max_wait_s=5, poll_s=0.001)
    active, peak, done = 0, 0, 0
    filled = asyncio.Event()  # the first holders stay until the pool has filled, however slow the host

    async def work() -> None:
        nonlocal active, peak, done
        async with bulkhead.slot():
            active += 1
            peak = max(peak, active)
            if active == 3:
                filled.set()
            await asyncio.wait_for(filled.wait(), 5)
            await asyncio.sleep(0.005)
            active -= 1
            done += 1

    await asyncio.gather(*(work() for _ in range(12)))
    assert (peak, done) == (3, 12)


async def test_waits_for_a_slot_up_to_max_wait(store: BulkheadStore) -> None:
    """A full pool is waited on; the waiter enters once a holder leaves within max_wait_s."""
    bulkhead = Bulkhead("tools:search", 1, store=store, max_wait_s=2, poll_s=0.005)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(bulkhead, release))
    await asyncio.sleep(0.01)
    asyncio.get_running_loop().call_later(0.05, release.set)
    started = time.monotonic()
    async with bulkhead.slot():
        assert time.monotonic() - started >= 0.04
    await holder


async def test_full_after_max_wait_raises_bulkhead_full(store: BulkheadStore) -> None:
    """Still full after max_wait_s: BulkheadFullError naming the pool, after waiting that long."""
    bulkhead = Bulkhead("tools:code", 1, store=store, max_wait_s=0.1, poll_s=0.01)
    release = asyncio.Event()
    holder = asyncio.create_task(hold(bulkhead, release))
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(BulkheadFullError, match=r"'tools:code' is full.*1 slots") as excinfo:
        async with bulkhead.slot():
            pytest.fail("entered a full pool")
    assert time.monotonic() - started >= 0.09
    assert (excinfo.value.name, excinfo.value.retry_in_s) == ("tools:code", None)
    release.set()
    await holder


async def test_slot_is_freed_when_the_body_raises_or_is_cancelled(store: BulkheadStore) -> None:
    """An error or a cancellation inside the body gives the slot back at once."""
    bulkhead = Bulkhead("tools:mail", 1, store=store)
    with pytest.raises(ZeroDivisionError):
        async with bulkhead.slot():
            1 / 0  # noqa: B018
    task = asyncio.create_task(hold(bulkhead, asyncio.Event()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with bulkhead.slot():
        pass


async def test_expired_lease_of_a_crashed_holder_no_longer_blocks(store: BulkheadStore) -> None:
    """A holder that entered with a short lease and never left stops counting once its lease lapses."""
    assert await store.try_enter("tools:api", 1, "crashed-worker", time.time(), 0.1)
    bulkhead = Bulkhead("tools:api", 1, store=store, max_wait_s=0)
    with pytest.raises(BulkheadFullError):
        async with bulkhead.slot():
            pass
    # Less than the key's own TTL (lease + 1 s): the lapsed lease, not key expiry, must free the slot.
    patient = Bulkhead("tools:api", 1, store=store, max_wait_s=0.5, poll_s=0.01)
    started = time.monotonic()
    async with patient.slot():
        assert time.monotonic() - started >= 0.05


async def test_store_renews_a_holders_own_lease(store: BulkheadStore) -> None:
    """Entering again as the same holder renews its lease instead of needing a second slot."""
    assert await store.try_enter("pool", 1, "a", 100.0, 10.0)
    assert await store.try_enter("pool", 1, "a", 105.0, 10.0)
    assert not await store.try_enter("pool", 1, "b", 112.0, 10.0)
    assert await store.try_enter("pool", 1, "b", 115.0, 10.0)
    await store.leave("pool", "b")
    await store.leave("pool", "b")
    assert await store.try_enter("pool", 1, "c", 115.0, 10.0)


HOLD = """
import asyncio, sys
import redis.asyncio
from tether.resilience.bulkhead import Bulkhead, RedisBulkheadStore

async def main():
    client = redis.asyncio.Redis.from_url(sys.argv[1])
    bulkhead = Bulkhead("tools:shared", 2, store=RedisBulkheadStore(client, prefix=sys.argv[2]))
    async with bulkhead.slot(), bulkhead.slot():
        print("held", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await client.aclose()

asyncio.run(main())
"""


async def test_redis_pool_is_shared_across_processes(
    redis_client: redis.asyncio.Redis, redis_url: str, redis_prefix: str
) -> None:
    """Slots held by another OS process count against this process's bulkhead (its own client)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        HOLD,
        redis_url,
        redis_prefix,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert await asyncio.wait_for(process.stdout.readline(), 10) == b"held\n"
        bulkhead = Bulkhead("tools:shared", 2, store=RedisBulkheadStore(redis_client, prefix=redis_prefix))
        with pytest.raises(BulkheadFullError):
            async with bulkhead.slot():
                pass
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        assert await asyncio.wait_for(process.wait(), 10) == 0
        async with bulkhead.slot(), bulkhead.slot():
            assert await redis_client.zcard(f"{redis_prefix}tools:shared") == 2
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert await redis_client.exists(f"{redis_prefix}tools:shared") == 0


def test_registry_gives_one_bulkhead_per_name() -> None:
    """get returns the same object per name, refuses a second size, and registries do not share."""
    registry = BulkheadRegistry()
    assert registry.get("tools:db", 4) is registry.get("tools:db", 4)
    assert registry.get("tools:db", 4) is not registry.get("tools:search", 4)
    assert BulkheadRegistry().get("tools:db", 4) is not registry.get("tools:db", 4)
    with pytest.raises(ConfigurationError, match="max_concurrent=4"):
        registry.get("tools:db", 8)


async def test_registry_bulkheads_share_its_store() -> None:
    """Two registries on one store enforce one pool; on separate stores they do not."""
    shared = InMemoryBulkheadStore()
    first, second = BulkheadRegistry(shared), BulkheadRegistry(shared)
    async with first.get("llm:openai", 1).slot():
        with pytest.raises(BulkheadFullError):
            async with second.get("llm:openai", 1).slot():
                pass
        async with BulkheadRegistry().get("llm:openai", 1).slot():
            pass


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"lease_s": 0}, "lease_s"),
        ({"max_wait_s": -1}, "max_wait_s"),
    ],
)
def test_bulkhead_rejects_bad_settings(kwargs: dict[str, float], field: str) -> None:
    """Invalid sizes and durations raise ConfigurationError naming the setting."""
    settings: dict[str, float] = {"max_concurrent": 1} | kwargs
    with pytest.raises(ConfigurationError, match=field):
        Bulkhead("pool", **settings)  # type: ignore[arg-type]
