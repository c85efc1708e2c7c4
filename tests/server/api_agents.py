"""Agents the API tests start by `module:attribute`: one that echoes, one whose refund needs approval."""

from __future__ import annotations

import json

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, ToolCall, tool

REFUNDS: list[float] = []  # every refund that ran, across runs: "exactly once" is read here


def _echo(request: ModelRequest) -> ModelResponse:
    return ModelResponse(content=f"echo: {request.messages[-1].content}")


@tool(side_effect="write", idempotent=True, approval=lambda a: a["amount_usd"] > 100)
def refund(order_id: str, amount_usd: float) -> str:
    """Refund an order."""
    REFUNDS.append(amount_usd)
    return f"refunded {amount_usd}"


def _refund_desk(request: ModelRequest) -> ModelResponse:
    if request.turn == 0:
        arguments = {"order_id": "A-1", "amount_usd": 150}
        return ModelResponse(tool_calls=(ToolCall("call_0", "refund", arguments, json.dumps(arguments)),))
    return ModelResponse(content="refund handled")


echo = Agent("api-echo", model=FunctionModel(_echo, name="echo"))
desk = Agent("api-desk", model=FunctionModel(_refund_desk, name="desk"), tools=[refund])
not_an_agent = "a string"


@tool(side_effect="read")
async def slow_lookup(order_id: str) -> str:
    """Look an order up; slow while the file named by TETHER_TEST_SLOW_FILE exists."""
    import asyncio
    import os
    from pathlib import Path

    marker = os.environ.get("TETHER_TEST_SLOW_FILE")
    while marker and await asyncio.to_thread(Path(marker).exists):  # noqa: ASYNC110 - a file, not an event
        await asyncio.sleep(0.05)
    return f"order {order_id}: shipped"


def _slow_desk(request: ModelRequest) -> ModelResponse:
    if request.turn == 0:
        arguments = {"order_id": "A-1"}
        return ModelResponse(
            tool_calls=(ToolCall("call_0", "slow_lookup", arguments, json.dumps(arguments)),)
        )
    return ModelResponse(content="it shipped")


slow = Agent("api-slow", model=FunctionModel(_slow_desk, name="slow"), tools=[slow_lookup])
