"""One ASGI app for `tether serve`: the HTTP API (/api, /openapi.json, /metrics, /healthz), the operator
console (/console) and the OpenAI-compatible endpoint (/v1) over the runtime's gateway, behind one set of
keys. A key calls /v1 if it may start runs (`runs:write`) or is an admin."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

from tether.observe.metrics import RunMetrics
from tether.runtime import Runtime
from tether.server.api import ADMIN, RUNS_WRITE, ApiKey, create_api
from tether.server.console import add_console
from tether.server.openai_api import create_openai_app

OPENAI_PREFIX = "/v1/"


def create_app(
    runtime: Runtime,
    keys: Sequence[ApiKey],
    *,
    agents: Collection[str] = (),
    metrics: RunMetrics | None = None,
    console: bool = True,
    secure_cookies: bool = False,
    stream_poll_s: float = 0.25,
) -> ASGIApp:
    """The whole server as one ASGI app (the caller owns and closes `runtime`)."""
    api = create_api(runtime, keys, agents=agents, metrics=metrics, stream_poll_s=stream_poll_s)
    if console:
        add_console(api, runtime, keys, secure_cookies=secure_cookies)
    callers = [key.secret_sha256 for key in keys if key.scopes & {RUNS_WRITE, ADMIN}]
    if not callers:
        return api
    openai = create_openai_app(runtime.gateway, api_key_sha256=callers, metrics=None)
    return _ByPrefix(api, openai)


class _ByPrefix:
    """Sends /v1/... to the OpenAI-compatible app, everything else to the API (with the console)."""

    def __init__(self, api: ASGIApp, openai: ASGIApp) -> None:
        self.api, self.openai = api, openai

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(OPENAI_PREFIX):
            await self.openai(scope, receive, send)
        else:
            await self.api(scope, receive, send)
