"""The agent loop: events in order, parallel tools, invalid calls, limits, side effects, resume, sinks."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from tether import (
    Agent,
    ModelResponse,
    RunEvent,
    RunStatus,
    Runtime,
    ScriptedModel,
    SqliteRunStore,
    ToolCall,
    ToolContext,
    Usage,
    tool,
)
from tether.errors import ModelRetryableError
from tether.store import EventDraft, NewRun, OperationWrite

if TYPE_CHECKING:
    from conftest import Clock, ScriptModel


def ask(*calls: tuple[str, dict[str, Any] | None], usage: Usage | None = None) -> ModelResponse:
    """A turn asking for tool calls, with ids call_0, call_1, ..."""
    return ModelResponse(
        tool_calls=tuple(
            ToolCall(id=f"call_{i}", name=name, arguments=args) for i, (name, args) in enumerate(calls)
        ),
        usage=usage or Usage(10, 2, 0.001),
        finish_reason="tool_calls",
    )


def say(content: str, usage: Usage | None = None) -> ModelResponse:
    return ModelResponse(content=content, usage=usage or Usage(10, 2, 0.001), finish_reason="stop")


@dataclass
class Ledger:
    """Every real tool invocation, in order: (tool, arguments, context)."""

    calls: list[tuple[str, dict[str, Any], ToolContext | None]] = field(default_factory=list)

    def of(self, name: str) -> list[tuple[str, dict[str, Any], ToolContext | None]]:
        return [c for c in self.calls if c[0] == name]


def support_agent(ledger: Ledger, model: Any, **overrides: Any) -> Agent:
    """lookup (read), charge (idempotent write), send_email (non-idempotent write)."""

    @tool(side_effect="read")
    async def lookup(order_id: str) -> str:
        """Look up an order."""
        ledger.calls.append(("lookup", {"order_id": order_id}, None))
        return f"order {order_id}: shipped"

    @tool(side_effect="write", idempotent=True)
    async def charge(order_id: str, amount_usd: float, ctx: ToolContext) -> dict[str, Any]:
        """Charge a card through a provider that honours idempotency keys."""
        ledger.calls.append(("charge", {"order_id": order_id, "amount_usd": amount_usd}, ctx))
        return {"charged_usd": amount_usd, "key": ctx.idempotency_key}

    @tool(side_effect="write")
    async def send_email(to: str, ctx: ToolContext) -> str:
        """Send an email (no idempotency key support)."""
        ledger.calls.append(("send_email", {"to": to}, ctx))
        return f"sent to {to}"

    return Agent(
        name="support",
        instructions="You help customers.",
        model=model,
        tools=[lookup, charge, send_email],
        **overrides,
    )


def kinds(events: list[RunEvent]) -> list[str]:
    return [e.kind for e in events]


def last(events: list[RunEvent], kind: str) -> RunEvent:
    return [e for e in events if e.kind == kind][-1]


# --- a normal run -------------------------------------------------------------------------------


async def test_tool_run_succeeds_with_events_in_order(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A run with a read and a write call succeeds; its log holds the expected kinds, gap-free."""
    ledger = Ledger()
    model = script(
        ask(("lookup", {"order_id": "A1"})),
        ask(("charge", {"order_id": "A1", "amount_usd": 30})),
        say("Refunded 30 USD.", usage=Usage(5, 5, 0.002)),
    )
    run = await runtime.run(support_agent(ledger, model.model), "refund A1", principal="alice")
    assert run.status is RunStatus.SUCCEEDED
    assert run.output == "Refunded 30 USD."
    events = await runtime.events(run.id)
    assert kinds(events) == [
        "run.started",
        "model.request",
        "model.response",
        "tool.result",
        "model.request",
        "model.response",
        "tool.intent",
        "tool.result",
        "model.request",
        "model.response",
        "run.completed",
    ]
    assert [e.seq for e in events] == list(range(len(events)))
    assert [c[0] for c in ledger.calls] == ["lookup", "charge"]
    assert run.usage.input_tokens == 25
    assert run.usage.output_tokens == 9
    assert run.usage.cost_usd == pytest.approx(0.004)
    completed = events[-1].data
    assert completed["output"] == "Refunded 30 USD."
    assert completed["usage"]["input_tokens"] == 25
    assert run.attempts == 1
    assert run.lease_owner is None


