"""The chaos gauntlet: many support-desk runs across worker processes that are SIGKILLed at random.

The parent starts two fake OpenAI-compatible providers on 127.0.0.1 — a primary with scattered 500s,
a 429 with Retry-After every 97 requests, slow answers and a dead window (`OUTAGE_REQUESTS` 503s in a
row, enough to open its breaker), and a healthy backup — seeds the orders database (a SQLite file, the
"external system", whatever the store), enqueues `--runs` runs of the demo's support agent for
`--principals` customers of two tenants (a few customers send most of the traffic), then starts
`--workers` worker processes (`bench/gauntlet_worker.py`) on the one store. While they work, a
scripted operator answers every open question every 100 ms (denies the first refund and some others
with a message, approves the rest; takes over some hand-offs and every budget refusal), and a chaos
loop SIGKILLs a worker every `--kill-every-s` seconds, give or take half (a random one among those
holding leases, if any does), and starts a new one in its place. It stops when every run has settled,
or after `--timeout-s` (the rest then count as lost), and reports what held (`gauntlet_report.py`).

    .venv/bin/python bench/gauntlet.py [--runs N] [--workers W] [--concurrency C] [--kill-every-s S]
        [--seed N] [--db URL] [--redis URL] [--lease-s S] [--latency-s S] [--deny-rate R] [--keep] [--json]

Exit status 1 when a must-be-0 figure (lost runs, duplicate or denied refunds, budget overshoots with a
shared budget backend) is not 0; 2 when the gauntlet could not run (a bad --db, a non-empty store).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import gauntlet_report
from gauntlet_worker import gauntlet_runtime
from tether.agent import Agent
from tether.demo.desk import build_support_agent, demo_inputs, seed_orders
from tether.demo.providers import wire_responder
from tether.errors import TetherError
from tether.runtime import Runtime
from tether.store import Escalation
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import RunStatus

BENCH_DIR = Path(__file__).resolve().parent
TENANTS = ("acme", "globex")
OUTAGE_REQUESTS = 30  # the primary's dead window: this many requests in a row answered 503
OPERATOR_POLL_S = 0.1
TAKEOVER_RATE = 0.7  # "let me talk to a human": the operator answers the customer
REJECT_RATE = 0.15  # answers the gate asked the user to confirm, and the user rejects
# What one support run costs on average (measured: mostly the cheap primary, a quarter of the turns on
# the 17x dearer backup); the default per-principal-day limit is 1.2x the average customer's spend, so
# the two busiest customers (a third and a sixth of the traffic) reach it and the quiet ones do not.
COST_PER_RUN_USD = 0.00015
LIMIT_SHARE = 1.2
# Budgets reserve the most a call can cost before it runs (the backup's price, ~500 prompt tokens and
# the desk's 200-token answer cap), so a limit must hold a few such calls at once or every run of a
# busy customer is refused up front: the limit is never below MIN_LIMIT_CALLS of them.
WORST_CALL_USD = 0.0033
MIN_LIMIT_CALLS = 3


@dataclass
class Options:
    runs: int = 1000
    workers: int = 3
    concurrency: int = 8
    kill_every_s: float = 1.2
    seed: int = 7
    db: str | None = None
    redis: str | None = None
    principals: int = 10
    cost_limit_usd: float | None = None
    lease_s: float = 3.0
    timeout_s: float = 600.0
    deny_rate: float = 0.15  # refunds the operator refuses (with a message for the agent)
    latency_s: float = 0.02  # every answer of either provider takes at least this long

    def limit_usd(self) -> float:
        if self.cost_limit_usd is not None:
            return self.cost_limit_usd
        share = LIMIT_SHARE * COST_PER_RUN_USD * self.runs / self.principals
        return round(max(share, MIN_LIMIT_CALLS * WORST_CALL_USD), 6)


class LoggedFakeLLMServer(FakeLLMServer):
    """A fake provider that also notes when each chat request arrived: (request number, epoch seconds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arrivals: list[tuple[int, float]] = []

    async def _serve_chat(self, exchange: Any) -> bool:
        # No await before the parent counts the request: this number is the one its faults see.
        self.arrivals.append((self.stats["requests"] + 1, time.time()))
        return await super()._serve_chat(exchange)


def outage_start(runs: int) -> int:
    """The dead window's first request number: about a third into the primary's traffic (1.3 requests
    per run reach it), with enough runs left to show what the breakers do."""
    return max(10, runs // 2)


def primary_faults(runs: int, latency_s: float) -> tuple[Fault, ...]:
    """The primary's bad day. Faults are checked in order; the first whose schedule matches applies."""
    return (
        Fault("http_503", start=outage_start(runs), burst=OUTAGE_REQUESTS, retry_after_s=None),
        Fault("http_500", rate=0.03),
        Fault("http_429", every=97, retry_after_s=0.2),
        Fault("slow", rate=0.05, delay_s=0.4),
        Fault("slow", every=1, delay_s=latency_s),
    )


def backup_faults(latency_s: float) -> tuple[Fault, ...]:
    """The backup is healthy, just never instant."""
    return (Fault("slow", every=1, delay_s=latency_s),)


@contextlib.contextmanager
def providers(options: Options) -> Iterator[tuple[LoggedFakeLLMServer, LoggedFakeLLMServer]]:
    primary = LoggedFakeLLMServer(
        responder=wire_responder,
        faults=primary_faults(options.runs, options.latency_s),
        model_name="desk-primary",
        seed=options.seed,
    )
    backup = LoggedFakeLLMServer(
        responder=wire_responder,
        faults=backup_faults(options.latency_s),
        model_name="desk-backup",
        seed=options.seed,
    )
    with primary.run_in_thread(), backup.run_in_thread():
        yield primary, backup


@dataclass
class Fleet:
    """The worker processes: started, killed, restarted; all stopped at the end (SIGTERM, then SIGKILL)."""

    command: list[str]
    workdir: Path
    size: int
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[TextIO] = field(default_factory=list)
    generation: Counter[int] = field(default_factory=Counter)
    worker_ids: dict[int, str] = field(default_factory=dict)  # slot -> the lease owner living there
    unexpected_exits: list[tuple[int, int | None]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}  # only what we set
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
        return env

    def start(self, slot: int) -> None:
        self.generation[slot] += 1
        worker_id = self.worker_ids[slot] = f"gauntlet-w{slot}.{self.generation[slot]}"
        log = open(self.workdir / f"{worker_id}.log", "w", encoding="utf-8")  # noqa: SIM115  # closed in stop_all
        self.logs.append(log)
        self.procs[slot] = subprocess.Popen(
            [*self.command, "--worker-id", worker_id],
            env=self.env(),
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self, slot: int) -> None:
        proc = self.procs[slot]
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def restart_exited(self) -> None:
        """A worker that ended without being killed is a finding: note it and replace it."""
        for slot, proc in self.procs.items():
            if proc.poll() is not None:
                self.unexpected_exits.append((slot, proc.returncode))
                self.start(slot)

    def stop_all(self, grace_s: float = 5.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for log in self.logs:
            log.close()


@dataclass
class Operator:
    """The scripted person at the inbox. It denies the first refund it is asked to approve (so every
    gauntlet has a denial to honour) and `deny_rate` of the others, with a message for the agent."""

    runtime: Runtime
    rng: random.Random
    deny_rate: float
    answers: Counter[str] = field(default_factory=Counter)

    def decide(self, question: Escalation) -> tuple[str, str | None]:
        """(choice, text) for one question."""
        rng = self.rng
        if question.reason == "approval":
            if not self.answers["approval: deny"] or rng.random() < self.deny_rate:
                return "deny", "Not approved: ask the customer for a photo of the damage first."
            return "approve", None
        if question.reason == "human_requested":
            if rng.random() < TAKEOVER_RATE:
                return "takeover", "Hello, Sam from support here: I will sort this out for you now."
            return "proceed", None
        if question.reason == "user_confirmation":
            if rng.random() < REJECT_RATE:
                return "reject", "That is not what I asked."
            return "confirm", None
        # A budget refusal, a model outage, a step limit: nothing an automatic answer would fix.
        if "takeover" in question.options:
            return "takeover", "A colleague will get back to you by email today."
        return question.options[0], None

    async def run(self, stop: asyncio.Event) -> None:
        """Answer every open question, every OPERATOR_POLL_S, until told to stop."""
        while not stop.is_set():
            for question in await self.runtime.inbox(limit=1000):
                choice, text = self.decide(question)
                try:
                    _, applied = await self.runtime.answer(
                        question.id, choice, text=text, by="gauntlet-operator"
                    )
                except TetherError as exc:
                    self.answers[f"error: {type(exc).__name__}"] += 1
                    continue
                self.answers[f"{question.reason}: {choice}"] += applied
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), OPERATOR_POLL_S)


async def chaos(
    runtime: Runtime,
    fleet: Fleet,
    *,
    rng: random.Random,
    every_s: float,
    stop: asyncio.Event,
    kills: list[dict[str, Any]],
) -> None:
    """At a random moment (every_s, give or take half), SIGKILL a random worker among those holding a
    lease (any, if none does) and start another in its place."""
    started = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), rng.uniform(0.5, 1.5) * every_s)
        if stop.is_set():
            return
        running = await runtime.store.list_runs(status=RunStatus.RUNNING, limit=10_000)
        owners = Counter(run.lease_owner for run in running)
        busy = [slot for slot, worker_id in sorted(fleet.worker_ids.items()) if owners[worker_id]]
        slot = rng.choice(busy) if busy else rng.randrange(fleet.size)
        leases = owners[fleet.worker_ids[slot]]
        fleet.kill(slot)
        kills.append({"at_s": round(time.monotonic() - started, 3), "worker": slot, "leases": leases})
        fleet.start(slot)


