"""Evaluation harness: a dataset of cases → real runs → scores → a comparison with a baseline, as a gate.

A case is an input and what its run must show (`Expect`). `evaluate` runs every case on its own fresh
SQLite store and reads the run's events to score it; `compare` says, metric by metric, whether a
candidate is worse than a baseline beyond `Tolerances`; `gate_failures` turns that into a verdict.
Datasets are JSONL (one case per line) or JSON (a list of cases); YAML is not supported because
PyYAML is not a tether dependency.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator

from tether.agent import Agent
from tether.errors import ConfigurationError
from tether.models.scripted import ScriptedModel, ScriptedTurn, load_script
from tether.runtime import Runtime
from tether.types import EventKind, JsonDict, RunStatus

__all__ = [
    "Case",
    "CaseResult",
    "Comparison",
    "Expect",
    "MetricComparison",
    "Observation",
    "Report",
    "RuntimeFactory",
    "Tolerances",
    "check",
    "compare",
    "evaluate",
    "format_metric",
    "gate_failures",
    "load_dataset",
]

# Opens a runtime on a store URL; `Runtime` itself is one, the CLI passes one wired from settings.
RuntimeFactory = Callable[[str], AbstractAsyncContextManager[Runtime]]
DATASET_SUFFIXES = (".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class Observation:
    """What one run did, read from its record. `tools` has one name per tool.result event, in order."""

    run_id: str
    status: RunStatus
    output: str | None
    error: str | None
    cost_usd: float | None  # None: the price of a model it used is unknown
    latency_ms: float  # wall time of the run, start to end (or to its pause for a person)
    tools: tuple[str, ...]
    escalated: bool  # it waits for a person, was handed to one, or asked one anything

    @property
    def tool_calls(self) -> int:
        return len(self.tools)


class Expect(BaseModel):
    """The checks a case's run must pass; every check given must hold. Unless `status` is given (or
    `escalates` is true), the run must also have succeeded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: RunStatus | None = None
    output_contains: tuple[str, ...] = ()  # each of these substrings (one string is accepted too)
    output_matches: str | None = None  # a regular expression found anywhere in the output (re.search)
    output_equals: str | None = None
    tools_called: tuple[str, ...] = ()  # each was called at least once; others may be too
    tools_called_exactly: tuple[str, ...] | None = None  # every call, in order
    tools_not_called: tuple[str, ...] = ()
    max_cost_usd: float | None = Field(default=None, ge=0)
    max_tool_calls: int | None = Field(default=None, ge=0)
    escalates: StrictBool | None = None

    @field_validator("output_contains", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("output_matches")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from None
        return value

    def failures(self, seen: Observation) -> list[str]:
        """One sentence per check the observed run fails; empty when it passes."""
        problems: list[str] = []
        wanted = self.status or (None if self.escalates else RunStatus.SUCCEEDED)
        if wanted is not None and seen.status != wanted:
            why = f" ({_clip(seen.error)})" if seen.error else ""
            problems.append(f"status is {seen.status}, expected {wanted}{why}")
        output = seen.output or ""
        problems += [
            f"output does not contain {text!r}" for text in self.output_contains if text not in output
        ]
        if self.output_matches is not None and re.search(self.output_matches, output) is None:
            problems.append(f"output does not match /{self.output_matches}/")
        if self.output_equals is not None and output != self.output_equals:
            problems.append(f"output is {_clip(output)!r}, expected {_clip(self.output_equals)!r}")
        missing = [name for name in self.tools_called if name not in seen.tools]
        if missing:
            problems.append(f"not called: {', '.join(missing)}")
        if self.tools_called_exactly is not None and seen.tools != self.tools_called_exactly:
            problems.append(
                f"tool calls were [{', '.join(seen.tools)}], expected exactly "
                f"[{', '.join(self.tools_called_exactly)}]"
            )
        called = [name for name in self.tools_not_called if name in seen.tools]
        if called:
            problems.append(f"called, and must not be: {', '.join(called)}")
        if self.max_cost_usd is not None:
            if seen.cost_usd is None:
                problems.append(f"cost is unknown (a model has no price), limit ${self.max_cost_usd:g}")
            elif seen.cost_usd > self.max_cost_usd:
                problems.append(f"cost ${seen.cost_usd:.6f} is over ${self.max_cost_usd:g}")
        if self.max_tool_calls is not None and seen.tool_calls > self.max_tool_calls:
            problems.append(f"{seen.tool_calls} tool calls, at most {self.max_tool_calls} expected")
        if self.escalates is not None and seen.escalated != self.escalates:
            problems.append("the run escalated to a person" if seen.escalated else "the run did not escalate")
        return problems


class Case(BaseModel):
    """One input and what its run must show. `model` (a model spec, or a script as a list of turns in
    the `scripted:` format) replaces the agent's model for this case, so a dataset can run offline."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    input: str = Field(min_length=1)
    principal: str | None = None
    description: str | None = None
    expect: Expect = Field(default_factory=Expect)
    model: str | tuple[ScriptedTurn, ...] | None = None

    @field_validator("model", mode="plain")
    @classmethod
    def _spec_or_script(cls, value: object) -> str | tuple[ScriptedTurn, ...] | None:
        if value is None:
            return None
        if isinstance(value, str):
            provider, sep, name = value.partition(":")
            if not (provider and sep and name):
                raise ValueError(f"{value!r} must be a model spec PROVIDER:NAME, e.g. scripted:turns.json")
            return value
        if isinstance(value, list | tuple) and value:
            turns = []
            for index, item in enumerate(value):
                try:
                    turns.append(ScriptedTurn.model_validate(item))
                except ValidationError as exc:
                    raise ValueError(f"turn {index}: {_first_error(exc, ScriptedTurn)}") from None
            return tuple(turns)
        raise ValueError("must be a model spec (a string) or a script (a non-empty list of turns)")


def load_dataset(path: str | Path) -> list[Case]:
    """Read cases from JSONL (one JSON object per line; blank lines skipped) or JSON (a list).

    Every problem is a ConfigurationError naming the file and the line (JSONL) or case number (JSON);
    `scripted:` paths are resolved against the dataset's folder and their scripts checked here.
    """
    file = Path(path)
    name = str(file)
    suffix = file.suffix.lower()
    if suffix in (".yaml", ".yml"):
        raise ConfigurationError(
            f"dataset {name!r}: YAML is not supported (PyYAML is not a tether dependency); "
            "write JSONL (one case per line) or JSON (a list of cases)"
        )
    if suffix not in DATASET_SUFFIXES:
        raise ConfigurationError(f"dataset {name!r} must end in {', '.join(DATASET_SUFFIXES)}")
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(f"dataset {name!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"dataset {name!r} cannot be read as UTF-8 text: {exc}") from None
    entries: list[tuple[str, str, object]] = []  # (where, default id, raw case)
    if suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigurationError(
                f"dataset {name!r}, line {exc.lineno}: not valid JSON: {exc.msg}"
            ) from None
        if not isinstance(raw, list):
            raise ConfigurationError(f"dataset {name!r} must hold a JSON list of cases")
        entries = [(f"case {n}", f"case-{n}", item) for n, item in enumerate(raw, start=1)]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entries.append((f"line {number}", f"line-{number}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ConfigurationError(
                    f"dataset {name!r}, line {number}: not valid JSON: {exc.msg} (column {exc.colno})"
                ) from None
    cases: list[Case] = []
    first_seen: dict[str, str] = {}
    for where, default_id, raw_case in entries:
        prefix = f"dataset {name!r}, {where}"
        if not isinstance(raw_case, dict):
            raise ConfigurationError(f"{prefix}: a case must be a JSON object, not {type(raw_case).__name__}")
        try:
            case = Case.model_validate({"id": default_id, **raw_case})
        except ValidationError as exc:
            raise ConfigurationError(f"{prefix}: {_first_error(exc, Case)}") from None
        if case.id in first_seen:
            raise ConfigurationError(
                f"{prefix}: case id {case.id!r} is already used on {first_seen[case.id]}"
            )
        first_seen[case.id] = where
        cases.append(_resolve_script(case, file.parent, prefix))
    if not cases:
        raise ConfigurationError(f"dataset {name!r} holds no cases")
    return cases


def _resolve_script(case: Case, folder: Path, prefix: str) -> Case:
    if not (isinstance(case.model, str) and case.model.startswith("scripted:")):
        return case
    script = Path(case.model.removeprefix("scripted:"))
    script = script if script.is_absolute() else folder / script
    try:
        load_script(script)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{prefix}: {exc}") from None
    return case.model_copy(update={"model": f"scripted:{script}"})


def _first_error(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """The first problem of a validation error, in words; unknown keys list the keys `model` takes."""
    error = exc.errors(include_url=False)[0]
    loc = error["loc"]
    where = ".".join(str(part) for part in loc)
    if error["type"] == "extra_forbidden":
        if model is Case and loc[:1] == ("expect",) and len(loc) == 2:
            return f"unknown check {loc[-1]!r} in expect; checks are {', '.join(Expect.model_fields)}"
        if model is not None and len(loc) == 1:
            return f"unknown key {where!r}; use {', '.join(model.model_fields)}"
        return f"unknown key {where!r}"
    if error["type"] == "missing":
        return f"{where!r} is required"
    return f"{where}: {str(error['msg']).removeprefix('Value error, ')}"


@dataclass(frozen=True)
class CaseResult:
    case_id: str
    observed: Observation
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> JsonDict:
        seen = self.observed
        return {
            "id": self.case_id,
            "passed": self.passed,
            "failures": list(self.failures),
            "run_id": seen.run_id,
            "status": str(seen.status),
            "output": seen.output,
            "error": seen.error,
            "cost_usd": seen.cost_usd,
            "latency_ms": seen.latency_ms,
            "tool_calls": seen.tool_calls,
            "tools": list(seen.tools),
            "escalated": seen.escalated,
        }


@dataclass(frozen=True)
class Report:
    """The scored runs of one agent (and model) over a dataset, with the metrics `compare` reads."""

    agent: str
    agent_version: str
    model: str | None  # the model spec given for cases without their own; None: the agent's
    results: tuple[CaseResult, ...]

    @property
    def passed(self) -> int:
        return sum(result.passed for result in self.results)

    @property
    def success_rate(self) -> float:
        return self.passed / len(self.results)

    @property
    def mean_cost_usd(self) -> float | None:
        """Over the cases whose cost is known; None when no case's is."""
        costs = [r.observed.cost_usd for r in self.results if r.observed.cost_usd is not None]
        return sum(costs) / len(costs) if costs else None

    @property
    def p95_latency_ms(self) -> float:
        ordered = sorted(result.observed.latency_ms for result in self.results)
        return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]  # nearest rank

    @property
    def escalation_rate(self) -> float:
        return sum(result.observed.escalated for result in self.results) / len(self.results)

    @property
    def mean_tool_calls(self) -> float:
        return sum(result.observed.tool_calls for result in self.results) / len(self.results)

    def metrics(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in METRICS}

    def to_dict(self) -> JsonDict:
        return {
            "agent": self.agent,
            "agent_version": self.agent_version,
            "model": self.model,
            "summary": {"cases": len(self.results), "passed": self.passed, **self.metrics()},
            "cases": [result.to_dict() for result in self.results],
        }


