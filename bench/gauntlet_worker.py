"""One worker process of the chaos gauntlet (`bench/gauntlet.py`): the demo's support desk, run until SIGTERM.

The parent starts several of these on one store and SIGKILLs them at random; each builds the same
Runtime as the parent (`gauntlet_runtime`): the support agent on the orders database, a gateway to the
two fake providers (primary, then backup) with retries and breakers, and a per-principal-day cost
limit. With `--redis`, breakers and budget counters live in Redis under `--prefix`, shared by every
worker; without it, breakers are per process and budget counters are the Runtime's default (in the
run store's file for SQLite).

    python bench/gauntlet_worker.py --db URL --orders PATH --primary URL --backup URL \
        --worker-id ID --cost-limit-usd X [--redis URL --prefix P] [--concurrency N] [--lease-s S]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from redis.asyncio import Redis

from tether.demo.desk import build_support_agent
from tether.demo.run import BACKUP, PRIMARY
from tether.gateway import Gateway, Price, PriceTable
from tether.gateway.cache import ExactCache, LayeredCache
from tether.models.openai import OpenAIModel
from tether.policy.budget_stores import BudgetBackend, RedisBudgetBackend
from tether.policy.limits import BudgetPolicy, Limits
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry, BreakerStore, RedisBreakerStore
from tether.resilience.failover import FailoverBreakerStore
from tether.resilience.retry import RetryPolicy
from tether.runtime import Runtime
from tether.runtime.guards import ToolGuards
from tether.runtime.runner import Worker

# The demo's breaker, with a cooldown long enough that a dead primary gets a handful of probes, not
# dozens: five failures within a minute open it; one probe at a time while half-open.
MODEL_BREAKER = BreakerPolicy(failure_threshold=5, window_s=60, cooldown_s=0.25)
# The policy service fails one call in four: trip its breaker on the error rate, as the demo does.
TOOL_BREAKER = BreakerPolicy(failure_threshold=1000, error_rate_threshold=0.75, min_calls=20, cooldown_s=0.2)


def budget_policy(cost_limit_usd: float) -> BudgetPolicy:
    """Only the principal's daily cost is bounded (the figure the gauntlet checks); runs keep the
    defaults, and tenants are unbounded so that their day never stops a principal first."""
    return BudgetPolicy(per_principal_day=Limits(cost_usd=cost_limit_usd), per_tenant_day=Limits())


def gauntlet_gateway(primary_url: str, backup_url: str, breakers: BreakerRegistry) -> Gateway:
    """`tether.demo.run.demo_gateway` with the breakers given (shared through Redis, or not)."""
    return Gateway(
        {"support": [PRIMARY, BACKUP]},
        models={
            PRIMARY: OpenAIModel("desk-primary", base_url=primary_url, api_key="gauntlet"),
            BACKUP: OpenAIModel("desk-backup", base_url=backup_url, api_key="gauntlet"),
        },
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.02, max_backoff_s=0.2, max_retry_after_s=1.0),
        breakers=breakers,
        prices=PriceTable({PRIMARY: Price(0.15, 0.60), BACKUP: Price(2.50, 10.0)}),
        cache=LayeredCache(ExactCache(), None),
    )


@contextlib.asynccontextmanager
async def gauntlet_runtime(
    db_url: str,
    *,
    orders_db: Path,
    primary_url: str,
    backup_url: str,
    cost_limit_usd: float,
    redis_url: str | None = None,
    prefix: str = "tether-gauntlet:",
    lease_s: float = 3.0,
    worker_id: str | None = None,
) -> AsyncIterator[Runtime]:
    """The Runtime every gauntlet process builds (the parent too, to enqueue and answer)."""
    client: Redis | None = None
    breaker_store: BreakerStore | None = None
    budget_backend: BudgetBackend | None = None
    if redis_url is not None:
        # As `tether.config.build_wiring` wires it: short timeouts, and this process's memory if
        # Redis stops answering.
        client = Redis.from_url(redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
        breaker_store = FailoverBreakerStore(RedisBreakerStore(client, prefix=f"{prefix}breaker:"))
        budget_backend = RedisBudgetBackend(client, prefix=f"{prefix}budget:")
    breakers = BreakerRegistry(MODEL_BREAKER, store=breaker_store)
    gateway = gauntlet_gateway(primary_url, backup_url, breakers)
    guards = ToolGuards(
        breakers=breakers, rate_limiter=gateway.rate_limiter, tool_breaker_policy=TOOL_BREAKER
    )
    try:
        async with Runtime(
            db_url,
            agents=[build_support_agent(orders_db, model="support")],
            gateway=gateway,
            guards=guards,
            budget_policy=budget_policy(cost_limit_usd),
            budget_backend=budget_backend,
            lease_s=lease_s,
            worker_id=worker_id,
        ) as runtime:
            yield runtime
    finally:
        await gateway.aclose()
        if client is not None:
            await client.aclose()


async def serve(args: argparse.Namespace) -> int:
    """Work until SIGTERM; return how many runs this worker finished (or handed back)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphaned = asyncio.create_task(watch_parent(args.parent_pid, stop))
    async with gauntlet_runtime(
        args.db,
        orders_db=Path(args.orders),
        primary_url=args.primary,
        backup_url=args.backup,
        cost_limit_usd=args.cost_limit_usd,
        redis_url=args.redis,
        prefix=args.prefix,
        lease_s=args.lease_s,
        worker_id=args.worker_id,
    ) as runtime:
        worker = Worker(runtime, concurrency=args.concurrency, poll_s=args.poll_s, drain_s=2.0)
        stats = await worker.run(stop=stop)
    orphaned.cancel()
    print(json.dumps({"worker": args.worker_id, **vars(stats)}), flush=True)
    return stats.finished


async def watch_parent(parent_pid: int | None, stop: asyncio.Event) -> None:
    """Stop when the gauntlet that started this worker is gone (killed itself): no orphan outlives it."""
    while parent_pid is not None and not stop.is_set():
        if os.getppid() != parent_pid:
            stop.set()
        await asyncio.sleep(0.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--db", required=True, help="the run store's URL")
    parser.add_argument("--orders", required=True, help="the orders database (a SQLite file)")
    parser.add_argument("--primary", required=True, help="base URL of the fake primary provider")
    parser.add_argument("--backup", required=True, help="base URL of the fake backup provider")
    parser.add_argument("--worker-id", required=True, help="the lease owner this worker claims as")
    parser.add_argument("--cost-limit-usd", type=float, required=True, help="per principal and day")
    parser.add_argument("--redis", default=None, help="share breakers and budget counters through Redis")
    parser.add_argument("--prefix", default="tether-gauntlet:", help="Redis key prefix of this gauntlet")
    parser.add_argument("--concurrency", type=int, default=8, help="runs driven at once (default 8)")
    parser.add_argument("--lease-s", type=float, default=3.0, help="lease length (default 3 s)")
    parser.add_argument("--parent-pid", type=int, default=None, help="stop when this process is gone")
    parser.add_argument("--poll-s", type=float, default=0.05, help="idle poll interval (default 0.05 s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
