"""The runtime's HTTP API (`/api/...`): runs, events (SSE), the inbox, dead letters and audit, behind
scoped API keys, one tenant per key. Errors are RFC 9457 problem+json, never a stack trace."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib.metadata
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from tether.errors import (
    ConfigurationError,
    EscalationNotFoundError,
    IdempotencyConflictError,
    InvalidAnswerError,
    RunNotFoundError,
)
from tether.observe.metrics import RunMetrics
from tether.policy.limits import Budget, Scope
from tether.runtime import Runtime, load_target
from tether.runtime.canary import CanaryThresholds
from tether.store.base import CostGroup, Escalation
from tether.types import JsonDict, Run, RunStatus

RUNS_READ = "runs:read"
RUNS_WRITE = "runs:write"
INBOX_ANSWER = "inbox:answer"
METRICS_READ = "metrics:read"
ADMIN = "admin"
SCOPES = frozenset({RUNS_READ, RUNS_WRITE, INBOX_ANSWER, METRICS_READ, ADMIN})
PROBLEM_JSON = "application/problem+json"

_PROBLEM_BASE = "https://tether.dev/problems/"
_MAX_LIMIT = 500
_MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z; larger ints overflow SQLite's INTEGER

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A caller's key: only the SHA-256 of its secret is kept. `tenant` None with `admin` is an operator
    key (every tenant); any other key sees only runs of its own tenant (None: runs without a tenant)."""

    id: str
    secret_sha256: str  # hex
    tenant: str | None
    scopes: frozenset[str]

    def __post_init__(self) -> None:
        if unknown := sorted(set(self.scopes) - SCOPES):
            raise ConfigurationError(
                f"API key {self.id!r} has unknown scopes {unknown}; scopes are {', '.join(sorted(SCOPES))}"
            )
        if len(self.secret_sha256) != 64:
            raise ConfigurationError(f"API key {self.id!r}: secret_sha256 must be 64 hex digits")

    @classmethod
    def create(cls, tenant: str | None, scopes: Collection[str]) -> tuple[ApiKey, str]:
        """A new key and its secret; the secret is shown once and never stored."""
        secret = f"tth_{secrets.token_urlsafe(32)}"
        return cls.from_secret(secret, tenant, scopes), secret

    @classmethod
    def from_secret(
        cls, secret: str, tenant: str | None, scopes: Collection[str], *, key_id: str | None = None
    ) -> ApiKey:
        """The key for a secret handed out earlier (e.g. read from the environment)."""
        if len(secret) < 16:
            raise ConfigurationError("an API key secret needs at least 16 characters")
        digest = hashlib.sha256(secret.encode()).hexdigest()
        return cls(key_id or f"key_{digest[:12]}", digest, tenant, frozenset(scopes))

    def matches(self, secret: str) -> bool:
        presented = hashlib.sha256(secret.encode("latin-1", "replace")).hexdigest()
        return hmac.compare_digest(presented, self.secret_sha256)

    @property
    def is_operator(self) -> bool:
        return self.tenant is None and ADMIN in self.scopes

    def sees(self, tenant: str | None) -> bool:
        return self.is_operator or tenant == self.tenant

    @property
    def tenants(self) -> tuple[str | None, ...] | None:
        """The store filter for what this key sees: None (every tenant) for an operator key."""
        return None if self.is_operator else (self.tenant,)


