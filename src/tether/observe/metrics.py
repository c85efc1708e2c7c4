"""RunMetrics: a run's events as Prometheus metrics, with scrape-time gauges of the store and breakers.

Counters and histograms are process-local: each worker (and each gateway) exports its own, and
Prometheus sums them (`sum by (agent) (rate(...))`). Every RunMetrics has its own registry, so several
runtimes in one process count apart. Labels hold only bounded values — agent, model, tool and route
names, and enum-like values (statuses, reasons, error classes) — never run ids, principals, tenants
or free text.

    tether_runs_started_total{agent}                run.started
    tether_runs_finished_total{agent, status}       the event that ends a run (run.completed, ...)
    tether_run_duration_seconds{agent}              the same: time since run.started, less people's time
    tether_run_cost_usd{agent}                      the same, when the run's cost is known
    tether_escalations_total{agent, reason}         escalation.opened
    tether_model_calls_total{model, outcome}        model.response, model.error, a call no model answered
    tether_model_call_duration_seconds{model}       model.response
    tether_tokens_total{model, kind}                model.response usage
    tether_cost_usd_total{agent}                    model.response usage
    tether_model_retries_total{model}               model.retry
    tether_fallbacks_total{route, model}            fallback.used
    tether_cache_hits_total{layer}                  cache.hit
    tether_tool_calls_total{tool, outcome}          tool.result
    tether_tool_call_duration_seconds{tool}         tool.result
    tether_errors_total{error_class}                failed model calls, run.failed, run.attempt_failed
    tether_budget_warnings_total{level, counter}    budget.warning
    tether_budget_exceeded_total{level, counter}    budget.exceeded
    tether_gate_decisions_total{action}             gate.decision
    tether_guardrail_verdicts_total{guardrail, source, action}   guardrail.verdict
    tether_permission_denials_total{tool}           permission.denied
    tether_behaviour_anomalies_total{kind}          behaviour.anomaly
    tether_runs{status}, tether_dlq_depth, tether_inbox_depth, tether_breaker_state{target}    at scrape
    tether_cost_per_task_limit_usd{agent}           configuration
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from tether.errors import ErrorClass, classify
from tether.resilience.breaker import BreakerRegistry, BreakerState
from tether.store.base import RunStore
from tether.types import EventKind, JsonDict, ModelRequest, ModelResponse, Run, RunEvent, RunStatus, Usage

logger = logging.getLogger("tether.observe")

# LLM calls take from tens of milliseconds (a cache hit, a small model) to minutes (long answers).
MODEL_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
TOOL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Dense around the 10 s p99 alert; the long tail holds runs that waited for a person.
RUN_BUCKETS_S = (0.5, 1.0, 2.5, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0, 86400.0)
COST_BUCKETS_USD = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

FINISHED = {
    EventKind.RUN_COMPLETED: RunStatus.SUCCEEDED,
    EventKind.RUN_FAILED: RunStatus.FAILED,
    EventKind.RUN_CANCELLED: RunStatus.CANCELLED,
    EventKind.RUN_ESCALATED: RunStatus.ESCALATED,
    EventKind.RUN_DEAD_LETTERED: RunStatus.DEAD_LETTERED,
}
BREAKER_VALUES = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}
UNEXPECTED = "unexpected"  # the error class of an attempt ended by an exception the loop did not expect
UNKNOWN_TOOL = "(unknown)"  # the tool label of a call to a tool the agent lacks (the name is the model's)
MAX_LABEL_CHARS = 120
MAX_TRACKED_ATTEMPTS = 10_000  # attempts whose end this process never sees (lease lost) are forgotten
READ_TIMEOUT_S = 5.0  # a scraper that has not sent its request head by then is dropped
MAX_HEAD_BYTES = 16 * 1024
_ERROR_CLASSES = frozenset(error_class.value for error_class in ErrorClass)


@dataclass
class _Attempt:
    """What this process saw of a run's current attempt: its cost so far, the model call in flight."""

    number: int
    cost_usd: float | None = None
    model: str | None = None  # a model.request not answered yet
    error_counted: bool = False  # a model.error already counted the failure that ends the attempt


