"""Crash tests: real `tether worker` subprocesses SIGKILLed at chosen points; the contract must hold."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tether import RunStatus, Runtime

HERE = Path(__file__).parent
pytestmark = [pytest.mark.crash, pytest.mark.timeout(120)]

sys.path.insert(0, str(HERE))
import crash_agents  # noqa: E402


@dataclass
class Crash:
    dir: Path
    db_url: str

    def env(self, crash_at: str = "", step_delay_s: float = 0.0) -> dict[str, str]:
        env = dict(os.environ)
        env["CRASH_DIR"] = str(self.dir)
        env["CRASH_AT"] = crash_at
        env["CRASH_STEP_DELAY_S"] = str(step_delay_s)
        env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
        return env

    def worker(self, crash_at: str = "", step_delay_s: float = 0.0) -> subprocess.Popen[str]:
        command = [
            sys.executable, "-m", "tether", "worker", "--db", self.db_url,
            "--lease-s", "1", "--exit-when-idle",
        ]  # fmt: skip
        return subprocess.Popen(
            command,
            env=self.env(crash_at, step_delay_s),
            cwd=self.dir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def lines(self, name: str) -> list[str]:
        path = self.dir / name
        return path.read_text().splitlines() if path.exists() else []

    def payments(self) -> list[tuple[str, str, float]]:
        with sqlite3.connect(self.dir / "payments.db") as db:
            return db.execute("SELECT key, order_id, amount FROM payments").fetchall()


@pytest.fixture
def crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Crash:
    monkeypatch.setattr(crash_agents, "DIR", tmp_path)
    return Crash(tmp_path, f"sqlite:///{tmp_path / 'tether.db'}")


async def start(crash: Crash, target: str) -> str:
    async with Runtime(crash.db_url) as runtime:
        agent = getattr(crash_agents, target)
        run = await runtime.start(agent, "please handle order A-1", target=f"crash_agents:{target}")
        return run.id


def kill_at(crash: Crash, point: str) -> None:
    """Start a worker, wait until it reaches `point`, SIGKILL it there."""
    worker = crash.worker(point)
    marker = crash.dir / f"reached-{point}"
    deadline = time.monotonic() + 30
    while not marker.exists():
        if worker.poll() is not None:
            pytest.fail(f"worker exited before reaching {point}: {worker.communicate()[0]}")
        if time.monotonic() > deadline:
            worker.kill()
            worker.communicate()
            pytest.fail(f"worker never reached {point}")
        time.sleep(0.02)
    os.kill(worker.pid, signal.SIGKILL)
    worker.communicate(timeout=10)
    assert worker.returncode == -signal.SIGKILL


def cli(crash: Crash, *args: str) -> str:
    """Run `tether ARGS --db …` as a separate process; return its output (it must succeed)."""
    command = [sys.executable, "-m", "tether", *args, "--db", crash.db_url]
    done = subprocess.run(
        command, capture_output=True, text=True, env=crash.env(), cwd=crash.dir, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def recover(crash: Crash) -> None:
    """A fresh worker takes the run over once the dead worker's lease expires, then exits when idle."""
    worker = crash.worker()
    output, _ = worker.communicate(timeout=60)
    assert worker.returncode == 0, output


async def final_state(crash: Crash, run_id: str) -> tuple[RunStatus, list[str], int]:
    async with Runtime(crash.db_url) as runtime:
        run = await runtime.store.get_run(run_id)
        kinds = [e.kind for e in await runtime.events(run_id)]
        return run.status, kinds, run.attempts


async def test_kill_inside_idempotent_write_after_effect_reinvokes_with_same_key(crash: Crash) -> None:
    """Killed after charging, before the result was recorded: re-invoked with the same key, charged once."""
    run_id = await start(crash, "pay_agent")
    kill_at(crash, "charge-after-effect")
    recover(crash)
    status, kinds, attempts = await final_state(crash, run_id)
    assert status == RunStatus.SUCCEEDED
    assert attempts == 2
    assert "run.resumed" in kinds
    charges = [line for line in crash.lines("calls.log") if line.startswith("charge_card")]
    key = f"{run_id}:1:0"
    assert charges == [f"charge_card {key} attempt=1", f"charge_card {key} attempt=2"]
    assert crash.payments() == [(key, "A-1", 30.0)]
    # the lookup's result was recorded before the crash: never executed again
    assert crash.lines("calls.log").count("lookup_order A-1") == 1
    assert crash.lines("model.log") == ["pay turn=0", "pay turn=1", "pay turn=2"]


