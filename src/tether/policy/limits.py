"""Blast-radius limits and cost guardrails: budgets per run, session, principal-day and tenant-day.

Before each model or tool call the caller reserves its (estimated) amounts at every level of the call's
scope at once, or at none (BudgetExceededError); after the call it settles the actual usage, or releases
the reservation if the call did not happen. Each step is atomic in the backend, across tasks and
processes, so concurrent runs of one principal can never together reserve past a limit.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType

from tether.errors import BudgetExceededError, ConfigurationError
from tether.policy.budget_stores import (
    BudgetBackend,
    Check,
    InMemoryBudgetBackend,
    Refusal,
    ReserveResult,
    SqliteBudgetBackend,
)
from tether.resilience.retry import duration_s
from tether.types import EventKind, JsonDict, Usage

COUNTERS = ("tokens", "cost_usd", "tool_calls", "mutations")  # any other valid name is a custom counter
UNITS_PER_ONE = 1_000_000  # counters are kept in millionths: integer sums, exact in every backend
MAX_AMOUNT = 2**53 // UNITS_PER_ONE  # about 9e9; beyond it Redis's Lua numbers (doubles) would round
DAY_S = 86_400
HOUR_S = 3_600
_COUNTER_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


def _number(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= MAX_AMOUNT:
        raise ConfigurationError(f"{what} must be a number from 0 to {MAX_AMOUNT:,}, not {value!r}")
    return float(value)


def _counter_name(name: object) -> str:
    if not isinstance(name, str) or not _COUNTER_NAME.match(name):
        raise ConfigurationError(
            f"budget counter {name!r}: use lowercase letters, digits and underscores, starting with a letter"
        )
    return name


def _units(value: float) -> int:
    return round(value * UNITS_PER_ONE)


def _to_units(amounts: Mapping[str, float]) -> dict[str, int]:
    return {
        _counter_name(name): _units(_number(f"amount of {name!r}", value)) for name, value in amounts.items()
    }


@dataclass(frozen=True, slots=True)
class Limits:
    """The bounds of one scope level; None lifts a bound. `custom` bounds counters that tools declare,
    e.g. `Limits(tokens=8_000, custom={"emails": 3})`. A counter without a bound is still counted."""

    tokens: float | None = None
    cost_usd: float | None = None
    tool_calls: float | None = None
    mutations: float | None = None  # calls of write tools: reads generous, writes strict
    custom: Mapping[str, float] = field(default_factory=dict, hash=False)  # read-only once built

    def __post_init__(self) -> None:
        for name in COUNTERS:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _number(f"Limits.{name}", value))
        custom: dict[str, float] = {}
        for name, value in self.custom.items():
            if _counter_name(name) in COUNTERS:
                raise ConfigurationError(f"Limits.custom[{name!r}]: a standard counter; set Limits.{name}")
            custom[name] = _number(f"Limits.custom[{name!r}]", value)
        object.__setattr__(self, "custom", MappingProxyType(custom))

    def get(self, counter: str) -> float | None:
        """The bound of `counter`, standard or custom; None when unbounded."""
        if counter in COUNTERS:
            value: float | None = getattr(self, counter)
            return value
        return self.custom.get(counter)

    def bounded(self) -> list[str]:
        """The counters this level bounds, standard ones first."""
        return [name for name in COUNTERS if getattr(self, name) is not None] + list(self.custom)


# DESIGN.md's defaults per request (run); higher per session and day. Every field is per agent.
DEFAULT_PER_RUN = Limits(tokens=8_000, cost_usd=0.50, tool_calls=10, mutations=5)
DEFAULT_PER_SESSION = Limits(tokens=32_000, cost_usd=2.00, tool_calls=40, mutations=20)
DEFAULT_PER_PRINCIPAL_DAY = Limits(tokens=100_000, cost_usd=5.00, tool_calls=200, mutations=50)
DEFAULT_PER_TENANT_DAY = Limits(tokens=1_000_000, cost_usd=50.00, tool_calls=2_000, mutations=500)


@dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """An agent's budgets. Days are UTC days. `warn_at` (a fraction of each limit) raises one
    budget.warning per counter and scope. `spend_rate_usd_per_hour` is the cost circuit breaker: a
    principal's spend per clock hour (UTC); past it, calls are refused until the next hour."""

    per_run: Limits = DEFAULT_PER_RUN
    per_session: Limits = DEFAULT_PER_SESSION
    per_principal_day: Limits = DEFAULT_PER_PRINCIPAL_DAY
    per_tenant_day: Limits = DEFAULT_PER_TENANT_DAY
    warn_at: float = 0.8
    spend_rate_usd_per_hour: float | None = None

    def __post_init__(self) -> None:
        for name in ("per_run", "per_session", "per_principal_day", "per_tenant_day"):
            if not isinstance(getattr(self, name), Limits):
                raise ConfigurationError(f"BudgetPolicy.{name} must be Limits, not {getattr(self, name)!r}")
        if (
            isinstance(self.warn_at, bool)
            or not isinstance(self.warn_at, int | float)
            or not 0 < self.warn_at <= 1
        ):
            raise ConfigurationError(f"BudgetPolicy.warn_at must be in (0, 1], not {self.warn_at!r}")
        if self.spend_rate_usd_per_hour is not None:
            _number("BudgetPolicy.spend_rate_usd_per_hour", self.spend_rate_usd_per_hour)

    @classmethod
    def unlimited(cls) -> BudgetPolicy:
        """No bounds at all: usage is still counted (and readable), nothing is ever refused."""
        return cls(Limits(), Limits(), Limits(), Limits())