class _ChatBackend(Protocol):
    def routes(self) -> list[str]: ...

    async def complete(self, route: str, request: ModelRequest, /) -> ModelResponse: ...


class RunMetrics:
    """A RunObserver that counts runs, calls, errors and spend; `render()` is the scrape.

    `store` and `breakers` feed the gauges refreshed at each scrape (absent when not given).
    `cost_per_task_limit_usd` is exported for the cost alert: per agent, or one number for every agent
    this process sees.
    """

    content_type = CONTENT_TYPE_LATEST

    def __init__(
        self,
        *,
        store: RunStore | None = None,
        breakers: BreakerRegistry | None = None,
        cost_per_task_limit_usd: Mapping[str, float] | float | None = None,
    ) -> None:
        self.store = store
        self.breakers = breakers
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}  # label values are bounded
        self.registry = CollectorRegistry()
        r = self.registry
        self.runs_started = Counter(
            "tether_runs_started", "Runs started (run.started), by agent.", ["agent"], registry=r
        )
        self.runs_finished = Counter(
            "tether_runs_finished",
            "Runs that ended, by agent and status (succeeded, failed, cancelled, escalated: a person "
            "took over and answered, dead_lettered). A dead letter replayed or discarded ends again.",
            ["agent", "status"],
            registry=r,
        )
        self.run_duration = Histogram(
            "tether_run_duration_seconds",
            "Wall time of a run, by agent: from run.started to the event that ended it, less the time "
            "its questions waited for a person's answer (queued time included).",
            ["agent"],
            buckets=RUN_BUCKETS_S,
            registry=r,
        )
        self.run_cost = Histogram(
            "tether_run_cost_usd",
            "Cost of a run in US dollars, by agent, observed when it ends if its cost is known.",
            ["agent"],
            buckets=COST_BUCKETS_USD,
            registry=r,
        )
        self.cost_limit = Gauge(
            "tether_cost_per_task_limit_usd",
            "Configured cost limit per run in US dollars, by agent (absent when unset).",
            ["agent"],
            registry=r,
        )
        self.escalations = Counter(
            "tether_escalations",
            "Runs handed to a person (escalation.opened), by agent and reason (approval, question, "
            "budget, step_limit, low_confidence, model_unavailable, ...).",
            ["agent", "reason"],
            registry=r,
        )
        self.model_calls = Counter(
            "tether_model_calls",
            "Model calls by outcome (ok, error) and model: the model that answered, or for a failed "
            "call the route or model spec that was asked.",
            ["model", "outcome"],
            registry=r,
        )
        self.model_duration = Histogram(
            "tether_model_call_duration_seconds",
            "Duration of answered model calls (retries and fallbacks included), by model.",
            ["model"],
            buckets=MODEL_BUCKETS_S,
            registry=r,
        )
        self.tokens = Counter(
            "tether_tokens", "Tokens used, by model and kind (input, output).", ["model", "kind"], registry=r
        )
        self.cost = Counter(
            "tether_cost_usd",
            "Money spent on model calls in US dollars (priced calls only), by agent.",
            ["agent"],
            registry=r,
        )
        self.model_retries = Counter(
            "tether_model_retries",
            "Model call attempts retried (model.retry), by model.",
            ["model"],
            registry=r,
        )
        self.fallbacks = Counter(
            "tether_fallbacks",
            "Fallbacks to the next model of a route (fallback.used), by route and the model that failed.",
            ["route", "model"],
            registry=r,
        )
        self.tool_calls = Counter(
            "tether_tool_calls",
            "Tool calls by tool and outcome: succeeded, failed, unknown (timed out: it may have taken "
            f"effect), invalid (bad arguments or no such tool: tool={UNKNOWN_TOOL}), denied (by a person), "
            "unavailable (breaker, limit or pool refused it), cached.",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "tether_tool_call_duration_seconds",
            "Duration of tool calls that ran (retries included; not cached ones), by tool.",
            ["tool"],
            buckets=TOOL_BUCKETS_S,
            registry=r,
        )
        self.errors = Counter(
            "tether_errors",
            "Errors by error_class: a failed model call (retryable, rate_limited, timeout, bad_request, "
            "context_too_long, content_filter, unavailable, fatal), a failed run (its class), or "
            f"{UNEXPECTED} (an exception ended an attempt; the run is tried again).",
            ["error_class"],
            registry=r,
        )
        self.cache_hits = Counter(
            "tether_cache_hits", "Cache hits, by layer (exact, semantic, stale, tool).", ["layer"], registry=r
        )
        self.budget_warnings = Counter(
            "tether_budget_warnings",
            "Budget counters crossing their warning level, by level (run, session, principal-day, "
            "tenant-day, principal-hour) and counter (tokens, cost_usd, tool_calls, mutations, custom).",
            ["level", "counter"],
            registry=r,
        )
        self.budget_exceeded = Counter(
            "tether_budget_exceeded",
            "Actions refused by a budget (nothing ran), by level and counter.",
            ["level", "counter"],
            registry=r,
        )
        self.gate_decisions = Counter(
            "tether_gate_decisions",
            "Confidence gate decisions, by action (act, confirm, escalate; transfer: the user asked for "
            "a person).",
            ["action"],
            registry=r,
        )
        self.guardrail_verdicts = Counter(
            "tether_guardrail_verdicts",
            "Guardrail findings in user input or tool output, by guardrail (injection, size, ...), source "
            "(user, tool) and action (block, sanitise, escalate).",
            ["guardrail", "source", "action"],
            registry=r,
        )
        self.permission_denials = Counter(
            "tether_permission_denials",
            "Tool calls the permission policy denied, by tool.",
            ["tool"],
            registry=r,
        )
        self.behaviour_anomalies = Counter(
            "tether_behaviour_anomalies",
            "Tool calls unlike an agent's usual behaviour, held for a person, by kind (novel_tool, "
            "write_burst, call_spike).",
            ["kind"],
            registry=r,
        )
        self.runs = Gauge(
            "tether_runs", "Runs in the store by status, read at scrape.", ["status"], registry=r
        )
        self.dlq_depth = Gauge(
            "tether_dlq_depth", "Dead-lettered runs in the store, read at scrape.", registry=r
        )
        self.inbox_depth = Gauge(
            "tether_inbox_depth", "Runs waiting for a person (waiting_human), read at scrape.", registry=r
        )
        self.breaker_state = Gauge(
            "tether_breaker_state",
            "Circuit breaker state by target (model:<spec>, tool:<name>): 0 closed, 1 half-open, 2 open.",
            ["target"],
            registry=r,
        )
        self._default_limit_usd: float | None = None
        if isinstance(cost_per_task_limit_usd, int | float):
            self._default_limit_usd = float(cost_per_task_limit_usd)
        else:
            for agent, limit_usd in (cost_per_task_limit_usd or {}).items():
                self.cost_limit.labels(agent=_label(agent)).set(limit_usd)
        self._agents_seen: set[str] = set()
        self._attempts: dict[str, _Attempt] = {}
        self._handlers: dict[str, Callable[[Run, RunEvent], None]] = {
            EventKind.RUN_STARTED: self._started,
            EventKind.MODEL_REQUEST: self._model_request,
            EventKind.MODEL_RESPONSE: self._model_response,
            EventKind.MODEL_ERROR: self._model_error,
            EventKind.TOOL_RESULT: self._tool_result,
            EventKind.ESCALATION_OPENED: self._escalation_opened,
            EventKind.RUN_ATTEMPT_FAILED: self._attempt_failed,
            **dict.fromkeys(FINISHED, self._finished),
        }
        # Events counted by labels taken from their data: the counter, and the data keys in label order.
        self._notes: dict[str, tuple[Counter, tuple[str, ...]]] = {
            EventKind.MODEL_RETRY: (self.model_retries, ("model",)),
            EventKind.FALLBACK_USED: (self.fallbacks, ("route", "from")),
            EventKind.CACHE_HIT: (self.cache_hits, ("layer",)),
            EventKind.BUDGET_WARNING: (self.budget_warnings, ("scope", "counter")),  # scope: the level
            EventKind.BUDGET_EXCEEDED: (self.budget_exceeded, ("scope", "counter")),
            EventKind.GATE_DECISION: (self.gate_decisions, ("action",)),
            EventKind.GUARDRAIL_VERDICT: (self.guardrail_verdicts, ("guardrail", "source", "action")),
            EventKind.PERMISSION_DENIED: (self.permission_denials, ("tool",)),
            EventKind.BEHAVIOUR_ANOMALY: (self.behaviour_anomalies, ("kind",)),
        }

    def _child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, remembered: the label lookup costs more than the increment."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # The observer.
    def on_events(self, run: Run, events: Sequence[RunEvent]) -> None:
        if self._default_limit_usd is not None and run.agent_name not in self._agents_seen:
            self._agents_seen.add(run.agent_name)
            self.cost_limit.labels(agent=_label(run.agent_name)).set(self._default_limit_usd)
        for event in events:
            handler = self._handlers.get(event.kind)
            if handler is not None:
                handler(run, event)
            else:
                self._note(event.kind, event.data)

    def _note(self, kind: str, data: JsonDict) -> None:
        counted = self._notes.get(kind)
        if counted is not None:
            counter, keys = counted
            self._child(counter, *(_label(data.get(key)) for key in keys)).inc()

    def _started(self, run: Run, event: RunEvent) -> None:
        self.runs_started.labels(agent=_label(run.agent_name)).inc()

    def _model_request(self, run: Run, event: RunEvent) -> None:
        self._attempt(run).model = _label(event.data.get("model"))

    def _model_response(self, run: Run, event: RunEvent) -> None:
        data = event.data
        usage = Usage.from_dict(data.get("usage") or {})
        self._model_answered(_label(data.get("model")), usage, data.get("duration_ms"))
        attempt = self._attempt(run)
        attempt.model = None
        if usage.cost_usd is not None:
            self._child(self.cost, _label(run.agent_name)).inc(usage.cost_usd)
            attempt.cost_usd = (attempt.cost_usd or 0.0) + usage.cost_usd

    def _model_error(self, run: Run, event: RunEvent) -> None:
        attempt = self._attempt(run)
        model = event.data.get("model") or attempt.model
        self._model_failed(_label(model), _error_class(event.data.get("error_class")))
        attempt.model, attempt.error_counted = None, True

    def _tool_result(self, run: Run, event: RunEvent) -> None:
        data = event.data
        tool = UNKNOWN_TOOL if data.get("error") == "ToolNotFoundError" else _label(data.get("tool"))
        outcome = _tool_outcome(data)
        self._child(self.tool_calls, tool, outcome).inc()
        duration_ms = data.get("duration_ms")
        if outcome != "cached" and isinstance(duration_ms, int | float):
            self._child(self.tool_duration, tool).observe(duration_ms / 1000)

    def _escalation_opened(self, run: Run, event: RunEvent) -> None:
        self.escalations.labels(agent=_label(run.agent_name), reason=_label(event.data.get("reason"))).inc()
        context = event.data.get("context")
        if isinstance(context, dict) and "error_class" in context:  # no model could answer
            self._end_attempt(run, context["error_class"])
        else:
            self._end_attempt(run, None)

    def _attempt_failed(self, run: Run, event: RunEvent) -> None:
        self.errors.labels(error_class=UNEXPECTED).inc()
        self._end_attempt(run, None)

    def _finished(self, run: Run, event: RunEvent) -> None:
        agent = _label(run.agent_name)
        self.runs_finished.labels(agent=agent, status=FINISHED[EventKind(event.kind)].value).inc()
        waited_ms = event.data.get("waited_ms")
        waited_ms = waited_ms if isinstance(waited_ms, int) else 0
        self.run_duration.labels(agent=agent).observe(
            max(0, event.created_at_epoch_ms - run.created_at_epoch_ms - waited_ms) / 1000
        )
        failure = (
            event.data.get("error_class", ErrorClass.FATAL) if event.kind == EventKind.RUN_FAILED else None
        )
        cost_usd = self._run_cost_usd(run, event, self._end_attempt(run, failure))
        if cost_usd is not None:
            self.run_cost.labels(agent=agent).observe(cost_usd)

    # The attempts this process is running: cost and the model call in flight.
    def _attempt(self, run: Run) -> _Attempt:
        attempt = self._attempts.get(run.id)
        if attempt is None or attempt.number != run.attempts:
            if len(self._attempts) >= MAX_TRACKED_ATTEMPTS:
                del self._attempts[next(iter(self._attempts))]
            attempt = self._attempts[run.id] = _Attempt(run.attempts)
        return attempt

    def _end_attempt(self, run: Run, failure: object) -> _Attempt | None:
        """Forget the attempt; a `failure` (an error class) not counted yet is counted, and so is the
        model call it ended, if one was in flight."""
        attempt = self._attempts.pop(run.id, None)
        if attempt is not None and attempt.number != run.attempts:
            attempt = None
        if failure is None or (attempt is not None and attempt.error_counted):
            return attempt
        error_class = _error_class(failure)
        if attempt is not None and attempt.model is not None:
            self._model_failed(attempt.model, error_class)
        else:
            self.errors.labels(error_class=error_class).inc()
        return attempt

    @staticmethod
    def _run_cost_usd(run: Run, event: RunEvent, attempt: _Attempt | None) -> float | None:
        if event.kind == EventKind.RUN_COMPLETED and isinstance(event.data.get("usage"), dict):
            return Usage.from_dict(event.data["usage"]).cost_usd
        # A run read at its end (cancelled, dead-lettered) counts everything. The loop's copy was read
        # when the attempt began: it lacks what this attempt spent, which this process saw.
        if run.status.is_terminal or attempt is None:
            return run.usage.cost_usd
        return (run.usage + Usage(cost_usd=attempt.cost_usd)).cost_usd

    # Counting a call, for runs and for the gateway's endpoint alike.
    def _model_answered(self, model: str, usage: Usage, duration_ms: object) -> None:
        self._child(self.model_calls, model, "ok").inc()
        self._child(self.tokens, model, "input").inc(usage.input_tokens)
        self._child(self.tokens, model, "output").inc(usage.output_tokens)
        if isinstance(duration_ms, int | float):
            self._child(self.model_duration, model).observe(duration_ms / 1000)

    def _model_failed(self, model: str, error_class: str) -> None:
        self.model_calls.labels(model=model, outcome="error").inc()
        self.errors.labels(error_class=error_class).inc()

    def observe_call(
        self,
        route: str,
        response: ModelResponse | None,
        *,
        duration_s: float,
        error: BaseException | None = None,
    ) -> None:
        """Count one call served outside a run (the gateway's endpoint): its model call, retries,
        fallbacks and cache hits. Cost is counted per agent, so not here."""
        for kind, data in response.events if response is not None else getattr(error, "events", ()):
            self._note(kind, data)
        if response is not None:
            self._model_answered(_label(response.model or route), response.usage, duration_s * 1000)
        elif error is not None:
            self._model_failed(_label(route), classify(error).value)

    def metered(self, backend: _ChatBackend) -> MeteredChatBackend:
        return MeteredChatBackend(backend, self)

    # The scrape.
    async def render(self) -> bytes:
        """Refresh the gauges read from the store and the breakers, then the exposition text."""
        await self._refresh()
        return generate_latest(self.registry)

    async def _refresh(self) -> None:
        # A store or Redis that fails leaves the gauges as they were: the counters are still served.
        if self.store is not None:
            try:
                counts = await self.store.count_by_status()
            except Exception:
                logger.exception("metrics: counting runs by status failed")
            else:
                for status, count in counts.items():
                    self.runs.labels(status=status.value).set(count)
                self.dlq_depth.set(counts.get(RunStatus.DEAD_LETTERED, 0))
                self.inbox_depth.set(counts.get(RunStatus.WAITING_HUMAN, 0))
        if self.breakers is not None:
            try:
                states = await self.breakers.states()
            except Exception:
                logger.exception("metrics: reading breaker states failed")
            else:
                for name, state in states.items():
                    self.breaker_state.labels(target=_label(name)).set(BREAKER_VALUES[state])


