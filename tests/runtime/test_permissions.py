"""Least privilege: deny by default, grants by role and task, time-bounded, every decision audited."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime, ToolCall, tool
from tether.cli import app
from tether.errors import ConfigurationError
from tether.policy.permissions import GrantRule, PermissionPolicy

POLICY = PermissionPolicy(
    grants=(
        GrantRule("support-read", tools=("lookup_*",), roles=("support", "customer")),
        GrantRule("support-refunds", tools=("issue_refund",), roles=("support",), tasks=("refunds",)),
        GrantRule("alice-anything", tools=("*",), principals=("alice",), ttl_s=60),
    ),
    principals={"cust-*": ("customer",), "sam": ("support",)},
    deny_tools=("delete_*",),
)


def test_deny_by_default_and_grants_by_role_task_and_principal() -> None:
    """Only a matching grant allows; the task must match; the deny list wins over every grant."""
    check = POLICY.check
    assert check(principal="cust-9", tasks=("refunds",), tool="lookup_order", age_s=1).allowed
    denied = check(principal="cust-9", tasks=("refunds",), tool="issue_refund", age_s=1)
    assert not denied.allowed
    assert "no grant lets 'cust-9' (roles customer)" in denied.reason
    assert check(principal="sam", tasks=("refunds",), tool="issue_refund", age_s=1).grant == "support-refunds"
    assert not check(principal="sam", tasks=("billing",), tool="issue_refund", age_s=1).allowed
    assert not check(principal="alice", tasks=(), tool="delete_account", age_s=1).allowed
    assert not check(principal=None, tasks=(), tool="lookup_order", age_s=1).allowed
    assert not check(principal="mallory", tasks=(), tool="lookup_order", age_s=1).allowed


def test_grants_expire() -> None:
    """A grant lasts its ttl (default one hour) from the run's start; then the call is denied."""
    assert POLICY.check(principal="alice", tasks=(), tool="anything", age_s=59).allowed
    late = POLICY.check(principal="alice", tasks=(), tool="anything", age_s=61)
    assert not late.allowed
    assert "expired" in late.reason
    assert POLICY.check(principal="sam", tasks=(), tool="lookup_order", age_s=3599).allowed
    assert not POLICY.check(principal="sam", tasks=(), tool="lookup_order", age_s=3601).allowed


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('grants = [{ name = "g", tools = ["a"] }]', "names neither roles nor principals"),
        ('grants = [{ name = "g", roles = ["r"] }]', "lists no tools"),
        ('grants = [{ name = "g", roles = ["r"], tools = "a" }]', r"grants\[0\]\.tools must be a list"),
        ('grants = [{ name = "g", roles = ["r"], tools = ["a"], color = "red" }]', "unknown key"),
        ("rolez = 1", "unknown key"),
        ("grants = [", "not valid TOML"),
    ],
)
def test_bad_policy_files_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    """A broken permissions file fails at start, naming the file and what is wrong."""
    path = tmp_path / "permissions.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=needle):
        PermissionPolicy.from_file(path)


def test_missing_policy_file_is_named(tmp_path: Path) -> None:
    """A permissions file that does not exist is an error naming it."""
    with pytest.raises(ConfigurationError, match="does not exist"):
        PermissionPolicy.from_file(tmp_path / "nope.toml")


class Desk:
    """A model that looks an order up, then refunds it; counts what really ran."""

    def __init__(self) -> None:
        self.refunds = 0

        @tool(side_effect="read")
        def lookup_order(order_id: str) -> str:
            """Look an order up."""
            return f"{order_id}: delivered"

        @tool(side_effect="write", idempotent=True, approval=True)
        def issue_refund(order_id: str) -> str:
            """Refund an order."""
            self.refunds += 1
            return "refunded"

        def respond(request: ModelRequest) -> ModelResponse:
            steps = [("lookup_order", {"order_id": "A-1"}), ("issue_refund", {"order_id": "A-1"})]
            if request.turn < len(steps):
                name, arguments = steps[request.turn]
                return ModelResponse(
                    tool_calls=(ToolCall(f"c{request.turn}", name, arguments, json.dumps(arguments)),)
                )
            return ModelResponse(content="done")

        self.agent = Agent(
            "desk", model=FunctionModel(respond), tools=[lookup_order, issue_refund], tags=("refunds",)
        )


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'p.db'}", permissions=POLICY) as rt:
        yield rt