class ProblemError(Exception):
    """An RFC 9457 problem answer: `{"type", "title", "status", "detail"}`."""

    def __init__(
        self, status: int, title: str, detail: str, *, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail = status, title, detail
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {
            "type": _PROBLEM_BASE + self.title.lower().replace(" ", "-"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        return JSONResponse(body, status_code=self.status, headers=self.headers, media_type=PROBLEM_JSON)


_PROBLEM_SCHEMA = {
    "type": "object",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
}
_PROBLEM_MEANINGS = {
    400: "The body cannot be read as JSON",
    401: "Missing or invalid API key",
    403: "The API key lacks the scope",
    404: "Nothing with that id is visible to the API key",
    409: "Conflicts with the current state",
    422: "Invalid request",
}


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route's problem+json answers, so clients (and schemathesis) know them."""
    content = {PROBLEM_JSON: {"schema": _PROBLEM_SCHEMA}}
    return {status: {"description": _PROBLEM_MEANINGS[status], "content": content} for status in statuses}


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <secret>`.")


def _authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    keys: Sequence[ApiKey] = request.app.state.tether_keys
    matched: ApiKey | None = None
    if credentials is not None and credentials.credentials:
        for key in keys:  # no early exit: the time taken does not say which key matched
            if key.matches(credentials.credentials) and matched is None:
                matched = key
    if matched is None:
        detail = "missing or invalid API key: send the header 'Authorization: Bearer <secret>'"
        raise ProblemError(401, "Unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})
    return matched


def _scoped(*scopes: str) -> Any:
    """A dependency giving the caller's key if it holds one of `scopes` (or admin)."""

    def dependency(key: Annotated[ApiKey, Depends(_authenticate)]) -> ApiKey:
        if not key.scopes & {*scopes, ADMIN}:
            needed = " or ".join(repr(s) for s in scopes)
            raise ProblemError(
                403, "Forbidden", f"API key {key.id} lacks the scope {needed} for this request"
            )
        return key

    return Depends(dependency)


def _operator(key: Annotated[ApiKey, Depends(_authenticate)]) -> ApiKey:
    """Only an operator key (admin of no tenant) acts on what all tenants share: canaries, breakers."""
    if not key.is_operator:
        raise ProblemError(
            403,
            "Forbidden",
            f"API key {key.id} is not an operator key (admin, no tenant): canaries and breakers are "
            "shared by every tenant",
        )
    return key


ReadKey = Annotated[ApiKey, _scoped(RUNS_READ)]
WriteKey = Annotated[ApiKey, _scoped(RUNS_WRITE)]
InboxReadKey = Annotated[ApiKey, _scoped(RUNS_READ, INBOX_ANSWER)]
AnswerKey = Annotated[ApiKey, _scoped(INBOX_ANSWER)]
AdminKey = Annotated[ApiKey, _scoped(ADMIN)]
OperatorKey = Annotated[ApiKey, Depends(_operator)]
MetricsKey = Annotated[ApiKey, _scoped(METRICS_READ)]
Limit = Annotated[int, Query(ge=1, le=_MAX_LIMIT)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartRun(_Body):
    agent: str = Field(min_length=3, max_length=300, description="module:attribute naming a tether.Agent")
    input: str = Field(min_length=1, max_length=100_000, description="the user's message")
    principal: str | None = Field(default=None, max_length=256)
    session_id: str | None = Field(default=None, max_length=256)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=256)


class RunsQuery(_Body):
    status: RunStatus | None = None
    agent: str | None = Field(default=None, max_length=300, description="an agent's name")
    session_id: str | None = Field(default=None, max_length=256)
    principal: str | None = Field(default=None, max_length=256)
    limit: int = Field(default=100, ge=1, le=_MAX_LIMIT)


class CancelRun(_Body):
    reason: str = Field(default="cancelled over the API", max_length=1000)


class AuditQuery(_Body):
    run_id: str | None = None
    principal: str | None = None
    session_id: str | None = None
    decision: str | None = Field(default=None, description="allow, deny, block, sanitise or escalate")
    since_epoch_ms: int | None = Field(default=None, ge=0, le=_MAX_EPOCH_MS)
    limit: int = Field(default=100, ge=1, le=_MAX_LIMIT)


class StartCanary(_Body):
    candidate: str = Field(min_length=1, max_length=64, description="the new version")
    baseline: str = Field(min_length=1, max_length=64, description="the version in production")
    share: float = Field(default=0.1, gt=0, le=1, description="fraction of principals on the candidate")
    min_runs: int = Field(default=20, ge=1, le=1_000_000, description="candidate runs before any verdict")
    max_cost_ratio: float = Field(default=1.5, gt=0, le=1000, description="mean cost allowed, x baseline")


class EndCanary(_Body):
    reason: str | None = Field(default=None, max_length=1000)


class Answer(_Body):
    choice: str = Field(min_length=1)
    text: str | None = None


def create_api(
    runtime: Runtime,
    keys: Sequence[ApiKey],
    *,
    stream_poll_s: float = 0.25,
    stream_max_s: float = 600.0,
    agents: Collection[str] = (),
    metrics: RunMetrics | None = None,
) -> FastAPI:
    """The API as an ASGI app over `runtime` (which the caller owns and closes). An event stream ends
    when its run ends or waits for a person, or after `stream_max_s` (the client then reconnects with
    `Last-Event-ID`). `agents`: the `module:attribute` targets a client may start (nothing else is ever
    imported on a client's say-so; an empty list allows none). `metrics`: served at `/metrics` to keys
    with `metrics:read` (Prometheus sends a bearer token)."""
    if not keys:
        raise ConfigurationError("create_api needs at least one ApiKey (ApiKey.create(tenant, scopes))")
    if len({key.secret_sha256 for key in keys}) != len(keys):
        raise ConfigurationError("two API keys share one secret; each key needs its own")
    if stream_poll_s <= 0 or stream_max_s <= 0:
        raise ConfigurationError("stream_poll_s and stream_max_s must be > 0")
    app = FastAPI(
        title="tether",
        version=importlib.metadata.version("tether"),
        description="Runs, their events, questions for people, dead letters and the audit log.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.tether_keys = tuple(keys)
    app.add_exception_handler(ProblemError, _problem_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)

    @app.get("/healthz", tags=["status"])
    async def health() -> JsonDict:
        """Liveness without a key: the process answers and its store can be read."""
        # One indexed row at most: a probe stays cheap however many runs the store holds.
        waiting = await runtime.store.list_runs(status=RunStatus.QUEUED, limit=1)
        return {"status": "ok", "work_queued": bool(waiting)}

    access = _Access(runtime, agents)
    _add_run_routes(app, access, stream_poll_s=stream_poll_s, stream_max_s=stream_max_s)
    _add_inbox_routes(app, access)
    _add_admin_routes(app, access)
    _add_status_routes(app, access, metrics)
    return app


def _add_status_routes(app: FastAPI, access: _Access, metrics: RunMetrics | None) -> None:
    runtime = access.runtime

    @app.get("/api/breakers", tags=["status"], responses=_problems(401, 403))
    async def list_breakers(key: OperatorKey) -> list[JsonDict]:
        """Every circuit breaker this process knows, with its state (closed, open, half_open)."""
        states = await runtime.gateway.breakers.states()
        return [{"target": name, "state": str(state)} for name, state in sorted(states.items())]

    @app.get("/api/agents", tags=["status"], responses=_problems(401, 403))
    async def list_agents(key: ReadKey) -> JsonDict:
        """The agents that may be started here, and every agent version that has run, with its totals."""
        versions = await runtime.store.cost_by("agent_version", tenants=key.tenants, limit=_MAX_LIMIT)
        return {"served": sorted(access.agents), "versions": [row.to_dict() for row in versions]}

    @app.get("/api/cost", tags=["status"], responses=_problems(401, 403, 422))
    async def cost(
        key: ReadKey,
        by: CostGroup = "agent_version",
        since_hours: Annotated[float, Query(gt=0, le=24 * 366)] = 24.0,
        limit: Limit = 50,
    ) -> list[JsonDict]:
        """Cost and tokens of the runs started in the last `since_hours`, per agent version, principal
        (customer) or tenant, costliest first."""
        since = int(time.time() * 1000 - since_hours * 3_600_000)
        rows = await runtime.store.cost_by(by, since_epoch_ms=since, tenants=key.tenants, limit=limit)
        return [row.to_dict() for row in rows]

    @app.get("/api/budgets", tags=["status"], responses=_problems(401, 403, 422))
    async def budgets(
        key: ReadKey,
        principal: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        session_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
    ) -> JsonDict:
        """The default budget's limits and what the caller's tenant (and a principal or session of it)
        has used of them in the current windows."""
        policy = runtime.budget_policy
        scope = Scope(run_id="-", session_id=session_id, principal=principal, tenant=key.tenant)
        usage = await Budget(policy, runtime.budget_backend).usage(scope)
        levels = {
            name: {
                counter: {"used": use.used, "reserved": use.reserved, "limit": use.limit}
                for counter, use in counters.items()
            }
            for name, counters in usage.items()
            if name != "run"
        }
        return {"tenant": key.tenant, "principal": principal, "session_id": session_id, "levels": levels}

    @app.post(
        "/api/canaries/{agent}",
        status_code=201,
        tags=["canaries"],
        responses=_problems(400, 401, 403, 409, 422),
    )
    async def start_canary(agent: str, body: StartCanary, key: OperatorKey) -> JsonDict:
        """Route a share of the agent's new runs (sticky per principal) to a candidate version."""
        try:
            canary = await runtime.canaries.start(
                agent,
                body.candidate,
                baseline_version=body.baseline,
                share=body.share,
                thresholds=CanaryThresholds(min_runs=body.min_runs, max_cost_ratio=body.max_cost_ratio),
            )
        except ConfigurationError as exc:
            raise ProblemError(409, "Conflict", str(exc)) from None
        return canary.to_dict()

    @app.post(
        "/api/canaries/{agent}/{action}", tags=["canaries"], responses=_problems(400, 401, 403, 409, 422)
    )
    async def end_canary(
        agent: str, action: Literal["promote", "rollback"], key: OperatorKey, body: EndCanary | None = None
    ) -> JsonDict:
        """Promote the running canary (every new run takes the candidate) or roll it back."""
        status = "promoted" if action == "promote" else "rolled_back"
        reason = (body.reason if body is not None else None) or f"{status} over the API"
        try:
            ended = await runtime.canaries.end(agent, status, f"{reason} (by {key.id})")
        except ConfigurationError as exc:
            raise ProblemError(409, "Conflict", str(exc)) from None
        return ended.to_dict()

    @app.get("/api/canaries/{agent}", tags=["canaries"], responses=_problems(401, 403, 404, 422))
    async def canary_status(agent: str, key: OperatorKey) -> JsonDict:
        """The agent's latest canary compared with its baseline (judging may roll it back)."""
        report = await runtime.canaries.check(agent)
        if report is None:
            latest = await runtime.store.list_canaries(agent_name=agent, limit=1)
            if not latest:
                raise ProblemError(404, "Not Found", f"agent {agent!r} has no canary")
            report = await runtime.canaries.report(latest[0])
        return report.to_dict()

    if metrics is not None:

        @app.get("/metrics", tags=["status"], include_in_schema=False)
        async def scrape(key: MetricsKey) -> Response:
            """Prometheus exposition of this process's runs, calls, breakers and queues."""
            return Response(await metrics.render(), media_type=metrics.content_type)


class _Access:
    """What a key may see of the runtime: another tenant's run is answered 404, as a missing one is."""

    def __init__(self, runtime: Runtime, agents: Collection[str]) -> None:
        self.runtime = runtime
        self.agents = frozenset(agents)

    async def run(self, key: ApiKey, run_id: str) -> Run:
        """The run, or 404 alike whether it does not exist or belongs to another tenant."""
        try:
            run = await self.runtime.store.get_run(run_id)
        except RunNotFoundError:
            run = None
        if run is None or not key.sees(run.tenant):
            raise ProblemError(404, "Not Found", f"no run {run_id!r} visible to API key {key.id}")
        return run

    async def question(self, key: ApiKey, escalation_id: str) -> Escalation:
        not_found = ProblemError(
            404, "Not Found", f"no question {escalation_id!r} visible to API key {key.id}"
        )
        try:
            escalation = await self.runtime.store.get_escalation(escalation_id)
            run = await self.runtime.store.get_run(escalation.run_id)
        except (EscalationNotFoundError, RunNotFoundError):
            raise not_found from None
        if not key.sees(run.tenant):
            raise not_found
        return escalation


def _add_run_routes(app: FastAPI, access: _Access, *, stream_poll_s: float, stream_max_s: float) -> None:
    runtime = access.runtime

    @app.post("/api/runs", status_code=202, tags=["runs"], responses=_problems(400, 401, 403, 409, 422))
    async def start_run(body: StartRun, key: WriteKey) -> JSONResponse:
        """Enqueue a run of the agent `module:attribute` for a worker; the run is the caller's tenant's."""
        if body.agent not in access.agents:
            allowed = ", ".join(sorted(access.agents)) or "none (start the server with the agents it may run)"
            raise ProblemError(
                422, "Unknown Agent", f"agent {body.agent!r} is not served here; allowed: {allowed}"
            )
        try:
            agent = load_target(body.agent)
        except ConfigurationError as exc:
            raise ProblemError(422, "Unknown Agent", str(exc)) from None
        # Keys are per tenant: another tenant's key must neither return nor reveal this run.
        idempotency_key = body.idempotency_key
        if idempotency_key is not None and key.tenant is not None:
            idempotency_key = f"{key.tenant}/{idempotency_key}"
        try:
            run = await runtime.start(
                agent,
                body.input,
                principal=body.principal,
                idempotency_key=idempotency_key,
                target=body.agent,
                session_id=body.session_id,
                tenant=key.tenant,
            )
        except IdempotencyConflictError as exc:
            raise ProblemError(409, "Conflict", str(exc)) from None
        except ConfigurationError as exc:
            raise ProblemError(422, "Unprocessable Agent", str(exc)) from None
        return JSONResponse(run.to_dict(), status_code=202, headers={"Location": f"/api/runs/{run.id}"})

    @app.get("/api/runs", tags=["runs"], responses=_problems(401, 403, 422))
    async def list_runs(key: ReadKey, query: Annotated[RunsQuery, Query()]) -> list[JsonDict]:
        """The caller's tenant's runs, newest first, filtered by status, agent, session and principal."""
        runs = await runtime.store.list_runs(
            status=query.status,
            agent_name=query.agent,
            session_id=query.session_id,
            principal=query.principal,
            tenants=key.tenants,
            limit=query.limit,
        )
        return [run.to_dict() for run in runs]

    @app.get("/api/runs/{run_id}", tags=["runs"], responses=_problems(401, 403, 404, 422))
    async def get_run(run_id: str, key: ReadKey) -> JsonDict:
        """The run: status, output or error, usage."""
        return (await access.run(key, run_id)).to_dict()

    @app.get("/api/runs/{run_id}/events", tags=["runs"], responses=_problems(401, 403, 404, 422))
    async def list_events(run_id: str, key: ReadKey) -> list[JsonDict]:
        """Every event of the run so far, in order."""
        await access.run(key, run_id)
        return [event.to_dict() for event in await runtime.events(run_id)]

    @app.get(
        "/api/runs/{run_id}/events/stream",
        tags=["runs"],
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}, **_problems(401, 403, 404, 422)},
    )
    async def stream_events(run_id: str, key: ReadKey, request: Request) -> StreamingResponse:
        """Server-sent events, one `data:` line per run event, until the run ends or waits for a person."""
        await access.run(key, run_id)
        last_seen = request.headers.get("last-event-id", "")
        after_seq = int(last_seen) if last_seen.isdigit() else -1
        events = _follow(runtime, run_id, after_seq, poll_s=stream_poll_s, max_s=stream_max_s)
        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    @app.post("/api/runs/{run_id}/cancel", tags=["runs"], responses=_problems(400, 401, 403, 404, 422))
    async def cancel_run(run_id: str, key: WriteKey, body: CancelRun | None = None) -> JsonDict:
        """Cancel a run that has not ended (its writes are compensated first); an ended run is unchanged."""
        await access.run(key, run_id)
        reason = body.reason if body is not None else CancelRun().reason
        return (await runtime.cancel(run_id, f"{reason} (by {key.id})")).to_dict()


def _add_inbox_routes(app: FastAPI, access: _Access) -> None:
    runtime = access.runtime

    @app.get("/api/inbox", tags=["inbox"], responses=_problems(401, 403, 422))
    async def list_inbox(
        key: InboxReadKey,
        status: Literal["open", "answered", "cancelled", "all"] = "open",
        limit: Limit = 100,
    ) -> list[JsonDict]:
        """Questions for people, oldest first."""
        wanted = None if status == "all" else status
        return [q.to_dict() for q in await runtime.inbox(status=wanted, tenants=key.tenants, limit=limit)]

    @app.get("/api/inbox/{escalation_id}", tags=["inbox"], responses=_problems(401, 403, 404, 422))
    async def get_question(escalation_id: str, key: InboxReadKey) -> JsonDict:
        """One question, with its answer once given."""
        return (await access.question(key, escalation_id)).to_dict()

    @app.post(
        "/api/inbox/{escalation_id}/answer",
        tags=["inbox"],
        responses=_problems(400, 401, 403, 404, 409, 422),
    )
    async def answer_question(escalation_id: str, body: Answer, key: AnswerKey) -> JsonDict:
        """Answer a question; its run is queued and resumes on a worker. Only the first answer applies."""
        question = await access.question(key, escalation_id)
        if question.status != "open":
            raise _not_open(question)
        try:
            answered, applied = await runtime.answer(escalation_id, body.choice, text=body.text, by=key.id)
        except InvalidAnswerError as exc:
            raise ProblemError(
                422, "Invalid Answer", f"{exc}; options: {', '.join(question.options)}"
            ) from None
        if not applied:  # another answer won the race
            raise _not_open(answered)
        return answered.to_dict()


def _add_admin_routes(app: FastAPI, access: _Access) -> None:
    runtime = access.runtime

    @app.get("/api/dead-letters", tags=["dead letters"], responses=_problems(401, 403, 422))
    async def list_dead_letters(key: AdminKey, limit: Limit = 100) -> list[JsonDict]:
        """Runs parked after too many failed attempts, newest first."""
        return [run.to_dict() for run in await runtime.dead_letters(tenants=key.tenants, limit=limit)]

    @app.get("/api/dead-letters/{run_id}", tags=["dead letters"], responses=_problems(401, 403, 404, 422))
    async def get_dead_letter(run_id: str, key: AdminKey) -> JsonDict:
        """A dead-lettered run laid out for triage: attempts, decisions, unfinished calls."""
        run = await access.run(key, run_id)
        if run.status != RunStatus.DEAD_LETTERED:
            raise ProblemError(404, "Not Found", f"run {run_id!r} is {run.status}, not dead-lettered")
        return (await runtime.dead_letter(run_id)).to_dict()

    @app.post(
        "/api/dead-letters/{run_id}/replay",
        status_code=202,
        tags=["dead letters"],
        responses=_problems(401, 403, 404, 409, 422),
    )
    async def replay_dead_letter(run_id: str, key: AdminKey) -> JsonDict:
        """Queue a dead-lettered run again with fresh attempts; it resumes from its last recorded step."""
        await access.run(key, run_id)
        run, applied = await runtime.replay(run_id, by=key.id)
        if not applied:
            detail = f"run {run_id!r} is {run.status}, not dead-lettered: there is nothing to replay"
            raise ProblemError(409, "Conflict", detail)
        return run.to_dict()

    @app.get("/api/audit", tags=["audit"], responses=_problems(401, 403, 404, 422))
    async def list_audit(key: AdminKey, query: Annotated[AuditQuery, Query()]) -> list[JsonDict]:
        """Permission and guardrail decisions, newest first."""
        if query.run_id is not None:
            await access.run(key, query.run_id)
        entries = await runtime.store.list_audit(**query.model_dump(), tenants=key.tenants)
        return [entry.to_dict() for entry in entries]


async def _follow(
    runtime: Runtime, run_id: str, after_seq: int, *, poll_s: float, max_s: float
) -> AsyncIterator[str]:
    deadline = time.monotonic() + max_s
    while True:
        # The status is read before the events: a run found settled has no event after those read next.
        settled = (await runtime.store.get_run(run_id)).status
        for event in await runtime.store.load_events(run_id, after_seq=after_seq):
            after_seq = event.seq
            yield f"id: {event.seq}\nevent: {event.kind}\ndata: {json.dumps(event.to_dict())}\n\n"
        if settled.is_terminal or settled == RunStatus.WAITING_HUMAN or time.monotonic() >= deadline:
            return
        await asyncio.sleep(poll_s)


def _not_open(question: Escalation) -> ProblemError:
    if question.status == "cancelled":
        detail = f"question {question.id} was withdrawn: its run was cancelled"
    else:
        answer = question.answer or {}
        detail = (
            f"question {question.id} was already answered {answer.get('choice')!r} by "
            f"{question.answered_by}; only the first answer applies"
        )
    return ProblemError(409, "Conflict", detail)


async def _problem_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return exc.response()


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return ProblemError(422, "Invalid Request", f"{where or 'request'}: {first.get('msg')}{more}").response()


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = f"{request.method} {request.url.path}: {exc.detail}"
    title = str(exc.detail) if isinstance(exc.detail, str) and len(exc.detail) < 60 else "Error"
    if exc.status_code == 404:
        detail += "; the routes are listed at GET /openapi.json"
    elif exc.status_code == 400:  # FastAPI's only 400 here: a JSON body it cannot decode
        title = "Bad Request"
        detail = (
            f"{request.method} {request.url.path}: the body is not valid UTF-8; send JSON encoded as UTF-8"
        )
    return ProblemError(exc.status_code, title, detail, headers=exc.headers).response()


async def _unexpected_error_handler(request: Request, exc: Exception) -> Response:
    _log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    detail = "the API failed unexpectedly; its log has the details"
    return ProblemError(500, "Internal Server Error", detail).response()


def parse_api_keys(spec: str) -> list[ApiKey]:
    """Keys from `tenant:scope1+scope2:secret` triples, comma-separated (as in `TETHER_API_KEYS`); an
    empty tenant is no tenant (an operator key, given `admin`). Scopes hold colons themselves, so the
    tenant ends at the first colon and the secret starts after the last: secrets hold neither ':' nor ','."""
    keys = []
    for number, triple in enumerate((part.strip() for part in spec.split(",") if part.strip()), 1):
        tenant, _, rest = triple.partition(":")
        scopes, _, secret = rest.rpartition(":")
        if not scopes or not secret:
            raise ConfigurationError(
                f"API key {number} must look like tenant:scope1+scope2:secret (tenant may be empty)"
            )
        keys.append(ApiKey.from_secret(secret, tenant or None, scopes.split("+"), key_id=f"key_{number}"))
    return keys
