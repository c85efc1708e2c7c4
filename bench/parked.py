"""Runs parked for a person: worker memory with 10,000 of them parked, and resume latency after an answer.

The claim: runs waiting for a person (`waiting_human`, an approval in the inbox) cost no worker memory,
and each resumes within 100 ms (p95) of its answer. One real SQLite file (WAL) in a temp dir, real worker
processes, the agent `bench/parked_agent.py` (one tool call that always needs approval).

Phase 1 (memory): `--runs` runs are enqueued and one `tether worker` process (the CLI) drives them all to
`waiting_human`; its RSS (`/proc/PID/status`) is read idle, after `--baseline-runs` parked, after a
tenth, half and all of them, with its idle CPU and the database size at each point.

Phase 2 (resume): `--answers` parked runs are approved one by one from this process
(`Runtime.answer(id, "approve")`) every `--pace-ms`, interleaved between two workers on two copies of
the database: the `tether worker` CLI as it comes (its default `--poll-s`) and the same `Worker` class
run with `poll_s=--fast-poll-s`. Latency is from the
`escalation.answered` event (written in the answer's transaction) to the first event the worker writes
after it (`run.resumed`); both are millisecond timestamps from the same clock. Then `--burst` runs
answered back to back on each worker give the resume throughput.

    .venv/bin/python bench/parked.py [--runs N] [--answers N] [--pace-ms MS] [--fast-poll-s S]
        [--burst N] [--breaker-window-s S] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import inspect
import json
import os
import platform
import random
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import parked_agent
from tether import RunStatus, Runtime
from tether.runtime.runner import EXPIRY_CHECK_S, Worker
from tether.types import EventKind

BENCH_DIR = Path(__file__).resolve().parent
TARGET = "parked_agent:agent"
# `tether worker` without --poll-s: the Worker's default poll interval.
CLI_POLL_S = float(inspect.signature(Worker.__init__).parameters["poll_s"].default)
TARGET_P95_MS = 100.0
# "No worker memory": from a tenth of the runs parked to all of them (by then SQLite's page cache, at most
# 2,000 KiB a connection by default, has filled), RSS grows by under 1 KiB per parked run. A worker that
# kept a parked run (its state, its 4 events: 3 KB on disk) would grow by several KiB per run.
TARGET_BYTES_PER_PARKED = 1024.0
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --- the worker processes and what /proc says about them ---


@dataclass
class WorkerProcess:
    name: str
    what: str
    poll_s: float
    db_path: Path
    tool_log: Path
    process: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-2000:]
        return ""

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(
                f"worker {self.name} exited with {self.process.returncode}:\n{self.stderr_tail()}"
            )


def start_worker(name: str, db_path: Path, workdir: Path, poll_s: float | None) -> WorkerProcess:
    """`python -m tether worker --db …` (poll_s None), or this file's `--worker-child` with `poll_s`."""
    url = f"sqlite:///{db_path}"
    if poll_s is None:
        command = [sys.executable, "-m", "tether", "worker", "--db", url]
        what = f"`tether worker` CLI (python -m tether worker): Worker(poll_s={CLI_POLL_S:g}), concurrency 4"
    else:
        command = [sys.executable, __file__, "--worker-child", "--db", url, "--poll-s", str(poll_s)]
        what = (
            f"the CLI's code with Worker(poll_s={poll_s:g}), concurrency 4 (bench/parked.py --worker-child)"
        )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}  # only what we set
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
    tool_log = workdir / f"{name}-tool-calls.log"
    env[parked_agent.TOOL_LOG_ENV] = str(tool_log)
    stderr_path = workdir / f"{name}-stderr.txt"
    with stderr_path.open("wb") as stderr:
        # cwd: the temp dir, so the only ./tether.toml read is the one --breaker-window-s writes
        process = subprocess.Popen(command, env=env, cwd=workdir, stdout=stderr, stderr=stderr)
    return WorkerProcess(
        name, what, CLI_POLL_S if poll_s is None else poll_s, db_path, tool_log, process, stderr_path
    )


def stop_worker(worker: WorkerProcess) -> None:
    if worker.process.poll() is None:
        worker.process.send_signal(signal.SIGTERM)  # graceful: in-flight runs finish
        try:
            worker.process.wait(30)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            worker.process.wait(10)


