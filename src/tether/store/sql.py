"""The schema, defined once for every SQL dialect, and the row mappings shared by the SQL stores."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tether.errors import ConfigurationError
from tether.store.base import AuditEntry, Canary, CostRow, Escalation, Operation
from tether.types import EventKind, JsonDict, Run, RunStatus, Usage

SCHEMA_VERSION = 6
BASE_VERSION = 2  # what the CREATE statements below make; later versions are migrations
# Each version's statements, applied once, in order, to databases older than it.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    3: ("ALTER TABLE runs ADD COLUMN session_id TEXT", "ALTER TABLE runs ADD COLUMN tenant TEXT"),
    # The expiry sweep reads open questions with a deadline by deadline, not every open question.
    4: (
        "CREATE INDEX IF NOT EXISTS escalations_expiry ON escalations (status, expires_at_epoch_ms)",
        "CREATE INDEX IF NOT EXISTS runs_session ON runs (session_id, created_at_epoch_ms)",
    ),
    5: (
        """
        CREATE TABLE IF NOT EXISTS canaries (
            id TEXT PRIMARY KEY,
            agent_name TEXT NOT NULL,
            baseline_version TEXT NOT NULL,
            candidate_version TEXT NOT NULL,
            share {float} NOT NULL,
            status TEXT NOT NULL,
            thresholds TEXT NOT NULL,
            started_at_epoch_ms BIGINT NOT NULL,
            ended_at_epoch_ms BIGINT,
            reason TEXT
        )
        """,
        "CREATE INDEX IF NOT EXISTS canaries_agent ON canaries (agent_name, started_at_epoch_ms)",
        "CREATE INDEX IF NOT EXISTS runs_version ON runs (agent_name, agent_version, created_at_epoch_ms)",
        "ALTER TABLE runs ADD COLUMN shadow_of TEXT",
    ),
    6: (
        """
        CREATE TABLE IF NOT EXISTS audit (
            id {serial_key},
            at_epoch_ms BIGINT NOT NULL,
            kind TEXT NOT NULL,
            decision TEXT NOT NULL,
            run_id TEXT NOT NULL,
            agent TEXT NOT NULL,
            principal TEXT,
            tenant TEXT,
            session_id TEXT,
            tool TEXT,
            grant_name TEXT,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL
        )
        """,
        "CREATE INDEX IF NOT EXISTS audit_run ON audit (run_id, id)",
        "CREATE INDEX IF NOT EXISTS audit_principal ON audit (principal, id)",
        "CREATE INDEX IF NOT EXISTS audit_session ON audit (session_id, at_epoch_ms)",
        # then each dialect's append-only guards (`Dialect.own_migrations`)
    ),
}


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the SQL databases in the schema; everything else is written once above."""

    name: str
    float_type: str  # 8 bytes: SQLite's REAL is, PostgreSQL's REAL is 4 (money needs 8)
    serial_key: str  # an integer primary key the database numbers in insertion order
    # Statements of this dialect alone, run after the shared ones of their version.
    own_migrations: Mapping[int, tuple[str, ...]]

    def schema(self) -> list[str]:
        """The CREATE statements of BASE_VERSION."""
        return schema_statements(self.float_type)

    def migration(self, version: int) -> list[str]:
        """The statements that take a database of `version - 1` to `version`."""
        shared = [self._format(statement) for statement in MIGRATIONS[version]]
        return shared + list(self.own_migrations.get(version, ()))

    def _format(self, statement: str) -> str:
        return statement.format(float=self.float_type, serial_key=self.serial_key)


# The audit log is append-only, enforced by the database: no process of ours or anyone's rewrites history.
APPEND_ONLY = "the audit log is append-only"
SQLITE = Dialect(
    name="sqlite",
    float_type="REAL",
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",
    own_migrations={
        6: (
            "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END",
            "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
            f"BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END",
        )
    },
)
POSTGRES = Dialect(
    name="postgresql",
    float_type="DOUBLE PRECISION",
    serial_key="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    own_migrations={
        6: (
            "CREATE OR REPLACE FUNCTION tether_audit_append_only() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END $$",
            "CREATE TRIGGER audit_no_update BEFORE UPDATE OR DELETE ON audit "
            "FOR EACH ROW EXECUTE FUNCTION tether_audit_append_only()",
            # TRUNCATE skips row triggers, and it rewrites history too.
            "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
            "FOR EACH STATEMENT EXECUTE FUNCTION tether_audit_append_only()",
        )
    },
)
AUDIT_COLUMNS = (
    "id, at_epoch_ms, kind, decision, run_id, agent, principal, tenant, session_id, tool, grant_name, "
    "reason, detail"
)
CANARY_COLUMNS = (
    "id, agent_name, baseline_version, candidate_version, share, status, thresholds, "
    "started_at_epoch_ms, ended_at_epoch_ms, reason"
)

