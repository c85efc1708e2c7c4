"""Behaviour monitoring: each agent's normal tool use, learned from its own history, and what departs from it.

The baseline of an agent is the tool use of its last `window_runs` succeeded runs: which tools it calls,
and how many calls (and writes) a run makes. Before a call runs, the run so far plus that call is
compared with it; an anomaly holds the call for a person (the run waits) and is recorded:

    novel_tool    a tool the agent never used in its baseline
    write_burst   more writes in this run than the baseline ever saw (× `burst_factor`, at least +2)
    call_spike    more calls of one tool in this run than the baseline ever saw (same margins)

A baseline of fewer than `min_runs` runs judges nothing (a new agent is not an anomaly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tether.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class Baseline:
    """Tool use of an agent's recent runs: per run, calls per tool and writes."""

    runs: int
    tools: frozenset[str]
    max_calls: Mapping[str, int]  # the most calls of each tool one run made
    max_writes: int

    @classmethod
    def of(cls, usage: Sequence[tuple[Mapping[str, int], int]]) -> Baseline:
        """From (calls per tool, writes) of each run."""
        tools: set[str] = set()
        max_calls: dict[str, int] = {}
        max_writes = 0
        for calls, writes in usage:
            tools.update(calls)
            for name, count in calls.items():
                max_calls[name] = max(max_calls.get(name, 0), count)
            max_writes = max(max_writes, writes)
        return cls(len(usage), frozenset(tools), max_calls, max_writes)


@dataclass(frozen=True, slots=True)
class Anomaly:
    kind: str  # novel_tool | write_burst | call_spike
    tool: str
    observed: int
    usual: int
    reason: str


@dataclass(frozen=True, slots=True)
class BehaviourMonitor:
    """Judges a run's next call against its agent's baseline (see the module docstring)."""

    min_runs: int = 20
    window_runs: int = 200
    burst_factor: float = 2.0
    ignore_tools: frozenset[str] = field(default_factory=frozenset)  # never judged (e.g. ask_person)

    def __post_init__(self) -> None:
        if self.min_runs < 1 or self.window_runs < self.min_runs:
            raise ConfigurationError("behaviour monitor: need 1 <= min_runs <= window_runs")
        if self.burst_factor < 1:
            raise ConfigurationError("behaviour monitor: burst_factor must be >= 1")

    def judge(
        self, baseline: Baseline, *, tool: str, write: bool, calls: Mapping[str, int], writes: int
    ) -> Anomaly | None:
        """Would calling `tool` now (after `calls` per tool and `writes` in this run) be unusual?"""
        if baseline.runs < self.min_runs or tool in self.ignore_tools:
            return None
        if tool not in baseline.tools:
            return Anomaly(
                "novel_tool",
                tool,
                1,
                0,
                f"the agent never used {tool!r} in its last {baseline.runs} successful runs",
            )
        if write and writes + 1 > self._limit(baseline.max_writes):
            return Anomaly(
                "write_burst",
                tool,
                writes + 1,
                baseline.max_writes,
                f"{writes + 1} writes in this run; its last {baseline.runs} runs made at most "
                f"{baseline.max_writes}",
            )
        usual = baseline.max_calls.get(tool, 0)
        if calls.get(tool, 0) + 1 > self._limit(usual):
            return Anomaly(
                "call_spike",
                tool,
                calls.get(tool, 0) + 1,
                usual,
                f"{calls.get(tool, 0) + 1} calls of {tool!r} in this run; its last {baseline.runs} runs "
                f"made at most {usual}",
            )
        return None

    def _limit(self, usual: int) -> int:
        return max(math.ceil(usual * self.burst_factor), usual + 2)