async def check(
    agent: Agent, cases: Sequence[Case], *, model: str | None = None, runtime: RuntimeFactory = Runtime
) -> None:
    """Resolve every case's model without running anything: a bad spec (or an agent without a model)
    stops the evaluation before its first case, not in the middle."""
    with tempfile.TemporaryDirectory(prefix="tether-eval-check-") as directory:
        async with runtime(f"sqlite:///{Path(directory) / 'check.db'}") as opened:
            for case in cases:
                case_agent, spec = _agent_for(agent, case, model)
                try:
                    opened.model_for(case_agent, spec)
                except ConfigurationError as exc:
                    if case.model is None:  # the run's model or the agent's: not this case's fault
                        raise
                    raise ConfigurationError(f"case {case.id!r}: {exc}") from None


async def evaluate(
    agent: Agent,
    cases: Sequence[Case],
    *,
    model: str | None = None,
    runtime: RuntimeFactory = Runtime,
    store_dir: Path | None = None,
    on_result: Callable[[CaseResult], None] | None = None,
) -> Report:
    """Run each case, one after another, as a real run on a fresh SQLite store, and score it.

    A case's own model wins over `model`, which wins over the agent's. Stores go to a temporary
    folder, deleted afterwards, or to `store_dir` (which must be empty) to inspect the runs later.
    """
    if not cases:
        raise ConfigurationError("there are no cases to evaluate")
    await check(agent, cases, model=model, runtime=runtime)
    results: list[CaseResult] = []
    with _stores(store_dir) as directory:
        for index, case in enumerate(cases):
            store = directory / f"{index:03d}-{re.sub(r'[^A-Za-z0-9_.-]', '_', case.id)[:60]}.db"
            async with runtime(f"sqlite:///{store}") as opened:
                result = await _run_case(opened, agent, case, model)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return Report(agent.name, agent.version, model, tuple(results))


