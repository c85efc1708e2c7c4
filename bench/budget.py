"""What a budget check costs per model or tool call: `Budget.reserve` + `settle` on each backend.

Every contender does the same agent-shaped work: runs of 9 calls (model, tool, model, …, model: 5 model
calls and 4 tool calls), each call one reserve + settle pair with the default `BudgetPolicy()` limits, on
a `Scope` with run, session, principal and tenant set (4 levels; 8 checks per model call, 4 per tool
call). Rounds run the contenders round-robin, the starting one rotating, each doing `--block-runs` runs;
wall time (`perf_counter_ns`) and this process's CPU (`process_time_ns`) are taken per pair.

The default `Runtime` on SQLite writes the budget in the transaction that appends the call's event
(`reserve_joined`/`settle_joined`, one commit instead of two): that contender is measured as event
appends with the budget joined, against the same appends without it.

    .venv/bin/python bench/budget.py [--rounds N] [--block-runs N] [--redis-url URL]
        [--postgres-url URL] [--json]

The Redis contender is skipped, with a note, when Redis does not answer; its keys live under a random
`tether-bench:` prefix and are deleted at the end. The PostgreSQL contender runs when `--postgres-url`
(default: $TETHER_TEST_POSTGRES_URL) is given and answers; its tables live in a random `tether_bench_`
schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import json
import os
import platform
import secrets
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.policy.budget_postgres import PostgresBudgetBackend
from tether.policy.budget_stores import InMemoryBudgetBackend, RedisBudgetBackend, SqliteBudgetBackend
from tether.policy.limits import Budget, BudgetPolicy, Crossing, Reservation, Scope
from tether.store import SqliteRunStore
from tether.store.base import EventDraft, NewRun
from tether.types import EventKind

MODEL_CALLS, TOOL_CALLS = 5, 4  # per run, alternating, model first: the shape of a short agent run
CALLS_PER_RUN = MODEL_CALLS + TOOL_CALLS
# A model call holds its prompt + the default 500 output tokens and the last turn's cost, and settles
# what it used; a (read) tool call holds and settles one tool call.
MODEL_HOLD = {"tokens": 1_000.0, "cost_usd": 0.002}
MODEL_USED = {"tokens": 620.0, "cost_usd": 0.0012}
TOOL_HOLD = {"tool_calls": 1.0}
RUNS_PER_SESSION, RUNS_PER_PRINCIPAL, RUNS_PER_TENANT = 3, 10, 100  # all well inside the default limits
OWNER = "bench-worker"

Call = Callable[[int, int], Awaitable[None]]  # (run index, call index in the run)


@dataclass
class Contender:
    name: str
    what: str
    budget: Budget | None = None
    call: Call | None = None
    start_run: Callable[[int], Awaitable[None]] | None = None  # untimed set-up of a run (store rows)
    skipped: str | None = None
    runs: int = 0
    wall_us: list[float] = field(default_factory=list)
    cpu_us_per_call: list[float] = field(default_factory=list)
    namespace: str = field(default_factory=lambda: secrets.token_hex(3))

    def scope(self, run: int) -> Scope:
        ns = f"{self.name}-{self.namespace}"
        return Scope(
            run_id=f"{ns}-run{run}",
            session_id=f"{ns}-s{run // RUNS_PER_SESSION}",
            principal=f"{ns}-p{run // RUNS_PER_PRINCIPAL}",
            tenant=f"{ns}-t{run // RUNS_PER_TENANT}",
        )


def is_model_call(index: int) -> bool:
    return index % 2 == 0


async def noop() -> None:
    return None


def reserving(contender: Contender, budget: Budget) -> Call:
    """The plain API: `await budget.reserve(scope, hold)`, then `await budget.settle(reservation, used)`."""

    async def call(run: int, index: int) -> None:
        model = is_model_call(index)
        reservation = await budget.reserve(contender.scope(run), MODEL_HOLD if model else TOOL_HOLD)
        await budget.settle(reservation, MODEL_USED if model else TOOL_HOLD)

    return call


class EventAppender:
    """Appends the events a call records to a leased run, with or without its budget joined in.

    As the loop does: a model call's reservation is written with its `model.request` event and its
    settlement with `model.response`; a tool call reserves in its own transaction (all of a turn's
    calls are reserved before any starts) and settles with its `tool.result` event.
    """

    def __init__(self, contender: Contender, store: SqliteRunStore, budget: Budget | None) -> None:
        self.contender, self.store, self.budget = contender, store, budget
        self.seq = 0

    async def start_run(self, run: int) -> None:
        scope = self.contender.scope(run)
        new = NewRun(
            id=scope.run_id,
            agent_name="bench",
            input="bench",
            principal=scope.principal,
            session_id=scope.session_id,
            tenant=scope.tenant,
        )
        await self.store.create_run(new)
        claimed = await self.store.claim_run(OWNER, 3600.0, run_id=scope.run_id)
        if claimed is None:
            raise RuntimeError(f"could not lease {scope.run_id}")
        self.seq = claimed.event_count

    async def append(self, run_id: str, draft: EventDraft, within: Callable[[], None] | None) -> None:
        await self.store.append_events(run_id, OWNER, self.seq, [draft], within=within)
        self.seq += 1

    async def call(self, run: int, index: int) -> None:
        budget, scope = self.budget, self.contender.scope(run)
        turn = index // 2
        if is_model_call(index):
            held: list[Reservation] = []
            crossings: list[Crossing] = []
            request = EventDraft(EventKind.MODEL_REQUEST, {"turn": turn, "model": "bench", "messages": index})
            response = EventDraft(
                EventKind.MODEL_RESPONSE,
                {"turn": turn, "content": "", "usage": {"input_tokens": 120, "output_tokens": 500}},
            )
            if budget is None:
                await self.append(scope.run_id, request, None)
                await self.append(scope.run_id, response, None)
                return
            await self.append(
                scope.run_id, request, lambda: held.append(budget.reserve_joined(scope, MODEL_HOLD))
            )
            await self.append(
                scope.run_id, response, lambda: crossings.extend(budget.settle_joined(held[0], MODEL_USED))
            )
            return
        result = EventDraft(
            EventKind.TOOL_RESULT,
            {
                "turn": turn,
                "index": 0,
                "call_id": f"call_{turn}",
                "tool": "lookup",
                "ok": True,
                "content": "x",
            },
        )
        if budget is None:
            await self.append(scope.run_id, result, None)
            return
        reservation = await budget.reserve(scope, TOOL_HOLD)
        settled: list[Crossing] = []
        await self.append(
            scope.run_id, result, lambda: settled.extend(budget.settle_joined(reservation, TOOL_HOLD))
        )


@contextlib.asynccontextmanager
async def open_contenders(
    workdir: Path, redis_url: str, postgres_url: str | None
) -> AsyncIterator[list[Contender]]:
    policy = BudgetPolicy()
    async with contextlib.AsyncExitStack() as stack:
        contenders: list[Contender] = []

        floor = Contender("none", "no budget: two awaits of a no-op coroutine (the floor)")

        async def floor_call(run: int, index: int) -> None:
            await noop()
            await noop()

        floor.call = floor_call
        contenders.append(floor)

        memory = Contender("memory", "InMemoryBudgetBackend")
        memory.budget = Budget(policy, InMemoryBudgetBackend())
        memory.call = reserving(memory, memory.budget)
        contenders.append(memory)

        own = SqliteBudgetBackend(workdir / "budget.db")
        stack.push_async_callback(own.close)
        sqlite = Contender("sqlite", "SqliteBudgetBackend on its own file and connection (WAL, NORMAL)")
        sqlite.budget = Budget(policy, own)
        sqlite.call = reserving(sqlite, sqlite.budget)
        contenders.append(sqlite)

        # As Runtime builds it: the counters in the run store's file, on the store's connection.
        store = SqliteRunStore(workdir / "runs.db")
        stack.push_async_callback(store.close)
        shared_backend = SqliteBudgetBackend(store.path, connection=store.connection)
        shared = Contender(
            "sqlite-shared",
            "the same on a SqliteRunStore's connection, reserve/settle in their own transactions",
        )
        shared.budget = Budget(policy, shared_backend)
        if not shared.budget.joins(store.connection):
            raise RuntimeError("the shared backend does not join the store's connection")
        shared.call = reserving(shared, shared.budget)
        contenders.append(shared)

        events = Contender("events", "SqliteRunStore.append_events of the calls' events, no budget")
        appender = EventAppender(events, store, None)
        events.call, events.start_run = appender.call, appender.start_run
        contenders.append(events)

        joined = Contender(
            "events+joined",
            "the same appends with the budget joined in their transactions (Runtime's default, as the loop)",
        )
        joined.budget = shared.budget
        joined_appender = EventAppender(joined, store, joined.budget)
        joined.call, joined.start_run = joined_appender.call, joined_appender.start_run
        contenders.append(joined)

        redis_contender = Contender("redis", f"RedisBudgetBackend on {redis_url} (one Lua script per step)")
        contenders.append(redis_contender)
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            redis_contender.skipped = f"redis is not installed ({exc})"
        else:
            client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
            stack.push_async_callback(client.aclose)
            try:
                await client.ping()  # type: ignore[misc]  # redis-py types it for both clients
            except Exception as exc:
                redis_contender.skipped = f"Redis unreachable at {redis_url} ({type(exc).__name__}: {exc})"
            else:
                prefix = f"tether-bench:{secrets.token_hex(4)}:"
                stack.push_async_callback(delete_keys, client, prefix)
                redis_contender.budget = Budget(policy, RedisBudgetBackend(client, prefix=prefix))
                redis_contender.call = reserving(redis_contender, redis_contender.budget)

        postgres_contender = Contender(
            "postgres", "PostgresBudgetBackend (row locks, pipelined: two round trips per step)"
        )
        contenders.append(postgres_contender)
        if postgres_url is None:
            postgres_contender.skipped = "no --postgres-url (nor TETHER_TEST_POSTGRES_URL)"
        else:
            schema = f"tether_bench_{secrets.token_hex(4)}"
            postgres = PostgresBudgetBackend(postgres_url, schema=schema, connect_timeout_s=2)
            try:
                await postgres.usage("probe")  # connects and creates the tables
            except Exception as exc:
                await postgres.close()
                postgres_contender.skipped = f"PostgreSQL unusable ({type(exc).__name__}: {exc})"
            else:
                stack.push_async_callback(drop_schema, postgres_url, schema)
                stack.push_async_callback(postgres.close)
                postgres_contender.what = f"PostgresBudgetBackend on {postgres.where}, schema {schema}"
                postgres_contender.budget = Budget(policy, postgres)
                postgres_contender.call = reserving(postgres_contender, postgres_contender.budget)
        yield contenders


async def drop_schema(url: str, schema: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        await db.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


async def delete_keys(client: Any, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


async def block(contender: Contender, runs: int, *, record: bool) -> None:
    """`runs` runs of CALLS_PER_RUN calls; wall and CPU per call, the runs' set-up not counted."""
    call = contender.call
    assert call is not None
    gc.collect()  # garbage left by the previous contender is not charged to this one
    samples: list[float] = []
    cpu_ns = 0
    for _ in range(runs):
        run = contender.runs
        contender.runs += 1
        if contender.start_run is not None:
            await contender.start_run(run)
        for index in range(CALLS_PER_RUN):
            cpu0, wall0 = time.process_time_ns(), time.perf_counter_ns()
            await call(run, index)
            wall, cpu = time.perf_counter_ns() - wall0, time.process_time_ns() - cpu0
            samples.append(wall / 1000)
            cpu_ns += cpu
    if record:
        contender.wall_us.extend(samples)
        contender.cpu_us_per_call.append(cpu_ns / 1000 / (runs * CALLS_PER_RUN))


