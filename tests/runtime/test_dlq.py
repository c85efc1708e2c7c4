"""Dead-letter queue: runs that keep failing are parked after N attempts, shown for triage, replayed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from typer.testing import CliRunner

from tether import Agent, ModelResponse, RunEvent, RunStatus, Runtime, SqliteRunStore, ToolCall, Worker, tool
from tether.cli import app
from tether.config import load_settings, open_runtime
from tether.errors import ConfigurationError, RunNotFoundError
from tether.store import EventDraft, NewEscalation, NewRun, OperationWrite
from tether.store.sql import failed_attempts

if TYPE_CHECKING:
    from conftest import Clock, ScriptModel

BUG = "bug: the tool result could not be serialised"


def ask(*calls: tuple[str, dict[str, Any]]) -> ModelResponse:
    return ModelResponse(
        tool_calls=tuple(
            ToolCall(f"call_{i}", name, args, json.dumps(args)) for i, (name, args) in enumerate(calls)
        )
    )


def say(content: str) -> ModelResponse:
    return ModelResponse(content=content)


class BuggyStore(SqliteRunStore):
    """Raises instead of recording a tool result while `failures` lasts, as a bug or an outage would."""

    def __init__(self, path: Path, failures: int) -> None:
        super().__init__(path)
        self.failures = failures

    async def append_events(  # type: ignore[override]
        self, run_id: str, owner: str, first_seq: int, events: Sequence[EventDraft], **kwargs: Any
    ) -> list[RunEvent]:
        if self.failures and any(event.kind == "tool.result" for event in events):
            self.failures -= 1
            raise RuntimeError(BUG)
        return await super().append_events(run_id, owner, first_seq, events, **kwargs)


class Desk:
    """A lookup tool that counts its calls, and an agent that looks order A up, then answers."""

    def __init__(self, model: ScriptModel) -> None:
        self.lookups = 0
        self.model = model

        @tool(side_effect="read")
        def lookup(order_id: str) -> str:
            """Look an order up."""
            self.lookups += 1
            return f"{order_id}: shipped"

        self.agent = Agent("desk", model=model.model, tools=[lookup])


@pytest.fixture
def desk(script: type[ScriptModel]) -> Desk:
    return Desk(script(ask(("lookup", {"order_id": "A"})), say("A has shipped.")))


@pytest.fixture
async def buggy(tmp_path: Path) -> AsyncIterator[BuggyStore]:
    opened = BuggyStore(tmp_path / "dlq.db", failures=0)
    yield opened
    await opened.close()


async def test_unexpected_exception_is_a_failed_attempt_and_the_next_attempt_resumes(
    buggy: BuggyStore, desk: Desk
) -> None:
    """An exception escaping the loop queues the run for another attempt, recorded; the third one succeeds."""
    buggy.failures = 2
    seen: list[str] = []
    async with Runtime(buggy, event_sinks=[lambda e: seen.append(e.kind)]) as runtime:
        run = await runtime.run(desk.agent, "where is A?")
        events = await runtime.events(run.id)
    assert (run.status, run.output, run.attempts, run.error) == (
        RunStatus.SUCCEEDED,
        "A has shipped.",
        3,
        None,
    )
    failed = [e.data for e in events if e.kind == "run.attempt_failed"]
    assert [(f["attempt"], f["error"], f["message"]) for f in failed] == [
        (1, "RuntimeError", BUG),
        (2, "RuntimeError", BUG),
    ]
    assert "Traceback" in failed[0]["traceback"]
    assert [e.data["attempt"] for e in events if e.kind == "run.resumed"] == [2, 3]
    assert desk.model.requested_turns == [0, 1]  # the recorded turn 0 was not requested again
    assert desk.lookups == 3  # its result was never recorded, so it ran again
    assert seen.count("run.attempt_failed") == 2


async def test_run_that_keeps_failing_is_dead_lettered_after_three_attempts_with_no_fourth(
    buggy: BuggyStore, desk: Desk
) -> None:
    """Three failed attempts, then the run is dead-lettered with the last error; no fourth attempt runs."""
    buggy.failures = 99
    seen: list[RunEvent] = []
    async with Runtime(buggy, event_sinks=[seen.append]) as runtime:
        run = await runtime.run(desk.agent, "where is A?")
        assert await runtime.wait(run.id, timeout_s=1) == run
        events = await runtime.events(run.id)
        assert [r.id for r in await runtime.dead_letters()] == [run.id]
    assert (run.status, run.attempts, run.lease_owner) == (RunStatus.DEAD_LETTERED, 3, None)
    assert run.error == f"dead-lettered after 3 failed attempts in a row; last error: RuntimeError: {BUG}"
    assert desk.lookups == 3
    assert [e.kind for e in events].count("run.attempt_failed") == 3
    assert events[-1].kind == "run.dead_lettered"
    assert events[-1].data == {
        "attempts": 3,
        "failed_attempts": 3,
        "max_attempts": 3,
        "reason": "max_attempts",
        "last_error": f"RuntimeError: {BUG}",
    }
    assert seen[-1] == events[-1]
    assert (await buggy.count_by_status())[RunStatus.DEAD_LETTERED] == 1


async def test_replay_after_the_fix_resumes_from_the_last_recorded_step(
    buggy: BuggyStore, desk: Desk
) -> None:
    """Replay queues the run with fresh attempts and a run.replayed event; it resumes, redoing no step."""
    buggy.failures = 99
    async with Runtime(buggy) as runtime:
        parked = await runtime.run(desk.agent, "where is A?")
        buggy.failures = 0  # the fix
        queued, applied = await runtime.replay(parked.id, by="ana")
        assert applied
        assert (queued.status, queued.attempts, queued.error) == (RunStatus.QUEUED, 0, None)
        assert await runtime.dead_letters() == []
        done = await runtime.execute(parked.id)
        events = await runtime.events(parked.id)
    assert (done.status, done.output, done.attempts) == (RunStatus.SUCCEEDED, "A has shipped.", 1)
    [replayed] = [e for e in events if e.kind == "run.replayed"]
    assert replayed.data == {"by": "ana", "previous_attempts": 3}
    assert desk.model.requested_turns == [0, 1]  # turn 0 was recorded before the failures: not redone
    assert desk.lookups == 4
    assert [e.kind for e in events].count("model.response") == 2


async def test_replaying_a_run_that_is_not_dead_lettered_changes_nothing(
    runtime: Runtime, desk: Desk
) -> None:
    """Replay of a run that is not dead-lettered is not applied and writes no event; unknown ids raise."""
    run = await runtime.run(desk.agent, "where is A?")
    before = await runtime.events(run.id)
    again, applied = await runtime.replay(run.id)
    assert not applied
    assert (again.status, again.attempts) == (RunStatus.SUCCEEDED, 1)
    assert await runtime.events(run.id) == before
    with pytest.raises(RunNotFoundError):
        await runtime.replay("run_missing")


async def dead_claims(store: SqliteRunStore, clock: Clock, run_id: str, owners: Sequence[str]) -> None:
    """Each owner claims the run and dies: its lease runs out without a word."""
    for owner in owners:
        assert await store.claim_run(owner, 1, run_id=run_id) is not None
        clock.advance(2)


async def test_worker_dead_letters_a_run_whose_workers_keep_dying(
    store: SqliteRunStore, clock: Clock, desk: Desk
) -> None:
    """Three claims whose workers died: the next claim parks the run instead of starting attempt 4."""
    await store.create_run(NewRun(id="run_poison", agent_name="desk", input="where is A?"))
    await dead_claims(store, clock, "run_poison", ["w1", "w2", "w3"])
    seen: list[RunEvent] = []
    async with Runtime(store, agents=[desk.agent], event_sinks=[seen.append]) as runtime:
        stats = await asyncio.wait_for(Worker(runtime, poll_s=0.01).run(exit_when_idle=True), 5)
    run = await store.get_run("run_poison")
    assert (run.status, run.attempts) == (RunStatus.DEAD_LETTERED, 3)
    assert (stats.claimed, stats.dead_lettered) == (0, 1)
    assert desk.model.requested_turns == []
    [event] = seen
    assert event.kind == "run.dead_lettered"
    assert event.data["last_error"] == (
        "worker w3 stopped renewing the lease mid-attempt (killed, out of memory or stalled)"
    )


async def test_worker_max_attempts_overrides_the_runtimes(
    store: SqliteRunStore, clock: Clock, desk: Desk
) -> None:
    """Worker(max_attempts=1) parks a run after one dead attempt although the runtime allows three."""
    await store.create_run(NewRun(id="run_once", agent_name="desk", input="where is A?"))
    await dead_claims(store, clock, "run_once", ["w1"])
    async with Runtime(store, agents=[desk.agent]) as runtime:
        assert runtime.max_attempts == 3
        stats = await asyncio.wait_for(
            Worker(runtime, poll_s=0.01, max_attempts=1).run(exit_when_idle=True), 5
        )
    assert stats.dead_lettered == 1
    assert (await store.get_run("run_once")).status == RunStatus.DEAD_LETTERED


async def test_max_attempts_below_one_is_a_configuration_error(store: SqliteRunStore) -> None:
    """Runtime and Worker refuse max_attempts < 1, naming the value."""
    with pytest.raises(ConfigurationError, match="max_attempts must be >= 1, not 0"):
        Runtime(store, max_attempts=0)
    with pytest.raises(ConfigurationError, match="max_attempts must be >= 1, not -1"):
        Worker(Runtime(store), max_attempts=-1)


async def test_runs_parked_for_people_again_and_again_are_not_dead_lettered(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """Attempts that end parked for a person did not fail: however many there are, no dead letter."""

    @tool(side_effect="read")
    def ping() -> str:
        """Ping."""
        return "pong"

    model = script(*[ask(("ping", {}))] * 6)
    agent = Agent("pinger", model=model.model, tools=[ping], max_steps=1)
    async with Runtime(store, agents=[agent], max_attempts=2) as runtime:
        run = await runtime.run(agent, "ping forever")
        for attempt in range(1, 5):
            assert (run.status, run.attempts) == (RunStatus.WAITING_HUMAN, attempt)
            [question] = await runtime.inbox()
            await runtime.answer(question.id, "continue", by="ana")
            run = await runtime.execute(run.id)
    assert (run.status, run.attempts) == (RunStatus.WAITING_HUMAN, 5)
    assert model.requested_turns == [0, 1, 2, 3, 4]


async def test_workers_dying_while_the_run_makes_progress_do_not_dead_letter_it(
    store: SqliteRunStore, clock: Clock, desk: Desk
) -> None:
    """Four workers die, but each recorded a result first: the fifth claim resumes the run, not parks it."""
    await store.create_run(NewRun(id="run_chaos", agent_name="desk", input="where is A?"))
    lookup = {
        "turn": 0,
        "index": 0,
        "call_id": "call_0",
        "tool": "lookup",
        "ok": True,
        "outcome": "succeeded",
    }
    steps = [
        [EventDraft("model.request", {"turn": 0})],
        [EventDraft("model.response", {**ask(("lookup", {"order_id": "A"})).to_dict(), "turn": 0})],
        [EventDraft("tool.result", {**lookup, "content": "A: shipped"})],
        [EventDraft("model.request", {"turn": 1})],
    ]
    seq = 1
    for attempt, step in enumerate(steps, start=1):
        assert await store.claim_run(f"w{attempt}", 1, max_attempts=3) is not None
        drafts = [EventDraft("run.resumed", {"attempt": attempt}), *step] if attempt > 1 else step
        await store.append_events("run_chaos", f"w{attempt}", seq, drafts)
        seq += len(drafts)
        clock.advance(2)
    async with Runtime(store, agents=[desk.agent], max_attempts=3) as runtime:
        done = await runtime.execute("run_chaos")
    assert (done.status, done.output, done.attempts) == (RunStatus.SUCCEEDED, "A has shipped.", 5)
    assert desk.model.requested_turns == [1]


@pytest.mark.parametrize(
    ("attempts", "markers", "failed"),
    [
        (3, [], 3),  # three workers died before writing anything
        (3, [("model.response", "{}")], 3),  # attempt 1 recorded a result, then it and two more died
        (3, [("run.resumed", '{"attempt": 3}'), ("tool.result", "{}")], 1),  # attempt 3 got somewhere
        (4, [("escalation.opened", "{}"), ("run.resumed", '{"attempt": 2}')], 3),  # parked cleanly first
        (5, [("model.response", "{}"), ("run.replayed", "{}")], 5),  # a replay starts the count again
    ],
)
def test_failed_attempts_counts_attempts_since_the_last_recorded_result(
    attempts: int, markers: list[tuple[str, str]], failed: int
) -> None:
    """Failed attempts in a row: the claims since the attempt that recorded the last result, included."""
    assert failed_attempts(attempts, markers) == failed


async def test_a_fatal_error_fails_the_run_and_is_not_a_dead_letter(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A run that ends failed by a fatal error stays failed: not parked, not counted in the DLQ depth."""
    agent = Agent("mute", model=script().model)  # no turns: the scripted model is exhausted at once
    run = await runtime.run(agent, "hi")
    assert run.status == RunStatus.FAILED
    assert await runtime.store.claim_run("w", 1, max_attempts=1) is None
    assert await runtime.dead_letters() == []
    counts = await runtime.store.count_by_status()
    assert counts == {**dict.fromkeys(RunStatus, 0), RunStatus.FAILED: 1}