@dataclass(frozen=True, slots=True)
class Scope:
    """Who a call is for. Principal ids are global: put the tenant in them if they are not."""

    run_id: str
    session_id: str | None = None
    principal: str | None = None
    tenant: str | None = None

    def __post_init__(self) -> None:
        for name in ("run_id", "session_id", "principal", "tenant"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigurationError(f"Scope.{name} must be a non-empty string, not {value!r}")


@dataclass(frozen=True, slots=True)
class ScopeLevel:
    """One level a call is charged at: "run", "session", "principal-day", "tenant-day" or
    "principal-hour" (the spend-rate breaker, which counts cost only)."""

    name: str
    key: str  # e.g. "principal-day:2025-01-31:ada"
    limits: Limits
    setting: str  # the BudgetPolicy field bounding it, for messages
    resets_at_s: float | None  # when the window ends; None for runs and sessions, which never reset
    keep_until_s: float  # when the backend may forget the counters

    def counts(self, counter: str) -> bool:
        return self.name != "principal-hour" or counter == "cost_usd"


@dataclass(frozen=True, slots=True)
class Crossing:
    """A counter reached `warn_at` of its limit at one level: record a budget.warning event and metric."""

    scope: str
    scope_key: str
    counter: str
    limit: float
    level: float  # used + reserved when it crossed

    def event(self) -> tuple[str, JsonDict]:
        data: JsonDict = {
            "scope": self.scope,
            "scope_key": self.scope_key,
            "counter": self.counter,
            "limit": self.limit,
            "level": self.level,
        }
        return EventKind.BUDGET_WARNING.value, data


@dataclass(frozen=True, slots=True)
class CounterUsage:
    """One counter at one level: settled `used`, `reserved` by calls in flight, and its `limit`."""

    used: float
    reserved: float
    limit: float | None

    @property
    def remaining(self) -> float | None:
        return None if self.limit is None else max(0.0, self.limit - self.used - self.reserved)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Amounts held for one call at every level of its scope; settle it with the actual usage after the
    call, or release it if the call did not happen. `warnings`: counters it brought to warn_at."""

    id: str
    scope: Scope
    amounts: Mapping[str, float]
    levels: tuple[ScopeLevel, ...]  # fixed at reservation: a call settles on the day it reserved on
    warnings: tuple[Crossing, ...] = ()


@dataclass(frozen=True, slots=True)
class _Plan:
    """A reservation about to be asked of a backend: its checks and which level owns each."""

    id: str
    scope: Scope
    amounts: dict[str, float]
    levels: tuple[ScopeLevel, ...]
    checks: list[Check]
    owners: list[ScopeLevel]
    now_s: float
    expires_at_s: float

    def outcome(self, result: ReserveResult) -> Reservation:
        """The reservation, or BudgetExceededError when a check did not fit (nothing is held)."""
        if result.refusal is not None:
            index = result.refusal.index
            raise _refused(self.owners[index], self.checks[index], result.refusal, self.now_s)
        checks, owners = self.checks, self.owners
        warnings = tuple(_crossing(owners[c.index], checks[c.index], c.level) for c in result.crossed)
        return Reservation(self.id, self.scope, self.amounts, self.levels, warnings)


def usage_amounts(usage: Usage) -> dict[str, float]:
    """What a model call's Usage charges: tokens, and cost when the price was known."""
    amounts = {"tokens": float(usage.input_tokens + usage.output_tokens)}
    if usage.cost_usd is not None:
        amounts["cost_usd"] = usage.cost_usd
    return amounts


class Budget:
    """Reserves before each call, settles after; one per agent policy, sharing a backend with others.

    The hard invariant: at every level, `used + reserved` never passes a limit through a reservation.
    A settlement records the actual usage even above what was reserved (the call happened), so usage
    can pass a limit only by how much callers underestimated; the next reservation is then refused.
    Reservations lapse after `reservation_ttl_s` (it must exceed the longest call) so that a crashed
    worker's holds come back; run and session counters are kept `retention_s` after their last use.
    """

    def __init__(
        self,
        policy: BudgetPolicy | None = None,
        backend: BudgetBackend | None = None,
        *,
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float | timedelta = 600.0,
        retention_s: float | timedelta = timedelta(days=30),
    ) -> None:
        self.policy = policy if policy is not None else BudgetPolicy()
        self._backend: BudgetBackend = backend if backend is not None else InMemoryBudgetBackend()
        self._clock = clock
        self.reservation_ttl_s = duration_s("Budget.reservation_ttl_s", reservation_ttl_s)
        self.retention_s = duration_s("Budget.retention_s", retention_s)
        if self.reservation_ttl_s <= 0:
            raise ConfigurationError("Budget.reservation_ttl_s must be positive")

    def levels(self, scope: Scope, now_s: float) -> tuple[ScopeLevel, ...]:
        """The levels a call of `scope` is charged at, at time `now_s`."""
        policy = self.policy
        day_start = math.floor(now_s / DAY_S) * DAY_S
        day = datetime.fromtimestamp(day_start, UTC).strftime("%Y-%m-%d")
        in_day = (day_start + DAY_S, day_start + 2 * DAY_S)  # resets, kept a day longer for reports
        keep = self._kept_until(now_s)
        levels = [ScopeLevel("run", f"run:{scope.run_id}", policy.per_run, "per_run", None, keep)]
        if scope.session_id is not None:
            key = f"session:{scope.session_id}"
            levels.append(ScopeLevel("session", key, policy.per_session, "per_session", None, keep))
        if scope.principal is not None:
            key = f"principal-day:{day}:{scope.principal}"
            levels.append(
                ScopeLevel("principal-day", key, policy.per_principal_day, "per_principal_day", *in_day)
            )
        if scope.tenant is not None:
            key = f"tenant-day:{day}:{scope.tenant}"
            levels.append(ScopeLevel("tenant-day", key, policy.per_tenant_day, "per_tenant_day", *in_day))
        if scope.principal is not None and policy.spend_rate_usd_per_hour is not None:
            hour_start = math.floor(now_s / HOUR_S) * HOUR_S
            hour = datetime.fromtimestamp(hour_start, UTC).strftime("%Y-%m-%dT%H")
            limits = Limits(cost_usd=policy.spend_rate_usd_per_hour)
            key = f"principal-hour:{hour}:{scope.principal}"
            window = (hour_start + HOUR_S, hour_start + HOUR_S + DAY_S)  # kept like day counters
            levels.append(ScopeLevel("principal-hour", key, limits, "spend_rate_usd_per_hour", *window))
        return tuple(levels)

    def _kept_until(self, now_s: float) -> float:
        """now + retention_s, rounded up to a step of an hour (or 1% of retention_s, if shorter): a counter
        used many times an hour keeps one date, which a store need not rewrite (nor re-index) each call."""
        step = min(HOUR_S, self.retention_s / 100)
        if step <= 0:
            return now_s + self.retention_s
        return math.ceil((now_s + self.retention_s) / step) * step

    async def reserve(self, scope: Scope, amounts: Mapping[str, float]) -> Reservation:
        """Hold `amounts` (e.g. {"tokens": 1200, "cost_usd": 0.004}) at every level, or raise
        BudgetExceededError naming the level, counter, limit and usage; then nothing is held."""
        plan = self._plan(scope, amounts)
        result = await self._backend.reserve(plan.id, plan.checks, plan.now_s, plan.expires_at_s)
        return plan.outcome(result)

    async def settle(self, reservation: Reservation, actual: Mapping[str, float]) -> list[Crossing]:
        """Replace the reservation by `actual` usage (more or less than reserved; never refused).
        Settling twice counts once while the backend remembers the reservation (its TTL)."""
        checks, owners = self._checks(reservation.levels, _to_units(actual))
        crossed = await self._backend.settle(reservation.id, checks, self._clock())
        return [_crossing(owners[c.index], checks[c.index], c.level) for c in crossed]

    def joins(self, connection: object) -> bool:
        """Whether the counters live in `connection` (a run store's): then `reserve_joined` and
        `settle_joined` write in the transaction the store has open, one commit instead of two."""
        return isinstance(self._backend, SqliteBudgetBackend) and self._backend.joins(connection)

    def reserve_joined(self, scope: Scope, amounts: Mapping[str, float]) -> Reservation:
        """`reserve`, inside the transaction open on the shared connection (see `joins`)."""
        plan = self._plan(scope, amounts)
        backend = self._joinable()
        return plan.outcome(backend.reserve_joined(plan.id, plan.checks, plan.now_s, plan.expires_at_s))

    def settle_joined(self, reservation: Reservation, actual: Mapping[str, float]) -> list[Crossing]:
        """`settle`, inside the transaction open on the shared connection (see `joins`)."""
        checks, owners = self._checks(reservation.levels, _to_units(actual))
        backend = self._joinable()
        crossed = backend.settle_joined(reservation.id, checks, self._clock())
        return [_crossing(owners[c.index], checks[c.index], c.level) for c in crossed]

    def _joinable(self) -> SqliteBudgetBackend:
        if not isinstance(self._backend, SqliteBudgetBackend):
            raise ConfigurationError(
                f"{type(self._backend).__name__} cannot join a run store's transaction; "
                "check Budget.joins(connection) first"
            )
        return self._backend

    def _plan(self, scope: Scope, amounts: Mapping[str, float]) -> _Plan:
        now_s = self._clock()
        levels = self.levels(scope, now_s)
        checks, owners = self._checks(levels, _to_units(amounts))
        expires_at_s = now_s + self.reservation_ttl_s
        return _Plan(uuid.uuid4().hex, scope, dict(amounts), levels, checks, owners, now_s, expires_at_s)

    async def release(self, reservation: Reservation) -> None:
        """Give the reservation back: the call did not happen."""
        await self._backend.release(reservation.id)

    async def usage(self, scope: Scope) -> dict[str, dict[str, CounterUsage]]:
        """Per level name, each bounded or used counter of the scope's current windows."""
        report: dict[str, dict[str, CounterUsage]] = {}
        for level in self.levels(scope, self._clock()):
            counted = await self._backend.usage(level.key)
            names = [*level.limits.bounded(), *sorted(set(counted) - set(level.limits.bounded()))]
            report[level.name] = {
                name: CounterUsage(
                    counted.get(name, (0, 0))[0] / UNITS_PER_ONE,
                    counted.get(name, (0, 0))[1] / UNITS_PER_ONE,
                    level.limits.get(name),
                )
                for name in names
            }
        return report

    def _checks(
        self, levels: Sequence[ScopeLevel], units: Mapping[str, int]
    ) -> tuple[list[Check], list[ScopeLevel]]:
        """One check per level and counter, in level order (run first), with the level that owns it."""
        checks: list[Check] = []
        owners: list[ScopeLevel] = []
        for level in levels:
            for counter, amount in units.items():
                if not level.counts(counter):
                    continue
                bound = level.limits.get(counter)
                limit = None if bound is None else _units(bound)
                warn_at = round(limit * self.policy.warn_at) if limit else None  # no warning for a 0 limit
                checks.append(Check(level.key, counter, amount, limit, warn_at, level.keep_until_s))
                owners.append(level)
        return checks, owners


def _crossing(level: ScopeLevel, check: Check, units: int) -> Crossing:
    assert check.limit is not None  # only bounded counters have a warn level
    return Crossing(level.name, level.key, check.counter, check.limit / UNITS_PER_ONE, units / UNITS_PER_ONE)


def _show(counter: str, value: float) -> str:
    return f"${value:,.4f}" if counter == "cost_usd" else f"{value:,.6g}"


def _refused(level: ScopeLevel, check: Check, refusal: Refusal, now_s: float) -> BudgetExceededError:
    assert check.limit is not None  # only a bounded counter refuses
    counter = check.counter
    limit, used, reserved, requested = (
        value / UNITS_PER_ONE for value in (check.limit, refusal.used, refusal.reserved, check.amount)
    )
    setting = f"BudgetPolicy.{level.setting}"
    if level.name != "principal-hour":
        setting += f".{counter}" if counter in COUNTERS else f".custom[{counter!r}]"
    retry_in_s, when = None, ""
    if level.resets_at_s is not None:
        retry_in_s = max(0.0, level.resets_at_s - now_s)
        resets = datetime.fromtimestamp(level.resets_at_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
        when = f", wait for the window to reset at {resets} (in {retry_in_s:,.0f} s)"
    message = (
        f"{level.name} budget {level.key!r}: {counter} would pass its limit of {_show(counter, limit)} "
        f"({_show(counter, used)} used + {_show(counter, reserved)} reserved by calls in flight + "
        f"{_show(counter, requested)} requested). The call was not made; hand the run to a person{when}, "
        f"or raise {setting}"
    )
    error = BudgetExceededError(
        message,
        scope=level.name,
        scope_key=level.key,
        counter=counter,
        limit=limit,
        used=used,
        reserved=reserved,
        requested=requested,
        retry_in_s=retry_in_s,
    )
    data: JsonDict = {
        "scope": level.name,
        "scope_key": level.key,
        "counter": counter,
        "limit": limit,
        "used": used,
        "reserved": reserved,
        "requested": requested,
        "retry_in_s": retry_in_s,
        "message": message,
    }
    error.events = ((EventKind.BUDGET_EXCEEDED.value, data),)
    return error
