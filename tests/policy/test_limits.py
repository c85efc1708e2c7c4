"""Budgets: refusals per scope level, settlement, warnings, expiry, windows, and no overshoot under load."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import re
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.errors import BudgetExceededError, ConfigurationError, ErrorClass, UnavailableError, classify
from tether.policy import (
    Budget,
    BudgetBackend,
    BudgetPolicy,
    CounterUsage,
    Crossing,
    InMemoryBudgetBackend,
    Limits,
    PostgresBudgetBackend,
    RedisBudgetBackend,
    Reservation,
    Scope,
    SqliteBudgetBackend,
    usage_amounts,
)
from tether.policy.budget_stores import Check
from tether.types import Usage

NOON_S = 1_735_732_800.0  # 2025-01-01 12:00:00 UTC
MIDNIGHT_S = NOON_S + 12 * 3600  # 2025-01-02 00:00:00 UTC
SCOPE = Scope("run-1", session_id="sess-1", principal="ada", tenant="acme")
UNLIMITED = BudgetPolicy.unlimited()


class FakeClock:
    """Wall time that moves only when the test says so."""

    def __init__(self, now_s: float = NOON_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def policy(**changes: Any) -> BudgetPolicy:
    """No bounds except the ones given."""
    return dataclasses.replace(UNLIMITED, **changes)


@contextlib.asynccontextmanager
async def redis_connection(url: str, prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client whose keys under `prefix` are deleted afterwards."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        yield client
    finally:
        # Escaped: a parametrized test's prefix holds "[", which SCAN would read as a glob class.
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
        keys = [key async for key in client.scan_iter(match=pattern)]
        if keys:
            await client.delete(*keys)
        await client.aclose()


@pytest.fixture
async def redis_client(redis_url: str, redis_prefix: str) -> AsyncIterator[redis.asyncio.Redis]:
    async with redis_connection(redis_url, redis_prefix) as client:
        yield client


@pytest.fixture(params=["memory", "sqlite", "redis", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BudgetBackend]:
    if request.param == "memory":
        yield InMemoryBudgetBackend()
    elif request.param == "sqlite":
        sqlite = SqliteBudgetBackend(tmp_path / "budget.db")
        yield sqlite
        await sqlite.close()
    elif request.param == "postgres":  # looked up here too: only this parameter skips without PostgreSQL
        url, schema = request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema")
        postgres = PostgresBudgetBackend(url, schema=schema)
        yield postgres
        await postgres.close()
    else:  # looked up here, not declared, so that only this parameter skips without Redis
        prefix = request.getfixturevalue("redis_prefix")
        async with redis_connection(request.getfixturevalue("redis_url"), prefix) as client:
            yield RedisBudgetBackend(client, prefix=prefix)


async def tokens(budget: Budget, scope: Scope = SCOPE) -> dict[str, tuple[float, float]]:
    """(used, reserved) tokens at each level of `scope`."""
    report = await budget.usage(scope)
    return {level: (c["tokens"].used, c["tokens"].reserved) for level, c in report.items() if "tokens" in c}


@pytest.mark.parametrize(
    ("level", "setting", "other"),
    [
        ("run", "per_run", Scope("run-1")),
        ("session", "per_session", Scope("run-2", session_id="sess-1", principal="bob", tenant="zeta")),
        ("principal-day", "per_principal_day", Scope("run-2", session_id="sess-2", principal="ada")),
        ("tenant-day", "per_tenant_day", Scope("run-2", session_id="sess-2", principal="bob", tenant="acme")),
    ],
)
async def test_each_level_refuses_the_call_that_would_pass_its_limit(
    backend: BudgetBackend, level: str, setting: str, other: Scope
) -> None:
    """Each level, shared by another run, refuses naming level, counter, limit and usage; holds nothing."""
    budget = Budget(policy(**{setting: Limits(tokens=100)}), backend, clock=FakeClock())
    await budget.reserve(SCOPE, {"tokens": 60})
    before = await tokens(budget, other)
    with pytest.raises(
        BudgetExceededError, match=rf"{level} budget .*tokens.* limit of 100 .*60 reserved"
    ) as info:
        await budget.reserve(other, {"tokens": 50})
    error = info.value
    assert (error.scope, error.counter, error.limit) == (level, "tokens", 100)
    assert (error.used, error.reserved, error.requested) == (0, 60, 50)
    assert f"BudgetPolicy.{setting}.tokens" in str(error)
    assert await tokens(budget, other) == before
    assert (await budget.reserve(other, {"tokens": 40})).warnings[0].level == 100


async def test_refusal_is_all_or_nothing_across_levels_and_counters(backend: BudgetBackend) -> None:
    """A call refused on one counter or at one level holds none of its amounts anywhere."""
    limits = policy(per_run=Limits(tokens=1_000, tool_calls=2), per_tenant_day=Limits(tokens=150))
    budget = Budget(limits, backend, clock=FakeClock())
    await budget.reserve(SCOPE, {"tokens": 100, "tool_calls": 2})
    with pytest.raises(BudgetExceededError) as info:
        await budget.reserve(SCOPE, {"tokens": 10, "tool_calls": 1})
    assert (info.value.scope, info.value.counter) == ("run", "tool_calls")
    with pytest.raises(BudgetExceededError) as info:
        await budget.reserve(SCOPE, {"tokens": 100})
    assert info.value.scope == "tenant-day"
    usage = await budget.usage(SCOPE)
    assert {level: counters["tokens"].reserved for level, counters in usage.items()} == dict.fromkeys(
        ["run", "session", "principal-day", "tenant-day"], 100
    )
    assert usage["run"]["tool_calls"].reserved == 2


async def test_settle_replaces_the_reservation_with_actual_usage(backend: BudgetBackend) -> None:
    """Settling swaps the hold for the actual amounts, more or less; above the limit it is recorded."""
    budget = Budget(policy(per_run=Limits(tokens=1_000, cost_usd=0.05)), backend, clock=FakeClock())
    reservation = await budget.reserve(SCOPE, {"tokens": 500, "cost_usd": 0.01})
    await budget.settle(reservation, {"tokens": 300, "cost_usd": 0.02})
    usage = (await budget.usage(SCOPE))["run"]
    assert (usage["tokens"].used, usage["tokens"].reserved, usage["tokens"].remaining) == (300, 0, 700)
    assert (usage["cost_usd"].used, usage["cost_usd"].reserved) == (0.02, 0)
    reservation = await budget.reserve(SCOPE, {"tokens": 700})
    assert await budget.settle(reservation, {"tokens": 900}) == []  # warned already, at reservation
    assert (await tokens(budget))["run"] == (1_200, 0)
    with pytest.raises(BudgetExceededError, match="1,200 used"):
        await budget.reserve(SCOPE, {"tokens": 0})


async def test_release_frees_and_settling_twice_counts_once(backend: BudgetBackend) -> None:
    """Release gives the hold back; a second settle, or a release after settling, changes nothing."""
    budget = Budget(policy(per_run=Limits(tokens=1_000)), backend, clock=FakeClock())
    held = await budget.reserve(SCOPE, {"tokens": 900})
    with pytest.raises(BudgetExceededError):
        await budget.reserve(SCOPE, {"tokens": 200})
    await budget.release(held)
    await budget.release(held)
    settled = await budget.reserve(SCOPE, {"tokens": 200})
    await budget.settle(settled, {"tokens": 150})
    await budget.settle(settled, {"tokens": 150})
    await budget.release(settled)
    assert (await tokens(budget))["run"] == (150, 0)


async def test_warnings_come_once_per_counter_and_level(backend: BudgetBackend) -> None:
    """Reaching 80% warns once, at whichever step got there (reservation or settlement), per level."""
    limits = policy(per_run=Limits(tokens=1_000), per_principal_day=Limits(tokens=2_000))
    budget = Budget(limits, backend, clock=FakeClock())
    first = await budget.reserve(SCOPE, {"tokens": 700})
    assert first.warnings == ()
    second = await budget.reserve(SCOPE, {"tokens": 100})
    assert second.warnings == (Crossing("run", "run:run-1", "tokens", 1_000, 800),)
    assert second.warnings[0].event() == (
        "budget.warning",
        {"scope": "run", "scope_key": "run:run-1", "counter": "tokens", "limit": 1_000, "level": 800},
    )
    assert (await budget.reserve(SCOPE, {"tokens": 100})).warnings == ()
    await budget.settle(first, {"tokens": 0})
    assert (await budget.reserve(SCOPE, {"tokens": 50})).warnings == ()  # back under 80%, warned already
    other = await budget.reserve(Scope("run-2", principal="ada"), {"tokens": 100})
    assert await budget.settle(other, {"tokens": 1_500}) == [
        Crossing("run", "run:run-2", "tokens", 1_000, 1_500),
        Crossing("principal-day", "principal-day:2025-01-01:ada", "tokens", 2_000, 1_750),
    ]


async def test_lapsed_reservations_are_reclaimed_and_still_settle(backend: BudgetBackend) -> None:
    """A crashed worker's hold comes back after reservation_ttl_s; its late settlement is still recorded."""
    clock = FakeClock()
    budget = Budget(policy(per_run=Limits(tokens=1_000)), backend, clock=clock, reservation_ttl_s=60)
    crashed = await budget.reserve(SCOPE, {"tokens": 1_000})
    clock.advance(59)
    with pytest.raises(BudgetExceededError):
        await budget.reserve(SCOPE, {"tokens": 1})
    clock.advance(1)
    await budget.reserve(SCOPE, {"tokens": 990})
    await budget.settle(crashed, {"tokens": 10})
    assert (await tokens(budget))["run"] == (10, 990)


