"""The PostgreSQL statements of PostgresRunStore's hot paths, built once at import: creating a run,
claiming one, a fenced append and finishing, one round trip each."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from tether.store.base import OperationWrite
from tether.store.postgres_connections import NOTIFY
from tether.store.sql import ESCALATION_COLUMNS, OPERATION_COLUMNS, RUN_COLUMNS, dumps

EVENT_COUNT = "(SELECT count(*) FROM run_events e WHERE e.run_id = runs.id)"
CLAIMABLE = (
    "(status = 'queued' OR (status = 'running' AND "
    "(lease_owner IS NULL OR lease_expires_at_epoch_ms < %(now)s)))"
)
# Idempotent creation in one statement: a second start with the key inserts nothing and returns no row.
CREATE = f"""
WITH created AS (
    INSERT INTO runs (id, agent_name, agent_version, agent_target, model_spec, status, input, principal,
        idempotency_key, parent_run_id, created_at_epoch_ms, updated_at_epoch_ms, session_id, tenant,
        shadow_of)
    VALUES (%(id)s, %(agent_name)s, %(agent_version)s, %(agent_target)s, %(model_spec)s, 'queued', %(input)s,
        %(principal)s, %(idempotency_key)s, %(parent_run_id)s, %(now)s, %(now)s, %(session_id)s, %(tenant)s,
        %(shadow_of)s)
    ON CONFLICT (idempotency_key) DO NOTHING
    RETURNING {RUN_COLUMNS}
), started AS (
    INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data)
    SELECT id, 0, %(kind)s, %(now)s, %(data)s FROM created
), woken AS (SELECT {NOTIFY} FROM created)
SELECT created.*, (SELECT count(*) FROM woken) FROM created
"""
# The oldest claimable run, taken in one statement; rows another claimer holds are skipped, never
# waited for, so concurrent workers each get a different run. A run whose attempts may be used up is
# returned unclaimed: whether it is dead-lettered depends on its events (`_claim_exhausted`).
# Fair across tenants: the claimable run of the tenant with the fewest runs being worked on goes
# first (then the oldest), so one tenant's burst does not hold every worker while others wait.
_CLAIM = """
WITH busy AS (
    SELECT tenant, count(*) AS n FROM runs
    WHERE status = 'running' AND lease_expires_at_epoch_ms >= %(now)s GROUP BY tenant
), target AS (
    SELECT runs.id, runs.attempts FROM runs LEFT JOIN busy ON busy.tenant IS NOT DISTINCT FROM runs.tenant
    WHERE {where} ORDER BY coalesce(busy.n, 0), runs.created_at_epoch_ms, runs.id COLLATE "C" LIMIT 1
    FOR UPDATE OF runs SKIP LOCKED
), claimed AS (
    UPDATE runs SET status = 'running', lease_owner = %(owner)s, lease_expires_at_epoch_ms = %(expires)s,
        attempts = runs.attempts + 1, updated_at_epoch_ms = %(now)s
    FROM target
    WHERE runs.id = target.id AND (%(max_attempts)s::integer IS NULL OR target.attempts < %(max_attempts)s)
    RETURNING {returning}
)
SELECT claimed.*, (SELECT count(*) FROM run_events e WHERE e.run_id = target.id), target.id
FROM target LEFT JOIN claimed ON claimed.id = target.id
"""
_RETURNING = ", ".join(f"runs.{column.strip()}" for column in RUN_COLUMNS.split(","))
CLAIM_NEXT = _CLAIM.format(where=CLAIMABLE, returning=_RETURNING)
CLAIM_ONE = _CLAIM.format(where=f"runs.id = %(run_id)s AND {CLAIMABLE}", returning=_RETURNING)
# The fence: one UPDATE that touches the run only while `owner` holds its lease. Every other write of
# the statement reads from it, so a worker that lost its lease writes nothing, in one round trip.
_FENCE = (
    "UPDATE runs SET updated_at_epoch_ms = %(now)s{usage} WHERE id = %(run_id)s AND lease_owner = %(owner)s"
)
_USAGE = (
    ", input_tokens = input_tokens + %(input_tokens)s, output_tokens = output_tokens + %(output_tokens)s, "
    "cost_usd = CASE WHEN %(cost)s::double precision IS NULL THEN cost_usd "
    "ELSE coalesce(cost_usd, 0) + %(cost)s END"
)
_EVENTS = """
appended AS (
    INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data)
    SELECT fence.id, e.seq, e.kind, %(now)s, e.data
    FROM fence, unnest(%(seqs)s::integer[], %(kinds)s::text[], %(datas)s::text[]) AS e(seq, kind, data)
)"""
_OPERATIONS = f"""
logged AS (
    INSERT INTO operations ({OPERATION_COLUMNS})
    SELECT o.key, o.run_id, o.tool, o.status, o.arguments, o.result, 1, %(now)s, %(now)s
    FROM fence, unnest(%(op_keys)s::text[], %(op_runs)s::text[], %(op_tools)s::text[],
        %(op_statuses)s::text[], %(op_arguments)s::text[], %(op_results)s::text[])
        AS o(key, run_id, tool, status, arguments, result)
    ON CONFLICT (idempotency_key) DO UPDATE SET status = excluded.status,
        result = coalesce(excluded.result, operations.result),
        attempts = operations.attempts + CASE WHEN excluded.status = 'intent' THEN 1 ELSE 0 END,
        updated_at_epoch_ms = excluded.updated_at_epoch_ms
)"""


def _build_append(usage: bool, operations: bool) -> str:
    ctes = [f"fence AS ({_FENCE.format(usage=_USAGE if usage else '')} RETURNING id)", _EVENTS]
    if operations:
        ctes.append(_OPERATIONS)
    return f"WITH {', '.join(ctes)} SELECT count(*) FROM fence"


def _build_finish(escalation: bool, queued: bool) -> str:
    ctes = [
        "fence AS (UPDATE runs SET status = %(status)s, output = %(output)s, error = %(error)s, "
        "lease_owner = NULL, lease_expires_at_epoch_ms = NULL, updated_at_epoch_ms = %(now)s "
        "WHERE id = %(run_id)s AND lease_owner = %(owner)s RETURNING id)",
        "closing AS (INSERT INTO run_events (run_id, seq, kind, created_at_epoch_ms, data) "
        "SELECT id, %(seq)s, %(kind)s, %(now)s, %(data)s FROM fence)",
    ]
    if escalation:
        ctes.append(
            f"asked AS (INSERT INTO escalations ({ESCALATION_COLUMNS}) SELECT %(escalation_id)s, id, "
            "%(reason)s, %(message)s, %(options)s, %(context)s, 'open', NULL::text, NULL::text, %(now)s, "
            "NULL::bigint, %(expires)s::bigint FROM fence)"
        )
    if queued:  # given back for another attempt: wake a worker
        ctes.append(f"woken AS (SELECT {NOTIFY} FROM fence)")
    woken = ", (SELECT count(*) FROM woken)" if queued else ""  # a CTE runs only when read
    return f"WITH {', '.join(ctes)} SELECT (SELECT count(*) FROM fence){woken}"


APPEND = {(usage, ops): _build_append(usage, ops) for usage in (False, True) for ops in (False, True)}
FINISH = {(esc, queued): _build_finish(esc, queued) for esc in (False, True) for queued in (False, True)}


NO_EVENTS: dict[str, Any] = {"seqs": [], "kinds": [], "datas": []}


def rounds_of_unique_keys(operations: Sequence[OperationWrite]) -> list[list[OperationWrite]]:
    """The writes split, in order, into runs in which each idempotency key appears once."""
    rounds: list[list[OperationWrite]] = [[]]
    seen: set[str] = set()
    for op in operations:
        if op.idempotency_key in seen:
            rounds.append([])
            seen.clear()
        seen.add(op.idempotency_key)
        rounds[-1].append(op)
    return rounds


def operation_args(operations: Sequence[OperationWrite]) -> dict[str, Any]:
    if not operations:
        return {}
    return {
        "op_keys": [op.idempotency_key for op in operations],
        "op_runs": [op.run_id for op in operations],
        "op_tools": [op.tool for op in operations],
        "op_statuses": [op.status for op in operations],
        "op_arguments": [None if op.arguments is None else dumps(op.arguments) for op in operations],
        "op_results": [None if op.result is None else dumps(op.result) for op in operations],
    }


def tenant_clause(tenants: Collection[str | None], args: list[object]) -> str:
    """`tenant = ANY(...)`, with NULL matched as a tenant of its own; no tenants at all matches nothing."""
    named = [tenant for tenant in tenants if tenant is not None]
    parts = []
    if named:
        parts.append("tenant = ANY(%s)")
        args.append(named)
    if None in tenants:
        parts.append("tenant IS NULL")
    return f"({' OR '.join(parts)})" if parts else "FALSE"
