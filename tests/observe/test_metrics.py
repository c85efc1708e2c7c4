"""Metrics: real runs counted by RunMetrics, scraped as Prometheus text, over HTTP too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from tether import (
    Agent,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RunEvent,
    RunStatus,
    Runtime,
    SqliteRunStore,
    ToolCall,
    Usage,
    tool,
)
from tether.cli import app as cli_app
from tether.config import load_settings
from tether.errors import AuthenticationError, ConfigurationError, ModelRetryableError
from tether.gateway import Gateway
from tether.observe.metrics import RunMetrics, serve_metrics, start_metrics_server
from tether.policy import BudgetPolicy, Limits
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry
from tether.resilience.retry import RetryPolicy
from tether.server.openai_api import ModelBackend, create_openai_app
from tether.store import EventDraft, NewRun

Labels = dict[str, str]


# --- reading a scrape --------------------------------------------------------------------------


def samples(scrape: bytes) -> list[tuple[str, Labels, float]]:
    return [
        (sample.name, dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(scrape.decode())
        for sample in family.samples
    ]


def value(scrape: bytes, name: str, **labels: str) -> float | None:
    """The one sample called `name` with these labels (others may differ); None when there is none."""
    found = [v for n, ls, v in samples(scrape) if n == name and labels.items() <= ls.items()]
    assert len(found) <= 1, f"{name}{labels} matches {len(found)} samples"
    return found[0] if found else None


def call(name: str, arguments: dict[str, Any], call_id: str = "c0") -> ModelResponse:
    return ModelResponse(
        tool_calls=(ToolCall(call_id, name, arguments, json.dumps(arguments)),), usage=Usage(100, 10, 0.001)
    )


def answer(text: str) -> ModelResponse:
    return ModelResponse(content=text, usage=Usage(100, 10, 0.001))


def scripted(*turns: ModelResponse | BaseException, name: str = "desk-model") -> FunctionModel:
    """Turn N answers `turns[N]`, or raises it."""

    def respond(request: ModelRequest) -> ModelResponse:
        turn = turns[request.turn]
        if isinstance(turn, BaseException):
            raise turn
        return turn

    return FunctionModel(respond, name=name)


@tool(side_effect="read")
def lookup(order_id: str) -> str:
    """Look an order up."""
    return f"{order_id}: shipped"


@tool(side_effect="write", idempotent=True, approval=True)
def refund(order_id: str) -> str:
    """Refund an order."""
    return f"{order_id}: refunded"


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[tuple[Runtime, RunMetrics]]:
    async with Runtime(f"sqlite:///{tmp_path / 'x.db'}") as opened:
        metrics = RunMetrics(store=opened.store, breakers=opened.gateway.breakers)
        opened.observers.append(metrics)
        yield opened, metrics


# --- runs ----------------------------------------------------------------------------------------


async def test_a_completed_run_counts_its_model_calls_tokens_tools_cost_and_duration(
    runtime: tuple[Runtime, RunMetrics],
) -> None:
    """Two model turns and a lookup: calls, tokens, the tool, cost and duration by agent and model."""
    rt, metrics = runtime
    agent = Agent(
        "desk", model=scripted(call("lookup", {"order_id": "A"}), answer("shipped")), tools=[lookup]
    )
    run = await rt.run(agent, "where is A?")
    assert run.status == RunStatus.SUCCEEDED
    scrape = await metrics.render()
    assert value(scrape, "tether_runs_started_total", agent="desk") == 1
    assert value(scrape, "tether_runs_finished_total", agent="desk", status="succeeded") == 1
    assert value(scrape, "tether_model_calls_total", model="desk-model", outcome="ok") == 2
    assert value(scrape, "tether_model_call_duration_seconds_count", model="desk-model") == 2
    assert value(scrape, "tether_tokens_total", model="desk-model", kind="input") == 200
    assert value(scrape, "tether_tokens_total", model="desk-model", kind="output") == 20
    assert value(scrape, "tether_cost_usd_total", agent="desk") == pytest.approx(0.002)
    assert value(scrape, "tether_tool_calls_total", tool="lookup", outcome="succeeded") == 1
    assert value(scrape, "tether_tool_call_duration_seconds_count", tool="lookup") == 1
    assert value(scrape, "tether_run_cost_usd_count", agent="desk") == 1
    assert value(scrape, "tether_run_cost_usd_sum", agent="desk") == pytest.approx(0.002)
    assert value(scrape, "tether_run_cost_usd_bucket", agent="desk", le="0.0025") == 1
    assert value(scrape, "tether_run_cost_usd_bucket", agent="desk", le="0.001") == 0
    assert value(scrape, "tether_run_duration_seconds_count", agent="desk") == 1
    assert value(scrape, "tether_runs", status="succeeded") == 1
    assert value(scrape, "tether_errors_total") is None


async def test_run_duration_is_the_time_from_run_started_to_its_end(tmp_path: Path) -> None:
    """With a store clock moved 3 s per model call, a two-call run lasts 6 s in the histogram."""
    now_ms = [1_700_000_000_000]
    store = SqliteRunStore(tmp_path / "clock.db", clock=lambda: now_ms[0])

    def slow(request: ModelRequest) -> ModelResponse:
        now_ms[0] += 3000
        return [call("lookup", {"order_id": "A"}), answer("shipped")][request.turn]

    metrics = RunMetrics()
    async with Runtime(store, observers=[metrics]) as rt:
        await rt.run(Agent("desk", model=FunctionModel(slow), tools=[lookup]), "where is A?")
    await store.close()
    scrape = await metrics.render()
    assert value(scrape, "tether_run_duration_seconds_sum", agent="desk") == 6.0
    assert value(scrape, "tether_run_duration_seconds_bucket", agent="desk", le="5.0") == 0
    assert value(scrape, "tether_run_duration_seconds_bucket", agent="desk", le="7.5") == 1


async def test_failed_runs_count_their_error_class_and_the_failed_model_call(
    runtime: tuple[Runtime, RunMetrics],
) -> None:
    """A model that refuses the key fails the run: failed status, a fatal error, one failed call."""
    rt, metrics = runtime
    agent = Agent("desk", model=scripted(AuthenticationError("401: bad key")))
    run = await rt.run(agent, "hello")
    assert run.status == RunStatus.FAILED
    scrape = await metrics.render()
    assert value(scrape, "tether_runs_finished_total", agent="desk", status="failed") == 1
    assert value(scrape, "tether_errors_total", error_class="fatal") == 1
    assert value(scrape, "tether_model_calls_total", model="desk-model", outcome="error") == 1
    assert value(scrape, "tether_model_calls_total", outcome="ok") is None
    assert value(scrape, "tether_run_cost_usd_count", agent="desk") is None  # nothing priced was spent


async def test_a_model_outage_counts_retries_an_escalation_and_the_error(tmp_path: Path) -> None:
    """A model down through its retries: retries, a retryable error, an escalation, the inbox at 1."""
    retry = RetryPolicy(max_attempts=3, initial_backoff_s=0.01)
    gateway = Gateway(retry=retry, sleep=no_sleep)
    metrics = RunMetrics()
    async with Runtime(f"sqlite:///{tmp_path / 'x.db'}", gateway=gateway, observers=[metrics]) as rt:
        metrics.store = rt.store
        down = ModelRetryableError("503 from the provider")
        run = await rt.run(Agent("desk", model=scripted(down, down, down)), "hello")
        assert run.status == RunStatus.WAITING_HUMAN
        scrape = await metrics.render()
    await gateway.aclose()
    assert value(scrape, "tether_model_retries_total", model="desk-model") == 2
    assert value(scrape, "tether_model_calls_total", model="desk-model", outcome="error") == 1
    assert value(scrape, "tether_errors_total", error_class="retryable") == 1
    assert value(scrape, "tether_escalations_total", agent="desk", reason="model_unavailable") == 1
    assert value(scrape, "tether_inbox_depth") == 1
    assert value(scrape, "tether_runs_finished_total", agent="desk", status="failed") is None


async def test_an_approval_taken_over_by_a_person_is_an_escalation_and_an_escalated_run(
    runtime: tuple[Runtime, RunMetrics],
) -> None:
    """Approval asked, then a person takes over: escalated (not an error), its earlier cost observed."""
    rt, metrics = runtime
    agent = Agent("desk", model=scripted(call("refund", {"order_id": "A"})), tools=[refund])
    run = await rt.run(agent, "refund A")
    assert run.status == RunStatus.WAITING_HUMAN
    waiting = await metrics.render()
    assert value(waiting, "tether_escalations_total", agent="desk", reason="approval") == 1
    assert value(waiting, "tether_inbox_depth") == 1
    [question] = await rt.inbox()
    await rt.answer(question.id, "takeover", text="I refunded it myself.")
    assert (await rt.execute(run.id)).status == RunStatus.ESCALATED
    scrape = await metrics.render()
    assert value(scrape, "tether_runs_finished_total", agent="desk", status="escalated") == 1
    assert value(scrape, "tether_inbox_depth") == 0
    assert value(scrape, "tether_runs", status="escalated") == 1
    assert value(scrape, "tether_errors_total") is None
    assert value(scrape, "tether_run_cost_usd_count", agent="desk") == 1
    assert value(scrape, "tether_run_cost_usd_sum", agent="desk") == pytest.approx(0.001)
    assert value(scrape, "tether_tool_calls_total", tool="refund") is None  # it never ran


async def test_tool_outcomes_are_bounded_labels_and_unknown_tool_names_are_not_labels(
    runtime: tuple[Runtime, RunMetrics],
) -> None:
    """A made-up tool name is counted as tool=(unknown), invalid; bad arguments as invalid too."""
    rt, metrics = runtime
    model = scripted(
        call("delete_all_orders_now_please", {}),
        call("lookup", {"order": 7}),
        call("lookup", {"order_id": "A"}),
        answer("done"),
    )
    assert (await rt.run(Agent("desk", model=model, tools=[lookup]), "x")).status == RunStatus.SUCCEEDED
    scrape = await metrics.render()
    assert value(scrape, "tether_tool_calls_total", tool="(unknown)", outcome="invalid") == 1
    assert value(scrape, "tether_tool_calls_total", tool="lookup", outcome="invalid") == 1
    assert value(scrape, "tether_tool_calls_total", tool="lookup", outcome="succeeded") == 1
    assert all("delete_all" not in v for _, labels, _ in samples(scrape) for v in labels.values())


async def test_budget_warnings_and_refusals_count_by_level_and_counter(
    runtime: tuple[Runtime, RunMetrics],
) -> None:
    """Two lookups allowed per run: the second crosses the warning level, the third is refused."""
    rt, metrics = runtime
    limits = Limits(tokens=None, cost_usd=None, tool_calls=2, mutations=None)
    model = scripted(*(call("lookup", {"order_id": str(i)}) for i in range(3)), answer("done"))
    agent = Agent("desk", model=model, tools=[lookup], budget=BudgetPolicy(per_run=limits))
    assert (await rt.run(agent, "look up three")).status == RunStatus.WAITING_HUMAN
    scrape = await metrics.render()
    assert value(scrape, "tether_budget_warnings_total", level="run", counter="tool_calls") == 1
    assert value(scrape, "tether_budget_exceeded_total", level="run", counter="tool_calls") == 1
    assert value(scrape, "tether_escalations_total", agent="desk", reason="budget") == 1


class BuggyStore(SqliteRunStore):
    """Raises instead of recording any tool result, as a bug would: every attempt fails."""

    async def append_events(
        self, run_id: str, owner: str, first_seq: int, events: Sequence[EventDraft], **kwargs: Any
    ) -> list[RunEvent]:
        if any(event.kind == "tool.result" for event in events):
            raise RuntimeError("bug: the tool result could not be serialised")
        return await super().append_events(run_id, owner, first_seq, events, **kwargs)


async def test_a_dead_lettered_run_shows_in_the_dlq_depth_and_its_failed_attempts(tmp_path: Path) -> None:
    """Three attempts fail on a bug: three unexpected errors, a dead_lettered run, DLQ depth 1."""
    store = BuggyStore(tmp_path / "dlq.db")
    metrics = RunMetrics(store=store)
    async with Runtime(store, observers=[metrics]) as rt:
        agent = Agent("desk", model=scripted(*[call("lookup", {"order_id": "A"})] * 3), tools=[lookup])
        run = await rt.run(agent, "where is A?")
        assert run.status == RunStatus.DEAD_LETTERED
        scrape = await metrics.render()
    await store.close()
    assert value(scrape, "tether_dlq_depth") == 1
    assert value(scrape, "tether_runs", status="dead_lettered") == 1
    assert value(scrape, "tether_runs_finished_total", agent="desk", status="dead_lettered") == 1
    assert value(scrape, "tether_errors_total", error_class="unexpected") == 3
    assert value(scrape, "tether_run_cost_usd_sum", agent="desk") == pytest.approx(0.001)


async def test_breaker_states_are_read_at_scrape() -> None:
    """A closed breaker reads 0, one past its cooldown 1 (half-open), an open one 2."""
    now_s = [1000.0]
    breakers = BreakerRegistry(BreakerPolicy(failure_threshold=1, cooldown_s=30), clock=lambda: now_s[0])
    metrics = RunMetrics(breakers=breakers)
    breakers.get("model:openai:gpt-4o-mini")
    await breakers.get("tool:inventory").record_failure()
    await breakers.get("model:anthropic:claude").record_failure()
    now_s[0] += 20
    await breakers.get("model:anthropic:claude").record_success()  # ignored while open
    scrape = await metrics.render()
    assert value(scrape, "tether_breaker_state", target="model:openai:gpt-4o-mini") == 0
    assert value(scrape, "tether_breaker_state", target="tool:inventory") == 2
    now_s[0] += 15
    later = await metrics.render()
    assert value(later, "tether_breaker_state", target="tool:inventory") == 1
    assert value(later, "tether_breaker_state", target="model:anthropic:claude") == 1


async def test_a_tool_breaker_opened_by_a_run_reads_open(tmp_path: Path) -> None:
    """A tool that keeps failing opens its breaker (failure_threshold 1); the gauge says open."""

    @tool(side_effect="read")
    def inventory(sku: str) -> str:
        """Count stock."""
        raise RuntimeError("inventory service down")

    gateway = Gateway(breakers=BreakerRegistry(BreakerPolicy(failure_threshold=1, cooldown_s=600)))
    async with Runtime(f"sqlite:///{tmp_path / 'x.db'}", gateway=gateway) as rt:
        metrics = RunMetrics(store=rt.store, breakers=rt.gateway.breakers)
        rt.observers.append(metrics)
        model = scripted(call("inventory", {"sku": "1"}), call("inventory", {"sku": "2"}), answer("no stock"))
        await rt.run(Agent("desk", model=model, tools=[inventory]), "stock?")
        scrape = await metrics.render()
    await gateway.aclose()
    assert value(scrape, "tether_breaker_state", target="tool:inventory") == 2
    assert value(scrape, "tether_tool_calls_total", tool="inventory", outcome="failed") == 1
    assert value(scrape, "tether_tool_calls_total", tool="inventory", outcome="unavailable") == 1


async def test_no_label_holds_a_run_id_principal_or_tenant(runtime: tuple[Runtime, RunMetrics]) -> None:
    """After runs of every kind, no label value names a run, its principal, tenant or session."""
    rt, metrics = runtime
    ids = []
    for model, tools in [
        (scripted(call("lookup", {"order_id": "A"}), answer("ok")), [lookup]),
        (scripted(call("refund", {"order_id": "A"})), [refund]),
        (scripted(AuthenticationError("401")), []),
    ]:
        agent = Agent("desk", model=model, tools=tools)
        run = await rt.run(agent, "x", principal="ada@example.com", tenant="acme-corp", session_id="sess-9")
        ids.append(run.id)
    ids.append((await rt.cancel((await rt.start(Agent("desk", model=scripted()), "y")).id)).id)
    scrape = await metrics.render()
    values = [v for _, labels, _ in samples(scrape) for v in labels.values()]
    assert value(scrape, "tether_runs_started_total", agent="desk") == 4
    assert value(scrape, "tether_runs_finished_total", agent="desk", status="cancelled") == 1
    for secret in [*ids, "run_", "ada@example.com", "acme-corp", "sess-9"]:
        assert not [v for v in values if secret in v], secret


async def test_two_metrics_in_one_process_count_apart(tmp_path: Path) -> None:
    """Two runtimes, each with its own RunMetrics: each counts only its own runs."""
    first, second = RunMetrics(), RunMetrics()
    async with (
        Runtime(f"sqlite:///{tmp_path / 'a.db'}", observers=[first]) as a,
        Runtime(f"sqlite:///{tmp_path / 'b.db'}", observers=[second]) as b,
    ):
        await a.run(Agent("desk", model=scripted(answer("one"))), "x")
        await b.run(Agent("desk", model=scripted(answer("two"))), "x")
        await b.run(Agent("desk", model=scripted(answer("three"))), "x")
    assert first.registry is not second.registry
    assert value(await first.render(), "tether_runs_finished_total", agent="desk") == 1
    assert value(await second.render(), "tether_runs_finished_total", agent="desk") == 2


async def test_cost_limits_are_exported_per_agent_or_for_every_agent_seen(tmp_path: Path) -> None:
    """A table of limits is exported at once; one number, for each agent once it is seen."""
    assert value(await RunMetrics().render(), "tether_cost_per_task_limit_usd") is None
    table = await RunMetrics(cost_per_task_limit_usd={"desk": 0.05}).render()
    assert value(table, "tether_cost_per_task_limit_usd", agent="desk") == 0.05
    everyone = RunMetrics(cost_per_task_limit_usd=0.2)
    async with Runtime(f"sqlite:///{tmp_path / 'x.db'}", observers=[everyone]) as rt:
        await rt.run(Agent("triage", model=scripted(answer("ok"))), "x")
    assert value(await everyone.render(), "tether_cost_per_task_limit_usd", agent="triage") == 0.2


async def test_a_failing_store_still_serves_the_counters(tmp_path: Path) -> None:
    """A closed store leaves the gauges as they were; the scrape still answers with the counters."""
    store = SqliteRunStore(tmp_path / "x.db")
    metrics = RunMetrics(store=store)
    async with Runtime(store, observers=[metrics]) as rt:
        await rt.run(Agent("desk", model=scripted(answer("ok"))), "x")
    assert value(await metrics.render(), "tether_runs", status="succeeded") == 1
    await store.close()
    scrape = await metrics.render()
    assert value(scrape, "tether_runs", status="succeeded") == 1
    assert value(scrape, "tether_runs_finished_total", agent="desk", status="succeeded") == 1


# --- HTTP ----------------------------------------------------------------------------------------


async def test_the_worker_endpoint_answers_a_real_scrape(runtime: tuple[Runtime, RunMetrics]) -> None:
    """GET /metrics on 127.0.0.1:0 answers the exposition text with its content type; other paths 404."""
    rt, metrics = runtime
    await rt.run(Agent("desk", model=scripted(answer("ok"))), "x")
    server = await start_metrics_server(metrics, port=0)
    port = server.sockets[0].getsockname()[1]
    async with server, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get("/metrics")
        missing = await client.get("/")
        wrong = await client.post("/metrics")
        head = await client.head("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == metrics.content_type
    assert response.headers["content-type"].startswith("text/plain; version=")
    assert value(response.content, "tether_runs_finished_total", agent="desk", status="succeeded") == 1
    assert (missing.status_code, wrong.status_code) == (404, 405)
    assert (head.status_code, head.content) == (200, b"")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_serve_metrics_serves_until_cancelled_then_frees_its_port() -> None:
    """serve_metrics answers until its task is cancelled; afterwards nothing listens on the port."""
    port = free_port()
    task = asyncio.create_task(serve_metrics(RunMetrics(), port=port))
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(200):
            with contextlib.suppress(httpx.ConnectError):
                assert (await client.get("/metrics")).status_code == 200
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("serve_metrics did not start listening")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(httpx.ConnectError):
            await client.get("/metrics")


async def test_the_gateway_app_serves_metrics_of_its_calls_and_breakers() -> None:
    """The OpenAI endpoint with a RunMetrics: its calls are counted and GET /metrics serves them."""
    breakers = BreakerRegistry()
    breakers.get("model:fn")
    backend = ModelBackend({"default": scripted(answer("hi"), name="fn")})
    metrics = RunMetrics(breakers=breakers)
    app = create_openai_app(backend, metrics=metrics)
    body = {"model": "default", "messages": [{"role": "user", "content": "hello"}]}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == metrics.content_type
    # A plain model names no model in its answer: the route stands for it.
    assert value(response.content, "tether_model_calls_total", model="default", outcome="ok") == 1
    assert value(response.content, "tether_tokens_total", model="default", kind="input") == 100
    assert value(response.content, "tether_breaker_state", target="model:fn") == 0


async def test_the_gateway_app_counts_failed_calls_and_keeps_metrics_behind_its_keys() -> None:
    """A failed call counts as an error of its route by class; /metrics needs the API key too."""
    backend = ModelBackend({"default": scripted(ModelRetryableError("503"), name="fn")})
    app = create_openai_app(backend, api_keys=["k"], metrics=RunMetrics())
    body = {"model": "default", "messages": [{"role": "user", "content": "hello"}]}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        assert (await client.get("/metrics")).status_code == 401
        headers = {"Authorization": "Bearer k"}
        assert (await client.post("/v1/chat/completions", json=body, headers=headers)).status_code == 502
        scrape = (await client.get("/metrics", headers=headers)).content
    assert value(scrape, "tether_model_calls_total", model="default", outcome="error") == 1
    assert value(scrape, "tether_errors_total", error_class="retryable") == 1


def test_the_gateway_app_has_no_metrics_route_without_metrics() -> None:
    """Without a RunMetrics the app is as before: /metrics is not one of its routes."""
    app = create_openai_app(ModelBackend({"default": scripted()}))
    assert "/metrics" not in [getattr(route, "path", "") for route in app.routes]


# --- the worker command and settings -----------------------------------------------------------


def test_tether_worker_serves_metrics_while_it_works(tmp_path: Path) -> None:
    """`tether worker --metrics-port 0` prints its URL, serves the runs it ends, stops on SIGTERM."""
    db = tmp_path / "w.db"

    async def enqueue() -> None:
        store = SqliteRunStore(db)
        await store.create_run(NewRun(id="run_ghost1", agent_name="ghost", input="hi"))
        await store.close()

    asyncio.run(enqueue())
    worker = subprocess.Popen(
        [sys.executable, "-m", "tether", "worker", "--db", f"sqlite:///{db}", "--metrics-port", "0"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert worker.stderr is not None
        line = worker.stderr.readline()
        assert line.startswith("metrics at http://127.0.0.1:"), line
        url = line.split()[-1]
        deadline = time.monotonic() + 20
        while True:
            scrape = httpx.get(url, timeout=5).content
            if value(scrape, "tether_runs_finished_total", agent="ghost", status="failed") == 1:
                break
            assert time.monotonic() < deadline, scrape.decode()
            time.sleep(0.05)
        assert value(scrape, "tether_runs", status="failed") == 1
        assert value(scrape, "tether_errors_total", error_class="fatal") == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
    assert worker.returncode == 0, err
    assert "worker stopped after 1 runs" in err


def test_tether_gateway_serves_metrics_of_the_calls_it_served(tmp_path: Path) -> None:
    """`tether gateway` (a real subprocess) serves /metrics: its call, by model, and its breaker."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": "hi"}]))
    command = [sys.executable, "-m", "tether", "gateway", "--port", "0", "--model", f"fast=scripted:{script}"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line
        base = line.split()[-1].removesuffix("/v1")
        body = {"model": "fast", "messages": [{"role": "user", "content": "hello"}]}
        assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10).status_code == 200
        response = httpx.get(f"{base}/metrics", timeout=10)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert response.headers["content-type"].startswith("text/plain; version=")
    spec = f"scripted:{script}"
    assert value(response.content, "tether_model_calls_total", model=spec, outcome="ok") == 1
    assert value(response.content, "tether_breaker_state", target=f"model:{spec}") == 0


