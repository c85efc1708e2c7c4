"""Pure data shared by every layer: messages, tool calls, usage, model requests, runs and run events.

Frozen dataclasses rather than pydantic models: these are built on every step, and validation happens
at the edges (provider wire formats, tool arguments, the store) where untrusted data enters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Literal

JsonDict = dict[str, Any]
Role = Literal["system", "user", "assistant", "tool"]


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A call the model asked for. `arguments` is None when the model's JSON did not parse."""

    id: str
    name: str
    arguments: JsonDict | None
    raw_arguments: str = ""

    def to_dict(self) -> JsonDict:
        return {
            "id": self.id,
            "name": self.name,
            "arguments": self.arguments,
            "raw_arguments": self.raw_arguments,
        }

    @classmethod
    def from_dict(cls, data: JsonDict) -> ToolCall:
        return cls(
            id=data["id"],
            name=data["name"],
            arguments=data.get("arguments"),
            raw_arguments=data.get("raw_arguments", ""),
        )


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. Tool results carry `tool_call_id`; assistant turns may carry `tool_calls`."""

    role: Role
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and money spent; `cost_usd` is None when the price of the model is unknown."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None

    def __add__(self, other: Usage) -> Usage:
        if self.cost_usd is None and other.cost_usd is None:
            cost = None
        else:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens, cost)

    def to_dict(self) -> JsonDict:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_dict(cls, data: JsonDict) -> Usage:
        return cls(
            int(data.get("input_tokens", 0)),
            int(data.get("output_tokens", 0)),
            data.get("cost_usd"),
        )


@dataclass(frozen=True, slots=True)
class ToolDefinition:
    """What a model is told about a tool: a name, a description and a JSON schema of the arguments."""

    name: str
    description: str
    parameters: JsonDict


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """Everything a model needs for one turn. `turn` counts the run's model calls from 0."""

    messages: tuple[Message, ...]
    tools: tuple[ToolDefinition, ...] = ()
    run_id: str | None = None
    turn: int = 0
    temperature: float | None = None
    max_output_tokens: int | None = None
    principal: str | None = None  # who the call is for: rate limits, budgets, cost accounting
    tenant: str | None = None  # isolation scope of caches and accounting
    tags: tuple[str, ...] = ()  # task tags that routing policies read ("simple", "hard", ...)


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """One assistant turn: text, tool calls, or both; `confidence` when the model stated one."""

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)
    model: str = ""
    finish_reason: str | None = None
    confidence: float | None = None
    # What happened on the way (retries, fallbacks, cache hits): recorded as run events before the
    # response itself; never sent back to a model.
    events: tuple[tuple[str, JsonDict], ...] = ()
    served_by: str = ""  # the gateway's model spec that answered (after any fallback), e.g. openai:gpt-4o

    def to_dict(self) -> JsonDict:
        data: JsonDict = {
            "content": self.content,
            "tool_calls": [call.to_dict() for call in self.tool_calls],
            "usage": self.usage.to_dict(),
            "model": self.model,
            "finish_reason": self.finish_reason,
            "confidence": self.confidence,
        }
        if self.served_by:
            data["served_by"] = self.served_by
        return data

    @classmethod
    def from_dict(cls, data: JsonDict) -> ModelResponse:
        return cls(
            content=data.get("content") or "",
            tool_calls=tuple(ToolCall.from_dict(c) for c in data.get("tool_calls", ())),
            usage=Usage.from_dict(data.get("usage") or {}),
            model=data.get("model", ""),
            finish_reason=data.get("finish_reason"),
            confidence=data.get("confidence"),
            served_by=data.get("served_by", ""),
        )

    def as_message(self) -> Message:
        return Message(role="assistant", content=self.content, tool_calls=self.tool_calls)


class RunStatus(enum.StrEnum):
    """Where a run is. Every run ends in exactly one terminal state or waits for a person."""

    QUEUED = "queued"  # waiting for a worker to claim it
    RUNNING = "running"  # a worker holds its lease (or held it, until the lease expires)
    WAITING_HUMAN = "waiting_human"  # parked durably until a person answers; no worker holds it
    SUCCEEDED = "succeeded"  # terminal: produced its output
    FAILED = "failed"  # terminal: a fatal error ended it
    ESCALATED = "escalated"  # terminal: handed to a person for good
    DEAD_LETTERED = "dead_lettered"  # terminal: parked after too many attempts, replayable
    CANCELLED = "cancelled"  # terminal: someone cancelled it

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.ESCALATED,
        RunStatus.DEAD_LETTERED,
        RunStatus.CANCELLED,
    }
)


