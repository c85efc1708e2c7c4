"""The chaos gauntlet, small (bench/gauntlet.py): support runs across worker processes SIGKILLed at
random, flaky providers and tools, an operator answering approvals; the contract must hold."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.errors import ConfigurationError
from tether.store import store_from_url
from tether.types import RunStatus

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import gauntlet  # noqa: E402

pytestmark = [pytest.mark.crash, pytest.mark.timeout(120)]

# 5 to 11 s per store on 2 cores: 120 runs, 2 workers x 4, answers that take 0.1 s so that runs last
# long enough to be killed, a kill every 1.2 s or so (4 to 9 kills, each but the last few on a worker
# holding leases). The operator denies the first refund it is asked about and 30% of the others, so the
# denial check always has one; the $0.008 daily limit (each model call reserves its worst case, about
# $0.003 on the dear backup) stops several of the ten customers, so the budget check always has some.
SMALL = gauntlet.Options(
    runs=120,
    workers=2,
    concurrency=4,
    kill_every_s=1.2,
    lease_s=1.5,
    timeout_s=80.0,
    cost_limit_usd=0.008,
    deny_rate=0.3,
    latency_s=0.1,
)
TERMINAL = {str(status) for status in RunStatus if status.is_terminal}


def reachable_redis() -> str:
    import redis

    url = os.environ.get("TETHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {url} is required in CI: {exc}")
        pytest.skip(f"Redis at {url} is not reachable: {exc}")
    return url


def with_schema(url: str, schema: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


@contextlib.contextmanager
def fresh_postgres_schema() -> Iterator[str]:
    """A store URL on a schema of its own, dropped afterwards; skips without PostgreSQL or its store."""
    url = os.environ.get("TETHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    import psycopg
    from psycopg import sql

    try:
        psycopg.connect(url, connect_timeout=2).close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {url} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL at {url} is not reachable: {exc}")
    schema = f"tether_gauntlet_{secrets.token_hex(6)}"
    try:
        store = store_from_url(with_schema(url, schema))  # connects on first use: nothing opened yet
    except ConfigurationError as exc:
        pytest.skip(f"this tether has no PostgreSQL store: {exc}")
    asyncio.run(store.close())
    try:
        yield with_schema(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as db:
            db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module", params=["sqlite", "sqlite+redis", "postgresql"])
def report(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """One small gauntlet per store (and with breakers and budgets in Redis), shared by the tests."""
    if request.param == "sqlite":
        yield gauntlet.run(SMALL)
    elif request.param == "sqlite+redis":
        yield gauntlet.run(dataclasses.replace(SMALL, redis=reachable_redis()))
    else:
        with fresh_postgres_schema() as url:
            yield gauntlet.run(dataclasses.replace(SMALL, db=url))


def test_every_run_settles_and_none_is_lost(report: dict[str, Any]) -> None:
    """Every run ends in a terminal state before the timeout: none queued, running or waiting."""
    assert report["settled_before_timeout"]
    assert report["lost"] == 0, report["lost_runs"]
    assert sum(report["by_status"].values()) == SMALL.runs
    assert set(report["by_status"]) <= TERMINAL, report["by_status"]


def test_refunds_are_paid_once_and_never_after_a_denial(report: dict[str, Any]) -> None:
    """No run is refunded twice, and no refund a person denied is paid, though workers die mid-run."""
    assert report["refunds"] >= 1  # there were refunds to duplicate ...
    assert report["refund_denials"] >= 1  # ... and denials to ignore
    assert report["duplicate_refunds"] == 0
    assert report["denied_refunds_paid"] == 0


def test_workers_were_killed_and_their_runs_taken_over(report: dict[str, Any]) -> None:
    """The chaos was real: workers holding leases were SIGKILLed and others resumed their runs."""
    assert report["kills"] >= 1, report["kill_log"]
    assert report["runs_taken_over"] >= 1
    assert report["unexpected_worker_exits"] == 0  # no worker died but those the gauntlet killed


def test_the_busiest_customers_reach_the_daily_limit(report: dict[str, Any]) -> None:
    """Some customers were refused at the limit, so the overshoot check below checks something."""
    if not report["budget_shared"]:
        pytest.skip(f"{report['budget_backend']} is per process: the limit is not one limit")
    assert report["customers_at_limit"] >= 1


def test_no_customer_spends_past_the_daily_limit(report: dict[str, Any]) -> None:
    """Concurrent runs of one customer, on any worker, never spend past the customer's daily limit."""
    if not report["budget_shared"]:
        pytest.skip(f"{report['budget_backend']} is per process: the limit is not one limit")
    assert report["budget_overshoots"] == 0, report["overshoot_usd"]