async def test_kill_inside_idempotent_write_before_effect_charges_exactly_once(crash: Crash) -> None:
    """Killed inside the write tool before its side effect: the resumed run charges exactly once."""
    run_id = await start(crash, "pay_agent")
    kill_at(crash, "charge-before-effect")
    recover(crash)
    status, _, _ = await final_state(crash, run_id)
    assert status == RunStatus.SUCCEEDED
    assert crash.payments() == [(f"{run_id}:1:0", "A-1", 30.0)]


async def test_kill_inside_non_idempotent_write_goes_to_a_person(crash: Crash) -> None:
    """A non-idempotent write with an unknown outcome is never re-invoked: the run waits for a person."""
    run_id = await start(crash, "email_agent")
    kill_at(crash, "email-after-effect")
    recover(crash)
    async with Runtime(crash.db_url) as runtime:
        run = await runtime.store.get_run(run_id)
        events = await runtime.events(run_id)
    assert run.status == RunStatus.WAITING_HUMAN
    escalation = events[-1]
    assert escalation.kind == "escalation.opened"
    assert escalation.data["reason"] == "unknown_outcome"
    assert escalation.data["context"]["tool"] == "send_email"
    assert crash.lines("emails.log") == ["customer@example.com"]
    assert len([line for line in crash.lines("calls.log") if line.startswith("send_email")]) == 1


async def test_kill_between_steps_replays_recorded_turns(crash: Crash) -> None:
    """Killed while asking the model for turn 2: turns 0-1 and both tools are replayed, not redone."""
    run_id = await start(crash, "pay_agent")
    kill_at(crash, "model-turn-2")
    recover(crash)
    status, kinds, _ = await final_state(crash, run_id)
    assert status == RunStatus.SUCCEEDED
    assert crash.lines("model.log") == ["pay turn=0", "pay turn=1", "pay turn=2", "pay turn=2"]
    assert crash.lines("calls.log") == ["lookup_order A-1", f"charge_card {run_id}:1:0 attempt=1"]
    assert len(crash.payments()) == 1
    assert kinds.count("model.response") == 3
    assert kinds[-1] == "run.completed"


async def test_kill_during_first_model_call_resumes_from_the_start(crash: Crash) -> None:
    """Killed before anything but run.started was recorded: the run still completes, once."""
    run_id = await start(crash, "pay_agent")
    kill_at(crash, "model-turn-0")
    recover(crash)
    status, kinds, attempts = await final_state(crash, run_id)
    assert status == RunStatus.SUCCEEDED
    assert attempts == 2
    assert kinds.count("run.completed") == 1
    assert len(crash.payments()) == 1


