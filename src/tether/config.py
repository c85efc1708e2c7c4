"""Typed settings from `tether.toml` and `TETHER_*` environment variables; read only by the CLI/server."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.asyncio import Redis

from tether.agent import Agent
from tether.errors import ConfigurationError
from tether.gateway import Gateway, ModelLimits, Price, PriceTable, RoutingRule
from tether.gateway.cache import ExactCache, LayeredCache, SemanticCache
from tether.gateway.embeddings import default_embedder
from tether.policy.limits import BudgetPolicy, Limits
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry, BreakerStore, RedisBreakerStore
from tether.resilience.bulkhead import BulkheadRegistry, BulkheadStore, RedisBulkheadStore
from tether.resilience.failover import FailoverBreakerStore, FailoverBulkheadStore, FailoverRateLimitStore
from tether.resilience.ratelimit import RateLimiter, RateLimitStore, RedisRateLimitStore
from tether.resilience.retry import RetryPolicy
from tether.runtime import Runtime
from tether.runtime.guards import ToolGuards

DEFAULT_CONFIG_FILE = "tether.toml"
ENV_PREFIX = "TETHER_"
SCALAR_FIELDS = ("db", "redis", "lease_s", "concurrency", "model", "max_attempts")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSettings(_Section):
    """`[tether.models."openai:gpt-4o-mini"]`: per-model timeout, window and rate limits."""

    timeout_s: float = Field(default=8.0, gt=0)
    context_window_tokens: int | None = Field(default=None, gt=0)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)
    max_wait_s: float = Field(default=5.0, ge=0)


class PriceSettings(_Section):
    """`[tether.prices."openai:house-model"]`: US dollars per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class RetrySettings(_Section):
    max_attempts: int = Field(default=3, ge=1)
    initial_backoff_s: float = Field(default=0.5, ge=0)
    max_backoff_s: float = Field(default=20.0, ge=0)
    max_retry_after_s: float = Field(default=60.0, ge=0)


class BreakerSettings(_Section):
    failure_threshold: int = Field(default=5, ge=1)
    window_s: float = Field(default=60.0, gt=0)
    error_rate_threshold: float | None = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=10, ge=1)
    cooldown_s: float = Field(default=30.0, gt=0)
    half_open_probes: int = Field(default=1, ge=1)


class CacheSettings(_Section):
    """`[tether.cache]`: "exact" answers identical single-turn prompts again; "semantic" also
    paraphrases (needs the `semantic` extra; measured false-hit rate in the README)."""

    mode: Literal["off", "exact", "semantic"] = "exact"
    ttl_s: float = Field(default=6 * 3600.0, gt=0)
    semantic_threshold: float = Field(default=0.62, gt=0, le=1)


class LimitsSettings(_Section):
    """One budget level; a key given replaces that counter's default limit, 0 < value."""

    tokens: float | None = Field(default=None, gt=0)
    cost_usd: float | None = Field(default=None, gt=0)
    tool_calls: float | None = Field(default=None, gt=0)
    mutations: float | None = Field(default=None, gt=0)
    custom: dict[str, float] = Field(default_factory=dict)


class BudgetSettings(_Section):
    """`[tether.budget.per_run]` etc.: overrides of DESIGN.md's default limits, for every agent."""

    per_run: LimitsSettings | None = None
    per_session: LimitsSettings | None = None
    per_principal_day: LimitsSettings | None = None
    per_tenant_day: LimitsSettings | None = None
    warn_at: float = Field(default=0.8, gt=0, le=1)
    spend_rate_usd_per_hour: float | None = Field(default=None, gt=0)

    def policy(self) -> BudgetPolicy:
        default = BudgetPolicy()
        levels = {}
        for name in ("per_run", "per_session", "per_principal_day", "per_tenant_day"):
            given: LimitsSettings | None = getattr(self, name)
            base: Limits = getattr(default, name)
            if given is not None:
                changes = given.model_dump(exclude_unset=True)
                if "custom" in changes:
                    changes["custom"] = {**base.custom, **changes["custom"]}
                base = replace(base, **changes)
            levels[name] = base
        return BudgetPolicy(
            **levels, warn_at=self.warn_at, spend_rate_usd_per_hour=self.spend_rate_usd_per_hour
        )


class RoutingRuleSettings(_Section):
    tag: str
    route: str


class Settings(_Section):
    """What a tether process needs to know; scalar fields can also come from TETHER_* variables."""

    db: str = Field(default="sqlite:///tether.db", description="run store URL")
    redis: str | None = Field(default=None, description="Redis URL sharing breakers and limits")
    lease_s: float = Field(default=30.0, gt=0, description="worker lease length in seconds")
    concurrency: int = Field(default=4, ge=1, description="runs a worker drives at once")
    max_attempts: int = Field(default=3, ge=1, description="failed attempts in a row before dead-lettering")
    model: str | None = Field(default=None, description="default model spec or route for runs")
    routes: dict[str, list[str]] = Field(default_factory=dict, description="route name -> model chain")
    rules: list[RoutingRuleSettings] = Field(default_factory=list)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    prices: dict[str, PriceSettings] = Field(default_factory=dict)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)


