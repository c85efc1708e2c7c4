"""LoopSteps: what RunLoop provides to the step mixins (people, sagas, budgets) that extend it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tether.agent import Agent
from tether.policy.behaviour import Anomaly
from tether.runtime.state import RunState
from tether.store.base import EventDraft, NewEscalation, OperationWrite, RunStore
from tether.tools import Tool
from tether.types import JsonDict, Run, RunStatus, Usage


class LoopSteps:
    """The state, the agent and the run, and the three writes every step goes through."""

    state: RunState
    agent: Agent
    run: Run
    store: RunStore

    async def _append(
        self,
        *drafts: EventDraft,
        usage: Usage | None = None,
        operations: Sequence[OperationWrite] = (),
        within: Callable[[], None] | None = None,
    ) -> None:
        raise NotImplementedError

    async def _finish(
        self,
        status: RunStatus,
        draft: EventDraft,
        *,
        output: str | None = None,
        error: str | None = None,
        escalation: NewEscalation | None = None,
    ) -> RunStatus:
        raise NotImplementedError

    def _may_call(self, tool: Tool, arguments: JsonDict | None = None) -> bool:
        raise NotImplementedError

    async def _unusual(self, tool: Tool, counts: dict[str, int], writes: int) -> Anomaly | None:
        raise NotImplementedError

    async def _record_anomaly(self, anomaly: Anomaly) -> None:
        raise NotImplementedError

    async def _escalate(
        self,
        reason: str,
        message: str,
        context: JsonDict | None = None,
        *,
        expires_s: float | None = None,
        options: tuple[str, ...] | None = None,
    ) -> RunStatus:
        raise NotImplementedError