async def supervise(fleet: Fleet, stop: asyncio.Event) -> None:
    """Replace, twice a second, any worker that exited on its own (counted as unexpected)."""
    while not stop.is_set():
        fleet.restart_exited()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def enqueue(runtime: Runtime, desk: Agent, options: Options, rng: random.Random) -> list[str]:
    """N runs of the demo's inputs; customer k sends a share of them proportional to 1/(k+1)."""
    principals = [f"{TENANTS[k % 2]}-cust-{k}" for k in range(options.principals)]
    weights = [1 / (k + 1) for k in range(options.principals)]
    run_ids = []
    for text in demo_inputs(options.runs):
        k = rng.choices(range(options.principals), weights)[0]
        run = await runtime.start(desk, text, principal=principals[k], tenant=TENANTS[k % 2])
        run_ids.append(run.id)
    return run_ids


class GauntletError(Exception):
    """The gauntlet could not run as asked (not a finding about tether): exit status 2."""


def check(tasks: list[asyncio.Task[None]]) -> None:
    """Re-raise the error of a helper task (operator, chaos, supervisor) that died: a bench bug must
    not pass for runs lost by tether."""
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise GauntletError(f"the gauntlet's {task.get_name()} task failed") from task.exception()


async def wait_settled(runtime: Runtime, runs: int, deadline: float, tasks: list[asyncio.Task[None]]) -> bool:
    """Until every run has reached a terminal state (none queued, running or waiting for a person)."""
    while time.monotonic() < deadline:
        check(tasks)
        counts = await runtime.store.count_by_status()
        if sum(n for status, n in counts.items() if status.is_terminal) >= runs:
            return True
        await asyncio.sleep(0.2)
    return False


