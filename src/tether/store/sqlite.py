"""SqliteRunStore: the embedded default, one file in WAL mode, safe for several processes at once."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from tether.errors import (
    ConfigurationError,
    EscalationNotFoundError,
    IdempotencyConflictError,
    LeaseLostError,
    RunNotFoundError,
    StoreError,
)
from tether.store.base import (
    AuditEntry,
    Canary,
    CostGroup,
    CostRow,
    Escalation,
    EventDraft,
    NewEscalation,
    NewRun,
    Operation,
    OperationWrite,
    RunOutcome,
)
from tether.store.sql import (
    ATTEMPT_MARKER_KINDS,
    AUDIT_COLUMNS,
    BASE_VERSION,
    CANARY_COLUMNS,
    ESCALATION_COLUMNS,
    OPERATION_COLUMNS,
    RUN_COLUMNS,
    SCHEMA_VERSION,
    SQLITE,
    UNFINISHED,
    audit_from_row,
    canary_from_row,
    cost_group_columns,
    cost_row_from,
    dead_letter_verdict,
    dumps,
    escalation_from_row,
    failed_attempts,
    operation_from_row,
    run_from_row,
)
from tether.types import EventKind, JsonDict, Run, RunEvent, RunStatus, Usage


def now_ms() -> int:
    return time.time_ns() // 1_000_000


Synchronous = Literal["NORMAL", "FULL"]


class SqliteRunStore:
    """A RunStore on one SQLite file.

    Calls run on the event loop's thread: each is a few indexed statements that take tens of
    microseconds, far less than a thread hop would cost. `synchronous="NORMAL"` (the default) keeps
    every commit across a process crash (SIGKILL), which is the contract; `"FULL"` also survives
    power loss at the price of an fsync per commit.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout_s: float = 10.0,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigurationError(f"synchronous must be NORMAL or FULL, not {synchronous!r}")
        self.path = str(path)
        self._clock = clock
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves, taking the write lock up
            # front so two processes never deadlock upgrading a read lock.
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._migrate()
        except (sqlite3.Error, StoreError) as exc:
            self._db.close()
            raise ConfigurationError(f"{self.path!r} is not a usable tether database: {exc}") from exc

    @property
    def connection(self) -> sqlite3.Connection:
        """The store's connection, for parts that keep their tables in the same file (budgets)."""
        return self._db

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> SqliteRunStore:
        """Open `sqlite:///relative.db`, `sqlite:////absolute.db` or a plain path."""
        if url.startswith("sqlite:///"):
            path = url.removeprefix("sqlite:///")
        elif url.startswith("sqlite://"):
            raise ConfigurationError(
                f"database URL {url!r}: use sqlite:///relative/path.db or sqlite:////absolute/path.db"
            )
        else:
            path = url
        if not path:
            raise ConfigurationError(f"database URL {url!r} names no file")
        parent = Path(path).parent
        if not parent.exists():
            raise ConfigurationError(f"database URL {url!r}: directory {str(parent)!r} does not exist")
        return cls(path, **kwargs)  # type: ignore[arg-type]

    def _migrate(self) -> None:
        with self._write():
            for statement in SQLITE.schema():
                self._db.execute(statement)
            row = self._db.execute("SELECT max(version) FROM tether_schema").fetchone()
            if row[0] is None:
                self._db.execute("INSERT INTO tether_schema (version) VALUES (?)", (BASE_VERSION,))
            current = BASE_VERSION if row[0] is None else max(row[0], BASE_VERSION)
            if current < SCHEMA_VERSION:
                for version in range(current + 1, SCHEMA_VERSION + 1):
                    for statement in SQLITE.migration(version):
                        self._db.execute(statement)
                self._db.execute("UPDATE tether_schema SET version = ?", (SCHEMA_VERSION,))
            elif current > SCHEMA_VERSION:
                raise ConfigurationError(
                    f"database {self.path!r} has schema version {current}, newer than this tether "
                    f"({SCHEMA_VERSION}); upgrade tether"
                )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreError(f"SQLite database {self.path!r} is busy or unwritable: {exc}") from exc
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        else:
            db.execute("COMMIT")

    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        now = self._clock()
        with self._write() as db:
            existing = self._run_with_key(db, new)
            if existing is None:
                self._insert_run(db, new, now)
        return await self.get_run(new.id if existing is None else existing), existing is None

    def _run_with_key(self, db: sqlite3.Connection, new: NewRun) -> str | None:
        """The id of the run already started with `new`'s idempotency key, if any."""
        if new.idempotency_key is None:
            return None
        row = db.execute(
            "SELECT id, agent_name, input FROM runs WHERE idempotency_key = ?", (new.idempotency_key,)
        ).fetchone()
        if row is None:
            return None
        if row[1] != new.agent_name or row[2] != new.input:
            raise IdempotencyConflictError(
                f"idempotency key {new.idempotency_key!r} already started run {row[0]} with a "
                "different agent or input; use a new key"
            )
        return str(row[0])

    def _insert_run(self, db: sqlite3.Connection, new: NewRun, now: int) -> None:
        db.execute(
            "INSERT INTO runs (id, agent_name, agent_version, agent_target, model_spec, status, "
            "input, principal, idempotency_key, parent_run_id, created_at_epoch_ms, "
            "updated_at_epoch_ms, session_id, tenant, shadow_of) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                new.id,
                new.agent_name,
                new.agent_version,
                new.agent_target,
                new.model_spec,
                RunStatus.QUEUED.value,
                new.input,
                new.principal,
                new.idempotency_key,
                new.parent_run_id,
                now,
                now,
                new.session_id,
                new.tenant,
                new.shadow_of,
            ),
        )
        data = {"agent": new.agent_name, "version": new.agent_version, "input": new.input}
        if new.principal is not None:
            data["principal"] = new.principal
        db.execute(
            "INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data) VALUES (?, 0, ?, ?, ?)",
            (new.id, EventKind.RUN_STARTED.value, now, dumps(data)),
        )

    async def get_run(self, run_id: str) -> Run:
        row = self._db.execute(f"SELECT {RUN_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFoundError(f"no run with id {run_id!r}")
        (count,) = self._db.execute("SELECT count(*) FROM run_events WHERE run_id = ?", (run_id,)).fetchone()
        return run_from_row(row, count)

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
        clauses: list[str] = ["shadow_of IS NOT NULL" if shadows else "shadow_of IS NULL"]
        args: list[object] = []
        for column, value in (
            ("agent_name", agent_name),
            ("status", None if status is None else status.value),
            ("session_id", session_id),
            ("principal", principal),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if tenants is not None:
            clauses.append(_tenant_clause(tenants, args))
        where = f"WHERE {' AND '.join(clauses)}"
        rows = self._db.execute(
            f"SELECT {RUN_COLUMNS}, (SELECT count(*) FROM run_events e WHERE e.run_id = runs.id) FROM runs "
            f"{where} ORDER BY created_at_epoch_ms DESC, id LIMIT ?",
            (*args, limit),
        )
        return [run_from_row(row, row[-1]) for row in rows.fetchall()]

    async def cost_by(
        self,
        group: CostGroup,
        *,
        since_epoch_ms: int = 0,
        tenants: Collection[str | None] | None = None,
        limit: int = 100,
    ) -> list[CostRow]:
        columns = cost_group_columns(group)
        args: list[object] = [since_epoch_ms]
        where = "shadow_of IS NULL AND created_at_epoch_ms >= ?"
        if tenants is not None:
            where += " AND " + _tenant_clause(tenants, args)
        rows = self._db.execute(
            f"SELECT {', '.join(columns)}, count(*), sum(status = 'succeeded'), coalesce(sum(cost_usd), 0), "
            f"sum(input_tokens + output_tokens), max(created_at_epoch_ms) FROM runs WHERE {where} "
            f"GROUP BY {', '.join(columns)} "
            f"ORDER BY {len(columns) + 3} DESC, {len(columns) + 1} DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [cost_row_from(columns, row) for row in rows]

    async def claim_run(
        self, owner: str, lease_s: float, *, run_id: str | None = None, max_attempts: int | None = None
    ) -> Run | None:
        now = self._clock()
        expires = now + int(lease_s * 1000)
        claimable = (
            "(status = 'queued' OR (status = 'running' AND "
            "(lease_owner IS NULL OR lease_expires_at_epoch_ms < ?)))"
        )
        if run_id is None:
            # An idle worker polls often: find out with a plain read before taking the write lock.
            idle = self._db.execute(f"SELECT 1 FROM runs WHERE {claimable} LIMIT 1", (now,)).fetchone()
            if idle is None:
                return None
        with self._write() as db:
            if run_id is None:
                # Fair across tenants: the tenant with the fewest runs being worked on goes first.
                target = db.execute(
                    "WITH busy AS (SELECT tenant, count(*) AS n FROM runs WHERE status = 'running' "
                    "AND lease_expires_at_epoch_ms >= ? GROUP BY tenant) "
                    "SELECT id, attempts, status, lease_owner, error FROM runs "
                    "LEFT JOIN busy ON busy.tenant IS runs.tenant "
                    f"WHERE {claimable} ORDER BY coalesce(busy.n, 0), created_at_epoch_ms, id LIMIT 1",
                    (now, now),
                ).fetchone()
            else:
                target = db.execute(
                    f"SELECT id, attempts, status, lease_owner, error FROM runs WHERE id = ? AND {claimable}",
                    (run_id, now),
                ).fetchone()
            if target is None:
                return None
            failed = 0
            if max_attempts is not None and target[1] >= max_attempts:  # failed <= attempts
                failed = self._failed_attempts(db, target[0], target[1])
            if max_attempts is not None and failed >= max_attempts:
                row = self._dead_letter(db, target, failed, max_attempts, now)
            else:
                row = db.execute(
                    "UPDATE runs SET status = 'running', lease_owner = ?, lease_expires_at_epoch_ms = ?, "
                    f"attempts = attempts + 1, updated_at_epoch_ms = ? WHERE id = ? RETURNING {RUN_COLUMNS}",
                    (owner, expires, now, target[0]),
                ).fetchone()
            (count,) = db.execute("SELECT count(*) FROM run_events WHERE run_id = ?", (target[0],)).fetchone()
        return run_from_row(row, count)

    async def heartbeat(self, run_id: str, owner: str, lease_s: float) -> bool:
        now = self._clock()
        with self._write() as db:
            cursor = db.execute(
                "UPDATE runs SET lease_expires_at_epoch_ms = ? WHERE id = ? AND lease_owner = ?",
                (now + int(lease_s * 1000), run_id, owner),
            )
        return cursor.rowcount == 1

    async def release(self, run_id: str, owner: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status = 'queued', lease_owner = NULL, "
                "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = ? "
                "WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (self._clock(), run_id, owner),
            )

    def _fence(self, db: sqlite3.Connection, run_id: str, owner: str, now: int, usage: Usage | None) -> None:
        """Touch the run only if `owner` still holds its lease; one statement checks and updates."""
        if usage is None:
            cursor = db.execute(
                "UPDATE runs SET updated_at_epoch_ms = ? WHERE id = ? AND lease_owner = ?",
                (now, run_id, owner),
            )
        else:
            cursor = db.execute(
                "UPDATE runs SET updated_at_epoch_ms = ?, input_tokens = input_tokens + ?, "
                "output_tokens = output_tokens + ?, "
                "cost_usd = CASE WHEN ? IS NULL THEN cost_usd ELSE coalesce(cost_usd, 0) + ? END "
                "WHERE id = ? AND lease_owner = ?",
                (
                    now,
                    usage.input_tokens,
                    usage.output_tokens,
                    usage.cost_usd,
                    usage.cost_usd,
                    run_id,
                    owner,
                ),
            )
        if cursor.rowcount != 1:
            raise LeaseLostError(
                f"worker {owner!r} no longer holds the lease of run {run_id}; its write was rejected"
            )

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
        now = self._clock()
        rows = [
            (run_id, first_seq + offset, event.kind, now, dumps(event.data))
            for offset, event in enumerate(events)
        ]
        with self._write() as db:
            self._fence(db, run_id, owner, now, usage)
            try:
                db.executemany(
                    "INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    rows,
                )
            except sqlite3.IntegrityError as exc:
                raise LeaseLostError(
                    f"run {run_id}: event seq {first_seq} was already written by another worker"
                ) from exc
            for op in operations:
                db.execute(
                    f"INSERT INTO operations ({OPERATION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 1, ?, ?) "
                    "ON CONFLICT (idempotency_key) DO UPDATE SET status = excluded.status, "
                    "result = coalesce(excluded.result, operations.result), "
                    "attempts = operations.attempts + "
                    "CASE WHEN excluded.status = 'intent' THEN 1 ELSE 0 END, "
                    "updated_at_epoch_ms = excluded.updated_at_epoch_ms",
                    (
                        op.idempotency_key,
                        op.run_id,
                        op.tool,
                        op.status,
                        None if op.arguments is None else dumps(op.arguments),
                        None if op.result is None else dumps(op.result),
                        now,
                        now,
                    ),
                )
            if within is not None:
                within()
        return [
            RunEvent(run_id, first_seq + offset, event.kind, now, event.data)
            for offset, event in enumerate(events)
        ]

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
        now = self._clock()
        with self._write() as db:
            self._fence(db, run_id, owner, now, None)
            if escalation is not None:
                db.execute(
                    f"INSERT INTO escalations ({ESCALATION_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, 'open', NULL, NULL, ?, NULL, ?)",
                    (
                        escalation.id,
                        run_id,
                        escalation.reason,
                        escalation.message,
                        dumps(list(escalation.options)),
                        dumps(escalation.context),
                        now,
                        None if escalation.expires_s is None else now + int(escalation.expires_s * 1000),
                    ),
                )
            db.execute(
                "INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data) "
                "VALUES (?, ?, ?, ?, ?)",
                (run_id, first_seq, event.kind, now, dumps(event.data)),
            )
            db.execute(
                "UPDATE runs SET status = ?, output = ?, error = ?, lease_owner = NULL, "
                "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = ? WHERE id = ?",
                (status.value, output, error, now, run_id),
            )
        return RunEvent(run_id, first_seq, event.kind, now, event.data)

    async def cancel(self, run_id: str, reason: str, *, compensate: bool = False) -> Run:
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            status = RunStatus(row[0])
            undo = compensate and self._has_succeeded_writes(db, run_id)
            if status.is_terminal and status != RunStatus.DEAD_LETTERED:  # dead letters: discarded
                return await self.get_run(run_id)
            db.execute(
                "UPDATE escalations SET status = 'cancelled' WHERE run_id = ? AND status = 'open'", (run_id,)
            )
            if undo:
                # Writes took effect: a worker runs their compensations first, then ends it cancelled.
                data = {"error": reason, "detail": {"reason": reason}, "outcome": "cancelled"}
                self._append_unfenced(db, run_id, EventKind.COMPENSATION_STARTED, data, now)
                db.execute(
                    "UPDATE runs SET status = 'queued', attempts = 0, error = ?, lease_owner = NULL, "
                    "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = ? WHERE id = ?",
                    (reason, now, run_id),
                )
            else:
                self._append_unfenced(db, run_id, EventKind.RUN_CANCELLED, {"reason": reason}, now)
                db.execute(
                    "UPDATE runs SET status = 'cancelled', error = ?, lease_owner = NULL, "
                    "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = ? WHERE id = ?",
                    (reason, now, run_id),
                )
        return await self.get_run(run_id)

    @staticmethod
    def _has_succeeded_writes(db: sqlite3.Connection, run_id: str) -> bool:
        row = db.execute(
            "SELECT 1 FROM operations WHERE run_id = ? AND status = 'succeeded' LIMIT 1", (run_id,)
        ).fetchone()
        return row is not None

    async def list_escalations(
        self,
        *,
        status: str | None = "open",
        run_id: str | None = None,
        tenants: Collection[str | None] | None = None,
        limit: int = 100,
    ) -> list[Escalation]:
        clauses: list[str] = []
        args: list[object] = []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if run_id is not None:
            clauses.append("run_id = ?")
            args.append(run_id)
        if tenants is not None:
            clauses.append(f"run_id IN (SELECT id FROM runs WHERE {_tenant_clause(tenants, args)})")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT {ESCALATION_COLUMNS} FROM escalations {where} ORDER BY created_at_epoch_ms, id LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [escalation_from_row(row) for row in rows]

    async def get_escalation(self, escalation_id: str) -> Escalation:
        row = self._db.execute(
            f"SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = ?", (escalation_id,)
        ).fetchone()
        if row is None:
            raise EscalationNotFoundError(f"no escalation with id {escalation_id!r}")
        return escalation_from_row(row)

    async def expired_escalations(self, now_epoch_ms: int) -> list[Escalation]:
        rows = self._db.execute(
            f"SELECT {ESCALATION_COLUMNS} FROM escalations WHERE status = 'open' "
            "AND expires_at_epoch_ms IS NOT NULL AND expires_at_epoch_ms <= ? ORDER BY expires_at_epoch_ms",
            (now_epoch_ms,),
        ).fetchall()
        return [escalation_from_row(row) for row in rows]

    async def answer_escalation(
        self, escalation_id: str, answer: JsonDict, by: str
    ) -> tuple[Escalation, bool]:
        now = self._clock()
        with self._write() as db:
            row = db.execute(
                "SELECT run_id, status, reason, created_at_epoch_ms FROM escalations WHERE id = ?",
                (escalation_id,),
            ).fetchone()
            if row is None:
                raise EscalationNotFoundError(f"no escalation with id {escalation_id!r}")
            run_id, status, reason, opened_at = row
            applied = status == "open"
            if applied:
                # The run is parked (no lease), so this write needs none; the status check below
                # keeps a cancelled run cancelled.
                db.execute(
                    "UPDATE escalations SET status = 'answered', answer = ?, answered_by = ?, "
                    "answered_at_epoch_ms = ? WHERE id = ?",
                    (dumps(answer), by, now, escalation_id),
                )
                (next_seq,) = db.execute(
                    "SELECT coalesce(max(seq), -1) + 1 FROM run_events WHERE run_id = ?", (run_id,)
                ).fetchone()
                data = {
                    "escalation_id": escalation_id,
                    "reason": reason,
                    "opened_at_epoch_ms": opened_at,
                    "answer": answer,
                    "by": by,
                }
                db.execute(
                    "INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (run_id, next_seq, EventKind.ESCALATION_ANSWERED.value, now, dumps(data)),
                )
                db.execute(
                    "UPDATE runs SET status = 'queued', updated_at_epoch_ms = ? "
                    "WHERE id = ? AND status = 'waiting_human'",
                    (now, run_id),
                )
        return await self.get_escalation(escalation_id), applied

    async def load_events(self, run_id: str, *, after_seq: int = -1) -> list[RunEvent]:
        rows = self._db.execute(
            "SELECT seq, kind, created_at_epoch_ms, data FROM run_events "
            "WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, after_seq),
        ).fetchall()
        return [RunEvent(run_id, seq, kind, at, json.loads(data)) for seq, kind, at, data in rows]

    async def get_operation(self, idempotency_key: str) -> Operation | None:
        row = self._db.execute(
            f"SELECT {OPERATION_COLUMNS} FROM operations WHERE idempotency_key = ?",
            (idempotency_key,),
        ).fetchone()
        return None if row is None else operation_from_row(row)

    async def list_operations(self, run_id: str) -> list[Operation]:
        rows = self._db.execute(
            f"SELECT {OPERATION_COLUMNS} FROM operations WHERE run_id = ? "
            "ORDER BY created_at_epoch_ms, idempotency_key",
            (run_id,),
        ).fetchall()
        return [operation_from_row(row) for row in rows]

    async def count_unfinished(self) -> int:
        (count,) = self._db.execute("SELECT count(*) FROM runs WHERE status IN (?, ?)", UNFINISHED).fetchone()
        return int(count)

    async def close(self) -> None:
        self._db.close()

    async def replay(self, run_id: str, by: str) -> tuple[Run, bool]:
        now = self._clock()
        with self._write() as db:
            row = db.execute("SELECT status, attempts FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            applied = row[0] == RunStatus.DEAD_LETTERED.value
            if applied:
                data = {"by": by, "previous_attempts": row[1]}
                self._append_unfenced(db, run_id, EventKind.RUN_REPLAYED, data, now)
                db.execute(
                    "UPDATE runs SET status = 'queued', attempts = 0, error = NULL, "
                    "updated_at_epoch_ms = ? WHERE id = ?",
                    (now, run_id),
                )
        return await self.get_run(run_id), applied

    async def count_by_status(self) -> dict[RunStatus, int]:
        counts = dict.fromkeys(RunStatus, 0)
        for status, count in self._db.execute("SELECT status, count(*) FROM runs GROUP BY status"):
            counts[RunStatus(status)] = int(count)
        return counts

    async def create_canary(self, canary: Canary) -> Canary:
        with self._write() as db:
            running = db.execute(
                "SELECT id FROM canaries WHERE agent_name = ? AND status = 'running'", (canary.agent_name,)
            ).fetchone()
            if running is not None:
                raise ConfigurationError(
                    f"agent {canary.agent_name!r} already has canary {running[0]} running; "
                    "promote or roll it back first"
                )
            db.execute(
                f"INSERT INTO canaries ({CANARY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    canary.id,
                    canary.agent_name,
                    canary.baseline_version,
                    canary.candidate_version,
                    canary.share,
                    canary.status,
                    dumps(canary.thresholds),
                    canary.started_at_epoch_ms,
                    canary.ended_at_epoch_ms,
                    canary.reason,
                ),
            )
        return canary

    async def current_canary(self, agent_name: str) -> Canary | None:
        row = self._db.execute(
            f"SELECT {CANARY_COLUMNS} FROM canaries WHERE agent_name = ? "
            "ORDER BY started_at_epoch_ms DESC, id DESC LIMIT 1",
            (agent_name,),
        ).fetchone()
        if row is None or row[5] == "rolled_back":
            return None
        return canary_from_row(row)

    async def list_canaries(self, *, agent_name: str | None = None, limit: int = 50) -> list[Canary]:
        where, args = ("WHERE agent_name = ?", (agent_name,)) if agent_name is not None else ("", ())
        rows = self._db.execute(
            f"SELECT {CANARY_COLUMNS} FROM canaries {where} "
            "ORDER BY started_at_epoch_ms DESC, id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [canary_from_row(row) for row in rows]

    async def end_canary(self, canary_id: str, status: str, reason: str) -> tuple[Canary, bool]:
        if status not in ("promoted", "rolled_back"):
            raise ConfigurationError(f"a canary ends promoted or rolled_back, not {status!r}")
        now = self._clock()
        with self._write() as db:
            cursor = db.execute(
                "UPDATE canaries SET status = ?, reason = ?, ended_at_epoch_ms = ? "
                "WHERE id = ? AND status = 'running'",
                (status, reason, now, canary_id),
            )
            row = db.execute(f"SELECT {CANARY_COLUMNS} FROM canaries WHERE id = ?", (canary_id,)).fetchone()
        if row is None:
            raise ConfigurationError(f"no canary with id {canary_id!r}")
        return canary_from_row(row), cursor.rowcount == 1

    async def outcomes(self, agent_name: str, version: str, since_epoch_ms: int) -> list[RunOutcome]:
        rows = self._db.execute(
            "SELECT status, cost_usd, updated_at_epoch_ms - created_at_epoch_ms FROM runs "
            "WHERE agent_name = ? AND agent_version = ? AND created_at_epoch_ms >= ? AND shadow_of IS NULL",
            (agent_name, version, since_epoch_ms),
        ).fetchall()
        return [RunOutcome(RunStatus(status), cost, int(duration)) for status, cost, duration in rows]

    async def tool_usage(self, agent_name: str, *, runs: int) -> list[tuple[dict[str, int], int]]:
        recent = self._db.execute(
            "SELECT id FROM runs WHERE agent_name = ? AND status = 'succeeded' AND shadow_of IS NULL "
            "ORDER BY created_at_epoch_ms DESC LIMIT ?",
            (agent_name, runs),
        ).fetchall()
        usage: dict[str, tuple[dict[str, int], list[int]]] = {run_id: ({}, [0]) for (run_id,) in recent}
        if not usage:
            return []
        marks = ", ".join("?" * len(usage))
        rows = self._db.execute(
            f"SELECT run_id, kind, json_extract(data, '$.tool') FROM run_events WHERE run_id IN ({marks}) "
            "AND kind IN ('tool.result', 'tool.intent')",
            tuple(usage),
        )
        for run_id, kind, tool in rows:
            calls, writes = usage[run_id]
            if kind == EventKind.TOOL_INTENT.value:
                writes[0] += 1
            elif tool is not None:
                calls[tool] = calls.get(tool, 0) + 1
        return [(calls, writes[0]) for calls, writes in usage.values()]

    async def append_audit(self, entries: Sequence[AuditEntry]) -> None:
        if not entries:
            return
        now = self._clock()
        with self._write() as db:
            db.executemany(
                f"INSERT INTO audit ({AUDIT_COLUMNS}) VALUES (NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.at_epoch_ms or now,
                        e.kind,
                        e.decision,
                        e.run_id,
                        e.agent,
                        e.principal,
                        e.tenant,
                        e.session_id,
                        e.tool,
                        e.grant,
                        e.reason,
                        dumps(e.detail),
                    )
                    for e in entries
                ],
            )

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
        clauses: list[str] = []
        args: list[object] = []
        if tenants is not None:
            clauses.append(_tenant_clause(tenants, args))
        for column, value in (
            ("run_id", run_id),
            ("principal", principal),
            ("session_id", session_id),
            ("decision", decision),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        if since_epoch_ms is not None:
            clauses.append("at_epoch_ms >= ?")
            args.append(since_epoch_ms)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._db.execute(
            f"SELECT {AUDIT_COLUMNS} FROM audit {where} ORDER BY id DESC LIMIT ?", (*args, limit)
        ).fetchall()
        return [audit_from_row(row) for row in rows]

    def _failed_attempts(self, db: sqlite3.Connection, run_id: str, attempts: int) -> int:
        markers = db.execute(
            "SELECT kind, data FROM run_events WHERE run_id = ? "
            f"AND kind IN ({', '.join('?' * len(ATTEMPT_MARKER_KINDS))}) ORDER BY seq",
            (run_id, *ATTEMPT_MARKER_KINDS),
        ).fetchall()
        return failed_attempts(attempts, markers)

    def _dead_letter(
        self, db: sqlite3.Connection, target: Sequence[Any], failed: int, max_attempts: int, now: int
    ) -> Sequence[Any]:
        """Park a claimable run whose attempts are used up, inside the claim's transaction; its row."""
        run_id, attempts, status, lease_owner, error = target
        data, message = dead_letter_verdict(
            attempts, failed, max_attempts, status=status, lease_owner=lease_owner, error=error
        )
        self._append_unfenced(db, run_id, EventKind.RUN_DEAD_LETTERED, data, now)
        row: Sequence[Any] = db.execute(
            "UPDATE runs SET status = 'dead_lettered', error = ?, lease_owner = NULL, "
            f"lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = ? WHERE id = ? RETURNING {RUN_COLUMNS}",
            (message, now, run_id),
        ).fetchone()
        return row

    def _append_unfenced(
        self, db: sqlite3.Connection, run_id: str, kind: str, data: JsonDict, now: int
    ) -> None:
        """Append one event to a run no worker holds (the caller's transaction makes sure of that)."""
        (next_seq,) = db.execute(
            "SELECT coalesce(max(seq), -1) + 1 FROM run_events WHERE run_id = ?", (run_id,)
        ).fetchone()
        db.execute(
            "INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data) VALUES (?, ?, ?, ?, ?)",
            (run_id, next_seq, kind, now, dumps(data)),
        )


def _tenant_clause(tenants: Collection[str | None], args: list[object]) -> str:
    """`tenant IN (...)`, with NULL matched as a tenant of its own; no tenants at all matches nothing."""
    named = [tenant for tenant in tenants if tenant is not None]
    parts = [f"tenant IN ({', '.join('?' * len(named))})"] if named else []
    args.extend(named)
    if None in tenants:
        parts.append("tenant IS NULL")
    return f"({' OR '.join(parts)})" if parts else "0"
