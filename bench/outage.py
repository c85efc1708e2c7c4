"""Wasted calls during a provider outage: tether's breaker against plain retries, both falling back.

A steady open-loop load (default 20 calls/s from 4 clients) goes through one route, `openai:primary`
(provider A) then `openai:fallback` (provider B). For `--outage-s` seconds in the middle of each
`--total-s` run, A answers 503 to everything. Two configurations run one after the other on the same
load: tether's Gateway with its default breaker and retries, and the same retries with a breaker that
never opens. Per configuration it counts the calls that reached the dead provider, the calls the
fallback served, the errors clients saw, client latency during the outage, and how long after the
outage traffic was back on A.

    .venv/bin/python bench/outage.py [--outage-s 60] [--total-s 75] [--rate 20] [--clients 4] [--json]

The fake servers run as separate processes on 127.0.0.1 and are stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tether.gateway.gateway import Gateway
from tether.models.openai import OpenAIModel
from tether.resilience import BreakerPolicy, BreakerRegistry, BreakerState, BreakerTransition, RetryPolicy
from tether.types import Message, ModelRequest, ModelResponse

ANSWER = "Your order A-7 left the warehouse this morning."
PRIMARY, FALLBACK = "openai:primary", "openai:fallback"
NEVER_OPENS = BreakerPolicy(failure_threshold=10**9, error_rate_threshold=None)
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


class ProviderA:
    """Provider A as the gateway sees it: one model, `openai:primary`, whose calls go to A's healthy
    server, or to its dead one (every request answered 503) while `down` is set. One model, so one
    breaker: to the gateway this is one server that starts and stops failing."""

    def __init__(self, healthy_url: str, dead_url: str, clock: Clock) -> None:
        self.name = PRIMARY
        self.down = False
        self._healthy = OpenAIModel("primary", base_url=healthy_url, api_key="x")
        self._dead = OpenAIModel("primary", base_url=dead_url, api_key="x")
        self._clock = clock
        self.dead_attempts: list[float] = []  # when each attempt that reached the dead server started
        self.healthy_attempts: list[float] = []

    async def request(self, request: ModelRequest) -> ModelResponse:
        if self.down:
            self.dead_attempts.append(self._clock())
            return await self._dead.request(request)
        self.healthy_attempts.append(self._clock())
        return await self._healthy.request(request)

    async def aclose(self) -> None:
        await self._healthy.aclose()
        await self._dead.aclose()


class Clock:
    """Seconds since the configuration's run started."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


@dataclass
class CallRecord:
    client: int
    started_s: float
    ended_s: float
    served_by: str | None  # "primary", "fallback", or None for an error the client saw
    error: str | None = None


@dataclass
class Outcome:
    name: str
    what: str
    calls: list[CallRecord] = field(default_factory=list)
    dead_attempts: list[float] = field(default_factory=list)
    healthy_attempts: list[float] = field(default_factory=list)
    transitions: list[tuple[float, BreakerTransition]] = field(default_factory=list)
    server_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Timeline:
    total_s: float
    outage_start_s: float
    outage_end_s: float
    rate: float
    clients: int


def timeline(args: argparse.Namespace) -> Timeline:
    lead_s = min(5.0, (args.total_s - args.outage_s) / 3)  # A serves a while first, and recovers after
    return Timeline(args.total_s, lead_s, lead_s + args.outage_s, args.rate, args.clients)


