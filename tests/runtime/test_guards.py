"""Guards around tool and model calls: breakers, retries, rate limits, bulkheads, wall clock, routing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

from tether import (
    Agent,
    ConfigurationError,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RunEvent,
    RunStatus,
    Runtime,
    SqliteRunStore,
    ToolCall,
    ToolContext,
    Usage,
    tool,
)
from tether.errors import (
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ContextTooLongError,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
)
from tether.gateway import Gateway
from tether.gateway.gateway import RoutingRule
from tether.resilience import (
    BreakerPolicy,
    BreakerRegistry,
    BreakerState,
    BulkheadRegistry,
    RateLimit,
    RateLimiter,
    RetryPolicy,
)
from tether.runtime import RunState
from tether.runtime.guards import ToolGuards
from tether.store import EventDraft, NewRun
from tether.types import EventKind

if TYPE_CHECKING:
    from conftest import Clock, ScriptModel

NO_RETRY = RetryPolicy(max_attempts=1)


def ask(*calls: tuple[str, dict[str, Any]]) -> ModelResponse:
    """A turn asking for tool calls, with ids call_0, call_1, ..."""
    return ModelResponse(
        tool_calls=tuple(
            ToolCall(id=f"call_{i}", name=name, arguments=args) for i, (name, args) in enumerate(calls)
        ),
        usage=Usage(10, 2, 0.001),
        finish_reason="tool_calls",
    )


def say(content: str) -> ModelResponse:
    return ModelResponse(content=content, usage=Usage(10, 2, 0.001), finish_reason="stop")


def of(events: list[RunEvent], kind: str) -> list[RunEvent]:
    return [e for e in events if e.kind == kind]


def results(events: list[RunEvent]) -> list[dict[str, Any]]:
    return [e.data for e in of(events, "tool.result")]


class Seconds:
    """A float clock in seconds for breakers and buckets, moved only by the test."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self.now_s = start_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@asynccontextmanager
async def opened(store: SqliteRunStore, **options: Any) -> AsyncIterator[Runtime]:
    runtime = Runtime(store, worker_id="test-worker", **options)
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def crashed_run(store: SqliteRunStore, clock: Clock, *steps: EventDraft, run_id: str = "run_x") -> str:
    """A run a dead worker recorded `steps` for; its lease has since expired."""
    await store.create_run(NewRun(id=run_id, agent_name="support", input="where is A?", principal="alice"))
    assert await store.claim_run("dead-worker", 30, run_id=run_id) is not None
    for seq, step in enumerate(steps, start=1):
        await store.append_events(run_id, "dead-worker", seq, [step])
    clock.advance(60)
    return run_id


def recorded_response(turn: int, *calls: ToolCall, duration_ms: float, content: str = "") -> EventDraft:
    data = ModelResponse(content=content, tool_calls=calls, usage=Usage(10, 2, 0.001)).to_dict()
    data.update(turn=turn, duration_ms=duration_ms)
    return EventDraft("model.response", data)


LOOKUP_A = ToolCall(id="call_0", name="lookup", arguments={"order_id": "A"})


# --- circuit breaker ----------------------------------------------------------------------------