async def test_model_sees_the_whole_conversation(runtime: Runtime, script: type[ScriptModel]) -> None:
    """Each request carries instructions, user input, the assistant's calls and the tool results."""
    ledger = Ledger()
    model = script(ask(("lookup", {"order_id": "A1"})), say("It shipped."))
    agent = support_agent(ledger, model.model)
    run = await runtime.run(agent, "where is A1?")
    assert model.requested_turns == [0, 1]
    second = model.requests[1]
    assert [m.role for m in second.messages] == ["system", "user", "assistant", "tool"]
    assert second.messages[0].content == "You help customers."
    assert second.messages[1].content == "where is A1?"
    assert second.messages[2].tool_calls[0].name == "lookup"
    assert second.messages[3].content == "order A1: shipped"
    assert second.messages[3].tool_call_id == "call_0"
    assert second.run_id == run.id
    assert second.tools == tuple(t.definition for t in agent.tools)


async def test_scripted_model_drives_a_run(runtime: Runtime) -> None:
    """The shipped ScriptedModel drives a whole run: tool call, then answer."""
    ledger = Ledger()
    model = ScriptedModel(
        [{"tool_calls": [{"name": "lookup", "arguments": {"order_id": "Z9"}}]}, {"content": "ok"}]
    )
    run = await runtime.run(support_agent(ledger, model), "where is Z9?")
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "ok")
    assert ledger.calls == [("lookup", {"order_id": "Z9"}, None)]


async def test_parallel_tool_calls_of_one_turn_overlap(runtime: Runtime, script: type[ScriptModel]) -> None:
    """Calls the model emits together run concurrently: both start before either finishes."""
    order: list[str] = []

    @tool(side_effect="read")
    async def slow_a() -> str:
        order.append("start a")
        await asyncio.sleep(0.2)
        order.append("end a")
        return "a"

    @tool(side_effect="read")
    async def slow_b() -> str:
        order.append("start b")
        await asyncio.sleep(0.2)
        order.append("end b")
        return "b"

    model = script(ask(("slow_a", {}), ("slow_b", {})), say("both done"))
    run = await runtime.run(Agent(name="par", model=model.model, tools=[slow_a, slow_b]), "go")
    assert run.status is RunStatus.SUCCEEDED
    assert sorted(order[:2]) == ["start a", "start b"]
    assert sorted(order[2:]) == ["end a", "end b"]
    tool_messages = [m for m in model.requests[1].messages if m.role == "tool"]
    assert [m.content for m in tool_messages] == ["a", "b"]


async def test_parallel_sync_tools_overlap(runtime: Runtime, script: type[ScriptModel]) -> None:
    """Sync tools of one turn run in threads at the same time, not one after the other."""
    order: list[str] = []

    @tool(side_effect="read")
    def blocking(name: str) -> str:
        order.append(f"start {name}")
        time.sleep(0.2)
        order.append(f"end {name}")
        return name

    model = script(ask(("blocking", {"name": "x"}), ("blocking", {"name": "y"})), say("done"))
    run = await runtime.run(Agent(name="sync", model=model.model, tools=[blocking]), "go")
    assert run.status is RunStatus.SUCCEEDED
    assert sorted(order[:2]) == ["start x", "start y"]


# --- invalid tool calls -------------------------------------------------------------------------


