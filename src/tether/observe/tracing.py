"""RunTracer: a run's events as OpenTelemetry spans, named and attributed by the GenAI conventions.

A trace per run. Child spans carry the run id and agent name; the root also the version, principal,
tenant and session. Its id, and the id of its root span `invoke_agent {agent}`, are derived from the run id,
so a run resumed by another worker, another day, continues the same trace: children point at the root
before it exists, and whichever process records the run's end exports the root, from the run's start.

Spans are built from the events that close them, which carry their own duration (`model.response`,
`tool.result`) or their opening time (`escalation.answered`), so a span needs no state that a crash could
lose. What happened on the way — retries, fallbacks, routing, cache hits — become span events.

    chat {model}            model.response / model.error   (retries, fallbacks as span events)
    execute_tool {tool}     tool.result                    (tool retries, cache hits as span events)
    gate {action}           gate.decision                  (confidence score)
    guardrail budget        budget.warning / budget.exceeded
    guardrail {name}        guardrail.verdict (injection, size), permission.denied, behaviour.anomaly
    escalation {reason}     escalation.answered            (from when it was opened; approvals too)
    invoke_agent {agent}    the run's terminal event       (root; usage and cost of the whole run)

Prompt and answer content is recorded only with `record_content=True`, passed through `redact` first.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from tether.policy.redaction import Redactor
from tether.types import EventKind, JsonDict, Run, RunEvent

TERMINAL = {
    EventKind.RUN_COMPLETED: "succeeded",
    EventKind.RUN_FAILED: "failed",
    EventKind.RUN_CANCELLED: "cancelled",
    EventKind.RUN_ESCALATED: "escalated",
    EventKind.RUN_DEAD_LETTERED: "dead_lettered",
}
SPAN_EVENTS = {  # recorded on the span of the call they happened in
    EventKind.MODEL_RETRY,
    EventKind.FALLBACK_USED,
    EventKind.ROUTE_SELECTED,
    EventKind.BREAKER_OPENED,
    EventKind.BREAKER_CHANGED,
    EventKind.COST_UNKNOWN,
    EventKind.CACHE_HIT,
    EventKind.TOOL_RETRY,
}
GUARD_EVENTS = {EventKind.GUARDRAIL_VERDICT, EventKind.PERMISSION_DENIED, EventKind.BEHAVIOUR_ANOMALY}
_KEEP_ROOTS = 4096  # runs whose root-span context is kept ready (a worker drives a few at a time)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.OK)


def trace_id_of(run_id: str) -> int:
    """The trace id of a run: the same in every process, so a resumed run continues its trace."""
    return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big") or 1


def root_span_id_of(run_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{run_id}:invoke_agent".encode()).digest()[:8], "big") or 1


class RunTracer:
    """A RunObserver that turns committed run events into spans (see the module docstring)."""

    def __init__(
        self,
        processor: SpanProcessor,
        *,
        service_name: str = "tether",
        record_content: bool = False,
        redact: Callable[[str], str] | None = None,
        content_limit: int = 4000,
    ) -> None:
        """`processor` receives each span as it is completed (a batching one for production)."""
        self.processor = processor
        self.record_content = record_content
        # Content is redacted before it leaves: PII and secrets (tether.policy.redaction) by default.
        self._redact = redact if redact is not None else Redactor().redact
        self._content_limit = content_limit
        self._resource = Resource.create({"service.name": service_name})
        self._scope = InstrumentationScope("tether")
        self._random = random.Random()  # span ids; its own generator, seeded from the OS
        self._pending: dict[str, tuple[int, str]] = {}  # run id -> (when, model) of its model request
        self._roots: dict[str, SpanContext] = {}  # run id -> its root span's context (kept ready)

    @classmethod
    def to_exporter(cls, exporter: SpanExporter, *, batch: bool = True, **options: Any) -> RunTracer:
        """A tracer exporting to `exporter`: batched in a background thread, or each span at once."""
        processor = (
            BatchSpanProcessor(exporter, schedule_delay_millis=100, max_export_batch_size=64)
            if batch
            else SimpleSpanProcessor(exporter)
        )
        return cls(processor, **options)

    def shutdown(self) -> None:
        """Export what is buffered and stop (call once, when the process ends)."""
        self.processor.shutdown()

    def on_events(self, run: Run, events: Sequence[RunEvent]) -> None:
        notes: list[RunEvent] = []
        for event in events:
            kind = event.kind
            if kind in SPAN_EVENTS:
                notes.append(event)
                continue
            if kind == EventKind.MODEL_REQUEST:
                self._pending[run.id] = (event.created_at_epoch_ms, str(event.data.get("model") or ""))
            elif kind == EventKind.MODEL_RESPONSE:
                self._chat(run, event, notes)
            elif kind == EventKind.MODEL_ERROR:
                self._chat(run, event, notes, failed=True)
            elif kind == EventKind.TOOL_RESULT:
                self._tool(run, event, notes)
            elif kind == EventKind.GATE_DECISION:
                self._gate(run, event)
            elif kind in (EventKind.BUDGET_WARNING, EventKind.BUDGET_EXCEEDED):
                self._budget(run, event)
            elif kind in GUARD_EVENTS:
                self._guard(run, event)
            elif kind == EventKind.ESCALATION_ANSWERED:
                self._escalation(run, event)
            elif kind in TERMINAL:
                self._root(run, event, notes)
            else:
                continue
            notes = []

    # -- spans ---------------------------------------------------------------------------------

    def _root_context(self, run: Run) -> SpanContext:
        root = self._roots.get(run.id)
        if root is None:
            if len(self._roots) >= _KEEP_ROOTS:
                self._roots.clear()
            root = self._roots[run.id] = SpanContext(
                trace_id_of(run.id), root_span_id_of(run.id), is_remote=False, trace_flags=_SAMPLED
            )
        return root

    def _emit(
        self,
        run: Run,
        name: str,
        attributes: JsonDict,
        *,
        start_ms: float,
        end_ms: float,
        notes: Sequence[RunEvent] = (),
        error: tuple[str, str] | None = None,  # (error.type, description)
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        """Hand a finished child span of the run's root to the processor."""
        root = self._root_context(run)
        context = SpanContext(root.trace_id, self._random.getrandbits(64) or 1, False, _SAMPLED)
        flat = {"tether.run.id": run.id, gen_ai.GEN_AI_AGENT_NAME: run.agent_name, **_flat(attributes)}
        self._finish(
            name, context, root, flat, notes=notes, error=error, start_ms=start_ms, end_ms=end_ms, kind=kind
        )

    def _finish(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        attributes: dict[str, Any],
        *,
        notes: Sequence[RunEvent],
        error: tuple[str, str] | None,
        start_ms: float,
        end_ms: float,
        kind: SpanKind = SpanKind.INTERNAL,
    ) -> None:
        status = _OK
        if error is not None:
            attributes[error_attributes.ERROR_TYPE] = error[0]
            status = Status(StatusCode.ERROR, error[1][:500])
        span = ReadableSpan(
            name,
            context=context,
            parent=parent,
            resource=self._resource,
            attributes=attributes,
            events=[Event(n.kind, _flat(n.data), _ns(n.created_at_epoch_ms)) for n in notes],
            kind=kind,
            status=status,
            start_time=_ns(start_ms),
            end_time=_ns(max(end_ms, start_ms)),
            instrumentation_scope=self._scope,
        )
        self.processor.on_end(span)

    def _chat(self, run: Run, event: RunEvent, notes: Sequence[RunEvent], *, failed: bool = False) -> None:
        data = event.data
        end_ms = float(event.created_at_epoch_ms)
        requested_ms, requested = self._pending.pop(run.id, (None, ""))
        if "duration_ms" in data:
            start_ms = end_ms - float(data["duration_ms"])
        else:
            start_ms = float(requested_ms) if requested_ms is not None else end_ms
        route = requested or str(data.get("model") or "unknown")
        served = [str(n.data["to"]) for n in notes if n.kind == EventKind.FALLBACK_USED and n.data.get("to")]
        spec = str(data.get("served_by") or (served[-1] if served else route))
        provider, _, model = spec.rpartition(":")
        usage = data.get("usage") or {}
        attributes: JsonDict = {
            gen_ai.GEN_AI_OPERATION_NAME: "chat",
            gen_ai.GEN_AI_PROVIDER_NAME: provider or "tether",
            gen_ai.GEN_AI_REQUEST_MODEL: model,
            "tether.route": route,
            "tether.turn": data.get("turn"),
        }
        if not failed and data.get("model"):
            attributes[gen_ai.GEN_AI_RESPONSE_MODEL] = data["model"]
        if usage:
            attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] = usage.get("input_tokens")
            attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.get("output_tokens")
            attributes["tether.cost_usd"] = usage.get("cost_usd")
        if data.get("finish_reason"):
            attributes[gen_ai.GEN_AI_RESPONSE_FINISH_REASONS] = [str(data["finish_reason"])]
        if data.get("confidence") is not None:
            attributes["tether.confidence"] = data["confidence"]
        if self.record_content and not failed:
            attributes[gen_ai.GEN_AI_OUTPUT_MESSAGES] = self._content(json.dumps([_output_message(data)]))
        error = None
        if failed:
            error = (
                str(data.get("error_class") or data.get("error") or "error"),
                str(data.get("message", "")),
            )
        self._emit(
            run,
            f"chat {model}",
            attributes,
            start_ms=start_ms,
            end_ms=end_ms,
            notes=notes,
            error=error,
            kind=SpanKind.CLIENT,  # a call out to a model provider
        )

    def _tool(self, run: Run, event: RunEvent, notes: Sequence[RunEvent]) -> None:
        data = event.data
        end_ms = float(event.created_at_epoch_ms)
        start_ms = end_ms - float(data.get("duration_ms") or 0.0)
        name = str(data.get("tool") or "unknown")
        attributes: JsonDict = {
            gen_ai.GEN_AI_OPERATION_NAME: "execute_tool",
            gen_ai.GEN_AI_TOOL_NAME: name,
            gen_ai.GEN_AI_TOOL_CALL_ID: data.get("call_id"),
            "tether.tool.outcome": data.get("outcome"),
            "tether.turn": data.get("turn"),
        }
        if data.get("attempt", 1) != 1:
            attributes["tether.tool.attempt"] = data["attempt"]
        if data.get("cached"):
            attributes["tether.tool.cached"] = True
        if self.record_content and data.get("content") is not None:
            attributes[gen_ai.GEN_AI_TOOL_CALL_RESULT] = self._content(str(data["content"]))
        error = None
        if data.get("ok") is False:
            error = (str(data.get("error") or data.get("outcome")), str(data.get("outcome", "failed")))
        self._emit(
            run,
            f"execute_tool {name}",
            attributes,
            start_ms=start_ms,
            end_ms=end_ms,
            notes=notes,
            error=error,
        )

    def _gate(self, run: Run, event: RunEvent) -> None:
        data = event.data
        action = str(data.get("action"))
        attributes: JsonDict = {
            "tether.gate.action": action,
            "tether.gate.confidence": data.get("confidence"),
        }
        at = float(event.created_at_epoch_ms)
        self._emit(run, f"gate {action}", attributes, start_ms=at, end_ms=at)

    def _budget(self, run: Run, event: RunEvent) -> None:
        exceeded = event.kind == EventKind.BUDGET_EXCEEDED
        attributes: JsonDict = {
            "tether.guardrail.name": "budget",
            "tether.guardrail.decision": "block" if exceeded else "warn",
            **{f"tether.budget.{key}": value for key, value in event.data.items()},
        }
        at = float(event.created_at_epoch_ms)
        error = ("budget_exceeded", "budget exceeded") if exceeded else None
        self._emit(run, "guardrail budget", attributes, start_ms=at, end_ms=at, error=error)

    def _guard(self, run: Run, event: RunEvent) -> None:
        """A guardrail verdict, a permission denial or a behaviour anomaly: `guardrail {name}`."""
        data = event.data
        if event.kind == EventKind.GUARDRAIL_VERDICT:
            name, decision = str(data.get("guardrail", "guardrail")), str(data.get("action"))
        elif event.kind == EventKind.PERMISSION_DENIED:
            name, decision = "permission", "deny"
        else:
            name, decision = "behaviour", "escalate"
        attributes: JsonDict = {
            "tether.guardrail.name": name,
            "tether.guardrail.decision": decision,
            **{f"tether.guardrail.{key}": value for key, value in data.items() if key != "sanitised"},
        }
        at = float(event.created_at_epoch_ms)
        error = (f"{name}_{decision}", str(data.get("reason", ""))) if decision != "sanitise" else None
        self._emit(run, f"guardrail {name}", attributes, start_ms=at, end_ms=at, error=error)

    def _escalation(self, run: Run, event: RunEvent) -> None:
        data = event.data
        reason = str(data.get("reason") or "escalation")
        end_ms = float(event.created_at_epoch_ms)
        start_ms = float(data.get("opened_at_epoch_ms") or end_ms)
        answer = data.get("answer") or {}
        attributes: JsonDict = {
            "tether.escalation.id": data.get("escalation_id"),
            "tether.escalation.reason": reason,
            "tether.escalation.choice": answer.get("choice"),
            "tether.escalation.by": data.get("by"),
        }
        name = "approval" if reason == "approval" else f"escalation {reason}"
        self._emit(run, name, attributes, start_ms=start_ms, end_ms=end_ms)

    def _root(self, run: Run, event: RunEvent, notes: Sequence[RunEvent]) -> None:
        self._pending.pop(run.id, None)
        self._roots.pop(run.id, None)
        status = TERMINAL[EventKind(event.kind)]
        usage = event.data.get("usage") or {}
        attributes: JsonDict = {
            **_correlation(run),
            gen_ai.GEN_AI_OPERATION_NAME: "invoke_agent",
            "tether.run.status": status,
            "tether.run.claims": run.attempts,  # times a worker took it up: resumes after people too
            "tether.run.waited_ms": event.data.get("waited_ms"),  # for people's answers, in the span
        }
        if usage:
            attributes[gen_ai.GEN_AI_USAGE_INPUT_TOKENS] = usage.get("input_tokens")
            attributes[gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS] = usage.get("output_tokens")
            attributes["tether.cost_usd"] = usage.get("cost_usd")
        if self.record_content:
            message = {"role": "user", "parts": [{"type": "text", "content": run.input}]}
            attributes[gen_ai.GEN_AI_INPUT_MESSAGES] = self._content(json.dumps([message]))
        error = None
        if status in ("failed", "dead_lettered"):
            error = (str(event.data.get("error") or status), str(event.data.get("message", status)))
        context = SpanContext(trace_id_of(run.id), root_span_id_of(run.id), False, _SAMPLED)
        name = f"invoke_agent {run.agent_name}"
        start_ms, end_ms = float(run.created_at_epoch_ms), float(event.created_at_epoch_ms)
        self._finish(
            name, context, None, _flat(attributes), notes=notes, error=error, start_ms=start_ms, end_ms=end_ms
        )

    def _content(self, text: str) -> str:
        if self._redact is not None:
            text = self._redact(text)
        return text[: self._content_limit]