def load_settings(
    config_file: str | Path | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Merge, lowest first: defaults, the TOML file, TETHER_* variables, explicit overrides.

    Errors name the offending key and where it came from, e.g. `TETHER_LEASE_S='x'`.
    """
    import os

    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    path = Path(config_file) if config_file is not None else Path(DEFAULT_CONFIG_FILE)
    if config_file is not None and not path.exists():
        raise ConfigurationError(f"config file {str(path)!r} does not exist")
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
        section = data.get("tether", data)
        for key, value in section.items():
            values[key] = value
            sources[key] = f"{path}: {key}"
    for field in SCALAR_FIELDS:
        name = ENV_PREFIX + field.upper()
        if name in environ:
            values[field] = environ[name]
            sources[field] = name
    for key, value in overrides.items():
        if value is not None:
            values[key] = value
            sources[key] = f"--{key.replace('_', '-')}"
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        where = sources.get(key, key)
        if len(err["loc"]) > 1:
            where = f"{where}.{'.'.join(str(part) for part in err['loc'][1:])}"
        if err["type"] == "extra_forbidden":
            known = ", ".join(Settings.model_fields)
            raise ConfigurationError(f"unknown setting {where!r}; known settings: {known}") from None
        raise ConfigurationError(f"invalid setting {where}={err['input']!r}: {err['msg']}") from None


@dataclass
class Wiring:
    """The shared parts a process builds from settings; `aclose` releases connections."""

    gateway: Gateway
    guards: ToolGuards
    redis: Redis | None

    async def aclose(self) -> None:
        await self.gateway.aclose()
        if self.redis is not None:
            await self.redis.aclose()


def build_wiring(settings: Settings, *, extra_routes: Mapping[str, Sequence[str]] | None = None) -> Wiring:
    """The gateway and tool guards from settings, with Redis-shared breakers and limits if configured."""
    client: Redis | None = None
    breaker_store: BreakerStore | None = None
    limit_store: RateLimitStore | None = None
    bulkhead_store: BulkheadStore | None = None
    if settings.redis is not None:
        # Short timeouts: a Redis that hangs must not stall every call; failover keeps calls going.
        client = Redis.from_url(settings.redis, socket_timeout=0.5, socket_connect_timeout=0.5)
        breaker_store = FailoverBreakerStore(RedisBreakerStore(client))
        limit_store = FailoverRateLimitStore(RedisRateLimitStore(client))
        bulkhead_store = FailoverBulkheadStore(RedisBulkheadStore(client))
    breakers = BreakerRegistry(BreakerPolicy(**settings.breaker.model_dump()), store=breaker_store)
    limiter = RateLimiter(limit_store)
    gateway = Gateway(
        {**settings.routes, **(extra_routes or {})},
        rules=[RoutingRule(rule.tag, rule.route) for rule in settings.rules],
        limits={spec: ModelLimits(**limits.model_dump()) for spec, limits in settings.models.items()},
        retry=RetryPolicy(**settings.retry.model_dump()),
        breakers=breakers,
        rate_limiter=limiter,
        prices=PriceTable({spec: Price(**price.model_dump()) for spec, price in settings.prices.items()}),
        cache=build_cache(settings.cache),
    )
    guards = ToolGuards(
        breakers=breakers, rate_limiter=limiter, bulkheads=BulkheadRegistry(store=bulkhead_store)
    )
    return Wiring(gateway, guards, client)


def build_cache(settings: CacheSettings) -> LayeredCache | None:
    """The gateway's answer cache from `[tether.cache]`; the semantic layer only when asked for."""
    if settings.mode == "off":
        return None
    semantic = None
    if settings.mode == "semantic":
        semantic = SemanticCache(
            default_embedder(), threshold=settings.semantic_threshold, ttl_s=settings.ttl_s
        )
    return LayeredCache(ExactCache(ttl_s=settings.ttl_s), semantic)


@asynccontextmanager
async def open_runtime(settings: Settings, *, agents: Sequence[Agent] = ()) -> AsyncIterator[Runtime]:
    """A Runtime wired from settings: its gateway, and Redis-shared breakers and limits if configured."""
    wiring = build_wiring(settings)
    try:
        async with Runtime(
            settings.db,
            budget_policy=settings.budget.policy(),
            agents=agents,
            gateway=wiring.gateway,
            guards=wiring.guards,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
        ) as runtime:
            yield runtime
    finally:
        await wiring.aclose()