async def run_config(
    name: str, what: str, policy: BreakerPolicy, *, urls: dict[str, str], plan: Timeline, seed: int
) -> Outcome:
    outcome = Outcome(name, what)
    clock = Clock()
    primary = ProviderA(urls["a-healthy"], urls["a-dead"], clock)
    fallback = OpenAIModel("fallback", base_url=urls["b"], api_key="x")
    breakers = BreakerRegistry(policy, on_transition=lambda t: outcome.transitions.append((clock(), t)))
    gateway = Gateway(
        {"r": [PRIMARY, FALLBACK]},
        models={PRIMARY: primary, FALLBACK: fallback},
        retry=RetryPolicy(),
        breakers=breakers,
        rng=random.Random(seed),
    )
    request = ModelRequest(
        messages=(
            Message("system", "You are a support agent for an online shop. Answer in one sentence."),
            Message("user", "Where is my order A-7?"),
        )
    )

    async def one_call(client: int) -> None:
        started = clock()
        try:
            response = await gateway.complete("r", request)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:200]
            outcome.calls.append(CallRecord(client, started, clock(), None, error))
            return
        if response.content != ANSWER:
            raise RuntimeError(f"unexpected answer {response.content!r}")
        outcome.calls.append(CallRecord(client, started, clock(), response.model))

    async def client(index: int) -> None:
        interval_s = plan.clients / plan.rate
        at_s = index / plan.rate  # clients are staggered, so arrivals are evenly spaced overall
        calls: set[asyncio.Task[None]] = set()
        while at_s < plan.total_s:
            await asyncio.sleep(max(0.0, at_s - clock()))
            # Open loop: a slow call does not delay the next one, so both configurations get the same load.
            task = asyncio.create_task(one_call(index))
            calls.add(task)
            task.add_done_callback(calls.discard)
            at_s += interval_s
        await asyncio.gather(*calls)

    async def outage() -> None:
        await asyncio.sleep(max(0.0, plan.outage_start_s - clock()))
        primary.down = True
        await asyncio.sleep(max(0.0, plan.outage_end_s - clock()))
        primary.down = False

    try:
        # Warm-up, outside the timeline: connections to A and B open, prices resolved, code paths hot.
        for _ in range(3):
            await gateway.complete("r", request)
            await fallback.request(request)
        primary.healthy_attempts.clear()
        async with httpx.AsyncClient() as admin:
            for url in urls.values():  # zero the counters: each configuration is counted on its own
                (await admin.post(f"{url.removesuffix('/v1')}/_reset")).raise_for_status()
        clock.t0 = time.perf_counter()
        await asyncio.gather(outage(), *(client(i) for i in range(plan.clients)))
    finally:
        await gateway.aclose()
    outcome.dead_attempts = primary.dead_attempts
    outcome.healthy_attempts = primary.healthy_attempts
    async with httpx.AsyncClient() as admin:
        for key, url in urls.items():
            stats = (await admin.get(f"{url.removesuffix('/v1')}/_stats")).json()
            outcome.server_counts[key] = int(stats["requests"])
    expected = {
        "a-healthy": len(primary.healthy_attempts),
        "a-dead": len(primary.dead_attempts),
        "b": sum(1 for c in outcome.calls if c.served_by == "fallback"),
    }
    if outcome.server_counts != expected:
        raise RuntimeError(f"{name}: the servers counted {outcome.server_counts}, the bench {expected}")
    return outcome


def percentile(samples: list[float], q: int) -> float | None:
    if not samples:
        return None
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


def analyse(outcome: Outcome, plan: Timeline, cooldown_s: float) -> dict[str, Any]:
    start, end = plan.outage_start_s, plan.outage_end_s
    during = [c for c in outcome.calls if start <= c.started_s < end]
    before = [c for c in outcome.calls if c.started_s < start]
    after = [c for c in outcome.calls if c.started_s >= end]
    opened = [at for at, t in outcome.transitions if t.new is BreakerState.OPEN]
    first_open = opened[0] if opened else None
    back_on_a = next((at for at in outcome.healthy_attempts if at >= end), None)
    result: dict[str, Any] = {
        "name": outcome.name,
        "what": outcome.what,
        "calls_offered": len(outcome.calls),
        "calls_started_during_outage": len(during),
        "dead_provider_calls": len(outcome.dead_attempts),
        "breaker_first_opened_s_after_outage_start": None
        if first_open is None
        else round(first_open - start, 3),
        "dead_provider_calls_after_breaker_opened": (
            None if first_open is None else sum(1 for at in outcome.dead_attempts if at > first_open)
        ),
        "served_by_fallback_during_outage": sum(1 for c in during if c.served_by == "fallback"),
        "served_by_fallback_total": sum(1 for c in outcome.calls if c.served_by == "fallback"),
        "served_by_primary_during_outage": sum(1 for c in during if c.served_by == "primary"),
        "client_errors": sum(1 for c in outcome.calls if c.served_by is None),
        "client_errors_during_outage": sum(1 for c in during if c.served_by is None),
        "first_errors": sorted({c.error for c in outcome.calls if c.error})[:3],
        "latency_ms_before_outage": {
            "p50": ms(percentile([c.ended_s - c.started_s for c in before], 50)),
            "p99": ms(percentile([c.ended_s - c.started_s for c in before], 99)),
        },
        "latency_ms_during_outage": {
            "p50": ms(percentile([c.ended_s - c.started_s for c in during], 50)),
            "p99": ms(percentile([c.ended_s - c.started_s for c in during], 99)),
            "max": ms(max((c.ended_s - c.started_s for c in during), default=None)),
        },
        "back_on_primary_s_after_outage": None if back_on_a is None else round(back_on_a - end, 3),
        "after_outage_served_by": {
            "primary": sum(1 for c in after if c.served_by == "primary"),
            "fallback": sum(1 for c in after if c.served_by == "fallback"),
            "error": sum(1 for c in after if c.served_by is None),
        },
        "breaker_transitions": [
            {
                "at_s_from_outage_start": round(at - start, 3),
                "from": str(t.old),
                "to": str(t.new),
                "why": t.reason,
            }
            for at, t in outcome.transitions
        ],
        "server_counts": outcome.server_counts,
    }
    if back_on_a is None and opened:
        # Still open at the end of the run: say when it would have probed A next.
        result["next_probe_s_after_outage"] = round(opened[-1] + cooldown_s - end, 3)
    return result