class MeteredChatBackend:
    """A chat backend whose calls are counted by a RunMetrics (the gateway's OpenAI endpoint)."""

    def __init__(self, backend: _ChatBackend, metrics: RunMetrics) -> None:
        self._backend = backend
        self._metrics = metrics

    def routes(self) -> list[str]:
        return self._backend.routes()

    async def complete(self, route: str, request: ModelRequest, /) -> ModelResponse:
        started = time.perf_counter()
        try:
            response = await self._backend.complete(route, request)
        except Exception as exc:
            self._metrics.observe_call(route, None, duration_s=time.perf_counter() - started, error=exc)
            raise
        self._metrics.observe_call(route, response, duration_s=time.perf_counter() - started)
        return response


def _label(value: object) -> str:
    text = str(value) if value is not None and value != "" else "unknown"
    return text[:MAX_LABEL_CHARS]


def _error_class(value: object) -> str:
    """An ErrorClass value; anything else (a bug's text, a newer class) is `fatal`, keeping labels bounded."""
    return str(value) if value in _ERROR_CLASSES else ErrorClass.FATAL.value


def _tool_outcome(data: JsonDict) -> str:
    if data.get("cached"):
        return "cached"
    if data.get("invalid"):
        return "invalid"
    if data.get("error") in ("denied", "unavailable"):
        return str(data["error"])
    outcome = data.get("outcome")
    return outcome if outcome in ("succeeded", "failed", "unknown") else "failed"