async def park_with_history(store: SqliteRunStore, clock: Clock) -> str:
    """A run that asked a person, got an answer, then died three times in a row with a write started."""
    await store.create_run(NewRun(id="run_hist", agent_name="desk", input="refund A"))
    assert await store.claim_run("w1", 1) is not None
    turn0 = {**ask(("lookup", {"order_id": "A"})).to_dict(), "turn": 0}
    lookup = {
        "turn": 0,
        "index": 0,
        "call_id": "call_0",
        "tool": "lookup",
        "ok": True,
        "outcome": "succeeded",
    }
    await store.append_events(
        "run_hist",
        "w1",
        1,
        [
            EventDraft("model.request", {"turn": 0}),
            EventDraft("model.response", turn0),
            EventDraft("tool.result", {**lookup, "content": "A: 30 USD"}),
        ],
    )
    opened = {"reason": "step_limit", "message": "out of steps", "input": "refund A", "recent_messages": []}
    await store.finish(
        "run_hist",
        "w1",
        4,
        RunStatus.WAITING_HUMAN,
        EventDraft("escalation.opened", opened),
        escalation=NewEscalation("esc_1", "step_limit", "out of steps", ("continue", "takeover"), opened),
    )
    await store.answer_escalation("esc_1", {"choice": "continue"}, "ana")
    assert await store.claim_run("w2", 1) is not None
    turn1 = {**ask(("lookup", {"order_id": "B"}), ("refund", {"order_id": "A"})).to_dict(), "turn": 1}
    intent = {"turn": 1, "index": 1, "call_id": "call_1", "tool": "refund", "idempotency_key": "run_hist:1:1"}
    await store.append_events(
        "run_hist",
        "w2",
        6,
        [
            EventDraft("run.resumed", {"attempt": 2, "worker": "w2", "from_seq": 6}),
            EventDraft("model.request", {"turn": 1}),
            EventDraft("model.response", turn1),
            EventDraft("tool.result", {**lookup, "turn": 1, "call_id": "call_0", "content": "B: 5 USD"}),
            EventDraft("tool.intent", {**intent, "arguments": {"order_id": "A"}, "attempt": 1}),
        ],
        operations=[OperationWrite("run_hist:1:1", "run_hist", "refund", "intent", {"order_id": "A"})],
    )
    clock.advance(2)
    await dead_claims(store, clock, "run_hist", ["w3", "w4"])
    return "run_hist"


