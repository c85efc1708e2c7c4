"""The `tether` CLI: run, worker, runs list|show|events|cancel, demo; exit codes and --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether.cli import app

HERE = Path(__file__).parent
SCRIPT = [
    {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "A-7"}}]},
    {"content": "Order A-7 has shipped."},
]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(HERE)
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    db = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("TETHER_DB", db)
    return {"db": db, "model": f"scripted:{script}", "tmp": str(tmp_path)}


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_run_prints_output_and_exits_zero(env: dict[str, str]) -> None:
    """`tether run` executes the agent in-process, prints its answer and exits 0."""
    code, out = invoke("run", "cli_agents:support", "where is A-7?", "--model", env["model"])
    assert code == 0, out
    assert "Order A-7 has shipped." in out


def test_run_json_has_run_id_status_output_usage(env: dict[str, str]) -> None:
    """`--json` prints one object with run_id, status, output and usage."""
    code, out = invoke("run", "cli_agents:support", "where is A-7?", "--model", env["model"], "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["status"] == "succeeded"
    assert data["output"] == "Order A-7 has shipped."
    assert data["run_id"].startswith("run_")
    assert data["usage"]["input_tokens"] > 0


def test_run_that_does_not_succeed_exits_one(env: dict[str, str], tmp_path: Path) -> None:
    """A run that ends waiting for a person (script keeps calling tools past max steps) exits 1."""
    looping = tmp_path / "loop.json"
    looping.write_text(json.dumps([SCRIPT[0]] * 12))
    code, out = invoke("run", "cli_agents:support", "loop", "--model", f"scripted:{looping}", "--json")
    assert code == 1, out
    assert json.loads(out)["status"] == "waiting_human"


def test_idempotency_key_returns_the_same_run(env: dict[str, str]) -> None:
    """Starting twice with one --idempotency-key gives one run id."""
    args = ("run", "cli_agents:support", "where is A-7?", "--model", env["model"], "--json")
    first = json.loads(invoke(*args, "--idempotency-key", "k-1")[1])
    second = json.loads(invoke(*args, "--idempotency-key", "k-1")[1])
    assert first["run_id"] == second["run_id"]
    _, out = invoke("runs", "list", "--json")
    assert len(json.loads(out)) == 1


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("run", "cli_agents", "x"), "module:attribute"),
        (("run", "no_such_module:agent", "x"), "no_such_module"),
        (("run", "cli_agents:missing", "x"), "missing"),
        (("run", "cli_agents:not_an_agent", "x"), "not a tether.Agent"),
        (("run", "cli_agents:support", "x", "--model", "nope:thing"), "nope"),
        (("run", "cli_agents:support", "x", "--model", "scripted:/no/such/file.json"), "/no/such/file.json"),
        (("run", "cli_agents:support", "x"), "has no model"),
        (("run", "cli_agents:support", "x", "--db", "postgresql://u@h/db"), "postgresql://u@h/db"),
        (("run", "cli_agents:support", "x", "--db", "sqlite:////no/such/dir/x.db"), "/no/such/dir"),
        (("runs", "list", "--status", "sleeping"), "sleeping"),
        (("worker", "--concurrency", "0"), "concurrency"),
    ],
)
def test_bad_input_exits_two_naming_the_bad_value(
    env: dict[str, str], args: tuple[str, ...], needle: str
) -> None:
    """Usage and configuration errors exit 2 with a message naming the offending value."""
    code, out = invoke(*args)
    assert code == 2, out
    assert needle in out


def test_bad_environment_setting_is_named(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """An invalid TETHER_* variable fails at start with the variable's name and value."""
    monkeypatch.setenv("TETHER_LEASE_S", "soon")
    code, out = invoke("worker", "--exit-when-idle")
    assert code == 2
    assert "TETHER_LEASE_S" in out
    assert "soon" in out


def test_runs_show_events_and_list_filter(env: dict[str, str]) -> None:
    """runs show/events/list --json expose status, attempts, usage, event count and the ordered log."""
    run_id = json.loads(invoke("run", "cli_agents:support", "where?", "--model", env["model"], "--json")[1])[
        "run_id"
    ]
    shown = json.loads(invoke("runs", "show", run_id, "--json")[1])
    assert shown["status"] == "succeeded"
    assert shown["attempts"] == 1
    events = json.loads(invoke("runs", "events", run_id, "--json")[1])
    assert [e["seq"] for e in events] == list(range(len(events)))
    assert shown["event_count"] == len(events)
    assert events[0]["kind"] == "run.started"
    assert events[-1]["kind"] == "run.completed"
    assert json.loads(invoke("runs", "list", "--status", "failed", "--json")[1]) == []
    assert len(json.loads(invoke("runs", "list", "--status", "succeeded", "--json")[1])) == 1