# The worker's endpoint: a few lines of HTTP on asyncio streams, for Prometheus and curl.
async def start_metrics_server(metrics: RunMetrics, *, host: str = "127.0.0.1", port: int) -> asyncio.Server:
    """Listen on host:port (0 picks a free port: see `server.sockets`); GET /metrics answers the scrape."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, content_type, body = await _answer(metrics, head)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if not head.startswith(b"HEAD "):
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that is slow, gone or sends a huge head gets nothing
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD_BYTES)


async def serve_metrics(metrics: RunMetrics, *, host: str = "127.0.0.1", port: int) -> None:
    """Serve GET /metrics until cancelled; the socket is closed on the way out."""
    server = await start_metrics_server(metrics, host=host, port=port)
    async with server:
        await server.serve_forever()


async def _answer(metrics: RunMetrics, head: bytes) -> tuple[str, str, bytes]:
    method, _, rest = head.partition(b" ")
    path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
    text = "text/plain; charset=utf-8"
    if path != b"/metrics":
        return "404 Not Found", text, b"not found; metrics are at /metrics\n"
    if method not in (b"GET", b"HEAD"):
        return "405 Method Not Allowed", text, b"use GET /metrics\n"
    try:
        return "200 OK", metrics.content_type, await metrics.render()
    except Exception:
        logger.exception("metrics: rendering the scrape failed")
        return "500 Internal Server Error", text, b"rendering the metrics failed; see the log\n"
