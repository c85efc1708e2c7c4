"""`tether canary start|status|promote|rollback`, `tether shadow report` and `tether dlq discard`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tether import Runtime
from tether.cli import app

HERE = Path(__file__).parent


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(HERE)
    monkeypatch.syspath_prepend(str(HERE))
    return f"sqlite:///{tmp_path / 'release.db'}"


def runs(db: str, count: int) -> list[str]:
    """Start `count` runs of release-desk v1 for distinct principals, executed here with both versions."""
    import release_agents

    async def go() -> list[str]:
        async with Runtime(db, agents=[release_agents.v1, release_agents.v2]) as runtime:
            done = [await runtime.run(release_agents.v1, "where?", principal=f"p{n}") for n in range(count)]
            return [run.agent_version for run in done]

    return asyncio.run(go())


def test_canary_lifecycle_from_the_cli(db: str) -> None:
    """Start a canary, see both versions compared, roll it back; later runs take the baseline."""
    code, out = invoke(
        "canary",
        "start",
        "release-desk",
        "--candidate",
        "2",
        "--baseline",
        "1",
        "--share",
        "0.5",
        "--min-runs",
        "1000",  # no automatic verdict here: this test is about the manual rollback
        "--db",
        db,
        "--json",
    )
    assert code == 0, out
    assert json.loads(out)["status"] == "running"
    versions = runs(db, 30)
    assert set(versions) == {"1", "2"}
    code, out = invoke("canary", "status", "release-desk", "--db", db, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["baseline"]["settled"] + report["candidate"]["settled"] == 30
    assert report["candidate"]["mean_cost_usd"] == pytest.approx(0.004)
    code, out = invoke("canary", "rollback", "release-desk", "--reason", "too pricey", "--db", db)
    assert code == 0, out
    assert "rolled back" in out
    assert set(runs(db, 10)) == {"1"}
    code, out = invoke("canary", "promote", "release-desk", "--db", db)
    assert code == 2
    assert "no running canary" in out


def test_canary_promote_and_bad_input(db: str) -> None:
    """Promotion sends every new run to the candidate; a share above 1 is refused with the reason."""
    code, out = invoke(
        "canary", "start", "release-desk", "--candidate", "2", "--baseline", "1", "--share", "1.5", "--db", db
    )
    assert code == 2
    assert "share" in out
    code, out = invoke("canary", "start", "release-desk", "--candidate", "2", "--baseline", "1", "--db", db)
    assert code == 0, out
    code, out = invoke("canary", "promote", "release-desk", "--db", db)
    assert code == 0, out
    assert set(runs(db, 5)) == {"2"}
    code, out = invoke("canary", "status", "unknown-agent", "--db", db)
    assert code == 1
    assert "no canary" in out


def test_shadow_report_from_the_cli(db: str) -> None:
    """Shadow runs of v2 beside v1 are compared: same outcome, different answer."""
    import release_agents

    async def go() -> None:
        async with Runtime(
            db, agents=[release_agents.v1], shadows={"release-desk": release_agents.v2}
        ) as runtime:
            await runtime.run(release_agents.v1, "where?", principal="p1")
            [shadow] = await runtime.store.list_runs(shadows=True)
            await runtime.execute(shadow.id)

    asyncio.run(go())
    code, out = invoke("shadow", "report", "release-desk", "--db", db, "--json")
    assert code == 0, out
    report = json.loads(out)
    assert (report["compared"], report["same_outcome"], report["same_output"]) == (1, 1.0, 0.0)


def test_discarding_what_is_not_a_dead_letter_is_refused(db: str) -> None:
    """`dlq discard` on a finished run exits 2 and changes nothing."""
    import release_agents

    async def go() -> str:
        async with Runtime(db) as runtime:
            return (await runtime.run(release_agents.v1, "where?")).id

    run_id = asyncio.run(go())
    code, out = invoke("dlq", "discard", run_id, "--db", db)
    assert code == 2
    assert "not dead-lettered" in out


def test_worker_refuses_an_unknown_log_format(db: str) -> None:
    """`--log-format yaml` is refused naming the accepted forms."""
    code, out = invoke("worker", "--db", db, "--exit-when-idle", "--log-format", "yaml")
    assert code == 2
    assert "json, console, auto or off" in out


def test_event_and_feedback_exports_mask_pii_unless_raw(db: str) -> None:
    """`runs events` and `feedback export` mask e-mails and card numbers; `--raw` prints them as stored."""
    from tether import FunctionModel, ModelResponse
    from tether.agent import Agent

    leaky = "Card 4111 1111 1111 1111 refunded; mail sent to jo@example.com"
    agent = Agent("leaky", model=FunctionModel(lambda r: ModelResponse(content=leaky)), review=True)

    async def go() -> str:
        async with Runtime(db) as runtime:
            run = await runtime.run(agent, "refund me, I am jo@example.com", principal="p")
            [question] = await runtime.inbox()
            await runtime.answer(question.id, "send", by="lead")
            return run.id

    run_id = asyncio.run(go())
    code, masked = invoke("runs", "events", run_id, "--db", db, "--json")
    assert code == 0, masked
    assert "jo@example.com" not in masked
    assert "4111 1111" not in masked
    assert "[email]" in masked
    code, raw = invoke("runs", "events", run_id, "--db", db, "--json", "--raw")
    assert code == 0, raw
    assert "jo@example.com" in raw
    code, exported = invoke("feedback", "export", "--db", db)
    assert code == 0, exported
    assert "[card]" in exported
    assert "4111 1111" not in exported
