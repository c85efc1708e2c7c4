"""A served console (API + console + workers on a SQLite file) with keys for two tenants and an operator."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import console_agents
import httpx
import pytest
import uvicorn

from tether import Runtime, Worker
from tether.server.api import ADMIN, INBOX_ANSWER, RUNS_READ, RUNS_WRITE, ApiKey
from tether.server.app import create_app
from tether.types import Run, RunStatus

ROLES = {
    "operator": (None, frozenset({ADMIN})),
    "acme": ("acme", frozenset({RUNS_READ, RUNS_WRITE, INBOX_ANSWER})),
    "acme-reader": ("acme", frozenset({RUNS_READ})),
    "acme-admin": ("acme", frozenset({ADMIN})),
    "globex": ("globex", frozenset({RUNS_READ, RUNS_WRITE, INBOX_ANSWER})),
}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
LOGIN_TOKEN = re.compile(r'name="token" value="([^"]+)"')


@dataclass
class Served:
    """The console's server: its runtime, base URL and one secret per role."""

    runtime: Runtime
    url: str
    secrets: dict[str, str]

    async def start(self, agent: str, principal: str, tenant: str | None) -> Run:
        target = getattr(console_agents, agent)
        return await self.runtime.start(
            target,
            "please refund order A-1",
            principal=principal,
            tenant=tenant,
            target=f"console_agents:{agent}",
        )

    async def settled(self, run_id: str, timeout_s: float = 10.0) -> Run:
        """The run once a worker has taken it as far as it goes (ended or waiting for a person)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            run = await self.runtime.store.get_run(run_id)
            if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
                return run
            assert asyncio.get_running_loop().time() < deadline, f"run {run_id} still {run.status}"
            await asyncio.sleep(0.02)

    async def dead_letter(self, principal: str, tenant: str | None) -> str:
        """A run whose only attempt's worker died: the next claim parks it as a dead letter."""
        run = await self.start("echo", principal, tenant)
        claimed = await self.runtime.store.claim_run("dead-worker", 0.001, run_id=run.id)
        assert claimed is not None
        await asyncio.sleep(0.05)
        assert (await self.settled(run.id)).status == RunStatus.DEAD_LETTERED
        return run.id

    def browser(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, trust_env=False, timeout=10, follow_redirects=False)

    async def signed_in(self, role: str) -> tuple[httpx.AsyncClient, str]:
        """A client signed in as `role`, and its session's CSRF token."""
        client = self.browser()
        page = await client.get("/console/login")
        token = LOGIN_TOKEN.search(page.text)
        assert token is not None
        answer = await client.post(
            "/console/login",
            data={"key": self.secrets[role], "token": token.group(1), "next": "/console/runs"},
        )
        assert answer.status_code == 303, answer.text
        runs = await client.get("/console/runs")
        csrf = CSRF.search(runs.text)
        assert csrf is not None
        return client, csrf.group(1)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    keys, secrets = [], {}
    for role, (tenant, scopes) in ROLES.items():
        key, secret = ApiKey.create(tenant, scopes)
        keys.append(key)
        secrets[role] = secret
    console_agents.REFUNDS.clear()
    async with Runtime(f"sqlite:///{tmp_path / 'console.db'}", max_attempts=1) as runtime:
        app = create_app(runtime, keys, agents=["console_agents:echo", "console_agents:desk"])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        stop = asyncio.Event()
        working = asyncio.create_task(Worker(runtime, poll_s=0.02, max_attempts=1).run(stop=stop))
        while not server.started:
            assert not serving.done(), "the server died on startup"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield Served(runtime, f"http://127.0.0.1:{port}", secrets)
        finally:
            stop.set()
            await working
            server.should_exit = True
            await serving
