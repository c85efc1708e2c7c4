"""`tether eval`: a dataset of cases through a candidate agent, compared with a baseline (docs/evals.md)."""

from __future__ import annotations

import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from tether.cli_support import ConfigOption, JsonOption
from tether.cli_support import console as _console
from tether.cli_support import err as _err
from tether.cli_support import importable_cwd as _importable_cwd
from tether.cli_support import run_async as _run_async
from tether.cli_support import settings as _settings
from tether.config import open_runtime
from tether.errors import ConfigurationError
from tether.runtime import Runtime, load_target


def eval_command(
    dataset: Annotated[
        Path, typer.Argument(help="Cases: JSONL (one per line) or JSON (a list); see docs/evals.md.")
    ],
    agent: Annotated[str, typer.Option("--agent", help="module:attribute naming the candidate Agent.")],
    model: Annotated[
        str | None, typer.Option(help="The candidate's model spec or route, for cases without their own.")
    ] = None,
    baseline: Annotated[
        str | None, typer.Option("--baseline", help="module:attribute of the agent to compare against.")
    ] = None,
    baseline_model: Annotated[
        str | None,
        typer.Option("--baseline-model", help="Compare against this model (on --baseline, else on --agent)."),
    ] = None,
    tolerance: Annotated[
        list[str] | None,
        typer.Option(
            "--tolerance",
            metavar="NAME=VALUE",
            help="How much worse than the baseline the candidate may be, e.g. cost_increase_pct=25 "
            "(repeatable; defaults in docs/evals.md).",
        ),
    ] = None,
    min_success: Annotated[
        float | None,
        typer.Option(
            "--min-success",
            min=0.0,
            max=1.0,
            help="Fail under this success rate, 0 to 1 (default 1 without a baseline; unchecked with one).",
        ),
    ] = None,
    runs_dir: Annotated[
        Path | None, typer.Option("--runs-dir", help="Keep each case's run store here (an empty folder).")
    ] = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Run a dataset of cases against an agent, score each run, and compare with a baseline.

    The baseline is another agent (--baseline TARGET), the same agent on another model
    (--baseline-model SPEC), or another agent on another model (both). A case's own model (in the
    dataset) wins over --model and --baseline-model. Exit 0 when the gate passes, 1 when the candidate
    regresses beyond the tolerances or its success rate is under --min-success, 2 for bad input.
    """

    from rich.progress import Progress

    from tether.evals import Report, Tolerances, check, compare, evaluate, gate_failures, load_dataset

    settings = _settings(config, model=model)
    _importable_cwd()
    try:
        tolerances = Tolerances.parse(tolerance or [])
        cases = load_dataset(dataset)
        candidate_agent = load_target(agent)
        baseline_agent = load_target(baseline) if baseline else candidate_agent
        if runs_dir is not None and runs_dir.exists() and (not runs_dir.is_dir() or any(runs_dir.iterdir())):
            raise ConfigurationError(f"--runs-dir {str(runs_dir)!r} must be an empty folder")
    except ConfigurationError as exc:
        raise _err(str(exc)) from None
    has_baseline = baseline is not None or baseline_model is not None
    roles = [("candidate", candidate_agent, settings.model)]
    if has_baseline:
        roles.append(("baseline", baseline_agent, baseline_model or settings.model))
    stderr = Console(stderr=True, highlight=False)
    if (settings.model or baseline_model) and all(case.model is not None for case in cases):
        stderr.print("note: every case sets its own model, so --model and --baseline-model change nothing")

    def runtime_for(url: str) -> AbstractAsyncContextManager[Runtime]:
        return open_runtime(settings.model_copy(update={"db": url}))

    async def go() -> list[Report]:
        for _, each, spec in roles:  # everything checked before anything runs
            await check(each, cases, model=spec, runtime=runtime_for)
        reports = []
        with Progress(console=stderr, transient=True, disable=as_json or not stderr.is_terminal) as progress:
            task = progress.add_task("evaluating", total=len(cases) * len(roles))
            for role, each, spec in roles:
                progress.update(task, description=role)
                report = await evaluate(
                    each,
                    cases,
                    model=spec,
                    runtime=runtime_for,
                    store_dir=runs_dir / role if runs_dir is not None else None,
                    on_result=lambda _: progress.advance(task),
                )
                reports.append(report)
        return reports

    reports = _run_async(go)
    comparison = compare(reports[0], reports[1], tolerances) if has_baseline else None
    min_rate = min_success if min_success is not None else (None if has_baseline else 1.0)
    reasons = gate_failures(reports[0], comparison, min_success_rate=min_rate)
    payload: dict[str, Any] = {"dataset": str(dataset), "candidate": None, "baseline": None}
    for (role, _, _), target, report in zip(roles, (agent, baseline or agent), reports, strict=False):
        payload[role] = {"target": target, **report.to_dict()}
    payload["comparison"] = comparison.to_dict() if comparison else None
    payload["tolerances"] = tolerances.to_dict()
    payload["gate"] = {"passed": not reasons, "min_success_rate": min_rate, "reasons": reasons}
    if as_json:
        typer.echo(json.dumps(payload))
    else:
        _print_eval(payload)
    raise typer.Exit(1 if reasons else 0)


def _print_eval(payload: dict[str, Any]) -> None:
    """The `tether eval` tables, from the same object `--json` prints."""
    from rich.text import Text

    from tether.evals import format_metric

    console = _console()
    candidate, baseline, comparison = payload["candidate"], payload["baseline"], payload["comparison"]

    def label(report: dict[str, Any]) -> str:
        on = f" on {report['model']}" if report["model"] else ""
        return f"{report['target']} (v{report['agent_version']}){on}"

    before = {case["id"]: case for case in baseline["cases"]} if baseline else {}
    table = Table(title=label(candidate))
    table.add_column("case", no_wrap=True)
    columns = ["passed", "status", "cost", "latency ms", "tool calls"]
    for column in [*columns, "baseline"] if baseline else columns:
        table.add_column(column)
    for case in candidate["cases"]:
        row: list[str | Text] = [
            Text(case["id"]),
            "yes" if case["passed"] else "[red]no[/]",
            case["status"],
            format_metric("cost_usd", case["cost_usd"]),
            f"{case['latency_ms']:.1f}",
            str(case["tool_calls"]),
        ]
        if case["id"] in before:
            old = before[case["id"]]
            row.append("passed" if old["passed"] else f"failed ({old['status']})")
        table.add_row(*row)
    console.print(table)
    for case in candidate["cases"]:
        for failure in case["failures"]:
            console.print(Text(f"{case['id']}: {failure}"), style="red")
    if comparison is None:
        summary = Table("metric", "value")
        for name, value in candidate["summary"].items():
            summary.add_row(name, str(value) if name in ("cases", "passed") else format_metric(name, value))
        console.print(summary)
    else:
        metrics = Table(title=f"vs {label(baseline)}")
        metrics.add_column("metric", no_wrap=True)
        for column in ("baseline", "candidate", "change", "tolerance", "verdict"):
            metrics.add_column(column)
        for metric in comparison["metrics"]:
            change = "n/a" if metric["change"] is None else f"{metric['change']:+.1f} {metric['unit']}"
            sign = "-" if metric["name"] == "success_rate" else "+"
            allowed = f"{sign}{metric['tolerance']:g} {metric['unit']}"
            if metric["name"] == "p95_latency_ms":
                allowed += f" and +{payload['tolerances']['latency_noise_ms']:g} ms"
            metrics.add_row(
                metric["name"],
                format_metric(metric["name"], metric["baseline"]),
                format_metric(metric["name"], metric["candidate"]),
                change,
                allowed,
                "[bold red]REGRESSED[/]" if metric["regressed"] else "ok",
            )
        console.print(metrics)
        if comparison["newly_failing"]:
            console.print(Text(f"newly failing: {', '.join(comparison['newly_failing'])}"))
    passed = f"{candidate['summary']['passed']}/{candidate['summary']['cases']} cases passed"
    if payload["gate"]["passed"]:
        console.print(f"[green]gate passed[/] ({passed})")
        return
    console.print(f"[bold red]gate failed[/] ({passed}):")
    for reason in payload["gate"]["reasons"]:
        console.print(Text(f"  - {reason}"))
