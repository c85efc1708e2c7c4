"""The evaluation harness: datasets, checks, scoring real runs, comparison, and `tether eval`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tether import Agent, tool
from tether.cli import app
from tether.errors import ConfigurationError
from tether.evals import (
    Case,
    CaseResult,
    Expect,
    Observation,
    Report,
    Tolerances,
    compare,
    evaluate,
    gate_failures,
    load_dataset,
)
from tether.models import FunctionModel
from tether.models.scripted import ScriptedTurn
from tether.runtime import Runtime
from tether.types import ModelRequest, ModelResponse, RunStatus, ToolCall, Usage

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "evals" / "cases.jsonl"
AGENTS = "examples.evals.agent"


def write(path: Path, *lines: Any) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


# ---- datasets ------------------------------------------------------------------------------------


def test_load_jsonl_reads_the_example_dataset() -> None:
    """The example JSONL loads: ids in order, inline scripts as turns, `scripted:` paths made absolute."""
    cases = load_dataset(EXAMPLE)
    assert [case.id for case in cases][:2] == ["refund-small", "refund-medium"]
    by_id = {case.id: case for case in cases}
    assert by_id["refund-small"].expect.output_contains == ("$40.00 refunded",)
    inline = by_id["faq-inline-script"].model
    assert isinstance(inline, tuple)
    assert inline[0].content == "Refunds are possible within 30 days of delivery."
    assert (
        by_id["unknown-order-script-file"].model
        == f"scripted:{EXAMPLE.parent / 'scripts/unknown-order.json'}"
    )


def test_load_json_list_and_default_ids(tmp_path: Path) -> None:
    """A .json dataset is a list of cases; cases without an id get case-N (JSON) or line-N (JSONL)."""
    listed = tmp_path / "cases.json"
    listed.write_text(json.dumps([{"input": "a"}, {"id": "named", "input": "b"}]))
    assert [case.id for case in load_dataset(listed)] == ["case-1", "named"]
    lines = write(tmp_path / "cases.jsonl", {"input": "a"}, "", {"input": "b"})
    assert [case.id for case in load_dataset(lines)] == ["line-1", "line-3"]


@pytest.mark.parametrize(
    ("name", "lines", "needles"),
    [
        ("bad.jsonl", [{"input": "a"}, "", '{"input": '], ["line 3", "not valid JSON"]),
        ("list.jsonl", [[1, 2]], ["line 1", "must be a JSON object"]),
        (
            "unknown.jsonl",
            [{"input": "a", "expect": {"outptu_contains": "x"}}],
            ["unknown check 'outptu_contains'"],
        ),
        ("key.jsonl", [{"input": "a", "inptu": "b"}], ["line 1", "unknown key 'inptu'"]),
        ("noinput.jsonl", [{"id": "x"}, {"id": "y"}], ["line 1", "'input' is required"]),
        ("empty.jsonl", [{"input": ""}], ["input", "at least 1 character"]),
        (
            "regex.jsonl",
            [{"input": "a", "expect": {"output_matches": "("}}],
            ["output_matches", "regular expr"],
        ),
        ("status.jsonl", [{"input": "a", "expect": {"status": "done"}}], ["expect.status", "waiting_human"]),
        ("bool.jsonl", [{"input": "a", "expect": {"escalates": "yes"}}], ["expect.escalates"]),
        (
            "dup.jsonl",
            [{"id": "a", "input": "x"}, {"id": "a", "input": "y"}],
            ["line 2", "already used on line 1"],
        ),
        ("turn.jsonl", [{"input": "a", "model": [{"text": "hi"}]}], ["model: turn 0", "unknown key 'text'"]),
        ("spec.jsonl", [{"input": "a", "model": "gpt-4o"}], ["PROVIDER:NAME"]),
        (
            "script.jsonl",
            [{"input": "a", "model": "scripted:nowhere.json"}],
            ["line 1", "nowhere.json", "exist"],
        ),
        ("nothing.jsonl", [""], ["holds no cases"]),
        ("cases.yaml", ["- input: a"], ["YAML is not supported", "JSONL"]),
        ("cases.txt", [{"input": "a"}], [".jsonl", ".json"]),
    ],
)
def test_bad_datasets_are_configuration_errors(
    tmp_path: Path, name: str, lines: list[Any], needles: list[str]
) -> None:
    """Each malformed dataset is one ConfigurationError naming the file, the line and the problem."""
    path = write(tmp_path / name, *lines)
    with pytest.raises(ConfigurationError) as caught:
        load_dataset(path)
    message = str(caught.value)
    assert name in message
    for needle in needles:
        assert needle in message


def test_missing_dataset_is_named(tmp_path: Path) -> None:
    """A dataset that does not exist is a ConfigurationError naming it."""
    with pytest.raises(ConfigurationError, match=r"nope\.jsonl' does not exist"):
        load_dataset(tmp_path / "nope.jsonl")


# ---- checks --------------------------------------------------------------------------------------

SEEN = Observation(
    run_id="run_1",
    status=RunStatus.SUCCEEDED,
    output="Done: $40.00 refunded for order A-1001.",
    error=None,
    cost_usd=0.003,
    latency_ms=5.0,
    tools=("lookup_order", "issue_refund"),
    escalated=False,
)
WAITING = replace(SEEN, status=RunStatus.WAITING_HUMAN, output=None, tools=("lookup_order",), escalated=True)


@pytest.mark.parametrize(
    ("expect", "seen", "passes"),
    [
        ({}, SEEN, True),
        ({}, replace(SEEN, status=RunStatus.FAILED), False),
        ({"status": "waiting_human"}, WAITING, True),
        ({"status": "succeeded"}, WAITING, False),
        ({"output_contains": "$40.00"}, SEEN, True),
        ({"output_contains": ["$40.00", "A-1002"]}, SEEN, False),
        ({"output_matches": r"\$\d+\.\d\d refunded"}, SEEN, True),
        ({"output_matches": r"^Sorry"}, SEEN, False),
        ({"output_equals": "Done: $40.00 refunded for order A-1001."}, SEEN, True),
        ({"output_equals": "Done."}, SEEN, False),
        ({"tools_called": ["issue_refund"]}, SEEN, True),
        ({"tools_called": ["issue_refund"]}, replace(SEEN, tools=("lookup_order",)), False),
        ({"tools_called_exactly": ["lookup_order", "issue_refund"]}, SEEN, True),
        ({"tools_called_exactly": ["issue_refund", "lookup_order"]}, SEEN, False),
        ({"tools_called_exactly": ["lookup_order"]}, SEEN, False),
        ({"tools_not_called": ["issue_refund"]}, replace(SEEN, tools=("lookup_order",)), True),
        ({"tools_not_called": ["issue_refund"]}, SEEN, False),
        ({"max_cost_usd": 0.003}, SEEN, True),
        ({"max_cost_usd": 0.002}, SEEN, False),
        ({"max_cost_usd": 1}, replace(SEEN, cost_usd=None), False),
        ({"max_tool_calls": 2}, SEEN, True),
        ({"max_tool_calls": 1}, SEEN, False),
        ({"escalates": True}, WAITING, True),
        ({"escalates": True}, SEEN, False),
        ({"escalates": False}, SEEN, True),
        ({"escalates": False, "status": "waiting_human"}, WAITING, False),
    ],
)
def test_each_check_passes_and_fails_when_it_should(
    expect: dict[str, Any], seen: Observation, passes: bool
) -> None:
    """A check holds exactly when the observed run satisfies it; without a status, success is expected."""
    failures = Expect.model_validate(expect).failures(seen)
    assert (not failures) is passes, failures


def test_failures_say_what_was_wrong() -> None:
    """Every failed check is one sentence naming what was seen and what was expected."""
    expect = Expect.model_validate(
        {"status": "succeeded", "tools_called": ["issue_refund"], "escalates": False}
    )
    failures = expect.failures(replace(WAITING, error="needs approval"))
    assert failures == [
        "status is waiting_human, expected succeeded (needs approval)",
        "not called: issue_refund",
        "the run escalated to a person",
    ]


# ---- evaluate: real runs on real SQLite stores ----------------------------------------------------


@tool(side_effect="read")
def lookup(order_id: str) -> dict[str, object]:
    """Look up an order."""
    return {"order_id": order_id, "status": "shipped"}


def billed_model(cost_usd: float) -> FunctionModel:
    """Looks the order up once, then answers; every turn costs `cost_usd`."""

    def answer(request: ModelRequest) -> ModelResponse:
        usage = Usage(10, 5, cost_usd)
        if request.turn == 0:
            return ModelResponse("", (ToolCall("call_0_0", "lookup", {"order_id": "A-7"}, "{}"),), usage)
        return ModelResponse("Order A-7 has shipped.", usage=usage)

    return FunctionModel(answer)


async def test_evaluate_runs_each_case_on_its_own_store_and_scores_it(tmp_path: Path) -> None:
    """Each case is a real run on a fresh SQLite file; status, cost, tools, latency come from its record."""
    agent = Agent("orders", model=billed_model(0.01), tools=[lookup])
    cases = [
        Case(id="shipped", input="where is A-7?", expect=Expect(output_contains=("shipped",))),
        Case(
            id="scripted",
            input="hello",
            model=(ScriptedTurn(content="Hi!"),),
            expect=Expect(max_tool_calls=0),
        ),
        Case(id="wrong", input="where is A-7?", expect=Expect(tools_not_called=("lookup",))),
    ]
    report = await evaluate(agent, cases, store_dir=tmp_path / "runs")
    assert [r.passed for r in report.results] == [True, True, False]
    shipped, scripted, _ = report.results
    assert shipped.observed.tools == ("lookup",)
    assert shipped.observed.cost_usd == pytest.approx(0.02)
    assert shipped.observed.latency_ms > 0
    assert scripted.observed.output == "Hi!"
    assert scripted.observed.cost_usd == 0.0
    assert report.success_rate == pytest.approx(2 / 3)
    assert report.mean_tool_calls == pytest.approx(2 / 3)
    stores = sorted(p.name for p in (tmp_path / "runs").glob("*.db"))
    assert stores == ["000-shipped.db", "001-scripted.db", "002-wrong.db"]

    async with Runtime(f"sqlite:///{tmp_path / 'runs' / '000-shipped.db'}") as runtime:
        assert (await runtime.store.get_run(shipped.observed.run_id)).status == RunStatus.SUCCEEDED


async def test_evaluate_checks_every_model_before_running_any_case(tmp_path: Path) -> None:
    """An agent without a model fails on the case that lacks one, before any case has run."""
    agent = Agent("no-model", tools=[lookup])
    cases = [
        Case(id="scripted", input="hi", model=(ScriptedTurn(content="Hi!"),)),
        Case(id="bare", input="hi"),
    ]
    with pytest.raises(ConfigurationError, match="has no model"):
        await evaluate(agent, cases, store_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


# ---- compare and the gate --------------------------------------------------------------------------


def report_of(*seen: Observation, passed: tuple[bool, ...] | None = None) -> Report:
    oks = passed or (True,) * len(seen)
    results = tuple(
        CaseResult(f"c{n}", each, () if ok else ("failed",))
        for n, (each, ok) in enumerate(zip(seen, oks, strict=True))
    )
    return Report("agent", "1", None, results)


def test_identical_reports_do_not_regress() -> None:
    """A candidate equal to its baseline regresses on no metric."""
    report = report_of(SEEN, WAITING, SEEN)
    comparison = compare(report, report)
    assert not comparison.regressed
    assert [m.name for m in comparison.metrics] == [
        "success_rate",
        "mean_cost_usd",
        "p95_latency_ms",
        "escalation_rate",
        "mean_tool_calls",
    ]
    assert gate_failures(report, comparison) == []


def test_more_cost_escalations_and_failures_are_regressions() -> None:
    """Higher cost, more escalations and fewer successes beyond tolerance are flagged, with reasons."""
    baseline = report_of(SEEN, SEEN, SEEN)
    candidate = report_of(replace(SEEN, cost_usd=0.004), WAITING, SEEN, passed=(True, False, True))
    comparison = compare(candidate, baseline)
    regressed = {m.name for m in comparison.metrics if m.regressed}
    assert regressed == {"success_rate", "mean_cost_usd", "escalation_rate"}
    assert comparison.newly_failing == ("c1",)
    reasons = gate_failures(candidate, comparison)
    assert any(r.startswith("escalation_rate regressed: 0.0% -> 33.3%") for r in reasons)


def test_tolerances_decide_what_counts() -> None:
    """A 10 % cost rise is within the default tolerance and 20 % is not; a wider tolerance allows it."""
    baseline = report_of(replace(SEEN, cost_usd=0.010))
    assert not compare(report_of(replace(SEEN, cost_usd=0.011)), baseline).regressed
    pricier = report_of(replace(SEEN, cost_usd=0.012))
    assert compare(pricier, baseline).regressed
    assert not compare(pricier, baseline, Tolerances(cost_increase_pct=25)).regressed


def test_latency_noise_and_unknown_costs_are_not_regressions() -> None:
    """p95 latency must grow by the percentage and by latency_noise_ms; unknown costs are not compared."""
    baseline = report_of(replace(SEEN, latency_ms=5.0, cost_usd=None))
    doubled = report_of(replace(SEEN, latency_ms=10.0, cost_usd=0.5))
    assert not compare(doubled, baseline).regressed
    slow = report_of(replace(SEEN, latency_ms=80.0))
    latency = compare(slow, baseline).metrics[2]
    assert latency.regressed
    assert latency.change == pytest.approx(1500.0)


def test_a_cost_from_zero_is_a_regression() -> None:
    """Against a free baseline any cost is a regression; its relative change is unknown (None)."""
    metric = compare(report_of(SEEN), report_of(replace(SEEN, cost_usd=0.0))).metrics[1]
    assert metric.regressed
    assert metric.change is None


def test_min_success_rate_gate() -> None:
    """Without a baseline the gate is the success rate: under the minimum, it says how many failed."""
    report = report_of(SEEN, SEEN, SEEN, SEEN, passed=(True, True, True, False))
    assert gate_failures(report, None, min_success_rate=0.75) == []
    [reason] = gate_failures(report, None, min_success_rate=1.0)
    assert "1 of 4 cases failed" in reason


def test_tolerances_parse_names_and_values() -> None:
    """`NAME=VALUE` pairs set tolerances; unknown names and negative values are configuration errors."""
    parsed = Tolerances.parse(["cost_increase_pct=25", " latency_noise_ms = 5 "])
    assert parsed == Tolerances(cost_increase_pct=25.0, latency_noise_ms=5.0)
    with pytest.raises(ConfigurationError, match="success_drop_pp"):
        Tolerances.parse(["cost=25"])
    with pytest.raises(ConfigurationError, match=">= 0"):
        Tolerances.parse(["cost_increase_pct=-1"])
    with pytest.raises(ConfigurationError, match="not a number"):
        Tolerances.parse(["cost_increase_pct=lots"])


# ---- the CLI ---------------------------------------------------------------------------------------

# Offline runs take milliseconds; a stray pause must not read as a latency regression in these tests.
CALM = ("--tolerance", "latency_noise_ms=1000")


@pytest.fixture
def at_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the example agents are importable as examples.evals.agent
    monkeypatch.setenv("COLUMNS", "160")  # rich wraps to the terminal; keep names whole for the asserts
    monkeypatch.delenv("TETHER_MODEL", raising=False)


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["eval", *args])
    return result.exit_code, result.stdout


@pytest.mark.usefixtures("at_root")
def test_cli_identical_candidate_passes() -> None:
    """The same agent as candidate and baseline passes the gate: exit 0, a table per case and metric."""
    code, out = invoke(str(EXAMPLE), "--agent", f"{AGENTS}:support", "--baseline", f"{AGENTS}:support", *CALM)
    assert code == 0, out
    assert "refund-large-needs-approval" in out
    assert "escalation_rate" in out
    assert "gate passed (7/7 cases passed)" in out


@pytest.mark.usefixtures("at_root")
def test_cli_candidate_that_escalates_more_exits_one() -> None:
    """A candidate asking a person for more refunds regresses on escalations (and success): exit 1."""
    code, out = invoke(
        str(EXAMPLE),
        "--agent",
        f"{AGENTS}:support_strict",
        "--baseline",
        f"{AGENTS}:support",
        "--json",
        *CALM,
    )
    assert code == 1, out
    data = json.loads(out)
    metrics = {m["name"]: m for m in data["comparison"]["metrics"]}
    assert metrics["escalation_rate"]["regressed"]
    assert metrics["escalation_rate"]["change"] == pytest.approx(100 / 7)
    assert data["comparison"]["newly_failing"] == ["refund-medium"]
    assert data["gate"]["passed"] is False


@pytest.mark.usefixtures("at_root")
def test_cli_candidate_that_costs_more_exits_one_unless_tolerated() -> None:
    """A candidate on a pricier model regresses on cost only; a wider cost tolerance lets it pass."""
    args = (
        str(EXAMPLE),
        "--agent",
        f"{AGENTS}:support_pricey",
        "--baseline",
        f"{AGENTS}:support",
        "--json",
        *CALM,
    )
    code, out = invoke(*args)
    assert code == 1, out
    data = json.loads(out)
    assert [m["name"] for m in data["comparison"]["metrics"] if m["regressed"]] == ["mean_cost_usd"]
    assert data["candidate"]["summary"]["mean_cost_usd"] == pytest.approx(
        2 * data["baseline"]["summary"]["mean_cost_usd"]
    )
    code, out = invoke(*args, "--tolerance", "cost_increase_pct=100")
    assert code == 0, out


@pytest.mark.usefixtures("at_root")
def test_cli_json_is_one_object_with_reports_comparison_and_gate() -> None:
    """`--json` prints one object: each case's scores, the summary, the tolerances and the verdict."""
    code, out = invoke(str(EXAMPLE), "--agent", f"{AGENTS}:support", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["baseline"] is None
    assert data["comparison"] is None
    assert data["gate"] == {"passed": True, "min_success_rate": 1.0, "reasons": []}
    assert data["tolerances"]["cost_increase_pct"] == 10.0
    candidate = data["candidate"]
    assert candidate["target"] == f"{AGENTS}:support"
    assert candidate["summary"]["cases"] == 7
    case = candidate["cases"][0]
    assert case["id"] == "refund-small"
    assert case["tools"] == ["lookup_order", "issue_refund"]
    assert set(case) >= {"passed", "status", "cost_usd", "latency_ms", "tool_calls", "escalated", "run_id"}


@pytest.mark.usefixtures("at_root")
def test_cli_without_baseline_gates_on_success(tmp_path: Path) -> None:
    """Without a baseline every case must pass (exit 1 otherwise); --min-success lowers the bar."""
    dataset = write(
        tmp_path / "cases.jsonl",
        {"id": "ok", "input": "Where is my order A-1001?", "expect": {"output_contains": "kettle"}},
        {"id": "bad", "input": "Where is my order A-1001?", "expect": {"output_contains": "teapot"}},
    )
    code, out = invoke(str(dataset), "--agent", f"{AGENTS}:support")
    assert code == 1, out
    assert "bad: output does not contain 'teapot'" in out
    assert "gate failed (1/2 cases passed)" in out
    code, out = invoke(str(dataset), "--agent", f"{AGENTS}:support", "--min-success", "0.5")
    assert code == 0, out


@pytest.mark.usefixtures("at_root")
def test_cli_model_and_baseline_model_compare_one_agent_on_two_models(tmp_path: Path) -> None:
    """--model and --baseline-model run the same agent on two models; the worse one as candidate exits 1."""
    dataset = write(
        tmp_path / "cases.jsonl",
        {"id": "status", "input": "Where is my order A-1001?", "expect": {"output_contains": "A-1001"}},
    )
    good, shrug = tmp_path / "good.json", tmp_path / "shrug.json"
    good.write_text(json.dumps([{"content": "Order A-1001 was delivered 3 days ago."}]))
    shrug.write_text(json.dumps([{"content": "Sorry, I cannot help with that."}]))
    base = (str(dataset), "--agent", f"{AGENTS}:support", "--json", *CALM)
    code, out = invoke(*base, "--model", f"scripted:{good}", "--baseline-model", f"scripted:{shrug}")
    assert code == 0, out
    data = json.loads(out)
    assert data["candidate"]["model"] == f"scripted:{good}"
    assert data["baseline"]["model"] == f"scripted:{shrug}"
    assert data["comparison"]["newly_passing"] == ["status"]
    code, out = invoke(*base, "--model", f"scripted:{shrug}", "--baseline-model", f"scripted:{good}")
    assert code == 1, out
    assert json.loads(out)["gate"]["reasons"] == ["success_rate regressed: 100.0% -> 0.0% (tolerance -2 pp)"]


@pytest.mark.usefixtures("at_root")
def test_cli_runs_dir_keeps_every_case_store(tmp_path: Path) -> None:
    """--runs-dir keeps one SQLite store per case and role; a non-empty folder is refused up front."""
    runs = tmp_path / "runs"
    both = ("--agent", f"{AGENTS}:support", "--baseline", f"{AGENTS}:support")
    code, out = invoke(str(EXAMPLE), *both, "--runs-dir", str(runs), *CALM)
    assert code == 0, out
    assert len(list((runs / "candidate").glob("*.db"))) == 7
    assert len(list((runs / "baseline").glob("*.db"))) == 7
    code, _ = invoke(str(EXAMPLE), "--agent", f"{AGENTS}:support", "--runs-dir", str(runs))
    assert code == 2


@pytest.mark.usefixtures("at_root")
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("missing.jsonl", "--agent", f"{AGENTS}:support"), "does not exist"),
        ((str(EXAMPLE), "--agent", "examples.evals.agent:nobody"), "nobody"),
        ((str(EXAMPLE), "--agent", f"{AGENTS}:support", "--baseline", "nowhere:agent"), "nowhere"),
        (
            (str(EXAMPLE), "--agent", f"{AGENTS}:support", "--baseline-model", "nope:x"),
            "unknown model provider",
        ),
        ((str(EXAMPLE), "--agent", f"{AGENTS}:support", "--tolerance", "speed=1"), "success_drop_pp"),
    ],
)
def test_cli_bad_input_exits_two(args: tuple[str, ...], needle: str) -> None:
    """Bad input exits 2 with the problem on stderr, before any case runs."""
    result = CliRunner().invoke(app, ["eval", *args])
    assert result.exit_code == 2, result.output
    assert needle in result.stderr


@pytest.mark.usefixtures("at_root")
def test_cli_malformed_line_exits_two_naming_it(tmp_path: Path) -> None:
    """A malformed dataset line exits 2 and the message names the file and the line."""
    dataset = write(tmp_path / "cases.jsonl", {"input": "a"}, '{"input": "b",}')
    result = CliRunner().invoke(app, ["eval", str(dataset), "--agent", f"{AGENTS}:support"])
    assert result.exit_code == 2
    assert "line 2: not valid JSON" in result.stderr.replace("\n", " ")