@contextlib.contextmanager
def fake_servers() -> Iterator[dict[str, str]]:
    """A's healthy server, A's dead one (503 on every request), and B, each its own process."""
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp, contextlib.ExitStack() as stack:
        script = Path(tmp) / "script.json"
        script.write_text(json.dumps([{"content": ANSWER}]), encoding="utf-8")
        urls = {}
        for key, faults in (("a-healthy", ""), ("a-dead", "http_503:every=1"), ("b", "")):
            command = [sys.executable, "-m", "tether.testing.fakellm", "--script", str(script), "--port", "0"]
            process = subprocess.Popen([*command, "--faults", faults], stdout=subprocess.PIPE, text=True)
            stack.callback(process.wait, 10)
            stack.callback(process.terminate)
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            if not url.startswith("http://127.0.0.1:"):
                raise RuntimeError(f"fake server {key} did not start (printed {url!r})")
            urls[key] = url
        yield urls


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def show(value: Any, unit: str = "") -> str:
    return "n/a" if value is None else f"{value}{unit}"


def print_report(summary: dict[str, Any]) -> None:
    plan = summary["timeline"]
    print(
        f"provider outage: {plan['rate']:g} calls/s from {plan['clients']} clients (open loop) for "
        f"{plan['total_s']:g} s per configuration; A answers 503 to everything from "
        f"+{plan['outage_start_s']:.1f} s to +{plan['outage_end_s']:.1f} s ({summary['outage_s']:g} s)"
    )
    print(f"python {summary['python']} on {summary['platform']}; tether {summary['tether']}")
    print(f"command: {summary['command']}")
    print(f"route: {PRIMARY} (A) -> {FALLBACK} (B); retries: {summary['retry']}")
    print()
    a, b = summary["configurations"]
    rows = [
        ("calls started (whole run)", a["calls_offered"], b["calls_offered"]),
        (
            "calls started during the outage",
            a["calls_started_during_outage"],
            b["calls_started_during_outage"],
        ),
        ("calls reaching dead A during the outage", a["dead_provider_calls"], b["dead_provider_calls"]),
        (
            "  of which after the breaker first opened",
            show(a["dead_provider_calls_after_breaker_opened"]),
            show(b["dead_provider_calls_after_breaker_opened"]),
        ),
        (
            "breaker first opened (after outage start)",
            show(a["breaker_first_opened_s_after_outage_start"], " s"),
            show(b["breaker_first_opened_s_after_outage_start"], " s"),
        ),
        (
            "calls served by fallback B (started in outage)",
            a["served_by_fallback_during_outage"],
            b["served_by_fallback_during_outage"],
        ),
        (
            "calls served by fallback B (whole run)",
            a["served_by_fallback_total"],
            b["served_by_fallback_total"],
        ),
        ("client-visible errors (whole run)", a["client_errors"], b["client_errors"]),
        (
            "latency before the outage p50 / p99 (ms)",
            "{p50} / {p99}".format(**a["latency_ms_before_outage"]),
            "{p50} / {p99}".format(**b["latency_ms_before_outage"]),
        ),
        (
            "latency during the outage p50 / p99 (ms)",
            "{p50} / {p99}".format(**a["latency_ms_during_outage"]),
            "{p50} / {p99}".format(**b["latency_ms_during_outage"]),
        ),
        (
            "latency during the outage max (ms)",
            show(a["latency_ms_during_outage"]["max"]),
            show(b["latency_ms_during_outage"]["max"]),
        ),
        (
            "first call back on A (after outage end)",
            show(a["back_on_primary_s_after_outage"], " s"),
            show(b["back_on_primary_s_after_outage"], " s"),
        ),
        (
            "calls after the outage: A / B / error",
            "{primary} / {fallback} / {error}".format(**a["after_outage_served_by"]),
            "{primary} / {fallback} / {error}".format(**b["after_outage_served_by"]),
        ),
    ]
    print(f"{'':<48}{a['name']:>18}{b['name']:>18}")
    for label, left, right in rows:
        print(f"{label:<48}{left!s:>18}{right!s:>18}")
    print()
    for config in (a, b):
        print(f"{config['name']}: {config['what']}")
        for t in config["breaker_transitions"]:
            print(f"  {t['at_s_from_outage_start']:+9.3f} s  breaker {t['from']} -> {t['to']} ({t['why']})")
        if not config["breaker_transitions"]:
            print("  breaker never changed state")
        if "next_probe_s_after_outage" in config:
            print(
                f"  traffic was not back on A when the run ended: the breaker was still open; its next "
                f"probe was due {config['next_probe_s_after_outage']:g} s after the outage ended "
                f"(cooldown {summary['cooldown_s']:g} s)"
            )
        for error in config["first_errors"]:
            print(f"  client error: {error}")
    print()
    print(
        "(times are from the outage start or end; latency is per call, start to answer, as the client saw it)"
    )
    print(f"verified: {summary['verified']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--outage-s", type=float, default=60.0, help="seconds A answers 503 (default 60)")
    parser.add_argument(
        "--total-s", type=float, default=75.0, help="seconds of load per configuration (default 75)"
    )
    parser.add_argument("--rate", type=float, default=20.0, help="calls per second, all clients (default 20)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the retry jitter (default 1)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    args = parser.parse_args()
    if not 0 < args.outage_s < args.total_s:
        parser.error("--outage-s must be > 0 and shorter than --total-s")
    if args.rate <= 0 or args.clients < 1:
        parser.error("--rate must be > 0 and --clients >= 1")
    os.environ.update(NO_PROXY)  # loopback only, whatever proxy the environment names
    plan = timeline(args)
    default = BreakerPolicy()
    configs = [
        (
            "breaker+retries",
            f"tether's default breaker ({default.failure_threshold} failures or "
            f"{default.error_rate_threshold:.0%} of >= {default.min_calls} calls in {default.window_s:g} s "
            f"open it; cooldown {default.cooldown_s:g} s; {default.half_open_probes} half-open probe) "
            "+ retries",
            default,
        ),
        ("plain retries", "the same retries, a breaker that never opens", NEVER_OPENS),
    ]
    with fake_servers() as urls:
        outcomes = [
            asyncio.run(run_config(name, what, policy, urls=urls, plan=plan, seed=args.seed))
            for name, what, policy in configs
        ]
    retry = RetryPolicy()
    summary = {
        "command": shlex.join(sys.orig_argv),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "tether": version("tether"),
        "outage_s": args.outage_s,
        "cooldown_s": default.cooldown_s,
        "timeline": vars(plan),
        "retry": f"{retry.max_attempts} attempts per model, full-jitter backoff from "
        f"{retry.initial_backoff_s:g} s x{retry.multiplier:g}",
        "configurations": [analyse(o, plan, default.cooldown_s) for o in outcomes],
        "verified": "every answer was the scripted one, and each server's own request count (/_stats) "
        "matched the calls the bench sent it",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
