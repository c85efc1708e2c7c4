"""The runtime's HTTP API over real loopback HTTP: keys and scopes, runs, SSE, the inbox, dead letters,
audit, tenant isolation and problem+json errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import api_agents
import httpx
import pytest
import uvicorn

from tether import Runtime
from tether.errors import ConfigurationError
from tether.observe.metrics import RunMetrics
from tether.server.api import (
    ADMIN,
    INBOX_ANSWER,
    METRICS_READ,
    RUNS_READ,
    RUNS_WRITE,
    ApiKey,
    create_api,
    parse_api_keys,
)
from tether.store.base import AuditEntry
from tether.types import JsonDict, RunStatus

ECHO = "api_agents:echo"
DESK = "api_agents:desk"
TENANT_SCOPES = frozenset({RUNS_READ, RUNS_WRITE, INBOX_ANSWER})


@dataclass
class Api:
    """A served API: its runtime, base URL and one secret per role."""

    runtime: Runtime
    url: str
    secrets: dict[str, str]

    def client(self, role: str | None) -> httpx.AsyncClient:
        headers = {} if role is None else {"Authorization": f"Bearer {self.secrets[role]}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, trust_env=False, timeout=10)

    async def call(
        self, role: str | None, method: str, path: str, body: JsonDict | None = None
    ) -> httpx.Response:
        async with self.client(role) as client:
            return await client.request(method, path, json=body)

    async def start(self, role: str, agent: str = ECHO, **fields: str) -> JsonDict:
        response = await self.call(role, "POST", "/api/runs", {"agent": agent, "input": "hello", **fields})
        assert response.status_code == 202, response.text
        run: JsonDict = response.json()
        return run


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    """The API on 127.0.0.1:0 over a runtime on a SQLite file, with keys for two tenants and an operator."""
    roles = {
        "acme": ("acme", TENANT_SCOPES),
        "acme-reader": ("acme", frozenset({RUNS_READ})),
        "acme-admin": ("acme", frozenset({ADMIN})),
        "globex": ("globex", TENANT_SCOPES),
        "globex-admin": ("globex", frozenset({ADMIN})),
        "operator": (None, frozenset({ADMIN})),
        "prometheus": (None, frozenset({METRICS_READ})),
    }
    keys, secrets = [], {}
    for role, (tenant, scopes) in roles.items():
        key, secret = ApiKey.create(tenant, scopes)
        keys.append(key)
        secrets[role] = secret
    api_agents.REFUNDS.clear()
    async with Runtime(f"sqlite:///{tmp_path / 'api.db'}", max_attempts=1) as runtime:
        served = (ECHO, DESK, "tests_nowhere.missing:agent", "api_agents:not_an_agent", "no-colon")
        metrics = RunMetrics(store=runtime.store, breakers=runtime.gateway.breakers)
        runtime.observers.append(metrics)
        app = create_api(runtime, keys, stream_poll_s=0.02, stream_max_s=10, agents=served, metrics=metrics)
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), "the server died on startup"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield Api(runtime, f"http://127.0.0.1:{port}", secrets)
        finally:
            server.should_exit = True
            await task


def assert_problem(response: httpx.Response, status: int) -> JsonDict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: JsonDict = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert problem["status"] == status
    assert problem["detail"]
    return problem


async def sse_events(api: Api, role: str, run_id: str) -> list[JsonDict]:
    async with (
        api.client(role) as client,
        client.stream("GET", f"/api/runs/{run_id}/events/stream") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in response.aiter_lines()]
    return [json.loads(line.removeprefix("data: ")) for line in lines if line.startswith("data: ")]


async def test_missing_or_invalid_key_is_401(api: Api) -> None:
    """No key, a wrong key or another scheme gets 401 problem+json asking for a bearer key."""
    for headers in ({}, {"Authorization": "Bearer tth_wrong-secret"}, {"Authorization": "Basic eDp5"}):
        async with httpx.AsyncClient(base_url=api.url, headers=headers, trust_env=False) as client:
            response = await client.get("/api/inbox")
        problem = assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"
        assert "Authorization: Bearer" in problem["detail"]


async def test_missing_scope_is_403(api: Api) -> None:
    """A key without the route's scope gets 403 naming the scope."""
    problem = assert_problem(
        await api.call("acme-reader", "POST", "/api/runs", {"agent": ECHO, "input": "x"}), 403
    )
    assert "runs:write" in problem["detail"]
    for path in ("/api/audit", "/api/dead-letters"):
        assert "admin" in assert_problem(await api.call("acme", "GET", path), 403)["detail"]
    run = await api.start("acme", DESK)
    await api.runtime.execute(run["run_id"])
    [question] = (await api.call("acme-reader", "GET", "/api/inbox")).json()
    answer = await api.call(
        "acme-reader", "POST", f"/api/inbox/{question['id']}/answer", {"choice": "approve"}
    )
    assert "inbox:answer" in assert_problem(answer, 403)["detail"]


