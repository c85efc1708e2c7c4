"""What the console's pages show, computed from the store: a run's trace as a waterfall, bar charts.

The waterfall is the run's OpenTelemetry trace itself: the run's events go through the same `RunTracer`
that exports spans, into a processor that keeps them, so the console and the tracing backend never disagree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from tether.observe.tracing import RunTracer
from tether.types import JsonDict, Run, RunEvent

_KINDS = {  # span name prefix -> bar class (colour) in the waterfall
    "invoke_agent": "root",
    "chat": "chat",
    "execute_tool": "tool",
    "gate": "gate",
    "guardrail": "guard",
    "escalation": "escalation",
    "approval": "escalation",
}
_SHOWN_ATTRIBUTES = (
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "tether.cost_usd",
    "gen_ai.tool.name",
    "tether.tool.outcome",
    "tether.gate.action",
    "tether.gate.confidence",
    "tether.guardrail.name",
    "tether.guardrail.decision",
    "tether.escalation.reason",
    "tether.escalation.choice",
    "tether.escalation.by",
    "tether.run.status",
    "error.type",
)


class _KeepSpans(SpanProcessor):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


@dataclass(frozen=True, slots=True)
class Bar:
    """One span on the time axis: offsets and widths in percent of the trace's duration."""

    name: str
    kind: str
    depth: int
    start_ms: float  # from the run's start
    duration_ms: float
    left_pct: float
    width_pct: float
    failed: bool
    details: tuple[tuple[str, str], ...]
    events: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Waterfall:
    bars: tuple[Bar, ...]
    total_ms: float
    ticks: tuple[tuple[float, float], ...]  # (percent, milliseconds)
    finished: bool


def waterfall(run: Run, events: Sequence[RunEvent], *, now_ms: float | None = None) -> Waterfall:
    """The run's spans as bars, root first then children by start time. A run still going gets a root
    bar up to now (its real root span exists only once the run ends)."""
    keep = _KeepSpans()
    RunTracer(keep).on_events(run, events)
    spans = keep.spans
    start_ns = min([run.created_at_epoch_ms * 1_000_000, *(s.start_time or 0 for s in spans)])
    root = next((s for s in spans if s.parent is None or s.name.startswith("invoke_agent")), None)
    finished = root is not None
    if root is not None:
        end_ns = max(root.end_time or 0, *(s.end_time or 0 for s in spans))
    else:
        latest_ms = events[-1].created_at_epoch_ms if events else run.updated_at_epoch_ms
        still = now_ms if now_ms is not None else time.time() * 1000
        end_ns = int(max(latest_ms, min(still, latest_ms + 60_000)) * 1_000_000)
        if spans:
            end_ns = max(end_ns, *(s.end_time or 0 for s in spans))
    total_ns = max(end_ns - start_ns, 1_000_000)  # at least 1 ms, so bars have a scale
    bars: list[Bar] = []
    if root is None:
        bars.append(
            _bar(
                f"invoke_agent {run.agent_name} ({run.status})",
                "root",
                0,
                start_ns,
                end_ns,
                start_ns,
                total_ns,
            )
        )
    children = sorted((s for s in spans if s is not root), key=lambda s: (s.start_time or 0, s.end_time or 0))
    for span in ([root] if root is not None else []) + children:
        kind = _KINDS.get(span.name.split(" ", 1)[0], "other")
        bars.append(
            _bar(
                span.name,
                kind,
                0 if span is root else 1,
                span.start_time or start_ns,
                span.end_time or start_ns,
                start_ns,
                total_ns,
                failed=span.status.status_code == StatusCode.ERROR,
                attributes=dict(span.attributes or {}),
                notes=tuple(f"{event.name}" for event in span.events),
            )
        )
    total_ms = total_ns / 1_000_000
    ticks = tuple((pct, total_ms * pct / 100) for pct in (0.0, 25.0, 50.0, 75.0, 100.0))
    return Waterfall(tuple(bars), total_ms, ticks, finished)


def _bar(  # noqa: PLR0917 - the geometry of one bar, in the order it is drawn
    name: str,
    kind: str,
    depth: int,
    begin_ns: int,
    end_ns: int,
    origin_ns: int,
    total_ns: int,
    *,
    failed: bool = False,
    attributes: dict[str, Any] | None = None,
    notes: tuple[str, ...] = (),
) -> Bar:
    end_ns = max(end_ns, begin_ns)
    left = (begin_ns - origin_ns) / total_ns * 100
    width = max((end_ns - begin_ns) / total_ns * 100, 0.4)  # a point in time still shows
    details = tuple(
        (name_, _short(attributes[name_]))
        for name_ in _SHOWN_ATTRIBUTES
        if attributes and name_ in attributes
    )
    return Bar(
        name=name,
        kind=kind,
        depth=depth,
        start_ms=(begin_ns - origin_ns) / 1_000_000,
        duration_ms=(end_ns - begin_ns) / 1_000_000,
        left_pct=round(min(left, 99.6), 3),
        width_pct=round(min(width, 100 - min(left, 99.6)), 3),
        failed=failed,
        details=details,
        events=notes,
    )


def _short(value: object, limit: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def event_summary(event: RunEvent, limit: int = 240) -> str:
    """One line of an event's data for the event log (the full JSON is a click away)."""
    return _short(event.data, limit)


def pretty(data: JsonDict | list[Any] | None) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def approval_calls(context: JsonDict) -> list[JsonDict]:
    """The tool calls an approval question covers: [{index, tool, arguments, why}]."""
    inner = context.get("context")
    calls = inner.get("calls") if isinstance(inner, dict) else None
    return [call for call in calls or () if isinstance(call, dict)]


def bar_widths(values: Sequence[float]) -> list[float]:
    """Each value as a percent of the largest (a bar chart's widths); all zero gives zeros."""
    top = max(values, default=0.0)
    return [round(value / top * 100, 2) if top > 0 else 0.0 for value in values]