async def wait_started(runtime: Runtime, deadline: float, tasks: list[asyncio.Task[None]]) -> None:
    """Until some worker has claimed a run, so that the first kill lands on a working fleet."""
    while time.monotonic() < deadline:
        check(tasks)
        counts = await runtime.store.count_by_status()
        if counts[RunStatus.QUEUED] < sum(counts.values()):
            return
        await asyncio.sleep(0.05)


@dataclass
class Outcome:
    settled: bool
    elapsed_s: float
    kills: list[dict[str, Any]]
    answers: Counter[str]
    unexpected_exits: int


async def drive(runtime: Runtime, fleet: Fleet, options: Options, rng: random.Random, runs: int) -> Outcome:
    """Start the workers, the operator and the chaos loop; stop them all once every run has settled."""
    stop = asyncio.Event()
    kills: list[dict[str, Any]] = []
    operator = Operator(runtime, random.Random(rng.random()), options.deny_rate)
    chaos_rng = random.Random(rng.random())
    started = time.monotonic()
    deadline = started + options.timeout_s
    tasks: list[asyncio.Task[None]] = []
    try:
        for slot in range(fleet.size):
            fleet.start(slot)
        tasks.append(asyncio.create_task(operator.run(stop), name="operator"))
        tasks.append(asyncio.create_task(supervise(fleet, stop), name="supervisor"))
        await wait_started(runtime, deadline, tasks)
        killer = chaos(runtime, fleet, rng=chaos_rng, every_s=options.kill_every_s, stop=stop, kills=kills)
        tasks.append(asyncio.create_task(killer, name="chaos"))
        settled = await wait_settled(runtime, runs, deadline, tasks)
        elapsed_s = time.monotonic() - started
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        fleet.stop_all()
    check(tasks)
    return Outcome(settled, elapsed_s, kills, operator.answers, len(fleet.unexpected_exits))