async def test_start_execute_then_read_run_and_events(api: Api) -> None:
    """A started run is queued for the key's tenant; once executed, the run and its events read back."""
    run = await api.start("acme", principal="ana")
    assert (run["status"], run["tenant"], run["principal"]) == ("queued", "acme", "ana")
    await api.runtime.execute(run["run_id"])
    done = (await api.call("acme-reader", "GET", f"/api/runs/{run['run_id']}")).json()
    assert (done["status"], done["output"]) == ("succeeded", "echo: hello")
    events = (await api.call("acme-reader", "GET", f"/api/runs/{run['run_id']}/events")).json()
    assert events[0]["kind"] == "run.started"
    assert events[-1]["kind"] == "run.completed"
    assert [event["seq"] for event in events] == list(range(len(events)))


async def test_bad_start_requests_are_422(api: Api) -> None:
    """An agent that cannot be imported, an attribute that is no Agent and a missing field are 422s."""
    for agent in ("tests_nowhere.missing:agent", "api_agents:not_an_agent", "no-colon"):
        response = await api.call("acme", "POST", "/api/runs", {"agent": agent, "input": "x"})
        assert agent.split(":")[0] in assert_problem(response, 422)["detail"]
    problem = assert_problem(await api.call("acme", "POST", "/api/runs", {"agent": ECHO}), 422)
    assert "input" in problem["detail"]


async def test_only_the_agents_the_server_serves_can_be_started(api: Api) -> None:
    """A target outside the server's list is refused before anything is imported, naming what is allowed."""
    response = await api.call("acme", "POST", "/api/runs", {"agent": "os:system", "input": "x"})
    detail = assert_problem(response, 422)["detail"]
    assert "'os:system' is not served here" in detail
    assert ECHO in detail


async def test_idempotency_keys_are_per_tenant(api: Api) -> None:
    """The same idempotency key returns the tenant's first run, never another tenant's."""
    first = await api.start("acme", idempotency_key="order-7")
    again = await api.start("acme", idempotency_key="order-7")
    other = await api.start("globex", idempotency_key="order-7")
    assert first["run_id"] == again["run_id"]
    assert other["run_id"] != first["run_id"]
    assert other["tenant"] == "globex"


async def test_event_stream_follows_the_run_and_ends(api: Api) -> None:
    """The SSE stream sends events as they happen, one data line each, and ends with the run."""
    run = await api.start("acme")

    async def execute_soon() -> None:
        await asyncio.sleep(0.1)
        await api.runtime.execute(run["run_id"])

    executing = asyncio.create_task(execute_soon())
    events = await asyncio.wait_for(sse_events(api, "acme-reader", run["run_id"]), 10)
    await executing
    assert events[0]["kind"] == "run.started"
    assert events[-1]["kind"] == "run.completed"
    assert [event["seq"] for event in events] == list(range(len(events)))