def _output_message(data: JsonDict) -> JsonDict:
    """A model.response as a GenAI output message: text and tool-call parts, and why it stopped."""
    parts: list[JsonDict] = []
    if data.get("content"):
        parts.append({"type": "text", "content": data["content"]})
    for call in data.get("tool_calls") or ():
        parts.append(
            {
                "type": "tool_call",
                "id": call.get("id"),
                "name": call.get("name"),
                "arguments": call.get("arguments"),
            }
        )
    finish = data.get("finish_reason") or ("tool_call" if data.get("tool_calls") else "stop")
    return {"role": "assistant", "parts": parts, "finish_reason": finish}


def _correlation(run: Run) -> JsonDict:
    attributes: JsonDict = {
        "tether.run.id": run.id,
        gen_ai.GEN_AI_AGENT_NAME: run.agent_name,
        gen_ai.GEN_AI_AGENT_VERSION: run.agent_version,
    }
    if run.principal is not None:
        attributes["tether.principal"] = run.principal
    if run.tenant is not None:
        attributes["tether.tenant"] = run.tenant
    if run.session_id is not None:
        attributes[gen_ai.GEN_AI_CONVERSATION_ID] = run.session_id
    return attributes


def _flat(data: JsonDict) -> dict[str, Any]:
    """Attribute-safe values: scalars kept, lists of scalars kept, anything else as JSON; None dropped."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        scalar_list = isinstance(value, list) and all(isinstance(v, str | bool | int | float) for v in value)
        if isinstance(value, str | bool | int | float) or scalar_list:
            flat[key] = value
        else:
            flat[key] = json.dumps(value, separators=(",", ":"), default=str)[:2000]
    return flat


def _ns(epoch_ms: float) -> int:
    return int(epoch_ms * 1_000_000)
