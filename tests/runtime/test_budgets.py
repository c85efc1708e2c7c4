"""Budgets in the loop: reserve before every model and tool call, settle after, hand over at the limit."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tether import (
    Agent,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RunStatus,
    Runtime,
    ToolCall,
    Usage,
    tool,
)
from tether.policy import Budget, BudgetPolicy, Limits, Scope


def emailing(count: int) -> FunctionModel:
    """A model that asks for `count` emails, one per turn, then answers."""

    def respond(request: ModelRequest) -> ModelResponse:
        if request.turn < count:
            arguments = {"to": f"user{request.turn}@example.com"}
            call = ToolCall(f"c{request.turn}", "send_email", arguments, json.dumps(arguments))
            return ModelResponse(tool_calls=(call,), usage=Usage(100, 10, 0.001))
        return ModelResponse(content="sent", usage=Usage(100, 10, 0.001))

    return FunctionModel(respond, name="mailer")


class Outbox:
    def __init__(self) -> None:
        self.sent: list[str] = []

        @tool(side_effect="write", idempotent=True, counts={"emails": 1})
        def send_email(to: str) -> str:
            """Send an email."""
            self.sent.append(to)
            return "ok"

        self.tool = send_email


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'budget.db'}") as rt:
        yield rt


async def test_custom_counter_limit_stops_the_action_and_escalates(runtime: Runtime) -> None:
    """With 2 emails allowed per run, the third is never sent; the run goes to a person, recorded why."""
    outbox = Outbox()
    policy = BudgetPolicy(
        per_run=Limits(tokens=None, cost_usd=None, tool_calls=None, mutations=None, custom={"emails": 2})
    )
    agent = Agent("mail", model=emailing(5), tools=[outbox.tool], budget=policy)
    run = await runtime.run(agent, "mail everyone")
    assert run.status == RunStatus.WAITING_HUMAN
    assert len(outbox.sent) == 2
    events = await runtime.events(run.id)
    [exceeded] = [e.data for e in events if e.kind == "budget.exceeded"]
    assert exceeded["counter"] == "emails"
    assert "budget.warning" in [e.kind for e in events]  # 2 of 2 crossed 80% first
    [question] = await runtime.inbox()
    assert question.reason == "budget"


async def test_token_budget_counts_model_usage(runtime: Runtime) -> None:
    """Model calls are settled with their actual tokens and cost; the run's usage is what was charged."""
    outbox = Outbox()
    run = await runtime.run(Agent("mail", model=emailing(1), tools=[outbox.tool]), "mail one")
    assert run.status == RunStatus.SUCCEEDED
    report = await Budget(runtime.budget_policy, runtime.budget_backend).usage(Scope(run_id=run.id))
    used = {counter: value.used for counter, value in report["run"].items()}
    assert used["tokens"] == pytest.approx(220)
    assert used["cost_usd"] == pytest.approx(0.002)
    assert used["tool_calls"] == 1
    assert used["mutations"] == 1


@pytest.mark.parametrize("shared", [True, False], ids=["joined", "separate"])
async def test_counters_settle_the_same_in_the_store_transaction_or_apart(
    tmp_path: Path, shared: bool
) -> None:
    """Counters in the run store's connection are charged with its events; apart, the same amounts."""
    from tether.policy import InMemoryBudgetBackend

    backend = None if shared else InMemoryBudgetBackend()
    async with Runtime(f"sqlite:///{tmp_path / 'b.db'}", budget_backend=backend) as runtime:
        outbox = Outbox()
        run = await runtime.run(Agent("mail", model=emailing(2), tools=[outbox.tool]), "mail two")
        assert run.status == RunStatus.SUCCEEDED
        budget = Budget(runtime.budget_policy, runtime.budget_backend)
        assert budget.joins(runtime.store.connection) is shared  # type: ignore[attr-defined]
        report = (await budget.usage(Scope(run_id=run.id)))["run"]
    assert {name: (c.used, c.reserved) for name, c in report.items() if c.used} == {
        "tokens": (330, 0),
        "cost_usd": (pytest.approx(0.003), 0),
        "tool_calls": (2, 0),
        "mutations": (2, 0),
        "emails": (2, 0),
    }


