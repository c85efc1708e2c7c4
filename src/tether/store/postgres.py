"""PostgresRunStore: runs, events and the queue in PostgreSQL, for workers on any number of hosts."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import fields
from typing import Any

from psycopg import errors

from tether.errors import (
    ConfigurationError,
    EscalationNotFoundError,
    IdempotencyConflictError,
    LeaseLostError,
    RunNotFoundError,
    StoreError,
)
from tether.policy.budget_postgres import PostgresBudgetBackend
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
from tether.store.postgres_connections import (
    NOTIFY,
    Connection,
    PostgresConnections,
    one,
    one_or_none,
    rows,
)
from tether.store.postgres_sql import (
    APPEND,
    CLAIM_NEXT,
    CLAIM_ONE,
    CLAIMABLE,
    CREATE,
    EVENT_COUNT,
    FINISH,
    NO_EVENTS,
    operation_args,
    rounds_of_unique_keys,
    tenant_clause,
)
from tether.store.sql import (
    ATTEMPT_MARKER_KINDS,
    AUDIT_COLUMNS,
    CANARY_COLUMNS,
    ESCALATION_COLUMNS,
    OPERATION_COLUMNS,
    RUN_COLUMNS,
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

_CANARY_LOCKS = 0x7E7F  # advisory lock (this, hashtext(agent)): one running canary per agent


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class PostgresRunStore:
    """A RunStore on PostgreSQL: the same semantics as SqliteRunStore, for many workers on many hosts.

    Connects (and creates or migrates the schema) on first use. Claims take rows `FOR UPDATE SKIP
    LOCKED`; each worker write is one statement fenced by the lease. `schema` (or `?schema=` in the
    URL) keeps tether's tables in that schema, created if missing.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        clock: Callable[[], int] = now_ms,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self._db = PostgresConnections(
            url,
            schema=schema,
            min_connections=min_connections,
            max_connections=max_connections,
            connect_timeout_s=connect_timeout_s,
        )
        self.url = self._db.url  # password masked
        self.schema = self._db.schema
        self._connect_url = url
        self._clock = clock

    def budget_backend(self) -> PostgresBudgetBackend:
        """Budget counters in this store's database and schema (a pool of their own), shared by every
        process using it: what the runtime uses when nothing else is configured."""
        return PostgresBudgetBackend(self._connect_url, schema=self.schema)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> PostgresRunStore:
        """Open `postgresql://user:password@host:port/database[?schema=name]` (or `postgres://`)."""
        return cls(url, **kwargs)

    async def close(self) -> None:
        await self._db.close()

    async def notify_queued(self) -> None:
        """Wake the workers waiting on this schema (`wait_for_work`). The store already does so in
        the transaction of every write that makes a run claimable: created, answered, replayed,
        released, given back."""
        async with self._db.connection() as db:
            await db.execute(f"SELECT {NOTIFY}")

    async def wait_for_work(self, timeout_s: float) -> bool:
        """Wait until a run of this schema becomes claimable (True) or `timeout_s` passes (False).
        Listening starts with the first call; claim, then wait, then claim again."""
        return await self._db.wait_for_notify(timeout_s)

    # --- runs -----------------------------------------------------------------------------------

    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        now = self._clock()
        started = {"agent": new.agent_name, "version": new.agent_version, "input": new.input}
        if new.principal is not None:
            started["principal"] = new.principal
        args = {f.name: getattr(new, f.name) for f in fields(new)}
        args.update(now=now, kind=EventKind.RUN_STARTED.value, data=dumps(started))
        async with self._db.connection() as db:
            try:
                row = await one_or_none(db, CREATE, args)
            except errors.UniqueViolation as exc:
                raise StoreError(f"run {new.id!r} already exists; give each run a new id") from exc
            if row is not None:
                return run_from_row(row, 1), True
            existing = await one(
                db,
                "SELECT id, agent_name, input FROM runs WHERE idempotency_key = %s",
                (new.idempotency_key,),
            )
        if existing[1] != new.agent_name or existing[2] != new.input:
            raise IdempotencyConflictError(
                f"idempotency key {new.idempotency_key!r} already started run {existing[0]} with a "
                "different agent or input; use a new key"
            )
        return await self.get_run(existing[0]), False

    async def get_run(self, run_id: str) -> Run:
        async with self._db.connection() as db:
            return await _get_run_on(db, run_id)

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
                clauses.append(f"{column} = %s")
                args.append(value)
        if tenants is not None:
            clauses.append(tenant_clause(tenants, args))
        rows = await self._all(
            f"SELECT {RUN_COLUMNS}, {EVENT_COUNT} FROM runs WHERE {' AND '.join(clauses)} "
            'ORDER BY created_at_epoch_ms DESC, id COLLATE "C" LIMIT %s',
            (*args, limit),
        )
        return [run_from_row(row, row[-1]) for row in rows]

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
        where = "shadow_of IS NULL AND created_at_epoch_ms >= %s"
        if tenants is not None:
            where += " AND " + tenant_clause(tenants, args)
        rows = await self._all(
            f"SELECT {', '.join(columns)}, count(*), count(*) FILTER (WHERE status = 'succeeded'), "
            "coalesce(sum(cost_usd), 0), coalesce(sum(input_tokens + output_tokens), 0), "
            f"max(created_at_epoch_ms) FROM runs WHERE {where} GROUP BY {', '.join(columns)} "
            f"ORDER BY {len(columns) + 3} DESC, {len(columns) + 1} DESC LIMIT %s",
            (*args, limit),
        )
        return [cost_row_from(columns, row) for row in rows]

    # --- claims and leases ----------------------------------------------------------------------

    async def claim_run(
        self, owner: str, lease_s: float, *, run_id: str | None = None, max_attempts: int | None = None
    ) -> Run | None:
        now = self._clock()
        args = {
            "owner": owner,
            "expires": now + int(lease_s * 1000),
            "now": now,
            "max_attempts": max_attempts,
            "run_id": run_id,
        }
        while True:
            async with self._db.connection() as db:
                row = await one_or_none(db, CLAIM_NEXT if run_id is None else CLAIM_ONE, args)
            if row is None:
                return None
            if row[0] is not None:  # claimed
                return run_from_row(row, row[-2])
            # The oldest claimable run may have used up its attempts; if another worker took it
            # meanwhile, look again (with `run_id`, that run is not claimable any more).
            assert max_attempts is not None  # without it, the claim above always takes the run
            claimed = await self._claim_exhausted(row[-1], args, max_attempts)
            if claimed is not None or run_id is not None:
                return claimed

    async def _claim_exhausted(self, run_id: str, args: dict[str, Any], max_attempts: int) -> Run | None:
        """Claim or dead-letter a run that has had `max_attempts` attempts: `failed_attempts` decides."""
        now = args["now"]
        async with self._db.connection() as db, db.transaction():
            target = await one_or_none(
                db,
                "SELECT id, attempts, status, lease_owner, error FROM runs "
                f"WHERE id = %(run_id)s AND {CLAIMABLE} FOR UPDATE SKIP LOCKED",
                {**args, "run_id": run_id},
            )
            if target is None:
                return None
            markers = await rows(
                db,
                "SELECT kind, data FROM run_events WHERE run_id = %s AND kind = ANY(%s) ORDER BY seq",
                (run_id, list(ATTEMPT_MARKER_KINDS)),
            )
            failed = failed_attempts(target[1], [(kind, data) for kind, data in markers])
            if failed >= max_attempts:
                _, attempts, status, lease_owner, error = target
                data, message = dead_letter_verdict(
                    attempts, failed, max_attempts, status=status, lease_owner=lease_owner, error=error
                )
                await _append_unfenced(db, run_id, EventKind.RUN_DEAD_LETTERED, data, now)
                row = await one(
                    db,
                    "UPDATE runs SET status = 'dead_lettered', error = %s, lease_owner = NULL, "
                    "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = %s WHERE id = %s "
                    f"RETURNING {RUN_COLUMNS}, {EVENT_COUNT}",
                    (message, now, run_id),
                )
            else:
                row = await one(
                    db,
                    "UPDATE runs SET status = 'running', lease_owner = %(owner)s, "
                    "lease_expires_at_epoch_ms = %(expires)s, attempts = attempts + 1, "
                    f"updated_at_epoch_ms = %(now)s WHERE id = %(run_id)s RETURNING {RUN_COLUMNS}, "
                    f"{EVENT_COUNT}",
                    {**args, "run_id": run_id},
                )
        return run_from_row(row, row[-1])

    async def heartbeat(self, run_id: str, owner: str, lease_s: float) -> bool:
        now = self._clock()
        async with self._db.connection() as db:
            cursor = await db.execute(
                "UPDATE runs SET lease_expires_at_epoch_ms = %s WHERE id = %s AND lease_owner = %s",
                (now + int(lease_s * 1000), run_id, owner),
            )
        return cursor.rowcount == 1

    async def release(self, run_id: str, owner: str) -> None:
        async with self._db.connection() as db:
            await db.execute(
                "WITH released AS (UPDATE runs SET status = 'queued', lease_owner = NULL, "
                "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = %s "
                "WHERE id = %s AND lease_owner = %s AND status = 'running' RETURNING id) "
                f"SELECT {NOTIFY} FROM released",
                (self._clock(), run_id, owner),
            )

    # --- events, usage and fencing ----------------------------------------------------------------

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
        fence = {"now": now, "run_id": run_id, "owner": owner}
        args: dict[str, Any] = {
            **fence,
            "seqs": list(range(first_seq, first_seq + len(events))),
            "kinds": [str(event.kind) for event in events],
            "datas": [dumps(event.data) for event in events],
        }
        if usage is not None:
            args.update(
                input_tokens=usage.input_tokens, output_tokens=usage.output_tokens, cost=usage.cost_usd
            )
        # One statement upserts each key once; a key written twice in one append (not done by the
        # loop today) takes a statement per repeat, in order, in one transaction.
        rounds = rounds_of_unique_keys(operations)
        statements = [(APPEND[usage is not None, bool(rounds[0])], {**args, **operation_args(rounds[0])})]
        statements += [
            (APPEND[False, True], {**fence, **NO_EVENTS, **operation_args(ops)}) for ops in rounds[1:]
        ]
        try:
            async with self._db.connection() as db:
                if within is None and len(statements) == 1:
                    fenced = (await one(db, *statements[0]))[0]
                else:
                    async with db.transaction():
                        for query, query_args in statements:
                            fenced = (await one(db, query, query_args))[0]
                            if not fenced:
                                break
                        if fenced and within is not None:
                            within()
        except errors.UniqueViolation as exc:
            raise LeaseLostError(
                f"run {run_id}: event seq {first_seq} was already written by another worker"
            ) from exc
        if not fenced:
            raise _lease_lost(run_id, owner)
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
        args: dict[str, Any] = {
            "now": now,
            "run_id": run_id,
            "owner": owner,
            "status": status.value,
            "output": output,
            "error": error,
            "seq": first_seq,
            "kind": str(event.kind),
            "data": dumps(event.data),
        }
        if escalation is not None:
            args.update(
                escalation_id=escalation.id,
                reason=escalation.reason,
                message=escalation.message,
                options=dumps(list(escalation.options)),
                context=dumps(escalation.context),
                expires=None if escalation.expires_s is None else now + int(escalation.expires_s * 1000),
            )
        query = FINISH[escalation is not None, status == RunStatus.QUEUED]
        try:
            async with self._db.connection() as db:
                fenced = (await one(db, query, args))[0]
        except errors.UniqueViolation as exc:
            raise LeaseLostError(
                f"run {run_id}: event seq {first_seq} was already written by another worker"
            ) from exc
        if not fenced:
            raise _lease_lost(run_id, owner)
        return RunEvent(run_id, first_seq, event.kind, now, event.data)

    async def cancel(self, run_id: str, reason: str, *, compensate: bool = False) -> Run:
        now = self._clock()
        async with self._db.connection() as db, db.transaction():
            row = await one_or_none(db, "SELECT status FROM runs WHERE id = %s FOR UPDATE", (run_id,))
            if row is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            status = RunStatus(row[0])
            if status.is_terminal and status != RunStatus.DEAD_LETTERED:  # dead letters: discarded
                return await _get_run_on(db, run_id)
            undo = compensate and bool(
                await one_or_none(
                    db,
                    "SELECT 1 FROM operations WHERE run_id = %s AND status = 'succeeded' LIMIT 1",
                    (run_id,),
                )
            )
            await db.execute(
                "UPDATE escalations SET status = 'cancelled' WHERE run_id = %s AND status = 'open'", (run_id,)
            )
            if undo:
                # Writes took effect: a worker runs their compensations first, then ends it cancelled.
                data = {"error": reason, "detail": {"reason": reason}, "outcome": "cancelled"}
                await _append_unfenced(db, run_id, EventKind.COMPENSATION_STARTED, data, now)
                await db.execute(
                    "UPDATE runs SET status = 'queued', attempts = 0, error = %s, lease_owner = NULL, "
                    "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = %s WHERE id = %s",
                    (reason, now, run_id),
                )
                await db.execute(f"SELECT {NOTIFY}")
            else:
                await _append_unfenced(db, run_id, EventKind.RUN_CANCELLED, {"reason": reason}, now)
                await db.execute(
                    "UPDATE runs SET status = 'cancelled', error = %s, lease_owner = NULL, "
                    "lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = %s WHERE id = %s",
                    (reason, now, run_id),
                )
            return await _get_run_on(db, run_id)

    async def replay(self, run_id: str, by: str) -> tuple[Run, bool]:
        now = self._clock()
        async with self._db.connection() as db, db.transaction():
            row = await one_or_none(
                db, "SELECT status, attempts FROM runs WHERE id = %s FOR UPDATE", (run_id,)
            )
            if row is None:
                raise RunNotFoundError(f"no run with id {run_id!r}")
            applied = row[0] == RunStatus.DEAD_LETTERED.value
            if applied:
                data = {"by": by, "previous_attempts": row[1]}
                await _append_unfenced(db, run_id, EventKind.RUN_REPLAYED, data, now)
                await db.execute(
                    "UPDATE runs SET status = 'queued', attempts = 0, error = NULL, "
                    "updated_at_epoch_ms = %s WHERE id = %s",
                    (now, run_id),
                )
                await db.execute(f"SELECT {NOTIFY}")
            return await _get_run_on(db, run_id), applied

    async def load_events(self, run_id: str, *, after_seq: int = -1) -> list[RunEvent]:
        rows = await self._all(
            "SELECT seq, kind, created_at_epoch_ms, data FROM run_events "
            "WHERE run_id = %s AND seq > %s ORDER BY seq",
            (run_id, after_seq),
        )
        return [RunEvent(run_id, seq, kind, at, json.loads(data)) for seq, kind, at, data in rows]

    async def get_operation(self, idempotency_key: str) -> Operation | None:
        rows = await self._all(
            f"SELECT {OPERATION_COLUMNS} FROM operations WHERE idempotency_key = %s", (idempotency_key,)
        )
        return operation_from_row(rows[0]) if rows else None

    async def list_operations(self, run_id: str) -> list[Operation]:
        rows = await self._all(
            f"SELECT {OPERATION_COLUMNS} FROM operations WHERE run_id = %s "
            'ORDER BY created_at_epoch_ms, idempotency_key COLLATE "C"',
            (run_id,),
        )
        return [operation_from_row(row) for row in rows]

    async def count_unfinished(self) -> int:
        [(count,)] = await self._all("SELECT count(*) FROM runs WHERE status = ANY(%s)", (list(UNFINISHED),))
        return int(count)

    async def count_by_status(self) -> dict[RunStatus, int]:
        counts = dict.fromkeys(RunStatus, 0)
        for status, count in await self._all("SELECT status, count(*) FROM runs GROUP BY status"):
            counts[RunStatus(status)] = int(count)
        return counts

    # --- people ---------------------------------------------------------------------------------

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
            clauses.append("status = %s")
            args.append(status)
        if run_id is not None:
            clauses.append("run_id = %s")
            args.append(run_id)
        if tenants is not None:
            clauses.append(f"run_id IN (SELECT id FROM runs WHERE {tenant_clause(tenants, args)})")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._all(
            f"SELECT {ESCALATION_COLUMNS} FROM escalations {where} "
            'ORDER BY created_at_epoch_ms, id COLLATE "C" LIMIT %s',
            (*args, limit),
        )
        return [escalation_from_row(row) for row in rows]

    async def get_escalation(self, escalation_id: str) -> Escalation:
        rows = await self._all(
            f"SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = %s", (escalation_id,)
        )
        if not rows:
            raise EscalationNotFoundError(f"no escalation with id {escalation_id!r}")
        return escalation_from_row(rows[0])

    async def expired_escalations(self, now_epoch_ms: int) -> list[Escalation]:
        rows = await self._all(
            f"SELECT {ESCALATION_COLUMNS} FROM escalations WHERE status = 'open' "
            "AND expires_at_epoch_ms IS NOT NULL AND expires_at_epoch_ms <= %s ORDER BY expires_at_epoch_ms",
            (now_epoch_ms,),
        )
        return [escalation_from_row(row) for row in rows]

    async def answer_escalation(
        self, escalation_id: str, answer: JsonDict, by: str
    ) -> tuple[Escalation, bool]:
        now = self._clock()
        async with self._db.connection() as db, db.transaction():
            # Lock the run before its question, as `cancel` does, so the two never deadlock.
            found = await one_or_none(db, "SELECT run_id FROM escalations WHERE id = %s", (escalation_id,))
            if found is None:
                raise EscalationNotFoundError(f"no escalation with id {escalation_id!r}")
            await db.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (found[0],))
            run_id, status, reason, opened_at = await one(
                db,
                "SELECT run_id, status, reason, created_at_epoch_ms FROM escalations "
                "WHERE id = %s FOR UPDATE",
                (escalation_id,),
            )
            applied = status == "open"
            if applied:
                # The run is parked (no lease), so this write needs none; the status check below
                # keeps a cancelled run cancelled.
                await db.execute(
                    "UPDATE escalations SET status = 'answered', answer = %s, answered_by = %s, "
                    "answered_at_epoch_ms = %s WHERE id = %s",
                    (dumps(answer), by, now, escalation_id),
                )
                data = {
                    "escalation_id": escalation_id,
                    "reason": reason,
                    "opened_at_epoch_ms": opened_at,
                    "answer": answer,
                    "by": by,
                }
                await _append_unfenced(db, run_id, EventKind.ESCALATION_ANSWERED, data, now)
                await db.execute(
                    "WITH queued AS (UPDATE runs SET status = 'queued', updated_at_epoch_ms = %s "
                    "WHERE id = %s AND status = 'waiting_human' RETURNING id) "
                    f"SELECT {NOTIFY} FROM queued",
                    (now, run_id),
                )
            row = await one(
                db, f"SELECT {ESCALATION_COLUMNS} FROM escalations WHERE id = %s", (escalation_id,)
            )
        return escalation_from_row(row), applied

    # --- canaries, comparisons and audit ------------------------------------------------------------

    async def create_canary(self, canary: Canary) -> Canary:
        async with self._db.connection() as db, db.transaction():
            await db.execute(
                "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_CANARY_LOCKS, canary.agent_name)
            )
            running = await one_or_none(
                db,
                "SELECT id FROM canaries WHERE agent_name = %s AND status = 'running'",
                (canary.agent_name,),
            )
            if running is not None:
                raise ConfigurationError(
                    f"agent {canary.agent_name!r} already has canary {running[0]} running; "
                    "promote or roll it back first"
                )
            await db.execute(
                f"INSERT INTO canaries ({CANARY_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
        rows = await self._all(
            f"SELECT {CANARY_COLUMNS} FROM canaries WHERE agent_name = %s "
            'ORDER BY started_at_epoch_ms DESC, id COLLATE "C" DESC LIMIT 1',
            (agent_name,),
        )
        if not rows or rows[0][5] == "rolled_back":
            return None
        return canary_from_row(rows[0])

    async def list_canaries(self, *, agent_name: str | None = None, limit: int = 50) -> list[Canary]:
        where, args = ("WHERE agent_name = %s", (agent_name,)) if agent_name is not None else ("", ())
        rows = await self._all(
            f"SELECT {CANARY_COLUMNS} FROM canaries {where} "
            'ORDER BY started_at_epoch_ms DESC, id COLLATE "C" DESC LIMIT %s',
            (*args, limit),
        )
        return [canary_from_row(row) for row in rows]

    async def end_canary(self, canary_id: str, status: str, reason: str) -> tuple[Canary, bool]:
        if status not in ("promoted", "rolled_back"):
            raise ConfigurationError(f"a canary ends promoted or rolled_back, not {status!r}")
        async with self._db.connection() as db:
            cursor = await db.execute(
                "UPDATE canaries SET status = %s, reason = %s, ended_at_epoch_ms = %s "
                "WHERE id = %s AND status = 'running'",
                (status, reason, self._clock(), canary_id),
            )
            row = await one_or_none(db, f"SELECT {CANARY_COLUMNS} FROM canaries WHERE id = %s", (canary_id,))
        if row is None:
            raise ConfigurationError(f"no canary with id {canary_id!r}")
        return canary_from_row(row), cursor.rowcount == 1

    async def outcomes(self, agent_name: str, version: str, since_epoch_ms: int) -> list[RunOutcome]:
        rows = await self._all(
            "SELECT status, cost_usd, updated_at_epoch_ms - created_at_epoch_ms FROM runs WHERE "
            "agent_name = %s AND agent_version = %s AND created_at_epoch_ms >= %s AND shadow_of IS NULL",
            (agent_name, version, since_epoch_ms),
        )
        return [RunOutcome(RunStatus(status), cost, int(duration)) for status, cost, duration in rows]

    async def tool_usage(self, agent_name: str, *, runs: int) -> list[tuple[dict[str, int], int]]:
        recent = await self._all(
            "SELECT id FROM runs WHERE agent_name = %s AND status = 'succeeded' AND shadow_of IS NULL "
            'ORDER BY created_at_epoch_ms DESC, id COLLATE "C" LIMIT %s',
            (agent_name, runs),
        )
        usage: dict[str, tuple[dict[str, int], list[int]]] = {run_id: ({}, [0]) for (run_id,) in recent}
        if not usage:
            return []
        rows = await self._all(
            "SELECT run_id, kind, data::json ->> 'tool' FROM run_events WHERE run_id = ANY(%s) "
            "AND kind IN ('tool.result', 'tool.intent')",
            (list(usage),),
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
        columns = AUDIT_COLUMNS.removeprefix("id, ")  # the database numbers them
        async with self._db.connection() as db, db.transaction(), db.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO audit ({columns}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
            clauses.append(tenant_clause(tenants, args))
        for column, value in (
            ("run_id", run_id),
            ("principal", principal),
            ("session_id", session_id),
            ("decision", decision),
        ):
            if value is not None:
                clauses.append(f"{column} = %s")
                args.append(value)
        if since_epoch_ms is not None:
            clauses.append("at_epoch_ms >= %s")
            args.append(since_epoch_ms)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._all(
            f"SELECT {AUDIT_COLUMNS} FROM audit {where} ORDER BY id DESC LIMIT %s", (*args, limit)
        )
        return [audit_from_row(row) for row in rows]

    async def _all(self, query: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        async with self._db.connection() as db:
            return await rows(db, query, args)


def _lease_lost(run_id: str, owner: str) -> LeaseLostError:
    return LeaseLostError(
        f"worker {owner!r} no longer holds the lease of run {run_id}; its write was rejected"
    )


async def _get_run_on(db: Connection, run_id: str) -> Run:
    row = await one_or_none(db, f"SELECT {RUN_COLUMNS}, {EVENT_COUNT} FROM runs WHERE id = %s", (run_id,))
    if row is None:
        raise RunNotFoundError(f"no run with id {run_id!r}")
    return run_from_row(row, row[-1])


async def _append_unfenced(db: Connection, run_id: str, kind: str, data: JsonDict, now: int) -> None:
    """Append one event to a run no worker holds; the caller's transaction has locked the run's row."""
    await db.execute(
        "INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data) "
        "SELECT %s, coalesce(max(seq), -1) + 1, %s, %s, %s FROM run_events WHERE run_id = %s",
        (run_id, str(kind), now, dumps(data), run_id),
    )
