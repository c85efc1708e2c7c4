"""The gateway: retries, fallbacks, breakers, timeouts, context windows, routing rules, cost accounting."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, RunStatus, Runtime, Usage
from tether.errors import (
    AllModelsFailedError,
    BadRequestError,
    ConfigurationError,
    ContextTooLongError,
    ModelRetryableError,
    RateLimitedError,
)
from tether.gateway import Gateway, ModelLimits, Price, PriceTable, Route, RoutingRule
from tether.gateway.cache import ExactCache, LayeredCache
from tether.models.openai import OpenAIModel
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry
from tether.resilience.retry import RetryPolicy
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import Message

HELLO = ModelRequest(messages=(Message(role="user", content="hello"),), principal="alice", tenant="acme")


class Sleeps:
    """A sleep that records delays instead of waiting, so backoff costs no test time."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


def answering(text: str, calls: list[str] | None = None, name: str = "fn") -> FunctionModel:
    def respond(request: ModelRequest) -> ModelResponse:
        if calls is not None:
            calls.append(name)
        return ModelResponse(content=text, usage=Usage(100, 20))

    return FunctionModel(respond, name=name)


def failing(
    error: Callable[[], Exception], calls: list[str] | None = None, name: str = "bad"
) -> FunctionModel:
    def respond(request: ModelRequest) -> ModelResponse:
        if calls is not None:
            calls.append(name)
        raise error()

    return FunctionModel(respond, name=name)


def kinds(events: tuple[tuple[str, dict[str, object]], ...]) -> list[str]:
    return [kind for kind, _ in events]


async def test_retries_then_succeeds_with_one_request_per_attempt() -> None:
    """Two 500s then success: the gateway retries twice and the server sees exactly three requests."""
    server = FakeLLMServer([{"content": "hi"}], faults=[Fault("http_500", requests={1, 2})])
    async with server:
        sleeps = Sleeps()
        model = OpenAIModel("fake-model", base_url=server.url, api_key="x")
        gateway = Gateway({"main": ["up"]}, models={"up": model}, sleep=sleeps)
        response = await gateway.complete("main", HELLO)
        await gateway.aclose()
        assert server.stats["requests"] == 3
    assert response.content == "hi"
    assert kinds(response.events) == ["model.retry", "model.retry", "cost.unknown"]
    assert len(sleeps.delays) == 2


async def test_retry_after_is_honoured() -> None:
    """A 429 with Retry-After: 2 makes the gateway wait at least 2 s before the next attempt."""
    server = FakeLLMServer([{"content": "hi"}], faults=[Fault("http_429", requests={1}, retry_after_s=2)])
    async with server:
        sleeps = Sleeps()
        model = OpenAIModel("fake-model", base_url=server.url, api_key="x")
        gateway = Gateway({"main": ["up"]}, models={"up": model}, sleep=sleeps)
        response = await gateway.complete("main", HELLO)
        await gateway.aclose()
    assert response.content == "hi"
    assert sleeps.delays
    assert sleeps.delays[0] >= 2.0


async def test_exhausted_retries_fall_back_to_the_next_model() -> None:
    """A primary that keeps failing is retried, then the fallback answers; fallback.used is recorded."""
    calls: list[str] = []
    gateway = Gateway(
        {"main": ["primary", "backup"]},
        models={
            "primary": failing(lambda: ModelRetryableError("503"), calls, "primary"),
            "backup": answering("from backup", calls, "backup"),
        },
        sleep=Sleeps(),
    )
    response = await gateway.complete("main", HELLO)
    assert response.content == "from backup"
    assert calls == ["primary", "primary", "primary", "backup"]
    fallback = [data for kind, data in response.events if kind == "fallback.used"]
    assert fallback == [
        {
            "route": "main",
            "from": "primary",
            "to": "backup",
            "reason": "retryable",
            "error": "ModelRetryableError: 503",
        }
    ]


async def test_open_breaker_stops_calls_to_a_dead_provider() -> None:
    """After the breaker opens, calls skip the dead primary entirely and go straight to the fallback."""
    calls: list[str] = []
    gateway = Gateway(
        {"main": ["primary", "backup"]},
        models={
            "primary": failing(lambda: ModelRetryableError("down"), calls, "primary"),
            "backup": answering("ok", calls, "backup"),
        },
        retry=RetryPolicy(max_attempts=1),
        breakers=BreakerRegistry(BreakerPolicy(failure_threshold=3, window_s=60, cooldown_s=600)),
        sleep=Sleeps(),
    )
    seen: list[str] = []
    for _ in range(10):
        response = await gateway.complete("main", HELLO)
        seen.extend(kinds(response.events))
    assert calls.count("primary") == 3
    assert calls.count("backup") == 10
    assert seen.count("breaker.opened") == 1