async def test_a_refused_model_call_is_not_recorded_as_requested(runtime: Runtime) -> None:
    """Over the token budget, the model is not asked, and no model.request says it was."""
    calls: list[int] = []

    def respond(request: ModelRequest) -> ModelResponse:
        calls.append(request.turn)
        return ModelResponse(content="done", usage=Usage(10, 10))

    policy = BudgetPolicy(per_run=Limits(tokens=50))
    agent = Agent("tiny", model=FunctionModel(respond), budget=policy)
    run = await runtime.run(agent, "a question")
    assert run.status == RunStatus.WAITING_HUMAN
    assert calls == []
    kinds = [e.kind for e in await runtime.events(run.id)]
    assert "model.request" not in kinds
    assert "budget.exceeded" in kinds


async def test_concurrent_runs_of_one_principal_never_overshoot_the_day(runtime: Runtime) -> None:
    """Ten concurrent runs of one principal with a day budget of 5 emails send exactly 5."""
    outbox = Outbox()
    unlimited = Limits(tokens=None, cost_usd=None, tool_calls=None, mutations=None)
    policy = BudgetPolicy(
        per_run=unlimited,
        per_session=unlimited,
        per_principal_day=Limits(custom={"emails": 5}),
        per_tenant_day=unlimited,
    )
    agent = Agent("mail", model=emailing(1), tools=[outbox.tool], budget=policy)
    runs = await asyncio.gather(*(runtime.run(agent, f"mail {n}", principal="alice") for n in range(10)))
    assert len(outbox.sent) == 5
    assert sorted(r.status for r in runs).count(RunStatus.SUCCEEDED) == 5


async def test_session_budget_spans_the_runs_of_one_conversation(runtime: Runtime) -> None:
    """Runs of one session share its budget: the session's third email is refused in its second run."""
    outbox = Outbox()
    unlimited = Limits(tokens=None, cost_usd=None, tool_calls=None, mutations=None)
    policy = BudgetPolicy(per_run=unlimited, per_session=Limits(custom={"emails": 2}))
    agent = Agent("mail", model=emailing(2), tools=[outbox.tool], budget=policy)
    first = await runtime.run(agent, "mail two", session_id="chat-1", tenant="acme")
    second = await runtime.run(agent, "mail two more", session_id="chat-1", tenant="acme")
    other = await runtime.run(agent, "mail two", session_id="chat-2", tenant="acme")
    assert (first.status, second.status, other.status) == (
        RunStatus.SUCCEEDED,
        RunStatus.WAITING_HUMAN,
        RunStatus.SUCCEEDED,
    )
    assert len(outbox.sent) == 4
    assert (first.session_id, first.tenant) == ("chat-1", "acme")


def test_older_databases_are_migrated_in_place(tmp_path: Path) -> None:
    """A store written before sessions and tenants existed gains the columns and keeps its runs."""
    import sqlite3

    from tether.store.sql import SCHEMA_VERSION, schema_statements
    from tether.store.sqlite import SqliteRunStore

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        for statement in schema_statements("REAL"):
            db.execute(statement)
        db.execute("INSERT INTO tether_schema (version) VALUES (2)")
        db.execute(
            "INSERT INTO runs (id, agent_name, agent_version, status, input, created_at_epoch_ms, "
            "updated_at_epoch_ms) VALUES ('run_old', 'a', '1', 'succeeded', 'hi', 1, 1)"
        )
    store = SqliteRunStore(path)
    run = asyncio.run(store.get_run("run_old"))
    asyncio.run(store.close())
    assert (run.input, run.session_id, run.tenant) == ("hi", None, None)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM tether_schema").fetchone() == (SCHEMA_VERSION,)