async def test_dead_letter_shows_attempts_decisions_tool_outputs_and_the_unfinished_call(
    store: SqliteRunStore, clock: Clock, runtime: Runtime
) -> None:
    """Triage view: attempts since the answer, decisions, tool outputs, the unfinished call, last events."""
    run_id = await park_with_history(store, clock)
    parked = await runtime.execute(run_id)  # attempts 2-4 failed after the answer: parked, not driven
    assert (parked.status, parked.attempts) == (RunStatus.DEAD_LETTERED, 4)
    letter = await runtime.dead_letter(run_id)
    assert letter.run == await store.get_run(run_id)
    assert [(a["kind"], a.get("attempt"), a.get("failed_attempts")) for a in letter.attempts] == [
        ("run.resumed", 2, None),
        ("run.dead_lettered", None, 3),
    ]
    assert [(d["seq"], d["kind"]) for d in letter.decisions] == [
        (2, "model.response"),
        (4, "escalation.opened"),
        (5, "escalation.answered"),
        (8, "model.response"),
    ]
    assert letter.decisions[3]["tool_calls"] == [
        {"name": "lookup", "arguments": {"order_id": "B"}},
        {"name": "refund", "arguments": {"order_id": "A"}},
    ]
    assert "recent_messages" not in letter.decisions[1]
    assert [(t["turn"], t["tool"], t["content"]) for t in letter.tool_outputs] == [
        (0, "lookup", "A: 30 USD"),
        (1, "lookup", "B: 5 USD"),
    ]
    assert letter.unfinished_calls == [
        {"turn": 1, "index": 1, "tool": "refund", "arguments": {"order_id": "A"}, "intent_recorded": True}
    ]
    assert [e.seq for e in letter.last_events] == list(range(2, 12))
    assert json.loads(json.dumps(letter.to_dict()))["run"]["status"] == "dead_lettered"


