"""The chaos gauntlet's figures, read back from the store, the orders database and the fake providers.

Each must-be-0 figure comes from a record the runtime cannot rewrite after the fact: the refund rows in
the orders database (written by the tool itself, keyed by idempotency key), the runs' final states, and
the model responses' costs in the runs' event logs (what the budget settled).
"""

from __future__ import annotations

import sqlite3
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tether.demo.desk import count_refunds
from tether.demo.run import PRIMARY
from tether.policy.budget_stores import InMemoryBudgetBackend
from tether.policy.limits import UNITS_PER_ONE
from tether.runtime import Runtime
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import EventKind, RunEvent

PRIMARY_BREAKER = f"model:{PRIMARY}"
# A failed probe's breaker.opened event is recorded with the answer the backup then gave, a little
# after the probe reached the primary: probes recorded up to this long after the dead window count.
PROBE_RECORD_LAG_MS = 1000
DAY_MS = 86_400_000  # budget days are UTC days

DEFINITIONS = {
    "lost": "runs not in a terminal state when the gauntlet stopped (queued, running or waiting for a "
    "person although the operator answers every question)",
    "duplicate_refunds": "runs with more than one refund row in the orders database (rows are keyed by "
    "the tool call's idempotency key, so a re-invoked call cannot add one; a redone model turn would)",
    "denied_refunds_paid": "refund rows whose call (run, turn, index) a person denied",
    "budget_overshoots": "customers whose model costs in the event logs (summed per UTC day in the "
    "budget's own units, millionths of a dollar, as settled) exceed the per-customer daily limit",
    "dead_calls_after_open": "requests that reached the primary inside its dead window after its breaker "
    "first opened in it (the earliest breaker.opened event from closed, recorded in the store at or "
    "after the window's first request), minus the half-open probes that failed in it (breaker.opened "
    "from half_open, recorded up to 1 s after the window's last request): calls a breaker shared by "
    "every worker would have spared. Per-process breakers (no --redis) each learn on their own, and so "
    "does a restarted worker. The event is recorded after the fallback answers, so calls in that gap "
    "are not counted",
    "ideal_s": "sum of the latencies the providers injected (slow answers, Retry-After of 429s) "
    "divided by the number of runs driven at once (workers x concurrency)",
    "latency": "created (enqueued, all at the start) to the run's last event; includes queueing, "
    "waiting for the operator (polls every 0.1 s) and for a killed worker's lease to expire",
}


def percentile(samples: Sequence[float], q: int) -> float:
    if not samples:
        return float("nan")
    if len(samples) == 1:
        return samples[0]
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def injected_s(faults: Sequence[Fault], seed: int, requests: int) -> float:
    """Seconds of delay a server injected into its first `requests` requests (the faults' own rules)."""
    total = 0.0
    for number in range(1, requests + 1):
        for position, fault in enumerate(faults):
            if fault.applies_to(number, seed=seed, position=position):
                if fault.kind == "slow":
                    total += fault.delay_s
                elif fault.kind in ("http_429", "http_503") and fault.retry_after_s is not None:
                    total += fault.retry_after_s
                break
    return total


# What a run resumes after when nothing went wrong: a person's answer, a failed attempt, a replay.
_PLANNED_RESUMES = frozenset(
    {EventKind.ESCALATION_ANSWERED, EventKind.RUN_ATTEMPT_FAILED, EventKind.RUN_REPLAYED}
)


def taken_over(log: Sequence[RunEvent]) -> bool:
    """Whether another claim resumed the run mid-way: its worker died (or lost the lease) while on it."""
    return any(
        event.kind == EventKind.RUN_RESUMED and log[i - 1].kind not in _PLANNED_RESUMES
        for i, event in enumerate(log)
        if i > 0
    )


def refund_keys(orders_db: Path) -> set[str]:
    with sqlite3.connect(orders_db) as db:
        return {key for (key,) in db.execute("SELECT idempotency_key FROM refunds")}


