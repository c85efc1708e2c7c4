"""`tether demo`: support runs through the gateway to flaky fake providers, with a summary of what held."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tether.demo.desk import build_support_agent, count_refunds, demo_inputs, seed_orders
from tether.demo.providers import fake_providers
from tether.gateway import Gateway, Price, PriceTable
from tether.gateway.cache import ExactCache, LayeredCache
from tether.models.openai import OpenAIModel
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry
from tether.resilience.retry import RetryPolicy
from tether.runtime import Runtime
from tether.runtime.guards import ToolGuards
from tether.store import store_from_url
from tether.store.sqlite import SqliteRunStore
from tether.types import Run, RunStatus

PRIMARY, BACKUP = "openai:desk-primary", "openai:desk-backup"
LABELS = {
    "runs": "runs",
    "succeeded": "succeeded",
    "failed": "failed",
    "waiting_human": "waiting for a person",
    "awaiting_approval": "  of which refunds over $120 awaiting approval",
    "lost": "lost (must be 0)",
    "refunds_issued": "refunds issued",
    "duplicate_refunds": "duplicate refunds (must be 0)",
    "model_retries": "model calls retried (5xx, 429 with Retry-After)",
    "fallbacks": "turns served by the backup model after the primary failed",
    "breaker_opened": "times the primary's circuit breaker opened",
    "breaker_closed": "times a half-open probe found it healthy again",
    "primary_requests": "requests that reached the primary",
    "backup_requests": "requests that reached the backup",
    "cache_hits": "answers served from the cache (no model call)",
    "tool_cache_hits": "tool results served from the cache (no tool call)",
    "tool_retries": "flaky tool calls retried",
    "tool_failures_recovered": "tool failures the agent worked around",
    "gate_transfers": "  of which handed to a person at the user's request (gate)",
    "gate_confirms": "  of which answers the gate asked the user to confirm",
    "budget_warnings": "budget warnings (80% of a limit)",
    "guardrail_verdicts": "guardrail verdicts (injection, size)",
    "dead_lettered": "dead-lettered runs",
    "model_steps": "model steps",
    "cost_usd": "cost (USD, demo prices)",
    "elapsed_s": "elapsed seconds",
}


def demo_gateway(primary_url: str, backup_url: str) -> Gateway:
    """The desk's route: a cheap primary, an expensive backup; quick retries and a short cooldown."""
    return Gateway(
        {"support": [PRIMARY, BACKUP]},
        models={
            PRIMARY: OpenAIModel("desk-primary", base_url=primary_url, api_key="demo"),
            BACKUP: OpenAIModel("desk-backup", base_url=backup_url, api_key="demo"),
        },
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.02, max_backoff_s=0.2, max_retry_after_s=1.0),
        breakers=BreakerRegistry(BreakerPolicy(failure_threshold=5, window_s=60, cooldown_s=0.15)),
        prices=PriceTable({PRIMARY: Price(0.15, 0.60), BACKUP: Price(2.50, 10.0)}),
        cache=LayeredCache(ExactCache(), None),
    )