def test_unknown_run_id_is_an_error(env: dict[str, str]) -> None:
    """Showing a run that does not exist says so and exits non-zero."""
    code, out = invoke("runs", "show", "run_nope")
    assert code != 0
    assert "run_nope" in out


def test_no_wait_then_worker_completes_the_run(env: dict[str, str]) -> None:
    """--no-wait only enqueues; `tether worker --exit-when-idle` (a real subprocess) completes it."""
    code, out = invoke("run", "cli_agents:support", "where is A-7?", "--model", env["model"], "--no-wait")
    assert code == 0, out
    run_id = out.strip()
    assert json.loads(invoke("runs", "show", run_id, "--json")[1])["status"] == "queued"
    worker = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [sys.executable, "-m", "tether", "worker", "--db", env["db"], "--exit-when-idle"],
        cwd=HERE,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert worker.returncode == 0, worker.stderr
    shown = json.loads(invoke("runs", "show", run_id, "--json")[1])
    assert shown["status"] == "succeeded"
    assert shown["output"] == "Order A-7 has shipped."


def test_cancel_a_queued_run(env: dict[str, str]) -> None:
    """runs cancel moves a queued run to cancelled and records why."""
    run_id = invoke("run", "cli_agents:support", "x", "--model", env["model"], "--no-wait")[1].strip()
    code, _ = invoke("runs", "cancel", run_id, "--reason", "customer hung up")
    assert code == 0
    events = json.loads(invoke("runs", "events", run_id, "--json")[1])
    assert events[-1] == {**events[-1], "kind": "run.cancelled", "data": {"reason": "customer hung up"}}


def test_demo_json_summary_is_the_last_line(tmp_path: Path) -> None:
    """`tether demo --json` ends with a JSON summary: faults survived, nothing lost, no double refund."""
    proc = subprocess.run(  # noqa: PLW1510 - the return code is asserted
        [
            sys.executable,
            "-m",
            "tether",
            "demo",
            "--runs",
            "12",
            "--db",
            f"sqlite:///{tmp_path / 'd.db'}",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["runs"] == 12
    assert summary["succeeded"] + summary["failed"] + summary["waiting_human"] == 12
    assert summary["lost"] == 0
    assert summary["duplicate_refunds"] == 0
    assert summary["refunds_issued"] > 0
    # the flaky primary provider made the gateway retry, open the breaker and fall back
    assert summary["model_retries"] > 0
    assert summary["breaker_opened"] >= 1
    assert summary["fallbacks"] > 0
    assert summary["backup_requests"] > 0
    assert summary["cache_hits"] >= 1
    assert summary["awaiting_approval"] >= 1  # refunds over $120 wait for a person
    assert summary["waiting_human"] >= summary["awaiting_approval"]


def test_run_over_http_with_the_openai_provider(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`tether run --model openai:NAME` talks to OPENAI_BASE_URL over real HTTP and records each step."""
    from tether.testing.fakellm import FakeLLMServer

    server = FakeLLMServer(SCRIPT)
    with server.run_in_thread():
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        code, out = invoke(
            "run", "cli_agents:support", "where is A-7?", "--model", "openai:fake-model", "--json"
        )
        assert server.stats["requests"] == 2
    assert code == 0, out
    data = json.loads(out)
    assert data["output"] == "Order A-7 has shipped."
    events = json.loads(invoke("runs", "events", data["run_id"], "--json")[1])
    results = [e["data"] for e in events if e["kind"] == "tool.result"]
    assert results[0]["ok"] is True
    assert json.loads(results[0]["content"]) == {"order_id": "A-7", "status": "shipped"}


def test_provider_outage_hands_the_run_to_a_person(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A provider that keeps answering 500 is retried 3 times, then the run waits for a person (exit 1)."""
    from tether.testing.fakellm import FakeLLMServer, Fault

    server = FakeLLMServer(SCRIPT, faults=[Fault("http_500", every=1)])
    with server.run_in_thread():
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        code, out = invoke("run", "cli_agents:support", "where?", "--model", "openai:fake-model", "--json")
        assert server.stats["requests"] == 3
    assert code == 1
    result = json.loads(out)
    assert result["status"] == "waiting_human"
    events = json.loads(invoke("runs", "events", result["run_id"], "--json")[1])
    assert [e["kind"] for e in events].count("model.retry") == 2
    assert events[-1]["kind"] == "escalation.opened"
    assert events[-1]["data"]["context"]["error_class"] == "retryable"
