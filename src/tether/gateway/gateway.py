"""Gateway: the only way to reach a model — routing, fallback chain, breakers, retries, limits, cost.

One call walks a route's chain of models. For each model: breaker (fail fast while open), rate limits
(bounded wait), then retries with backoff around a timed call; breaker-open, retry exhaustion, rate
limits and context-too-long move on to the next model (context-too-long prefers longer windows).
What happened on the way travels back as `ModelResponse.events` (or the error's `events`) so the
run's event log shows every retry, fallback and breaker transition.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from tether.errors import (
    AllModelsFailedError,
    ConfigurationError,
    ContextTooLongError,
    ErrorClass,
    ModelTimeoutError,
    TetherError,
    classify,
)
from tether.gateway.cache import CacheScope, ExactCache, LayeredCache, cacheable
from tether.gateway.pricing import PriceTable
from tether.models import model_from_spec
from tether.models.base import Model, estimate_tokens
from tether.resilience.breaker import BreakerRegistry, BreakerState, BreakerTransition, counts_as_failure
from tether.resilience.ratelimit import RateLimit, RateLimiter
from tether.resilience.retry import RetryAttempt, RetryPolicy, retry_call
from tether.types import EventKind, JsonDict, ModelRequest, ModelResponse, Usage

Event = tuple[str, JsonDict]

# The request itself is at fault: another model would refuse it too, so do not fall back.
NO_FALLBACK = frozenset({ErrorClass.BAD_REQUEST, ErrorClass.CONTENT_FILTER})
DEFAULT_MODEL_TIMEOUT_S = 8.0  # DESIGN.md: realistic p95 of an LLM sub-call x 1.5-2


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """Per-model settings: timeout per attempt, context window, request and token rates."""

    timeout_s: float = DEFAULT_MODEL_TIMEOUT_S
    context_window_tokens: int | None = None
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_wait_s: float = 5.0  # how long a call may wait for a rate limit before falling back

    def __post_init__(self) -> None:
        if not self.timeout_s > 0:
            raise ConfigurationError(f"ModelLimits.timeout_s must be > 0, not {self.timeout_s}")
        if self.max_wait_s < 0:
            raise ConfigurationError(f"ModelLimits.max_wait_s must be >= 0, not {self.max_wait_s}")


@dataclass(frozen=True, slots=True)
class Route:
    """A named chain of model specs: the primary first, then its fallbacks in order."""

    name: str
    models: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigurationError("a route needs a name")
        if not self.models:
            raise ConfigurationError(f"route {self.name!r} needs at least one model")


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Requests tagged `tag` go to `route` (e.g. "simple" → a cheap model, "hard" → a strong one)."""

    tag: str
    route: str


@dataclass
class Spend:
    """Cost and tokens accounted by the gateway, by (tenant, principal) and by model."""

    by_principal: dict[tuple[str | None, str | None], float] = field(default_factory=dict)
    by_model: dict[str, Usage] = field(default_factory=dict)
    unpriced_calls: int = 0
    cache_hits: int = 0

    def add(self, spec: str, request: ModelRequest, usage: Usage) -> None:
        key = (request.tenant, request.principal)
        self.by_principal[key] = self.by_principal.get(key, 0.0) + (usage.cost_usd or 0.0)
        self.by_model[spec] = self.by_model.get(spec, Usage(cost_usd=0.0)) + usage
        if usage.cost_usd is None:
            self.unpriced_calls += 1