async def verify(contender: Contender) -> str | None:
    """Every run's counters hold exactly what it settled, nothing is left reserved, and every tenant's
    day holds the sum of its runs. Returns what is wrong, or None."""
    budget = contender.budget
    if budget is None:
        return None
    want_tokens = MODEL_CALLS * MODEL_USED["tokens"]
    tenants: dict[str, int] = {}
    for run in range(contender.runs):
        scope = contender.scope(run)
        tenants[scope.tenant or ""] = tenants.get(scope.tenant or "", 0) + 1
        report = await budget.usage(scope)
        for level, counters in report.items():
            for name, usage in counters.items():
                if usage.reserved:
                    return f"{scope.run_id}: {level} {name} still has {usage.reserved} reserved"
        own = report["run"]
        if own["tokens"].used != want_tokens or own["tool_calls"].used != TOOL_CALLS:
            return (
                f"{scope.run_id}: run counters hold {own['tokens'].used} tokens and "
                f"{own['tool_calls'].used} tool calls, not {want_tokens} and {TOOL_CALLS}"
            )
        if run % RUNS_PER_TENANT == RUNS_PER_TENANT - 1 or run == contender.runs - 1:
            day = report["tenant-day"]
            runs = tenants[scope.tenant or ""]
            if day["tokens"].used != runs * want_tokens or day["tool_calls"].used != runs * TOOL_CALLS:
                return f"{scope.tenant}: tenant-day counters do not sum its {runs} runs"
    return None


