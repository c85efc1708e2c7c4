"""Provider keys never leave the process: not in events, the store file, logs, traces or metrics."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tether import Agent, RunStatus, Runtime, tool
from tether.errors import ConfigurationError
from tether.models.base import secret_from_env
from tether.observe.logs import RunLogger
from tether.observe.metrics import RunMetrics
from tether.observe.tracing import RunTracer
from tether.testing.fakellm import FakeLLMServer

KEY = "sk-test-7f3c9a1e5b2d4c8f9a0b1c2d3e4f5a6b"


@tool(side_effect="read")
def lookup_order(order_id: str) -> str:
    """Look an order up."""
    return f"{order_id}: delivered"


async def test_a_full_run_leaves_no_trace_of_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The key from OPENAI_API_KEY_FILE reaches the provider and appears in no artefact of the run."""
    secret = tmp_path / "openai.key"
    secret.write_text(KEY + "\n")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(secret))
    script = [
        {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "A-7"}}]},
        {"content": "Order A-7 was delivered."},
    ]
    server = FakeLLMServer(script, model_name="desk-model")
    exporter, logs = InMemorySpanExporter(), io.StringIO()
    metrics = RunMetrics()
    tracer = RunTracer.to_exporter(exporter, batch=False, record_content=True)
    with server.run_in_thread():
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        db = tmp_path / "secrets.db"
        agent = Agent("desk", model="openai:desk-model", tools=[lookup_order])
        observers = [tracer, metrics, RunLogger(format="json", stream=logs, level="debug")]
        async with Runtime(f"sqlite:///{db}", observers=observers) as runtime:
            run = await runtime.run(agent, "where is A-7?", principal="cust-1")
            events = await runtime.events(run.id)
        seen = server.last_headers.get("authorization", "")
    assert run.status == RunStatus.SUCCEEDED
    assert seen == f"Bearer {KEY}"  # the provider did get it
    artefacts = {
        "events": json.dumps([e.to_dict() for e in events]),
        "logs": logs.getvalue(),
        "spans": "".join(span.to_json() for span in exporter.get_finished_spans()),
        "metrics": (await metrics.render()).decode(),
        "store": _store_bytes(tmp_path),
    }
    assert all(artefacts.values())
    for name, text in artefacts.items():
        assert KEY not in text, f"the key leaked into {name}"
        assert KEY[:20] not in text, f"part of the key leaked into {name}"


def test_a_secret_file_that_cannot_be_read_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing or empty key file is an error naming the variable and the path, never a silent no-key."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigurationError, match=r"OPENAI_API_KEY_FILE=.*cannot be read"):
        secret_from_env("OPENAI_API_KEY")
    (tmp_path / "empty.key").write_text("\n")
    monkeypatch.setenv("OPENAI_API_KEY_FILE", str(tmp_path / "empty.key"))
    with pytest.raises(ConfigurationError, match="is empty"):
        secret_from_env("OPENAI_API_KEY")


def _store_bytes(directory: Path) -> str:
    """The SQLite file and its WAL and shared-memory files, as text to search."""
    return b"".join(path.read_bytes() for path in directory.glob("secrets.db*")).decode("latin-1")