async def test_unknown_tool_is_reported_and_the_run_continues(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A hallucinated tool gives an invalid tool.result naming the available tools; the model tries again."""
    ledger = Ledger()
    model = script(ask(("delete_database", {})), say("Sorry."))
    run = await runtime.run(support_agent(ledger, model.model), "hi")
    assert run.status is RunStatus.SUCCEEDED
    result = last(await runtime.events(run.id), "tool.result").data
    assert result["invalid"] is True
    assert result["ok"] is False
    assert result["error"] == "ToolNotFoundError"
    assert "'delete_database'" in result["content"]
    assert "charge, lookup, send_email" in result["content"]
    told = [m.content for m in model.requests[1].messages if m.role == "tool"]
    assert told == [result["content"]]
    assert ledger.calls == []


async def test_invalid_arguments_are_reported_and_the_tool_not_run(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """Arguments that fail validation give an invalid tool.result naming the fields; the tool never runs."""
    ledger = Ledger()
    model = script(ask(("charge", {"order": "A1", "amount_usd": "lots"})), say("Let me fix that."))
    run = await runtime.run(support_agent(ledger, model.model), "hi")
    assert run.status is RunStatus.SUCCEEDED
    events = await runtime.events(run.id)
    assert "tool.intent" not in kinds(events)
    result = last(events, "tool.result").data
    assert (result["invalid"], result["error"]) == (True, "ToolArgumentsError")
    assert "order_id" in result["content"]
    assert "amount_usd" in result["content"]
    assert "'lots'" in result["content"]
    assert ledger.calls == []
    assert await runtime.store.list_operations(run.id) == []


async def test_unparseable_arguments_are_reported(runtime: Runtime, script: type[ScriptModel]) -> None:
    """Arguments whose JSON did not parse give an invalid tool.result quoting the raw text."""
    ledger = Ledger()
    broken = ModelResponse(
        tool_calls=(ToolCall(id="c", name="lookup", arguments=None, raw_arguments='{"order_id":'),)
    )
    model = script(broken, say("retrying"))
    run = await runtime.run(support_agent(ledger, model.model), "hi")
    assert run.status is RunStatus.SUCCEEDED
    result = last(await runtime.events(run.id), "tool.result").data
    assert result["invalid"] is True
    assert "not valid JSON" in result["content"]
    assert '{"order_id":' in result["content"]


async def test_three_invalid_turns_escalate(runtime: Runtime, script: type[ScriptModel]) -> None:
    """Three consecutive all-invalid turns hand the run to a person; no fourth model call."""
    ledger = Ledger()
    model = script(
        ask(("nope", {})),
        ask(("lookup", {"wrong": 1})),
        ask(("nope", {}), ("lookup", {})),
        say("never asked"),
    )
    run = await runtime.run(support_agent(ledger, model.model), "hi")
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requested_turns == [0, 1, 2]
    events = await runtime.events(run.id)
    assert events[-1].kind == "escalation.opened"
    assert events[-1].data["reason"] == "invalid_tool_calls"
    assert events[-1].data["input"] == "hi"
    assert "3 turns in a row" in (run.error or "")
    assert run.lease_owner is None


async def test_a_valid_turn_resets_the_invalid_count(runtime: Runtime, script: type[ScriptModel]) -> None:
    """Invalid turns must be consecutive to escalate: a valid turn in between resets the count."""
    ledger = Ledger()
    model = script(
        ask(("nope", {})),
        ask(("nope", {})),
        ask(("lookup", {"order_id": "A1"})),
        ask(("nope", {})),
        ask(("nope", {})),
        say("done"),
    )
    run = await runtime.run(support_agent(ledger, model.model), "hi")
    assert run.status is RunStatus.SUCCEEDED
    assert model.requested_turns == [0, 1, 2, 3, 4, 5]


# --- limits and model errors --------------------------------------------------------------------


async def test_step_limit_escalates_without_another_model_call(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """With max_steps=2 and a model that keeps calling tools, the run escalates after two model turns."""
    ledger = Ledger()
    model = script(*(ask(("lookup", {"order_id": f"A{i}"})) for i in range(5)))
    run = await runtime.run(support_agent(ledger, model.model, max_steps=2), "loop forever")
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requested_turns == [0, 1]
    assert len(ledger.of("lookup")) == 2
    escalation = (await runtime.events(run.id))[-1]
    assert escalation.kind == "escalation.opened"
    assert escalation.data["reason"] == "step_limit"
    assert escalation.data["steps"] == 2
    assert escalation.data["recent_messages"][-1]["role"] == "tool"
    assert "2 steps" in escalation.data["message"]


async def test_retryable_model_error_escalates_after_retries(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A model that keeps failing transiently is retried, then the run waits for a person (not failed)."""
    model = script(ModelRetryableError("upstream returned 503", status_code=503))
    runtime.gateway._sleep = _no_sleep  # backoff would only slow the test down
    run = await runtime.run(support_agent(Ledger(), model.model), "hi")
    assert run.status is RunStatus.WAITING_HUMAN
    events = await runtime.events(run.id)
    assert [e.kind for e in events].count("model.retry") == 2
    escalation = events[-1]
    assert escalation.kind == "escalation.opened"
    assert escalation.data["reason"] == "model_unavailable"
    assert escalation.data["context"] == {
        "error_class": "retryable",
        "error": "ModelRetryableError",
        "message": "upstream returned 503",
        "turn": 0,
    }


async def _no_sleep(delay_s: float) -> None:
    return None


async def test_exhausted_script_fails_the_run(runtime: Runtime) -> None:
    """A ScriptedModel that runs out of turns fails the run with a fatal run.failed event."""
    model = ScriptedModel([{"tool_calls": [{"name": "lookup", "arguments": {"order_id": "A"}}]}])
    run = await runtime.run(support_agent(Ledger(), model), "hi")
    assert run.status is RunStatus.FAILED
    failed = (await runtime.events(run.id))[-1]
    assert failed.kind == "run.failed"
    assert (failed.data["error_class"], failed.data["error"], failed.data["turn"]) == (
        "fatal",
        "ScriptExhaustedError",
        1,
    )


async def test_unexpected_model_exception_fails_the_run(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A non-tether exception from the model is a fatal run.failed; the run is not left running."""
    model = script(ValueError("provider SDK bug"))
    run = await runtime.run(support_agent(Ledger(), model.model), "hi")
    assert run.status is RunStatus.FAILED
    assert run.lease_owner is None
    failed = (await runtime.events(run.id))[-1]
    assert failed.kind == "run.failed"
    assert (failed.data["error"], failed.data["error_class"]) == ("ValueError", "fatal")


# --- side effects -------------------------------------------------------------------------------


async def test_write_tools_get_deterministic_keys_and_operations(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """Write tools get key run:turn:index, an intent before and a succeeded operation after; reads none."""
    ledger = Ledger()
    model = script(
        ask(("lookup", {"order_id": "A1"}), ("charge", {"order_id": "A1", "amount_usd": 30})),
        ask(("charge", {"order_id": "B2", "amount_usd": 5})),
        say("done"),
    )
    run = await runtime.run(support_agent(ledger, model.model), "charge both", principal="alice")
    assert run.status is RunStatus.SUCCEEDED
    contexts = [ctx for _, _, ctx in ledger.of("charge")]
    assert [c.idempotency_key for c in contexts if c] == [f"{run.id}:0:1", f"{run.id}:1:0"]
    first = contexts[0]
    assert first is not None
    assert (first.run_id, first.principal, first.attempt, first.tool_name, first.call_id) == (
        run.id,
        "alice",
        1,
        "charge",
        "call_1",
    )
    events = await runtime.events(run.id)
    intents = [e for e in events if e.kind == "tool.intent"]
    assert [e.data["idempotency_key"] for e in intents] == [f"{run.id}:0:1", f"{run.id}:1:0"]
    assert all(e.data["tool"] == "charge" for e in intents)
    intent_seq = intents[0].seq
    result_seq = next(e.seq for e in events if e.kind == "tool.result" and e.data["tool"] == "charge")
    assert intent_seq < result_seq
    operations = {op.idempotency_key: op for op in await runtime.store.list_operations(run.id)}
    assert set(operations) == {f"{run.id}:0:1", f"{run.id}:1:0"}
    op = operations[f"{run.id}:0:1"]
    assert (op.status, op.attempts, op.tool) == ("succeeded", 1, "charge")
    assert op.arguments == {"order_id": "A1", "amount_usd": 30}
    assert op.result == {"value": {"charged_usd": 30.0, "key": f"{run.id}:0:1"}}


async def test_tool_exception_is_reported_and_recorded(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A tool that raises gives a failed tool.result with the message; the operation is marked failed."""

    @tool(side_effect="write", idempotent=True)
    def refund(order_id: str) -> str:
        raise RuntimeError(f"order {order_id} already refunded")

    model = script(ask(("refund", {"order_id": "A1"})), say("It was already refunded."))
    run = await runtime.run(Agent(name="r", model=model.model, tools=[refund]), "refund")
    assert run.status is RunStatus.SUCCEEDED
    result = last(await runtime.events(run.id), "tool.result").data
    assert (result["ok"], result["outcome"], result["error"]) == (False, "failed", "failed")
    assert "RuntimeError: order A1 already refunded" in result["content"]
    assert "invalid" not in result
    [op] = await runtime.store.list_operations(run.id)
    assert op.status == "failed"
    assert op.result is not None
    assert "already refunded" in op.result["error"]


async def test_non_idempotent_write_timeout_escalates(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A non-idempotent write that times out has an unknown outcome: a person decides, not the model."""

    @tool(side_effect="write", timeout_s=0.05)
    async def wire_money(amount_usd: float) -> str:
        await asyncio.sleep(5)
        return "sent"

    model = script(ask(("wire_money", {"amount_usd": 100})), say("never asked"))
    run = await runtime.run(Agent(name="bank", model=model.model, tools=[wire_money]), "pay")
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requested_turns == [0]
    events = await runtime.events(run.id)
    assert last(events, "tool.result").data["outcome"] == "unknown"
    escalation = events[-1]
    assert escalation.kind == "escalation.opened"
    assert escalation.data["reason"] == "unknown_outcome"
    assert escalation.data["context"]["tool"] == "wire_money"
    assert escalation.data["context"]["index"] == 0
    [op] = await runtime.store.list_operations(run.id)
    assert op.status == "unknown"


async def test_idempotent_write_timeout_continues(runtime: Runtime, script: type[ScriptModel]) -> None:
    """An idempotent write that times out is reported to the model (it may retry safely); no escalation."""

    @tool(side_effect="write", idempotent=True, timeout_s=0.05)
    async def charge(amount_usd: float) -> str:
        await asyncio.sleep(5)
        return "charged"

    model = script(ask(("charge", {"amount_usd": 1})), say("I'll try later."))
    run = await runtime.run(Agent(name="shop", model=model.model, tools=[charge]), "pay")
    assert run.status is RunStatus.SUCCEEDED
    told = [m.content for m in model.requests[1].messages if m.role == "tool"]
    assert "did not finish within" in told[0]


# --- resume -------------------------------------------------------------------------------------


def model_response(turn: int, *calls: ToolCall, content: str = "") -> EventDraft:
    data = ModelResponse(
        content=content, tool_calls=calls, usage=Usage(10, 2, 0.001), model="script"
    ).to_dict()
    data["turn"] = turn
    return EventDraft("model.response", data)


def tool_result(turn: int, index: int, call: ToolCall, content: str, **extra: Any) -> EventDraft:
    data = {"turn": turn, "index": index, "call_id": call.id, "tool": call.name, "attempt": 1}
    data.update({"ok": True, "outcome": "succeeded", "content": content, **extra})
    return EventDraft("tool.result", data)


async def crashed_run(
    store: SqliteRunStore,
    clock: Clock,
    *steps: EventDraft | tuple[EventDraft, OperationWrite],
    run_id: str = "run_crashed",
    input: str = "refund order A1",
) -> str:
    """A run a dead worker claimed and recorded `steps` for; its lease has since expired."""
    await store.create_run(NewRun(id=run_id, agent_name="support", input=input, principal="alice"))
    assert await store.claim_run("dead-worker", 30, run_id=run_id) is not None
    for seq, step in enumerate(steps, start=1):
        draft, operations = (step[0], (step[1],)) if isinstance(step, tuple) else (step, ())
        await store.append_events(run_id, "dead-worker", seq, [draft], operations=operations)
    clock.advance(60)
    return run_id


def intent(run_id: str, turn: int, index: int, call: ToolCall) -> tuple[EventDraft, OperationWrite]:
    key = f"{run_id}:{turn}:{index}"
    data = {
        "turn": turn,
        "index": index,
        "call_id": call.id,
        "tool": call.name,
        "arguments": call.arguments,
        "idempotency_key": key,
        "attempt": 1,
    }
    return EventDraft("tool.intent", data), OperationWrite(key, run_id, call.name, "intent", call.arguments)


REQUEST_0 = EventDraft("model.request", {"turn": 0, "model": "script", "messages": 1})
LOOKUP_A = ToolCall(id="call_0", name="lookup", arguments={"order_id": "A"})
LOOKUP_B = ToolCall(id="call_1", name="lookup", arguments={"order_id": "B"})
CHARGE = ToolCall(id="call_0", name="charge", arguments={"order_id": "A1", "amount_usd": 30})
EMAIL = ToolCall(id="call_0", name="send_email", arguments={"to": "bob@example.com"})


async def test_resume_does_not_request_a_recorded_model_response(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A recorded model response is replayed on resume: the model is asked only for the next turn."""
    run_id = await crashed_run(store, clock, REQUEST_0, model_response(0, LOOKUP_A))
    ledger = Ledger()
    model = script(say("WRONG: turn 0 was requested again"), say("A shipped."))
    runtime.register(support_agent(ledger, model.model))
    run = await runtime.execute(run_id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "A shipped.")
    assert model.requested_turns == [1]
    assert ledger.calls == [("lookup", {"order_id": "A"}, None)]
    events = await store.load_events(run_id)
    assert kinds(events).count("model.response") == 2
    resumed = events[3]
    assert resumed.kind == "run.resumed"
    assert resumed.data == {"attempt": 2, "worker": "test-worker", "from_seq": 3}
    assert run.attempts == 2


async def test_resume_does_not_rerun_a_recorded_tool_result(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A tool whose result was recorded is not run again; its recorded result reaches the model."""
    run_id = await crashed_run(
        store,
        clock,
        REQUEST_0,
        model_response(0, LOOKUP_A, LOOKUP_B),
        tool_result(0, 0, LOOKUP_A, "A: recorded"),
    )
    ledger = Ledger()
    model = script(say("WRONG"), say("both looked up"))
    runtime.register(support_agent(ledger, model.model))
    run = await runtime.execute(run_id)
    assert run.status is RunStatus.SUCCEEDED
    assert ledger.calls == [("lookup", {"order_id": "B"}, None)]
    assert model.requested_turns == [1]
    told = [m.content for m in model.requests[0].messages if m.role == "tool"]
    assert told == ["A: recorded", "order B: shipped"]


async def test_resume_reinvokes_idempotent_write_with_the_same_key(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """An idempotent write with an intent but no result is re-invoked once, same key, attempt 2."""
    run_id = await crashed_run(
        store, clock, REQUEST_0, model_response(0, CHARGE), intent("run_crashed", 0, 0, CHARGE)
    )
    ledger = Ledger()
    model = script(say("WRONG"), say("charged"))
    runtime.register(support_agent(ledger, model.model))
    run = await runtime.execute(run_id)
    assert run.status is RunStatus.SUCCEEDED
    [(_, arguments, ctx)] = ledger.calls
    assert arguments == {"order_id": "A1", "amount_usd": 30}
    assert ctx is not None
    assert (ctx.idempotency_key, ctx.attempt, ctx.principal) == (f"{run_id}:0:0", 2, "alice")
    events = await store.load_events(run_id)
    assert [e.data["attempt"] for e in events if e.kind == "tool.intent"] == [1, 2]
    assert last(events, "tool.result").data["attempt"] == 2
    op = await store.get_operation(f"{run_id}:0:0")
    assert op is not None
    assert (op.status, op.attempts) == ("succeeded", 2)
    assert model.requested_turns == [1]


async def test_resume_never_reinvokes_a_non_idempotent_write(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A non-idempotent write with an intent but no result is not run again: a person checks it."""
    run_id = await crashed_run(
        store, clock, REQUEST_0, model_response(0, EMAIL), intent("run_crashed", 0, 0, EMAIL)
    )
    ledger = Ledger()
    model = script(say("WRONG"), say("WRONG"))
    runtime.register(support_agent(ledger, model.model))
    run = await runtime.execute(run_id)
    assert run.status is RunStatus.WAITING_HUMAN
    assert ledger.calls == []
    assert model.requests == []
    escalation = (await store.load_events(run_id))[-1]
    assert escalation.kind == "escalation.opened"
    assert escalation.data["reason"] == "unknown_outcome"
    assert escalation.data["context"]["tool"] == "send_email"
    assert escalation.data["context"]["idempotency_key"] == f"{run_id}:0:0"
    op = await store.get_operation(f"{run_id}:0:0")
    assert op is not None
    assert (op.status, op.attempts) == ("intent", 1)


async def test_resume_completes_a_recorded_final_answer(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A recorded final answer without run.completed is completed on resume, without a model call."""
    run_id = await crashed_run(store, clock, REQUEST_0, model_response(0, content="All done."))
    model = script(say("WRONG"))
    runtime.register(support_agent(Ledger(), model.model))
    run = await runtime.execute(run_id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "All done.")
    assert model.requests == []


async def test_resume_after_crash_during_model_call_asks_again(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A model request with no recorded response is asked again, once, for the same turn."""
    run_id = await crashed_run(store, clock, REQUEST_0)
    model = script(say("answer"))
    runtime.register(support_agent(Ledger(), model.model))
    run = await runtime.execute(run_id)
    assert (run.status, run.output) == (RunStatus.SUCCEEDED, "answer")
    assert model.requested_turns == [0]


async def test_resume_at_the_step_limit_escalates(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A run that had used all its steps before the crash escalates on resume, without a model call."""
    run_id = await crashed_run(
        store, clock, REQUEST_0, model_response(0, LOOKUP_A), tool_result(0, 0, LOOKUP_A, "A")
    )
    model = script(say("WRONG"), say("WRONG"))
    runtime.register(support_agent(Ledger(), model.model, max_steps=1))
    run = await runtime.execute(run_id)
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requests == []
    assert (await store.load_events(run_id))[-1].data["reason"] == "step_limit"


async def test_resume_escalates_a_recorded_unknown_outcome(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A recorded unknown outcome of a non-idempotent write still goes to a person on resume."""
    run_id = await crashed_run(
        store,
        clock,
        REQUEST_0,
        model_response(0, EMAIL),
        intent("run_crashed", 0, 0, EMAIL),
        tool_result(
            0, 0, EMAIL, "Tool 'send_email' did not finish", ok=False, outcome="unknown", error="timeout"
        ),
    )
    ledger = Ledger()
    model = script(say("WRONG"), ask(("send_email", {"to": "bob@example.com"})), say("WRONG"))
    runtime.register(support_agent(ledger, model.model))
    run = await runtime.execute(run_id)
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requests == []
    assert ledger.calls == []
    assert (await store.load_events(run_id))[-1].data["reason"] == "unknown_outcome"


async def test_resume_escalates_recorded_invalid_turns(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """Three invalid turns recorded before the crash escalate on resume rather than asking the model again."""
    steps: list[EventDraft] = []
    bad = ToolCall(id="call_0", name="nope", arguments={})
    for turn in range(3):
        steps += [
            EventDraft("model.request", {"turn": turn}),
            model_response(turn, bad),
            tool_result(turn, 0, bad, "Unknown tool 'nope'", ok=False, outcome="failed", invalid=True),
        ]
    run_id = await crashed_run(store, clock, *steps)
    model = script(say("WRONG"), say("WRONG"), say("WRONG"), say("WRONG"))
    runtime.register(support_agent(Ledger(), model.model))
    run = await runtime.execute(run_id)
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requests == []
    assert (await store.load_events(run_id))[-1].data["reason"] == "invalid_tool_calls"


# --- event sinks --------------------------------------------------------------------------------


async def test_failing_sink_does_not_break_the_run(
    store: SqliteRunStore, script: type[ScriptModel], caplog: pytest.LogCaptureFixture
) -> None:
    """A raising sink is logged and skipped; the run succeeds and later sinks get the events in order."""
    received: list[RunEvent] = []

    def broken(event: RunEvent) -> None:
        raise RuntimeError("sink down")

    model = script(ask(("lookup", {"order_id": "A"}), ("lookup", {"order_id": "B"})), say("done"))
    async with Runtime(store, event_sinks=[broken, received.append]) as runtime:
        run = await runtime.run(support_agent(Ledger(), model.model), "hi")
    assert run.status is RunStatus.SUCCEEDED
    events = await store.load_events(run.id)
    assert [e.seq for e in received] == sorted(e.seq for e in received)
    assert received == events[len(events) - len(received) :]
    assert received[-1].kind == "run.completed"
    assert "observer" in caplog.text
    assert "sink down" in caplog.text


async def test_sink_receives_every_event_of_the_run(store: SqliteRunStore, script: type[ScriptModel]) -> None:
    """A sink sees the run's whole log, run.started included, in seq order."""
    received: list[RunEvent] = []
    model = script(ask(("lookup", {"order_id": "A"})), say("done"))
    async with Runtime(store, event_sinks=[received.append]) as runtime:
        run = await runtime.run(support_agent(Ledger(), model.model), "hi")
    assert [(e.seq, e.kind) for e in received] == [(e.seq, e.kind) for e in await store.load_events(run.id)]


async def test_sink_receives_run_failed_of_a_run_that_cannot_start(
    store: SqliteRunStore,
) -> None:
    """When a run fails before its loop starts (agent unknown here), the sink still sees run.failed."""
    received: list[RunEvent] = []
    await store.create_run(NewRun(id="run_orphan", agent_name="ghost", input="hi"))
    async with Runtime(store, event_sinks=[received.append]) as runtime:
        run = await runtime.execute("run_orphan")
    assert run.status is RunStatus.FAILED
    assert "run.failed" in kinds(received)
