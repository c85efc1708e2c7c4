"""Structured logs: one line per meaningful event, with run and trace ids and the business context."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tether import (
    Agent,
    FunctionModel,
    ModelRequest,
    ModelResponse,
    RunStatus,
    Runtime,
    ToolCall,
    Usage,
    tool,
)
from tether.observe.logs import RunLogger
from tether.observe.tracing import trace_id_of


def desk() -> Agent:
    @tool(side_effect="read")
    def lookup(order_id: str) -> str:
        """Look an order up."""
        return f"{order_id}: delivered"

    def respond(request: ModelRequest) -> ModelResponse:
        if request.turn == 0:
            call = ToolCall("c0", "lookup", {"order_id": "A-1"}, '{"order_id": "A-1"}')
            return ModelResponse(tool_calls=(call,), usage=Usage(100, 10, 0.001), model="m-1")
        return ModelResponse(
            content="A-1 was delivered, jo@example.com", usage=Usage(120, 20, 0.002), model="m-1"
        )

    return Agent("desk", model=FunctionModel(respond, name="m-1"), tools=[lookup])


async def test_json_lines_carry_ids_and_business_context(tmp_path: Path) -> None:
    """Every line is JSON with run id, the trace's id, agent, principal; model lines have tokens and cost."""
    stream = io.StringIO()
    logger = RunLogger(format="json", stream=stream, level="debug")
    async with Runtime(f"sqlite:///{tmp_path / 'l.db'}", observers=[logger]) as rt:
        run = await rt.run(desk(), "where is A-1?", principal="cust-7", tenant="acme")
    assert run.status == RunStatus.SUCCEEDED
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["event"] for line in lines] == [
        "run.started",
        "model.response",
        "tool.result",
        "model.response",
        "run.completed",
    ]
    for line in lines:
        assert line["run_id"] == run.id
        assert line["trace_id"] == f"{trace_id_of(run.id):032x}"
        assert (line["agent"], line["principal"], line["tenant"]) == ("desk", "cust-7", "acme")
    assert [line["level"] for line in lines] == ["info", "debug", "debug", "debug", "info"]
    model = lines[1]
    assert (model["model"], model["input_tokens"], model["output_tokens"], model["cost_usd"]) == (
        "m-1",
        100,
        10,
        0.001,
    )
    assert (lines[2]["tool"], lines[2]["outcome"]) == ("lookup", "succeeded")
    assert "jo@example.com" not in stream.getvalue()  # content is never logged


async def test_console_format_is_readable_key_values(tmp_path: Path) -> None:
    """The terminal form is one line per event, key=value, no JSON braces."""
    stream = io.StringIO()
    async with Runtime(
        f"sqlite:///{tmp_path / 'l.db'}", observers=[RunLogger(format="console", stream=stream)]
    ) as rt:
        run = await rt.run(desk(), "where is A-1?")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # run started and completed; calls are debug lines, below the default level
    assert "run.completed" in lines[-1]
    assert f"run_id={run.id}" in lines[-1]
    assert not lines[-1].startswith("{")
