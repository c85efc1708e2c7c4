"""`tether serve`: the HTTP API with in-process workers, stopped gracefully by SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from tether.cli_support import ConfigOption, DbOption
from tether.cli_support import err as _err
from tether.cli_support import importable_cwd as _importable_cwd
from tether.cli_support import run_async as _run_async
from tether.cli_support import settings as _settings
from tether.config import open_runtime
from tether.errors import ConfigurationError
from tether.runtime import Runtime, Worker

if TYPE_CHECKING:
    from tether.server.api import ApiKey


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free one).")] = 8080,
    workers: Annotated[
        int, typer.Option(min=0, help="Workers executing runs in this process (0: serve the API only).")
    ] = 1,
    drain_s: Annotated[
        float,
        typer.Option(
            min=0, help="On shutdown, seconds in-flight runs may take to finish before being handed back."
        ),
    ] = 30.0,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Serve the HTTP API (/api/..., OpenAPI at /openapi.json), the operator console (/console), the
    OpenAI-compatible endpoint (/v1) and /metrics, with in-process workers. Keys come from
    TETHER_API_KEYS (tenant:scope1+scope2:secret, comma-separated), else one admin key is printed; the
    agents clients may start from TETHER_API_AGENTS (module:attribute, comma-separated).
    SIGTERM/SIGINT: stop claiming, let in-flight runs finish (up to --drain-s, then hand them back with
    their leases released), stop the server."""
    from tether.server.api import SCOPES, ApiKey, parse_api_keys

    settings = _settings(config, db=db)
    stderr = Console(stderr=True, highlight=False)
    try:
        keys = parse_api_keys(os.environ.get("TETHER_API_KEYS", ""))
    except ConfigurationError as exc:
        raise _err(f"TETHER_API_KEYS: {exc}") from None
    allowed = [
        target.strip() for target in os.environ.get("TETHER_API_AGENTS", "").split(",") if target.strip()
    ]
    if not keys:
        key, secret = ApiKey.create(None, SCOPES)
        keys = [key]
        stderr.print(
            f"TETHER_API_KEYS is not set; this run's operator key: {secret}", markup=False, soft_wrap=True
        )
    _importable_cwd()

    async def go() -> None:
        async with open_runtime(settings) as runtime:
            await serve_runtime(
                runtime,
                keys,
                host=host,
                port=port,
                workers=workers,
                concurrency=settings.concurrency,
                drain_s=drain_s,
                agents=allowed,
                cost_per_task_limit_usd=settings.metrics.cost_per_task_limit_usd,
            )

    _run_async(go)
    stderr.print("tether API stopped")


async def serve_runtime(
    runtime: Runtime,
    keys: Sequence[ApiKey],
    *,
    host: str,
    port: int,
    workers: int,
    concurrency: int = 4,
    drain_s: float = 30.0,
    agents: Sequence[str] = (),
    cost_per_task_limit_usd: float | Mapping[str, float] | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Serve `runtime` (API, console, /v1, /metrics) with `workers` in-process workers until SIGTERM or
    SIGINT: then stop claiming, drain or hand back in-flight runs, and stop the server."""
    import uvicorn

    from tether.observe.metrics import RunMetrics
    from tether.server.app import create_app

    stderr = Console(stderr=True, highlight=False)

    class GracefulServer(uvicorn.Server):
        """Hands the first SIGTERM/SIGINT to `stop` (workers first); a second one exits at once."""

        stop: asyncio.Event
        ready: asyncio.Event  # set once startup ended, bound or not
        loop: asyncio.AbstractEventLoop

        async def startup(self, sockets: Any = None) -> None:
            try:
                await super().startup(sockets)
            finally:
                self.ready.set()

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.stop.is_set():
                self.should_exit = self.force_exit = True
            self.loop.call_soon_threadsafe(self.stop.set)

    metrics = RunMetrics(
        store=runtime.store,
        breakers=runtime.gateway.breakers,
        cost_per_task_limit_usd=cost_per_task_limit_usd,
    )
    runtime.observers.append(metrics)
    uvicorn_config = uvicorn.Config(
        create_app(runtime, keys, agents=agents, metrics=metrics),
        host=host,
        port=port,
        log_level="warning",
        lifespan="off",
    )
    server = GracefulServer(uvicorn_config)
    server.stop, server.ready = asyncio.Event(), asyncio.Event()
    server.loop = asyncio.get_running_loop()

    async def serving() -> None:
        try:
            await server.serve()
        except SystemExit:  # uvicorn's answer to a port it cannot bind; it logged why
            server.ready.set()

    served = asyncio.create_task(serving())
    await server.ready.wait()
    if not server.started:
        raise _err(f"cannot serve on {host}:{port} (see the log line above)", 1)
    bound = server.servers[0].sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{bound}"
    stderr.print(
        f"tether API at {base}/api (OpenAPI at /openapi.json), console at {base}/console, "
        f"{workers} worker(s)",
        markup=False,
        soft_wrap=True,
    )
    if announce is not None:
        announce(base)
    running = [
        asyncio.create_task(
            Worker(
                runtime, concurrency=concurrency, worker_id=f"{runtime.worker_id}-{number}", drain_s=drain_s
            ).run(stop=server.stop)
        )
        for number in range(workers)
    ]
    await server.stop.wait()
    await asyncio.gather(*running)  # in-flight runs finish, or are handed back after drain_s
    server.should_exit = True
    await served
