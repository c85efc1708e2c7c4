"""LoopSteps: what RunLoop provides to the step mixins (people, sagas, budgets) that extend it."""

from __future__ import annotations

from collections.abc import Sequence

from tether.agent import Agent
from tether.runtime.state import RunState
from tether.store.base import EventDraft, NewEscalation, OperationWrite
from tether.types import JsonDict, Run, RunStatus, Usage


class LoopSteps:
    """The state, the agent and the run, and the three writes every step goes through."""

    state: RunState
    agent: Agent
    run: Run

    async def _append(
        self, *drafts: EventDraft, usage: Usage | None = None, operations: Sequence[OperationWrite] = ()
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