def _agent_for(agent: Agent, case: Case, model: str | None) -> tuple[Agent, str | None]:
    """The agent a case runs and the model spec passed to the run (None: the agent's own model)."""
    if isinstance(case.model, tuple):
        return replace(agent, model=ScriptedModel(case.model, name=f"scripted:{case.id}")), None
    return agent, case.model if case.model is not None else model


async def _run_case(runtime: Runtime, agent: Agent, case: Case, model: str | None) -> CaseResult:
    case_agent, spec = _agent_for(agent, case, model)
    started = time.perf_counter()
    run = await runtime.run(case_agent, case.input, principal=case.principal, model=spec)
    latency_ms = (time.perf_counter() - started) * 1000
    events = await runtime.events(run.id)
    observed = Observation(
        run_id=run.id,
        status=run.status,
        output=run.output,
        error=run.error,
        cost_usd=run.usage.cost_usd,
        latency_ms=round(latency_ms, 3),
        tools=tuple(str(e.data.get("tool", "")) for e in events if e.kind == EventKind.TOOL_RESULT),
        escalated=run.status in (RunStatus.WAITING_HUMAN, RunStatus.ESCALATED)
        or any(e.kind == EventKind.ESCALATION_OPENED for e in events),
    )
    return CaseResult(case.id, observed, tuple(case.expect.failures(observed)))