async def gauntlet(options: Options, workdir: Path) -> dict[str, Any]:
    rng = random.Random(options.seed)
    db_url = options.db or f"sqlite:///{workdir / 'gauntlet.db'}"
    orders_db = workdir / "orders.db"
    seed_orders(orders_db)
    prefix = f"tether-gauntlet:{secrets.token_hex(4)}:"
    limit_usd = options.limit_usd()
    with providers(options) as (primary, backup):
        async with gauntlet_runtime(
            db_url,
            orders_db=orders_db,
            primary_url=primary.url,
            backup_url=backup.url,
            cost_limit_usd=limit_usd,
            redis_url=options.redis,
            prefix=prefix,
            lease_s=options.lease_s,
        ) as runtime:
            try:
                if sum((await runtime.store.count_by_status()).values()):
                    raise GauntletError(
                        f"the store at {db_url} already holds runs; give the gauntlet an empty one"
                    )
                run_ids = await enqueue(
                    runtime, build_support_agent(orders_db, model="support"), options, rng
                )
                command = [
                    sys.executable, str(BENCH_DIR / "gauntlet_worker.py"), "--db", db_url,
                    "--orders", str(orders_db), "--primary", primary.url, "--backup", backup.url,
                    "--cost-limit-usd", repr(limit_usd), "--prefix", prefix,
                    "--concurrency", str(options.concurrency), "--lease-s", str(options.lease_s),
                    "--parent-pid", str(os.getpid()),
                ]  # fmt: skip
                if options.redis:
                    command += ["--redis", options.redis]
                fleet = Fleet(command, workdir, options.workers)
                outcome = await drive(runtime, fleet, options, rng, len(run_ids))
                report = await gauntlet_report.collect(
                    runtime,
                    run_ids,
                    orders_db=orders_db,
                    servers={
                        "primary": (primary, primary_faults(options.runs, options.latency_s), options.seed),
                        "backup": (backup, backup_faults(options.latency_s), options.seed),
                    },
                    arrivals=list(primary.arrivals),
                    outage=(outage_start(options.runs), OUTAGE_REQUESTS),
                    cost_limit_usd=limit_usd,
                    concurrency=options.workers * options.concurrency,
                    elapsed_s=outcome.elapsed_s,
                )
            finally:
                if options.redis:
                    await gauntlet_report.delete_keys(options.redis, prefix)
    report.update(
        command=shlex.join(sys.orig_argv),
        db=shown(db_url) if options.db else "sqlite (a temp file)",
        redis=options.redis,
        workers=options.workers,
        concurrency_per_worker=options.concurrency,
        lease_s=options.lease_s,
        kill_every_s=options.kill_every_s,
        seed=options.seed,
        settled_before_timeout=outcome.settled,
        kills=len(outcome.kills),
        kill_log=outcome.kills,
        unexpected_worker_exits=outcome.unexpected_exits,
        operator_answers=dict(sorted(outcome.answers.items())),
    )
    return report