async def test_day_levels_roll_over_at_utc_midnight(backend: BudgetBackend) -> None:
    """Day budgets reset at 00:00 UTC (the error says when); run budgets do not."""
    clock = FakeClock(MIDNIGHT_S - 1)
    budget = Budget(
        policy(per_run=Limits(tokens=250), per_principal_day=Limits(tokens=100)), backend, clock=clock
    )
    await budget.settle(await budget.reserve(SCOPE, {"tokens": 100}), {"tokens": 100})
    with pytest.raises(BudgetExceededError, match=r"reset at 2025-01-02 00:00 UTC \(in 1 s\)") as info:
        await budget.reserve(SCOPE, {"tokens": 1})
    assert (info.value.scope, info.value.retry_in_s) == ("principal-day", 1.0)
    clock.advance(1)
    await budget.settle(await budget.reserve(SCOPE, {"tokens": 100}), {"tokens": 100})
    used = await tokens(budget)
    assert (used["run"], used["session"], used["principal-day"]) == ((200, 0), (200, 0), (100, 0))
    with pytest.raises(BudgetExceededError) as info:
        await budget.reserve(SCOPE, {"tokens": 60})
    assert (info.value.scope, info.value.retry_in_s) == ("run", None)


async def test_spend_rate_breaker_refuses_until_the_hour_moves(backend: BudgetBackend) -> None:
    """Past spend_rate_usd_per_hour a principal's calls are refused until the next UTC hour; others go on."""
    clock = FakeClock()
    budget = Budget(policy(spend_rate_usd_per_hour=1.0), backend, clock=clock)
    spent = await budget.reserve(SCOPE, {"cost_usd": 0.6, "tokens": 5_000})
    await budget.settle(spent, {"cost_usd": 0.6, "tokens": 5_000})
    clock.advance(1800)
    with pytest.raises(BudgetExceededError, match="spend_rate_usd_per_hour") as info:
        await budget.reserve(Scope("run-2", principal="ada"), {"cost_usd": 0.5})
    error = info.value
    assert (error.scope, error.counter, error.limit, error.used, error.retry_in_s) == (
        "principal-hour",
        "cost_usd",
        1.0,
        0.6,
        1800,
    )
    assert "$0.6000 used" in str(error)
    await budget.reserve(Scope("run-3", principal="bob"), {"cost_usd": 0.9})
    clock.advance(1800)
    await budget.reserve(Scope("run-2", principal="ada"), {"cost_usd": 0.5})
    assert (await budget.usage(SCOPE))["principal-hour"] == {"cost_usd": CounterUsage(0, 0.5, 1.0)}