async def test_answer_over_http_resumes_the_run_exactly_once(api: Api) -> None:
    """Approving over HTTP runs the refund once; a second answer is 409, a bad choice 422 with options."""
    run = await api.start("acme", DESK)
    assert (await api.runtime.execute(run["run_id"])).status == RunStatus.WAITING_HUMAN
    streamed = await asyncio.wait_for(sse_events(api, "acme", run["run_id"]), 10)
    assert streamed[-1]["kind"] == "escalation.opened"  # a waiting run's stream ends too
    [question] = (await api.call("acme", "GET", "/api/inbox")).json()
    path = f"/api/inbox/{question['id']}/answer"
    bad = assert_problem(await api.call("acme", "POST", path, {"choice": "maybe"}), 422)
    assert "approve" in bad["detail"]
    assert "deny" in bad["detail"]
    answered = await api.call("acme", "POST", path, {"choice": "approve"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["status"] == "answered"
    second = assert_problem(await api.call("acme", "POST", path, {"choice": "deny"}), 409)
    assert "already answered 'approve'" in second["detail"]
    assert (await api.runtime.execute(run["run_id"])).status == RunStatus.SUCCEEDED
    assert api_agents.REFUNDS == [150]
    assert (await api.call("acme", "GET", "/api/inbox")).json() == []


async def dead_letter(api: Api, role: str) -> str:
    """A run of `role`'s tenant whose only attempt's worker died: the next claim parks it."""
    run_id: str = (await api.start(role))["run_id"]
    assert await api.runtime.store.claim_run("dead-worker", 0.001, run_id=run_id) is not None
    await asyncio.sleep(0.05)
    assert (await api.runtime.execute(run_id)).status == RunStatus.DEAD_LETTERED
    return run_id


async def test_dead_letters_list_show_and_replay(api: Api) -> None:
    """An admin key lists, shows and replays its tenant's dead letters; a second replay is 409."""
    run_id = await dead_letter(api, "acme")
    listed = (await api.call("acme-admin", "GET", "/api/dead-letters")).json()
    assert [run["run_id"] for run in listed] == [run_id]
    assert (await api.call("globex-admin", "GET", "/api/dead-letters")).json() == []
    shown = (await api.call("acme-admin", "GET", f"/api/dead-letters/{run_id}")).json()
    assert shown["run"]["status"] == "dead_lettered"
    replayed = await api.call("acme-admin", "POST", f"/api/dead-letters/{run_id}/replay")
    assert replayed.status_code == 202, replayed.text
    assert replayed.json()["status"] == "queued"
    assert_problem(await api.call("acme-admin", "POST", f"/api/dead-letters/{run_id}/replay"), 409)
    assert (await api.runtime.execute(run_id)).status == RunStatus.SUCCEEDED


async def test_cancel_ends_a_queued_run(api: Api) -> None:
    """Cancelling a queued run ends it cancelled, the reason naming the key."""
    run = await api.start("acme")
    cancelled = (
        await api.call("acme", "POST", f"/api/runs/{run['run_id']}/cancel", {"reason": "dup"})
    ).json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"].startswith("dup (by key_")


async def test_audit_shows_only_the_keys_tenant(api: Api) -> None:
    """A tenant's admin key reads its tenant's audit entries; the operator key reads all."""
    acme, globex = await api.start("acme"), await api.start("globex")
    await api.runtime.store.append_audit(
        [
            AuditEntry("permission", "allow", acme["run_id"], "api-echo", "granted", tenant="acme"),
            AuditEntry("permission", "deny", globex["run_id"], "api-echo", "no grant", tenant="globex"),
        ]
    )
    mine = (await api.call("acme-admin", "GET", "/api/audit")).json()
    assert [entry["run_id"] for entry in mine] == [acme["run_id"]]
    everything = (await api.call("operator", "GET", "/api/audit", None)).json()
    assert {entry["tenant"] for entry in everything} == {"acme", "globex"}
    denied = (await api.call("operator", "GET", "/api/audit?decision=deny")).json()
    assert [entry["run_id"] for entry in denied] == [globex["run_id"]]


async def test_other_tenants_ids_are_404_on_every_route(api: Api) -> None:
    """Every route taking an id answers 404 for another tenant's run or question, as for a missing one."""
    globex_run = await api.start("globex", DESK)
    await api.runtime.execute(globex_run["run_id"])
    [question] = (await api.call("operator", "GET", "/api/inbox")).json()
    dead_id = await dead_letter(api, "globex")
    run_id, question_id = globex_run["run_id"], question["id"]
    requests = [
        ("acme", "GET", f"/api/runs/{run_id}", None),
        ("acme", "GET", f"/api/runs/{run_id}/events", None),
        ("acme", "GET", f"/api/runs/{run_id}/events/stream", None),
        ("acme", "POST", f"/api/runs/{run_id}/cancel", None),
        ("acme", "GET", f"/api/inbox/{question_id}", None),
        ("acme", "POST", f"/api/inbox/{question_id}/answer", {"choice": "approve"}),
        ("acme-admin", "GET", f"/api/dead-letters/{dead_id}", None),
        ("acme-admin", "POST", f"/api/dead-letters/{dead_id}/replay", None),
        ("acme-admin", "GET", f"/api/audit?run_id={run_id}", None),
    ]
    for role, method, path, body in requests:
        problem = assert_problem(await api.call(role, method, path, body), 404)
        missing_path = path
        for real in (run_id, question_id, dead_id):
            missing_path = missing_path.replace(real, "missing_id")
        missing = assert_problem(await api.call(role, method, missing_path, body), 404)
        assert problem["title"] == missing["title"] == "Not Found", path
    assert (await api.call("acme", "GET", "/api/inbox")).json() == []
    assert (await api.call("acme-admin", "GET", "/api/dead-letters")).json() == []
    still = (await api.call("globex", "GET", f"/api/runs/{run_id}")).json()
    assert still["status"] == "waiting_human"
    assert (await api.call("globex", "GET", f"/api/inbox/{question_id}")).json()["status"] == "open"
    assert (await api.call("operator", "GET", f"/api/dead-letters/{dead_id}")).status_code == 200


async def test_unknown_route_and_method_are_problems(api: Api) -> None:
    """Unknown paths and methods answer problem+json too, pointing at the OpenAPI document."""
    assert "/openapi.json" in assert_problem(await api.call("acme", "GET", "/api/nothing"), 404)["detail"]
    assert_problem(await api.call("acme", "DELETE", "/api/runs/run_1"), 405)


async def test_openapi_lists_the_routes(api: Api) -> None:
    """/openapi.json names the API, its version, every route and the bearer scheme."""
    spec = (await api.call(None, "GET", "/openapi.json")).json()
    assert spec["info"]["title"] == "tether"
    assert spec["info"]["version"]
    assert set(spec["paths"]) >= {
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/events",
        "/api/runs/{run_id}/events/stream",
        "/api/runs/{run_id}/cancel",
        "/api/inbox",
        "/api/inbox/{escalation_id}",
        "/api/inbox/{escalation_id}/answer",
        "/api/dead-letters",
        "/api/dead-letters/{run_id}",
        "/api/dead-letters/{run_id}/replay",
        "/api/audit",
    }
    assert "HTTPBearer" in spec["components"]["securitySchemes"]


def test_keys_keep_only_a_digest_and_refuse_unknown_scopes() -> None:
    """ApiKey.create returns the secret once, keeps its SHA-256 only, and refuses unknown scopes."""
    key, secret = ApiKey.create("acme", {RUNS_READ})
    assert secret not in repr(key)
    assert key.matches(secret)
    assert not key.matches(secret + "x")
    with pytest.raises(ConfigurationError, match="unknown scopes"):
        ApiKey.create("acme", {"runs:delete"})


def test_keys_parse_from_tenant_scopes_secret_triples() -> None:
    """TETHER_API_KEYS triples give keys; an empty tenant is an operator key; a bad triple is refused."""
    acme, operator = parse_api_keys(
        "acme:runs:read+runs:write:s3cret-s3cret-s3cret, :admin:0perator-0perator"
    )
    assert (acme.tenant, acme.scopes) == ("acme", frozenset({RUNS_READ, RUNS_WRITE}))
    assert acme.matches("s3cret-s3cret-s3cret")
    assert operator.is_operator
    with pytest.raises(ConfigurationError, match="tenant:scope1"):
        parse_api_keys("acme-without-scopes")


async def test_status_routes_and_metrics(api: Api) -> None:
    """Operators read breakers and canaries; Prometheus scrapes /metrics with its own scope, nobody else."""
    run = await api.start("acme")
    breakers = await api.call("operator", "GET", "/api/breakers")
    assert breakers.status_code == 200
    assert isinstance(breakers.json(), list)
    missing = assert_problem(await api.call("operator", "GET", "/api/canaries/echo"), 404)
    assert "has no canary" in missing["detail"]
    assert_problem(await api.call("acme", "GET", "/api/breakers"), 403)
    scraped = await api.call("prometheus", "GET", "/metrics")
    assert scraped.status_code == 200
    assert "tether_runs_started_total" in scraped.text
    assert run["run_id"] not in scraped.text  # no run ids in labels
    assert_problem(await api.call("acme", "GET", "/metrics"), 403)


async def test_oversized_input_is_refused(api: Api) -> None:
    """A message over 100,000 characters is a 422 naming the field, and no run is created."""
    response = await api.call("acme", "POST", "/api/runs", {"agent": ECHO, "input": "x" * 100_001})
    assert "input" in assert_problem(response, 422)["detail"]


async def test_run_listing_is_the_keys_tenants_and_filters(api: Api) -> None:
    """GET /api/runs lists only the key's tenant's runs, filtered by principal, status and agent."""
    mine = [await api.start("acme", principal=f"p{n}") for n in range(3)]
    theirs = await api.start("globex", principal="p0")
    listed = (await api.call("acme", "GET", "/api/runs?limit=2")).json()
    assert len(listed) == 2  # a full page, though globex's run is the newest
    assert {run["run_id"] for run in listed} <= {run["run_id"] for run in mine}
    by_principal = (await api.call("acme", "GET", "/api/runs?principal=p0")).json()
    assert [run["run_id"] for run in by_principal] == [mine[0]["run_id"]]
    assert (await api.call("acme", "GET", "/api/runs?status=succeeded")).json() == []
    assert len((await api.call("acme", "GET", "/api/runs?agent=api-echo")).json()) == 3
    everyone = (await api.call("operator", "GET", "/api/runs")).json()
    assert theirs["run_id"] in {run["run_id"] for run in everyone}
    problem = assert_problem(await api.call("acme", "GET", "/api/runs?status=lost"), 422)
    assert "status" in problem["detail"]


async def test_agents_cost_and_budgets_are_per_tenant(api: Api) -> None:
    """Agent versions, cost per principal and budget usage count only the caller's tenant's runs."""
    for principal in ("ada", "ada", "bob"):
        run = await api.start("acme", principal=principal)
        await api.runtime.execute(run["run_id"])
    other = await api.start("globex", principal="ada")
    await api.runtime.execute(other["run_id"])
    agents = (await api.call("acme", "GET", "/api/agents")).json()
    assert ECHO in agents["served"]
    assert [(v["agent"], v["version"], v["runs"], v["succeeded"]) for v in agents["versions"]] == [
        ("api-echo", "1", 3, 3)
    ]
    per_principal = (await api.call("acme", "GET", "/api/cost?by=principal")).json()
    assert sorted((row["principal"], row["runs"]) for row in per_principal) == [("ada", 2), ("bob", 1)]
    per_tenant = (await api.call("operator", "GET", "/api/cost?by=tenant")).json()
    assert sorted(row["tenant"] for row in per_tenant) == ["acme", "globex"]
    assert_problem(await api.call("acme", "GET", "/api/cost?by=input"), 422)
    assert_problem(await api.call("acme", "GET", "/api/cost?since_hours=0"), 422)
    budgets = (await api.call("acme", "GET", "/api/budgets?principal=ada")).json()
    assert budgets["tenant"] == "acme"
    assert set(budgets["levels"]) >= {"principal-day", "tenant-day"}
    assert budgets["levels"]["tenant-day"]["tokens"]["limit"] == 1_000_000


async def test_canary_control_over_http(api: Api) -> None:
    """Admins start, read and roll back a canary; a second start or a promote after the end is 409."""
    body = {"candidate": "2", "baseline": "1", "share": 0.5}
    assert_problem(await api.call("acme", "POST", "/api/canaries/api-echo", body), 403)
    started = await api.call("operator", "POST", "/api/canaries/api-echo", body)
    assert started.status_code == 201, started.text
    assert started.json()["status"] == "running"
    again = assert_problem(await api.call("operator", "POST", "/api/canaries/api-echo", body), 409)
    assert "already has canary" in again["detail"]
    report = (await api.call("operator", "GET", "/api/canaries/api-echo")).json()
    assert report["verdict"] == "waiting"
    ended = await api.call("operator", "POST", "/api/canaries/api-echo/rollback", {"reason": "not today"})
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] == "rolled_back"
    assert "not today" in ended.json()["reason"]
    late = assert_problem(await api.call("operator", "POST", "/api/canaries/api-echo/promote"), 409)
    assert "no running canary" in late["detail"]
    bad = {"candidate": "2", "baseline": "1", "share": 2}
    assert (
        "share" in assert_problem(await api.call("operator", "POST", "/api/canaries/x", bad), 422)["detail"]
    )


async def test_health_needs_no_key(api: Api) -> None:
    """/healthz answers without a key, reading the store: whether work is queued."""
    assert (await api.call(None, "GET", "/healthz")).json() == {"status": "ok", "work_queued": False}
    await api.start("acme")
    health = await api.call(None, "GET", "/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "work_queued": True}


async def test_audit_since_beyond_the_stores_range_is_422(api: Api) -> None:
    """A since_epoch_ms SQLite cannot hold (or a negative one) is a 422 naming the field, never a 500."""
    for since in (2**70, -(2**70), -1):
        response = await api.call("operator", "GET", f"/api/audit?since_epoch_ms={since}")
        assert "since_epoch_ms" in assert_problem(response, 422)["detail"]
    assert (await api.call("operator", "GET", "/api/audit?since_epoch_ms=0")).status_code == 200


async def test_a_body_that_is_not_utf8_is_400(api: Api) -> None:
    """A JSON body that is not UTF-8 is a 400 problem asking for UTF-8 JSON, not FastAPI's bare message."""
    async with api.client("acme") as client:
        response = await client.post(
            "/api/runs", content=b'{"agent": "\xff"}', headers={"Content-Type": "application/json"}
        )
    problem = assert_problem(response, 400)
    assert problem["title"] == "Bad Request"
    assert "send JSON encoded as UTF-8" in problem["detail"]


async def test_openapi_declares_every_error_as_problem_json(api: Api) -> None:
    """Each route's 4xx answers are declared as problem+json; keyed routes declare their 401 and 403."""
    spec = (await api.call(None, "GET", "/openapi.json")).json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status.startswith("4"):
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
            if "security" in operation:
                assert {"401", "403"} <= set(responses), (method, path)
    assert set(spec["paths"]["/api/runs"]["post"]["responses"]) == {"202", "400", "401", "403", "409", "422"}
    assert "HTTPValidationError" not in spec["components"].get("schemas", {})


async def test_a_tenants_admin_cannot_touch_what_tenants_share(api: Api) -> None:
    """Canaries and breakers are shared by every tenant: a tenant's admin key gets 403, nothing changes."""
    body = {"candidate": "2", "baseline": "1"}
    for method, path, payload in (
        ("POST", "/api/canaries/api-echo", body),
        ("GET", "/api/canaries/api-echo", None),
        ("GET", "/api/breakers", None),
    ):
        problem = assert_problem(await api.call("acme-admin", method, path, payload), 403)
        assert "operator key" in problem["detail"]
    assert await api.runtime.store.current_canary("api-echo") is None