def proc_memory(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon and RssFile of a process, in bytes."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                values[key] = int(rest.split()[0]) * 1024
    return values


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (clock-tick resolution, 10 ms)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def wait_idle(worker: WorkerProcess, timeout_s: float = 60.0) -> None:
    """Until the worker used under 4% of a core over half a second (it only polls)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        worker.check_alive()
        before = proc_cpu_s(worker.process.pid)
        await asyncio.sleep(0.5)
        if proc_cpu_s(worker.process.pid) - before < 0.02:
            return
    raise RuntimeError(f"worker {worker.name} did not go idle within {timeout_s:g} s")


async def idle_cpu_ms_per_s(worker: WorkerProcess, window_s: float) -> float:
    before = proc_cpu_s(worker.process.pid)
    await asyncio.sleep(window_s)
    return (proc_cpu_s(worker.process.pid) - before) * 1000 / window_s


# --- the database ---


def db_size(path: Path) -> dict[str, int]:
    """Checkpoint the WAL into the file (TRUNCATE, retried while a reader blocks it), then its size."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        for _ in range(50):
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                break
            time.sleep(0.02)
        runs, events, escalations = (
            db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("runs", "run_events", "escalations")
        )
    wal = path.with_name(path.name + "-wal")
    return {
        "file_bytes": path.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "runs": runs,
        "events": events,
        "escalations": escalations,
    }


async def expiry_scan_ms(runtime: Runtime) -> float:
    """What a worker's check for expired questions (every EXPIRY_CHECK_S) costs: the same query, timed
    here on this process's connection (median of 5). It reads every open question."""
    now_ms = time.time_ns() // 1_000_000
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        await runtime.store.expired_escalations(now_ms)
        samples.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(samples), 2)


