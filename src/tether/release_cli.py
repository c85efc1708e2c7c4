"""`tether canary` and `tether shadow`: ship a new agent version without fear (added to `tether.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tether.cli_support import ConfigOption, DbOption, JsonOption, err, run_async, settings
from tether.errors import ConfigurationError
from tether.runtime import Runtime
from tether.runtime.canary import CanaryReport, CanaryThresholds
from tether.runtime.shadow import ShadowReport

canary_app = typer.Typer(
    help="Canary releases: a sticky share of runs on a new version, rolled back by itself when worse.",
    no_args_is_help=True,
)
shadow_app = typer.Typer(
    help="Shadow runs: a new version beside production, without effects.", no_args_is_help=True
)

AgentArgument = Annotated[str, typer.Argument(help="The agent's name.")]


def _store_url(config: Path | None, db: str | None) -> str:
    return settings(config, db=db).db


def _run(url: str, work: Any) -> Any:
    async def go() -> Any:
        async with Runtime(url) as runtime:
            return await work(runtime)

    return run_async(go)


@canary_app.command("start")
def canary_start(
    agent: AgentArgument,
    candidate: Annotated[str, typer.Option("--candidate", help="The new version.")],
    baseline: Annotated[str, typer.Option("--baseline", help="The version in production.")],
    share: Annotated[float, typer.Option(help="Fraction of principals routed to the candidate.")] = 0.1,
    min_runs: Annotated[int, typer.Option(help="Candidate runs settled before any verdict.")] = 20,
    max_completion_drop: Annotated[float, typer.Option(help="Completion rate drop allowed.")] = 0.05,
    max_escalation_rise: Annotated[float, typer.Option(help="Escalation rate rise allowed.")] = 0.10,
    max_error_rise: Annotated[float, typer.Option(help="Error rate rise allowed.")] = 0.05,
    max_cost_ratio: Annotated[float, typer.Option(help="Mean cost allowed, times the baseline's.")] = 1.5,
    max_latency_ratio: Annotated[
        float, typer.Option(help="p95 latency allowed, times the baseline's.")
    ] = 1.5,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Route a share of the agent's new runs (sticky per principal) to the candidate version; workers
    that know both versions run them, and roll the candidate back when it does worse."""
    try:
        thresholds = CanaryThresholds(
            min_runs=min_runs,
            max_completion_drop=max_completion_drop,
            max_escalation_rise=max_escalation_rise,
            max_error_rise=max_error_rise,
            max_cost_ratio=max_cost_ratio,
            max_latency_ratio=max_latency_ratio,
        )
    except ConfigurationError as exc:
        raise err(str(exc)) from None

    async def work(runtime: Runtime) -> Any:
        return await runtime.canaries.start(
            agent, candidate, baseline_version=baseline, share=share, thresholds=thresholds
        )

    canary = _run(_store_url(config, db), work)
    if as_json:
        typer.echo(json.dumps(canary.to_dict()))
    else:
        Console(highlight=False).print(
            f"canary {canary.id}: {share:.0%} of {agent}'s principals on v{candidate} (baseline v{baseline})",
            markup=False,
        )


@canary_app.command("status")
def canary_status(
    agent: AgentArgument,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Compare the candidate with the baseline; judging rolls a degraded candidate back at once."""

    async def work(runtime: Runtime) -> CanaryReport | None:
        report = await runtime.canaries.check(agent)
        if report is None:  # none running or promoted: show the latest one, if any
            latest = await runtime.store.list_canaries(agent_name=agent, limit=1)
            return await runtime.canaries.report(latest[0]) if latest else None
        return report

    report = _run(_store_url(config, db), work)
    if report is None:
        raise err(f"agent {agent!r} has no canary; start one with `tether canary start`", 1)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    console = Console(highlight=False)
    canary = report.canary
    console.print(
        f"canary {canary.id} of {canary.agent_name}: v{canary.candidate_version} on {canary.share:.0%} "
        f"— {report.verdict}" + (f" ({canary.reason})" if canary.reason else ""),
        markup=False,
    )
    table = Table("", "runs", "completion", "escalation", "errors", "mean cost", "p95 latency")
    for label, score in (("baseline", report.baseline), ("candidate", report.candidate)):
        table.add_row(
            f"{label} v{score.version}",
            str(score.settled),
            _pct(score.completion_rate),
            _pct(score.escalation_rate),
            _pct(score.error_rate),
            "-" if score.mean_cost_usd is None else f"${score.mean_cost_usd:.4f}",
            "-" if score.p95_latency_ms is None else f"{score.p95_latency_ms:.0f} ms",
        )
    console.print(table)
    for breach in report.breaches:
        console.print(f"  worse: {breach}", markup=False)


@canary_app.command("promote")
def canary_promote(
    agent: AgentArgument,
    reason: Annotated[str, typer.Option(help="Why; kept with the canary.")] = "promoted from the CLI",
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Send every new run of the agent to the candidate version."""
    _end(agent, "promoted", reason, config, db)


@canary_app.command("rollback")
def canary_rollback(
    agent: AgentArgument,
    reason: Annotated[str, typer.Option(help="Why; kept with the canary.")] = "rolled back from the CLI",
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Send every new run of the agent back to the baseline version."""
    _end(agent, "rolled_back", reason, config, db)


def _end(agent: str, status: str, reason: str, config: Path | None, db: str | None) -> None:
    canary = _run(_store_url(config, db), lambda runtime: runtime.canaries.end(agent, status, reason))
    version = canary.candidate_version if status == "promoted" else canary.baseline_version
    done = status.replace("_", " ")
    Console(highlight=False).print(
        f"canary {canary.id} {done}: new runs of {agent} take v{version}", markup=False
    )


@shadow_app.command("report")
def shadow_report(
    agent: AgentArgument,
    limit: Annotated[int, typer.Option(help="The latest this many shadow runs.")] = 200,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Compare the agent's shadow runs with their production runs: outcome, output and writes."""
    report: ShadowReport = _run(
        _store_url(config, db), lambda runtime: runtime.shadow_report(agent, limit=limit)
    )
    summary = report.to_dict()
    if as_json:
        typer.echo(json.dumps(summary))
        return
    console = Console(highlight=False)
    console.print(
        f"{summary['compared']} shadow runs of {agent} compared ({summary['pending']} not settled yet): "
        f"same outcome {_pct(summary['same_outcome'])}, same answer {_pct(summary['same_output'])}, "
        f"same writes {_pct(summary['same_writes'])}",
        markup=False,
    )
    table = Table("production run", "shadow run", "outcome", "answer", "writes")
    for pair in report.pairs:
        table.add_row(
            pair.production.id,
            pair.shadow.id,
            f"{pair.production.status} / {pair.shadow.status}",
            "same" if pair.same_output else "differs",
            "same" if pair.same_writes else "differs",
        )
    console.print(table)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
