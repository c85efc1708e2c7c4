"""Per-step overhead of an agent step: tether against a raw-httpx floor and peer agent frameworks.

Every contender does the same 10-step run (9 turns that each call one trivial tool, then a final
answer) against the same fake OpenAI-compatible server, which runs in a separate process so its CPU
is not counted. Runs are interleaved round-robin; each run's wall time (`perf_counter`) and this
process's CPU time (`process_time`, all threads) are divided by the number of steps.

    .venv/bin/python bench/overhead.py [--rounds N] [--warmup N] [--json]

Peers are optional (`pip install -e '.[bench]'`); a missing one is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEPS = 10
FINAL = "All nine echoes are done."
INSTRUCTIONS = "You are a benchmark agent. Call the echo tool when asked to, then answer."
INPUT = "Echo 'step 1' to 'step 9' one at a time, then say you are done."
SCRIPT = [{"tool_calls": [{"name": "echo", "arguments": {"text": f"step {n}"}}]} for n in range(1, STEPS)] + [
    {"content": FINAL}
]
TARGET_VS_FLOOR = 2.0
TARGET_VS_PEER = 1 / 3
TARGET_OBSERVE = 1.10  # tracing + metrics + logging: at most 10% over the bare tether step

# Peers' telemetry off and no network beyond loopback; set before any framework is imported.
QUIET_ENV = {
    "OPENAI_API_KEY": "x",
    "OTEL_SDK_DISABLED": "true",
    "LANGCHAIN_TRACING_V2": "false",
    "LANGSMITH_TRACING": "false",
    "LOGFIRE_IGNORE_NO_CONFIG": "1",
    "OPENAI_AGENTS_DISABLE_TRACING": "1",
    "NO_PROXY": "127.0.0.1,localhost",
}

TOOL_CALLS = [0]


def echo(text: str) -> str:
    """Echo the text back."""
    TOOL_CALLS[0] += 1
    return text


RunOnce = Callable[[], Awaitable[str]]
Opener = Callable[[str, Path], contextlib.AbstractAsyncContextManager[RunOnce]]


# --- contenders: each opens once (clients, agent, runtime) and yields a coroutine doing one run ---


@contextlib.asynccontextmanager
async def raw_httpx(base_url: str, workdir: Path) -> AsyncIterator[RunOnce]:
    """The floor: the same chat-completions bodies posted with plain httpx, no durability."""
    import httpx

    tools = [
        {
            "type": "function",
            "function": {
                "name": "echo",
                "description": "Echo the text back.",
                "parameters": {
                    "type": "object",
                    "properties": {"text": {"title": "Text", "type": "string"}},
                    "required": ["text"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    headers = {"Authorization": "Bearer x", "Content-Type": "application/json"}
    async with httpx.AsyncClient(base_url=base_url, headers=headers) as client:

        async def run_once() -> str:
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": INPUT},
            ]
            while True:
                body = {"model": "bench", "messages": messages, "tools": tools}
                response = await client.post("/chat/completions", content=json.dumps(body).encode())
                response.raise_for_status()
                message = json.loads(response.content)["choices"][0]["message"]
                messages.append(message)
                if not message.get("tool_calls"):
                    return str(message["content"])
                for call in message["tool_calls"]:
                    result = echo(**json.loads(call["function"]["arguments"]))
                    messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})

        yield run_once


@contextlib.asynccontextmanager
async def tether_runtime(base_url: str, workdir: Path, *, observed: bool = False) -> AsyncIterator[RunOnce]:
    """tether, durable: every step recorded in one SQLite (WAL) file shared by all runs. `observed`:
    with tracing (spans batched to an exporter that drops them), Prometheus metrics and JSON logs."""
    from tether import Agent, RunStatus, Runtime, tool
    from tether.runtime import RunObserver

    os.environ["OPENAI_BASE_URL"] = base_url  # read when the runtime builds the model, on the first run
    agent = Agent(
        "bench", instructions=INSTRUCTIONS, model="openai:bench", tools=[tool(side_effect="none")(echo)]
    )
    observers: list[RunObserver] = []
    exported: list[int] = []
    devnull = open(os.devnull, "w")  # noqa: SIM115, ASYNC230 - /dev/null; closed below, after the runtime
    if observed:
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

        from tether.observe.logs import RunLogger
        from tether.observe.metrics import RunMetrics
        from tether.observe.tracing import RunTracer

        class Dropping(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                exported.append(len(spans))
                return SpanExportResult.SUCCESS

        # The peers' telemetry is switched off by OTEL_SDK_DISABLED (see main); this contender measures
        # tether's own, so its provider is built without it.
        disabled = os.environ.pop("OTEL_SDK_DISABLED", None)
        tracer = RunTracer.to_exporter(Dropping())
        if disabled is not None:
            os.environ["OTEL_SDK_DISABLED"] = disabled
        observers = [tracer, RunMetrics(), RunLogger(format="json", stream=devnull)]
    name = "bench-observed" if observed else "bench"
    async with Runtime(f"sqlite:///{workdir / f'{name}.db'}", observers=observers) as runtime:

        async def run_once() -> str:
            run = await runtime.run(agent, INPUT)
            if run.status != RunStatus.SUCCEEDED:
                raise RuntimeError(f"tether run ended {run.status}: {run.error}")
            return run.output or ""

        yield run_once
    if observed:
        tracer.shutdown()
        if not sum(exported):
            raise RuntimeError("tether+observe exported no spans")
    devnull.close()


def tether_observed(base_url: str, workdir: Path) -> contextlib.AbstractAsyncContextManager[RunOnce]:
    return tether_runtime(base_url, workdir, observed=True)


@contextlib.asynccontextmanager
async def pydantic_ai(base_url: str, workdir: Path) -> AsyncIterator[RunOnce]:
    from openai import AsyncOpenAI
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    model = OpenAIChatModel("bench", provider=OpenAIProvider(openai_client=client))
    agent = Agent(model, instructions=INSTRUCTIONS, tools=[echo])

    async def run_once() -> str:
        return (await agent.run(INPUT)).output

    async with client:
        yield run_once


@contextlib.asynccontextmanager
async def openai_agents(base_url: str, workdir: Path) -> AsyncIterator[RunOnce]:
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)
    agent = Agent(
        name="bench",
        instructions=INSTRUCTIONS,
        model=OpenAIChatCompletionsModel(model="bench", openai_client=client),
        tools=[function_tool(echo)],
    )

    async def run_once() -> str:
        return str((await Runner.run(agent, INPUT, max_turns=STEPS + 5)).final_output)

    async with client:
        yield run_once


@contextlib.asynccontextmanager
async def langgraph(base_url: str, workdir: Path) -> AsyncIterator[RunOnce]:
    from langchain_openai import ChatOpenAI
    from langgraph.prebuilt import create_react_agent

    model = ChatOpenAI(model="bench", base_url=base_url, api_key="x", max_retries=0)
    agent = create_react_agent(model, tools=[echo], prompt=INSTRUCTIONS)

    async def run_once() -> str:
        state = await agent.ainvoke({"messages": [{"role": "user", "content": INPUT}]})
        return str(state["messages"][-1].content)

    yield run_once


@dataclass
class Contender:
    name: str
    packages: tuple[str, ...]
    opener: Opener
    modules: tuple[str, ...] = ()  # imported up front: a missing one skips the contender
    peer: bool = True
    cpu_ms: list[float] = field(default_factory=list)
    wall_ms: list[float] = field(default_factory=list)
    skipped: str | None = None


def contenders() -> list[Contender]:
    return [
        Contender("raw-httpx", ("httpx",), raw_httpx, peer=False),
        Contender("tether", ("tether", "httpx"), tether_runtime, peer=False),
        Contender(
            "tether+observe",
            ("tether", "opentelemetry-sdk", "prometheus-client", "structlog"),
            tether_observed,
            peer=False,
        ),
        Contender("pydantic-ai", ("pydantic-ai-slim", "openai"), pydantic_ai, ("pydantic_ai.models.openai",)),
        Contender("openai-agents", ("openai-agents", "openai"), openai_agents, ("agents",)),
        Contender(
            "langgraph",
            ("langgraph", "langchain-openai", "langchain-core", "openai"),
            langgraph,
            ("langgraph.prebuilt", "langchain_openai"),
        ),
    ]


# --- measurement ---


async def timed_run(contender: Contender, run_once: RunOnce) -> tuple[float, float]:
    """One run; raises unless it returned the scripted answer after STEPS - 1 tool calls."""
    gc.collect()  # garbage left by the previous contender is not charged to this one
    calls_before = TOOL_CALLS[0]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    output = await run_once()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    calls = TOOL_CALLS[0] - calls_before
    if output != FINAL or calls != STEPS - 1:
        raise RuntimeError(
            f"{contender.name}: expected {STEPS - 1} tool calls and {FINAL!r}, got {calls} and {output!r}"
        )
    return cpu * 1000 / STEPS, wall * 1000 / STEPS


async def verify(active: list[Contender], workdir: Path) -> None:
    """Run each contender once against an in-process server whose request counter we can read."""
    from tether.testing.fakellm import FakeLLMServer

    server = FakeLLMServer(SCRIPT, model_name="bench")
    with server.run_in_thread():
        for contender in active:
            async with contender.opener(server.url, workdir) as run_once:
                before = server.stats["requests"]
                await timed_run(contender, run_once)
                made = server.stats["requests"] - before
            if made != STEPS:
                raise RuntimeError(f"{contender.name} made {made} model requests, not {STEPS}")


async def measure(active: list[Contender], base_url: str, workdir: Path, rounds: int, warmup: int) -> None:
    async with contextlib.AsyncExitStack() as stack:
        runners = [await stack.enter_async_context(c.opener(base_url, workdir)) for c in active]
        for _ in range(warmup):
            for contender, run_once in zip(active, runners, strict=True):
                await timed_run(contender, run_once)
        pairs = list(zip(active, runners, strict=True))
        for round_index in range(rounds):
            shift = round_index % len(pairs)  # rotate who goes first, so no one always follows the same peer
            for contender, run_once in pairs[shift:] + pairs[:shift]:
                cpu_ms, wall_ms = await timed_run(contender, run_once)
                contender.cpu_ms.append(cpu_ms)
                contender.wall_ms.append(wall_ms)


async def profile(contender: Contender, base_url: str, workdir: Path, args: argparse.Namespace) -> None:
    """Profile `--rounds` runs of one contender (after the warm-up) and print the top 25 functions."""
    import cProfile
    import pstats

    async with contender.opener(base_url, workdir) as run_once:
        for _ in range(args.warmup):
            await timed_run(contender, run_once)
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.rounds):
            await run_once()
        profiler.disable()
    print(f"{contender.name}: {args.rounds} runs of {STEPS} steps under cProfile (main thread only)")
    pstats.Stats(profiler).strip_dirs().sort_stats(args.sort).print_stats(25)


def check_imports(all_contenders: list[Contender]) -> None:
    for contender in all_contenders:
        try:
            for module in contender.modules:
                importlib.import_module(module)
        except ImportError as exc:
            contender.skipped = f"not installed ({exc}); pip install -e '.[bench]'"


# --- network guard (verification child only): record any connection or lookup that is not loopback ---

LOOPBACK = {"127.0.0.1", "::1", "localhost"}
FOREIGN: list[str] = []


def audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            FOREIGN.append(f"connect {address[0]}:{address[1]}")
    elif event == "socket.getaddrinfo" and args[0] not in LOOPBACK:
        FOREIGN.append(f"lookup {args[0]!r}")


# --- fake server subprocess and report ---


@contextlib.contextmanager
def fake_server(workdir: Path) -> Iterator[tuple[str, int]]:
    script = workdir / "script.json"
    script.write_text(json.dumps(SCRIPT), encoding="utf-8")
    command = [sys.executable, "-m", "tether.testing.fakellm", "--script", str(script), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake server did not start (printed {url!r})")
        yield url, process.pid
    finally:
        process.terminate()
        process.wait(10)


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def summarise(all_contenders: list[Contender], args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    ran = [c for c in all_contenders if c.skipped is None]
    floor = next(c for c in ran if c.name == "raw-httpx")
    floor_cpu = statistics.median(floor.cpu_ms)
    cpu_of = {c.name: statistics.median(c.cpu_ms) for c in ran}
    results: dict[str, dict[str, Any]] = {}
    for c in ran:
        cpu = cpu_of[c.name]
        results[c.name] = {
            "versions": {p: version(p) for p in c.packages},
            "cpu_ms_per_step_median": round(cpu, 4),
            "wall_ms_per_step_median": round(statistics.median(c.wall_ms), 4),
            "wall_ms_per_step_p90": round(p90(c.wall_ms), 4),
            "cpu_vs_floor": round(cpu / floor_cpu, 3),
            "runs": len(c.cpu_ms),
        }
    summary: dict[str, Any] = {
        "command": shlex.join(sys.orig_argv),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "steps_per_run": STEPS,
        "rounds": args.rounds,
        "warmup_runs": args.warmup,
        "fake_server": f"separate process (pid {server_pid}); its CPU is not counted",
        "tether_store": "one SQLite file (WAL, synchronous=NORMAL) for all tether runs",
        "results": results,
        "skipped": {c.name: c.skipped for c in all_contenders if c.skipped is not None},
        "verified": f"each contender made exactly {STEPS} model requests (a check run in a child process "
        f"against an in-process server) and returned the scripted answer after {STEPS - 1} tool calls "
        "on every measured run",
        "non_loopback_network": sorted(set(FOREIGN)),
    }
    targets: dict[str, Any] = {}
    if "tether" in cpu_of:
        ratio = cpu_of["tether"] / floor_cpu
        targets["tether_cpu_vs_floor"] = {
            "value": round(ratio, 3),
            "target": f"<= {TARGET_VS_FLOOR:g}",
            "met": ratio <= TARGET_VS_FLOOR,
        }
        peers = [c.name for c in ran if c.peer]
        if peers:
            fastest = min(peers, key=cpu_of.__getitem__)
            ratio = cpu_of["tether"] / cpu_of[fastest]
            targets["tether_cpu_vs_fastest_peer"] = {
                "peer": fastest,
                "value": round(ratio, 3),
                "target": "<= 0.333",
                "met": ratio <= TARGET_VS_PEER,
            }
    if "tether" in cpu_of and "tether+observe" in cpu_of:
        ratio = cpu_of["tether+observe"] / cpu_of["tether"]
        targets["observe_cpu_vs_tether"] = {
            "value": round(ratio, 3),
            "target": f"<= {TARGET_OBSERVE:g}",
            "met": ratio <= TARGET_OBSERVE,
        }
    summary["targets"] = targets
    return summary


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"agent-step overhead: {summary['steps_per_run']} steps per run ({STEPS - 1} tool turns + 1 answer), "
        f"{summary['rounds']} interleaved rounds after {summary['warmup_runs']} warm-up runs each"
    )
    print(f"python {summary['python']} on {summary['platform']}")
    print(f"command: {summary['command']}")
    print(f"fake server: {summary['fake_server']}; tether store: {summary['tether_store']}")
    print()
    header = (
        f"{'contender':<14} {'CPU ms/step':>12} {'wall ms/step':>13} {'wall p90':>9} {'CPU vs floor':>13}"
    )
    print(header)
    print("-" * len(header))
    for name, r in summary["results"].items():
        print(
            f"{name:<14} {r['cpu_ms_per_step_median']:>12.3f} {r['wall_ms_per_step_median']:>13.3f} "
            f"{r['wall_ms_per_step_p90']:>9.3f} {r['cpu_vs_floor']:>12.2f}x"
        )
    for name, reason in summary["skipped"].items():
        print(f"{name:<14} skipped: {reason}")
    print("(medians over rounds; CPU is this process's, all threads; the server's CPU is not counted)")
    print()
    print("versions:")
    for name, r in summary["results"].items():
        print(f"  {name:<14} " + ", ".join(f"{p} {v}" for p, v in r["versions"].items()))
    print()
    print("targets (printed, not asserted):")
    targets = summary["targets"]
    if "tether_cpu_vs_floor" in targets:
        t = targets["tether_cpu_vs_floor"]
        verdict = "met" if t["met"] else "NOT met"
        print(f"  tether CPU/step <= {TARGET_VS_FLOOR:g}x raw-httpx floor: {t['value']:.2f}x  ({verdict})")
    if "tether_cpu_vs_fastest_peer" in targets:
        t = targets["tether_cpu_vs_fastest_peer"]
        verdict = "met" if t["met"] else "NOT met"
        print(f"  tether CPU/step <= 1/3 of fastest peer ({t['peer']}): {t['value']:.2f}x  ({verdict})")
    if "observe_cpu_vs_tether" in targets:
        t = targets["observe_cpu_vs_tether"]
        verdict = "met" if t["met"] else "NOT met"
        print(f"  tracing + metrics + logs add <= 10% CPU/step to tether: {t['value']:.2f}x  ({verdict})")
    print()
    print(f"verified: {summary['verified']}")
    foreign = summary["non_loopback_network"]
    used = "only 127.0.0.1" if not foreign else "NON-LOOPBACK USE: " + "; ".join(foreign)
    print(f"network during the check run: {used}")


def run_verification(args: argparse.Namespace) -> list[str]:
    """Verify in a child process, so the audit hook that watches the network never slows a measured run."""
    command = [sys.executable, __file__, "--verify-only", *(f"--only={name}" for name in args.only or ())]
    child = subprocess.run(command, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        raise SystemExit(f"verification failed:\n{child.stderr.strip()}")
    return list(json.loads(child.stdout.strip().splitlines()[-1])["non_loopback_network"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=15, help="measured runs per contender (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured runs per contender (default 2)")
    parser.add_argument("--only", action="append", help="run only this contender and the floor (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    parser.add_argument("--profile", metavar="NAME", help="profile --rounds runs of one contender instead")
    parser.add_argument("--sort", default="cumulative", help="pstats order for --profile (e.g. tottime)")
    parser.add_argument("--verify-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be >= 1 and --warmup >= 0")
    os.environ.update(QUIET_ENV)
    warnings.simplefilter("ignore")  # peers' deprecation notices are not what is measured
    all_contenders = contenders()
    if args.profile:
        args.only = [args.profile]
    if args.only:
        unknown = set(args.only) - {c.name for c in all_contenders}
        if unknown:
            parser.error(f"unknown contender(s) {', '.join(sorted(unknown))}")
        all_contenders = [c for c in all_contenders if c.name in args.only or c.name == "raw-httpx"]
    check_imports(all_contenders)
    active = [c for c in all_contenders if c.skipped is None]
    if args.verify_only:
        sys.addaudithook(audit)
        with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
            asyncio.run(verify(active, Path(tmp)))
        print(json.dumps({"non_loopback_network": sorted(set(FOREIGN))}))
        return 0
    if args.profile:
        (chosen,) = (c for c in all_contenders if c.name == args.profile)
        if chosen.skipped is not None:
            parser.error(f"{chosen.name} is {chosen.skipped}")
        with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp, fake_server(Path(tmp)) as (url, _):
            asyncio.run(profile(chosen, url, Path(tmp), args))
        return 0
    FOREIGN.extend(run_verification(args))
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp, fake_server(Path(tmp)) as (url, pid):
        asyncio.run(measure(active, url, Path(tmp), args.rounds, args.warmup))
        summary = summarise(all_contenders, args, pid)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