# `{float}` and `{serial_key}` differ per dialect (`Dialect`).
SCHEMA_V1 = (
    """
    CREATE TABLE IF NOT EXISTS tether_schema (
        version INTEGER NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS runs (
        id TEXT PRIMARY KEY,
        agent_name TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        agent_target TEXT,
        model_spec TEXT,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        output TEXT,
        error TEXT,
        principal TEXT,
        idempotency_key TEXT UNIQUE,
        parent_run_id TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_expires_at_epoch_ms BIGINT,
        input_tokens BIGINT NOT NULL DEFAULT 0,
        output_tokens BIGINT NOT NULL DEFAULT 0,
        cost_usd {float},
        created_at_epoch_ms BIGINT NOT NULL,
        updated_at_epoch_ms BIGINT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS runs_claim ON runs (status, created_at_epoch_ms)",
    """
    CREATE TABLE IF NOT EXISTS run_events (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        created_at_epoch_ms BIGINT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (run_id, seq)
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS operations (
        idempotency_key TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        tool TEXT NOT NULL,
        status TEXT NOT NULL,
        arguments TEXT,
        result TEXT,
        attempts INTEGER NOT NULL DEFAULT 1,
        created_at_epoch_ms BIGINT NOT NULL,
        updated_at_epoch_ms BIGINT NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS operations_run ON operations (run_id)",
    # version 2: the inbox of questions for people
    """
    CREATE TABLE IF NOT EXISTS escalations (
        id TEXT PRIMARY KEY,
        run_id TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL,
        options TEXT NOT NULL,
        context TEXT NOT NULL,
        status TEXT NOT NULL,
        answer TEXT,
        answered_by TEXT,
        created_at_epoch_ms BIGINT NOT NULL,
        answered_at_epoch_ms BIGINT,
        expires_at_epoch_ms BIGINT
    )
    """,
    "CREATE INDEX IF NOT EXISTS escalations_status ON escalations (status, created_at_epoch_ms)",
    "CREATE INDEX IF NOT EXISTS escalations_run ON escalations (run_id)",
)

RUN_COLUMNS = (
    "id, agent_name, agent_version, agent_target, model_spec, status, input, output, error, "
    "principal, idempotency_key, parent_run_id, attempts, lease_owner, lease_expires_at_epoch_ms, "
    "input_tokens, output_tokens, cost_usd, created_at_epoch_ms, updated_at_epoch_ms, session_id, tenant, "
    "shadow_of"
)
ESCALATION_COLUMNS = (
    "id, run_id, reason, message, options, context, status, answer, answered_by, "
    "created_at_epoch_ms, answered_at_epoch_ms, expires_at_epoch_ms"
)
OPERATION_COLUMNS = (
    "idempotency_key, run_id, tool, status, arguments, result, attempts, "
    "created_at_epoch_ms, updated_at_epoch_ms"
)
UNFINISHED = (RunStatus.QUEUED.value, RunStatus.RUNNING.value)


def schema_statements(float_type: str) -> list[str]:
    """The CREATE statements of BASE_VERSION with `{float}` as given (`Dialect.schema` for a store)."""
    return [statement.format(float=float_type) for statement in SCHEMA_V1]


def dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def loads_or_none(text: str | None) -> JsonDict | None:
    return None if text is None else json.loads(text)


def run_from_row(row: Sequence[Any], event_count: int = 0) -> Run:
    return Run(
        id=row[0],
        agent_name=row[1],
        agent_version=row[2],
        agent_target=row[3],
        model_spec=row[4],
        status=RunStatus(row[5]),
        input=row[6],
        output=row[7],
        error=row[8],
        principal=row[9],
        idempotency_key=row[10],
        parent_run_id=row[11],
        attempts=row[12],
        lease_owner=row[13],
        lease_expires_at_epoch_ms=row[14],
        usage=Usage(row[15], row[16], row[17]),
        created_at_epoch_ms=row[18],
        updated_at_epoch_ms=row[19],
        session_id=row[20],
        tenant=row[21],
        shadow_of=row[22],
        event_count=event_count,
    )


def operation_from_row(row: Sequence[Any]) -> Operation:
    return Operation(
        idempotency_key=row[0],
        run_id=row[1],
        tool=row[2],
        status=row[3],
        arguments=loads_or_none(row[4]),
        result=loads_or_none(row[5]),
        attempts=row[6],
        created_at_epoch_ms=row[7],
        updated_at_epoch_ms=row[8],
    )


def escalation_from_row(row: Sequence[Any]) -> Escalation:
    return Escalation(
        id=row[0],
        run_id=row[1],
        reason=row[2],
        message=row[3],
        options=tuple(json.loads(row[4])),
        context=json.loads(row[5]),
        status=row[6],
        answer=loads_or_none(row[7]),
        answered_by=row[8],
        created_at_epoch_ms=row[9],
        answered_at_epoch_ms=row[10],
        expires_at_epoch_ms=row[11],
    )


# Events that record a result: an attempt that wrote one got somewhere (`failed_attempts`).
PROGRESS_KINDS = (
    EventKind.MODEL_RESPONSE.value,
    EventKind.TOOL_RESULT.value,
    EventKind.TOOL_RESET.value,
    EventKind.ESCALATION_APPLIED.value,
    EventKind.OUTPUT_INVALID.value,
    EventKind.GATE_DECISION.value,
    EventKind.RECOVERY_ALTERNATIVE.value,
    EventKind.COMPENSATION_RAN.value,
)
# What `failed_attempts` reads: progress, attempt starts, clean parks for a person, replays.
ATTEMPT_MARKER_KINDS = (
    *PROGRESS_KINDS,
    EventKind.RUN_RESUMED.value,
    EventKind.ESCALATION_OPENED.value,
    EventKind.RUN_REPLAYED.value,
)


def failed_attempts(attempts: int, markers: Sequence[tuple[str, str]]) -> int:
    """How many of the run's `attempts` (claims since it started or was replayed) failed in a row:
    the attempts since the one that recorded its last result, that one included (it died after it).

    `markers` are the run's (kind, data) events of ATTEMPT_MARKER_KINDS in seq order. Attempt n > 1
    opens with `run.resumed {attempt: n}` (the loop writes it); attempt 1 writes none. An attempt
    that parks the run for a person ended cleanly, and a replay starts the count again. A worker
    that dies before it writes anything still used up an attempt: the claims count it."""
    current = 0  # the attempt whose events are being read (0: none since the start or the replay)
    counted_from = 0  # attempts up to this one are not held against the run
    for kind, data in markers:
        if kind == EventKind.RUN_REPLAYED:
            current = counted_from = 0
        elif kind == EventKind.RUN_RESUMED:
            current = int(json.loads(data).get("attempt", current + 1))
        elif kind == EventKind.ESCALATION_OPENED:
            counted_from = max(current, 1)
        else:
            counted_from = max(current, 1) - 1
    return max(attempts - counted_from, 0)


def dead_letter_verdict(
    attempts: int,
    failed: int,
    max_attempts: int,
    *,
    status: str,
    lease_owner: str | None,
    error: str | None,
) -> tuple[JsonDict, str]:
    """The `run.dead_lettered` event data and the run's error, for a claim that found `failed` attempts
    in a row. A run still `running` lost its last worker silently (killed, out of memory, stalled); a
    `queued` one was given back after an exception, whose text is the run's error."""
    if status == RunStatus.RUNNING.value:
        worker = f"worker {lease_owner}" if lease_owner else "its worker"
        last_error: str | None = (
            f"{worker} stopped renewing the lease mid-attempt (killed, out of memory or stalled)"
        )
    else:
        last_error = error
    data: JsonDict = {
        "attempts": attempts,
        "failed_attempts": failed,
        "max_attempts": max_attempts,
        "reason": "max_attempts",
    }
    if last_error:
        data["last_error"] = last_error
    message = f"dead-lettered after {failed} failed attempts in a row"
    return data, f"{message}; last error: {last_error}" if last_error else message


def canary_from_row(row: Sequence[Any]) -> Canary:
    return Canary(
        id=row[0],
        agent_name=row[1],
        baseline_version=row[2],
        candidate_version=row[3],
        share=float(row[4]),
        status=row[5],
        thresholds=json.loads(row[6]),
        started_at_epoch_ms=row[7],
        ended_at_epoch_ms=row[8],
        reason=row[9],
    )


def audit_from_row(row: Sequence[Any]) -> AuditEntry:
    return AuditEntry(
        id=row[0],
        at_epoch_ms=row[1],
        kind=row[2],
        decision=row[3],
        run_id=row[4],
        agent=row[5],
        principal=row[6],
        tenant=row[7],
        session_id=row[8],
        tool=row[9],
        grant=row[10],
        reason=row[11],
        detail=json.loads(row[12]),
    )


_COST_GROUPS: dict[str, tuple[str, ...]] = {
    "agent_version": ("agent_name", "agent_version"),
    "principal": ("principal",),
    "tenant": ("tenant",),
}


def cost_group_columns(group: str) -> tuple[str, ...]:
    """The columns a cost summary groups by; an unknown group names the ones offered."""
    columns = _COST_GROUPS.get(group)
    if columns is None:
        raise ConfigurationError(f"cost is grouped by {', '.join(_COST_GROUPS)}, not {group!r}")
    return columns


def cost_row_from(columns: Sequence[str], row: Sequence[Any]) -> CostRow:
    """A row of (*columns, runs, succeeded, cost, tokens, last created) as a CostRow."""
    keys = dict(zip(columns, row[: len(columns)], strict=True))
    runs, succeeded, cost, tokens, last = row[len(columns) :]
    return CostRow(
        agent=keys.get("agent_name"),
        version=keys.get("agent_version"),
        principal=keys.get("principal"),
        tenant=keys.get("tenant"),
        runs=runs,
        succeeded=succeeded,
        cost_usd=float(cost),
        tokens=int(tokens or 0),
        last_run_epoch_ms=int(last),
    )
