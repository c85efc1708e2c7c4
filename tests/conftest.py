"""Test-wide guards: no test may reach a non-loopback address, nor a paid API."""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0]
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise RuntimeError(f"tests may only connect to loopback addresses, not {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> Any:
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise RuntimeError(f"tests may only connect to loopback addresses, not {address!r}")
    return _real_connect_ex(self, address)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection to a non-loopback address; keep real provider keys out of reach."""
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", _guarded_connect_ex)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TETHER_TESTING", "1")


@pytest.fixture
def redis_url() -> str:
    """A reachable Redis URL: TETHER_TEST_REDIS_URL or the local default. Missing Redis fails in CI."""
    import redis as redis_sync

    url = os.environ.get("TETHER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        client = redis_sync.Redis.from_url(url, socket_connect_timeout=1)
        client.ping()
        client.close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Redis at {url} is required in CI: {exc}")
        pytest.skip(f"Redis at {url} is not reachable: {exc}")
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A reachable PostgreSQL URL: TETHER_TEST_POSTGRES_URL or the local default. Missing PostgreSQL
    fails in CI. Tests isolate themselves in a schema of their own (`?schema=` or `schema=`)."""
    import psycopg

    url = os.environ.get("TETHER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {url} is required in CI: {exc}")
        pytest.skip(f"PostgreSQL at {url} is not reachable: {exc}")
    return url


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix unique to this test, so tests (and xdist workers) never share Redis keys."""
    import secrets

    return f"tether-test:{request.node.name[:40]}:{secrets.token_hex(4)}:"
