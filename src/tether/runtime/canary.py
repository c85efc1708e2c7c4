"""Canary releases: route a share of an agent's new runs to a candidate version, sticky per principal;
compare it with the baseline on completion, escalation and error rates, cost and latency; roll it back
by itself when it is worse beyond a threshold, promote it by command.

The canary lives in the store, so every process starting runs routes the same way; the verdict is
computed from the runs table (the outcomes of each version's runs since the canary started), so it
needs no metrics pipeline and survives restarts.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from tether.errors import ConfigurationError
from tether.store.base import Canary, RunOutcome, RunStore
from tether.types import JsonDict, RunStatus

# Where a run has settled: it answered, failed, or needs (or had) a person.
SETTLED = frozenset(
    {
        RunStatus.SUCCEEDED,
        RunStatus.FAILED,
        RunStatus.ESCALATED,
        RunStatus.DEAD_LETTERED,
        RunStatus.WAITING_HUMAN,
    }
)


@dataclass(frozen=True, slots=True)
class CanaryThresholds:
    """How much worse than the baseline the candidate may be before it is rolled back."""

    min_runs: int = 20  # settled candidate runs before any verdict
    max_completion_drop: float = 0.05  # completion rate, absolute (5 points)
    max_escalation_rise: float = 0.10  # escalation rate, absolute
    max_error_rise: float = 0.05  # failed + dead-lettered rate, absolute
    max_cost_ratio: float = 1.5  # mean cost per succeeded run, candidate / baseline
    max_latency_ratio: float = 1.5  # p95 time to settle, candidate / baseline

    def __post_init__(self) -> None:
        if self.min_runs < 1:
            raise ConfigurationError(f"canary min_runs must be >= 1, not {self.min_runs}")
        for name in ("max_completion_drop", "max_escalation_rise", "max_error_rise"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigurationError(f"canary {name} is a rate between 0 and 1, not {value}")
        for name in ("max_cost_ratio", "max_latency_ratio"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"canary {name} must be >= 1, not {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class VersionScore:
    """One version's runs since the canary started: settled = succeeded, failed, escalated, dead-lettered
    or waiting for a person (cancelled and unfinished runs are not judged)."""

    version: str
    settled: int
    completion_rate: float | None
    escalation_rate: float | None
    error_rate: float | None
    mean_cost_usd: float | None
    p95_latency_ms: float | None

    @classmethod
    def of(cls, version: str, outcomes: Sequence[RunOutcome]) -> VersionScore:
        settled = [o for o in outcomes if o.status in SETTLED]
        n = len(settled)

        def rate(*statuses: RunStatus) -> float | None:
            return sum(o.status in statuses for o in settled) / n if n else None

        costs = [o.cost_usd for o in settled if o.status == RunStatus.SUCCEEDED and o.cost_usd is not None]
        return cls(
            version=version,
            settled=n,
            completion_rate=rate(RunStatus.SUCCEEDED),
            escalation_rate=rate(RunStatus.WAITING_HUMAN, RunStatus.ESCALATED),
            error_rate=rate(RunStatus.FAILED, RunStatus.DEAD_LETTERED),
            mean_cost_usd=sum(costs) / len(costs) if costs else None,
            p95_latency_ms=_p95([o.duration_ms for o in settled]),
        )


@dataclass(frozen=True, slots=True)
class CanaryReport:
    canary: Canary
    baseline: VersionScore
    candidate: VersionScore
    breaches: tuple[str, ...] = field(default=())  # why the candidate is worse, one line each
    verdict: str = "running"  # waiting (too few runs), healthy, degraded; or how it ended

    def to_dict(self) -> JsonDict:
        return {
            **self.canary.to_dict(),
            "baseline": asdict(self.baseline),
            "candidate": asdict(self.candidate),
            "breaches": list(self.breaches),
            "verdict": self.verdict,
        }


def judge(canary: Canary, baseline: VersionScore, candidate: VersionScore) -> CanaryReport:
    """Compare the candidate with the baseline under the canary's thresholds."""
    limits = CanaryThresholds(**canary.thresholds)
    if canary.status != "running":
        return CanaryReport(canary, baseline, candidate, (), canary.status)
    if candidate.settled < limits.min_runs:
        return CanaryReport(canary, baseline, candidate, (), "waiting")
    breaches: list[str] = []

    def worse(
        name: str, cand: float | None, base: float | None, allowed: float, lower_is_better: bool
    ) -> None:
        if cand is None:
            return
        reference = base if base is not None else (0.0 if lower_is_better else 1.0)
        change = cand - reference if lower_is_better else reference - cand
        if change > allowed + 1e-12:
            breaches.append(f"{name} {cand:.1%} vs baseline {reference:.1%} (allowed ±{allowed:.1%})")

    worse(
        "completion rate",
        candidate.completion_rate,
        baseline.completion_rate,
        limits.max_completion_drop,
        False,
    )
    worse(
        "escalation rate",
        candidate.escalation_rate,
        baseline.escalation_rate,
        limits.max_escalation_rise,
        True,
    )
    worse("error rate", candidate.error_rate, baseline.error_rate, limits.max_error_rise, True)
    for name, cand, base, ratio in (
        ("mean cost", candidate.mean_cost_usd, baseline.mean_cost_usd, limits.max_cost_ratio),
        ("p95 latency", candidate.p95_latency_ms, baseline.p95_latency_ms, limits.max_latency_ratio),
    ):
        if cand is not None and base is not None and base > 0 and cand > base * ratio:
            breaches.append(
                f"{name} {cand:.4g} is {cand / base:.2f}x the baseline's {base:.4g} (allowed {ratio}x)"
            )
    return CanaryReport(canary, baseline, candidate, tuple(breaches), "degraded" if breaches else "healthy")