async def test_a_denied_call_does_not_run_and_the_agent_reads_why(runtime: Runtime) -> None:
    """A customer's run may look up but not refund: no approval is asked, nothing refunded, all audited."""
    desk = Desk()
    run = await runtime.run(desk.agent, "refund A-1", principal="cust-9", session_id="chat-1")
    assert run.status == RunStatus.SUCCEEDED
    assert desk.refunds == 0
    assert await runtime.inbox() == []  # nobody was asked to approve a call the policy denies
    events = await runtime.events(run.id)
    [denial] = [e.data for e in events if e.kind == "permission.denied"]
    assert denial["tool"] == "issue_refund"
    [result] = [e.data for e in events if e.kind == "tool.result" and e.data["tool"] == "issue_refund"]
    assert result["error"] == "permission_denied"
    assert "Permission denied" in result["content"]
    audit = await runtime.store.list_audit(run_id=run.id)
    assert [(a.decision, a.tool, a.grant) for a in reversed(audit)] == [
        ("allow", "lookup_order", "support-read"),
        ("deny", "issue_refund", None),
    ]
    assert {(a.principal, a.session_id) for a in audit} == {("cust-9", "chat-1")}


async def test_a_granted_call_runs_with_its_grant_audited(runtime: Runtime) -> None:
    """Support staff may refund (after approval); the audit names the grant that allowed it."""
    desk = Desk()
    run = await runtime.run(desk.agent, "refund A-1", principal="sam")
    [question] = await runtime.inbox()
    await runtime.answer(question.id, "approve")
    run = await runtime.execute(run.id)
    assert (run.status, desk.refunds) == (RunStatus.SUCCEEDED, 1)
    grants = [(a.tool, a.grant) for a in await runtime.store.list_audit(run_id=run.id, decision="allow")]
    assert ("issue_refund", "support-refunds") in grants


async def test_the_audit_log_is_append_only(runtime: Runtime, tmp_path: Path) -> None:
    """The database itself refuses to change or delete audit entries."""
    await runtime.run(Desk().agent, "refund A-1", principal="cust-9")
    with sqlite3.connect(tmp_path / "p.db") as db:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE audit SET decision = 'allow'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM audit")


async def test_repeated_denials_in_a_session_hand_it_to_a_person(runtime: Runtime) -> None:
    """After three denials in a session, its next run goes to a person before the model is asked."""
    desk = Desk()
    runs = [
        await runtime.run(desk.agent, "refund A-1", principal="cust-9", session_id="chat-7") for _ in range(3)
    ]
    # The third denial trips the breaker during the third run itself.
    assert [r.status for r in runs] == [RunStatus.SUCCEEDED, RunStatus.SUCCEEDED, RunStatus.WAITING_HUMAN]
    calls: list[int] = []
    agent = Agent("desk", model=FunctionModel(lambda r: calls.append(1) or ModelResponse(content="hi")))
    run = await runtime.run(agent, "hello again", principal="cust-9", session_id="chat-7")
    assert run.status == RunStatus.WAITING_HUMAN
    assert calls == []
    assert [q.reason for q in await runtime.inbox()] == ["abuse", "abuse"]
    other = await runtime.run(agent, "hello", principal="cust-9", session_id="chat-8")
    assert other.status == RunStatus.SUCCEEDED  # another session keeps its autonomy


def test_audit_list_from_the_cli(tmp_path: Path) -> None:
    """`tether audit list --decision deny --json` prints the denials with who, what and why."""
    import asyncio

    db = f"sqlite:///{tmp_path / 'p.db'}"

    async def go() -> None:
        async with Runtime(db, permissions=POLICY) as rt:
            await rt.run(Desk().agent, "refund A-1", principal="cust-9")

    asyncio.run(go())
    result = CliRunner().invoke(app, ["audit", "list", "--db", db, "--decision", "deny", "--json"])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(result.output)
    assert (entry["principal"], entry["tool"], entry["decision"]) == ("cust-9", "issue_refund", "deny")
    bad = CliRunner().invoke(app, ["audit", "list", "--db", db, "--decision", "maybe"])
    assert bad.exit_code == 2
