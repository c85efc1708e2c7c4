"""The HTTP API against its own OpenAPI document, fuzzed by schemathesis over real loopback HTTP: no request
gets a 5xx, and every answer has a status, content type and body the document declares."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import api_agents
import pytest
import requests
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from tether import Runtime
from tether.observe.metrics import RunMetrics
from tether.server.api import ADMIN, RUNS_READ, ApiKey, create_api
from tether.types import RunStatus

ECHO = "api_agents:echo"
DESK = "api_agents:desk"
BODY_VALUES = {"agent": [ECHO, DESK], "choice": ["approve", "deny"]}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Derandomized so every run sends the same requests: a failure here is a regression, never bad luck.
# Health checks off: schemathesis' strategies are big and filter a lot, which is expected of them.
FUZZ = settings(
    max_examples=30,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@dataclass
class ServedApi:
    """The API served from a thread of its own: its URL, one secret per role, and ids that exist,
    by the name of the path parameter that takes them."""

    url: str = ""
    secrets: dict[str, str] = field(default_factory=dict)
    ids: dict[str, list[str]] = field(default_factory=dict)
    server: uvicorn.Server | None = None  # set once it listens; stopped by setting its should_exit


async def _seed(runtime: Runtime) -> dict[str, list[str]]:
    """A finished run, one waiting on a question and one dead-lettered, for path parameters to hit."""
    echo = await runtime.start(api_agents.echo, "hello", target=ECHO, tenant="acme")
    await runtime.execute(echo.id)
    desk = await runtime.start(api_agents.desk, "refund", target=DESK, tenant="acme")
    assert (await runtime.execute(desk.id)).status == RunStatus.WAITING_HUMAN
    [question] = await runtime.inbox(tenants=None)
    dead = await runtime.start(api_agents.echo, "lost", target=ECHO, tenant="acme")
    assert await runtime.store.claim_run("dead-worker", 0.001, run_id=dead.id) is not None
    await asyncio.sleep(0.05)  # the dead worker's lease runs out
    assert (await runtime.execute(dead.id)).status == RunStatus.DEAD_LETTERED
    return {"run_id": [echo.id, desk.id, dead.id], "escalation_id": [question.id], "agent": ["api-echo"]}


def _serve(db_path: Path, keys: list[ApiKey], served: ServedApi, ready: threading.Event) -> None:
    """Seed a runtime and serve the API over it until `served.server` is told to exit."""

    async def main() -> None:
        async with Runtime(f"sqlite:///{db_path}", max_attempts=1) as runtime:
            served.ids = await _seed(runtime)
            metrics = RunMetrics(store=runtime.store, breakers=runtime.gateway.breakers)
            app = create_api(
                runtime, keys, stream_poll_s=0.01, stream_max_s=1, agents=(ECHO, DESK), metrics=metrics
            )
            config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
            server = uvicorn.Server(config)
            task = asyncio.create_task(server.serve())
            while not server.started:
                assert not task.done(), "the server died on startup"
                await asyncio.sleep(0.01)
            served.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
            served.server = server
            ready.set()
            await task

    try:
        asyncio.run(main())
    finally:
        ready.set()  # also when seeding or startup failed: the fixture then fails at once


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedApi]:
    """The API on 127.0.0.1:0 in a thread of its own (schemathesis calls it synchronously), over a
    SQLite runtime, with an operator key and a key of tenant acme that may only read runs."""
    served, ready = ServedApi(), threading.Event()
    keys = []
    for role, tenant, scopes in (("operator", None, {ADMIN}), ("reader", "acme", {RUNS_READ})):
        key, served.secrets[role] = ApiKey.create(tenant, scopes)
        keys.append(key)
    db_path = tmp_path_factory.mktemp("contract") / "api.db"
    thread = threading.Thread(target=_serve, args=(db_path, keys, served, ready), daemon=True)
    thread.start()
    try:
        assert ready.wait(20), "the API did not start in 20 s"
        assert served.server is not None, "the API failed to start (its thread's error is reported)"
        yield served
    finally:
        if served.server is not None:
            served.server.should_exit = True
        thread.join(10)
    assert not thread.is_alive(), "the API did not stop"


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """A session that ignores proxy settings in the environment: every request stays on loopback."""
    with requests.Session() as session:
        session.trust_env = False
        yield session


def _schema(served: ServedApi, http: requests.Session) -> Any:
    """The API's own /openapi.json; path parameters sometimes take the ids of real runs and questions,
    bodies a served agent or a valid answer."""
    document = http.get(f"{served.url}/openapi.json", timeout=10).json()
    config = schemathesis.Config.from_dict({"base-url": served.url})
    schema = schemathesis.openapi.from_dict(document, config=config)

    @schema.hook
    def flatmap_path_parameters(context: Any, path_parameters: Any) -> Any:
        return _sometimes(path_parameters, served.ids)

    @schema.hook
    def flatmap_body(context: Any, body: Any) -> Any:
        return _sometimes(body, BODY_VALUES)

    return schema


def _sometimes(generated: Any, known: dict[str, list[str]]) -> Any:
    """`generated`, or it with one field set to a value the server knows (so requests get past 404s)."""
    if not isinstance(generated, dict):
        return st.just(generated)
    real = [{**generated, name: value} for name in generated for value in known.get(name, ())]
    return st.sampled_from([generated, *real])


def _fuzz(
    served: ServedApi,
    http: requests.Session,
    role: str,
    modes: list[GenerationMode],
    subtests: pytest.Subtests,
) -> None:
    """Every operation, in each mode, as one subtest; negative cases also drop or garble the key.

    Our own `@given` over `operation.as_strategy` rather than `schemathesis.pytest.from_fixture`, which
    fails on pytest 9.2 (it sets `request.node._nodeid`); this runs schemathesis' fuzzing phase only."""
    headers = {"Authorization": f"Bearer {served.secrets[role]}"}
    operations = [result.ok() for result in _schema(served, http).get_all_operations()]
    # Cancelling last: it ends the waiting and dead-lettered runs the answer and replay routes need.
    for operation in sorted(operations, key=lambda op: op.path.endswith("/cancel")):
        takes_input = any(
            key in operation.definition.raw for key in ("parameters", "requestBody", "security")
        )
        for mode in modes:
            if mode == GenerationMode.NEGATIVE and not takes_input:
                continue  # nothing to get wrong (GET /healthz)
            with subtests.test(f"{role}: {operation.label} ({mode.value})"):

                @FUZZ
                @given(case=operation.as_strategy(generation_mode=mode))
                def call(case: schemathesis.Case) -> None:
                    case.call_and_validate(session=http, headers=headers, checks=CHECKS, timeout=10)

                call()


def test_operator_requests_conform_to_the_spec(
    served: ServedApi, http: requests.Session, subtests: pytest.Subtests
) -> None:
    """Valid and invalid requests with the operator key get no 5xx and only declared answers."""
    _fuzz(served, http, "operator", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], subtests)


def test_tenant_reader_requests_conform_to_the_spec(
    served: ServedApi, http: requests.Session, subtests: pytest.Subtests
) -> None:
    """Valid requests with a tenant's read-only key get no 5xx and only declared answers (403s included)."""
    _fuzz(served, http, "reader", [GenerationMode.POSITIVE], subtests)
