"""Canary releases: a sticky share of runs on a candidate version, judged against the baseline."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime, Usage
from tether.errors import BadRequestError, ConfigurationError
from tether.runtime.canary import CanaryThresholds, VersionScore, judge
from tether.store.base import Canary, RunOutcome


def version(number: str, *, broken: bool = False, cost: float = 0.001) -> Agent:
    def respond(request: ModelRequest) -> ModelResponse:
        if broken:
            raise BadRequestError("the new prompt breaks the provider's schema")
        return ModelResponse(content=f"answer from v{number}", usage=Usage(10, 10, cost))

    return Agent("desk", version=number, model=FunctionModel(respond, name=f"m{number}"))


@pytest.fixture
async def runtime(tmp_path: Path) -> Any:
    async with Runtime(f"sqlite:///{tmp_path / 'canary.db'}", agents=[version("1"), version("2")]) as rt:
        yield rt


async def test_a_share_of_principals_is_routed_to_the_candidate_and_stays_there(runtime: Runtime) -> None:
    """About the share of principals land on the candidate, and each principal always on the same side."""
    await runtime.canaries.start("desk", "2", baseline_version="1", share=0.3)
    baseline = version("1")
    sides: dict[str, set[str]] = {}
    for n in range(60):
        for _ in range(2):
            run = await runtime.start(baseline, "hi", principal=f"cust-{n}")
            sides.setdefault(f"cust-{n}", set()).add(run.agent_version)
    assert all(len(seen) == 1 for seen in sides.values())
    on_candidate = sum(seen == {"2"} for seen in sides.values())
    assert 8 <= on_candidate <= 30  # 30% of 60 = 18, binomial spread


async def test_a_degraded_candidate_is_rolled_back_by_itself(runtime: Runtime) -> None:
    """A candidate whose runs fail is rolled back once it has enough runs; new runs go to the baseline."""
    async with Runtime(runtime.store, agents=[version("1"), version("2", broken=True)]) as rt:
        await rt.canaries.start(
            "desk", "2", baseline_version="1", share=0.5, thresholds=CanaryThresholds(min_runs=4)
        )
        runs = [await rt.run(version("1"), "hi", principal=f"cust-{n}") for n in range(40)]
        [canary] = await rt.store.list_canaries(agent_name="desk")
        assert canary.status == "rolled_back"
        assert canary.reason is not None
        assert "error rate" in canary.reason
        candidate_runs = [r for r in runs if r.agent_version == "2"]
        assert len(candidate_runs) == 4  # judged at the 4th; none after
        assert {r.status for r in candidate_runs} == {RunStatus.FAILED}
        later = [await rt.start(version("1"), "hi", principal=f"cust-{n}") for n in range(20)]
        assert {r.agent_version for r in later} == {"1"}


async def test_promotion_sends_every_new_run_to_the_candidate(runtime: Runtime) -> None:
    """After `promote`, new runs of the agent take the candidate, whoever starts them."""
    await runtime.canaries.start("desk", "2", baseline_version="1", share=0.1)
    promoted = await runtime.canaries.end("desk", "promoted", "by ops")
    assert promoted.status == "promoted"
    runs = [await runtime.run(version("1"), "hi", principal=f"cust-{n}") for n in range(10)]
    assert Counter(r.agent_version for r in runs) == {"2": 10}
    assert runs[0].output == "answer from v2"


async def test_status_compares_the_versions(runtime: Runtime) -> None:
    """The report has both versions' completion, cost and latency; too few runs is `waiting`."""
    await runtime.canaries.start("desk", "2", baseline_version="1", share=0.5)
    for n in range(10):
        await runtime.run(version("1"), "hi", principal=f"cust-{n}")
    canary = await runtime.store.current_canary("desk")
    assert canary is not None
    report = await runtime.canaries.report(canary)
    assert report.baseline.settled + report.candidate.settled == 10
    assert report.verdict == "waiting"
    assert report.to_dict()["baseline"]["completion_rate"] == 1.0


def test_judge_flags_cost_and_latency_ratios() -> None:
    """A candidate twice as expensive and slow is degraded; within the ratios it is healthy."""
    canary = Canary("c", "desk", "1", "2", 0.1, "running", {"min_runs": 3}, 0)
    base = VersionScore.of("1", [RunOutcome(RunStatus.SUCCEEDED, 0.01, 1000)] * 5)
    slow = VersionScore.of("2", [RunOutcome(RunStatus.SUCCEEDED, 0.02, 2000)] * 5)
    close = VersionScore.of("2", [RunOutcome(RunStatus.SUCCEEDED, 0.012, 1100)] * 5)
    verdict = judge(canary, base, slow)
    assert verdict.verdict == "degraded"
    assert [b.split()[0] for b in verdict.breaches] == ["mean", "p95"]
    assert judge(canary, base, close).verdict == "healthy"


async def test_bad_canaries_are_refused(runtime: Runtime) -> None:
    """A zero share, a candidate equal to the baseline and a second running canary are errors."""
    with pytest.raises(ConfigurationError, match="share"):
        await runtime.canaries.start("desk", "2", baseline_version="1", share=0)
    with pytest.raises(ConfigurationError, match="is the baseline"):
        await runtime.canaries.start("desk", "1", baseline_version="1")
    with pytest.raises(ConfigurationError, match="min_runs"):
        CanaryThresholds(min_runs=0)
    await runtime.canaries.start("desk", "2", baseline_version="1")
    with pytest.raises(ConfigurationError, match="already has canary"):
        await runtime.canaries.start("desk", "3", baseline_version="1")


async def test_a_candidate_this_runtime_does_not_know_is_an_error(tmp_path: Path) -> None:
    """Routing a run to a version the runtime has no code for fails at start, naming the version."""
    async with Runtime(f"sqlite:///{tmp_path / 'c.db'}") as rt:
        await rt.canaries.start("desk", "9", baseline_version="1", share=1.0)
        with pytest.raises(ConfigurationError, match="version '9'"):
            await rt.start(version("1"), "hi", principal="p")