@contextlib.contextmanager
def _stores(store_dir: Path | None) -> Iterator[Path]:
    if store_dir is None:
        with tempfile.TemporaryDirectory(prefix="tether-eval-") as directory:
            yield Path(directory)
        return
    if store_dir.exists() and (not store_dir.is_dir() or any(store_dir.iterdir())):
        raise ConfigurationError(f"{str(store_dir)!r} must be an empty folder (each case gets a fresh store)")
    store_dir.mkdir(parents=True, exist_ok=True)
    yield store_dir


# ---- comparison -----------------------------------------------------------------------------------

METRICS = ("success_rate", "mean_cost_usd", "p95_latency_ms", "escalation_rate", "mean_tool_calls")


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the baseline the candidate may be before it counts as a regression.

    Rates are compared in percentage points, the rest relative to the baseline (a baseline of 0 makes
    any increase a regression). `latency_noise_ms`: p95 latency must also grow by more than this,
    so timer noise on fast offline runs is not a regression.
    """

    success_drop_pp: float = 2.0
    cost_increase_pct: float = 10.0
    latency_increase_pct: float = 20.0
    latency_noise_ms: float = 50.0
    escalation_increase_pp: float = 5.0
    tool_calls_increase_pct: float = 10.0

    @classmethod
    def parse(cls, pairs: Sequence[str]) -> Tolerances:
        """From `NAME=VALUE` strings (e.g. `cost_increase_pct=25`); the rest keep their defaults."""
        names = [f.name for f in fields(cls)]
        values: dict[str, float] = {}
        for pair in pairs:
            key, sep, raw = (part.strip() for part in pair.partition("="))
            if not sep or key not in names:
                raise ConfigurationError(
                    f"tolerance {pair!r} must be NAME=VALUE with NAME one of {', '.join(names)}"
                )
            try:
                value = float(raw)
            except ValueError:
                raise ConfigurationError(f"tolerance {pair!r}: {raw!r} is not a number") from None
            if not value >= 0 or math.isinf(value):
                raise ConfigurationError(f"tolerance {pair!r}: the value must be a finite number >= 0")
            values[key] = value
        return cls(**values)

    def to_dict(self) -> JsonDict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class MetricComparison:
    """One metric of both reports. `change` is in `unit`: percentage points for rates, per cent of the
    baseline otherwise; None when it cannot be computed (an unknown cost, a baseline of 0)."""

    name: str
    baseline: float | None
    candidate: float | None
    change: float | None
    unit: Literal["pp", "%"]
    tolerance: float
    regressed: bool

    def reason(self) -> str:
        shown = f"{format_metric(self.name, self.baseline)} -> {format_metric(self.name, self.candidate)}"
        sign = "-" if self.name == "success_rate" else "+"
        return f"{self.name} regressed: {shown} (tolerance {sign}{self.tolerance:g} {self.unit})"

    def to_dict(self) -> JsonDict:
        return {
            "name": self.name,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "change": self.change,
            "unit": self.unit,
            "tolerance": self.tolerance,
            "regressed": self.regressed,
        }


@dataclass(frozen=True)
class Comparison:
    metrics: tuple[MetricComparison, ...]
    newly_failing: tuple[str, ...]  # case ids the baseline passed and the candidate fails
    newly_passing: tuple[str, ...]

    @property
    def regressed(self) -> bool:
        return any(metric.regressed for metric in self.metrics)

    def to_dict(self) -> JsonDict:
        return {
            "regressed": self.regressed,
            "metrics": [metric.to_dict() for metric in self.metrics],
            "newly_failing": list(self.newly_failing),
            "newly_passing": list(self.newly_passing),
        }


def compare(candidate: Report, baseline: Report, tolerances: Tolerances | None = None) -> Comparison:
    """Metric by metric, whether the candidate is worse than the baseline beyond the tolerances."""
    ids = [result.case_id for result in candidate.results]
    if ids != [result.case_id for result in baseline.results]:
        raise ConfigurationError("the two reports cover different cases; evaluate both on the same dataset")
    t = tolerances or Tolerances()
    c, b = candidate, baseline
    metrics = (
        _rate("success_rate", c.success_rate, b.success_rate, t.success_drop_pp, worse_when_higher=False),
        _relative("mean_cost_usd", c.mean_cost_usd, b.mean_cost_usd, t.cost_increase_pct),
        _relative(
            "p95_latency_ms", c.p95_latency_ms, b.p95_latency_ms, t.latency_increase_pct, t.latency_noise_ms
        ),
        _rate("escalation_rate", c.escalation_rate, b.escalation_rate, t.escalation_increase_pp),
        _relative("mean_tool_calls", c.mean_tool_calls, b.mean_tool_calls, t.tool_calls_increase_pct),
    )
    pairs = list(zip(c.results, b.results, strict=True))
    return Comparison(
        metrics,
        newly_failing=tuple(new.case_id for new, old in pairs if old.passed and not new.passed),
        newly_passing=tuple(new.case_id for new, old in pairs if new.passed and not old.passed),
    )


_EPSILON = 1e-9  # float sums of costs differ in the last bits; that is not a regression


def _rate(
    name: str, candidate: float, baseline: float, tolerance_pp: float, *, worse_when_higher: bool = True
) -> MetricComparison:
    change = (candidate - baseline) * 100
    worse_by = change if worse_when_higher else -change
    return MetricComparison(
        name, baseline, candidate, change, "pp", tolerance_pp, worse_by > tolerance_pp + _EPSILON
    )


def _relative(
    name: str, candidate: float | None, baseline: float | None, tolerance_pct: float, noise: float = 0.0
) -> MetricComparison:
    if candidate is None or baseline is None:
        return MetricComparison(name, baseline, candidate, None, "%", tolerance_pct, regressed=False)
    change = (candidate - baseline) / baseline * 100 if baseline else None
    regressed = (
        candidate > baseline * (1 + tolerance_pct / 100) + _EPSILON
        and candidate - baseline > noise + _EPSILON
    )
    return MetricComparison(name, baseline, candidate, change, "%", tolerance_pct, regressed)


def gate_failures(
    candidate: Report, comparison: Comparison | None, *, min_success_rate: float | None = None
) -> list[str]:
    """Why the candidate fails the gate: a success rate under the minimum, or a regression against the
    baseline. Empty: it passes."""
    reasons = []
    if min_success_rate is not None and candidate.success_rate < min_success_rate - _EPSILON:
        reasons.append(
            f"success rate {format_metric('success_rate', candidate.success_rate)} is under the "
            f"minimum {format_metric('success_rate', min_success_rate)} "
            f"({len(candidate.results) - candidate.passed} of {len(candidate.results)} cases failed)"
        )
    if comparison is not None:
        reasons += [metric.reason() for metric in comparison.metrics if metric.regressed]
    return reasons


def format_metric(name: str, value: float | None) -> str:
    """A metric's value as people read it: rates in %, cost in $, latency in ms."""
    if value is None:
        return "unknown"
    if name.endswith("_rate"):
        return f"{value * 100:.1f}%"
    if name.endswith("_usd"):
        return f"${value:.6f}"
    if name.endswith("_ms"):
        return f"{value:.1f} ms"
    return f"{value:.2f}"


def _clip(text: str, width: int = 80) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
