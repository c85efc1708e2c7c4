"""BudgetSteps: every model and tool call reserves its budget before it runs and settles after.

A reservation that does not fit stops the action before it happens: `budget.exceeded` is recorded
and the run goes to a person — never a silent drop. Crossing 80% of a limit records `budget.warning`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tether.errors import BudgetExceededError
from tether.models.base import Model, estimate_tokens
from tether.policy.limits import Budget, Crossing, Reservation, Scope
from tether.runtime.steps import LoopSteps
from tether.store.base import EventDraft, OperationWrite
from tether.tools import Tool
from tether.types import EventKind, ModelRequest, RunStatus, Usage

DEFAULT_OUTPUT_TOKENS = 500  # reserved for a model answer when the request sets no maximum


class BudgetSteps(LoopSteps):
    """Mixed into RunLoop (see LoopSteps for what it provides)."""

    budget: Budget | None
    model: Model
    budget_joined: bool  # the budget's counters live in the run store's connection

    def _scope(self) -> Scope:
        if self.run.shadow_of is not None:  # a shadow run spends nobody's budget but its own
            return Scope(run_id=self.run.id)
        return Scope(
            run_id=self.run.id,
            session_id=self.run.session_id,
            principal=self.run.principal,
            tenant=self.run.tenant,
        )

    def _model_call_amounts(self, request: ModelRequest) -> dict[str, float] | None:
        """What a model call holds: tokens (prompt + the answer's cap) and cost: the most that call
        can cost on its route (the dearest model of the chain, at the answer's cap), so concurrent runs
        can never together spend past a limit. A model without known prices holds the last turn's cost."""
        if self.budget is None:
            return None
        prompt = sum(estimate_tokens(m.content) for m in request.messages)
        answer = request.max_output_tokens or DEFAULT_OUTPUT_TOKENS
        amounts: dict[str, float] = {"tokens": float(prompt + answer)}
        bound = getattr(self.model, "max_cost_usd", None)
        cost = bound(request, prompt, answer) if callable(bound) else None
        last = self.state.last_response
        if cost is None and last is not None:
            cost = last.usage.cost_usd
        if cost is not None:
            amounts["cost_usd"] = float(cost)
        return amounts

    async def _reserve_tool_call(self, tool: Tool) -> Reservation | None:
        if self.budget is None:
            return None
        amounts: dict[str, float] = {"tool_calls": 1.0, **tool.counts}
        if tool.side_effect == "write":
            amounts["mutations"] = 1.0
        reservation = await self.budget.reserve(self._scope(), amounts)
        await self._warn(reservation.warnings)
        return reservation

    async def _append_reserving(
        self, draft: EventDraft, amounts: Mapping[str, float] | None
    ) -> Reservation | None:
        """Record `draft` with `amounts` held for the call it announces; when the counters live in the
        run store's connection, both are one transaction. Refused: BudgetExceededError, nothing
        recorded and nothing held."""
        budget = self.budget
        if budget is None or amounts is None:
            await self._append(draft)
            return None
        if self.budget_joined:
            held: list[Reservation] = []
            scope = self._scope()
            await self._append(draft, within=lambda: held.append(budget.reserve_joined(scope, amounts)))
            reservation = held[0]
        else:
            reservation = await budget.reserve(self._scope(), amounts)
            try:
                await self._append(draft)
            except BaseException:
                await budget.release(reservation)
                raise
        await self._warn(reservation.warnings)
        return reservation

    async def _append_settling(
        self,
        *drafts: EventDraft,
        reservation: Reservation | None,
        actual: Mapping[str, float],
        usage: Usage | None = None,
        operations: Sequence[OperationWrite] = (),
    ) -> None:
        """Record `drafts` and charge `actual` to the reservation of the call they record; one
        transaction when the counters live in the run store's connection."""
        budget = self.budget
        if budget is None or reservation is None:
            await self._append(*drafts, usage=usage, operations=operations)
            return
        crossings: list[Crossing] = []
        if self.budget_joined:
            await self._append(
                *drafts,
                usage=usage,
                operations=operations,
                within=lambda: crossings.extend(budget.settle_joined(reservation, actual)),
            )
        else:
            # Charged first: a crash before the record then over-counts (the call is redone and charged
            # again), never lets spent money go uncounted, which would let later calls pass a limit.
            crossings = await budget.settle(reservation, actual)
            await self._append(*drafts, usage=usage, operations=operations)
        await self._warn(crossings)

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