def breaker_figures(
    events: Sequence[RunEvent], arrivals: Sequence[tuple[int, float]], outage: tuple[int, int]
) -> dict[str, Any]:
    """The primary's breaker against its dead window (request numbers outage[0] .. +outage[1]-1).

    Scattered 500s and 429s open the breaker too (five failures within its window); only openings from
    the dead window's first request on count here.
    """
    primary = [e for e in events if e.data.get("breaker") == PRIMARY_BREAKER]
    opened = [e for e in primary if e.kind == EventKind.BREAKER_OPENED]
    first, count = outage
    dead_ms = sorted(at_s * 1000 for number, at_s in arrivals if first <= number < first + count)
    figures: dict[str, Any] = {
        "primary_breaker_opened": sum(1 for e in opened if e.data.get("from") == "closed"),
        "primary_probes_failed": sum(1 for e in opened if e.data.get("from") == "half_open"),
        "primary_breaker_closed_again": sum(
            1 for e in primary if e.kind == EventKind.BREAKER_CHANGED and e.data.get("to") == "closed"
        ),
        "dead_window_requests": len(dead_ms),
        "dead_window_size": count,
        "dead_window_s": round((dead_ms[-1] - dead_ms[0]) / 1000, 3) if dead_ms else 0.0,
        "dead_first_open_after_s": None,
        "dead_requests_after_first_open": 0,
        "dead_probes_failed": 0,
        "dead_calls_after_open": 0,
    }
    openings = [
        e.created_at_epoch_ms
        for e in opened
        if e.data.get("from") == "closed" and dead_ms and e.created_at_epoch_ms >= dead_ms[0]
    ]
    if not openings:
        return figures
    open_ms, end_ms = min(openings), dead_ms[-1]
    after = sum(1 for at_ms in dead_ms if at_ms > open_ms)
    probes = sum(
        1
        for e in opened
        if e.data.get("from") == "half_open"
        and open_ms <= e.created_at_epoch_ms <= end_ms + PROBE_RECORD_LAG_MS
    )
    figures.update(
        dead_first_open_after_s=round((open_ms - dead_ms[0]) / 1000, 3),
        dead_requests_after_first_open=after,
        dead_probes_failed=probes,
        dead_calls_after_open=max(0, after - probes),
    )
    return figures


async def collect(
    runtime: Runtime,
    run_ids: Sequence[str],
    *,
    orders_db: Path,
    servers: Mapping[str, tuple[FakeLLMServer, Sequence[Fault], int]],
    arrivals: Sequence[tuple[int, float]],
    outage: tuple[int, int],
    cost_limit_usd: float,
    concurrency: int,
    elapsed_s: float,
) -> dict[str, Any]:
    store = runtime.store
    runs = [await store.get_run(run_id) for run_id in run_ids]
    logs = {run_id: await store.load_events(run_id) for run_id in run_ids}
    every = [event for log in logs.values() for event in log]
    kinds = Counter(event.kind for event in every)
    by_status = Counter(str(run.status) for run in runs)
    lost = [run.id for run in runs if not run.status.is_terminal]
    latency_ms = [
        logs[run.id][-1].created_at_epoch_ms - run.created_at_epoch_ms
        for run in runs
        if run.status.is_terminal
    ]

    # Budgets: each model response's cost, in the budget's units, per customer and UTC day.
    limit_units = round(cost_limit_usd * UNITS_PER_ONE)
    spent_units: Counter[tuple[str, int]] = Counter()
    for run in runs:
        for event in logs[run.id]:
            if event.kind != EventKind.MODEL_RESPONSE or run.principal is None:
                continue
            cost = (event.data.get("usage") or {}).get("cost_usd")
            if cost is not None:
                day = event.created_at_epoch_ms // DAY_MS
                spent_units[run.principal, day] += round(cost * UNITS_PER_ONE)
    over: dict[str, float] = {}
    for (principal, _), units in spent_units.items():
        if units > limit_units:
            over[principal] = max(over.get(principal, 0.0), (units - limit_units) / UNITS_PER_ONE)
    reached = {
        run.principal
        for run in runs
        for event in logs[run.id]
        if event.kind == EventKind.BUDGET_EXCEEDED and event.data.get("scope") == "principal-day"
    }
    backend = type(runtime.budget_backend).__name__
    shared = not isinstance(runtime.budget_backend, InMemoryBudgetBackend)

    # Side effects: the refund rows the tool wrote, against the runs and the denials.
    refunds, duplicates = count_refunds(orders_db, list(run_ids))
    denied = {
        f"{event.run_id}:{event.data.get('turn')}:{event.data.get('index')}"
        for event in every
        if event.kind == EventKind.TOOL_RESULT and event.data.get("error") == "denied"
    }
    denied_paid = len(denied & refund_keys(orders_db))

    injected = {
        name: injected_s(faults, seed, server.stats["requests"])
        for name, (server, faults, seed) in servers.items()
    }
    ideal_s = sum(injected.values()) / concurrency
    report: dict[str, Any] = {
        "runs": len(runs),
        "by_status": dict(sorted(by_status.items())),
        "lost": len(lost),
        "lost_runs": lost[:20],
        "refunds": refunds,
        "duplicate_refunds": duplicates,
        "denied_refunds_paid": denied_paid,
        "refund_denials": len(denied),
        "budget_backend": backend,
        "budget_shared": shared,
        "cost_limit_usd": cost_limit_usd,
        "customers_at_limit": len(reached),
        "customers": len({principal for principal, _ in spent_units}),
        "budget_overshoots": len(over),
        "overshoot_usd": {p: round(v, 6) for p, v in sorted(over.items())},
        "max_customer_spend_usd": round(max(spent_units.values(), default=0) / UNITS_PER_ONE, 6),
        "cost_usd": round(sum(spent_units.values()) / UNITS_PER_ONE, 6),
        "runs_taken_over": sum(1 for log in logs.values() if taken_over(log)),
        "attempts_failed": kinds[EventKind.RUN_ATTEMPT_FAILED],
        "model_retries": kinds[EventKind.MODEL_RETRY],
        "fallbacks": kinds[EventKind.FALLBACK_USED],
        "tool_retries": kinds[EventKind.TOOL_RETRY],
        "cache_hits": kinds[EventKind.CACHE_HIT],
        "questions": kinds[EventKind.ESCALATION_OPENED],
        **breaker_figures(every, arrivals, outage),
        "provider_stats": {
            name: {k: v for k, v in server.stats.items() if v} for name, (server, _, _) in servers.items()
        },
        "latency_p50_s": round(percentile(latency_ms, 50) / 1000, 3),
        "latency_p99_s": round(percentile(latency_ms, 99) / 1000, 3),
        "elapsed_s": round(elapsed_s, 3),
        "injected_s": {name: round(value, 3) for name, value in injected.items()},
        "ideal_s": round(ideal_s, 3),
        "elapsed_over_ideal": round(elapsed_s / ideal_s, 2) if ideal_s else None,
        "definitions": DEFINITIONS,
    }
    violations = {
        name: report[name] for name in ("lost", "duplicate_refunds", "denied_refunds_paid") if report[name]
    }
    if shared and report["budget_overshoots"]:
        violations["budget_overshoots"] = report["budget_overshoots"]
    report["violations"] = violations
    return report