class EventKind(enum.StrEnum):
    """The kinds of entries in a run's append-only event log."""

    RUN_STARTED = "run.started"
    RUN_RESUMED = "run.resumed"
    MODEL_REQUEST = "model.request"
    MODEL_RESPONSE = "model.response"
    MODEL_ERROR = "model.error"
    MODEL_RETRY = "model.retry"
    FALLBACK_USED = "fallback.used"
    BREAKER_OPENED = "breaker.opened"
    BREAKER_CHANGED = "breaker.changed"
    ROUTE_SELECTED = "route.selected"
    COST_UNKNOWN = "cost.unknown"
    BUDGET_WARNING = "budget.warning"
    BUDGET_EXCEEDED = "budget.exceeded"
    CACHE_HIT = "cache.hit"
    TOOL_INTENT = "tool.intent"
    TOOL_RESULT = "tool.result"
    TOOL_RETRY = "tool.retry"
    ESCALATION_OPENED = "escalation.opened"
    ESCALATION_ANSWERED = "escalation.answered"
    ESCALATION_APPLIED = "escalation.applied"
    RUN_ESCALATED = "run.escalated"
    OUTPUT_INVALID = "output.invalid"
    GATE_DECISION = "gate.decision"
    GUARDRAIL_VERDICT = "guardrail.verdict"  # a check found something in user input or tool output
    PERMISSION_DENIED = "permission.denied"
    BEHAVIOUR_ANOMALY = "behaviour.anomaly"  # a call unlike the agent's usual tool use, held for a person
    RECOVERY_ALTERNATIVE = "recovery.alternative"
    COMPENSATION_STARTED = "compensation.started"
    COMPENSATION_RAN = "compensation.ran"
    TOOL_RESET = "tool.reset"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_CANCELLED = "run.cancelled"
    RUN_ATTEMPT_FAILED = "run.attempt_failed"  # an unexpected exception ended an attempt
    RUN_DEAD_LETTERED = "run.dead_lettered"
    RUN_REPLAYED = "run.replayed"  # a person put a dead-lettered run back in the queue


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One entry of a run's event log; `seq` starts at 0 and has no gaps."""

    run_id: str
    seq: int
    kind: str
    created_at_epoch_ms: int
    data: JsonDict

    def to_dict(self) -> JsonDict:
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "kind": self.kind,
            "created_at_epoch_ms": self.created_at_epoch_ms,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class Run:
    """A run as the store holds it."""

    id: str
    agent_name: str
    agent_version: str
    status: RunStatus
    input: str
    principal: str | None
    created_at_epoch_ms: int
    updated_at_epoch_ms: int
    attempts: int = 0
    output: str | None = None
    error: str | None = None
    agent_target: str | None = None
    model_spec: str | None = None
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    lease_owner: str | None = None
    lease_expires_at_epoch_ms: int | None = None
    usage: Usage = field(default_factory=Usage)
    event_count: int = 0
    session_id: str | None = None
    tenant: str | None = None
    shadow_of: str | None = None  # a shadow run: the production run whose input it replays

    def to_dict(self) -> JsonDict:
        return {
            "run_id": self.id,
            "shadow_of": self.shadow_of,
            "session_id": self.session_id,
            "tenant": self.tenant,
            "agent": self.agent_name,
            "agent_version": self.agent_version,
            "status": str(self.status),
            "input": self.input,
            "output": self.output,
            "error": self.error,
            "principal": self.principal,
            "attempts": self.attempts,
            "usage": self.usage.to_dict(),
            "event_count": self.event_count,
            "agent_target": self.agent_target,
            "model_spec": self.model_spec,
            "idempotency_key": self.idempotency_key,
            "parent_run_id": self.parent_run_id,
            "lease_owner": self.lease_owner,
            "lease_expires_at_epoch_ms": self.lease_expires_at_epoch_ms,
            "created_at_epoch_ms": self.created_at_epoch_ms,
            "updated_at_epoch_ms": self.updated_at_epoch_ms,
        }