async def measure(workdir: Path, args: argparse.Namespace) -> tuple[list[Contender], dict[str, str | None]]:
    async with open_contenders(workdir, args.redis_url, args.postgres_url) as contenders:
        active = [c for c in contenders if c.skipped is None]
        for _ in range(args.warmup):  # pages cached, Lua scripts loaded, code hot
            for contender in active:
                await block(contender, args.block_runs, record=False)
        for round_index in range(args.rounds):
            shift = round_index % len(active)  # rotate who goes first
            for contender in active[shift:] + active[:shift]:
                await block(contender, args.block_runs, record=True)
        problems = {c.name: await verify(c) for c in active}
    bad = {name: problem for name, problem in problems.items() if problem}
    if bad:
        raise RuntimeError("counters are wrong: " + "; ".join(f"{n}: {p}" for n, p in bad.items()))
    return contenders, problems


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


DIFFERENCES = (
    ("memory", "none"),
    ("sqlite", "none"),
    ("sqlite-shared", "none"),
    ("events+joined", "events"),
    ("redis", "none"),
    ("postgres", "none"),
)


def describe(policy: BudgetPolicy) -> str:
    levels = []
    for name in ("per_run", "per_session", "per_principal_day", "per_tenant_day"):
        limits = getattr(policy, name)
        levels.append(
            f"{name} {limits.tokens:,.0f} tokens/${limits.cost_usd:g}/{limits.tool_calls:g} tool calls/"
            f"{limits.mutations:g} mutations"
        )
    return "BudgetPolicy() defaults: " + ", ".join(levels) + f"; warn at {policy.warn_at:g}"


