"""The RunStore protocol: runs with leases, their append-only events and the operation log."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tether.types import JsonDict, Run, RunEvent, RunStatus, Usage

OperationStatus = Literal["intent", "succeeded", "failed", "unknown"]


@dataclass(frozen=True, slots=True)
class NewRun:
    """A run to create. Starting the same `idempotency_key` twice returns the first run."""

    id: str
    agent_name: str
    input: str
    agent_version: str = "1"
    agent_target: str | None = None
    model_spec: str | None = None
    principal: str | None = None
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    session_id: str | None = None  # budgets and conversations per session
    tenant: str | None = None  # isolation of caches, budgets and accounting
    shadow_of: str | None = None  # a shadow run of this production run: no side effects, no people


@dataclass(frozen=True, slots=True)
class EventDraft:
    """An event before the store gives it a seq and a time."""

    kind: str
    data: JsonDict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class OperationWrite:
    """An upsert into the operation log of side-effecting tool calls, keyed by idempotency key."""

    idempotency_key: str
    run_id: str
    tool: str
    status: OperationStatus
    arguments: JsonDict | None = None
    result: JsonDict | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    idempotency_key: str
    run_id: str
    tool: str
    status: OperationStatus
    arguments: JsonDict | None
    result: JsonDict | None
    attempts: int
    created_at_epoch_ms: int
    updated_at_epoch_ms: int


@dataclass(frozen=True, slots=True)
class NewEscalation:
    """A question for a person, opened when a run parks in `waiting_human`."""

    id: str
    reason: str
    message: str
    options: tuple[str, ...]
    context: JsonDict
    expires_s: float | None = None  # unanswered by then, it is answered by expiry (approvals: denied)


@dataclass(frozen=True, slots=True)
class Escalation:
    """A question for a person and, once given, the answer (kept as labelled data)."""

    id: str
    run_id: str
    reason: str
    message: str
    options: tuple[str, ...]
    context: JsonDict
    status: Literal["open", "answered", "cancelled"]  # cancelled: its run was cancelled first
    answer: JsonDict | None
    answered_by: str | None
    created_at_epoch_ms: int
    answered_at_epoch_ms: int | None
    expires_at_epoch_ms: int | None = None

    def to_dict(self) -> JsonDict:
        return {
            "id": self.id,
            "run_id": self.run_id,
            "reason": self.reason,
            "message": self.message,
            "options": list(self.options),
            "context": self.context,
            "status": self.status,
            "answer": self.answer,
            "answered_by": self.answered_by,
            "created_at_epoch_ms": self.created_at_epoch_ms,
            "answered_at_epoch_ms": self.answered_at_epoch_ms,
            "expires_at_epoch_ms": self.expires_at_epoch_ms,
        }


@dataclass(frozen=True, slots=True)
class Canary:
    """A share of an agent's new runs routed to a candidate version, compared with the baseline.

    status: running, promoted (every new run takes the candidate) or rolled_back (none does)."""

    id: str
    agent_name: str
    baseline_version: str
    candidate_version: str
    share: float
    status: Literal["running", "promoted", "rolled_back"]
    thresholds: JsonDict
    started_at_epoch_ms: int
    ended_at_epoch_ms: int | None = None
    reason: str | None = None

    def to_dict(self) -> JsonDict:
        return {
            "id": self.id,
            "agent": self.agent_name,
            "baseline_version": self.baseline_version,
            "candidate_version": self.candidate_version,
            "share": self.share,
            "status": self.status,
            "thresholds": self.thresholds,
            "started_at_epoch_ms": self.started_at_epoch_ms,
            "ended_at_epoch_ms": self.ended_at_epoch_ms,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What a comparison needs of one run: where it is, what it cost, how long it took to get there."""

    status: RunStatus
    cost_usd: float | None
    duration_ms: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One decision about what a run may do: a permission check or a guardrail verdict.

    kind: "permission" or "guardrail"; decision: "allow", "deny", "block", "sanitise", "escalate"."""

    kind: str
    decision: str
    run_id: str
    agent: str
    reason: str
    principal: str | None = None
    tenant: str | None = None
    session_id: str | None = None
    tool: str | None = None
    grant: str | None = None  # the grant rule that allowed it, or the guardrail's name
    detail: JsonDict = field(default_factory=dict)
    at_epoch_ms: int = 0  # set by the store
    id: int = 0  # set by the store: the log's order

    def to_dict(self) -> JsonDict:
        return {
            "id": self.id,
            "at_epoch_ms": self.at_epoch_ms,
            "kind": self.kind,
            "decision": self.decision,
            "run_id": self.run_id,
            "agent": self.agent,
            "principal": self.principal,
            "tenant": self.tenant,
            "session_id": self.session_id,
            "tool": self.tool,
            "grant": self.grant,
            "reason": self.reason,
            "detail": self.detail,
        }


CostGroup = Literal["agent_version", "principal", "tenant"]


@dataclass(frozen=True, slots=True)
class CostRow:
    """One group of runs in a cost summary; the fields it is not grouped by are None."""

    agent: str | None
    version: str | None
    principal: str | None
    tenant: str | None
    runs: int
    succeeded: int
    cost_usd: float
    tokens: int
    last_run_epoch_ms: int

    @property
    def label(self) -> str:
        if self.agent is not None:
            return f"{self.agent} v{self.version}"
        return (self.principal if self.principal is not None else self.tenant) or "(none)"

    def to_dict(self) -> JsonDict:
        return {
            "agent": self.agent,
            "version": self.version,
            "principal": self.principal,
            "tenant": self.tenant,
            "label": self.label,
            "runs": self.runs,
            "succeeded": self.succeeded,
            "cost_usd": round(self.cost_usd, 6),
            "tokens": self.tokens,
            "last_run_epoch_ms": self.last_run_epoch_ms,
        }


class RunStore(Protocol):
    """Durable state of runs. Every write by a worker is fenced by its lease: a worker that lost the
    lease gets `LeaseLostError` and must stop working on the run."""

    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        """Insert the run (queued) and its `run.started` event; return (run, created)."""
        ...

    async def get_run(self, run_id: str) -> Run: ...

    async def list_runs(
        self,
        *,
        status: RunStatus | None = None,
        session_id: str | None = None,
        agent_name: str | None = None,
        principal: str | None = None,
        tenants: Collection[str | None] | None = None,
        shadows: bool = False,
        limit: int = 100,
    ) -> list[Run]:
        """Production runs (or, with `shadows`, shadow runs) newest first, optionally of one status,
        session, agent and/or principal. `tenants`: only runs of these tenants (None among them: runs
        without one); the filter applies before `limit`, so a tenant's page is full."""
        ...

    async def cost_by(
        self,
        group: CostGroup,
        *,
        since_epoch_ms: int = 0,
        tenants: Collection[str | None] | None = None,
        limit: int = 100,
    ) -> list[CostRow]:
        """Production runs started since then, summed per agent version, principal or tenant, costliest
        first. `tenants` as in `list_runs`."""
        ...

    async def claim_run(
        self, owner: str, lease_s: float, *, run_id: str | None = None, max_attempts: int | None = None
    ) -> Run | None:
        """Lease the oldest queued run, or a running run whose lease expired, or `run_id` if claimable.

        A claim counts an attempt. With `max_attempts`, a claimable run whose last `max_attempts`
        attempts failed in a row (none recorded a result after the last one; see
        `sql.failed_attempts`) is moved to `dead_lettered` instead, with a `run.dead_lettered` event, in
        the same transaction, and returned so (no lease): no worker starts another attempt."""
        ...

    async def heartbeat(self, run_id: str, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when the lease is no longer ours."""
        ...

    async def release(self, run_id: str, owner: str) -> None:
        """Give the run back to the queue (graceful shutdown)."""
        ...

    async def append_events(
        self,
        run_id: str,
        owner: str,
        first_seq: int,
        events: Sequence[EventDraft],
        *,
        usage: Usage | None = None,
        operations: Sequence[OperationWrite] = (),
        within: Callable[[], None] | None = None,
    ) -> list[RunEvent]:
        """Append events (and operation-log writes, and usage) atomically, fenced by the lease.

        `within` runs inside the same transaction, after the writes; if it raises, nothing is
        written and the error propagates. It must not do I/O of its own: budget counters kept in
        this store's connection use it to reserve or settle with the event that records the call."""
        ...

    async def finish(
        self,
        run_id: str,
        owner: str,
        first_seq: int,
        status: RunStatus,
        event: EventDraft,
        *,
        output: str | None = None,
        error: str | None = None,
        escalation: NewEscalation | None = None,
    ) -> RunEvent:
        """Move the run to a terminal or waiting status with its closing event; drop the lease.

        `queued` gives the run back for another attempt (after `run.attempt_failed`), attempts kept.
        With `escalation`, the question is written to the inbox in the same transaction."""
        ...

    async def list_escalations(
        self,
        *,
        status: str | None = "open",
        run_id: str | None = None,
        tenants: Collection[str | None] | None = None,
        limit: int = 100,
    ) -> list[Escalation]:
        """Questions oldest first; `tenants`: only those of these tenants' runs (as in `list_runs`)."""
        ...

    async def get_escalation(self, escalation_id: str) -> Escalation: ...

    async def expired_escalations(self, now_epoch_ms: int) -> list[Escalation]:
        """Open escalations whose expiry has passed."""
        ...

    async def answer_escalation(
        self, escalation_id: str, answer: JsonDict, by: str
    ) -> tuple[Escalation, bool]:
        """Record the answer, append `escalation.answered` and queue the run, atomically.

        Returns (escalation, applied): a second answer is not applied (applied=False)."""
        ...

    async def cancel(self, run_id: str, reason: str, *, compensate: bool = False) -> Run:
        """Cancel a run that is not terminal yet; its worker loses the lease and its open questions
        are withdrawn. With `compensate`, a run whose writes took effect (a dead-lettered one too) is
        queued with `compensation.started` instead: a worker undoes them, then ends it cancelled."""
        ...

    async def load_events(self, run_id: str, *, after_seq: int = -1) -> list[RunEvent]: ...

    async def get_operation(self, idempotency_key: str) -> Operation | None: ...

    async def list_operations(self, run_id: str) -> list[Operation]: ...

    async def count_unfinished(self) -> int:
        """Runs queued or running (a running run whose worker died is still unfinished work)."""
        ...

    async def close(self) -> None: ...

    async def replay(self, run_id: str, by: str) -> tuple[Run, bool]:
        """Queue a dead-lettered run again with attempts reset to 0 and a `run.replayed` event.

        Returns (run, applied): a run that is not dead-lettered is left as it is (applied=False)."""
        ...

    async def count_by_status(self) -> dict[RunStatus, int]:
        """How many runs are in each status (every status present, 0 if none): e.g. the DLQ depth."""
        ...

    async def create_canary(self, canary: Canary) -> Canary:
        """Record a running canary; refused (ConfigurationError) while the agent has one running."""
        ...

    async def current_canary(self, agent_name: str) -> Canary | None:
        """The agent's latest canary that still routes runs (running or promoted), if any."""
        ...

    async def list_canaries(self, *, agent_name: str | None = None, limit: int = 50) -> list[Canary]: ...

    async def end_canary(self, canary_id: str, status: str, reason: str) -> tuple[Canary, bool]:
        """Promote or roll back a running canary; (canary, applied): one that ended is left as it is."""
        ...

    async def outcomes(self, agent_name: str, version: str, since_epoch_ms: int) -> list[RunOutcome]:
        """The outcomes of the agent version's runs started since then (shadow runs excluded)."""
        ...

    async def tool_usage(self, agent_name: str, *, runs: int) -> list[tuple[dict[str, int], int]]:
        """Of the agent's last `runs` succeeded production runs: calls per tool and writes, each."""
        ...

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        """Add decisions to the append-only audit log (the store refuses updates and deletes)."""
        ...

    async def list_audit(
        self,
        *,
        run_id: str | None = None,
        principal: str | None = None,
        session_id: str | None = None,
        decision: str | None = None,
        since_epoch_ms: int | None = None,
        tenants: Collection[str | None] | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Audit entries, newest first, filtered (`tenants` as in `list_runs`)."""
        ...
