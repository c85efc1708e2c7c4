"""Console sign-in: a session per API key presented once, kept server-side, with a CSRF token.

The browser holds only a random session id (HttpOnly, SameSite=Strict, path /console); the key's secret
is never stored, in the cookie or here. Every form carries the session's CSRF token, compared in constant
time; a request whose Origin is not this server is refused. Signing out forgets the session at once.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tether.server.api import ApiKey

SESSION_COOKIE = "tether_console"
LOGIN_COOKIE = "tether_console_login"  # double-submit token for the sign-in form (no session yet)


@dataclass(slots=True)
class ConsoleSession:
    """One signed-in browser: the key it signed in with, its CSRF token and messages to show next."""

    id: str
    key: ApiKey
    csrf: str
    expires_at_s: float
    notices: list[str] = field(default_factory=list)

    def can(self, *scopes: str) -> bool:
        """Whether the key holds one of `scopes` (admin holds them all)."""
        return bool(self.key.scopes & {*scopes, "admin"})

    def take_notices(self) -> list[str]:
        taken, self.notices = self.notices, []
        return taken


class ConsoleSessions:
    """The sessions of one console (one app): no state shared between apps or runtimes."""

    def __init__(
        self,
        *,
        ttl_s: float = 8 * 3600,
        max_sessions: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self._max = max_sessions
        self._clock = clock
        self._sessions: dict[str, ConsoleSession] = {}

    def open(self, key: ApiKey) -> ConsoleSession:
        now = self._clock()
        if len(self._sessions) >= self._max:
            self._forget_expired(now)
            if len(self._sessions) >= self._max:  # still full: the oldest session makes room
                del self._sessions[next(iter(self._sessions))]
        session = ConsoleSession(secrets.token_urlsafe(32), key, secrets.token_urlsafe(32), now + self.ttl_s)
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> ConsoleSession | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at_s <= self._clock():
            del self._sessions[session_id]
            return None
        return session

    def close(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _forget_expired(self, now: float) -> None:
        for session_id in [sid for sid, s in self._sessions.items() if s.expires_at_s <= now]:
            del self._sessions[session_id]


def same_token(presented: str | None, expected: str) -> bool:
    """Constant-time comparison of a form's token with the one issued."""
    return presented is not None and hmac.compare_digest(presented.encode(), expected.encode())


def new_token() -> str:
    return secrets.token_urlsafe(32)
