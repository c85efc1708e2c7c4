"""Typed settings from `tether.toml` and `TETHER_*` environment variables; read only by the CLI/server."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from redis.asyncio import Redis

from tether.agent import Agent
from tether.errors import ConfigurationError
from tether.gateway import Gateway, ModelLimits, Price, PriceTable, RoutingRule
from tether.gateway.cache import ExactCache, LayeredCache, SemanticCache
from tether.gateway.embeddings import default_embedder
from tether.policy.behaviour import BehaviourMonitor
from tether.policy.guardrails import DenyCall, Guardrails, InjectionCheck, SizeCheck
from tether.policy.limits import BudgetPolicy, Limits
from tether.policy.permissions import PermissionPolicy
from tether.policy.redaction import RedactionPolicy, Redactor
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry, BreakerStore, RedisBreakerStore
from tether.resilience.bulkhead import BulkheadRegistry, BulkheadStore, RedisBulkheadStore
from tether.resilience.failover import FailoverBreakerStore, FailoverBulkheadStore, FailoverRateLimitStore
from tether.resilience.ratelimit import RateLimiter, RateLimitStore, RedisRateLimitStore
from tether.resilience.retry import RetryPolicy
from tether.runtime import RunObserver, Runtime, load_target
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


class MetricsSettings(_Section):
    """`[tether.metrics]`: the worker's Prometheus endpoint (off without a port) and the cost limit per
    run exported for the cost alert: one number for every agent, or a table of agent = US dollars."""

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int | None = Field(default=None, ge=0, le=65535)
    cost_per_task_limit_usd: float | dict[str, float] | None = None

    @field_validator("cost_per_task_limit_usd", mode="before")
    @classmethod
    def _positive_dollars(cls, value: Any) -> Any:
        # Checked here, not by the union, whose errors would name its branches instead of the key.
        if value is None:
            return None
        limits = value if isinstance(value, dict) else {None: value}
        for agent, limit in limits.items():
            if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
                where = f" for agent {agent!r}" if agent is not None else ""
                raise ValueError(f"must be a number of US dollars > 0{where}, or a table of agent = dollars")
        return value


class TracingSettings(_Section):
    """`[tether.tracing]`: where spans go (off by default), and whether prompt and answer text is
    recorded on them (redacted: e-mail addresses and long numbers masked)."""

    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = None  # OTLP/HTTP traces URL; default OTEL_EXPORTER_OTLP_ENDPOINT or :4318
    record_content: bool = False
    service_name: str = Field(default="tether", min_length=1)


class LogSettings(_Section):
    """`[tether.logs]`: one structured line per run event on stderr: JSON, console, auto (console on a
    terminal) or off."""

    format: Literal["off", "json", "console", "auto"] = "off"
    level: Literal["debug", "info", "warning", "error"] = "info"  # debug: every successful tool call too


class PermissionSettings(_Section):
    """`[tether.permissions]`: the permission policy file (TOML; see tether.policy.permissions).
    Without one, agents may use every tool they have."""

    file: Path | None = None


class DenyCallSettings(_Section):
    tool: str = Field(min_length=1)
    argument: str | None = None
    pattern: str | None = None
    reason: str = "a dangerous call"


class GuardrailSettings(_Section):
    """`[tether.guardrails]`: screening of user input and tool output, and the abuse breaker."""

    enabled: bool = True
    on_user_injection: Literal["block", "sanitise", "escalate"] = "escalate"
    on_tool_injection: Literal["block", "sanitise", "escalate"] = "sanitise"
    max_user_chars: int = Field(default=20_000, gt=0)
    max_tool_chars: int = Field(default=50_000, gt=0)
    abuse_threshold: int = Field(default=3, ge=1)
    abuse_window_s: float = Field(default=3600.0, gt=0)
    deny_calls: list[DenyCallSettings] = Field(default_factory=list)
    # Behaviour monitoring: calls unlike an agent's last runs wait for a person (off by default).
    behaviour: bool = False
    behaviour_min_runs: int = Field(default=20, ge=1)

    def build(self) -> Guardrails | Literal["off"]:
        if not self.enabled:
            return "off"
        try:
            deny = tuple(DenyCall(**rule.model_dump()) for rule in self.deny_calls)
        except ConfigurationError as exc:
            raise ConfigurationError(f"invalid setting guardrails.deny_calls: {exc}") from None
        return Guardrails(
            deny_calls=deny,
            checks=(
                SizeCheck(max_user_chars=self.max_user_chars, max_tool_chars=self.max_tool_chars),
                InjectionCheck(on_user=self.on_user_injection, on_tool=self.on_tool_injection),
            ),
            abuse_threshold=self.abuse_threshold,
            abuse_window_s=self.abuse_window_s,
        )


class RedactionSettings(_Section):
    """`[tether.redaction]`: mask PII and secrets in final answers (traces and logs always are).
    `kinds`: which (default all); `tenants`: per tenant, its own kinds ([] turns it off)."""

    answers: bool = False
    kinds: list[str] | None = None
    allow: list[str] = Field(default_factory=list)
    tenants: dict[str, list[str]] = Field(default_factory=dict)

    def build(self) -> RedactionPolicy | None:
        if not self.answers:
            return None
        try:
            return RedactionPolicy(
                default=Redactor(kinds=self.kinds, allow=self.allow),
                per_tenant={
                    tenant: Redactor(kinds=kinds, allow=self.allow) if kinds else None
                    for tenant, kinds in self.tenants.items()
                },
            )
        except ConfigurationError as exc:
            raise ConfigurationError(f"invalid setting redaction: {exc}") from None


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
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    logs: LogSettings = Field(default_factory=LogSettings)
    permissions: PermissionSettings = Field(default_factory=PermissionSettings)
    guardrails: GuardrailSettings = Field(default_factory=GuardrailSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    # Shadow mode: agent name -> "module:attribute" of the candidate run beside each production run.
    shadows: dict[str, str] = Field(default_factory=dict)


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


def build_observers(settings: Settings) -> tuple[list[RunObserver], Callable[[], None]]:
    """The tracer and logger `[tether.tracing]` and `[tether.logs]` ask for, and how to flush them."""
    observers: list[RunObserver] = []
    flush: list[Callable[[], None]] = []
    if settings.tracing.exporter != "none":
        from tether.observe.tracing import RunTracer

        tracer = RunTracer.to_exporter(
            _span_exporter(settings.tracing),
            record_content=settings.tracing.record_content,
            service_name=settings.tracing.service_name,
        )
        observers.append(tracer)
        flush.append(tracer.shutdown)
    if settings.logs.format != "off":
        from tether.observe.logs import RunLogger

        observers.append(RunLogger(format=settings.logs.format, level=settings.logs.level))

    def flush_all() -> None:
        for step in flush:
            step()

    return observers, flush_all


def _span_exporter(settings: TracingSettings) -> Any:
    if settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=settings.endpoint) if settings.endpoint else OTLPSpanExporter()


@asynccontextmanager
async def open_runtime(settings: Settings, *, agents: Sequence[Agent] = ()) -> AsyncIterator[Runtime]:
    """A Runtime wired from settings: its gateway, Redis-shared breakers and limits if configured,
    tracing and logs if asked for, and the shadows' candidates."""
    wiring = build_wiring(settings)
    observers, flush = build_observers(settings)
    try:
        shadows = {name: load_target(target) for name, target in settings.shadows.items()}
        permissions = None
        if settings.permissions.file is not None:
            permissions = PermissionPolicy.from_file(settings.permissions.file)
        async with Runtime(
            settings.db,
            budget_policy=settings.budget.policy(),
            agents=agents,
            gateway=wiring.gateway,
            guards=wiring.guards,
            lease_s=settings.lease_s,
            max_attempts=settings.max_attempts,
            observers=observers,
            shadows=shadows,
            permissions=permissions,
            guardrails=settings.guardrails.build(),
            behaviour=(
                BehaviourMonitor(min_runs=settings.guardrails.behaviour_min_runs)
                if settings.guardrails.behaviour
                else None
            ),
            redaction=settings.redaction.build(),
        ) as runtime:
            yield runtime
    finally:
        flush()
        await wiring.aclose()
