"""RunLogger: one structured log line per meaningful run event, with the ids the traces carry.

JSON lines in production (`format="json"`), aligned key=value lines in a terminal (`"console"`);
`"auto"` picks the console form when the stream is a terminal. Every line has the run id, the trace id
(the same hex id the spans of the run have, see tracing.trace_id_of) and the business context: agent
and version, principal, tenant, session, and per event the model, tokens, cost, tool, outcome and time.
The logger is built per instance (structlog is not configured globally), so runtimes do not share it.
Message content is never logged; errors are, truncated.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, Literal, TextIO

import structlog

from tether.observe.tracing import trace_id_of
from tether.policy.redaction import Redactor
from tether.types import EventKind, JsonDict, Run, RunEvent

LogFormat = Literal["json", "console", "auto"]
LogLevel = Literal["debug", "info", "warning", "error"]
_SEVERITY = {"debug": 10, "info": 20, "warning": 30, "error": 40}

# Events worth a line, and the level they are logged at; the rest (requests, intents) only add noise.
LEVELS: dict[str, str] = {
    EventKind.RUN_STARTED: "info",
    EventKind.RUN_RESUMED: "info",
    EventKind.MODEL_RESPONSE: "debug",  # per call; run.completed carries the run's tokens and cost
    EventKind.MODEL_ERROR: "warning",
    EventKind.MODEL_RETRY: "warning",
    EventKind.FALLBACK_USED: "warning",
    EventKind.BREAKER_OPENED: "warning",
    EventKind.COST_UNKNOWN: "warning",
    EventKind.TOOL_RESULT: "debug",  # a failed call is a warning (see on_events); traces have every call
    EventKind.TOOL_RETRY: "warning",
    EventKind.BUDGET_WARNING: "warning",
    EventKind.BUDGET_EXCEEDED: "warning",
    EventKind.GATE_DECISION: "info",
    EventKind.ESCALATION_OPENED: "warning",
    EventKind.ESCALATION_ANSWERED: "info",
    EventKind.COMPENSATION_STARTED: "warning",
    EventKind.COMPENSATION_RAN: "info",
    EventKind.RUN_COMPLETED: "info",
    EventKind.RUN_ESCALATED: "info",
    EventKind.RUN_FAILED: "error",
    EventKind.RUN_CANCELLED: "info",
    EventKind.RUN_ATTEMPT_FAILED: "error",
    EventKind.RUN_DEAD_LETTERED: "error",
    EventKind.RUN_REPLAYED: "info",
}
# Fields of an event's data that go on its line (scalars only; never content or arguments).
FIELDS = frozenset(
    {
        "model",
        "turn",
        "tool",
        "outcome",
        "attempt",
        "error",
        "error_class",
        "reason",
        "action",
        "confidence",
        "level",
        "counter",
        "limit",
        "used",
        "duration_ms",
        "route",
        "from",
        "to",
        "choice",
        "by",
        "escalation_id",
    }
)
_REDACT = Redactor().redact  # free text in a line (errors, reasons) may quote a customer: PII masked
_KEEP_CONTEXTS = 1024  # runs whose log context is kept ready (a worker drives a few at a time)


class RunLogger:
    """A RunObserver writing structured lines to `stream` (stderr by default)."""

    def __init__(
        self, *, format: LogFormat = "auto", stream: TextIO | None = None, level: LogLevel = "info"
    ) -> None:
        """`level`: the least severe lines written (debug adds every successful tool call)."""
        self.stream = stream if stream is not None else sys.stderr
        console = format == "console" or (format == "auto" and self.stream.isatty())
        renderer: Any = (
            structlog.dev.ConsoleRenderer(colors=False) if console else structlog.processors.JSONRenderer()
        )
        self._log = structlog.wrap_logger(
            structlog.PrintLogger(self.stream),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                renderer,
            ],
            # The filtering wrapper is structlog's fast path: a filtered level costs a no-op call.
            wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        )
        self._contexts: dict[str, JsonDict] = {}
        # The events written at this level, decided once: the rest cost a dict lookup, not a line.
        floor = _SEVERITY[level]
        self._levels = {kind: lvl for kind, lvl in LEVELS.items() if _SEVERITY[lvl] >= floor}
        self._failed_tools = _SEVERITY["warning"] >= floor

    def on_events(self, run: Run, events: Sequence[RunEvent]) -> None:
        log = self._log
        for event in events:
            level = self._levels.get(event.kind)
            if event.kind == EventKind.TOOL_RESULT and event.data.get("ok") is False and self._failed_tools:
                level = "warning"
            if level is None:
                continue
            getattr(log, level)(event.kind, seq=event.seq, **self._context(run), **_fields(event.data))

    def _context(self, run: Run) -> JsonDict:
        context = self._contexts.get(run.id)
        if context is None:
            if len(self._contexts) >= _KEEP_CONTEXTS:
                self._contexts.clear()
            context = self._contexts[run.id] = _context(run)
        return context


def _context(run: Run) -> JsonDict:
    context: JsonDict = {
        "run_id": run.id,
        "trace_id": f"{trace_id_of(run.id):032x}",
        "agent": run.agent_name,
        "version": run.agent_version,
    }
    for key in ("principal", "tenant", "session_id"):
        value = getattr(run, key)
        if value is not None:
            context[key] = value
    return context


def _fields(data: JsonDict) -> JsonDict:
    fields: JsonDict = {
        key: value
        for key, value in data.items()
        if key in FIELDS and isinstance(value, str | int | float | bool)
    }
    if isinstance(fields.get("error"), str):
        fields["error"] = _REDACT(fields["error"][:300])
    usage = data.get("usage")
    if isinstance(usage, dict):
        fields.update(
            input_tokens=usage.get("input_tokens"),
            output_tokens=usage.get("output_tokens"),
            cost_usd=usage.get("cost_usd"),
        )
    if isinstance(data.get("message"), str):
        fields["message"] = _REDACT(data["message"][:300])
    if isinstance(fields.get("reason"), str):
        fields["reason"] = _REDACT(fields["reason"])
    return fields