def routes_to_candidate(canary: Canary, key: str) -> bool:
    """Sticky assignment: the same principal (or session) always lands on the same side."""
    if canary.status == "promoted":
        return True
    digest = hashlib.sha256(f"{canary.id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < canary.share


class Canaries:
    """Start, route, judge, promote and roll back canaries kept in a run store."""

    def __init__(self, store: RunStore, *, cache_s: float = 2.0) -> None:
        self.store = store
        self._cache_s = cache_s
        self._cached: dict[str, tuple[float, Canary | None]] = {}

    async def start(
        self,
        agent_name: str,
        candidate_version: str,
        *,
        baseline_version: str,
        share: float = 0.1,
        thresholds: CanaryThresholds | None = None,
    ) -> Canary:
        if not 0 < share <= 1:
            raise ConfigurationError(f"canary share is a fraction of runs in (0, 1], not {share}")
        if candidate_version == baseline_version:
            raise ConfigurationError(f"the candidate version {candidate_version!r} is the baseline")
        canary = Canary(
            id=f"can_{secrets.token_hex(6)}",
            agent_name=agent_name,
            baseline_version=baseline_version,
            candidate_version=candidate_version,
            share=share,
            status="running",
            thresholds=asdict(thresholds or CanaryThresholds()),
            started_at_epoch_ms=time.time_ns() // 1_000_000,
        )
        self._cached.pop(agent_name, None)
        return await self.store.create_canary(canary)

    async def current(self, agent_name: str) -> Canary | None:
        """The agent's routing canary, read at most every `cache_s` per process."""
        now = time.monotonic()
        cached = self._cached.get(agent_name)
        if cached is not None and now - cached[0] < self._cache_s:
            return cached[1]
        canary = await self.store.current_canary(agent_name)
        self._cached[agent_name] = (now, canary)
        return canary

    async def version_for(self, agent_name: str, version: str, key: str) -> str:
        """The version a new run of `agent_name` (asked for at `version`) takes, for this principal."""
        canary = await self.current(agent_name)
        if canary is None or version not in (canary.baseline_version, canary.candidate_version):
            return version
        return canary.candidate_version if routes_to_candidate(canary, key) else canary.baseline_version

    async def report(self, canary: Canary) -> CanaryReport:
        baseline = VersionScore.of(
            canary.baseline_version,
            await self.store.outcomes(canary.agent_name, canary.baseline_version, canary.started_at_epoch_ms),
        )
        candidate = VersionScore.of(
            canary.candidate_version,
            await self.store.outcomes(
                canary.agent_name, canary.candidate_version, canary.started_at_epoch_ms
            ),
        )
        return judge(canary, baseline, candidate)

    async def check(self, agent_name: str) -> CanaryReport | None:
        """Judge the agent's running canary; a degraded candidate is rolled back here and now."""
        canary = await self.store.current_canary(agent_name)
        if canary is None:
            return None
        report = await self.report(canary)
        if report.verdict == "degraded":
            reason = "automatic rollback: " + "; ".join(report.breaches)
            ended, _ = await self.store.end_canary(canary.id, "rolled_back", reason)
            self._cached.pop(agent_name, None)
            return CanaryReport(ended, report.baseline, report.candidate, report.breaches, "rolled_back")
        return report

    async def end(self, agent_name: str, status: str, reason: str) -> Canary:
        canary = await self.store.current_canary(agent_name)
        if canary is None or canary.status != "running":
            raise ConfigurationError(f"agent {agent_name!r} has no running canary")
        ended, _ = await self.store.end_canary(canary.id, status, reason)
        self._cached.pop(agent_name, None)
        return ended


def _p95(values: Sequence[int]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(0.95 * len(ordered)) - 1)])