def test_max_attempts_comes_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TETHER_MAX_ATTEMPTS (or max_attempts in tether.toml) reaches the runtime; 0 is refused by name."""
    monkeypatch.chdir(tmp_path)
    settings = load_settings(
        environ={"TETHER_MAX_ATTEMPTS": "5", "TETHER_DB": f"sqlite:///{tmp_path / 's.db'}"}
    )
    assert settings.max_attempts == 5
    (tmp_path / "tether.toml").write_text("[tether]\nmax_attempts = 2\n")
    assert load_settings(environ={}).max_attempts == 2
    with pytest.raises(ConfigurationError, match="TETHER_MAX_ATTEMPTS='0'"):
        load_settings(environ={"TETHER_MAX_ATTEMPTS": "0"})

    async def wired() -> int:
        async with open_runtime(settings) as runtime:
            return runtime.max_attempts

    assert asyncio.run(wired()) == 5


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_cli_lists_shows_and_replays_dead_letters(clock: Clock, db_path: Path) -> None:
    """`tether dlq list|show|replay` print the depth, triage view and replay; a second replay exits 2."""

    async def park() -> str:
        store = SqliteRunStore(db_path, clock=clock)
        try:
            run_id = await park_with_history(store, clock)
            parked = await store.claim_run("w5", 1, max_attempts=3)
            assert parked is not None
            assert parked.status == RunStatus.DEAD_LETTERED
            return run_id
        finally:
            await store.close()

    run_id = asyncio.run(park())
    db = f"sqlite:///{db_path}"
    code, out = invoke("dlq", "list", "--db", db)
    assert code == 0, out
    assert run_id in out
    assert "1 dead-lettered run" in out
    code, out = invoke("dlq", "show", run_id, "--db", db)
    assert code == 0, out
    for needle in (
        "3 failed attempts in a row",
        "calls without a result",
        "refund",
        "B: 5 USD",
        "escalation",
    ):
        assert needle in out
    code, out = invoke("dlq", "replay", run_id, "--by", "ana", "--db", db, "--json")
    assert code == 0, out
    assert (json.loads(out)["status"], json.loads(out)["replayed"]) == ("queued", True)
    code, out = invoke("dlq", "replay", run_id, "--db", db)
    assert code == 2
    assert "is queued, not dead-lettered" in out
    code, out = invoke("dlq", "show", run_id, "--db", db)
    assert code == 2
    assert "not dead-lettered" in out
    code, out = invoke("dlq", "list", "--db", db, "--json")
    assert json.loads(out) == {"depth": 0, "dead_letters": []}