async def test_custom_counters_are_bounded_like_standard_ones(backend: BudgetBackend) -> None:
    """A counter a tool declares (emails) is bounded by Limits.custom and named in the refusal."""
    budget = Budget(policy(per_run=Limits(mutations=5, custom={"emails": 2})), backend, clock=FakeClock())
    for _ in range(2):
        await budget.reserve(SCOPE, {"tool_calls": 1, "mutations": 1, "emails": 1})
    with pytest.raises(BudgetExceededError, match=r"BudgetPolicy\.per_run\.custom\['emails'\]") as info:
        await budget.reserve(SCOPE, {"tool_calls": 1, "mutations": 1, "emails": 1})
    assert info.value.counter == "emails"
    usage = (await budget.usage(SCOPE))["run"]
    assert list(usage) == ["mutations", "emails", "tool_calls"]
    assert (usage["emails"].reserved, usage["tool_calls"].limit) == (2, None)


async def test_budget_exceeded_escalates_and_carries_its_event() -> None:
    """BudgetExceededError is UNAVAILABLE (the loop escalates), not an UnavailableError ("try later")."""
    budget = Budget(policy(per_run=Limits(tool_calls=0)), clock=FakeClock())
    with pytest.raises(BudgetExceededError) as info:
        await budget.reserve(SCOPE, {"tool_calls": 1})
    assert classify(info.value) is ErrorClass.UNAVAILABLE
    assert not isinstance(info.value, UnavailableError)
    [(kind, data)] = info.value.events
    assert kind == "budget.exceeded"
    assert (data["scope"], data["counter"], data["limit"], data["requested"]) == ("run", "tool_calls", 0, 1)


