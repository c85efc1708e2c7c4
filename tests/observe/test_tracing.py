"""Tracing: a run's events as OpenTelemetry spans, with GenAI names, parents and attributes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

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
from tether.errors import ModelRetryableError
from tether.gateway import Gateway
from tether.observe.tracing import RunTracer, root_span_id_of, trace_id_of
from tether.resilience.retry import RetryPolicy


async def no_sleep(_: float) -> None:
    return None


class Desk:
    """A support desk: the primary model is down for one call (retried, then the backup answers);
    a lookup tool, then a refund that needs approval above $100, then a final answer."""

    def __init__(self) -> None:
        self.primary_calls = 0

        @tool(side_effect="read")
        def lookup(order_id: str) -> str:
            """Look an order up."""
            return f"{order_id}: delivered, jane.doe@example.com"

        @tool(side_effect="write", idempotent=True, approval=lambda a: a["amount_usd"] > 100)
        def refund(order_id: str, amount_usd: float) -> str:
            """Refund an order."""
            return f"refunded {amount_usd}"

        def primary(request: ModelRequest) -> ModelResponse:
            self.primary_calls += 1
            if self.primary_calls <= 2:
                raise ModelRetryableError("503 from the provider")
            return self.script(request)

        self.gateway = Gateway(
            {"support": ["primary", "backup"]},
            models={
                "primary": FunctionModel(primary, name="primary"),
                "backup": FunctionModel(self.script, name="backup"),
            },
            retry=RetryPolicy(max_attempts=2),
            sleep=no_sleep,
        )
        self.agent = Agent("desk", model="support", tools=[lookup, refund])

    @staticmethod
    def script(request: ModelRequest) -> ModelResponse:
        usage = Usage(120, 30, 0.002)
        calls: dict[int, tuple[str, dict[str, Any]]] = {
            0: ("lookup", {"order_id": "A-1"}),
            1: ("refund", {"order_id": "A-1", "amount_usd": 150}),
        }
        if request.turn in calls:
            name, arguments = calls[request.turn]
            call = ToolCall(f"call_{request.turn}", name, arguments, json.dumps(arguments))
            return ModelResponse(tool_calls=(call,), usage=usage, model="backup-1")
        return ModelResponse(
            content="Refunded; card 4111 1111 1111 1111 noted.", usage=usage, model="backup-1"
        )


def by_name(spans: tuple[ReadableSpan, ...], prefix: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name.startswith(prefix)]


async def test_a_run_is_one_trace_with_genai_spans_under_its_root(tmp_path: Path) -> None:
    """Chat, tool, approval spans share the run's trace under `invoke_agent`, resumed after approval."""
    exporter = InMemorySpanExporter()
    tracer = RunTracer.to_exporter(exporter, batch=False)
    desk = Desk()
    async with Runtime(f"sqlite:///{tmp_path / 't.db'}", gateway=desk.gateway, observers=[tracer]) as runtime:
        run = await runtime.run(desk.agent, "refund A-1 please", principal="cust-7", tenant="acme")
        assert run.status == RunStatus.WAITING_HUMAN
        assert not by_name(exporter.get_finished_spans(), "invoke_agent")  # the run has not ended
        [question] = await runtime.inbox()
        await runtime.answer(question.id, "approve", by="lead@desk")
        run = await runtime.execute(run.id)
    assert run.status == RunStatus.SUCCEEDED
    spans = exporter.get_finished_spans()

    [root] = by_name(spans, "invoke_agent")
    assert root.name == "invoke_agent desk"
    assert root.parent is None
    assert root.context.trace_id == trace_id_of(run.id)
    assert root.context.span_id == root_span_id_of(run.id)
    attributes = root.attributes or {}
    assert attributes["gen_ai.operation.name"] == "invoke_agent"
    assert attributes["gen_ai.agent.name"] == "desk"
    assert attributes["tether.run.id"] == run.id
    assert attributes["tether.principal"] == "cust-7"
    assert attributes["gen_ai.usage.input_tokens"] == 360
    assert attributes["tether.cost_usd"] == pytest.approx(0.006)

    chats = by_name(spans, "chat ")
    # The first call fell back to the backup; then the primary answered again.
    assert [span.name for span in chats] == ["chat backup", "chat primary", "chat primary"]
    first = chats[0].attributes or {}
    assert first["gen_ai.operation.name"] == "chat"
    assert first["gen_ai.request.model"] == "backup"
    assert first["tether.route"] == "support"
    assert first["gen_ai.response.model"] == "backup-1"
    assert chats[0].kind == SpanKind.CLIENT
    assert root.status.status_code == StatusCode.OK
    assert first["gen_ai.usage.output_tokens"] == 30
    assert [event.name for event in chats[0].events] == ["model.retry", "fallback.used"]

    tools = by_name(spans, "execute_tool ")
    assert [span.name for span in tools] == ["execute_tool lookup", "execute_tool refund"]
    assert (tools[1].attributes or {})["gen_ai.tool.call.id"] == "call_1"

    [approval] = by_name(spans, "approval")
    assert (approval.attributes or {})["tether.escalation.choice"] == "approve"
    assert approval.start_time is not None
    assert approval.end_time is not None
    assert approval.end_time >= approval.start_time

    for span in spans:
        assert span.context.trace_id == trace_id_of(run.id)
        if span is not root:
            assert span.parent is not None
            assert span.parent.span_id == root.context.span_id
            assert (span.attributes or {})["tether.run.id"] == run.id
    # Content is not recorded unless asked for.
    assert not any("gen_ai.output.messages" in (span.attributes or {}) for span in spans)


