"""BudgetSteps: every model and tool call reserves its budget before it runs and settles after.

A reservation that does not fit stops the action before it happens: `budget.exceeded` is recorded
and the run goes to a person — never a silent drop. Crossing 80% of a limit records `budget.warning`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tether.errors import BudgetExceededError
from tether.models.base import estimate_tokens
from tether.policy.limits import Budget, Crossing, Reservation, Scope, usage_amounts
from tether.runtime.steps import LoopSteps
from tether.store.base import EventDraft
from tether.tools import Tool
from tether.types import EventKind, ModelRequest, RunStatus, Usage

DEFAULT_OUTPUT_TOKENS = 500  # reserved for a model answer when the request sets no maximum


class BudgetSteps(LoopSteps):
    """Mixed into RunLoop (see LoopSteps for what it provides)."""

    budget: Budget | None

    def _scope(self) -> Scope:
        return Scope(
            run_id=self.run.id,
            session_id=self.run.session_id,
            principal=self.run.principal,
            tenant=self.run.tenant,
        )

    async def _reserve_model_call(self, request: ModelRequest) -> Reservation | None:
        """Hold tokens (prompt + expected answer) and cost (the last turn's, as the estimate)."""
        if self.budget is None:
            return None
        tokens = sum(estimate_tokens(m.content) for m in request.messages)
        tokens += request.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        amounts: dict[str, float] = {"tokens": float(tokens)}
        last = self.state.last_response
        if last is not None and last.usage.cost_usd is not None:
            amounts["cost_usd"] = last.usage.cost_usd
        return await self._reserve(amounts)

    async def _reserve_tool_call(self, tool: Tool) -> Reservation | None:
        if self.budget is None:
            return None
        amounts: dict[str, float] = {"tool_calls": 1.0, **tool.counts}
        if tool.side_effect == "write":
            amounts["mutations"] = 1.0
        return await self._reserve(amounts)

    async def _reserve(self, amounts: Mapping[str, float]) -> Reservation:
        assert self.budget is not None
        reservation = await self.budget.reserve(self._scope(), amounts)
        await self._warn(reservation.warnings)
        return reservation

    async def _settle(self, reservation: Reservation | None, actual: Mapping[str, float]) -> None:
        if reservation is not None and self.budget is not None:
            await self._warn(await self.budget.settle(reservation, actual))

    async def _settle_model_call(self, reservation: Reservation | None, usage: Usage) -> None:
        await self._settle(reservation, usage_amounts(usage))

    async def _release(self, reservation: Reservation | None) -> None:
        if reservation is not None and self.budget is not None:
            await self.budget.release(reservation)

    async def _warn(self, crossings: Sequence[Crossing]) -> None:
        if crossings:
            await self._append(*(EventDraft(*crossing.event()) for crossing in crossings))

    async def _budget_exceeded(self, error: BudgetExceededError) -> RunStatus:
        data = dict(error.events[0][1]) if error.events else {"message": str(error)}
        await self._append(EventDraft(EventKind.BUDGET_EXCEEDED, data))
        return await self._escalate(
            "budget", f"{error} The action did not run; a person decides how to continue.", {"limit": data}
        )