def test_tether_worker_reports_a_metrics_port_in_use(tmp_path: Path) -> None:
    """A --metrics-port that cannot be bound stops the worker with exit 1, naming the address."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["worker", "--db", f"sqlite:///{tmp_path / 'w.db'}", "--metrics-port", str(port)]
        result = CliRunner().invoke(cli_app, [*args, "--exit-when-idle"])
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{port}" in result.output


def test_metrics_settings_fail_naming_the_key(tmp_path: Path) -> None:
    """[tether.metrics] takes host, port and cost limits; a bad value fails naming metrics.<key>."""
    config = tmp_path / "tether.toml"
    config.write_text(
        "[tether.metrics]\nport = 9464\n[tether.metrics.cost_per_task_limit_usd]\ndesk = 0.05\n"
    )
    settings = load_settings(config, environ={})
    assert (settings.metrics.host, settings.metrics.port) == ("127.0.0.1", 9464)
    assert settings.metrics.cost_per_task_limit_usd == {"desk": 0.05}
    for text, key in [
        ("port = 70000", "metrics.port"),
        ("cost_per_task_limit_usd = -1", "metrics.cost_per_task_limit_usd"),
        ('cost_per_task_limit_usd = { desk = "cheap" }', "metrics.cost_per_task_limit_usd"),
        ("colour = 1", "metrics.colour"),
    ]:
        config.write_text(f"[tether.metrics]\n{text}\n")
        with pytest.raises(ConfigurationError, match=key.replace(".", r"\.")):
            load_settings(config, environ={})


async def test_run_duration_leaves_out_the_wait_for_a_person(tmp_path: Path) -> None:
    """A run that waited for an approval reports its latency without the minutes a person took."""
    from tether import ToolCall, tool

    @tool(side_effect="write", idempotent=True, approval=True)
    def refund(order_id: str) -> str:
        """Refund."""
        return "ok"

    def respond(request: ModelRequest) -> ModelResponse:
        if request.turn == 0:
            return ModelResponse(
                tool_calls=(ToolCall("c0", "refund", {"order_id": "A"}, '{"order_id": "A"}'),)
            )
        return ModelResponse(content="done")

    metrics = RunMetrics()
    async with Runtime(f"sqlite:///{tmp_path / 'w.db'}", observers=[metrics]) as runtime:
        agent = Agent("waiter", model=FunctionModel(respond), tools=[refund])
        run = await runtime.run(agent, "refund A")
        [question] = await runtime.inbox()
        # The person answers "two hours later": move the run's start and the question's opening back.
        db = runtime.store.connection  # type: ignore[attr-defined]
        db.execute(
            "UPDATE runs SET created_at_epoch_ms = created_at_epoch_ms - 7200000 WHERE id = ?", (run.id,)
        )
        db.execute(
            "UPDATE escalations SET created_at_epoch_ms = created_at_epoch_ms - 7200000 WHERE id = ?",
            (question.id,),
        )
        await runtime.answer(question.id, "approve")
        await runtime.execute(run.id)
    [family] = [
        f
        for f in text_string_to_metric_families((await metrics.render()).decode())
        if f.name == "tether_run_duration_seconds"
    ]
    [total] = [s.value for s in family.samples if s.name.endswith("_sum")]
    assert 0 < total < 60  # two hours of wall time, all but seconds of it waiting for the person
