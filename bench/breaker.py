"""What `CircuitBreaker.allow()` costs: failing fast while open, and passing while closed, memory vs Redis.

Each contender is one breaker (the open ones opened by five failures, with an hour's cooldown).
Rounds run the contenders round-robin, the starting one rotating, each timing `--calls` single
`allow()` calls with `perf_counter_ns`; percentiles are over every timed call.

    .venv/bin/python bench/breaker.py [--rounds N] [--calls N] [--redis-url URL] [--json]

Redis keys live under a random `tether-bench:` prefix and are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import secrets
import shlex
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis

from tether.errors import CircuitOpenError
from tether.resilience import (
    BreakerPolicy,
    BreakerStore,
    CircuitBreaker,
    InMemoryBreakerStore,
    RedisBreakerStore,
)

POLICY = BreakerPolicy(cooldown_s=3600.0)


async def allow_or_refusal(breaker: CircuitBreaker) -> None:
    with contextlib.suppress(CircuitOpenError):  # the refusal is what is being timed
        await breaker.allow()


async def contender(store: BreakerStore, name: str, *, open_: bool) -> Callable[[], Awaitable[None]]:
    breaker = CircuitBreaker(name, POLICY, store=store)
    await breaker.reset()
    for _ in range(POLICY.failure_threshold if open_ else 0):
        await breaker.record_failure()
    expected = "open" if open_ else "closed"
    if await breaker.state() != expected:
        raise RuntimeError(f"{name}: expected {expected}, got {await breaker.state()}")
    return lambda: allow_or_refusal(breaker)


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


async def run(args: argparse.Namespace) -> dict[str, object]:
    client = aioredis.Redis.from_url(args.redis_url)
    prefix = f"tether-bench:{secrets.token_hex(4)}:"
    try:
        memory, shared = InMemoryBreakerStore(), RedisBreakerStore(client, prefix=prefix)
        contenders = {
            "memory / open": await contender(memory, "a", open_=True),
            "redis / open": await contender(shared, "a", open_=True),
            "memory / closed": await contender(memory, "b", open_=False),
            "redis / closed": await contender(shared, "b", open_=False),
        }
        samples: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for name in names:  # warm-up: script loaded, connection open, code paths hot
            for _ in range(200):
                await contenders[name]()
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                call, out = contenders[name], samples[name]
                gc.collect()
                for _ in range(args.calls):
                    start = time.perf_counter_ns()
                    await call()
                    out.append((time.perf_counter_ns() - start) / 1_000)
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    return {
        "command": shlex.join(sys.orig_argv),
        "python": platform.python_version(),
        "machine": f"{platform.system()} {platform.machine()}",
        "calls_per_contender": args.rounds * args.calls,
        "results_us": {
            name: {"p50": percentile(s, 50), "p99": percentile(s, 99), "mean": statistics.fmean(s)}
            for name, s in samples.items()
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20, help="round-robin rounds (default 20)")
    parser.add_argument("--calls", type=int, default=500, help="timed allow() calls per contender per round")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="Redis to use (keys are cleaned up)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be >= 1")
    summary = asyncio.run(run(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"command: {summary['command']}")
    print(
        f"python {summary['python']} on {summary['machine']}; {summary['calls_per_contender']} calls each\n"
    )
    print(f"{'breaker / state':<18}{'p50 µs':>10}{'p99 µs':>10}{'mean µs':>10}")
    results = summary["results_us"]
    assert isinstance(results, dict)
    for name, row in results.items():
        print(f"{name:<18}{row['p50']:>10.1f}{row['p99']:>10.1f}{row['mean']:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
