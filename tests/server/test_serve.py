"""`tether serve` as a real process: it serves the API, its workers run what is started, SIGTERM stops it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).parent
SECRET = "serve-test-secret-0123456789"


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