def test_defaults_follow_the_design() -> None:
    """Per run: 8,000 tokens, 10 tool calls, 5 mutations, $0.50; sessions and days allow more."""
    default = BudgetPolicy()
    assert default.per_run == Limits(tokens=8_000, cost_usd=0.5, tool_calls=10, mutations=5)
    assert (default.warn_at, default.spend_rate_usd_per_hour) == (0.8, None)
    for wider in (default.per_session, default.per_principal_day, default.per_tenant_day):
        for counter in ("tokens", "cost_usd", "tool_calls", "mutations"):
            assert (wider.get(counter) or 0) > (default.per_run.get(counter) or 0)
    assert usage_amounts(Usage(100, 50, 0.002)) == {"tokens": 150, "cost_usd": 0.002}
    assert usage_amounts(Usage(100, 50, None)) == {"tokens": 150}


def test_limits_are_immutable_and_hashable() -> None:
    """Limits (custom counters included) cannot change after they are built, so policies can be shared."""
    limits = Limits(tokens=1, custom={"emails": 2})
    with pytest.raises(TypeError):
        limits.custom["emails"] = 3  # type: ignore[index]
    assert limits == Limits(tokens=1, custom={"emails": 2}) != Limits(tokens=1, custom={"emails": 3})
    assert len({BudgetPolicy(per_run=limits), BudgetPolicy(per_run=limits)}) == 1


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Limits(tokens=-1), "Limits.tokens"),
        (lambda: Limits(cost_usd=math.nan), "Limits.cost_usd"),
        (lambda: Limits(custom={"Emails Sent": 1}), "lowercase"),
        (lambda: Limits(custom={"tokens": 1}), "standard counter"),
        (lambda: BudgetPolicy(warn_at=0), "warn_at"),
        (lambda: BudgetPolicy(warn_at=1.5), "warn_at"),
        (lambda: BudgetPolicy(spend_rate_usd_per_hour=math.inf), "spend_rate"),
        (lambda: Scope(""), "run_id"),
    ],
)
def test_invalid_settings_are_refused_with_the_field(build: Any, match: str) -> None:
    """Negative, NaN or infinite bounds, bad counter names and bad fractions name the faulty field."""
    with pytest.raises(ConfigurationError, match=match):
        build()


@pytest.mark.parametrize("amounts", [{"tokens": -1}, {"tokens": True}, {"Tokens": 1}, {"cost_usd": math.inf}])
async def test_invalid_amounts_are_refused_before_anything_is_held(amounts: dict[str, Any]) -> None:
    """A negative, boolean or infinite amount or a bad counter name raises and holds nothing."""
    budget = Budget(clock=FakeClock())
    with pytest.raises(ConfigurationError):
        await budget.reserve(SCOPE, amounts)
    assert all(
        c.used == c.reserved == 0 for level in (await budget.usage(SCOPE)).values() for c in level.values()
    )


async def test_sqlite_counters_survive_reopening(tmp_path: Path) -> None:
    """Holds and usage are in the file: a backend opened later (another process) sees them."""
    path = tmp_path / "budget.db"
    first = SqliteBudgetBackend(path)
    budget = Budget(backend=first, clock=FakeClock())
    await budget.settle(await budget.reserve(SCOPE, {"tokens": 100}), {"tokens": 80})
    await budget.reserve(SCOPE, {"tokens": 30})
    await first.close()
    second = SqliteBudgetBackend(path)
    assert (await tokens(Budget(backend=second, clock=FakeClock())))["tenant-day"] == (80, 30)
    await second.close()