async def test_timeout_is_unknown_outcome_and_falls_back() -> None:
    """A model that hangs past its timeout counts as a failure and the next model answers."""
    server = FakeLLMServer([{"content": "late"}], faults=[Fault("hang", every=1)])
    async with server:
        model = OpenAIModel("fake-model", base_url=server.url, api_key="x")
        gateway = Gateway(
            {"main": ["slow", "fast"]},
            models={"slow": model, "fast": answering("fast")},
            limits={"slow": ModelLimits(timeout_s=0.2)},
            retry=RetryPolicy(max_attempts=1),
        )
        response = await gateway.complete("main", HELLO)
        await gateway.aclose()
    assert response.content == "fast"
    fallback = [data for kind, data in response.events if kind == "fallback.used"]
    assert fallback[0]["reason"] == "timeout"


async def test_context_too_long_prefers_a_longer_context_model() -> None:
    """A prompt too long for the small model skips it and the medium one, going to the largest window."""
    calls: list[str] = []
    long_request = ModelRequest(messages=(Message(role="user", content="x" * 8000),))
    gateway = Gateway(
        {"main": ["small", "medium", "large"]},
        models={
            "small": answering("small", calls, "small"),
            "medium": failing(lambda: ContextTooLongError("too long"), calls, "medium"),
            "large": answering("large", calls, "large"),
        },
        limits={
            "small": ModelLimits(context_window_tokens=1000),
            "medium": ModelLimits(context_window_tokens=4000),
            "large": ModelLimits(context_window_tokens=100_000),
        },
    )
    response = await gateway.complete("main", long_request)
    assert response.content == "large"
    assert calls == ["large"]  # small was skipped before any call; medium dropped as no larger


async def test_bad_request_is_not_retried_nor_sent_elsewhere() -> None:
    """A 400 is our fault: no retry, no fallback; the error keeps the events of the call."""
    calls: list[str] = []
    gateway = Gateway(
        {"main": ["primary", "backup"]},
        models={
            "primary": failing(lambda: BadRequestError("bad tool schema"), calls, "primary"),
            "backup": answering("never", calls, "backup"),
        },
    )
    with pytest.raises(BadRequestError):
        await gateway.complete("main", HELLO)
    assert calls == ["primary"]


async def test_all_models_failing_raises_with_every_error() -> None:
    """When the whole chain fails the error lists each model and carries the fallback events."""
    gateway = Gateway(
        {"main": ["a", "b"]},
        models={
            "a": failing(lambda: ModelRetryableError("a down"), name="a"),
            "b": failing(lambda: RateLimitedError("b busy", retry_after_s=1), name="b"),
        },
        retry=RetryPolicy(max_attempts=1),
    )
    with pytest.raises(AllModelsFailedError) as caught:
        await gateway.complete("main", HELLO)
    assert [spec for spec, _ in caught.value.errors] == ["a", "b"]
    assert "fallback.used" in kinds(caught.value.events)


async def test_routing_rule_sends_tagged_requests_to_another_route() -> None:
    """A request tagged "simple" goes to the cheap route, recorded as route.selected."""
    gateway = Gateway(
        {"strong": ["big"], "cheap": ["small"]},
        models={"big": answering("big"), "small": answering("small")},
        rules=[RoutingRule(tag="simple", route="cheap")],
    )
    tagged = ModelRequest(messages=HELLO.messages, tags=("simple",))
    response = await gateway.complete("strong", tagged)
    assert response.content == "small"
    assert ("route.selected", {"requested": "strong", "route": "cheap", "tag": "simple"}) in response.events
    assert (await gateway.complete("strong", HELLO)).content == "big"


def test_unknown_route_and_bad_rule_are_configuration_errors() -> None:
    """A rule naming a missing route fails at construction; an unknown route fails at call time."""
    with pytest.raises(ConfigurationError, match="nowhere"):
        Gateway({"a": ["x"]}, rules=[RoutingRule(tag="t", route="nowhere")])
    gateway = Gateway({"a": ["scripted:/dev/null"]})
    with pytest.raises(ConfigurationError, match="unknown route 'b'"):
        asyncio.run(gateway.complete("b", HELLO))


async def test_cost_from_price_table_and_spend_by_principal() -> None:
    """Cost comes from the price table (override) and is accounted per (tenant, principal)."""
    gateway = Gateway(
        {"main": ["openai:house-model"]},
        models={"openai:house-model": OpenAIModelStub()},
        prices=PriceTable({"openai:house-model": Price(input_per_mtok=2.0, output_per_mtok=10.0)}),
    )
    response = await gateway.complete("main", HELLO)
    assert response.usage.cost_usd == pytest.approx((1000 * 2.0 + 500 * 10.0) / 1e6)
    assert gateway.spend.by_principal[("acme", "alice")] == pytest.approx(response.usage.cost_usd)


