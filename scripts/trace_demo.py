"""Send the traces of a few demo support-desk runs to an OTLP/HTTP collector.

Five runs of the demo's support agent, on fake OpenAI-compatible providers served on 127.0.0.1, traced by
`RunTracer` and exported with the OTLP/HTTP span exporter to any collector (Jaeger, Tempo, an
OpenTelemetry Collector, Phoenix...):

- a refund: three tool calls (`lookup_order`, `check_refund_policy`, `issue_refund`);
- a refund over $120: it waits for approval, is approved, and resumes in the same trace;
- a status question on a primary model that answers one 500: the retry is an event on its `chat` span;
- a refund on a primary that is down: retried, then served by the backup (a `fallback.used` event);
- a policy question: one `chat` span.

To look at them in Arize Phoenix, a local trace viewer that reads OTLP (in its own venv; runs offline;
checked with arize-phoenix 20.26):

    python3 -m venv /tmp/phoenix-venv && /tmp/phoenix-venv/bin/pip install arize-phoenix
    PHOENIX_HOST=127.0.0.1 PHOENIX_PORT=6006 PHOENIX_WORKING_DIR=/tmp/phoenix-data \\
        PHOENIX_TELEMETRY_ENABLED=false PHOENIX_ALLOW_EXTERNAL_RESOURCES=false \\
        /tmp/phoenix-venv/bin/phoenix serve &
    .venv/bin/python scripts/trace_demo.py            # --endpoint for another collector
    # then open http://127.0.0.1:6006 (project "default"; the root spans are `invoke_agent support-desk`)

Phoenix also opens OTLP/gRPC on port 4317 of every interface (PHOENIX_HOST binds only the web port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from tether.demo.desk import build_support_agent, seed_orders
from tether.demo.providers import wire_responder
from tether.gateway import Gateway, Price, PriceTable
from tether.models.openai import OpenAIModel
from tether.observe.tracing import RunTracer
from tether.resilience.breaker import BreakerPolicy, BreakerRegistry
from tether.resilience.retry import RetryPolicy
from tether.runtime import Runtime
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import Run, RunStatus

DEFAULT_ENDPOINT = "http://127.0.0.1:6006/v1/traces"
PRIMARY, FLAKY, DOWN, BACKUP = (
    "openai:desk-primary",
    "openai:desk-flaky",
    "openai:desk-down",
    "openai:desk-backup",
)
SLOW = Fault("slow", every=1, delay_s=0.03)  # like a fast model, so spans have a visible width
FAULTS: dict[str, tuple[Fault, ...]] = {
    PRIMARY: (SLOW,),
    FLAKY: (Fault("http_500", requests={1}), SLOW),  # its first answer is a 500: one retry
    DOWN: (Fault("http_503", start=1, burst=3, retry_after_s=None), SLOW),  # 3 in a row: fallback
    BACKUP: (SLOW,),
}
APPROVER_DELAY_S = 0.4  # the person in the inbox takes a moment, so the approval span has a width
ROUTES = {"support": [PRIMARY, BACKUP], "flaky": [FLAKY, BACKUP], "outage": [DOWN, BACKUP]}


@dataclass(frozen=True)
class Scenario:
    title: str
    text: str
    route: str
    principal: str


SCENARIOS = (
    Scenario(
        "refund with tool calls",
        "Hi, I'd like a refund for order A-1001, it arrived broken.",
        "support",
        "cust-1",
    ),
    Scenario(
        "refund over $120: approval",
        "Please refund order A-1015, the backpack strap tore on day one.",
        "support",
        "cust-15",
    ),
    Scenario("model retry after a 500", "Where is my order A-1004?", "flaky", "cust-4"),
    Scenario(
        "primary down: fallback",
        "I want a refund for order A-1003, it is the wrong backpack.",
        "outage",
        "cust-3",
    ),
    Scenario("policy question", "What is your refund policy?", "support", "cust-9"),
)


def gateway_for(urls: dict[str, str]) -> Gateway:
    return Gateway(
        ROUTES,
        models={
            spec: OpenAIModel(spec.split(":", 1)[1], base_url=url, api_key="demo")
            for spec, url in urls.items()
        },
        retry=RetryPolicy(max_attempts=3, initial_backoff_s=0.02, max_backoff_s=0.2, max_retry_after_s=1.0),
        breakers=BreakerRegistry(BreakerPolicy(failure_threshold=5, window_s=60, cooldown_s=0.15)),
        prices=PriceTable(
            {
                PRIMARY: Price(0.15, 0.60),
                FLAKY: Price(0.15, 0.60),
                DOWN: Price(0.15, 0.60),
                BACKUP: Price(2.50, 10.0),
            }
        ),
    )


async def trace_runs(endpoint: str, db: Path, *, record_content: bool) -> list[Run]:
    """Run the scenarios on the store at `db`, exporting their spans to `endpoint`."""
    orders_db = db.with_name(f"{db.stem}-orders.db")
    seed_orders(orders_db)
    tracer = RunTracer.to_exporter(OTLPSpanExporter(endpoint=endpoint), record_content=record_content)
    servers = {
        spec: FakeLLMServer(responder=wire_responder, faults=faults, model_name=spec.split(":", 1)[1])
        for spec, faults in FAULTS.items()
    }
    finished: list[Run] = []
    try:
        with contextlib.ExitStack() as stack:
            for server in servers.values():
                stack.enter_context(server.run_in_thread())
            gateway = gateway_for({spec: server.url for spec, server in servers.items()})
            agent = build_support_agent(orders_db, model="support")
            async with Runtime(str(db), agents=[agent], gateway=gateway, observers=[tracer]) as runtime:
                for scenario in SCENARIOS:
                    run = await runtime.run(
                        agent, scenario.text, principal=scenario.principal, model=scenario.route
                    )
                    if run.status == RunStatus.WAITING_HUMAN:
                        print(f"  {run.id}: waiting for approval; approving", file=sys.stderr)
                        await asyncio.sleep(APPROVER_DELAY_S)
                        for question in await runtime.inbox():
                            if question.run_id == run.id:
                                await runtime.answer(question.id, "approve", by="ops-lead")
                        run = await runtime.execute(run.id)
                    print(
                        f"{scenario.title:28} {run.id}  {run.status}: {run.output or run.error}",
                        file=sys.stderr,
                    )
                    finished.append(run)
            await gateway.aclose()
    finally:
        tracer.shutdown()  # export what the batch processor still holds
    return finished


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--endpoint", default=DEFAULT_ENDPOINT, help=f"OTLP/HTTP traces URL ({DEFAULT_ENDPOINT})"
    )
    parser.add_argument("--db", type=Path, help="the run store's SQLite file (default: a temporary one)")
    parser.add_argument(
        "--content",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="record prompts and answers on the spans (the demo's are made up; default: on)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tether-trace-demo-") as scratch:
        db: Path = args.db.resolve() if args.db is not None else Path(scratch) / "runs.db"
        runs = asyncio.run(trace_runs(args.endpoint, db, record_content=args.content))
    print(f"sent the traces of {len(runs)} runs to {args.endpoint}", file=sys.stderr)
    return 0 if all(run.status == RunStatus.SUCCEEDED for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
