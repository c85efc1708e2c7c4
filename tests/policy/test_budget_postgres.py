"""PostgresBudgetBackend beyond the behaviour every backend shares (tests/policy/test_limits.py): its
tables, its connections, lock waits, and reclaiming under concurrency from several pools."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import psycopg
import pytest

from tether.errors import ConfigurationError, StoreError
from tether.policy import PostgresBudgetBackend
from tether.policy.budget_stores import Check

NOON_S = 1_735_732_800.0
DAY_S = 86_400.0

Backends = Callable[..., PostgresBudgetBackend]  # the pg_backends fixture: another backend on the schema


def check(scope_key: str, amount: int, limit: int | None = None) -> Check:
    return Check(scope_key, "tokens", amount, limit, None, NOON_S + DAY_S)


async def test_backends_starting_together_create_the_tables_once(pg_backends: Backends) -> None:
    """Six backends (as six processes would) first used at once on a new schema all work, and share it."""
    backends = [pg_backends() for _ in range(6)]
    results = await asyncio.gather(
        *(b.reserve(f"r{n}", [check("run:x", 10, 100)], NOON_S, NOON_S + 60) for n, b in enumerate(backends))
    )
    assert all(result.refusal is None for result in results)
    assert [await b.usage("run:x") for b in backends] == [{"tokens": (0, 60)}] * 6


async def test_counters_survive_reopening_and_the_url_may_name_the_schema(
    postgres_url: str, pg_schema: str, pg_backends: Backends
) -> None:
    """Holds and usage are in the database; `?schema=` in the URL means the same as `schema=`."""
    first = pg_backends()
    await first.reserve("a", [check("run:x", 30)], NOON_S, NOON_S + 60)
    await first.settle("a", [check("run:x", 20)], NOON_S + 1)
    await first.reserve("b", [check("run:x", 5)], NOON_S + 2, NOON_S + 60)
    await first.close()
    separator = "&" if "?" in postgres_url else "?"
    second = PostgresBudgetBackend(f"{postgres_url}{separator}schema={pg_schema}")
    try:
        assert second.schema == pg_schema
        assert await second.usage("run:x") == {"tokens": (20, 5)}
    finally:
        await second.close()
    with psycopg.connect(postgres_url) as db:
        found = db.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = %s AND tablename LIKE 'budget\\_%%'",
            (pg_schema,),
        ).fetchone()
    assert found == (2,)


async def test_a_call_waits_for_a_held_counter_at_most_lock_timeout_s(
    postgres_url: str, pg_schema: str, pg_backends: Backends
) -> None:
    """A counter locked by a stuck transaction makes a call fail with StoreError after lock_timeout_s,
    not hang; once the lock is gone, calls go through."""
    backend = pg_backends(lock_timeout_s=0.2)
    await backend.reserve("a", [check("run:x", 1)], NOON_S, NOON_S + 60)
    async with await psycopg.AsyncConnection.connect(postgres_url) as stuck:
        await stuck.execute(
            f'SELECT 1 FROM "{pg_schema}".budget_counters WHERE scope_key = %s FOR UPDATE', ("run:x",)
        )
        started = asyncio.get_running_loop().time()
        with pytest.raises(StoreError, match="lock timeout"):
            await backend.reserve("b", [check("run:x", 1)], NOON_S, NOON_S + 60)
        assert asyncio.get_running_loop().time() - started < 5
        await stuck.rollback()
    assert (await backend.reserve("b", [check("run:x", 1)], NOON_S, NOON_S + 60)).refusal is None
    assert await backend.usage("run:x") == {"tokens": (0, 2)}


async def test_an_unreachable_server_raises_store_error_without_the_password() -> None:
    """Nothing listening: StoreError naming host, port and database, never the password; a later call
    tries again."""
    backend = PostgresBudgetBackend("postgresql://ada:s3cret@127.0.0.1:1/budgets", connect_timeout_s=0.5)
    try:
        for _ in range(2):
            with pytest.raises(StoreError, match=r"127\.0\.0\.1:1/budgets") as info:
                await backend.usage("run:x")
            assert "s3cret" not in str(info.value)
    finally:
        await backend.close()


async def test_a_closed_backend_refuses_calls(pg_backends: Backends) -> None:
    """After close(), calls raise StoreError instead of reconnecting."""
    backend = pg_backends()
    await backend.usage("run:x")
    await backend.close()
    with pytest.raises(StoreError, match="closed"):
        await backend.usage("run:x")


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("sqlite:///budget.db", {}, "postgresql://"),
        ("postgresql://u@h/db", {"schema": "Budget"}, "lower-case"),
        ("postgresql://u@h/db?schema=x;drop", {}, "lower-case"),
        ("postgresql://u@h/db", {"max_connections": 0}, "max_connections"),
        ("postgresql://u@h/db", {"lock_timeout_s": 0}, "timeouts"),
    ],
)
def test_invalid_settings_are_refused(url: str, options: dict[str, object], match: str) -> None:
    """A non-PostgreSQL URL, a schema name that would need quoting, or no connections: ConfigurationError."""
    with pytest.raises(ConfigurationError, match=match):
        PostgresBudgetBackend(url, **options)  # type: ignore[arg-type]


async def test_lapsing_reservations_across_scopes_from_two_pools_never_deadlock(
    pg_backends: Backends,
) -> None:
    """Two backends (two pools, as two hosts), forty tasks, reservations over random scopes that often
    lapse unsettled and are reclaimed by whoever reserves next: no deadlock, no lock timeout, and in the
    end every counter holds exactly what was settled, nothing reserved."""
    backends = [pg_backends() for _ in range(2)]
    scopes = [f"run:{n}" for n in range(6)]
    settled = dict.fromkeys(scopes, 0)
    clock = [NOON_S]

    async def task(index: int) -> None:
        rng = random.Random(index)
        backend = backends[index % 2]
        for step in range(15):
            clock[0] += 1
            now_s = clock[0]
            chosen = rng.sample(scopes, rng.randint(1, 4))
            reservation_id = f"{index}-{step}"
            result = await backend.reserve(
                reservation_id, [check(scope, rng.randint(1, 9), 200) for scope in chosen], now_s, now_s + 5
            )
            if result.refusal is not None:
                continue
            await asyncio.sleep(0)
            fate = rng.random()
            if fate < 0.3:
                continue  # abandoned, as by a crashed worker: it lapses and someone reclaims it
            if fate < 0.5:
                await backend.release(reservation_id)
                continue
            charged = rng.sample(chosen, rng.randint(1, len(chosen)))  # often fewer than were held
            await backend.settle(reservation_id, [check(scope, 1) for scope in charged], now_s)
            for scope in charged:
                settled[scope] += 1

    await asyncio.gather(*(task(index) for index in range(40)))
    later_s = clock[0] + 60
    await backends[0].reserve("sweep", [check("run:sweep", 0)], later_s, later_s + 60)
    for scope in scopes:
        assert (await backends[1].usage(scope)).get("tokens", (0, 0)) == (settled[scope], 0)
