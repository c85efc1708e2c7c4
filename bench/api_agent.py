"""The agents `bench/api.py` starts over the HTTP API: `api_agent:lookup` and `api_agent:desk`.

`lookup`: turn 0 calls a read tool, turn 1 answers, so a finished run has a typical short event log
(started, two model calls, a tool call, completed). `desk`: turn 0 asks for `refund(order_id,
amount_usd)` with 150 USD, and the tool's `approval=lambda a: a["amount_usd"] > 100` parks the run
(`waiting_human`, an "approval" question in the inbox); once approved, the tool runs and turn 1 answers.
Both models are local `FunctionModel`s: no time goes to a provider, nothing leaves the server process.
Server target list: `TETHER_API_AGENTS=api_agent:lookup,api_agent:desk` (with `bench/` importable).
"""

from __future__ import annotations

import json

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, ToolCall, tool

FINAL = "Done."


@tool(side_effect="none")
def order_status(order_id: str) -> str:
    """Look an order up."""
    return f"order {order_id}: shipped"


@tool(side_effect="write", idempotent=True, approval=lambda a: a["amount_usd"] > 100)
def refund(order_id: str, amount_usd: float) -> str:
    """Refund an order (over 100 USD needs a person's approval)."""
    return f"refunded {amount_usd} on {order_id}"


def _call(name: str, arguments: dict[str, object]) -> ModelResponse:
    return ModelResponse(tool_calls=(ToolCall("call_0", name, arguments, json.dumps(arguments)),))


def _lookup(request: ModelRequest) -> ModelResponse:
    if request.turn == 0:
        return _call("order_status", {"order_id": "A-1"})
    return ModelResponse(content=FINAL)


def _desk(request: ModelRequest) -> ModelResponse:
    if request.turn == 0:
        return _call("refund", {"order_id": "A-1", "amount_usd": 150.0})
    return ModelResponse(content=FINAL)


lookup = Agent("api-bench-lookup", model=FunctionModel(_lookup, name="lookup"), tools=[order_status])
desk = Agent("api-bench-desk", model=FunctionModel(_desk, name="desk"), tools=[refund])