class Gateway:
    """Routes, fallbacks, breakers, retries, rate limits and cost accounting for every model call."""

    def __init__(
        self,
        routes: Sequence[Route] | Mapping[str, Sequence[str]] = (),
        *,
        rules: Sequence[RoutingRule] = (),
        models: Mapping[str, Model] | None = None,
        model_factory: Callable[[str], Model] = model_from_spec,
        limits: Mapping[str, ModelLimits] | None = None,
        default_limits: ModelLimits | None = None,
        retry: RetryPolicy | None = None,
        breakers: BreakerRegistry | None = None,
        rate_limiter: RateLimiter | None = None,
        prices: PriceTable | None = None,
        cache: LayeredCache | None = None,
        stale_ttl_s: float = 7 * 86400.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        items = routes.items() if isinstance(routes, Mapping) else ((r.name, r.models) for r in routes)
        self._routes = {name: Route(name, tuple(chain)) for name, chain in items}
        for rule in rules:
            if rule.route not in self._routes:
                raise ConfigurationError(
                    f"routing rule for tag {rule.tag!r} names unknown route {rule.route!r}"
                )
        self.rules = tuple(rules)
        self._models: dict[str, Model] = dict(models or {})
        self._model_factory = model_factory
        self._limits = dict(limits or {})
        self.default_limits = default_limits or ModelLimits()
        self.retry = retry or RetryPolicy()
        self.breakers = breakers or BreakerRegistry()
        self.rate_limiter = rate_limiter or RateLimiter()
        self.prices = prices or PriceTable()
        self.cache = cache
        # Answers kept for a week, served only when every model of a route fails.
        self._last_good = ExactCache(ttl_s=stale_ttl_s)
        self.spend = Spend()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def routes(self) -> list[str]:
        return sorted(self._routes)

    def model_for(self, target: str | Model) -> Model:
        """A Model for a route name, a bare spec (an implicit one-model route) or a Model instance."""
        if not isinstance(target, str):
            name = target.name
            if self._models.get(name, target) is not target:  # two different models share a name
                name = f"{name}@{id(target):x}"
            self._models[name] = target
            self._routes.setdefault(name, Route(name, (name,)))
            return GatewayModel(self, name)
        if target not in self._routes:
            self._model(target)  # a bad spec fails here, naming it
            self._routes[target] = Route(target, (target,))
        return GatewayModel(self, target)

    async def aclose(self) -> None:
        for model in self._models.values():
            await model.aclose()
        self._models.clear()

    def max_cost_usd(
        self, route_name: str, request: ModelRequest, input_tokens: int, output_tokens: int
    ) -> float | None:
        """The most one call can cost on the route the request takes (routing rules applied): the
        dearest model of its chain at these token counts; None if a model's price is unknown."""
        route = self._select_route(route_name, request, [])
        usage = Usage(input_tokens, output_tokens)
        costs = [self.prices.cost_usd(spec, usage) for spec in route.models]
        known = [cost for cost in costs if cost is not None]
        return max(known) if known and len(known) == len(costs) else None

    async def complete(self, route_name: str, request: ModelRequest) -> ModelResponse:
        """Answer one turn through `route_name`'s chain; raises AllModelsFailedError with its events."""
        events: list[Event] = []
        route = self._select_route(route_name, request, events)
        scope = None
        if self.cache is not None and cacheable(request):
            scope = CacheScope.of(request, route.name)
            hit = await self.cache.lookup(request, scope)
            if hit is not None:
                self.spend.cache_hits += 1
                return replace(hit.response, events=(*events, *hit.response.events))
        chain = list(route.models)
        errors: list[tuple[str, BaseException]] = []
        while chain:
            spec = chain.pop(0)
            try:
                response = await self._call_model(spec, request, events)
            except Exception as exc:
                error_class = classify(exc)
                errors.append((spec, exc))
                if error_class in NO_FALLBACK:
                    _attach(exc, events)
                    raise
                if error_class == ErrorClass.CONTEXT_TOO_LONG:
                    chain = self._longer_context_first(chain, spec)
                if chain:
                    events.append(
                        (
                            EventKind.FALLBACK_USED,
                            {
                                "route": route.name,
                                "from": spec,
                                "to": chain[0],
                                "reason": str(error_class),
                                "error": f"{type(exc).__name__}: {exc}"[:300],
                            },
                        )
                    )
                continue
            response = self._account(spec, request, response, events)
            if scope is not None and self.cache is not None:
                await self.cache.store(request, scope, response)
                await self._last_good.store(request, scope, response)
            return response
        if scope is not None:
            # Graceful degradation: an answer older than the cache's TTL beats no answer at all.
            stale = await self._last_good.lookup(request, scope)
            if stale is not None:
                self.spend.cache_hits += 1
                data = {**stale.event_data(), "layer": "stale", "reason": "every model failed"}
                return replace(stale.response, events=(*events, (EventKind.CACHE_HIT, data)))
        if len(errors) == 1:  # a one-model route: the model's own error says the most
            _attach(errors[0][1], events)
            raise errors[0][1]
        tried = ", ".join(f"{spec} ({type(exc).__name__}: {exc})" for spec, exc in errors)
        failure = AllModelsFailedError(f"every model of route {route.name!r} failed: {tried}", errors=errors)
        if all(classify(exc) == ErrorClass.FATAL for _, exc in errors):
            failure.error_class = ErrorClass.FATAL  # nothing transient: waiting will not help
        _attach(failure, events)
        raise failure

    def _select_route(self, name: str, request: ModelRequest, events: list[Event]) -> Route:
        if name not in self._routes:
            raise ConfigurationError(
                f"unknown route {name!r}; routes: {', '.join(self.routes()) or '(none)'}"
            )
        for rule in self.rules:
            if rule.tag in request.tags and rule.route != name:
                events.append(
                    (EventKind.ROUTE_SELECTED, {"requested": name, "route": rule.route, "tag": rule.tag})
                )
                return self._routes[rule.route]
        return self._routes[name]

    async def _call_model(self, spec: str, request: ModelRequest, events: list[Event]) -> ModelResponse:
        limits = self._limits.get(spec, self.default_limits)
        prompt_tokens = sum(estimate_tokens(m.content) for m in request.messages)
        if limits.context_window_tokens is not None and prompt_tokens > limits.context_window_tokens:
            raise ContextTooLongError(
                f"{spec}: about {prompt_tokens} prompt tokens exceed its "
                f"{limits.context_window_tokens}-token window"
            )
        if limits.requests_per_minute is not None:
            await self.rate_limiter.acquire(
                f"rpm:{spec}",
                RateLimit.per_minute(limits.requests_per_minute),
                1,
                max_wait_s=limits.max_wait_s,
            )
        if limits.tokens_per_minute is not None:
            expected = prompt_tokens + (request.max_output_tokens or 0)
            await self.rate_limiter.acquire(
                f"tpm:{spec}",
                RateLimit.per_minute(limits.tokens_per_minute),
                expected,
                max_wait_s=limits.max_wait_s,
            )
        model = self._model(spec)
        breaker = self.breakers.get(f"model:{spec}")

        def note(transition: BreakerTransition | None) -> None:
            if transition is not None:
                kind = (
                    EventKind.BREAKER_OPENED
                    if transition.new == BreakerState.OPEN
                    else EventKind.BREAKER_CHANGED
                )
                data = {"breaker": transition.name, "from": str(transition.old), "to": str(transition.new)}
                events.append((kind, {**data, "reason": transition.reason}))

        async def attempt() -> ModelResponse:
            await breaker.allow()
            try:
                response = await asyncio.wait_for(model.request(request), limits.timeout_s)
            except TimeoutError:
                note(await breaker.record_failure())
                raise ModelTimeoutError(
                    f"{spec} did not answer within {limits.timeout_s:g} s; the outcome is unknown"
                ) from None
            except BaseException as exc:
                if counts_as_failure(exc):
                    note(await breaker.record_failure())
                else:  # a 4xx or a cancellation says nothing about the model's health
                    await breaker.release()
                raise
            note(await breaker.record_success())
            return response

        def on_retry(retry: RetryAttempt) -> None:
            events.append(
                (
                    EventKind.MODEL_RETRY,
                    {
                        "model": spec,
                        "attempt": retry.attempt,
                        "error_class": str(retry.error_class),
                        "error": f"{type(retry.error).__name__}: {retry.error}"[:300],
                        "delay_s": round(retry.delay_s, 3),
                    },
                )
            )

        return await retry_call(attempt, self.retry, on_retry=on_retry, sleep=self._sleep, rng=self._rng)

    def _account(
        self, spec: str, request: ModelRequest, response: ModelResponse, events: list[Event]
    ) -> ModelResponse:
        # A model that states its own cost (scripted, or a provider that bills per call) is believed.
        cost = response.usage.cost_usd
        if cost is None:
            cost = self.prices.cost_usd(spec, response.usage)
        usage = replace(response.usage, cost_usd=cost)
        if cost is None:
            events.append(
                (EventKind.COST_UNKNOWN, {"model": spec, "hint": "configure a price for this model"})
            )
        self.spend.add(spec, request, usage)
        return replace(
            response,
            usage=usage,
            model=response.model or spec,
            served_by=spec,
            events=(*events, *response.events),
        )

    def _longer_context_first(self, chain: list[str], failed: str) -> list[str]:
        """After context-too-long, try models with a larger known window first; drop smaller ones."""
        floor = self._limits.get(failed, self.default_limits).context_window_tokens or 0

        def window(spec: str) -> int:
            return self._limits.get(spec, self.default_limits).context_window_tokens or 0

        bigger = sorted((s for s in chain if window(s) > floor), key=window, reverse=True)
        unknown = [s for s in chain if window(s) == 0 and s not in bigger]
        return bigger + unknown

    def _model(self, spec: str) -> Model:
        model = self._models.get(spec)
        if model is None:
            model = self._models[spec] = self._model_factory(spec)
        return model


class GatewayModel:
    """A route seen as a Model, so agents and runs use the gateway without knowing it."""

    def __init__(self, gateway: Gateway, route: str) -> None:
        self._gateway = gateway
        self._route = route

    @property
    def name(self) -> str:
        return self._route

    async def request(self, request: ModelRequest) -> ModelResponse:
        return await self._gateway.complete(self._route, request)

    async def aclose(self) -> None:
        return None  # the gateway owns the connections

    def max_cost_usd(self, request: ModelRequest, input_tokens: int, output_tokens: int) -> float | None:
        """The most one call of `request` can cost: the dearest model its route may use."""
        return self._gateway.max_cost_usd(self._route, request, input_tokens, output_tokens)


def _attach(error: BaseException, events: list[Event]) -> None:
    """Give an error the events of the call, for the run's log."""
    if isinstance(error, TetherError):
        error.events = tuple(events)