async def test_redis_counters_expire_after_their_window(
    redis_client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    """Day counters live until a day after their day; nothing is left behind for ever."""
    budget = Budget(backend=RedisBudgetBackend(redis_client, prefix=redis_prefix), clock=FakeClock())
    await budget.reserve(SCOPE, {"tokens": 1})
    ttl_ms = await redis_client.pttl(f"{redis_prefix}c:principal-day:2025-01-01:ada")
    assert (12 + 24) * 3_600_000 - 1000 <= ttl_ms <= (12 + 24) * 3_600_000
    assert await redis_client.pttl(f"{redis_prefix}c:run:run-1") > 29 * 86_400_000


# --- no overshoot under concurrency --------------------------------------------------------------------

# Each step of a run: (tokens to reserve, fraction of them actually used, settle (True) or release).
run_plans = st.lists(
    st.lists(st.tuples(st.integers(1, 120), st.floats(0, 1), st.booleans()), min_size=1, max_size=8),
    min_size=2,
    max_size=8,
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(day_limit=st.integers(0, 600), run_limit=st.integers(50, 400), plans=run_plans)
async def test_concurrent_runs_never_reserve_past_a_shared_limit(
    backend: BudgetBackend, day_limit: int, run_limit: int, plans: list[list[tuple[int, float, bool]]]
) -> None:
    """Concurrent runs of one principal never hold + use more than the principal-day limit (or a run's).

    With actual <= reserved, as here, the hard invariant `used + reserved <= limit` holds at every
    level at every moment; the test's own ledger (granted and not finished + settled) agrees.
    """
    principal = uuid.uuid4().hex
    limits = policy(per_run=Limits(tokens=run_limit), per_principal_day=Limits(tokens=day_limit))
    budget = Budget(limits, backend, clock=FakeClock())
    ledger = {"open": 0, "settled": 0}
    refusals: list[BudgetExceededError] = []

    async def check(scope: Scope) -> None:
        for level, bound in (("run", run_limit), ("principal-day", day_limit)):
            counter = (await budget.usage(scope))[level]["tokens"]
            assert counter.used + counter.reserved <= bound

    async def run(index: int, plan: list[tuple[int, float, bool]]) -> None:
        scope = Scope(f"{principal}-{index}", principal=principal)
        for amount, fraction, settle in plan:
            try:
                reservation = await budget.reserve(scope, {"tokens": amount})
            except BudgetExceededError as exc:
                refusals.append(exc)
                continue
            ledger["open"] += amount
            assert ledger["open"] + ledger["settled"] <= day_limit
            await check(scope)
            await asyncio.sleep(0)
            ledger["open"] -= amount
            if settle:
                await budget.settle(reservation, {"tokens": math.floor(amount * fraction)})
                ledger["settled"] += math.floor(amount * fraction)
            else:
                await budget.release(reservation)
            await check(scope)

    await asyncio.gather(*(run(index, plan) for index, plan in enumerate(plans)))
    final = (await budget.usage(Scope("probe", principal=principal)))["principal-day"]["tokens"]
    assert (final.used, final.reserved) == (ledger["settled"], 0)
    assert all(exc.used + exc.reserved + exc.requested > exc.limit for exc in refusals), (
        "refused for no reason"
    )


HAMMER = """
import asyncio, json, random, sys
import redis.asyncio
from tether.errors import BudgetExceededError
from tether.policy import (
    Budget, BudgetPolicy, Limits, PostgresBudgetBackend, RedisBudgetBackend, Scope, SqliteBudgetBackend,
)

async def hammer(budget, principal, limit, rng, steps, name):
    settled = granted = refused = 0
    scope = Scope(f"{principal}-{name}", principal=principal)
    for _ in range(steps):
        amount = rng.randint(1, 40)
        try:
            reservation = await budget.reserve(scope, {"tokens": amount})
        except BudgetExceededError:
            refused += 1
            continue
        granted += 1
        counter = (await budget.usage(scope))["principal-day"]["tokens"]
        assert counter.used + counter.reserved <= limit, counter
        await asyncio.sleep(0)
        if rng.random() < 0.3:
            await budget.release(reservation)
        else:
            actual = rng.randint(0, amount)
            await budget.settle(reservation, {"tokens": actual})
            settled += actual
    return {"settled": settled, "granted": granted, "refused": refused}

async def main(kind, where, prefix, principal, limit, seed, steps):
    client = None
    if kind == "sqlite":
        backend = SqliteBudgetBackend(where)
    elif kind == "postgres":  # both processes create the tables at once, on first use
        backend = PostgresBudgetBackend(where, schema=prefix)
    else:
        client = redis.asyncio.Redis.from_url(where)
        backend = RedisBudgetBackend(client, prefix=prefix)
    policy = BudgetPolicy(Limits(), Limits(), Limits(tokens=limit), Limits())
    budget = Budget(policy, backend, clock=lambda: 1_735_732_800.0)
    print("ready", flush=True)
    sys.stdin.readline()
    rng = random.Random(seed)
    tasks = [
        hammer(budget, principal, limit, random.Random(rng.random()), steps, f"{seed}-{i}") for i in range(3)
    ]
    results = await asyncio.gather(*tasks)
    if client is not None:
        await client.aclose()
    if kind == "postgres":
        await backend.close()
    print(json.dumps({key: sum(r[key] for r in results) for key in results[0]}), flush=True)

if __name__ == "__main__":
    kind, where, prefix, principal, limit, seed, steps = sys.argv[1:]
    asyncio.run(main(kind, where, prefix, principal, int(limit), int(seed), int(steps)))
"""


async def settled_tokens(backend: BudgetBackend, principal: str) -> tuple[float, float]:
    """(used, reserved) tokens of `principal` on the hammer's day."""
    usage = await Budget(UNLIMITED, backend, clock=FakeClock()).usage(Scope("probe", principal=principal))
    return usage["principal-day"]["tokens"].used, usage["principal-day"]["tokens"].reserved


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(limit=st.integers(300, 3_000), seed=st.integers(0, 2**31))
@pytest.mark.parametrize("kind", ["sqlite", "redis", "postgres"])
async def test_two_processes_hammering_one_principal_never_overshoot(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str, limit: int, seed: int
) -> None:
    """Two OS processes, three runs each, on one principal-day budget never hold + use past its limit."""
    principal = uuid.uuid4().hex
    if kind == "sqlite":
        where, prefix = str(tmp_path / f"{principal}.db"), ""
    elif kind == "postgres":  # the schema (fresh per test; the processes create its tables) as the prefix
        where, prefix = request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema")
    else:
        where, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    args = [kind, where, prefix, principal, str(limit)]
    pipe = asyncio.subprocess.PIPE
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(script), *args, str(seed + n), "150", stdin=pipe, stdout=pipe
        )
        for n in range(2)
    ]
    for child in children:  # both are ready before either starts, so that they overlap
        assert child.stdout is not None
        assert await asyncio.wait_for(child.stdout.readline(), 10) == b"ready\n"
    outputs = await asyncio.wait_for(asyncio.gather(*(child.communicate(b"go\n") for child in children)), 30)
    assert [child.returncode for child in children] == [0, 0], "a process saw used + reserved > limit"
    results = [json.loads(stdout) for stdout, _ in outputs]
    if kind == "sqlite":
        sqlite = SqliteBudgetBackend(where)
        used, reserved = await settled_tokens(sqlite, principal)
        await sqlite.close()
    elif kind == "postgres":
        postgres = PostgresBudgetBackend(where, schema=prefix)
        try:
            used, reserved = await settled_tokens(postgres, principal)
        finally:
            await postgres.close()
    else:
        async with redis_connection(where, prefix) as client:
            used, reserved = await settled_tokens(RedisBudgetBackend(client, prefix=prefix), principal)
    assert (used, reserved) == (sum(result["settled"] for result in results), 0)
    assert used <= limit
    assert sum(result["refused"] for result in results), "the limit was reached, so it was contended"
    assert sum(result["granted"] for result in results) >= limit // 40, "refused before nearly full"


