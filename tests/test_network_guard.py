"""The conftest guard refuses non-loopback connections."""

from __future__ import annotations

import socket

import pytest


def test_non_loopback_connection_is_refused() -> None:
    """Connecting to a public address fails before any packet leaves the machine."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, pytest.raises(RuntimeError, match="loopback"):
        sock.connect(("192.0.2.1", 80))


def test_loopback_connection_is_allowed() -> None:
    """Loopback stays reachable: a local listener accepts the guarded connect."""
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with server, socket.create_connection(server.getsockname(), timeout=2):
        pass
