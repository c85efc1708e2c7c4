"""The `tether` command line: run, worker, runs list|show|events|cancel, dlq list|show|replay, demo, gateway.

Exit codes: 0 the run succeeded (or the command did its job), 1 the run did not succeed,
2 usage or configuration error (the message names the bad value).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tether.cli_support import (
    ConfigOption,
    DbOption,
    JsonOption,
    RawOption,
)
from tether.cli_support import clip as _clip
from tether.cli_support import console as _console
from tether.cli_support import err as _err
from tether.cli_support import importable_cwd as _importable_cwd
from tether.cli_support import masked as _masked
from tether.cli_support import run_async as _run_async
from tether.cli_support import settings as _settings
from tether.cli_support import when as _when
from tether.config import Settings, open_runtime
from tether.errors import ConfigurationError
from tether.eval_cli import eval_command
from tether.models import model_from_spec
from tether.release_cli import canary_app, shadow_app
from tether.runtime import Runtime, Worker, load_target
from tether.runtime.deadletters import DeadLetter
from tether.serve_cli import serve, serve_runtime
from tether.store.base import AuditEntry, Escalation
from tether.types import Run, RunStatus

app = typer.Typer(
    name="tether",
    help="A durable, bounded, observed runtime for LLM agents.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
runs_app = typer.Typer(help="Inspect and control runs.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
inbox_app = typer.Typer(help="Questions for people: list them, answer them.", no_args_is_help=True)
app.add_typer(inbox_app, name="inbox")
feedback_app = typer.Typer(help="People's answers, kept as labelled examples.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")
app.command("eval")(eval_command)
app.command("serve")(serve)


def main() -> None:
    app()


def _run_json(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "status": str(run.status),
        "output": run.output,
        "error": run.error,
        "usage": run.usage.to_dict(),
    }


@app.command()
def run(
    target: Annotated[str, typer.Argument(help="module:attribute naming a tether.Agent.")],
    input: Annotated[str, typer.Argument(help="The user's message.")],
    model: Annotated[str | None, typer.Option(help="Model spec overriding the agent's.")] = None,
    db: DbOption = None,
    principal: Annotated[str | None, typer.Option(help="Who the run acts for.")] = None,
    session: Annotated[
        str | None, typer.Option(help="The conversation it belongs to (session budgets).")
    ] = None,
    tenant: Annotated[str | None, typer.Option(help="The tenant (caches, budgets, accounting).")] = None,
    idempotency_key: Annotated[
        str | None, typer.Option(help="Starting the same key twice returns the same run.")
    ] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Only enqueue; print the run id.")] = False,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Run an agent on one input (in this process), or enqueue it for a worker with --no-wait."""
    settings = _settings(config, db=db, model=model)
    _importable_cwd()
    try:
        agent = load_target(target)
    except ConfigurationError as exc:
        raise _err(str(exc)) from None

    async def go() -> Run:
        async with open_runtime(settings, agents=[agent]) as runtime:
            kwargs = {
                "principal": principal,
                "idempotency_key": idempotency_key,
                "model": settings.model,
                "target": target,
                "session_id": session,
                "tenant": tenant,
            }
            if no_wait:
                return await runtime.start(agent, input, **kwargs)
            return await runtime.run(agent, input, **kwargs)

    result = _run_async(go)
    if no_wait:
        typer.echo(json.dumps({"run_id": result.id, "status": str(result.status)}) if as_json else result.id)
        return
    if as_json:
        typer.echo(json.dumps(_run_json(result)))
    else:
        console = _console()
        if result.status == RunStatus.SUCCEEDED:
            console.print(result.output or "", markup=False)
        else:
            console.print(f"run {result.id} is {result.status}: {result.error or ''}", markup=False)
    raise typer.Exit(0 if result.status == RunStatus.SUCCEEDED else 1)