# --- every backend decides alike ---------------------------------------------------------------------------

EQUIVALENCE_POLICY = BudgetPolicy(
    per_run=Limits(tokens=600, cost_usd=0.3, tool_calls=3),
    per_session=Limits(tokens=1_000, tool_calls=5),
    per_principal_day=Limits(tokens=1_500, cost_usd=0.5),
    per_tenant_day=Limits(tokens=2_500, cost_usd=0.8, custom={"emails": 3}),
    spend_rate_usd_per_hour=0.4,
)
operations = st.lists(
    st.one_of(
        # (op, run, tokens, cost, tool calls, emails): runs 0..3 in sessions 0..1, principals 0..1
        st.tuples(
            st.just("reserve"),
            st.integers(0, 3),
            st.integers(0, 400),
            st.floats(0, 0.2),
            st.integers(0, 2),
            st.integers(0, 1),
        ),
        st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1.5)),  # may settle above the hold
        st.tuples(st.just("release"), st.integers(0, 50)),
        st.tuples(st.just("advance"), st.sampled_from([1, 59, 600, 1_800])),  # past expiry, hours, midnight
    ),
    max_size=30,
)


def scope_of(tag: str, run: int) -> Scope:
    return Scope(f"{tag}-run{run}", f"{tag}-session{run % 2}", f"{tag}-p{run // 2}", f"{tag}-tenant")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=operations)
