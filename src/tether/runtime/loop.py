"""The agent loop: decide the next step, act, observe — each step recorded before the next one.

Resuming a run is the same code as running it: the loop folds the event log into a RunState and
continues from wherever the log stops. A recorded model response or tool result is never requested
or executed again; a write tool whose intent was recorded but whose result was not is re-invoked
with the same idempotency key only if it declared itself idempotent — otherwise a person decides.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import pydantic

from tether.agent import Agent
from tether.errors import (
    BudgetExceededError,
    ErrorClass,
    TetherError,
    ToolArgumentsError,
    ToolError,
    ToolTimeoutError,
    UnavailableError,
    classify,
)
from tether.models.base import Model
from tether.policy.guardrails import Guardrails
from tether.policy.limits import Budget, Reservation, usage_amounts
from tether.policy.permissions import PermissionPolicy
from tether.policy.redaction import RedactionPolicy
from tether.runtime.budgets import BudgetSteps
from tether.runtime.guardrails import Baselines, GuardSteps
from tether.runtime.guards import ToolGuards
from tether.runtime.hooks import RunObserver, notify
from tether.runtime.humans import HumanSteps
from tether.runtime.sagas import SagaSteps
from tether.runtime.state import RunState
from tether.store.base import EventDraft, NewEscalation, OperationWrite, RunStore
from tether.tools import Tool, ToolContext, to_jsonable, tool_result_text, unknown_tool_error
from tether.types import (
    EventKind,
    JsonDict,
    Message,
    ModelRequest,
    Run,
    RunEvent,
    RunStatus,
    ToolCall,
    Usage,
)

logger = logging.getLogger("tether.runtime")


# Errors after which waiting or another path may help: the run goes to a person, not to "failed".
ESCALATE_ON = frozenset(
    {
        ErrorClass.RETRYABLE,
        ErrorClass.RATE_LIMITED,
        ErrorClass.TIMEOUT,
        ErrorClass.UNAVAILABLE,
        ErrorClass.CONTEXT_TOO_LONG,
        ErrorClass.CONTENT_FILTER,
    }
)


class RunLoop(HumanSteps, SagaSteps, BudgetSteps, GuardSteps):
    """Executes one run while holding its lease; every write is fenced by that lease."""

    def __init__(
        self,
        *,
        store: RunStore,
        agent: Agent,
        model: Model,
        run: Run,
        owner: str,
        events: list[RunEvent],
        observers: Sequence[RunObserver] = (),
        guards: ToolGuards | None = None,
        recovery_model: Model | None = None,
        budget: Budget | None = None,
        permissions: PermissionPolicy | None = None,
        guardrails: Guardrails | None = None,
        baselines: Baselines | None = None,
        redaction: RedactionPolicy | None = None,
    ) -> None:
        self.store = store
        self.agent = agent
        self.model = model
        self.run = run
        self.owner = owner
        self.state = RunState.fold(run.id, events)
        self.observers = observers
        self.guards = guards or ToolGuards()
        self.recovery_model = recovery_model
        self.budget = budget
        self.permissions = permissions
        self.guardrails = guardrails
        self.baselines = baselines
        self.redaction = redaction
        self._flags_checked = self.state.flags  # the abuse breaker looks again only after new flags
        self.budget_joined = budget is not None and budget.joins(getattr(store, "connection", None))
        self._last_request: ModelRequest | None = None  # for the verifier hook of the gate
        self._append_lock = asyncio.Lock()
        instructions = agent.instructions
        if agent.output_type is not None:
            schema = json.dumps(agent.output_type.model_json_schema(), separators=(",", ":"))
            instructions += f"\n\nAnswer with only a JSON object matching this JSON schema: {schema}"
        self._system = (Message(role="system", content=instructions.strip()),) if instructions.strip() else ()
        self._tool_definitions = tuple(t.definition for t in agent.tools)

    async def execute(self) -> RunStatus:
        """Drive the run until it ends or waits for a person; return the status it reached."""
        state = self.state
        if self.run.attempts > 1:
            await self._append(
                EventDraft(
                    EventKind.RUN_RESUMED,
                    {
                        "attempt": self.run.attempts,
                        "worker": self.owner,
                        "from_seq": state.next_seq,
                    },
                )
            )
        if state.compensating is None and state.pending_answer is not None:
            status = await self._apply_answer(state.pending_answer)
            if status is not None:
                return status
        while True:
            if state.completed_output is not None:
                return RunStatus.SUCCEEDED
            if state.compensating is not None:  # cancelled, or a worker died while undoing: undo
                return await self._fail_with_compensation(
                    state.compensating["detail"], state.compensating["error"]
                )
            status = await self._screen_input() or await self._gate(self._last_request)
            if status is not None:
                return status
            pending = state.pending_calls
            if pending and self._over_budget():
                # The reply that asked for these calls used up the budget: starting them now would
                # only cut them short into unknown outcomes. Hand over with the calls not started.
                return await self._check_last_turn() or await self._wall_clock_exhausted()
            if pending:
                status = await self._ask_approval(pending) or await self._run_tool_calls(pending)
                if status is not None:
                    return status
            # Checked on every pass, not only right after the calls ran: a crash may fall between
            # the last tool.result and the escalation, and a resumed run must decide the same way.
            status = await self._check_last_turn()
            if status is not None:
                return status
            answer = state.final_answer
            if answer is not None and self.agent.output_type is not None:
                answer, status = await self._check_output(answer)
                if status is not None:
                    return status
                if answer is None:
                    continue  # the model was asked to answer again
            if answer is not None:
                status = await self._review(answer)
                if status is not None:
                    return status
                if self.redaction is not None:  # PII and secrets masked in what goes out, per tenant
                    answer = self.redaction.for_tenant(self.run.tenant).redact(answer)
                return await self._finish(
                    RunStatus.SUCCEEDED,
                    EventDraft(EventKind.RUN_COMPLETED, {"output": answer, "usage": state.usage.to_dict()}),
                    output=answer,
                )
            if self._over_budget():
                return await self._wall_clock_exhausted()
            status = await self._guardrail_hold()
            if status is not None:
                return status
            if state.turns >= self.agent.max_steps * (1 + state.grants):
                if await self._try_alternative("step_limit"):
                    continue
                return await self._escalate(
                    "step_limit",
                    f"The run used all {state.turns} steps it was allowed without an answer; "
                    "a person should decide how to continue.",
                )
            status = await self._call_model()
            if status is not None:
                return status

    async def _guardrail_hold(self) -> RunStatus | None:
        """A tool output held for a person, or enough denials and verdicts to trip the abuse breaker."""
        state = self.state
        if state.guardrail_hold is not None:
            hold = state.guardrail_hold
            return await self._escalate(
                "guardrail",
                f"A result of {hold.get('tool', 'a tool')} was held for a person: {hold.get('reason')}.",
                hold,
            )
        if self.guardrails is not None and state.flags > self._flags_checked:
            self._flags_checked = state.flags
            if await self._abuse_tripped():
                return await self._hand_over_abuse()
        return None

    @property
    def _model_name(self) -> str:
        if self.state.recovered and self.recovery_model is not None:
            return self.recovery_model.name
        return self.model.name

    async def _call_model(self) -> RunStatus | None:
        state = self.state
        turn = state.turns
        request = ModelRequest(
            messages=(*self._system, *state.messages),
            tools=self._tool_definitions,
            run_id=self.run.id,
            turn=turn,
            principal=self.run.principal,
            tenant=self.run.tenant,
            tags=self.agent.tags,
            max_output_tokens=self.agent.max_output_tokens,
        )
        self._last_request = request
        announced = EventDraft(
            EventKind.MODEL_REQUEST,
            {"turn": turn, "model": self._model_name, "messages": len(state.messages)},
        )
        try:
            reservation = await self._append_reserving(announced, self._model_call_amounts(request))
        except BudgetExceededError as exc:
            return await self._budget_exceeded(exc)
        started = time.perf_counter()
        try:
            await self.guards.admit_model_call(self.run.principal)
            model = self.recovery_model if state.recovered and self.recovery_model else self.model
            response = await model.request(request)
        except Exception as exc:  # any model failure is recorded, classified and decided
            await self._release(reservation)
            return await self._model_failed(exc, turn, started)
        data = response.to_dict()
        data["turn"] = turn
        data["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        notes = [EventDraft(kind, {**note, "turn": turn}) for kind, note in response.events]
        await self._append_settling(
            *notes,
            EventDraft(EventKind.MODEL_RESPONSE, data),
            reservation=reservation,
            actual=usage_amounts(response.usage),
            usage=response.usage,
        )
        return None

    async def _model_failed(self, error: Exception, turn: int, started: float) -> RunStatus:
        """No model could answer: a person takes over when waiting may help; a broken request fails."""
        events = error.events if isinstance(error, TetherError) else ()
        notes = [EventDraft(kind, {**note, "turn": turn}) for kind, note in events]
        error_class = classify(error)
        detail = {
            "error_class": str(error_class),
            "error": type(error).__name__,
            "message": str(error),
            "turn": turn,
        }
        failed = {
            **detail,
            "model": self._model_name,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        }
        await self._append(*notes, EventDraft(EventKind.MODEL_ERROR, failed))
        if error_class in ESCALATE_ON:
            return await self._escalate(
                "model_unavailable" if error_class != ErrorClass.CONTEXT_TOO_LONG else "context_too_long",
                f"No model could answer ({error_class}): {error}",
                detail,
            )
        return await self._fail_with_compensation(detail, f"{type(error).__name__}: {error}")

    async def _run_tool_calls(self, pending: list[tuple[int, ToolCall]]) -> RunStatus | None:
        state = self.state
        for index, call in pending:
            tool = self.agent.tool(call.name)
            if state.crashed_during(index) and tool is not None and not tool.idempotent:
                return None  # outcome unknown: `_check_last_turn` hands the run to a person
        # All of a turn's calls are reserved before any starts: over budget, none of them runs.
        reservations: dict[int, Reservation | None] = {}
        try:
            for index, call in pending:
                tool = self.agent.tool(call.name)
                reservations[index] = None if tool is None else await self._reserve_tool_call(tool)
        except BudgetExceededError as exc:
            for reservation in reservations.values():
                await self._release(reservation)
            return await self._budget_exceeded(exc)
        if len(pending) == 1:
            await self._run_tool_call(*pending[0], reservation=reservations[pending[0][0]])
        else:
            await asyncio.gather(
                *(
                    self._run_tool_call(index, call, reservation=reservations[index])
                    for index, call in pending
                )
            )
        return None

    async def _check_last_turn(self) -> RunStatus | None:
        """Escalate when the last turn left an unknown outcome or the model keeps calling badly."""
        state = self.state
        if state.last_response is None or not state.last_response.tool_calls:
            return None
        for index, call in enumerate(state.last_response.tool_calls):
            tool = self.agent.tool(call.name)
            if tool is None or tool.idempotent or index in state.settled:
                continue
            if state.crashed_during(index):
                return await self._escalate(
                    "unknown_outcome",
                    f"Tool {call.name!r} may or may not have run before the worker stopped, and it is "
                    "not idempotent, so it was not run again. A person must check whether it "
                    "happened.",
                    {"tool": call.name, "arguments": call.arguments, **state.intents[index]},
                )
            if state.results.get(index, {}).get("outcome") == "unknown":
                return await self._escalate(
                    "unknown_outcome",
                    f"Tool {call.name!r} timed out, so whether it took effect is unknown, and it is "
                    "not idempotent. A person must check whether it happened.",
                    {"tool": call.name, "arguments": call.arguments, "index": index},
                )
        if not state.pending_calls and state.invalid_turns >= self.agent.max_invalid_tool_turns:
            if await self._try_alternative("invalid_tool_calls"):
                return None
            return await self._escalate(
                "invalid_tool_calls",
                f"The model made invalid tool calls {state.invalid_turns} turns in a row.",
            )
        return None

    async def _run_tool_call(
        self, index: int, call: ToolCall, *, reservation: Reservation | None = None
    ) -> None:
        """Run one call and settle its budget: charged if it ran, given back if it did not."""
        try:
            ran = await self._run_one_tool_call(index, call, reservation)
        except BaseException:
            await self._release(reservation)
            raise
        if not ran:
            await self._release(reservation)

    async def _run_one_tool_call(self, index: int, call: ToolCall, reservation: Reservation | None) -> bool:
        """Run one call; True when it ran and its result was recorded with its reservation settled."""
        turn = self.state.turns - 1
        base: JsonDict = {"turn": turn, "index": index, "call_id": call.id, "tool": call.name}
        prepared = await self._prepare_call(index, call, base)
        if prepared is None:
            return False
        tool, call, arguments = prepared
        key = f"{self.run.id}:{turn}:{index}"
        prior = self.state.intents.get(index)
        attempt = prior["attempt"] + 1 if prior else 1
        context = ToolContext(
            run_id=self.run.id,
            idempotency_key=key,
            principal=self.run.principal,
            attempt=attempt,
            tool_name=tool.name,
            call_id=call.id,
        )
        notes: list[tuple[str, JsonDict]] = []
        result: JsonDict = {**base, "attempt": attempt}
        value: Any = None
        if await self._answer_from_cache(tool, call, result):
            return False
        if self.run.shadow_of is not None and tool.side_effect == "write":
            return await self._suppress(tool, call, result, reservation)
        started = time.perf_counter()
        try:
            await self.guards.admit(tool)
            async with self.guards.pool(tool):
                if tool.side_effect == "write":
                    intent = {**base, "arguments": call.arguments, "idempotency_key": key, "attempt": attempt}
                    await self._append(
                        EventDraft(EventKind.TOOL_INTENT, intent),
                        operations=(
                            OperationWrite(key, self.run.id, tool.name, "intent", arguments=call.arguments),
                        ),
                    )
                value = await self.guards.call(
                    tool, arguments, context, timeout_s=self._remaining_s(), events=notes
                )
            result.update(ok=True, outcome="succeeded", content=tool_result_text(value))
            await self.guards.store_result(tool, call.arguments or {}, self.run.principal, result["content"])
        except UnavailableError as exc:
            # Refused before (or between) attempts: nothing ran on this refusal; the model adapts.
            message = (
                f"Tool {tool.name!r} is temporarily unavailable: {exc}. "
                "Try again later or continue without it."
            )
            result.update(ok=False, outcome="failed", content=message, error="unavailable")
        except ToolTimeoutError as exc:
            result.update(ok=False, outcome="unknown", content=exc.message_for_model, error="timeout")
        except ToolError as exc:
            result.update(ok=False, outcome="failed", content=exc.message_for_model, error="failed")
        result["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        operations: tuple[OperationWrite, ...] = ()
        if tool.side_effect == "write" and result.get("error") != "unavailable":
            outcome = result["outcome"]
            stored = {"value": to_jsonable(value)} if outcome == "succeeded" else {"error": result["content"]}
            operations = (OperationWrite(key, self.run.id, tool.name, outcome, result=stored),)
        drafts = [EventDraft(kind, {**data, "turn": turn}) for kind, data in notes]
        drafts += await self._screen_result(result, tool.name)
        ran = result.get("error") != "unavailable"
        await self._append_settling(
            *drafts,
            EventDraft(EventKind.TOOL_RESULT, result),
            reservation=reservation if ran else None,
            actual=reservation.amounts if reservation is not None else {},
            operations=operations,
        )
        return ran

    async def _prepare_call(
        self, index: int, call: ToolCall, base: JsonDict
    ) -> tuple[Tool, ToolCall, pydantic.BaseModel] | None:
        """The tool, the call as a person decided it and its validated arguments; None when the call
        must not run (unknown tool, no permission, denied, invalid arguments: each recorded)."""
        tool = self.agent.tool(call.name)
        if tool is None:
            error: ToolError = unknown_tool_error(call.name, self.agent.tool_names)
            await self._record_invalid(base, error)
            return None
        if not await self._permitted(tool, base, call.arguments):
            return None
        decided = await self._apply_decision(index, call, base)
        if decided is None:
            return None
        try:
            return tool, decided, tool.validate(decided.arguments, decided.raw_arguments)
        except ToolArgumentsError as exc:
            await self._record_invalid(base, exc)
            return None

    async def _check_output(self, answer: str) -> tuple[str | None, RunStatus | None]:
        """Validate a final answer against the agent's output type: (normalised JSON, None) when it
        fits; else ask again once with the error, then hand the run to a person."""
        assert self.agent.output_type is not None
        text = answer.strip()
        if text.startswith("```"):  # models like to fence JSON; the fence is not the answer
            text = text.strip("`").removeprefix("json").strip()
        try:
            return self.agent.output_type.model_validate_json(text).model_dump_json(), None
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'answer'}: {err['msg']}"
                for err in exc.errors(include_url=False)
            )[:1000]
        if self.state.output_rejections >= 1 and not await self._try_alternative("invalid_output"):
            status = await self._escalate(
                "invalid_output",
                f"The final answer still does not match {self.agent.output_type.__name__} after one "
                f"correction ({problems}); a person should write or fix it.",
                {"answer": answer[:2000], "errors": problems},
            )
            return None, status
        if self.state.output_rejections >= 1:
            return None, None  # the alternative model answers next
        correction = (
            f"Your answer does not match the required schema ({problems}). Reply again with only a "
            "JSON object matching the schema."
        )
        await self._append(
            EventDraft(EventKind.OUTPUT_INVALID, {"errors": problems, "correction": correction})
        )
        return None, None

    async def _suppress(
        self, tool: Tool, call: ToolCall, result: JsonDict, reservation: Reservation | None
    ) -> bool:
        """Shadow runs do not write: the call is recorded as it would have been made, not made; the
        model reads that it was accepted, so the flow goes on as in production."""
        content = f"{tool.name} accepted."
        result.update(
            ok=True, outcome="suppressed", content=content, arguments=call.arguments, duration_ms=0.0
        )
        await self._append_settling(
            EventDraft(EventKind.TOOL_RESULT, result),
            reservation=reservation,
            actual=reservation.amounts if reservation is not None else {},
        )
        return True

    async def _answer_from_cache(self, tool: Tool, call: ToolCall, result: JsonDict) -> bool:
        """Record a cached result of a cacheable tool for the same arguments, if there is one."""
        cached = await self.guards.cached_result(tool, call.arguments or {}, self.run.principal)
        if cached is None:
            return False
        result.update(ok=True, outcome="succeeded", content=cached, cached=True, duration_ms=0.0)
        hit = EventDraft(EventKind.CACHE_HIT, {"layer": "tool", "tool": tool.name, "turn": result["turn"]})
        await self._append(hit, EventDraft(EventKind.TOOL_RESULT, result))
        return True

    async def _try_alternative(self, reason: str) -> bool:
        """The second recovery tier: switch once to the agent's alternative model before a person."""
        if self.recovery_model is None or self.state.recovered:
            return False
        data = {"reason": reason, "model": self.recovery_model.name, "turn": self.state.turns}
        await self._append(EventDraft(EventKind.RECOVERY_ALTERNATIVE, data))
        return True

    def _over_budget(self) -> bool:
        limit_s = self.agent.max_wall_clock_s
        return limit_s is not None and self.state.active_ms >= limit_s * 1000 * (1 + self.state.grants)

    async def _wall_clock_exhausted(self) -> RunStatus:
        return await self._escalate(
            "wall_clock",
            f"The run worked for {self.state.active_ms / 1000:.1f} s, over its "
            f"{self.agent.max_wall_clock_s:g} s limit; a person should decide how to continue.",
        )

    def _remaining_s(self) -> float | None:
        """Seconds left of the run's wall-clock budget (active time), or None when it has none."""
        if self.agent.max_wall_clock_s is None:
            return None
        budget_s = self.agent.max_wall_clock_s * (1 + self.state.grants)
        return max(0.001, budget_s - self.state.active_ms / 1000)

    async def _record_invalid(self, base: JsonDict, error: ToolError) -> None:
        # Not an exception that ends the run: the model reads what to fix and tries again.
        await self._append(
            EventDraft(
                EventKind.TOOL_RESULT,
                {
                    **base,
                    "ok": False,
                    "outcome": "failed",
                    "invalid": True,
                    "error": type(error).__name__,
                    "content": error.message_for_model,
                },
            )
        )

    async def _append(
        self,
        *drafts: EventDraft,
        usage: Usage | None = None,
        operations: Sequence[OperationWrite] = (),
        within: Callable[[], None] | None = None,
    ) -> None:
        # Tool calls of one turn run concurrently; the lock keeps their seqs gap-free and ordered.
        async with self._append_lock:
            events = await self.store.append_events(
                self.run.id,
                self.owner,
                self.state.next_seq,
                drafts,
                usage=usage,
                operations=operations,
                within=within,
            )
            for event in events:
                self.state.apply(event)
        self._emit(events)

    async def _finish(
        self,
        status: RunStatus,
        draft: EventDraft,
        *,
        output: str | None = None,
        error: str | None = None,
        escalation: NewEscalation | None = None,
    ) -> RunStatus:
        if self.state.waited_ms and status.is_terminal:  # so latency can leave people's time out
            draft = EventDraft(draft.kind, {**draft.data, "waited_ms": self.state.waited_ms})
        async with self._append_lock:
            event = await self.store.finish(
                self.run.id,
                self.owner,
                self.state.next_seq,
                status,
                draft,
                output=output,
                error=error,
                escalation=escalation,
            )
            self.state.apply(event)
        self._emit([event])
        return status

    def _emit(self, events: list[RunEvent]) -> None:
        notify(self.observers, self.run, events)