@app.command()
def worker(
    db: DbOption = None,
    concurrency: Annotated[int | None, typer.Option(help="Runs driven at once.")] = None,
    lease_s: Annotated[
        float | None, typer.Option(help="Lease length; a dead worker's runs move after it.")
    ] = None,
    exit_when_idle: Annotated[
        bool, typer.Option("--exit-when-idle", help="Exit once no queued or running run is left.")
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=0,
            max=65535,
            help="Serve Prometheus metrics on http://HOST:PORT/metrics (default [tether.metrics] or off).",
        ),
    ] = None,
    metrics_host: Annotated[
        str | None, typer.Option("--metrics-host", help="Address for --metrics-port (default 127.0.0.1).")
    ] = None,
    poll_s: Annotated[
        float, typer.Option("--poll-s", min=0.001, help="How often an idle worker looks for work.")
    ] = 0.05,
    log_format: Annotated[
        str | None,
        typer.Option(
            "--log-format", help="A structured line per run event on stderr: json, console, auto, off."
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Execute queued runs, and runs whose worker died, until stopped (SIGTERM/SIGINT finish gracefully)."""
    settings = _settings(config, db=db, concurrency=concurrency, lease_s=lease_s)
    if log_format is not None:
        if log_format not in ("json", "console", "auto", "off"):
            raise _err(f"--log-format takes json, console, auto or off, not {log_format!r}")
        settings = settings.model_copy(
            update={"logs": settings.logs.model_copy(update={"format": log_format})}
        )
    _importable_cwd()

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with (
            open_runtime(settings) as runtime,
            _metrics_endpoint(runtime, settings, host=metrics_host, port=metrics_port),
        ):
            stats = await Worker(runtime, concurrency=settings.concurrency, poll_s=poll_s).run(
                exit_when_idle=exit_when_idle, stop=stop
            )
        return stats.finished

    finished = _run_async(go)
    Console(stderr=True, highlight=False).print(f"worker stopped after {finished} runs")


@contextlib.asynccontextmanager
async def _metrics_endpoint(
    runtime: Runtime, settings: Settings, *, host: str | None, port: int | None
) -> AsyncIterator[None]:
    """Count the runtime's runs and serve them at /metrics while the block runs, if a port is set."""
    port = port if port is not None else settings.metrics.port
    if port is None:
        yield
        return
    from tether.observe.metrics import RunMetrics, start_metrics_server

    host = host or settings.metrics.host
    metrics = RunMetrics(
        store=runtime.store,
        breakers=runtime.gateway.breakers,
        cost_per_task_limit_usd=settings.metrics.cost_per_task_limit_usd,
    )
    runtime.observers.append(metrics)
    try:
        server = await start_metrics_server(metrics, host=host, port=port)
    except OSError as exc:
        raise _err(f"cannot serve metrics on {host}:{port}: {exc}", 1) from None
    bound = server.sockets[0].getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    Console(stderr=True, highlight=False).print(f"metrics at http://{shown}:{bound}/metrics", markup=False)
    async with server:
        yield


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="Only runs with this status.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many runs, newest first.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List runs, newest first."""
    settings = _settings(config, db=db)
    try:
        wanted = RunStatus(status) if status is not None else None
    except ValueError:
        raise _err(
            f"--status {status!r} is not a run status; use one of {', '.join(s.value for s in RunStatus)}"
        ) from None

    async def go() -> list[Run]:
        async with Runtime(settings.db) as runtime:
            return await runtime.store.list_runs(status=wanted, limit=limit)

    runs = _run_async(go)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in runs]))
        return
    table = Table("run", "agent", "status", "attempts", "tokens", "created")
    for r in runs:
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created_at_epoch_ms / 1000))
        tokens = r.usage.input_tokens + r.usage.output_tokens
        table.add_row(r.id, r.agent_name, str(r.status), str(r.attempts), str(tokens), created)
    _console().print(table)