async def test_every_backend_decides_alike(
    request: pytest.FixtureRequest, tmp_path: Path, plan: list[tuple[Any, ...]]
) -> None:
    """Over any sequence of reserve, settle, release and time steps, the backends give the same answers."""
    tag, clock = uuid.uuid4().hex[:8], FakeClock(MIDNIGHT_S - 1_800)
    prefix = f"{request.getfixturevalue('redis_prefix')}{tag}:"
    sqlite = SqliteBudgetBackend(tmp_path / f"{tag}.db")
    postgres = PostgresBudgetBackend(
        request.getfixturevalue("postgres_url"), schema=request.getfixturevalue("pg_schema")
    )
    try:
        async with redis_connection(request.getfixturevalue("redis_url"), prefix) as client:
            redis_backend = RedisBudgetBackend(client, prefix=prefix)
            backends: list[BudgetBackend] = [InMemoryBudgetBackend(), sqlite, redis_backend, postgres]
            budgets = [Budget(EQUIVALENCE_POLICY, b, clock=clock, reservation_ttl_s=600) for b in backends]
            held: list[list[Reservation]] = [[] for _ in budgets]
            for step in plan:
                answers: list[object] = []
                if step[0] == "advance":
                    clock.advance(step[1])
                elif step[0] == "reserve":
                    amounts = {
                        "tokens": step[2],
                        "cost_usd": step[3],
                        "tool_calls": step[4],
                        "emails": step[5],
                    }
                    for budget, reservations in zip(budgets, held, strict=True):
                        try:
                            reservation = await budget.reserve(scope_of(tag, step[1]), amounts)
                        except BudgetExceededError as exc:
                            answers.append((exc.scope, exc.counter, exc.used, exc.reserved, exc.retry_in_s))
                        else:
                            reservations.append(reservation)
                            answers.append(reservation.warnings)
                elif held[0]:
                    for budget, reservations in zip(budgets, held, strict=True):
                        reservation = reservations[step[1] % len(reservations)]
                        if step[0] == "settle":
                            actual = {name: value * step[2] for name, value in reservation.amounts.items()}
                            answers.append(await budget.settle(reservation, actual))
                        else:
                            await budget.release(reservation)
                            answers.append(await budget.usage(reservation.scope))
                assert all(answer == answers[0] for answer in answers), step
            for run in range(4):
                reports = [await budget.usage(scope_of(tag, run)) for budget in budgets]
                assert all(report == reports[0] for report in reports)
    finally:  # each example's own backends, closed at once: not one pool per example left open
        await sqlite.close()
        await postgres.close()


# --- backend edge cases: retried ids, lapsed ids, and calls wider than one SQL statement -------------------


def check_of(scope_key: str, amount: int, limit: int | None, counter: str = "tokens") -> Check:
    return Check(scope_key, counter, amount, limit, None if limit is None else limit - 1, NOON_S + 86_400)


async def test_a_retried_reservation_id_holds_once_until_it_lapses(backend: BudgetBackend) -> None:
    """Reserving a known id again holds nothing more; once it lapsed, the same id reserves afresh."""
    checks = [check_of("run:r", 60, 100)]
    assert (await backend.reserve("id-1", checks, NOON_S, NOON_S + 60)).refusal is None
    assert (await backend.reserve("id-1", checks, NOON_S + 1, NOON_S + 61)).refusal is None
    assert await backend.usage("run:r") == {"tokens": (0, 60)}
    assert (await backend.reserve("id-1", checks, NOON_S + 60, NOON_S + 120)).refusal is None
    assert await backend.usage("run:r") == {"tokens": (0, 60)}
    await backend.settle("id-1", [check_of("run:r", 50, 100)], NOON_S + 61)
    await backend.settle("id-1", [check_of("run:r", 50, 100)], NOON_S + 62)
    assert await backend.usage("run:r") == {"tokens": (50, 0)}


async def test_a_call_wider_than_one_statement_is_still_all_or_nothing(backend: BudgetBackend) -> None:
    """Hundreds of scopes and counters in one call (more than one SQL statement holds) decide as one."""
    checks = [check_of(f"scope:{n}", 1, 1, counter) for n in range(150) for counter in ("tokens", "emails")]
    assert (await backend.reserve("wide-1", checks, NOON_S, NOON_S + 60)).refusal is None
    refused = await backend.reserve(
        "wide-2", [*checks[:-1], check_of("scope:149", 0, None, "emails")], NOON_S, NOON_S + 60
    )
    assert refused.refusal is not None
    assert (refused.refusal.index, refused.refusal.reserved) == (0, 1)
    crossed = await backend.settle("wide-1", checks, NOON_S + 1)
    assert len(crossed) == 0  # warned already, at reservation
    assert await backend.usage("scope:149") == {"tokens": (1, 0), "emails": (1, 0)}
    await backend.release("wide-1")
    assert await backend.usage("scope:0") == {"tokens": (1, 0), "emails": (1, 0)}