def summarise(contenders: list[Contender], args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, dict[str, Any]] = {
        c.name: {
            "what": c.what,
            "p50_us": round(percentile(c.wall_us, 50), 1),
            "p99_us": round(percentile(c.wall_us, 99), 1),
            "mean_us": round(statistics.fmean(c.wall_us), 1),
            "over_5ms_percent": round(100 * sum(w > 5_000 for w in c.wall_us) / len(c.wall_us), 2),
            "cpu_us_per_call": round(statistics.median(c.cpu_us_per_call), 1),
            "calls": len(c.wall_us),
        }
        for c in contenders
        if c.skipped is None
    }
    differences = {
        f"{name} - {base}": {
            "p50_us": round(results[name]["p50_us"] - results[base]["p50_us"], 1),
            "p99_us": round(results[name]["p99_us"] - results[base]["p99_us"], 1),
            "cpu_us_per_call": round(results[name]["cpu_us_per_call"] - results[base]["cpu_us_per_call"], 1),
        }
        for name, base in DIFFERENCES
        if name in results and base in results
    }
    return {
        "command": shlex.join(sys.orig_argv),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "versions": {p: version(p) for p in ("tether", "redis", "psycopg")},
        "sqlite": sqlite3.sqlite_version,
        "rounds": args.rounds,
        "runs_per_block": args.block_runs,
        "calls_per_block": args.block_runs * CALLS_PER_RUN,
        "warmup_rounds": args.warmup,
        "policy": describe(BudgetPolicy()),
        "workload": f"runs of {MODEL_CALLS} model calls (hold {MODEL_HOLD}, settle {MODEL_USED}) and "
        f"{TOOL_CALLS} tool calls (hold and settle {TOOL_HOLD}), alternating; a new session every "
        f"{RUNS_PER_SESSION} runs, principal every {RUNS_PER_PRINCIPAL}, tenant every {RUNS_PER_TENANT}",
        "results": results,
        "skipped": {c.name: c.skipped for c in contenders if c.skipped is not None},
        "differences": differences,
        "verified": "after measuring, every run's counters held exactly its settled usage "
        f"({MODEL_CALLS * MODEL_USED['tokens']:g} tokens, {TOOL_CALLS} tool calls), nothing was left "
        "reserved at any level, and each tenant's day held the sum of its runs",
    }


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"budget check per model/tool call (reserve + settle): {summary['rounds']} interleaved rounds of "
        f"{summary['calls_per_block']} calls ({summary['runs_per_block']} runs) per contender, after "
        f"{summary['warmup_rounds']} warm-up round(s)"
    )
    print(f"python {summary['python']} on {summary['platform']}; SQLite {summary['sqlite']}")
    print("versions: " + ", ".join(f"{p} {v}" for p, v in summary["versions"].items()))
    print(f"command: {summary['command']}")
    print(f"policy: {summary['policy']}")
    print(f"workload: {summary['workload']}")
    print()
    header = (
        f"{'contender':<15}{'p50 µs':>9}{'p99 µs':>9}{'mean µs':>9}{'> 5 ms':>8}{'CPU µs/call':>13}  what"
    )
    print(header)
    print("-" * (len(header) + 50))
    for name, r in summary["results"].items():
        print(
            f"{name:<15}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}{r['mean_us']:>9.1f}"
            f"{r['over_5ms_percent']:>7.2f}%{r['cpu_us_per_call']:>13.1f}  {r['what']}"
        )
    for name, reason in summary["skipped"].items():
        print(f"{name:<15}skipped: {reason}")
    print(
        "(wall: percentiles over all timed calls, '> 5 ms' the share of calls slower than that; CPU: this "
        "process, median over rounds of block CPU / calls; the servers' CPU (Redis, PostgreSQL) is not "
        "counted)"
    )
    print()
    print("the budget's cost per call (difference of p50s, of p99s, of CPU medians):")
    for name, d in summary["differences"].items():
        print(
            f"  {name:<24} p50 {d['p50_us']:>+8.1f} µs   p99 {d['p99_us']:>+8.1f} µs   "
            f"CPU {d['cpu_us_per_call']:>+8.1f} µs/call"
        )
    print()
    print(f"verified: {summary['verified']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument(
        "--block-runs",
        type=int,
        default=20,
        help=f"runs of {CALLS_PER_RUN} calls per contender per round (default 20)",
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis for RedisBudgetBackend (keys cleaned up)",
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("TETHER_TEST_POSTGRES_URL"),
        help="PostgreSQL for PostgresBudgetBackend (default $TETHER_TEST_POSTGRES_URL; in a random schema, "
        "dropped at the end)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.rounds < 1 or args.block_runs < 1 or args.warmup < 0:
        parser.error("--rounds and --block-runs must be >= 1, --warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        contenders, _ = asyncio.run(measure(Path(tmp), args))
    summary = summarise(contenders, args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
