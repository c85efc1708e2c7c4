"""Agents the console tests serve: an echo, and a desk whose refund over $100 waits for a person."""

from __future__ import annotations

import json

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, ToolCall, Usage, tool

REFUNDS: list[tuple[str, float]] = []  # every refund that ran, across runs: "exactly once" is read here


def _echo(request: ModelRequest) -> ModelResponse:
    return ModelResponse(content=f"echo: {request.messages[-1].content}", usage=Usage(12, 8, 0.001))


@tool(side_effect="write", idempotent=True, approval=lambda a: a["amount_usd"] > 100)
def refund(order_id: str, amount_usd: float) -> str:
    """Refund an order."""
    REFUNDS.append((order_id, amount_usd))
    return f"refunded {amount_usd} on {order_id}"


def _refund_desk(request: ModelRequest) -> ModelResponse:
    if request.turn == 0:
        arguments = {"order_id": "A-1", "amount_usd": 150}
        call = ToolCall("call_0", "refund", arguments, json.dumps(arguments))
        return ModelResponse(tool_calls=(call,), usage=Usage(40, 20, 0.004))
    return ModelResponse(content="Your refund is on its way.", usage=Usage(60, 10, 0.003))


echo = Agent("console-echo", model=FunctionModel(_echo, name="echo-model"))
desk = Agent("console-desk", model=FunctionModel(_refund_desk, name="desk-model"), tools=[refund])
