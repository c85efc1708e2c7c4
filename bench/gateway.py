"""What the gateway adds to one model call: raw httpx, `OpenAIModel`, `Gateway.complete` (memory or Redis).

Every contender sends the same chat-completions request (a 6-message conversation offering 2 tools) to
the same fake OpenAI-compatible server, which runs in a separate process so its CPU is not counted.
Rounds run the contenders round-robin, the starting one rotating, each making `--calls` sequential
calls; wall time is taken per call (`perf_counter_ns`), this process's CPU (`process_time_ns`) per
block of calls and divided by the calls.

    .venv/bin/python bench/gateway.py [--rounds N] [--calls N] [--redis-url URL] [--json]

The Redis contender is skipped, with a note, when Redis does not answer; its keys live under a random
`tether-bench:` prefix and are deleted at the end.
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
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tether.gateway.gateway import Gateway
from tether.models.openai import OpenAIModel
from tether.resilience import BreakerRegistry, RedisBreakerStore
from tether.types import Message, ModelRequest, ToolCall, ToolDefinition

MODEL = "gpt-4o-mini"  # a model with a known price, so the gateway's cost accounting does its real work
SPEC = f"openai:{MODEL}"
ANSWER = "It is 14 C and sunny in Oslo, and 09:30 in Tokyo."
TARGET_ADDED_US = 500.0
NO_PROXY = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}

WEATHER_PARAMS = {
    "type": "object",
    "properties": {"city": {"type": "string", "description": "City name, e.g. Oslo"}},
    "required": ["city"],
    "additionalProperties": False,
}
TIME_PARAMS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "description": "IANA zone, e.g. Asia/Tokyo"}},
    "required": ["timezone"],
    "additionalProperties": False,
}
REQUEST = ModelRequest(
    messages=(
        Message("system", "You are a travel assistant. Use the tools when they help; answer briefly."),
        Message("user", "What is the weather in Oslo right now?"),
        Message(
            "assistant",
            "",
            tool_calls=(ToolCall("call_1", "get_weather", {"city": "Oslo"}, '{"city": "Oslo"}'),),
        ),
        Message("tool", '{"temperature_c": 14, "sky": "sunny"}', tool_call_id="call_1"),
        Message("assistant", "It is 14 C and sunny in Oslo."),
        Message("user", "And what time is it in Tokyo?"),
    ),
    tools=(
        ToolDefinition("get_weather", "Current weather for a city.", WEATHER_PARAMS),
        ToolDefinition("get_time", "Current local time in a time zone.", TIME_PARAMS),
    ),
)
# The floor posts the same body OpenAIModel sends, built from plain dicts (encoded on every call).
RAW_BODY: dict[str, Any] = {
    "model": MODEL,
    "messages": [
        {"role": "system", "content": REQUEST.messages[0].content},
        {"role": "user", "content": REQUEST.messages[1].content},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "content": REQUEST.messages[3].content, "tool_call_id": "call_1"},
        {"role": "assistant", "content": REQUEST.messages[4].content},
        {"role": "user", "content": REQUEST.messages[5].content},
    ],
    "tools": [
        {
            "type": "function",
            "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
        }
        for t in REQUEST.tools
    ],
}
HEADERS = {"Content-Type": "application/json", "Accept": "application/json", "Authorization": "Bearer x"}

Call = Callable[[], Awaitable[str]]


@dataclass
class Contender:
    name: str
    what: str
    call: Call | None = None
    skipped: str | None = None
    wall_us: list[float] = field(default_factory=list)
    cpu_us_per_call: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def open_contenders(base_url: str, redis_url: str) -> AsyncIterator[list[Contender]]:
    async with contextlib.AsyncExitStack() as stack:
        raw = await stack.enter_async_context(httpx.AsyncClient(headers=HEADERS))
        chat_url = f"{base_url}/chat/completions"

        async def raw_call() -> str:
            response = await raw.post(chat_url, content=json.dumps(RAW_BODY).encode())
            response.raise_for_status()
            return str(json.loads(response.content)["choices"][0]["message"]["content"])

        def new_model() -> OpenAIModel:
            model = OpenAIModel(MODEL, base_url=base_url, api_key="x")
            stack.push_async_callback(model.aclose)
            return model

        model = new_model()

        async def model_call() -> str:
            return (await model.request(REQUEST)).content

        def gateway_call(gateway: Gateway) -> Call:
            async def call() -> str:
                response = await gateway.complete("r", REQUEST)
                if response.usage.cost_usd is None:
                    raise RuntimeError("the gateway did not price the call")
                return response.content

            return call

        memory = Gateway({"r": [SPEC]}, models={SPEC: new_model()})
        contenders = [
            Contender("raw-httpx", "httpx.AsyncClient post + json.dumps/json.loads (the floor)", raw_call),
            Contender("OpenAIModel", "OpenAIModel.request(ModelRequest)", model_call),
            Contender(
                "gateway",
                "Gateway.complete: in-memory breaker, default RetryPolicy and PriceTable",
                gateway_call(memory),
            ),
        ]
        redis_gateway = Contender(
            "gateway+redis", "the same Gateway, breaker state in Redis (RedisBreakerStore)"
        )
        contenders.append(redis_gateway)
        try:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        except ImportError as exc:
            redis_gateway.skipped = f"redis is not installed ({exc})"
        else:
            stack.push_async_callback(client.aclose)
            try:
                await client.ping()
            except Exception as exc:
                redis_gateway.skipped = f"Redis unreachable at {redis_url} ({type(exc).__name__}: {exc})"
            else:
                prefix = f"tether-bench:{secrets.token_hex(4)}:"
                stack.push_async_callback(delete_keys, client, prefix)
                breakers = BreakerRegistry(store=RedisBreakerStore(client, prefix=prefix))
                shared = Gateway({"r": [SPEC]}, models={SPEC: new_model()}, breakers=breakers)
                redis_gateway.call = gateway_call(shared)
        yield contenders


async def delete_keys(client: Any, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)


async def server_requests(stats: httpx.AsyncClient) -> int:
    return int((await stats.get("/_stats")).json()["requests"])


async def block(contender: Contender, calls: int, stats: httpx.AsyncClient, *, record: bool) -> None:
    """`calls` sequential calls; checks each answer and that the server saw exactly `calls` requests."""
    call = contender.call
    assert call is not None
    before = await server_requests(stats)
    gc.collect()  # garbage left by the previous contender is not charged to this one
    samples: list[float] = []
    cpu0 = time.process_time_ns()
    for _ in range(calls):
        start = time.perf_counter_ns()
        answer = await call()
        samples.append((time.perf_counter_ns() - start) / 1_000)
        if answer != ANSWER:
            raise RuntimeError(f"{contender.name} got {answer!r}, not the scripted answer")
    cpu_ns = time.process_time_ns() - cpu0
    made = await server_requests(stats) - before
    if made != calls:
        raise RuntimeError(f"{contender.name}: the server saw {made} requests for {calls} calls")
    if record:
        contender.wall_us.extend(samples)
        contender.cpu_us_per_call.append(cpu_ns / 1_000 / calls)


async def measure(base_url: str, args: argparse.Namespace) -> list[Contender]:
    root = base_url.removesuffix("/v1")
    async with (
        open_contenders(base_url, args.redis_url) as contenders,
        httpx.AsyncClient(base_url=root) as stats,
    ):
        active = [c for c in contenders if c.skipped is None]
        for _ in range(args.warmup):  # connections open, Lua script loaded, prices resolved, code hot
            for contender in active:
                await block(contender, args.calls, stats, record=False)
        for round_index in range(args.rounds):
            shift = round_index % len(active)  # rotate who goes first
            for contender in active[shift:] + active[:shift]:
                await block(contender, args.calls, stats, record=True)
        return contenders


@contextlib.contextmanager
def fake_server() -> Iterator[tuple[str, int]]:
    with tempfile.TemporaryDirectory(prefix="tether-bench-") as tmp:
        script = Path(tmp) / "script.json"
        script.write_text(json.dumps([{"content": ANSWER}]), encoding="utf-8")
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


def percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def summarise(contenders: list[Contender], args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    results = {
        c.name: {
            "what": c.what,
            "p50_us": round(percentile(c.wall_us, 50), 1),
            "p99_us": round(percentile(c.wall_us, 99), 1),
            "mean_us": round(statistics.fmean(c.wall_us), 1),
            "cpu_us_per_call": round(statistics.median(c.cpu_us_per_call), 1),
            "calls": len(c.wall_us),
        }
        for c in contenders
        if c.skipped is None
    }
    p50 = {name: r["p50_us"] for name, r in results.items()}
    cpu = {name: r["cpu_us_per_call"] for name, r in results.items()}
    differences = {}
    for gateway in ("gateway", "gateway+redis"):
        if gateway in p50:
            for base in ("OpenAIModel", "raw-httpx"):
                differences[f"{gateway} - {base}"] = {
                    "p50_us": round(p50[gateway] - p50[base], 1),
                    "cpu_us_per_call": round(cpu[gateway] - cpu[base], 1),
                }
    added = differences["gateway - raw-httpx"]["p50_us"]
    return {
        "command": shlex.join(sys.orig_argv),
        "python": f"{platform.python_version()} ({platform.python_implementation()})",
        "platform": f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs",
        "versions": {p: version(p) for p in ("tether", "httpx", "redis")},
        "rounds": args.rounds,
        "calls_per_round": args.calls,
        "warmup_rounds": args.warmup,
        "fake_server": f"separate process (pid {server_pid}); its CPU is not counted",
        "results": results,
        "skipped": {c.name: c.skipped for c in contenders if c.skipped is not None},
        "differences": differences,
        "target": {
            "what": "gateway adds <= 0.5 ms at p50 over a raw httpx call",
            "value_us": added,
            "met": added <= TARGET_ADDED_US,
        },
        "verified": "every call returned the scripted answer, every priced gateway call had a cost, "
        "and the server saw exactly one request per call (no retries, no extra calls)",
    }


def print_table(summary: dict[str, Any]) -> None:
    print(
        f"gateway overhead per model call: {summary['rounds']} interleaved rounds of "
        f"{summary['calls_per_round']} sequential calls per contender, after {summary['warmup_rounds']} "
        "warm-up round(s)"
    )
    print(f"python {summary['python']} on {summary['platform']}")
    print("versions: " + ", ".join(f"{p} {v}" for p, v in summary["versions"].items()))
    print(f"command: {summary['command']}")
    print(f"request: 6 messages, 2 tools, model {SPEC}; fake server: {summary['fake_server']}")
    print()
    header = f"{'contender':<15}{'p50 µs':>9}{'p99 µs':>9}{'mean µs':>9}{'CPU µs/call':>13}  what"
    print(header)
    print("-" * (len(header) + 40))
    for name, r in summary["results"].items():
        print(
            f"{name:<15}{r['p50_us']:>9.1f}{r['p99_us']:>9.1f}{r['mean_us']:>9.1f}"
            f"{r['cpu_us_per_call']:>13.1f}  {r['what']}"
        )
    for name, reason in summary["skipped"].items():
        print(f"{name:<15}skipped: {reason}")
    print(
        "(wall: percentiles over all timed calls; CPU: this process, median over rounds of block CPU / calls)"
    )
    print()
    print("added by the gateway (difference of p50s; of CPU medians):")
    for name, d in summary["differences"].items():
        print(f"  {name:<28} p50 {d['p50_us']:>+8.1f} µs   CPU {d['cpu_us_per_call']:>+8.1f} µs/call")
    print()
    target = summary["target"]
    verdict = "met" if target["met"] else "NOT met"
    print(f"target (printed, not asserted): {target['what']}: {target['value_us']:+.1f} µs  ({verdict})")
    print(f"verified: {summary['verified']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (default 20)")
    parser.add_argument(
        "--calls", type=int, default=200, help="timed calls per contender per round (default 200)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured rounds first (default 1)")
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis for the shared breaker (keys cleaned up)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.rounds < 1 or args.calls < 1 or args.warmup < 0:
        parser.error("--rounds and --calls must be >= 1, --warmup >= 0")
    os.environ.update(NO_PROXY)  # loopback only, whatever proxy the environment names
    with fake_server() as (url, pid):
        contenders = asyncio.run(measure(url, args))
    summary = summarise(contenders, args, pid)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_table(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