async def delete_keys(redis_url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def print_report(report: dict[str, Any]) -> None:
    r = report
    shared = "shared by every worker" if r["budget_shared"] else "per process: overshoot means nothing here"
    print(f"chaos gauntlet: {r['runs']} support runs, {r['workers']} workers x {r['concurrency_per_worker']}")
    print(f"command: {r['command']}")
    print(f"store: {r['db']}; redis: {r['redis'] or 'none'}; seed {r['seed']}; lease {r['lease_s']:g} s")
    print()
    rows = [
        ("runs by terminal state", ", ".join(f"{k} {v}" for k, v in r["by_status"].items())),
        ("lost runs (must be 0)", r["lost"]),
        ("duplicate refunds (must be 0)", r["duplicate_refunds"]),
        ("refunds paid although denied (must be 0)", r["denied_refunds_paid"]),
        (
            "budget overshoots (must be 0)",
            f"{r['budget_overshoots']} of {r['customers']} customers "
            f"({r['customers_at_limit']} refused at the ${r['cost_limit_usd']:g}/day limit; "
            f"highest spend ${r['max_customer_spend_usd']:g})",
        ),
        ("budget backend", f"{r['budget_backend']} ({shared})"),
        ("workers SIGKILLed and restarted", f"{r['kills']} (every {r['kill_every_s']:g} s or so)"),
        ("runs taken over from a killed worker", r["runs_taken_over"]),
        ("unexpected worker exits", r["unexpected_worker_exits"]),
        ("refunds issued / denied by the operator", f"{r['refunds']} / {r['refund_denials']}"),
        ("questions opened for a person (all answered)", r["questions"]),
        ("model retries / fallbacks to the backup", f"{r['model_retries']} / {r['fallbacks']}"),
        ("flaky tool calls retried", r["tool_retries"]),
        (
            "primary breaker: openings / failed probes / closings",
            f"{r['primary_breaker_opened']} / {r['primary_probes_failed']} / "
            f"{r['primary_breaker_closed_again']}",
        ),
        (
            "primary dead window",
            f"{r['dead_window_requests']} of its {r['dead_window_size']} requests came, over "
            f"{r['dead_window_s']:g} s; breaker first opened "
            f"{r['dead_first_open_after_s']} s in; {r['dead_requests_after_first_open']} requests after "
            f"that, {r['dead_probes_failed']} of them failed probes",
        ),
        ("calls to the dead primary after its breaker opened", r["dead_calls_after_open"]),
        (
            "run latency p50 / p99 (created -> settled)",
            f"{r['latency_p50_s']:.2f} s / {r['latency_p99_s']:.2f} s",
        ),
        ("total time / ideal", f"{r['elapsed_s']:.1f} s / {r['ideal_s']:.1f} s (x{r['elapsed_over_ideal']})"),
        (
            "provider requests",
            ", ".join(f"{n} {s.get('requests', 0)}" for n, s in r["provider_stats"].items()),
        ),
        ("model cost (USD)", r["cost_usd"]),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value}")
    print()
    for name, text in r["definitions"].items():
        print(f"{name}: {text}")
    if r["violations"]:
        print()
        print(f"CONTRACT BROKEN: {r['violations']}")