@runs_app.command("show")
def runs_show(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show one run: status, attempts, usage, event count."""
    settings = _settings(config, db=db)

    async def go() -> Run:
        async with Runtime(settings.db) as runtime:
            return await runtime.store.get_run(run_id)

    found = _run_async(go)
    if as_json:
        typer.echo(json.dumps(found.to_dict()))
        return
    table = Table(show_header=False)
    for key, value in found.to_dict().items():
        table.add_row(key, json.dumps(value) if isinstance(value, dict) else str(value))
    _console().print(table)


@runs_app.command("events")
def runs_events(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    raw: RawOption = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Print a run's event log in order (PII and secrets masked unless --raw)."""
    settings = _settings(config, db=db)

    async def go() -> list[dict[str, Any]]:
        async with Runtime(settings.db) as runtime:
            await runtime.store.get_run(run_id)
            return [e.to_dict() for e in await runtime.events(run_id)]

    events = _masked(_run_async(go), raw)
    if as_json:
        typer.echo(json.dumps(events))
        return
    table = Table("seq", "kind", "data")
    for event in events:
        table.add_row(str(event["seq"]), event["kind"], json.dumps(event["data"])[:160])
    _console().print(table)


@runs_app.command("cancel")
def runs_cancel(
    run_id: Annotated[str, typer.Argument(help="The run id.")],
    reason: Annotated[
        str, typer.Option(help="Why; recorded in the run's events.")
    ] = "cancelled from the CLI",
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Cancel a run that has not ended; its worker stops at its next step."""
    settings = _settings(config, db=db)

    async def go() -> Run:
        async with Runtime(settings.db) as runtime:
            return await runtime.cancel(run_id, reason)

    result = _run_async(go)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    else:
        _console().print(f"run {result.id} is {result.status}")


@inbox_app.command("list")
def inbox_list(
    show_all: Annotated[bool, typer.Option("--all", help="Answered questions too.")] = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List open questions (oldest first): why the run stopped and what may be answered."""
    settings = _settings(config, db=db)

    async def go() -> list[Escalation]:
        async with Runtime(settings.db) as runtime:
            return await runtime.inbox(status=None if show_all else "open")

    items = _run_async(go)
    if as_json:
        typer.echo(json.dumps([item.to_dict() for item in items]))
        return
    table = Table("id", "run", "reason", "options", "status", "question")
    for item in items:
        table.add_row(item.id, item.run_id, item.reason, "|".join(item.options), item.status, item.message)
    _console().print(table)


@inbox_app.command("answer")
def inbox_answer(
    escalation_id: Annotated[str, typer.Argument(help="The question's id (tether inbox list).")],
    choice: Annotated[str | None, typer.Option("--choice", help="One of the question's options.")] = None,
    text: Annotated[str | None, typer.Option("--text", help="A note, or the reply for a takeover.")] = None,
    approve: Annotated[bool, typer.Option("--approve", help="Approve the call(s).")] = False,
    deny: Annotated[str | None, typer.Option("--deny", help="Deny, with a message the agent sees.")] = None,
    edit: Annotated[str | None, typer.Option("--edit", help="Approve with these JSON arguments.")] = None,
    by: Annotated[str, typer.Option("--by", help="Who answers (kept with the answer).")] = "cli",
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Answer a question; the run is queued and a worker resumes it. A second answer is not applied."""
    settings = _settings(config, db=db)
    given = [
        flag
        for flag, on in (("--choice", choice), ("--approve", approve), ("--deny", deny), ("--edit", edit))
        if on
    ]
    if len(given) != 1:
        raise _err("give exactly one of --choice, --approve, --deny MESSAGE, --edit JSON")
    if approve:
        choice = "approve"
    elif deny is not None:
        choice, text = "deny", deny
    elif edit is not None:
        choice, text = "edit", edit
    assert choice is not None

    async def go() -> tuple[Escalation, bool]:
        async with Runtime(settings.db) as runtime:
            return await runtime.answer(escalation_id, choice, text=text, by=by)

    escalation, applied = _run_async(go)
    if as_json:
        typer.echo(json.dumps({**escalation.to_dict(), "applied": applied}))
    elif applied:
        _console().print(f"answered {escalation.id}; run {escalation.run_id} is queued for a worker")
    else:
        _console().print(
            f"{escalation.id} was already answered by {escalation.answered_by}: "
            f"{json.dumps(escalation.answer)}; this answer was not applied"
        )
    raise typer.Exit(0 if applied else 1)


@feedback_app.command("export")
def feedback_export(
    out: Annotated[Path | None, typer.Option("--out", help="Write JSONL here instead of stdout.")] = None,
    raw: RawOption = False,
    db: DbOption = None,
    config: ConfigOption = None,
) -> None:
    """Every answered question as one JSON line: the situation, the options, what the person chose
    (PII and secrets masked unless --raw: these files travel to labelling and training)."""
    settings = _settings(config, db=db)

    async def go() -> list[Escalation]:
        async with Runtime(settings.db) as runtime:
            return await runtime.store.list_escalations(status="answered", limit=1_000_000)

    items = _masked([item.to_dict() for item in _run_async(go)], raw)
    lines = [json.dumps(item, ensure_ascii=False) for item in items]
    if out is None:
        for line in lines:
            typer.echo(line)
    else:
        out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        Console(stderr=True, highlight=False).print(f"wrote {len(lines)} labelled examples to {out}")


@app.command()
def demo(
    runs: Annotated[int, typer.Option("--runs", min=1, max=10_000, help="How many customer requests.")] = 20,
    db: DbOption = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Runs driven at once.")] = 4,
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="Then keep the console running on localhost with the demo's pending approvals."
        ),
    ] = False,
    port: Annotated[int, typer.Option(min=0, max=65535, help="The console's port with --serve.")] = 8080,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """A customer-support desk on the embedded store: lookups, a flaky policy service, refunds. With
    --serve, the console (and API) then stays up at http://127.0.0.1:PORT/console until Ctrl-C."""
    from tether.demo import run_demo

    settings = _settings(config, db=db)
    serving = _demo_console(port, settings.concurrency) if serve else None
    summary = _run_async(lambda: run_demo(settings.db, runs, concurrency, quiet=as_json, serve=serving))
    if as_json:
        typer.echo(json.dumps(summary))
    raise typer.Exit(0 if summary["lost"] == 0 and summary["duplicate_refunds"] == 0 else 1)


def _demo_console(port: int, concurrency: int) -> Callable[[Runtime], Awaitable[None]]:
    """Serve the demo's runtime on loopback with a fresh operator key, printed with the sign-in link."""
    from tether.server.api import SCOPES, ApiKey

    key, secret = ApiKey.create(None, SCOPES)
    stderr = Console(stderr=True, highlight=False)

    def announce(base: str) -> None:
        stderr.print(
            f"Console: {base}/console — sign in with this operator key: {secret}",
            markup=False,
            soft_wrap=True,
        )
        stderr.print("Approve or deny the waiting refunds there; Ctrl-C stops the server.")

    async def serve(runtime: Runtime) -> None:
        await serve_runtime(
            runtime, [key], host="127.0.0.1", port=port, workers=1, concurrency=concurrency, announce=announce
        )

    return serve


@app.command()
def gateway(
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            metavar="ROUTE=SPEC",
            help="A route and its model chain, e.g. default=openai:gpt-4o-mini,anthropic:claude-haiku-4-5.",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to bind; 0 picks a free one.")] = 8400,
    api_key: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key",
            envvar="TETHER_GATEWAY_API_KEYS",
            help="Require 'Authorization: Bearer KEY' (repeatable; the variable takes keys split by spaces).",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Serve the gateway over an OpenAI-compatible endpoint (/v1/chat/completions, /v1/models, /metrics).

    Routes come from [tether.routes] in tether.toml and from --model ROUTE=SPEC[,FALLBACK...]; calls get
    the gateway's retries, fallbacks, breakers, rate limits and cost accounting. Serves until SIGTERM.
    """
    import socket

    import uvicorn

    from tether.config import build_wiring
    from tether.observe.metrics import RunMetrics
    from tether.server.openai_api import create_openai_app

    settings = _settings(config)
    routes = _parse_routes(model or [])
    if not routes and not settings.routes:
        raise _err(
            "give at least one --model ROUTE=SPEC (e.g. --model default=openai:gpt-4o-mini) "
            "or [tether.routes] in tether.toml"
        )
    try:
        wiring = build_wiring(settings, extra_routes=routes)
    except ConfigurationError as exc:
        raise _err(str(exc)) from None
    backend = wiring  # closes the gateway's connections and the Redis client
    metrics = RunMetrics(breakers=wiring.gateway.breakers)  # the calls it serves, and its breakers
    try:
        app_ = create_openai_app(wiring.gateway, api_keys=api_key or None, metrics=metrics)
    except ConfigurationError as exc:
        raise _err(str(exc)) from None
    # Bound and listening before the URL is printed, so a client reading it can connect at once.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise _err(f"cannot serve on {host}:{port}: {exc}", 1) from None
    server = uvicorn.Server(uvicorn.Config(app_, log_level="warning", ws="none"))

    def stop(signum: int, frame: object) -> None:
        server.should_exit = True

    async def serve() -> None:
        try:
            await server.serve(sockets=[sock])
        finally:
            await backend.aclose()

    # uvicorn re-raises the signal it handled once it has shut down; ours turns that into exit 0.
    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        bound = sock.getsockname()[1]
        typer.echo(f"serving on http://{f'[{host}]' if ':' in host else host}:{bound}/v1")
        asyncio.run(serve())
    finally:
        sock.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _parse_routes(pairs: list[str]) -> dict[str, list[str]]:
    """`ROUTE=SPEC[,FALLBACK...]` options into routes; bad pairs exit 2 naming them."""
    routes: dict[str, list[str]] = {}
    for pair in pairs:
        route, sep, chain = (part.strip() for part in pair.partition("="))
        specs = [spec.strip() for spec in chain.split(",") if spec.strip()]
        if not sep or not route or not specs:
            raise _err(
                f"--model {pair!r} must look like ROUTE=SPEC[,FALLBACK...], e.g. default=openai:gpt-4o-mini"
            )
        if route in routes:
            raise _err(f"--model {pair!r}: route {route!r} is given twice")
        for spec in specs:
            try:
                model_from_spec(spec)
            except ConfigurationError as exc:
                raise _err(f"--model {pair!r}: {exc}") from None
        routes[route] = specs
    return routes


@app.command("fake-llm")
def fake_llm(
    script: Annotated[Path, typer.Option("--script", help="JSON list of turns (the scripted: format).")],
    faults: Annotated[
        str, typer.Option("--faults", help="Faults to inject, e.g. 'http_500:rate=0.2,seed=7'.")
    ] = "",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0 picks a free one).")] = 0,
    model: Annotated[str, typer.Option("--model", help="Model id listed by /v1/models.")] = "fake-model",
) -> None:
    """A fake OpenAI-compatible server on 127.0.0.1 that answers from a script and injects faults.

    Prints its base URL on one line, then serves until SIGTERM/SIGINT. See docs/fake-llm.md.
    """
    from tether.testing.fakellm import serve

    try:
        serve(script, faults=faults, port=port, model_name=model, ready=typer.echo)
    except ConfigurationError as exc:
        raise _err(str(exc)) from None
    except OSError as exc:
        raise _err(f"cannot serve on 127.0.0.1:{port}: {exc}", 1) from None


dlq_app = typer.Typer(
    help="Dead letters: runs parked after too many failed attempts; triage them, replay them.",
    no_args_is_help=True,
)
app.add_typer(dlq_app, name="dlq")
app.add_typer(canary_app, name="canary")
audit_app = typer.Typer(
    help="The audit log: every permission decision and guardrail verdict, append-only.", no_args_is_help=True
)
app.add_typer(audit_app, name="audit")
app.add_typer(shadow_app, name="shadow")


@dlq_app.command("list")
def dlq_list(
    limit: Annotated[int, typer.Option(help="At most this many runs, newest first.")] = 50,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List dead-lettered runs, newest first, with their attempts and last error, and the DLQ depth."""
    settings = _settings(config, db=db)

    async def go() -> tuple[int, list[Run]]:
        async with Runtime(settings.db) as runtime:
            depth = (await runtime.store.count_by_status())[RunStatus.DEAD_LETTERED]
            return depth, await runtime.dead_letters(limit=limit)

    depth, runs = _run_async(go)
    if as_json:
        typer.echo(json.dumps({"depth": depth, "dead_letters": [r.to_dict() for r in runs]}))
        return
    table = Table("run", "agent", "attempts", "dead-lettered", "error")
    for r in runs:
        table.add_row(r.id, r.agent_name, str(r.attempts), _when(r.updated_at_epoch_ms), r.error or "")
    console = _console()
    console.print(table)
    shown = f" (showing {len(runs)})" if len(runs) < depth else ""
    console.print(f"{depth} dead-lettered run{'' if depth == 1 else 's'}{shown}", markup=False)


@dlq_app.command("show")
def dlq_show(
    run_id: Annotated[str, typer.Argument(help="The run id (tether dlq list).")],
    last: Annotated[int, typer.Option(min=0, help="How many of the last events to print.")] = 10,
    raw: RawOption = False,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Show a dead-lettered run: its attempts, decisions, tool outputs, calls left without a result
    (where the last attempt most likely died) and its last events."""
    settings = _settings(config, db=db)

    async def go() -> DeadLetter:
        async with Runtime(settings.db) as runtime:
            run = await runtime.store.get_run(run_id)
            return DeadLetter.from_events(run, await runtime.events(run_id), last=last)

    letter = _run_async(go)
    run = letter.run
    if run.status != RunStatus.DEAD_LETTERED:
        raise _err(f"run {run.id} is {run.status}, not dead-lettered; see `tether runs show {run.id}`")
    shown = _masked([letter.to_dict()], raw)[0]  # PII and secrets masked unless --raw
    if as_json:
        typer.echo(json.dumps(shown))
        return
    console = _console()
    console.print(
        f"run {run.id} ({run.agent_name} v{run.agent_version}): {run.error or 'dead-lettered'}",
        markup=False,
    )
    attempts = Table("seq", "kind", "detail", title="attempts")
    for item in shown["attempts"]:
        detail = {k: v for k, v in item.items() if k not in ("seq", "kind", "traceback")}
        attempts.add_row(str(item["seq"]), item["kind"], _clip(detail, 400))
    console.print(attempts)
    decisions = Table("seq", "kind", "turn", "decision", title="decisions")
    for item in shown["decisions"]:
        if item["kind"] == "model.response":
            calls = ", ".join(f"{c['name']}({json.dumps(c['arguments'])})" for c in item["tool_calls"])
            said = item["content"] if not calls else f"calls {calls}"
        else:
            said = _clip({k: v for k, v in item.items() if k not in ("seq", "kind")})
        decisions.add_row(str(item["seq"]), item["kind"], str(item.get("turn", "")), _clip(said))
    console.print(decisions)
    outputs = Table("seq", "turn", "tool", "outcome", "content", title="tool outputs")
    for item in shown["tool_outputs"]:
        row = (str(item["seq"]), str(item.get("turn", "")), str(item.get("tool", "")))
        outputs.add_row(*row, str(item.get("outcome", "")), _clip(item.get("content", ""), 120))
    console.print(outputs)
    unfinished = Table(
        "turn", "index", "tool", "arguments", "intent recorded", title="calls without a result"
    )
    for item in shown["unfinished_calls"]:
        unfinished.add_row(
            str(item["turn"]),
            str(item["index"]),
            item["tool"],
            _clip(item["arguments"]),
            "yes" if item["intent_recorded"] else "no",
        )
    console.print(unfinished)
    recent = Table("seq", "kind", "data", title=f"last {len(shown['last_events'])} events")
    for event in shown["last_events"]:
        recent.add_row(str(event["seq"]), event["kind"], _clip(event["data"]))
    console.print(recent)
    console.print(f"after the fix: tether dlq replay {run.id}", markup=False)


@dlq_app.command("replay")
def dlq_replay(
    run_id: Annotated[str, typer.Argument(help="The dead-lettered run's id.")],
    by: Annotated[str, typer.Option("--by", help="Who replays it (kept in the run's events).")] = "cli",
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Queue a dead-lettered run again after the fix; a worker resumes it from its last recorded step
    with fresh attempts (nothing recorded is redone)."""
    settings = _settings(config, db=db)

    async def go() -> tuple[Run, bool]:
        async with Runtime(settings.db) as runtime:
            return await runtime.replay(run_id, by=by)

    result, applied = _run_async(go)
    if not applied:
        raise _err(
            f"run {result.id} is {result.status}, not dead-lettered: only dead letters can be replayed"
        )
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "replayed": True}))
    else:
        _console().print(f"run {result.id} is queued again; a worker resumes it from its last recorded step")


@audit_app.command("list")
def audit_list(
    run: Annotated[str | None, typer.Option("--run", help="Only this run's entries.")] = None,
    principal: Annotated[str | None, typer.Option(help="Only this principal's entries.")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only this session's entries.")] = None,
    decision: Annotated[
        str | None, typer.Option(help="Only allow, deny, block, sanitise or escalate.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Who was allowed or denied what, in which run, by which grant or guardrail, and when."""
    if decision is not None and decision not in ("allow", "deny", "block", "sanitise", "escalate"):
        raise _err(f"--decision takes allow, deny, block, sanitise or escalate, not {decision!r}")
    settings = _settings(config, db=db)

    async def go() -> list[AuditEntry]:
        async with Runtime(settings.db) as runtime:
            return await runtime.store.list_audit(
                run_id=run, principal=principal, session_id=session, decision=decision, limit=limit
            )

    entries = _run_async(go)
    if as_json:
        typer.echo(json.dumps([entry.to_dict() for entry in entries]))
        return
    table = Table("when", "decision", "kind", "principal", "tool", "grant / guardrail", "run", "reason")
    for e in entries:
        table.add_row(
            _when(e.at_epoch_ms),
            e.decision,
            e.kind,
            e.principal or "",
            e.tool or "",
            e.grant or "",
            e.run_id,
            _clip(e.reason, 80),
        )
    _console().print(table)


@dlq_app.command("discard")
def dlq_discard(
    run_id: Annotated[str, typer.Argument(help="The dead-lettered run's id.")],
    reason: Annotated[
        str, typer.Option(help="Why; recorded in the run's events.")
    ] = "discarded from the CLI",
    db: DbOption = None,
    as_json: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Give up on a dead-lettered run: its writes that declared `compensate` are undone (here if the
    run's agent can be loaded, else by the next worker), then it ends cancelled."""
    settings = _settings(config, db=db)
    _importable_cwd()

    async def go() -> tuple[Run, Run]:
        async with Runtime(settings.db) as runtime:
            before = await runtime.store.get_run(run_id)
            return before, await runtime.discard(run_id, reason)

    before, result = _run_async(go)
    if before.status != RunStatus.DEAD_LETTERED:
        raise _err(
            f"run {result.id} is {result.status}, not dead-lettered: only dead letters can be discarded"
        )
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
    elif result.status == RunStatus.QUEUED:
        _console().print(f"run {result.id}: its writes are undone by the next worker, then it ends cancelled")
    else:
        _console().print(f"run {result.id} is {result.status}")