def shown(url: str) -> str:
    """The URL without its password, for the report."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)))


def parse(argv: list[str] | None = None) -> tuple[Options, bool, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    defaults = Options()
    parser.add_argument("--runs", type=int, default=defaults.runs, help=f"runs (default {defaults.runs})")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=defaults.concurrency, help="runs per worker")
    parser.add_argument(
        "--kill-every-s", type=float, default=defaults.kill_every_s, help="mean seconds between SIGKILLs"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="faults, customers, operator, chaos")
    parser.add_argument("--db", default=None, help="an empty store (default: a SQLite file in a temp dir)")
    parser.add_argument("--redis", default=None, help="share breakers and budget counters through Redis")
    parser.add_argument("--principals", type=int, default=defaults.principals, help="customers")
    parser.add_argument("--cost-limit-usd", type=float, default=None, help="per customer and day")
    parser.add_argument("--lease-s", type=float, default=defaults.lease_s, help="worker lease length")
    parser.add_argument("--timeout-s", type=float, default=defaults.timeout_s, help="then the rest are lost")
    parser.add_argument(
        "--deny-rate", type=float, default=defaults.deny_rate, help="share of refunds the operator denies"
    )
    parser.add_argument(
        "--latency-s", type=float, default=defaults.latency_s, help="each provider answer's base latency"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (worker logs, databases)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.workers < 1 or args.concurrency < 1 or args.principals < 1:
        parser.error("--runs, --workers, --concurrency and --principals must be >= 1")
    if args.kill_every_s <= 0 or args.lease_s <= 0 or args.timeout_s <= 0:
        parser.error("--kill-every-s, --lease-s and --timeout-s must be > 0")
    if args.latency_s < 0:
        parser.error("--latency-s must be >= 0")
    if not 0 <= args.deny_rate <= 1:
        parser.error("--deny-rate must be from 0 to 1")
    options = Options(
        runs=args.runs,
        workers=args.workers,
        concurrency=args.concurrency,
        kill_every_s=args.kill_every_s,
        seed=args.seed,
        db=args.db,
        redis=args.redis,
        principals=args.principals,
        cost_limit_usd=args.cost_limit_usd,
        lease_s=args.lease_s,
        timeout_s=args.timeout_s,
        deny_rate=args.deny_rate,
        latency_s=args.latency_s,
    )
    return options, args.json, args.keep


def run(options: Options, *, keep: bool = False) -> dict[str, Any]:
    """Run the gauntlet in a temp dir (removed afterwards unless `keep`); return the report."""
    workdir = Path(tempfile.mkdtemp(prefix="tether-gauntlet-"))
    try:
        report = asyncio.run(gauntlet(options, workdir))
    finally:
        if keep:
            print(f"gauntlet: kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    options, as_json, keep = parse(argv)
    try:
        report = run(options, keep=keep)
    except (GauntletError, TetherError) as exc:  # e.g. a --db URL no store accepts
        print(f"gauntlet: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        gauntlet_report.print_report(report)
    return 1 if report["violations"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
