"""The HTTP API served by `tether serve`: requests/s and latency of its routes, and answer → resume latency.

`tether serve` runs as a real subprocess (uvicorn, one process; SQLite in WAL in a temp dir) with the
agents of `bench/api_agent.py` and one tenant's API key. This process is the client, over loopback only:
a bounded load generator, `--concurrency` senders each with one request in flight, sending `--requests`
requests per batch. Each route is measured against a floor, `GET /healthz` (no key, one store read), on
the same server, in `--rounds` rounds of one batch of each, the first of the two alternating, so both see
the same machine state. Per batch: requests/s, each request's latency (`perf_counter_ns`) and the CPU
per request of the server (`/proc/PID/stat`) and of this process.

The load generator's connections are written by hand (keep-alive HTTP/1.1, one per sender): an
`httpx.AsyncClient` costs about 1 ms of client CPU per request at 16 in flight, more than the server's
own cost, so on 2 cores it measured httpx rather than the server. `--client httpx` uses one shared
`httpx.AsyncClient` (`trust_env=False`) instead, as setup and phase 3 always do.

1. Starting runs: `POST /api/runs` on a server with `--workers 0` (the runs stay queued). `/healthz`
   counts the runs by status, a scan of an index over every run, so this floor slows as runs pile up.
2. Reading events: `GET /api/runs/{id}/events` of `--event-runs` finished runs (`--workers 1`).
3. Answer → resume (`--workers 1`): `--answers` runs parked in the inbox are approved one at a time
   (`POST /api/inbox/{id}/answer`), each after a random pause of 0-100 ms so the answers do not lock
   onto the worker's poll cycle; then `GET /api/runs/{id}` every `--poll-ms` until it has succeeded.
   Also read from each run's event log: `escalation.answered` → `run.resumed` and → `run.completed`.

    .venv/bin/python bench/api.py [--requests N] [--concurrency N] [--rounds N] [--warmup N]
        [--event-runs N] [--answers N] [--poll-ms MS] [--client raw|httpx] [--seed N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import random
import re
import secrets
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from tether.runtime.runner import Worker

BENCH_DIR = Path(__file__).resolve().parent
LOOKUP, DESK = "api_agent:lookup", "api_agent:desk"
FINAL = "Done."  # api_agent.FINAL; not imported, so the agents are only ever loaded by the server
# The Worker's default poll interval: `tether serve` has no flag for it, and nothing wakes a worker when
# an answer lands, so a resume waits for the next poll.
WORKER_POLL_S = float(inspect.signature(Worker.__init__).parameters["poll_s"].default)
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
READY = re.compile(r"tether API at (http://127\.0\.0\.1:\d+)/api")
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)
CONNECTION_CLOSE = re.compile(rb"\r\nconnection: *close", re.IGNORECASE)
JsonDict = dict[str, Any]
Request = Callable[["Connection", int], Awaitable[None]]


# --- the server subprocess ---


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]

    def cpu_s(self) -> float:
        """The server's CPU (user + system, all threads) from /proc; 0 where there is none."""
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def tether_serve(workdir: Path, name: str, workers: int, api_keys: str) -> Iterator[Server]:
    """`tether serve` on a free loopback port with its own database; stopped by SIGTERM, then killed."""
    cli = Path(sys.executable).with_name("tether")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "tether"]
    command += ["serve", "--host", "127.0.0.1", "--port", "0", "--workers", str(workers)]
    command += ["--db", f"sqlite:///{workdir / f'{name}.db'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}  # tether's defaults
    env |= {"TETHER_API_KEYS": api_keys, "TETHER_API_AGENTS": f"{LOOKUP},{DESK}"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH")) if p)
    stderr_path = workdir / f"{name}.stderr"
    with stderr_path.open("wb") as stderr:
        # The temp dir as working directory: no stray tether.toml is read; bench/ comes from PYTHONPATH.
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=stderr)

    def log() -> str:
        return stderr_path.read_text(encoding="utf-8", errors="replace")

    try:
        deadline = time.monotonic() + 30
        while not (found := READY.search(log())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tether serve did not start:\n{log()[-2000:]}")
            time.sleep(0.05)
        try:
            yield Server(found.group(1), process)
        except Exception:
            print(f"tether serve ({name}) logged:\n{log()[-2000:]}", file=sys.stderr)
            raise
        if process.poll() is not None:
            raise RuntimeError(f"tether serve exited early:\n{log()[-2000:]}")
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


# --- clients: `call` answers (status, decoded JSON) whichever carries the request ---


class Connection(Protocol):
    async def call(
        self, method: str, path: str, body: JsonDict | None = None, *, keyed: bool = True
    ) -> tuple[int, Any]: ...


class HttpxConnection:
    """A request through a shared `httpx.AsyncClient` (its pool holds the connections)."""

    def __init__(self, http: httpx.AsyncClient, secret: str) -> None:
        self.http, self.auth = http, {"Authorization": f"Bearer {secret}"}

    async def call(
        self, method: str, path: str, body: JsonDict | None = None, *, keyed: bool = True
    ) -> tuple[int, Any]:
        response = await self.http.request(method, path, json=body, headers=self.auth if keyed else None)
        return response.status_code, response.json()


class RawConnection:
    """One keep-alive HTTP/1.1 connection, the request written and the answer read by hand: about 0.05 ms
    of client CPU per request where httpx spends about 1 ms (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, secret: str):
        self.reader, self.writer = reader, writer
        self.host, self.auth = host, f"Authorization: Bearer {secret}\r\n"

    @classmethod
    async def open(cls, url: str, secret: str) -> RawConnection:
        host = url.removeprefix("http://")
        address, port = host.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(address, int(port))
        return cls(reader, writer, host, secret)

    async def call(
        self, method: str, path: str, body: JsonDict | None = None, *, keyed: bool = True
    ) -> tuple[int, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        auth = self.auth if keyed else ""
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        self.writer.write(head.encode() + payload)
        answer = await self.reader.readuntil(b"\r\n\r\n")
        length = CONTENT_LENGTH.search(answer)
        if length is None or CONNECTION_CLOSE.search(answer):
            raise RuntimeError(f"{method} {path}: an answer this client cannot keep alive: {answer!r}")
        return int(answer.split(b" ", 2)[1]), json.loads(await self.reader.readexactly(int(length[1])))

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def httpx_client(server: Server, secret: str, concurrency: int = 1) -> AsyncIterator[HttpxConnection]:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=30.0, trust_env=False) as http:
        yield HttpxConnection(http, secret)


@contextlib.asynccontextmanager
async def load_connections(server: Server, secret: str, args: Any) -> AsyncIterator[list[Connection]]:
    """One connection per sender: `--concurrency` raw ones, or one httpx client shared by all senders."""
    if args.client == "httpx":
        async with httpx_client(server, secret, args.concurrency) as shared:
            yield [shared] * args.concurrency
        return
    raws = [await RawConnection.open(server.url, secret) for _ in range(args.concurrency)]
    try:
        yield list(raws)
    finally:
        for raw in raws:
            await raw.close()


async def expect(
    conn: Connection, method: str, path: str, status: int, body: JsonDict | None = None, *, keyed: bool = True
) -> Any:
    got, data = await conn.call(method, path, body, keyed=keyed)
    if got != status:
        raise RuntimeError(f"{method} {path}: {got} {str(data)[:300]}")
    return data


# --- the load generator ---


@dataclass
class Route:
    name: str
    request: Request
    latencies_ms: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # requests/s per batch
    server_cpu_ms: list[float] = field(default_factory=list)  # per request, per batch
    client_cpu_ms: list[float] = field(default_factory=list)


async def batch(route: Route, conns: list[Connection], server: Server, count: int) -> None:
    """`count` requests, one sender per connection; latency per request, rate and CPU per batch."""
    next_index = iter(range(count))
    latencies: list[float] = []

    async def sender(conn: Connection) -> None:
        for index in next_index:  # one shared iterator: each index goes to exactly one sender
            started = time.perf_counter_ns()
            await route.request(conn, index)
            latencies.append((time.perf_counter_ns() - started) / 1e6)

    gc.collect()
    server_cpu0, client_cpu0, wall0 = server.cpu_s(), time.process_time(), time.perf_counter()
    await asyncio.gather(*(sender(conn) for conn in conns))
    wall = time.perf_counter() - wall0
    route.rates.append(count / wall)
    route.server_cpu_ms.append((server.cpu_s() - server_cpu0) * 1000 / count)
    route.client_cpu_ms.append((time.process_time() - client_cpu0) * 1000 / count)
    route.latencies_ms.extend(latencies)


async def interleave(pair: tuple[Route, Route], conns: list[Connection], server: Server, args: Any) -> None:
    """A warm-up batch of each, then `--rounds` rounds of one batch each, the first of the two alternating."""
    for route in pair if args.warmup else ():
        await batch(Route(route.name, route.request), conns, server, args.warmup)
    for round_index in range(args.rounds):
        for route in pair if round_index % 2 == 0 else pair[::-1]:
            await batch(route, conns, server, args.requests)


async def idle_cpu_ms_per_s(server: Server, window_s: float = 1.0) -> float:
    before = server.cpu_s()
    await asyncio.sleep(window_s)
    return round((server.cpu_s() - before) * 1000 / window_s, 1)


async def healthz(conn: Connection, index: int) -> None:
    if (await expect(conn, "GET", "/healthz", 200, keyed=False))["status"] != "ok":
        raise RuntimeError("/healthz is not ok")


async def start_run(conn: Connection, index: int) -> None:
    body = {"agent": LOOKUP, "input": f"Where is order A-{index}?", "principal": f"customer-{index % 50}"}
    if (await expect(conn, "POST", "/api/runs", 202, body))["status"] != "queued":
        raise RuntimeError("POST /api/runs did not queue the run")


# --- phases ---


_MAX_LISTED = 500  # the API's page limit: the check counts up to this many queued runs


async def start_runs_phase(server: Server, secret: str, args: Any) -> dict[str, Any]:
    """1: POST /api/runs against the floor, on a server without workers."""
    routes = (Route("POST /api/runs", start_run), Route("GET /healthz", healthz))
    async with httpx_client(server, secret) as http, load_connections(server, secret, args) as conns:
        idle = await idle_cpu_ms_per_s(server)
        await interleave(routes, conns, server, args)
        listed = await expect(http, "GET", f"/api/runs?status=queued&limit={_MAX_LISTED}", 200)
        queued = len(listed) if isinstance(listed, list) else -1
    expected = args.warmup + args.rounds * args.requests
    if queued != min(expected, _MAX_LISTED):
        raise RuntimeError(f"{queued} runs queued after {expected} were started")
    return {
        "routes": [summarise_route(r) for r in routes],
        "runs_queued_at_end": queued,
        "server_idle_cpu_ms_per_s": idle,
    }


async def wait_status(http: Connection, run_ids: list[str], wanted: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for run_id in run_ids:
        while (status := (await expect(http, "GET", f"/api/runs/{run_id}", 200))["status"]) != wanted:
            if time.monotonic() > deadline or status in {"failed", "cancelled", "dead_lettered"}:
                raise RuntimeError(f"run {run_id} is {status}, waiting for {wanted}")
            await asyncio.sleep(0.05)


async def start(http: Connection, agent: str, count: int) -> list[str]:
    return [
        (await expect(http, "POST", "/api/runs", 202, {"agent": agent, "input": f"order A-{i}"}))["run_id"]
        for i in range(count)
    ]


async def events_phase(server: Server, http: Connection, secret: str, args: Any) -> dict[str, Any]:
    """2: GET /api/runs/{id}/events on finished runs against the floor."""
    finished = await start(http, LOOKUP, args.event_runs)
    await wait_status(http, finished, "succeeded", timeout_s=120)
    first = await expect(http, "GET", f"/api/runs/{finished[0]}/events", 200)
    if first[-1]["kind"] != "run.completed":
        raise RuntimeError(f"a finished run's last event is {first[-1]['kind']}")
    events_per_run = len(first)

    async def read_events(conn: Connection, index: int) -> None:
        events = await expect(conn, "GET", f"/api/runs/{finished[index % len(finished)]}/events", 200)
        if len(events) != events_per_run:
            raise RuntimeError(f"a finished run has {len(events)} events, not {events_per_run}")

    routes = (Route("GET /api/runs/{id}/events", read_events), Route("GET /healthz", healthz))
    async with load_connections(server, secret, args) as conns:
        idle = await idle_cpu_ms_per_s(server)
        await interleave(routes, conns, server, args)
    return {
        "routes": [summarise_route(r) for r in routes],
        "events_per_run": events_per_run,
        "body_bytes": len(json.dumps(first)),
        "server_idle_cpu_ms_per_s": idle,
    }


async def answer_phase(http: Connection, args: Any) -> dict[str, Any]:
    """3: park `--answers` runs, then answer each and poll its run until it has succeeded."""
    run_ids = await start(http, DESK, args.answers)
    await wait_status(http, run_ids, "waiting_human", timeout_s=120)
    inbox = await expect(http, "GET", "/api/inbox?limit=500", 200)
    question = {q["run_id"]: q["id"] for q in inbox if q["status"] == "open"}
    if missing := [r for r in run_ids if r not in question]:
        raise RuntimeError(f"{len(missing)} parked runs have no open question")
    rng = random.Random(args.seed)
    answer_ms: list[float] = []
    resumed_ms: list[float] = []
    polls: list[int] = []
    poll_s = args.poll_ms / 1000
    for run_id in run_ids:
        await asyncio.sleep(rng.uniform(0, 2 * WORKER_POLL_S))  # no phase lock with the worker's poll
        sent = time.perf_counter()
        await expect(http, "POST", f"/api/inbox/{question[run_id]}/answer", 200, {"choice": "approve"})
        answered = time.perf_counter()
        answer_ms.append((answered - sent) * 1000)
        count = 0
        while True:
            count += 1
            run = await expect(http, "GET", f"/api/runs/{run_id}", 200)
            if run["status"] == "succeeded":
                resumed_ms.append((time.perf_counter() - answered) * 1000)
                break
            late = time.perf_counter() > answered + 10
            if run["status"] not in {"queued", "running", "waiting_human"} or late:
                raise RuntimeError(f"run {run_id} is {run['status']} after its answer")
            await asyncio.sleep(max(0.0, poll_s - (time.perf_counter() - answered) % poll_s))
        polls.append(count)
        if run["output"] != FINAL:
            raise RuntimeError(f"run {run_id} answered {run['output']!r}")
    to_resumed, to_completed = await event_log_latency(http, run_ids)
    return {
        "answers": len(run_ids),
        "answered_to_seen_succeeded_ms": distribution(resumed_ms),
        "answer_request_ms": distribution(answer_ms),
        "event_log_answered_to_resumed_ms": distribution(to_resumed),
        "event_log_answered_to_completed_ms": distribution(to_completed),
        "polls_per_answer_median": statistics.median(polls),
    }


async def event_log_latency(http: Connection, run_ids: list[str]) -> tuple[list[float], list[float]]:
    """From each run's log: `escalation.answered` to the next event (`run.resumed`) and to `run.completed`;
    whole milliseconds from the server's clock. Checks the tool ran once and the run completed once."""
    to_resumed, to_completed = [], []
    for run_id in run_ids:
        events = await expect(http, "GET", f"/api/runs/{run_id}/events", 200)
        kinds = [e["kind"] for e in events]
        if kinds.count("tool.result") != 1 or kinds.count("run.completed") != 1:
            raise RuntimeError(
                f"run {run_id}: {kinds.count('tool.result')} tool results, "
                f"{kinds.count('run.completed')} completions"
            )
        at = kinds.index("escalation.answered")
        if kinds[at + 1] != "run.resumed":
            raise RuntimeError(f"run {run_id}: {kinds[at + 1]} follows its answer, not run.resumed")
        answered = events[at]["created_at_epoch_ms"]
        to_resumed.append(events[at + 1]["created_at_epoch_ms"] - answered)
        to_completed.append(events[kinds.index("run.completed")]["created_at_epoch_ms"] - answered)
    return to_resumed, to_completed


# --- figures and report ---


def machine_busy_s() -> float:
    """CPU time every CPU spent not idle since boot (/proc/stat; 0 where there is none)."""
    try:
        ticks = [int(t) for t in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK  # user..steal, less idle and iowait


def own_cpu_s() -> float:
    """This process's CPU and that of its children it has waited for (the stopped servers)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def distribution(values: list[float]) -> dict[str, float]:
    return {
        "p50": round(percentile(values, 50), 2),
        "p95": round(percentile(values, 95), 2),
        "p99": round(percentile(values, 99), 2),
        "max": round(max(values), 2),
        "mean": round(statistics.fmean(values), 2),
    }


def summarise_route(route: Route) -> dict[str, Any]:
    return {
        "route": route.name,
        "requests_per_s_median": round(statistics.median(route.rates), 1),
        "requests_per_s_rounds": [round(r, 1) for r in route.rates],
        "p50_ms": round(percentile(route.latencies_ms, 50), 2),
        "p99_ms": round(percentile(route.latencies_ms, 99), 2),
        "server_cpu_ms_per_request": round(statistics.median(route.server_cpu_ms), 3),
        "server_cpu_ms_per_request_rounds": [round(c, 3) for c in route.server_cpu_ms],
        "client_cpu_ms_per_request": round(statistics.median(route.client_cpu_ms), 3),
    }


def print_table(summary: dict[str, Any]) -> None:
    a = summary["args"]
    print(
        f"tether serve HTTP API: {a['requests']:,} requests per batch, {a['concurrency']} in flight "
        f"({summary['client']}), {a['rounds']} rounds alternating route and floor after "
        f"{a['warmup']} warm-up requests each"
    )
    print(f"python {summary['python']} on {summary['platform']}")
    print(f"versions: {summary['versions']}")
    print(f"server: {summary['server']}")
    print(f"command: {summary['command']}")
    print()
    header = (
        f"{'route':<27} {'req/s':>6} {'per round':>17} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'srv CPU':>7} {'cli CPU':>7} {'x floor':>7} {'CPU x':>6}"
    )
    phases = (
        (
            f"1. starting runs ({summary['start_runs']['runs_queued_at_end']:,} queued at the end), "
            "--workers 0",
            summary["start_runs"],
        ),
        (
            f"2. reading events of finished runs ({summary['read_events']['events_per_run']} events, "
            f"{summary['read_events']['body_bytes']:,} B of JSON each), --workers 1",
            summary["read_events"],
        ),
    )
    for title, phase in phases:
        print(f"{title}; server idle: {phase['server_idle_cpu_ms_per_s']} ms CPU/s")
        print(header)
        print("-" * len(header))
        floor = phase["routes"][-1]
        for r in phase["routes"]:
            rounds = " ".join(f"{x:.0f}" for x in r["requests_per_s_rounds"])
            slower = floor["requests_per_s_median"] / r["requests_per_s_median"]
            costlier = r["server_cpu_ms_per_request"] / floor["server_cpu_ms_per_request"]
            print(
                f"{r['route']:<27} {r['requests_per_s_median']:>6.0f} {rounds:>17} {r['p50_ms']:>7.2f} "
                f"{r['p99_ms']:>7.2f} {r['server_cpu_ms_per_request']:>7.3f} "
                f"{r['client_cpu_ms_per_request']:>7.3f} {slower:>6.2f}x {costlier:>5.2f}x"
            )
        print()
    print("req/s: median of the rounds (each round's after it); p50/p99 over every request of the rounds;")
    print("srv/cli CPU: ms per request, median of the rounds, of the server process (/proc, all threads,")
    print("its idle work included; /proc counts 10 ms ticks) and of this process;")
    print("x floor: floor req/s / route req/s; CPU x: route srv CPU / floor srv CPU")
    print()
    r = summary["answer_to_resume"]
    print(f"3. answer -> run resumed: {r['answers']} parked runs answered one at a time, --workers 1")
    header = f"{'ms':<46} {'p50':>6} {'p95':>6} {'p99':>6} {'max':>6} {'mean':>6}"
    print(header)
    print("-" * len(header))
    rows = (
        (f"answered -> seen succeeded (GET every {a['poll_ms']:g} ms)", r["answered_to_seen_succeeded_ms"]),
        ("event log: escalation.answered -> run.resumed", r["event_log_answered_to_resumed_ms"]),
        ("event log: escalation.answered -> run.completed", r["event_log_answered_to_completed_ms"]),
        ("POST /api/inbox/{id}/answer itself", r["answer_request_ms"]),
    )
    for name, d in rows:
        figures = " ".join(f"{d[k]:>6.1f}" for k in ("p50", "p95", "p99", "max", "mean"))
        print(f"{name:<46} {figures}")
    poll_ms = WORKER_POLL_S * 1000
    print(
        "'answered': when the answer request returned; event-log figures: whole ms of the server's clock.\n"
        f"Bound: an idle worker polls the queue every {poll_ms:.0f} ms (Worker poll_s; tether serve has no "
        "flag for it)\nand nothing wakes it when an answer lands, so a resume waits 0-"
        f"{poll_ms:.0f} ms, evenly spread: about {poll_ms / 2:.0f} ms at p50\n"
        f"and {poll_ms * 0.95:.0f} ms at p95, plus the few ms the rest of the run takes."
    )
    print()
    print(f"verified: {summary['verified']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per measured batch (2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (16)")
    parser.add_argument("--rounds", type=int, default=3, help="measured batches of each route (3)")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests of each route (200)")
    parser.add_argument("--event-runs", type=int, default=200, help="finished runs whose events are read")
    parser.add_argument("--answers", type=int, default=100, help="parked runs answered (100; <= 500)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="GET /api/runs/{id} interval (5)")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="load generator's HTTP client (raw)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the pauses between answers")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    sizes = (args.requests, args.concurrency, args.rounds, args.event_runs, args.answers)
    if min(sizes) < 1 or args.warmup < 0 or args.answers > 500 or args.poll_ms <= 0:
        parser.error("sizes must be >= 1, --warmup >= 0, --answers <= 500 (one inbox page), --poll-ms > 0")
    secret = f"bench-{secrets.token_hex(16)}"
    # A tenant's key, as a client holds one: the run routes filter by tenant.
    api_keys = f"bench:runs:read+runs:write+inbox:answer:{secret}"

    async def one_worker(server: Server) -> tuple[dict[str, Any], dict[str, Any]]:
        async with httpx_client(server, secret) as http:
            return await events_phase(server, http, secret, args), await answer_phase(http, args)

    busy0, own0, wall0 = machine_busy_s(), own_cpu_s(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tether-bench-api-") as tmp:
        workdir = Path(tmp)
        with tether_serve(workdir, "api-only", 0, api_keys) as server:
            start_runs = asyncio.run(start_runs_phase(server, secret, args))
        with tether_serve(workdir, "one-worker", 1, api_keys) as server:
            read_events, answers = asyncio.run(one_worker(server))
    # Everyone else's CPU while the bench ran: the servers were waited for, so they count as ours.
    others = ((machine_busy_s() - busy0) - (own_cpu_s() - own0)) / (time.monotonic() - wall0)
    has = importlib.util.find_spec
    summary = {
        "command": shlex.join(sys.orig_argv),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, shared by client "
        f"and server; other processes used {max(others, 0.0):.2f} CPUs on average meanwhile",
        "versions": ", ".join(
            f"{p} {importlib.metadata.version(p)}" for p in ("tether", "uvicorn", "fastapi", "httpx")
        ),
        "server": "`tether serve` subprocess: uvicorn, one process, "
        f"{'httptools' if has('httptools') else 'h11'} parser, {'uvloop' if has('uvloop') else 'asyncio'} "
        "loop; SQLite (WAL) in a temp dir; a tenant's API key",
        "client": "one hand-written keep-alive HTTP/1.1 connection per sender"
        if args.client == "raw"
        else "one shared httpx.AsyncClient",
        "args": vars(args),
        "start_runs": start_runs,
        "read_events": read_events,
        "answer_to_resume": answers,
        "verified": "every start answered 202 queued and /api/runs listed them queued at the end; "
        "every events read returned the finished run's whole log; every answered run succeeded with the "
        "scripted output, one tool.result and one run.completed, run.resumed right after "
        "escalation.answered",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