async def test_failing_tool_trips_its_breaker_and_later_calls_are_not_invoked(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """After failure_threshold failures a tool's breaker opens: later calls, in any run, are not invoked."""
    invoked: list[str] = []

    @tool(side_effect="read")
    async def inventory(sku: str) -> str:
        """Stock level of a product."""
        invoked.append(sku)
        raise ConnectionError("inventory service reset the connection")

    guards = ToolGuards(breakers=BreakerRegistry(BreakerPolicy(failure_threshold=2, cooldown_s=600)))
    first = script(
        ask(("inventory", {"sku": "A"})),
        ask(("inventory", {"sku": "B"})),
        ask(("inventory", {"sku": "C"})),
        say("The inventory service is down."),
    )
    second = script(ask(("inventory", {"sku": "D"})), say("Still down."))
    async with opened(store, guards=guards) as runtime:
        run = await runtime.run(Agent(name="shop", model=first.model, tools=[inventory]), "stock?")
        again = await runtime.run(Agent(name="shop", model=second.model, tools=[inventory]), "stock?")
        events = await runtime.events(run.id)
        later = await runtime.events(again.id)

    assert (run.status, again.status) == (RunStatus.SUCCEEDED, RunStatus.SUCCEEDED)
    assert invoked == ["A", "B"]
    assert [r["error"] for r in results(events)] == ["failed", "failed", "unavailable"]
    refused = results(events)[2]
    assert (refused["ok"], refused["outcome"]) == (False, "failed")
    assert "Tool 'inventory' is temporarily unavailable" in refused["content"]
    assert "circuit breaker 'tool:inventory' is open" in refused["content"]
    assert "Try again later or continue without it." in refused["content"]
    told = [m.content for m in first.requests[3].messages if m.role == "tool"]
    assert told[-1] == refused["content"]
    [opened_event] = of(events, "breaker.opened")
    assert opened_event.data == {"breaker": "tool:inventory", "from": "closed", "to": "open", "turn": 1}
    assert opened_event.seq < of(events, "tool.result")[1].seq
    assert [r["error"] for r in results(later)] == ["unavailable"]
    assert of(later, "breaker.opened") == []
    assert await guards.breaker(inventory).state() is BreakerState.OPEN


async def test_breaker_lets_a_probe_through_after_its_cooldown_and_closes(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """Once the cooldown has passed one probe call runs; its success closes the breaker (breaker.changed)."""
    clock = Seconds()
    healthy = False
    invoked: list[str] = []

    @tool(side_effect="read")
    async def inventory(sku: str) -> str:
        invoked.append(sku)
        if not healthy:
            raise ConnectionError("down")
        return f"{sku}: 3 in stock"

    policy = BreakerPolicy(failure_threshold=1, cooldown_s=30)
    guards = ToolGuards(breakers=BreakerRegistry(policy, clock=clock))
    async with opened(store, guards=guards) as runtime:

        async def one_call(sku: str) -> list[RunEvent]:
            model = script(ask(("inventory", {"sku": sku})), say("ok"))
            run = await runtime.run(Agent(name="shop", model=model.model, tools=[inventory]), sku)
            return await runtime.events(run.id)

        await one_call("A")
        clock.advance(29)
        healthy = True
        refused = await one_call("B")
        clock.advance(1)
        probe = await one_call("C")
        after = await one_call("D")

    assert invoked == ["A", "C", "D"]
    assert results(refused)[0]["error"] == "unavailable"
    assert results(probe)[0]["ok"] is True
    assert [e.data for e in of(probe, "breaker.changed")] == [
        {"breaker": "tool:inventory", "from": "half_open", "to": "closed", "turn": 0}
    ]
    assert results(after)[0]["content"] == "D: 3 in stock"
    assert await guards.breaker(inventory).state() is BreakerState.CLOSED


async def test_half_open_probe_is_not_lost_when_the_rate_limit_refuses_it(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """A probe slot taken by admit() but refused by the tool's rate limit is freed: the next call probes."""
    breaker_clock, bucket_clock = Seconds(), Seconds()
    healthy = False
    invoked: list[str] = []

    @tool(side_effect="read", rate_limit=RateLimit(capacity=1, refill_per_s=0.1))
    async def quote(sku: str) -> str:
        invoked.append(sku)
        if not healthy:
            raise ConnectionError("down")
        return "42 USD"

    guards = ToolGuards(
        breakers=BreakerRegistry(BreakerPolicy(failure_threshold=1, cooldown_s=30), clock=breaker_clock),
        rate_limiter=RateLimiter(clock=bucket_clock),
        rate_limit_wait_s=0,
    )
    async with opened(store, guards=guards) as runtime:

        async def one_call(sku: str) -> dict[str, Any]:
            model = script(ask(("quote", {"sku": sku})), say("ok"))
            run = await runtime.run(Agent(name="prices", model=model.model, tools=[quote]), sku)
            return results(await runtime.events(run.id))[0]

        await one_call("A")  # fails: breaker opens; the bucket is now empty
        breaker_clock.advance(30)  # cooldown over: the next admitted call is the half-open probe
        healthy = True
        limited = await one_call("B")  # the bucket refuses it after the breaker handed out the probe
        bucket_clock.advance(10)  # the bucket holds a token again; the breaker's clock has not moved
        probe = await one_call("C")

    assert "rate limit 'tool:quote'" in limited["content"]
    assert invoked == ["A", "C"], (
        f"the probe slot leaked: the call after the refusal got {probe['content']!r}"
    )
    assert probe["ok"] is True
    assert await guards.breaker(quote).state() is BreakerState.CLOSED


# --- retries ------------------------------------------------------------------------------------


async def test_read_tool_is_retried_until_it_succeeds(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A read tool that fails twice is retried: two tool.retry events, one ok result, ctx.attempt 1, 2, 3."""
    attempts: list[int] = []

    @tool(side_effect="read", retry=RetryPolicy(max_attempts=3, initial_backoff_s=0))
    async def weather(city: str, ctx: ToolContext) -> str:
        attempts.append(ctx.attempt)
        if len(attempts) < 3:
            raise ConnectionError(f"weather backend hiccup {len(attempts)}")
        return f"{city}: 4 °C"

    model = script(ask(("weather", {"city": "Oslo"})), say("It is cold."))
    run = await runtime.run(Agent(name="w", model=model.model, tools=[weather]), "weather?")
    assert run.status is RunStatus.SUCCEEDED
    assert attempts == [1, 2, 3]
    events = await runtime.events(run.id)
    retries = of(events, "tool.retry")
    assert [(e.data["tool"], e.data["attempt"], e.data["delay_s"]) for e in retries] == [
        ("weather", 1, 0.0),
        ("weather", 2, 0.0),
    ]
    assert "weather backend hiccup 1" in retries[0].data["error"]
    [result] = results(events)
    assert (result["ok"], result["content"], result["attempt"]) == (True, "Oslo: 4 °C", 1)
    assert retries[-1].seq < of(events, "tool.result")[0].seq
    assert [m.content for m in model.requests[1].messages if m.role == "tool"] == ["Oslo: 4 °C"]


async def test_exhausted_retries_report_the_last_error(runtime: Runtime, script: type[ScriptModel]) -> None:
    """A tool that fails every attempt is invoked max_attempts times; the model sees the last error."""
    attempts: list[int] = []

    @tool(side_effect="read", retry=RetryPolicy(max_attempts=2, initial_backoff_s=0))
    async def weather(city: str, ctx: ToolContext) -> str:
        attempts.append(ctx.attempt)
        raise ConnectionError(f"attempt {ctx.attempt} refused")

    model = script(ask(("weather", {"city": "Oslo"})), say("No weather today."))
    run = await runtime.run(Agent(name="w", model=model.model, tools=[weather]), "weather?")
    assert run.status is RunStatus.SUCCEEDED
    assert attempts == [1, 2]
    events = await runtime.events(run.id)
    assert len(of(events, "tool.retry")) == 1
    [result] = results(events)
    assert (result["ok"], result["error"]) == (False, "failed")
    assert "attempt 2 refused" in result["content"]


async def test_idempotent_write_retries_reuse_one_idempotency_key(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """Each retry of an idempotent write gets the same idempotency key; one intent, one operation."""
    seen: list[tuple[str, int]] = []

    @tool(side_effect="write", idempotent=True, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0))
    async def charge(amount_usd: float, ctx: ToolContext) -> str:
        seen.append((ctx.idempotency_key, ctx.attempt))
        if len(seen) < 3:
            raise ConnectionError("payment gateway timed out the socket")
        return f"charged {amount_usd}"

    model = script(ask(("charge", {"amount_usd": 30})), say("Charged."))
    run = await runtime.run(Agent(name="pay", model=model.model, tools=[charge]), "charge 30")
    assert run.status is RunStatus.SUCCEEDED
    key = f"{run.id}:0:0"
    assert seen == [(key, 1), (key, 2), (key, 3)]
    events = await runtime.events(run.id)
    assert [e.data["idempotency_key"] for e in of(events, "tool.intent")] == [key]
    assert len(of(events, "tool.retry")) == 2
    assert results(events)[0]["content"] == "charged 30.0"
    [op] = await runtime.store.list_operations(run.id)
    assert (op.idempotency_key, op.status, op.attempts) == (key, "succeeded", 1)


def test_retry_on_a_non_idempotent_write_is_refused_at_decoration() -> None:
    """@tool(side_effect="write", retry=...) without idempotent=True raises ConfigurationError saying why."""
    with pytest.raises(ConfigurationError) as caught:

        @tool(side_effect="write", retry=RetryPolicy(max_attempts=2))
        def send_email(to: str) -> str:
            return to

    message = str(caught.value)
    assert "'send_email'" in message
    assert "not idempotent" in message
    assert "run twice" in message
    assert "idempotent=True" in message

    @tool(side_effect="write", idempotent=True, retry=RetryPolicy(max_attempts=2))
    def send_email_once(to: str, ctx: ToolContext) -> str:
        return ctx.idempotency_key

    assert send_email_once.retry == RetryPolicy(max_attempts=2)


async def test_write_refused_between_retries_leaves_no_dangling_intent(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """A write that ran and failed, whose retry its opened breaker refused, gets a failed operation."""
    invoked: list[int] = []

    @tool(side_effect="write", idempotent=True, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0))
    async def refund(order_id: str, ctx: ToolContext) -> str:
        invoked.append(ctx.attempt)
        raise ConnectionError("card processor reset the connection")

    guards = ToolGuards(breakers=BreakerRegistry(BreakerPolicy(failure_threshold=1, cooldown_s=600)))
    model = script(ask(("refund", {"order_id": "A1"})), say("Refund failed."))
    async with opened(store, guards=guards) as runtime:
        run = await runtime.run(Agent(name="r", model=model.model, tools=[refund]), "refund A1")
        events = await runtime.events(run.id)
        [op] = await runtime.store.list_operations(run.id)
    assert invoked == [1]  # the retry was refused by the breaker the first failure opened
    assert len(of(events, "breaker.opened")) == 1
    [result] = results(events)
    assert (result["ok"], result["outcome"]) == (False, "failed")
    assert op.status == "failed", (
        f"the refund ran and failed, yet its operation is left as {op.status!r}, like a crash mid-call"
    )


# --- rate limits --------------------------------------------------------------------------------


async def test_tool_rate_limit_refuses_a_call_until_the_bucket_refills(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """With an empty bucket and no wait, a call is refused as unavailable (not invoked) until the refill."""
    clock = Seconds()
    invoked: list[str] = []

    @tool(side_effect="read", rate_limit=RateLimit(capacity=1, refill_per_s=0.001))
    async def quote(sku: str) -> str:
        invoked.append(sku)
        return f"{sku}: 42 USD"

    guards = ToolGuards(rate_limiter=RateLimiter(clock=clock), rate_limit_wait_s=0)
    model = script(ask(("quote", {"sku": "A"})), ask(("quote", {"sku": "B"})), say("One price known."))
    later = script(ask(("quote", {"sku": "C"})), say("ok"))
    async with opened(store, guards=guards) as runtime:
        run = await runtime.run(Agent(name="prices", model=model.model, tools=[quote]), "prices")
        events = await runtime.events(run.id)
        clock.advance(1000)  # 1 / refill_per_s: one token again
        refilled = await runtime.run(Agent(name="prices", model=later.model, tools=[quote]), "again")
        refilled_events = await runtime.events(refilled.id)

    assert run.status is RunStatus.SUCCEEDED
    assert invoked == ["A", "C"]
    first, second = results(events)
    assert (first["ok"], first["content"]) == (True, "A: 42 USD")
    assert (second["ok"], second["outcome"], second["error"]) == (False, "failed", "unavailable")
    assert "Tool 'quote' is temporarily unavailable" in second["content"]
    assert "rate limit 'tool:quote'" in second["content"]
    assert [m.content for m in model.requests[2].messages if m.role == "tool"][-1] == second["content"]
    assert await guards.breaker(quote).state() is BreakerState.CLOSED  # a refusal is not a failure
    assert results(refilled_events)[0]["content"] == "C: 42 USD"


async def test_write_refused_by_its_rate_limit_records_no_intent(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """A write refused before it starts leaves no tool.intent and no operation behind."""
    sent: list[str] = []

    @tool(side_effect="write", rate_limit=RateLimit(capacity=1, refill_per_s=0.001))
    async def send_sms(to: str) -> str:
        sent.append(to)
        return "sent"

    guards = ToolGuards(rate_limiter=RateLimiter(clock=Seconds()), rate_limit_wait_s=0)
    model = script(ask(("send_sms", {"to": "+1"})), ask(("send_sms", {"to": "+2"})), say("done"))
    async with opened(store, guards=guards) as runtime:
        run = await runtime.run(Agent(name="sms", model=model.model, tools=[send_sms]), "text both")
        events = await runtime.events(run.id)
        operations = await runtime.store.list_operations(run.id)
    assert run.status is RunStatus.SUCCEEDED
    assert sent == ["+1"]
    assert [e.data["arguments"] for e in of(events, "tool.intent")] == [{"to": "+1"}]
    assert [r["error"] for r in results(events) if not r["ok"]] == ["unavailable"]
    assert [(op.idempotency_key, op.status) for op in operations] == [(f"{run.id}:0:0", "succeeded")]


# --- bulkheads ----------------------------------------------------------------------------------


def payment_tools(order: list[str]) -> list[Any]:
    """Two idempotent writes sharing the one-slot bulkhead "payments"; each logs its start and end."""

    @tool(side_effect="write", idempotent=True, bulkhead="payments", max_concurrent=1)
    async def pay_card(amount_usd: float) -> str:
        order.append("start card")
        await asyncio.sleep(0.05)
        order.append("end card")
        return "card paid"

    @tool(side_effect="write", idempotent=True, bulkhead="payments", max_concurrent=1)
    async def pay_wire(amount_usd: float) -> str:
        order.append("start wire")
        await asyncio.sleep(0.05)
        order.append("end wire")
        return "wire paid"

    return [pay_card, pay_wire]


async def test_bulkhead_serialises_parallel_calls_of_one_turn(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """Two tools sharing a one-slot bulkhead, called together, run one after the other and both succeed."""
    order: list[str] = []
    guards = ToolGuards(bulkheads=BulkheadRegistry(max_wait_s=2, poll_s=0.005))
    model = script(ask(("pay_card", {"amount_usd": 5}), ("pay_wire", {"amount_usd": 7})), say("Both paid."))
    async with opened(store, guards=guards) as runtime:
        run = await runtime.run(Agent(name="pay", model=model.model, tools=payment_tools(order)), "pay")
        events = await runtime.events(run.id)
    assert run.status is RunStatus.SUCCEEDED
    assert order in (
        ["start card", "end card", "start wire", "end wire"],
        ["start wire", "end wire", "start card", "end card"],
    )
    assert sorted(r["content"] for r in results(events)) == ["card paid", "wire paid"]
    assert max(r["duration_ms"] for r in results(events)) >= 90  # the second waited for the first


async def test_full_bulkhead_refuses_at_once_by_default(runtime: Runtime, script: type[ScriptModel]) -> None:
    """With the default registry (no wait), the parallel call finding the pool full is refused, not queued."""
    order: list[str] = []
    model = script(ask(("pay_card", {"amount_usd": 5}), ("pay_wire", {"amount_usd": 7})), say("One paid."))
    run = await runtime.run(Agent(name="pay", model=model.model, tools=payment_tools(order)), "pay")
    assert run.status is RunStatus.SUCCEEDED
    assert len(order) == 2
    assert order[0].startswith("start")
    assert order[1] == order[0].replace("start", "end")
    ok, refused = sorted(results(await runtime.events(run.id)), key=lambda r: not r["ok"])
    assert ok["ok"] is True
    assert refused["error"] == "unavailable"
    assert "bulkhead 'payments' is full" in refused["content"]
    assert len(await runtime.store.list_operations(run.id)) == 1


# --- wall clock ---------------------------------------------------------------------------------


async def test_wall_clock_escalates_a_run_whose_tools_use_up_its_budget(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """With 0.3 s of budget and a 0.2 s tool the model keeps calling, the run escalates after 2 turns."""
    calls: list[str] = []

    @tool(side_effect="read")
    async def crawl(page: int) -> str:
        calls.append(f"page {page}")
        await asyncio.sleep(0.2)
        return f"page {page} crawled"

    model = script(*(ask(("crawl", {"page": n})) for n in range(10)))
    agent = Agent(name="crawler", model=model.model, tools=[crawl], max_wall_clock_s=0.3)
    started = time.perf_counter()
    run = await runtime.run(agent, "crawl everything")
    elapsed_s = time.perf_counter() - started
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requested_turns == [0, 1]
    assert calls == ["page 0", "page 1"]
    events = await runtime.events(run.id)
    escalation = events[-1]
    assert escalation.kind == "escalation.opened"
    assert escalation.data["reason"] == "wall_clock"
    assert escalation.data["steps"] == 2
    assert "over its 0.3 s limit" in escalation.data["message"]
    second = results(events)[1]
    assert (second["error"], second["outcome"]) == ("timeout", "unknown")  # cut at the remaining ~0.1 s
    assert elapsed_s < 0.6


async def test_tool_timeout_is_cut_to_the_remaining_wall_clock(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """A resumed run with 0.1 s of budget left gives a 5 s-timeout read tool only ~0.1 s; then escalates."""
    run_id = await crashed_run(
        store,
        clock,
        EventDraft("model.request", {"turn": 0}),
        recorded_response(0, LOOKUP_A, duration_ms=900.0),
    )

    @tool(side_effect="read", timeout_s=5)
    async def lookup(order_id: str) -> str:
        await asyncio.sleep(5)
        return "never"

    model = script(say("WRONG: the budget is spent"))
    runtime.register(Agent(name="support", model=model.model, tools=[lookup], max_wall_clock_s=1.0))
    started = time.perf_counter()
    run = await runtime.execute(run_id)
    elapsed_s = time.perf_counter() - started
    assert run.status is RunStatus.WAITING_HUMAN
    assert model.requests == []
    events = await store.load_events(run_id)
    [result] = results(events)
    assert (result["ok"], result["outcome"], result["error"]) == (False, "unknown", "timeout")
    assert "did not finish within 0.1 s" in result["content"]
    assert 90 <= result["duration_ms"] < 400
    assert elapsed_s < 1.0
    escalation = events[-1]
    assert escalation.data["reason"] == "wall_clock"
    assert escalation.data["recent_messages"][-1] == {"role": "tool", "content": result["content"]}


async def test_resumed_run_over_its_budget_escalates_without_a_model_call(
    store: SqliteRunStore, clock: Clock, runtime: Runtime, script: type[ScriptModel]
) -> None:
    """Work recorded before a crash counts: 0.4 s + 0.7 s logged against a 1 s budget escalates on resume."""
    tool_result = {"turn": 0, "index": 0, "call_id": "call_0", "tool": "lookup", "attempt": 1}
    tool_result.update(ok=True, outcome="succeeded", content="A shipped", duration_ms=700.0)
    run_id = await crashed_run(
        store,
        clock,
        EventDraft("model.request", {"turn": 0}),
        recorded_response(0, LOOKUP_A, duration_ms=400.0),
        EventDraft("tool.result", tool_result),
    )
    invoked: list[str] = []

    @tool(side_effect="read")
    def lookup(order_id: str) -> str:
        invoked.append(order_id)
        return "shipped"

    model = script(say("WRONG"), say("WRONG"))
    runtime.register(Agent(name="support", model=model.model, tools=[lookup], max_wall_clock_s=1.0))
    run = await runtime.execute(run_id)
    assert run.status is RunStatus.WAITING_HUMAN
    assert (model.requests, invoked) == ([], [])
    escalation = (await store.load_events(run_id))[-1]
    assert escalation.data["reason"] == "wall_clock"
    assert "worked for 1.1 s, over its 1 s limit" in escalation.data["message"]


def test_active_ms_counts_model_calls_and_the_longest_tool_call_of_each_turn() -> None:
    """Folding a log (with a resume mid-turn) sums model durations and, per turn, the longest tool call."""
    calls = tuple(ToolCall(id=f"c{i}", name="lookup", arguments={"order_id": str(i)}) for i in range(3))

    def response(turn: int, duration_ms: float, *tool_calls: ToolCall) -> tuple[str, dict[str, Any]]:
        data = ModelResponse(content="" if tool_calls else "done", tool_calls=tool_calls).to_dict()
        data.update(turn=turn, duration_ms=duration_ms)
        return EventKind.MODEL_RESPONSE, data

    def result(turn: int, index: int, duration_ms: float) -> tuple[str, dict[str, Any]]:
        data = {"turn": turn, "index": index, "content": f"r{index}", "duration_ms": duration_ms}
        return EventKind.TOOL_RESULT, data

    log = [
        (EventKind.RUN_STARTED, {"input": "hi"}),
        response(0, 100.0, *calls),
        result(0, 1, 200.0),
        (EventKind.RUN_RESUMED, {"attempt": 2}),  # crashed mid-turn; the rest ran on another worker
        result(0, 0, 500.0),
        result(0, 2, 300.0),
        response(1, 40.0, calls[0]),
        result(1, 0, 60.0),
        response(2, 50.0),
    ]
    events = [RunEvent("run_1", seq, kind, 0, data) for seq, (kind, data) in enumerate(log)]
    assert RunState.fold("run_1", events[:3]).active_ms == pytest.approx(300.0)
    assert RunState.fold("run_1", events[:6]).active_ms == pytest.approx(600.0)
    state = RunState.fold("run_1", events)
    assert state.active_ms == pytest.approx(100 + 500 + 40 + 60 + 50)
    assert state.resumes == 1
    live = RunState("run_1")
    for event in events:
        live.apply(event)
    assert live.active_ms == state.active_ms


async def test_tool_retries_stay_within_the_wall_clock_budget(
    runtime: Runtime, script: type[ScriptModel]
) -> None:
    """Retrying a timed-out idempotent tool does not take the run past its wall-clock budget."""
    attempts: list[int] = []

    @tool(side_effect="read", timeout_s=5, retry=RetryPolicy(max_attempts=3, initial_backoff_s=0))
    async def report(quarter: str, ctx: ToolContext) -> str:
        attempts.append(ctx.attempt)
        await asyncio.sleep(5)
        return "never"

    model = script(ask(("report", {"quarter": "Q3"})), say("WRONG"))
    agent = Agent(name="reports", model=model.model, tools=[report], max_wall_clock_s=0.3)
    run = await runtime.run(agent, "build the Q3 report")
    assert run.status is RunStatus.WAITING_HUMAN
    [result] = results(await runtime.events(run.id))
    assert result["error"] == "timeout"
    assert result["duration_ms"] < 450, (
        f"a call with 0.3 s of budget left took {result['duration_ms']:.0f} ms over "
        f"{len(attempts)} attempts: each retry got the whole remaining budget again"
    )


async def test_tool_calls_answered_past_the_budget_are_not_cut_to_an_unknown_outcome(
    runtime: Runtime,
) -> None:
    """A model answer that spends the budget does not start its write with a 1 ms timeout."""
    sent: list[str] = []

    @tool(side_effect="write")
    async def send_email(to: str) -> str:
        sent.append(to)
        await asyncio.sleep(0.05)
        return "sent"

    async def slow_model(request: ModelRequest) -> ModelResponse:
        await asyncio.sleep(0.35)
        return ask(("send_email", {"to": "bob@example.com"})) if request.turn == 0 else say("WRONG")

    model = FunctionModel(slow_model, name="slow")
    agent = Agent(name="mailer", model=model, tools=[send_email], max_wall_clock_s=0.3)
    run = await runtime.run(agent, "email bob")
    assert run.status is RunStatus.WAITING_HUMAN
    events = await runtime.events(run.id)
    unknown = [r for r in results(events) if r["outcome"] == "unknown"]
    assert unknown == [], (
        f"the runtime started send_email (invoked for {sent}) under a 1 ms timeout: {unknown[0]['content']!r}"
    )
    assert events[-1].data["reason"] == "wall_clock"


# --- per-principal model-call limit -------------------------------------------------------------


async def test_principal_limit_escalates_a_second_run_of_the_same_principal(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """A principal over its model-call limit gets model_unavailable (unavailable); others are unaffected."""
    guards = ToolGuards(
        principal_limit=RateLimit(capacity=1, refill_per_s=0.001),
        rate_limit_wait_s=0,
        rate_limiter=RateLimiter(clock=Seconds()),
    )
    model = script(say("Hello!"))
    agent = Agent(name="greeter", model=model.model)
    async with opened(store, guards=guards) as runtime:
        first = await runtime.run(agent, "hi", principal="alice")
        second = await runtime.run(agent, "hi again", principal="alice")
        other = await runtime.run(agent, "hi", principal="bob")
        events = await runtime.events(second.id)

    assert (first.status, first.output) == (RunStatus.SUCCEEDED, "Hello!")
    assert (other.status, other.output) == (RunStatus.SUCCEEDED, "Hello!")
    assert second.status is RunStatus.WAITING_HUMAN
    assert [r.principal for r in model.requests] == ["alice", "bob"]
    assert of(events, "model.response") == []
    escalation = events[-1]
    assert escalation.kind == "escalation.opened"
    assert escalation.data["reason"] == "model_unavailable"
    context = escalation.data["context"]
    assert (context["error_class"], context["error"], context["turn"]) == (
        "unavailable",
        "RateLimitExceededError",
        0,
    )
    assert "rate limit 'principal:alice'" in context["message"]


# --- model errors and routing -------------------------------------------------------------------


FAILS = RunStatus.FAILED
WAITS = RunStatus.WAITING_HUMAN


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        pytest.param(
            BadRequestError("messages[1].role is invalid", status_code=400),
            (FAILS, None, "bad_request"),
            id="bad-request",
        ),
        pytest.param(
            AuthenticationError("invalid API key", status_code=401),
            (FAILS, None, "fatal"),
            id="authentication",
        ),
        pytest.param(
            ModelTimeoutError("no answer within 8 s"), (WAITS, "model_unavailable", "timeout"), id="timeout"
        ),
        pytest.param(
            RateLimitedError("slow down", retry_after_s=2),
            (WAITS, "model_unavailable", "rate_limited"),
            id="rate-limited",
        ),
        pytest.param(
            CircuitOpenError("circuit breaker 'model:x' is open", name="model:x", retry_in_s=30),
            (WAITS, "model_unavailable", "unavailable"),
            id="circuit-open",
        ),
        pytest.param(
            ContextTooLongError("about 300000 prompt tokens exceed the window", status_code=400),
            (WAITS, "context_too_long", "context_too_long"),
            id="context-too-long",
        ),
    ],
)
async def test_model_error_fails_or_escalates_the_run_by_its_class(
    store: SqliteRunStore,
    script: type[ScriptModel],
    error: Exception,
    expected: tuple[RunStatus, str | None, str],
) -> None:
    """Bad requests and auth errors fail the run; timeouts, 429s, open circuits and long contexts escalate."""
    status, reason, error_class = expected
    model = script(error)
    async with opened(store, gateway=Gateway(retry=NO_RETRY)) as runtime:
        run = await runtime.run(Agent(name="a", model=model.model), "hi")
        events = await runtime.events(run.id)
    assert run.status is status
    assert model.requested_turns == [0]
    last = events[-1]
    detail = last.data if reason is None else last.data["context"]
    assert (detail["error_class"], detail["error"]) == (error_class, type(error).__name__)
    assert detail["message"] == str(error)
    if reason is None:
        assert last.kind == "run.failed"
        assert run.error == f"{type(error).__name__}: {error}"
    else:
        assert last.kind == "escalation.opened"
        assert last.data["reason"] == reason
        assert run.lease_owner is None


async def test_open_model_breaker_escalates_the_next_run_without_calling_the_model(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """A model whose gateway breaker opened is not called again: the next run escalates (CircuitOpenError)."""
    model = script(ModelRetryableError("upstream returned 503", status_code=503))
    gateway = Gateway(
        retry=NO_RETRY, breakers=BreakerRegistry(BreakerPolicy(failure_threshold=1, cooldown_s=600))
    )
    async with opened(store, gateway=gateway) as runtime:
        first = await runtime.run(Agent(name="a", model=model.model), "hi")
        second = await runtime.run(Agent(name="a", model=model.model), "hi")
        first_events = await runtime.events(first.id)
        second_events = await runtime.events(second.id)
    assert (first.status, second.status) == (RunStatus.WAITING_HUMAN, RunStatus.WAITING_HUMAN)
    assert model.requested_turns == [0]
    [opened_event] = of(first_events, "breaker.opened")
    assert (opened_event.data["breaker"], opened_event.data["to"]) == ("model:script", "open")
    context = second_events[-1].data["context"]
    assert (context["error"], context["error_class"]) == ("CircuitOpenError", "unavailable")
    assert second_events[-1].data["reason"] == "model_unavailable"


async def test_agent_tags_route_its_model_calls_through_a_routing_rule(
    store: SqliteRunStore, script: type[ScriptModel]
) -> None:
    """An agent tagged "simple" has its calls sent to the rule's route; route.selected is in the run log."""
    main = script(say("from main"), name="main")
    cheap = script(say("from cheap"), name="cheap")
    gateway = Gateway(
        {"cheap": ["cheap-model"]},
        rules=[RoutingRule(tag="simple", route="cheap")],
        models={"cheap-model": cheap.model},
        retry=NO_RETRY,
    )
    async with opened(store, gateway=gateway) as runtime:
        tagged = await runtime.run(Agent(name="triage", model=main.model, tags=("simple",)), "hi")
        untagged = await runtime.run(Agent(name="expert", model=main.model), "hi")
        tagged_events = await runtime.events(tagged.id)
        untagged_events = await runtime.events(untagged.id)
    assert (tagged.status, tagged.output) == (RunStatus.SUCCEEDED, "from cheap")
    assert (untagged.status, untagged.output) == (RunStatus.SUCCEEDED, "from main")
    assert [r.tags for r in cheap.requests] == [("simple",)]
    assert [r.tags for r in main.requests] == [()]
    [selected] = of(tagged_events, "route.selected")
    assert selected.data == {"requested": "main", "route": "cheap", "tag": "simple", "turn": 0}
    assert selected.seq < of(tagged_events, "model.response")[0].seq
    assert of(tagged_events, "model.response")[0].data["model"] == "cheap-model"
    assert of(untagged_events, "route.selected") == []