async def test_content_is_recorded_only_when_configured_and_then_redacted(tmp_path: Path) -> None:
    """With record_content, answers and tool results are on the spans with emails and card numbers masked."""
    exporter = InMemorySpanExporter()
    tracer = RunTracer.to_exporter(exporter, batch=False, record_content=True)
    desk = Desk()
    desk.primary_calls = 10  # the primary answers
    async with Runtime(f"sqlite:///{tmp_path / 't.db'}", gateway=desk.gateway, observers=[tracer]) as runtime:
        run = await runtime.run(desk.agent, "refund A-1 please")
        [question] = await runtime.inbox()
        await runtime.answer(question.id, "approve")
        await runtime.execute(run.id)
    spans = exporter.get_finished_spans()
    text = json.dumps([dict(span.attributes or {}) for span in spans])
    assert "Refunded; card [card] noted." in text
    [final] = [
        s for s in spans if s.name.startswith("chat ") and "Refunded" in str((s.attributes or {}).values())
    ]
    [message] = json.loads(str((final.attributes or {})["gen_ai.output.messages"]))
    assert message == {
        "role": "assistant",
        "parts": [{"type": "text", "content": "Refunded; card [card] noted."}],
        "finish_reason": "stop",
    }
    assert "[email]" in text
    assert "jane.doe@example.com" not in text
    assert "4111 1111" not in text


async def test_a_failed_model_call_is_an_error_span(tmp_path: Path) -> None:
    """When every model fails, the chat span is an error with its class; the run waits for a person."""
    exporter = InMemorySpanExporter()
    tracer = RunTracer.to_exporter(exporter, batch=False)

    def down(request: ModelRequest) -> ModelResponse:
        raise ModelRetryableError("503")

    gateway = Gateway(
        {"main": ["a"]},
        models={"a": FunctionModel(down, name="a")},
        retry=RetryPolicy(max_attempts=2),
        sleep=no_sleep,
    )
    async with Runtime(f"sqlite:///{tmp_path / 't.db'}", gateway=gateway, observers=[tracer]) as runtime:
        run = await runtime.run(Agent("desk", model="main"), "help")
    assert run.status == RunStatus.WAITING_HUMAN
    [chat] = by_name(exporter.get_finished_spans(), "chat ")
    assert chat.status.status_code == StatusCode.ERROR
    assert (chat.attributes or {})["error.type"] == "retryable"
    assert [event.name for event in chat.events] == ["model.retry"]


async def test_two_tracers_in_one_process_keep_their_own_spans(tmp_path: Path) -> None:
    """Tracers are not global: each runtime's spans reach only its own exporter."""
    first, second = InMemorySpanExporter(), InMemorySpanExporter()

    def answer(request: ModelRequest) -> ModelResponse:
        return ModelResponse(content="hi", usage=Usage(1, 1))

    agent = Agent("echo", model=FunctionModel(answer))
    async with (
        Runtime(f"sqlite:///{tmp_path / 'a.db'}", observers=[RunTracer.to_exporter(first, batch=False)]) as a,
        Runtime(
            f"sqlite:///{tmp_path / 'b.db'}", observers=[RunTracer.to_exporter(second, batch=False)]
        ) as b,
    ):
        run_a = await a.run(agent, "one")
        await b.run(agent, "two")
        await b.run(agent, "three")
    assert len(by_name(first.get_finished_spans(), "invoke_agent")) == 1
    assert len(by_name(second.get_finished_spans(), "invoke_agent")) == 2
    assert {span.context.trace_id for span in first.get_finished_spans()} == {trace_id_of(run_a.id)}


async def test_a_run_resumed_by_another_process_continues_its_trace(tmp_path: Path) -> None:
    """A worker with its own tracer that resumes a parked run adds to the same trace, under the same root."""
    before, after = InMemorySpanExporter(), InMemorySpanExporter()
    desk = Desk()
    url = f"sqlite:///{tmp_path / 't.db'}"
    async with Runtime(
        url, gateway=desk.gateway, observers=[RunTracer.to_exporter(before, batch=False)]
    ) as first:
        run = await first.run(desk.agent, "refund A-1 please")
        [question] = await first.inbox()
        await first.answer(question.id, "approve")
    async with Runtime(
        url, gateway=desk.gateway, agents=[desk.agent], observers=[RunTracer.to_exporter(after, batch=False)]
    ) as second:
        run = await second.execute(run.id)
    assert run.status == RunStatus.SUCCEEDED
    [root] = by_name(after.get_finished_spans(), "invoke_agent")
    earlier = before.get_finished_spans()
    assert earlier
    assert not by_name(earlier, "invoke_agent")
    for span in earlier:
        assert span.context.trace_id == root.context.trace_id
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
    assert root.start_time is not None
    assert root.start_time <= min(s.start_time or 0 for s in earlier)
