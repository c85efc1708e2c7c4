"""Shadow mode: a candidate version runs beside production on the same inputs, without effects.

A shadow run is an ordinary run marked `shadow_of` its production run. In the loop its write tools are
not executed (recorded as `suppressed` would-be calls, the model told they were accepted), it needs no
approvals, never asks a person (it ends `escalated` where production would wait) and spends only its
own run budget. `compare` pairs each shadow with its production run once both have settled.
"""

from __future__ import annotations

from dataclasses import dataclass

from tether.runtime.canary import SETTLED
from tether.store.base import RunStore
from tether.types import EventKind, JsonDict, Run, RunStatus


@dataclass(frozen=True, slots=True)
class ShadowPair:
    production: Run
    shadow: Run
    production_writes: list[JsonDict]  # (tool, arguments) of writes that succeeded
    shadow_writes: list[JsonDict]  # the writes the shadow would have made

    @property
    def same_outcome(self) -> bool:
        """Both answered, or both needed a person (waiting, escalated), or both failed."""
        return _outcome(self.production.status) == _outcome(self.shadow.status)

    @property
    def same_output(self) -> bool:
        return self.production.output is not None and self.production.output == self.shadow.output

    @property
    def same_writes(self) -> bool:
        return self.production_writes == self.shadow_writes

    def to_dict(self) -> JsonDict:
        return {
            "production_run": self.production.id,
            "shadow_run": self.shadow.id,
            "production": {"version": self.production.agent_version, "status": str(self.production.status)},
            "shadow": {"version": self.shadow.agent_version, "status": str(self.shadow.status)},
            "same_outcome": self.same_outcome,
            "same_output": self.same_output,
            "same_writes": self.same_writes,
            "production_writes": self.production_writes,
            "shadow_writes": self.shadow_writes,
            "cost_usd": [self.production.usage.cost_usd, self.shadow.usage.cost_usd],
        }


@dataclass(frozen=True, slots=True)
class ShadowReport:
    agent_name: str
    pairs: list[ShadowPair]
    pending: int  # shadow pairs where one side has not settled yet

    def to_dict(self) -> JsonDict:
        n = len(self.pairs)

        def share(flag: str) -> float | None:
            return sum(getattr(pair, flag) for pair in self.pairs) / n if n else None

        return {
            "agent": self.agent_name,
            "compared": n,
            "pending": self.pending,
            "same_outcome": share("same_outcome"),
            "same_output": share("same_output"),
            "same_writes": share("same_writes"),
            "pairs": [pair.to_dict() for pair in self.pairs],
        }


async def compare(store: RunStore, agent_name: str, *, limit: int = 200) -> ShadowReport:
    """Pair the agent's latest shadow runs with their production runs and say where they differ."""
    pairs: list[ShadowPair] = []
    pending = 0
    for shadow in await store.list_runs(agent_name=agent_name, shadows=True, limit=limit):
        assert shadow.shadow_of is not None
        production = await store.get_run(shadow.shadow_of)
        if production.status not in SETTLED or shadow.status not in SETTLED:
            pending += 1
            continue
        pairs.append(
            ShadowPair(
                production,
                shadow,
                await _writes(store, production.id, "succeeded"),
                await _writes(store, shadow.id, "suppressed"),
            )
        )
    return ShadowReport(agent_name, pairs, pending)


async def _writes(store: RunStore, run_id: str, outcome: str) -> list[JsonDict]:
    events = await store.load_events(run_id)
    intents = {
        (e.data.get("turn"), e.data["index"]): e.data for e in events if e.kind == EventKind.TOOL_INTENT
    }
    writes = []
    for event in events:
        data = event.data
        if event.kind != EventKind.TOOL_RESULT or data.get("outcome") != outcome:
            continue
        if outcome == "suppressed":
            writes.append({"tool": data["tool"], "arguments": data.get("arguments")})
        elif (data.get("turn"), data.get("index")) in intents:
            intent = intents[data.get("turn"), data.get("index")]
            writes.append({"tool": data["tool"], "arguments": intent.get("arguments")})
    return writes


def _outcome(status: RunStatus) -> str:
    if status == RunStatus.SUCCEEDED:
        return "answered"
    if status in (RunStatus.WAITING_HUMAN, RunStatus.ESCALATED):
        return "person"
    return "failed"