def test_bundled_price_snapshot_knows_common_models() -> None:
    """genai-prices' offline snapshot prices openai:gpt-4o-mini; an unknown model costs None."""
    table = PriceTable()
    cost = table.cost_usd("openai:gpt-4o-mini", Usage(1_000_000, 0))
    assert cost is not None
    assert 0 < cost < 10
    assert table.cost_usd("openai:no-such-model-xyz", Usage(10, 10)) is None


async def test_unpriced_model_is_flagged() -> None:
    """A call to a model with no known price records cost.unknown and counts as unpriced."""
    gateway = Gateway(
        {"main": ["openai:no-such-model-xyz"]}, models={"openai:no-such-model-xyz": OpenAIModelStub()}
    )
    response = await gateway.complete("main", HELLO)
    assert response.usage.cost_usd is None
    assert "cost.unknown" in kinds(response.events)
    assert gateway.spend.unpriced_calls == 1


async def test_rate_limit_without_wait_falls_back() -> None:
    """A model limited to one request a minute refuses the second call at once; the fallback serves it."""
    calls: list[str] = []
    gateway = Gateway(
        {"main": ["limited", "backup"]},
        models={
            "limited": answering("limited", calls, "limited"),
            "backup": answering("backup", calls, "backup"),
        },
        limits={"limited": ModelLimits(requests_per_minute=1, max_wait_s=0)},
    )
    assert (await gateway.complete("main", HELLO)).content == "limited"
    second = await gateway.complete("main", HELLO)
    assert second.content == "backup"
    assert [data["reason"] for kind, data in second.events if kind == "fallback.used"] == ["unavailable"]


async def test_run_escalates_when_every_model_fails(tmp_path: Path) -> None:
    """A run whose every model fails waits for a person, with the retries and fallbacks in its log."""
    gateway = Gateway(
        {"main": ["a", "b"]},
        models={
            "a": failing(lambda: ModelRetryableError("a down"), name="a"),
            "b": failing(lambda: ModelRetryableError("b down"), name="b"),
        },
        retry=RetryPolicy(max_attempts=2),
        sleep=Sleeps(),
    )
    agent = Agent("support", model="main")
    async with Runtime(f"sqlite:///{tmp_path / 't.db'}", gateway=gateway) as runtime:
        run = await runtime.run(agent, "help")
        events = await runtime.events(run.id)
    assert run.status == RunStatus.WAITING_HUMAN
    log = [e.kind for e in events]
    assert log.count("model.retry") == 2
    assert "fallback.used" in log
    assert events[-1].kind == "escalation.opened"
    assert events[-1].data["reason"] == "model_unavailable"


class OpenAIModelStub:
    """A provider-like model that reports tokens but no cost (as real providers do)."""

    name = "stub"

    async def request(self, request: ModelRequest) -> ModelResponse:
        return ModelResponse(content="ok", usage=Usage(1000, 500))

    async def aclose(self) -> None:
        return None


def test_route_needs_models() -> None:
    """An empty route is refused with its name."""
    with pytest.raises(ConfigurationError, match="'empty'"):
        Route("empty", ())


async def test_stale_cached_answer_serves_when_every_model_fails() -> None:
    """After the cache's TTL, an old answer still serves a request that no model can answer."""
    now = [1000.0]
    healthy = [True]

    def respond(request: ModelRequest) -> ModelResponse:
        if not healthy[0]:
            raise ModelRetryableError("down")
        return ModelResponse(content="Refunds within 30 days.", usage=Usage(10, 5))

    gateway = Gateway(
        {"faq": ["fn"]},
        models={"fn": FunctionModel(respond, name="fn")},
        cache=LayeredCache(ExactCache(ttl_s=60, clock=lambda: now[0]), None),
        retry=RetryPolicy(max_attempts=1),
    )
    assert (await gateway.complete("faq", HELLO)).content == "Refunds within 30 days."
    now[0] += 3600  # the answer cache has expired
    healthy[0] = False
    degraded = await gateway.complete("faq", HELLO)
    assert degraded.content == "Refunds within 30 days."
    assert [data["layer"] for kind, data in degraded.events if kind == "cache.hit"] == ["stale"]
    other = ModelRequest(messages=(Message(role="user", content="something never asked"),))
    with pytest.raises(ModelRetryableError):
        await gateway.complete("faq", other)