def copy_db(source: Path, target: Path) -> None:
    """A consistent copy with SQLite's backup API (the source's worker keeps running)."""
    with (
        contextlib.closing(sqlite3.connect(source, timeout=10)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def leased_parked(path: Path) -> int:
    """Parked runs that still name a lease owner (a worker holding them): must be 0."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM runs WHERE status = 'waiting_human' AND "
            "(lease_owner IS NOT NULL OR lease_expires_at_epoch_ms IS NOT NULL)"
        ).fetchone()
    return int(count)


def sqlite_cache_size(path: Path) -> int:
    """The default page cache a connection gets (negative: KiB); the worker's store does not change it."""
    with contextlib.closing(sqlite3.connect(path, timeout=10)) as db:
        return int(db.execute("PRAGMA cache_size").fetchone()[0])


def tool_calls_by_run(log: Path) -> Counter[str]:
    if not log.exists():
        return Counter()
    return Counter(line for line in log.read_text(encoding="utf-8").splitlines() if line)


async def wait_status(
    runtime: Runtime, worker: WorkerProcess, status: RunStatus, count: int, timeout_s: float
) -> dict[RunStatus, int]:
    """Until `count` runs have `status`; fails at once if a run ended any other way."""
    deadline = time.monotonic() + timeout_s
    unexpected = {RunStatus.FAILED, RunStatus.ESCALATED, RunStatus.DEAD_LETTERED, RunStatus.CANCELLED}
    while True:
        counts = await runtime.store.count_by_status()
        bad = {str(s): n for s, n in counts.items() if s in unexpected and n}
        if bad:
            raise RuntimeError(f"worker {worker.name}: runs ended unexpectedly: {bad}")
        if counts[status] >= count:
            return counts
        worker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"worker {worker.name}: {counts[status]} of {count} runs {status} after {timeout_s:g} s"
            )
        await asyncio.sleep(0.05)


# --- phase 1: memory ---


async def enqueue(runtime: Runtime, first: int, count: int) -> None:
    for index in range(first, first + count):
        await runtime.start(parked_agent.agent, f"Refund order A-{index}, please.", target=TARGET)


def per_run(first: dict[str, Any], last: dict[str, Any], key: str) -> float:
    """Growth of an RSS figure (or of the db file) per run parked between two points."""
    where = "db" if key == "file_bytes" else "memory"
    runs = last["parked"] - first["parked"]
    return (last[where][key] - first[where][key]) / runs if runs else 0.0


async def phase_memory(args: argparse.Namespace, workdir: Path, worker: WorkerProcess) -> dict[str, Any]:
    # The baseline, a tenth, a half and all of them: RSS should stay flat after the baseline.
    stages = sorted(
        {
            args.baseline_runs,
            *(n for n in (args.runs // 10, args.runs // 2) if n > args.baseline_runs),
            args.runs,
        }
    )
    points: list[dict[str, Any]] = []
    async with Runtime(f"sqlite:///{worker.db_path}") as runtime:
        await wait_idle(worker)
        points.append(
            {
                "parked": 0,
                "memory": proc_memory(worker.process.pid),
                "idle_cpu_ms_per_s": round(await idle_cpu_ms_per_s(worker, args.idle_window_s), 2),
                "db": db_size(worker.db_path),
                "expiry_scan_ms": await expiry_scan_ms(runtime),
            }
        )
        enqueued = 0
        for stage in stages:
            t0 = time.perf_counter()
            await enqueue(runtime, enqueued, stage - enqueued)
            enqueue_s = time.perf_counter() - t0
            counts = await wait_status(
                runtime, worker, RunStatus.WAITING_HUMAN, stage, max(120.0, (stage - enqueued) * 0.05)
            )
            drive_s = time.perf_counter() - t0
            driven = stage - enqueued
            enqueued = stage
            if counts[RunStatus.QUEUED] or counts[RunStatus.RUNNING] or counts[RunStatus.SUCCEEDED]:
                raise RuntimeError(f"after parking {stage}: unexpected counts {counts}")
            await wait_idle(worker)
            points.append(
                {
                    "parked": stage,
                    "driven": driven,
                    "enqueue_s": round(enqueue_s, 2),
                    "drive_s": round(drive_s, 2),
                    "runs_per_s": round(driven / drive_s, 1),
                    "memory": proc_memory(worker.process.pid),
                    "idle_cpu_ms_per_s": round(await idle_cpu_ms_per_s(worker, args.idle_window_s), 2),
                    "db": db_size(worker.db_path),
                    "expiry_scan_ms": await expiry_scan_ms(runtime),
                }
            )
        open_questions = len(await runtime.store.list_escalations(status="open", limit=args.runs + 1))
    leased = leased_parked(worker.db_path)
    ran = sum(tool_calls_by_run(worker.tool_log).values())
    if open_questions != args.runs or leased or ran:
        raise RuntimeError(
            f"after parking: {open_questions} open questions (want {args.runs}), {leased} parked runs "
            f"with a lease, {ran} tool calls before any approval (want 0)"
        )
    base = next(p for p in points if p["parked"] == args.baseline_runs)
    tenth = next(p for p in points if p["parked"] >= max(args.runs // 10, args.baseline_runs))
    last = points[-1]
    driven = [p for p in points if "driven" in p]
    drive_s = sum(p["drive_s"] for p in driven)
    return {
        "points": points,
        "rss_growth_bytes": last["memory"]["VmRSS"] - base["memory"]["VmRSS"],
        "rss_bytes_per_parked_run": round(per_run(base, last, "VmRSS"), 1),
        "rss_bytes_per_parked_run_after_tenth": round(per_run(tenth, last, "VmRSS"), 1),
        "tenth": tenth["parked"],
        "sqlite_cache_size": sqlite_cache_size(worker.db_path),
        "db_bytes_per_parked_run": round(per_run(base, last, "file_bytes"), 1),
        "db_bytes_per_run_total": round(last["db"]["file_bytes"] / args.runs, 1),
        "events_per_parked_run": round(last["db"]["events"] / args.runs, 2),
        "drive": {
            "runs": args.runs,
            "seconds": round(drive_s, 1),
            "runs_per_s": round(args.runs / drive_s, 1),
            "enqueue_s": round(sum(p["enqueue_s"] for p in driven), 1),
        },
        "checks": {
            "waiting_human": args.runs,
            "open_questions": open_questions,
            "parked_runs_holding_a_lease": leased,
            "tool_calls_before_approval": ran,
        },
    }


# --- phase 2: resume latency ---


@dataclass
class Answered:
    escalation_id: str
    run_id: str
    answer_us: float  # how long Runtime.answer took in this process
    burst: bool = False


@dataclass
class Side:
    worker: WorkerProcess
    runtime: Runtime
    answered: list[Answered] = field(default_factory=list)


async def answer(side: Side, escalation_id: str, run_id: str, *, burst: bool = False) -> None:
    start = time.perf_counter_ns()
    _, applied = await side.runtime.answer(escalation_id, "approve", by="bench")
    elapsed_us = (time.perf_counter_ns() - start) / 1000
    if not applied:
        raise RuntimeError(f"{side.worker.name}: the answer to {escalation_id} was not applied")
    side.answered.append(Answered(escalation_id, run_id, elapsed_us, burst))


async def resume_figures(side: Side, runs: int) -> dict[str, Any]:
    """Latencies from the event log of every answered run, and the checks that each ran exactly once."""
    counts = await side.runtime.store.count_by_status()
    tool_calls = tool_calls_by_run(side.worker.tool_log)
    latency_ms: list[float] = []
    completed_ms: list[float] = []
    service_ms: list[float] = []
    next_kinds: Counter[str] = Counter()
    problems: list[str] = []
    steady_times: list[tuple[int, int, int]] = []  # (answered, resumed, completed) epoch ms
    burst_times: list[tuple[int, int, int]] = []
    for item in side.answered:
        run = await side.runtime.store.get_run(item.run_id)
        events = await side.runtime.store.load_events(item.run_id)
        answered_at = [i for i, e in enumerate(events) if e.kind == EventKind.ESCALATION_ANSWERED]
        done = [e for e in events if e.kind == EventKind.RUN_COMPLETED]
        results = [e for e in events if e.kind == EventKind.TOOL_RESULT]
        if (
            run.status != RunStatus.SUCCEEDED
            or run.output != parked_agent.FINAL
            or len(answered_at) != 1
            or len(done) != 1
            or len(results) != 1
            or not results[0].data.get("ok")
            or tool_calls[item.run_id] != 1
        ):
            problems.append(
                f"{item.run_id}: {run.status}, {len(done)} run.completed, {len(results)} tool.result, "
                f"tool ran {tool_calls[item.run_id]}x"
            )
            continue
        index = answered_at[0]
        t_answer = events[index].created_at_epoch_ms
        following = events[index + 1]
        next_kinds[following.kind] += 1
        times = (t_answer, following.created_at_epoch_ms, done[0].created_at_epoch_ms)
        if item.burst:
            burst_times.append(times)
            continue
        steady_times.append(times)
        latency_ms.append(times[1] - times[0])
        completed_ms.append(times[2] - times[0])
        service_ms.append(times[2] - times[1])
    unanswered = runs - len(side.answered)
    if counts[RunStatus.WAITING_HUMAN] != unanswered:
        problems.append(f"{counts[RunStatus.WAITING_HUMAN]} runs still waiting, want {unanswered}")
    answered_ids = {a.run_id for a in side.answered}
    stray = sum(n for run_id, n in tool_calls.items() if run_id not in answered_ids)
    if stray:
        problems.append(f"the tool ran {stray} times for runs nobody approved")
    if problems:
        raise RuntimeError(f"{side.worker.name}: {len(problems)} problem(s): " + "; ".join(problems[:5]))
    steady = [a for a in side.answered if not a.burst]
    bursts = [a for a in side.answered if a.burst]
    span_s = max(1e-3, (max(t[2] for t in steady_times) - min(t[0] for t in steady_times)) / 1000)
    result: dict[str, Any] = {
        "worker": side.worker.what,
        "poll_s": side.worker.poll_s,
        "answers": len(steady),
        "resume_ms": stats(latency_ms),
        "answer_to_completed_ms": stats(completed_ms),
        "resumed_to_completed_ms_p50": round(statistics.median(service_ms), 1),
        "first_event_after_answer": dict(next_kinds),
        "answer_call_us_p50": round(statistics.median(a.answer_us for a in steady), 1),
        "steady_completed_per_s": round(len(steady) / span_s, 1),
        "memory_after": proc_memory(side.worker.process.pid),
    }
    if bursts:
        first_answer = min(t[0] for t in burst_times)
        first_resumed = min(t[1] for t in burst_times)
        last_done = max(t[2] for t in burst_times)
        result["burst"] = {
            "runs": len(bursts),
            "answering_s": round(sum(a.answer_us for a in bursts) / 1e6, 3),
            "first_answer_to_first_resumed_ms": first_resumed - first_answer,
            "first_answer_to_last_completed_s": round((last_done - first_answer) / 1000, 3),
            "resumed_per_s": round(len(bursts) * 1000 / max(1, last_done - first_resumed), 1),
        }
    return result


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {
        "p50": round(cuts[49], 1),
        "p95": round(cuts[94], 1),
        "p99": round(cuts[98], 1),
        "max": round(max(values), 1),
        "mean": round(statistics.fmean(values), 1),
    }


async def phase_resume(
    args: argparse.Namespace, workdir: Path, cli_worker: WorkerProcess
) -> tuple[dict[str, Any], float]:
    workers = [cli_worker]
    if args.fast_poll_s > 0:
        copy = workdir / "parked-copy.db"
        copy_db(cli_worker.db_path, copy)
        workers.append(start_worker("fast-poll", copy, workdir, args.fast_poll_s))
    try:
        async with contextlib.AsyncExitStack() as stack:
            sides = [
                Side(w, await stack.enter_async_context(Runtime(f"sqlite:///{w.db_path}"))) for w in workers
            ]
            for side in sides:
                await wait_idle(side.worker)
            questions = await sides[0].runtime.store.list_escalations(status="open", limit=args.runs + 1)
            chosen = random.Random(args.seed).sample(questions, args.answers + args.burst)
            steady, burst = chosen[: args.answers], chosen[args.answers :]
            pace_s = args.pace_ms / 1000
            start = time.perf_counter()
            for index, question in enumerate(steady):
                shift = index % len(sides)  # rotate who is answered first in each tick
                for side in sides[shift:] + sides[:shift]:
                    await answer(side, question.id, question.run_id)
                delay = start + (index + 1) * pace_s - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            answering_s = time.perf_counter() - start
            for side in sides:
                await wait_status(side.runtime, side.worker, RunStatus.SUCCEEDED, len(steady), 120.0)
            for side in sides:  # one worker at a time, so they do not share the CPU
                for question in burst:
                    await answer(side, question.id, question.run_id, burst=True)
                await wait_status(side.runtime, side.worker, RunStatus.SUCCEEDED, len(chosen), 120.0)
            results = {s.worker.name: await resume_figures(s, args.runs) for s in sides}
    finally:
        for worker in workers[1:]:
            stop_worker(worker)
    return results, answering_s


# --- the child worker: the CLI's `worker` command with another poll interval ---


def worker_child(db_url: str, poll_s: float) -> int:
    from tether.config import load_settings, open_runtime
    from tether.runtime import Worker

    settings = load_settings(None, db=db_url)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with open_runtime(settings) as runtime:
            await Worker(runtime, concurrency=settings.concurrency, poll_s=poll_s).run(stop=stop)

    asyncio.run(go())
    return 0


# --- report ---


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def mib(value: float) -> str:
    return f"{value / 2**20:.1f} MiB"


def summarise(
    args: argparse.Namespace, memory: dict[str, Any], resume: dict[str, Any], answering_s: float
) -> dict[str, Any]:
    cli = resume["cli"]
    per_run = memory["rss_bytes_per_parked_run_after_tenth"]
    return {
        "command": shlex.join(sys.orig_argv),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "tether": version("tether"),
        "runs": args.runs,
        "baseline_runs": args.baseline_runs,
        "store": "one SQLite file (WAL, synchronous=NORMAL) in a temp dir; phase 2's second worker "
        "uses a copy of it",
        "agent": "bench/parked_agent.py: turn 0 calls refund (approval=True, always), turn 1 answers",
        "worker_settings": "tether's defaults (no tether.toml, no TETHER_* variables)"
        if args.breaker_window_s is None
        else f"tether.toml: [tether.breaker] window_s = {args.breaker_window_s:g}; otherwise defaults",
        "memory": memory,
        "resume": resume,
        "pace_ms": args.pace_ms,
        "idle_window_s": args.idle_window_s,
        "breaker_window_s": args.breaker_window_s,
        "answering_s": round(answering_s, 2),
        "clock": "escalation.answered and the next event's created_at_epoch_ms: one clock, 1 ms resolution",
        "targets": {
            "rss_per_parked_run": {
                "what": f"worker RSS grows < {TARGET_BYTES_PER_PARKED:g} bytes per parked run from "
                f"{memory['tenth']:,} to {args.runs:,} parked",
                "value": per_run,
                "met": per_run < TARGET_BYTES_PER_PARKED,
            },
            "resume_p95_ms": {
                "what": f"p95 answer -> resumed <= {TARGET_P95_MS:g} ms with `tether worker`",
                "value": cli["resume_ms"]["p95"],
                "met": cli["resume_ms"]["p95"] <= TARGET_P95_MS,
            },
        },
    }


def print_report(summary: dict[str, Any]) -> None:
    memory, resume = summary["memory"], summary["resume"]
    print(f"parked runs: {summary['runs']:,} runs waiting for a person, one worker; then answers")
    print(f"python {summary['python']} on {summary['platform']}; tether {summary['tether']}")
    print(f"command: {summary['command']}")
    print(f"store: {summary['store']}")
    print(f"agent: {summary['agent']}")
    print(f"worker settings: {summary['worker_settings']}")
    print()
    print("phase 1: memory of one `tether worker` process (python -m tether worker, concurrency 4)")
    header = (
        f"{'parked':>8} {'VmRSS':>10} {'VmHWM':>10} {'RssAnon':>10} {'idle CPU':>10} "
        f"{'db file':>10} {'events':>8} {'expiry scan':>12} {'drive':>18}"
    )
    print(header)
    print("-" * len(header))
    for point in memory["points"]:
        m, db = point["memory"], point["db"]
        drive = (
            f"{point['driven']:,} in {point['drive_s']:.1f} s" if "drive_s" in point else "(idle, no run yet)"
        )
        print(
            f"{point['parked']:>8,} {mib(m['VmRSS']):>10} {mib(m['VmHWM']):>10} {mib(m['RssAnon']):>10} "
            f"{point['idle_cpu_ms_per_s']:>6.1f} ms/s {mib(db['file_bytes']):>10} {db['events']:>8,} "
            f"{point['expiry_scan_ms']:>9.2f} ms {drive:>18}"
        )
    print(
        f"RSS growth from {summary['baseline_runs']} to {summary['runs']:,} parked: "
        f"{memory['rss_growth_bytes'] / 1024:+,.0f} KiB = {memory['rss_bytes_per_parked_run']:+.1f} bytes "
        f"per parked run; from {memory['tenth']:,} to {summary['runs']:,}: "
        f"{memory['rss_bytes_per_parked_run_after_tenth']:+.1f} bytes per parked run"
    )
    print(
        f"(SQLite's page cache, PRAGMA cache_size = {memory['sqlite_cache_size']} on the worker's one "
        "connection, fills as the file grows and then stays: a bounded cost, not one per run)"
    )
    if summary["breaker_window_s"] is None:
        print(
            "(so does the model's in-memory circuit breaker: one (time, ok) entry per model call of the last "
            "window_s = 60 s, bounded by the call rate, not by the runs parked; --breaker-window-s 1 "
            "takes it out)"
        )
    print(
        f"database: {memory['db_bytes_per_parked_run']:,.0f} bytes per parked run (growth), "
        f"{memory['db_bytes_per_run_total']:,.0f} bytes per run overall (file after a WAL checkpoint), "
        f"{memory['events_per_parked_run']:g} events per parked run"
    )
    drive = memory["drive"]
    print(
        f"drive: {drive['runs']:,} runs to waiting_human in {drive['seconds']:.1f} s by one worker, "
        f"{drive['runs_per_s']:,.0f} runs/s (enqueued meanwhile by this process, Runtime.start: "
        f"{drive['enqueue_s']:.1f} s in all)"
    )
    checks = memory["checks"]
    print(
        f"checks: {checks['waiting_human']:,} waiting_human, {checks['open_questions']:,} open questions, "
        f"{checks['parked_runs_holding_a_lease']} parked runs holding a lease, "
        f"{checks['tool_calls_before_approval']} tool calls before approval"
    )
    print(
        f"(idle CPU: the worker's user+system CPU over {summary['idle_window_s']:g} s once idle; it polls "
        f"for queued runs every {CLI_POLL_S:g} s and checks for expired questions every {EXPIRY_CHECK_S:g} s)"
    )
    print()
    print(
        f"phase 2: resume after an answer: {next(iter(resume.values()))['answers']:,} approvals per worker, "
        f"one per worker every {summary['pace_ms']:g} ms, interleaved ({summary['answering_s']:.1f} s)"
    )
    print(f"latency: {summary['clock']}")
    header = (
        f"{'worker':<10} {'poll':>6} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} {'mean':>7}  "
        f"{'to completed p50/p95':>21}"
    )
    print(header)
    print("-" * len(header))
    for name, r in resume.items():
        lat, done = r["resume_ms"], r["answer_to_completed_ms"]
        print(
            f"{name:<10} {r['poll_s']:>5g}s {lat['p50']:>7.1f} {lat['p95']:>7.1f} {lat['p99']:>7.1f} "
            f"{lat['max']:>7.1f} {lat['mean']:>7.1f}  {done['p50']:>10.1f} / {done['p95']:<9.1f}"
        )
    print("(ms from the answer to the worker's first event for the run, run.resumed)")
    for name, r in resume.items():
        print(f"  {name}: {r['worker']}")
        print(
            f"    resumed -> completed p50 {r['resumed_to_completed_ms_p50']:.1f} ms; Runtime.answer call "
            f"p50 {r['answer_call_us_p50']:.0f} µs here; steady {r['steady_completed_per_s']:.1f} runs "
            f"completed/s; RSS after {mib(r['memory_after']['VmRSS'])}"
        )
        if "burst" in r:
            b = r["burst"]
            print(
                f"    burst: {b['runs']} answered back to back in {b['answering_s']:.2f} s; first resumed "
                f"{b['first_answer_to_first_resumed_ms']} ms after the first answer, all completed "
                f"{b['first_answer_to_last_completed_s']:.2f} s after it; drained at "
                f"{b['resumed_per_s']:,.0f} runs/s (first resumed to last completed)"
            )
    print(
        "checks: every answered run succeeded once (one run.completed, one ok tool.result), the tool ran "
        "exactly once per approved run (its own log, written by the worker) and never for the others, "
        "which are still waiting"
    )
    print()
    print("targets (printed, not asserted):")
    for target in summary["targets"].values():
        verdict = "met" if target["met"] else "NOT met"
        print(f"  {target['what']}: {target['value']:g}  ({verdict})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs parked (default 10,000)")
    parser.add_argument("--baseline-runs", type=int, default=100, help="the RSS baseline (default 100)")
    parser.add_argument(
        "--answers", type=int, default=1_000, help="approvals timed per worker (default 1,000)"
    )
    parser.add_argument(
        "--pace-ms", type=float, default=20.0, help="one answer per worker every MS (default 20)"
    )
    parser.add_argument(
        "--burst", type=int, default=200, help="runs answered back to back per worker (default 200)"
    )
    parser.add_argument(
        "--fast-poll-s",
        type=float,
        default=0.01,
        help="poll interval of the second worker (default 0.01; 0 skips it)",
    )
    parser.add_argument(
        "--idle-window-s", type=float, default=EXPIRY_CHECK_S, help="idle CPU window (default 5)"
    )
    parser.add_argument(
        "--breaker-window-s",
        type=float,
        help="the workers' [tether.breaker] window_s (default: tether's, 60 s); a control for memory",
    )
    parser.add_argument("--seed", type=int, default=7, help="which parked runs are answered")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--worker-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--poll-s", type=float, default=CLI_POLL_S, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_child:
        return worker_child(args.db, args.poll_s)
    if not Path("/proc/self/status").exists():
        parser.error("this bench reads /proc (Linux)")
    if args.runs <= args.baseline_runs or args.baseline_runs < 1:
        parser.error("--runs must exceed --baseline-runs, which must be >= 1")
    if args.answers < 1 or args.burst < 0 or args.answers + args.burst > args.runs:
        parser.error("need 1 <= --answers and --answers + --burst <= --runs")
    if args.pace_ms < 0 or args.fast_poll_s < 0 or args.idle_window_s <= 0:
        parser.error("--pace-ms and --fast-poll-s must be >= 0, --idle-window-s > 0")
    if args.breaker_window_s is not None and not args.breaker_window_s > 0:
        parser.error("--breaker-window-s must be > 0")
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        if args.breaker_window_s is not None:  # read by both workers (their cwd is tmp)
            config = f"[tether.breaker]\nwindow_s = {args.breaker_window_s!r}\n"
            (Path(tmp) / "tether.toml").write_text(config, encoding="utf-8")
        with running_cli_worker(Path(tmp)) as cli:
            memory = asyncio.run(phase_memory(args, Path(tmp), cli))
            resume, answering_s = asyncio.run(phase_resume(args, Path(tmp), cli))
    summary = summarise(args, memory, resume, answering_s)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)
    return 0


@contextlib.contextmanager
def running_cli_worker(workdir: Path) -> Iterator[WorkerProcess]:
    worker = start_worker("cli", workdir / "parked.db", workdir, None)
    try:
        yield worker
    finally:
        stop_worker(worker)


if __name__ == "__main__":
    raise SystemExit(main())