async def test_random_kills_lose_nothing_and_charge_each_order_once(
    crash: Crash, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers SIGKILLed at random moments, again and again: every run completes, each charged once."""
    # Four kills can land on one run before it records anything; that is the dead-letter rule's case
    # (tests/runtime/test_dlq.py), not this test's: here every run must be driven to completion.
    monkeypatch.setenv("TETHER_MAX_ATTEMPTS", "20")
    rng = random.Random(int(os.environ.get("TETHER_CRASH_SEED", "7")))
    async with Runtime(crash.db_url) as runtime:
        run_ids = [
            (await runtime.start(crash_agents.pay_agent, f"order {n}", target="crash_agents:pay_agent")).id
            for n in range(6)
        ]
    kills = 0
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        worker = crash.worker(step_delay_s=0.2)
        try:
            # four lives end at a random moment; the fifth worker is left to finish the work
            worker.communicate(timeout=rng.uniform(0.8, 2.5) if kills < 4 else 60)
        except subprocess.TimeoutExpired:
            worker.send_signal(signal.SIGKILL)
            worker.communicate(timeout=10)
            kills += 1
            continue
        assert worker.returncode == 0
        break
    async with Runtime(crash.db_url) as runtime:
        runs = [await runtime.store.get_run(run_id) for run_id in run_ids]
        responses = [
            [e.data["turn"] for e in await runtime.events(run_id) if e.kind == "model.response"]
            for run_id in run_ids
        ]
    assert kills >= 1, "no worker was killed: the test proved nothing"
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED] * 6
    assert responses == [[0, 1, 2]] * 6  # every turn recorded once: nothing recorded was redone
    payments = crash.payments()
    assert sorted(key for key, _, _ in payments) == sorted(f"{run_id}:1:0" for run_id in run_ids)


async def test_answer_given_while_no_worker_lives_resumes_the_run_exactly_once(crash: Crash) -> None:
    """Killed mid-write, answered from the CLI with no worker alive, then two workers race: one resume."""
    run_id = await start(crash, "email_agent")
    kill_at(crash, "email-after-effect")
    recover(crash)  # the run is parked: unknown outcome of a non-idempotent write
    [question] = json.loads(cli(crash, "inbox", "list", "--json"))
    cli(crash, "inbox", "answer", question["id"], "--choice", "happened", "--text", "the mail log shows it")
    workers = [crash.worker(), crash.worker()]
    for worker in workers:
        output, _ = worker.communicate(timeout=60)
        assert worker.returncode == 0, output
    status, kinds, _ = await final_state(crash, run_id)
    assert status == RunStatus.SUCCEEDED
    assert kinds.count("escalation.applied") == 1
    assert kinds.count("run.completed") == 1
    assert crash.lines("emails.log") == ["customer@example.com"]  # the person said it happened: not re-sent


async def test_poison_run_is_dead_lettered_after_three_attempts_and_replayed_after_the_fix(
    crash: Crash, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker-killing tool: 3 attempts, no 4th, dead-lettered; replayed after the fix, nothing is redone."""
    run_id = await start(crash, "poison_agent")
    deaths = 0
    while deaths < 5:  # workers restarted, as a supervisor would
        worker = crash.worker()
        output, _ = worker.communicate(timeout=60)
        if worker.returncode != -signal.SIGKILL:
            break
        deaths += 1
    assert (worker.returncode, deaths) == (0, 3), output
    status, kinds, attempts = await final_state(crash, run_id)
    assert (status, attempts) == (RunStatus.DEAD_LETTERED, 3)
    assert crash.lines("calls.log") == ["lookup_order A-1"] + ["render_invoice A-1"] * 3
    assert crash.lines("model.log") == ["poison turn=0", "poison turn=1"]
    assert kinds.count("run.resumed") == 2
    assert kinds[-1] == "run.dead_lettered"

    listing = json.loads(cli(crash, "dlq", "list", "--json"))
    assert listing["depth"] == 1
    assert [(r["run_id"], r["attempts"]) for r in listing["dead_letters"]] == [(run_id, 3)]
    assert "stopped renewing the lease" in listing["dead_letters"][0]["error"]
    shown = json.loads(cli(crash, "dlq", "show", run_id, "--json"))
    assert shown["unfinished_calls"] == [
        {
            "turn": 1,
            "index": 0,
            "tool": "render_invoice",
            "arguments": {"order_id": "A-1"},
            "intent_recorded": False,
        }
    ]
    assert [(o["tool"], o["outcome"]) for o in shown["tool_outputs"]] == [("lookup_order", "succeeded")]
    [parked] = [a for a in shown["attempts"] if a["kind"] == "run.dead_lettered"]
    assert (parked["attempts"], parked["failed_attempts"], parked["reason"]) == (3, 3, "max_attempts")

    monkeypatch.setenv("POISON_FIXED", "1")  # the fix, deployed to the workers
    replayed = json.loads(cli(crash, "dlq", "replay", run_id, "--by", "oncall", "--json"))
    assert (replayed["status"], replayed["attempts"]) == ("queued", 0)
    recover(crash)
    status, kinds, attempts = await final_state(crash, run_id)
    assert (status, attempts) == (RunStatus.SUCCEEDED, 1)
    assert crash.lines("calls.log") == ["lookup_order A-1"] + ["render_invoice A-1"] * 4
    assert crash.lines("model.log") == ["poison turn=0", "poison turn=1", "poison turn=2"]
    assert kinds.count("run.replayed") == kinds.count("run.completed") == 1
    assert json.loads(cli(crash, "dlq", "list", "--json")) == {"depth": 0, "dead_letters": []}
