"""Dead letters: a run parked after too many failed attempts, laid out for the person triaging it.

Nothing is stored twice: the run's partial state, tool outputs and decisions are read from its
event log, which is also what a replay resumes from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tether.runtime.state import RunState
from tether.types import EventKind, JsonDict, Run, RunEvent

# The life of the attempts: who resumed the run, what ended an attempt, when it was parked or replayed.
ATTEMPT_KINDS = frozenset(
    {
        EventKind.RUN_RESUMED,
        EventKind.RUN_ATTEMPT_FAILED,
        EventKind.RUN_DEAD_LETTERED,
        EventKind.RUN_REPLAYED,
    }
)
# What the model and people decided, besides the model's own responses.
DECISION_PREFIXES = ("escalation.", "approval.", "gate.", "plan.", "guardrail.", "output.")
DECISION_KINDS = frozenset({EventKind.RUN_ESCALATED})
# Bulky copies of the conversation that every escalation carries; the log has them already.
_REPEATED = ("recent_messages", "input")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One run as the triage view shows it: attempts, decisions, tool outputs, and the calls that
    were asked for but have no recorded result (where the last attempt most likely died)."""

    run: Run
    attempts: list[JsonDict]
    decisions: list[JsonDict]
    tool_outputs: list[JsonDict]
    unfinished_calls: list[JsonDict]
    last_events: list[RunEvent]

    @classmethod
    def from_events(cls, run: Run, events: Sequence[RunEvent], *, last: int = 10) -> DeadLetter:
        attempts = [{"seq": e.seq, "kind": e.kind, **e.data} for e in events if e.kind in ATTEMPT_KINDS]
        decisions = [_decision(e) for e in events if _is_decision(e.kind)]
        tool_outputs = [{"seq": e.seq, **e.data} for e in events if e.kind == EventKind.TOOL_RESULT]
        return cls(
            run=run,
            attempts=attempts,
            decisions=decisions,
            tool_outputs=tool_outputs,
            unfinished_calls=_unfinished_calls(run.id, events),
            last_events=list(events[-last:]) if last > 0 else [],
        )

    def to_dict(self) -> JsonDict:
        return {
            "run": self.run.to_dict(),
            "attempts": self.attempts,
            "decisions": self.decisions,
            "tool_outputs": self.tool_outputs,
            "unfinished_calls": self.unfinished_calls,
            "last_events": [event.to_dict() for event in self.last_events],
        }


def _is_decision(kind: str) -> bool:
    return kind == EventKind.MODEL_RESPONSE or kind in DECISION_KINDS or kind.startswith(DECISION_PREFIXES)


def _decision(event: RunEvent) -> JsonDict:
    if event.kind == EventKind.MODEL_RESPONSE:
        data = event.data
        calls = [{"name": c.get("name"), "arguments": c.get("arguments")} for c in data.get("tool_calls", ())]
        decision: JsonDict = {
            "seq": event.seq,
            "kind": event.kind,
            "turn": data.get("turn"),
            "model": data.get("model"),
            "content": data.get("content") or "",
            "tool_calls": calls,
        }
        if data.get("confidence") is not None:
            decision["confidence"] = data["confidence"]
        return decision
    return {
        "seq": event.seq,
        "kind": event.kind,
        **{key: value for key, value in event.data.items() if key not in _REPEATED},
    }


def _unfinished_calls(run_id: str, events: Sequence[RunEvent]) -> list[JsonDict]:
    """Calls of the last model turn with no recorded result: the same fold a resume would make."""
    state = RunState.fold(run_id, list(events))
    turn = state.turns - 1
    return [
        {
            "turn": turn,
            "index": index,
            "tool": call.name,
            "arguments": call.arguments,
            "intent_recorded": index in state.intents,
        }
        for index, call in state.pending_calls
    ]