async def test_a_lapsed_reservation_on_other_counters_is_reclaimed(backend: BudgetBackend) -> None:
    """A reserve on one scope gives back the lapsed holds on any other; the late settlement still counts."""
    assert (
        await backend.reserve("lapses", [check_of("run:a", 60, 100)], NOON_S, NOON_S + 60)
    ).refusal is None
    assert (
        await backend.reserve("other", [check_of("run:b", 10, 100)], NOON_S + 60, NOON_S + 660)
    ).refusal is None
    assert await backend.usage("run:a") == {"tokens": (0, 0)}
    assert await backend.settle("lapses", [check_of("run:a", 5, 100)], NOON_S + 61) == ()
    assert (await backend.usage("run:a"), await backend.usage("run:b")) == (
        {"tokens": (5, 0)},
        {"tokens": (0, 10)},
    )


async def test_settling_fewer_counters_than_were_held_gives_every_hold_back(backend: BudgetBackend) -> None:
    """Holds on counters and scopes a settlement does not charge are given back all the same."""
    held = [
        check_of(scope, 40, 100, counter)
        for scope in ("run:a", "tenant:t")
        for counter in ("tokens", "emails")
    ]
    assert (await backend.reserve("r", held, NOON_S, NOON_S + 60)).refusal is None
    await backend.settle("r", [check_of("run:a", 30, 100)], NOON_S + 1)
    assert await backend.usage("run:a") == {"tokens": (30, 0), "emails": (0, 0)}
    assert await backend.usage("tenant:t") == {"tokens": (0, 0), "emails": (0, 0)}


async def test_counters_past_their_keep_date_are_forgotten(backend: BudgetBackend) -> None:
    """A counter unused past its keep_until_s, with nothing reserved, is dropped; a held one is kept."""
    if isinstance(backend, RedisBudgetBackend):
        pytest.skip(
            "Redis forgets by key TTL, on its own clock: test_redis_counters_expire_after_their_window"
        )
    kept_until_s = NOON_S + 100

    def short(scope_key: str) -> Check:
        return Check(scope_key, "tokens", 5, None, None, kept_until_s)

    await backend.reserve("used", [short("run:old")], NOON_S, NOON_S + 60)
    await backend.settle("used", [short("run:old")], NOON_S + 1)
    await backend.reserve("still-held", [short("run:held")], NOON_S + 2, NOON_S + 1_000)
    await backend.reserve("later", [check_of("run:new", 1, None)], NOON_S + 200, NOON_S + 260)
    assert await backend.usage("run:old") == {}
    assert await backend.usage("run:held") == {"tokens": (0, 5)}
    assert await backend.usage("run:new") == {"tokens": (0, 1)}


async def test_many_tasks_reserving_against_one_limit_never_pass_it(backend: BudgetBackend) -> None:
    """Fifty concurrent runs of one principal, each reserving, then settling or releasing, stay within
    the principal's day limit at every step, and the counters end at exactly what was settled."""
    principal, limit = uuid.uuid4().hex, 2_000
    budget = Budget(policy(per_principal_day=Limits(tokens=limit)), backend, clock=FakeClock())
    settled, granted, refused = [0], [0], [0]

    async def run(index: int) -> None:
        scope = Scope(f"{principal}-{index}", principal=principal)
        for step in range(8):
            amount = 10 + (index * 37 + step * 11) % 90
            try:
                reservation = await budget.reserve(scope, {"tokens": amount})
            except BudgetExceededError:
                refused[0] += 1
                await asyncio.sleep(0)
                continue
            granted[0] += 1
            counter = (await budget.usage(scope))["principal-day"]["tokens"]
            assert counter.used + counter.reserved <= limit
            if (index + step) % 3:
                await budget.settle(reservation, {"tokens": amount // 2})
                settled[0] += amount // 2
            else:
                await budget.release(reservation)

    await asyncio.gather(*(run(index) for index in range(50)))
    final = (await budget.usage(Scope("probe", principal=principal)))["principal-day"]["tokens"]
    assert (final.used, final.reserved) == (settled[0], 0)
    assert final.used <= limit
    assert refused[0], "the limit was reached, so it was contended"
    assert granted[0] >= limit // 100
