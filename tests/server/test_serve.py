"""`tether serve` as a real process: it serves the API, its workers run what is started, SIGTERM stops it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from tether import Runtime
from tether.testing.fakellm import FakeLLMServer
from tether.types import RunStatus

HERE = Path(__file__).parent
SECRET = "serve-test-secret-0123456789"


def serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    """`tether serve` in a subprocess on a free port, and its base URL once it listens."""
    environment = {
        **os.environ,
        "TETHER_API_KEYS": f"acme:runs:read+runs:write:{SECRET}",
        "TETHER_API_AGENTS": "api_agents:echo,api_agents:slow",
        "PYTHONPATH": str(HERE),
        **(env or {}),
    }
    command = [
        sys.executable,
        "-m",
        "tether",
        "serve",
        "--port",
        "0",
        "--db",
        f"sqlite:///{tmp_path / 's.db'}",
    ]
    process = subprocess.Popen(
        [*command, *args], cwd=HERE, env=environment, stderr=subprocess.PIPE, text=True
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    found = re.search(r"http://127\.0\.0\.1:(\d+)/api", line)
    if not found:
        process.kill()
        pytest.fail(f"tether serve did not start: {line}{process.stderr.read()}")
    return process, f"http://127.0.0.1:{found.group(1)}"


def stopped(process: subprocess.Popen[str], timeout_s: float = 20) -> tuple[int, str]:
    """SIGTERM, then the exit code and what it printed on the way out."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    rest = process.stderr.read()
    process.stderr.close()
    return code, rest


def test_serve_runs_started_work_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    """A run started over HTTP is executed by the in-process worker; SIGTERM exits 0 with the port freed."""
    env = {
        **os.environ,
        "TETHER_API_KEYS": f"acme:runs:read+runs:write:{SECRET}",
        "TETHER_API_AGENTS": "api_agents:echo",
        "PYTHONPATH": str(HERE),
    }
    command = [
        sys.executable,
        "-m",
        "tether",
        "serve",
        "--port",
        "0",
        "--db",
        f"sqlite:///{tmp_path / 's.db'}",
    ]
    process = subprocess.Popen(command, cwd=HERE, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        line = process.stderr.readline()
        found = re.search(r"http://127\.0\.0\.1:(\d+)/api", line)
        assert found, line
        base = f"http://127.0.0.1:{found.group(1)}"
        headers = {"Authorization": f"Bearer {SECRET}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            started = client.post("/api/runs", json={"agent": "api_agents:echo", "input": "hello"})
            assert started.status_code == 202, started.text
            run_id = started.json()["run_id"]
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                run = client.get(f"/api/runs/{run_id}").json()
                if run["status"] == "succeeded":
                    break
                time.sleep(0.05)
            assert run["status"] == "succeeded"
            assert run["output"] == "echo: hello"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        rest = process.stderr.read()
        assert "tether API stopped" in rest
        with httpx.Client(timeout=2) as client:
            try:
                client.get(f"{base}/openapi.json")
                refused = False
            except httpx.ConnectError:
                refused = True
        assert refused
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


def test_shutdown_hands_back_a_run_that_does_not_finish_in_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM with --drain-s 0.3: a run stuck in a tool is interrupted, its lease released, and it is
    queued again; any worker later resumes it and it succeeds."""
    marker = tmp_path / "slow"
    marker.touch()
    process, base = serve(tmp_path, "--drain-s", "0.3", env={"TETHER_TEST_SLOW_FILE": str(marker)})
    headers = {"Authorization": f"Bearer {SECRET}"}
    with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
        run_id = client.post("/api/runs", json={"agent": "api_agents:slow", "input": "where?"}).json()[
            "run_id"
        ]
        deadline = time.monotonic() + 20
        kinds: list[str] = []
        while "model.response" not in kinds and time.monotonic() < deadline:
            kinds = [event["kind"] for event in client.get(f"/api/runs/{run_id}/events").json()]
            time.sleep(0.05)
        time.sleep(0.3)  # the worker is inside the slow tool now
        kinds = [event["kind"] for event in client.get(f"/api/runs/{run_id}/events").json()]
        assert kinds[-1] == "model.response"
    began = time.monotonic()
    code, rest = stopped(process)
    assert code == 0, rest
    assert time.monotonic() - began < 15
    assert "handed back" in rest

    async def resume() -> tuple[RunStatus, RunStatus, str | None]:
        async with Runtime(f"sqlite:///{tmp_path / 's.db'}") as runtime:
            before = await runtime.store.get_run(run_id)
            assert before.lease_owner is None
            after = await runtime.execute(run_id)
            return before.status, after.status, after.output

    marker.unlink()
    monkeypatch.syspath_prepend(str(HERE))
    assert asyncio.run(resume()) == (RunStatus.QUEUED, RunStatus.SUCCEEDED, "it shipped")


def test_serve_answers_the_official_openai_client_on_v1(tmp_path: Path) -> None:
    """`tether serve` also serves the gateway's routes at /v1 to keys that may start runs."""
    upstream = FakeLLMServer([{"content": "hello from upstream"}])
    (tmp_path / "tether.toml").write_text('[tether.routes]\nsupport = ["openai:house"]\n')
    with upstream.run_in_thread():
        process, base = serve(
            tmp_path,
            "--config",
            str(tmp_path / "tether.toml"),
            env={"OPENAI_BASE_URL": upstream.url, "OPENAI_API_KEY": "upstream-key"},
        )
        try:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=SECRET, max_retries=0)
            completion = client.chat.completions.create(
                model="support", messages=[{"role": "user", "content": "hi"}]
            )
            assert completion.choices[0].message.content == "hello from upstream"
            assert [model.id for model in client.models.list()] == ["support"]
            with pytest.raises(openai.AuthenticationError):
                openai.OpenAI(
                    base_url=f"{base}/v1", api_key="wrong-key-wrong-key", max_retries=0
                ).models.list()
        finally:
            code, rest = stopped(process)
        assert code == 0, rest
