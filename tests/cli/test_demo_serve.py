"""`tether demo --serve`: the demo runs, then its console stays up on loopback with the pending approvals."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx


def test_demo_serve_leaves_the_console_up_with_its_approvals(tmp_path: Path) -> None:
    """The printed operator key signs in; an approval waiting in the demo's inbox resumes once answered;
    SIGTERM stops the server and the demo exits 0."""
    command = [sys.executable, "-m", "tether", "demo", "--runs", "12", "--serve", "--port", "0"]
    command += ["--db", f"sqlite:///{tmp_path / 'demo.db'}"]
    process = subprocess.Popen(command, cwd=tmp_path, env=dict(os.environ), stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    try:
        seen = []
        found = None
        deadline = time.monotonic() + 60
        while found is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            assert line, "the demo ended before serving: " + "".join(seen)
            seen.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/console .*operator key: (\S+)", line)
        assert found is not None, "".join(seen)
        base, secret = found.groups()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {secret}"}, timeout=10) as client:
            approvals = [q for q in client.get("/api/inbox").json() if q["reason"] == "approval"]
            assert approvals, "the demo left no refund waiting for approval"
            question = approvals[0]
            answered = client.post(f"/api/inbox/{question['id']}/answer", json={"choice": "approve"})
            assert answered.status_code == 200, answered.text
            run = {}
            while time.monotonic() < deadline:
                run = client.get(f"/api/runs/{question['run_id']}").json()
                if run["status"] not in ("queued", "running"):
                    break
                time.sleep(0.05)
            assert run["status"] == "succeeded", run
            login = httpx.get(f"{base}/console/login", timeout=10)
            assert login.status_code == 200
            assert "API key" in login.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