async def run_demo(
    db_url: str,
    runs: int,
    concurrency: int,
    *,
    quiet: bool = False,
    serve: Callable[[Runtime], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run `runs` support requests on the store at `db_url`; print progress and a summary table. With
    `serve`, hand it the live runtime afterwards (fake providers still up, approvals still waiting)."""
    store = store_from_url(db_url)
    base = Path(store.path).parent if isinstance(store, SqliteRunStore) else Path.cwd()
    orders_db = base / "tether-demo-orders.db"
    seed_orders(orders_db)
    console = Console(stderr=True, highlight=False, quiet=quiet)
    started = time.perf_counter()
    with fake_providers() as providers:
        gateway = demo_gateway(providers.primary.url, providers.backup.url)
        agent = build_support_agent(orders_db, model="support")
        # The policy service fails one call in four: trip its breaker on the error rate, not on a count.
        guards = ToolGuards(
            breakers=gateway.breakers,
            rate_limiter=gateway.rate_limiter,
            tool_breaker_policy=BreakerPolicy(
                failure_threshold=1000, error_rate_threshold=0.75, min_calls=20, cooldown_s=0.2
            ),
        )
        async with Runtime(store, agents=[agent], gateway=gateway, guards=guards) as runtime:
            inputs = demo_inputs(runs)
            run_ids = [
                (await runtime.start(agent, text, principal=f"cust-{n % 17}")).id
                for n, text in enumerate(inputs)
            ]
            limit = asyncio.Semaphore(concurrency)
            columns = (TextColumn("support desk"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as progress:
                task = progress.add_task("runs", total=len(run_ids))

                async def drive(run_id: str) -> None:
                    async with limit:
                        await runtime.execute(run_id)
                    progress.advance(task)

                await asyncio.gather(*(drive(run_id) for run_id in run_ids))
            final = [await runtime.store.get_run(run_id) for run_id in run_ids]
            wanted = set(run_ids)
            approvals = sum(1 for q in await runtime.inbox() if q.reason == "approval" and q.run_id in wanted)
            kinds: Counter[str] = Counter()
            recovered = closed = tool_hits = transfers = confirms = 0
            for run in final:
                for event in await runtime.events(run.id):
                    kinds[event.kind] += 1
                    recovered += event.kind == "tool.result" and event.data.get("error") == "failed"
                    closed += event.kind == "breaker.changed" and event.data.get("to") == "closed"
                    tool_hits += event.kind == "cache.hit" and event.data.get("layer") == "tool"
                    if event.kind == "gate.decision" and run.status == RunStatus.WAITING_HUMAN:
                        transfers += event.data.get("action") == "transfer"
                        confirms += event.data.get("action") == "confirm"
            stats = (dict(providers.primary.stats), dict(providers.backup.stats))
            summary = _summary(
                final,
                kinds,
                stats=stats,
                orders_db=orders_db,
                run_ids=run_ids,
                started=started,
                db_url=db_url,
            )
            summary.update(
                tool_failures_recovered=recovered,
                breaker_closed=closed,
                tool_cache_hits=tool_hits,
                cache_hits=kinds["cache.hit"] - tool_hits,
                gate_transfers=transfers,
                gate_confirms=confirms,
                awaiting_approval=approvals,
            )
            _print_summary(console, summary, db_url)
            if serve is not None:
                await serve(runtime)
            await gateway.aclose()
    await store.close()
    return summary


def _summary(
    final: list[Run],
    kinds: Counter[str],
    *,
    stats: tuple[dict[str, Any], dict[str, Any]],
    orders_db: Path,
    run_ids: list[str],
    started: float,
    db_url: str,
) -> dict[str, Any]:
    by_status = Counter(run.status for run in final)
    refunds, duplicates = count_refunds(orders_db, run_ids)
    return {
        "runs": len(final),
        "succeeded": by_status[RunStatus.SUCCEEDED],
        "failed": by_status[RunStatus.FAILED],
        "waiting_human": by_status[RunStatus.WAITING_HUMAN],
        "lost": sum(1 for r in final if not r.status.is_terminal and r.status != RunStatus.WAITING_HUMAN),
        "refunds_issued": refunds,
        "duplicate_refunds": duplicates,
        "model_retries": kinds["model.retry"],
        "fallbacks": kinds["fallback.used"],
        "breaker_opened": kinds["breaker.opened"],
        "primary_requests": stats[0]["requests"],
        "backup_requests": stats[1]["requests"],
        "tool_retries": kinds["tool.retry"],
        "budget_warnings": kinds["budget.warning"],
        "guardrail_verdicts": kinds["guardrail.verdict"],
        "dead_lettered": by_status[RunStatus.DEAD_LETTERED],
        "model_steps": kinds["model.response"],
        "cost_usd": round(sum(r.usage.cost_usd or 0.0 for r in final), 6),
        "elapsed_s": round(time.perf_counter() - started, 3),
        "db": db_url,
    }


def _print_summary(console: Console, summary: dict[str, Any], db_url: str) -> None:
    table = Table(title="tether demo — support desk", show_header=False)
    for key, label in LABELS.items():
        table.add_row(label, str(summary[key]))
    console.print(table)
    console.print(f"Inspect a run: tether runs list --db {db_url}; tether runs events RUN_ID --db {db_url}")
    if summary["awaiting_approval"]:
        console.print(f"The refunds waiting for approval: tether inbox list --db {db_url}")
