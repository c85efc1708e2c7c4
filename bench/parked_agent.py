"""The agent `bench/parked.py` parks by the thousand: one tool call that always needs a person's approval.

Turn 0 asks for `refund(order_id, amount_usd)`, whose `approval=True` parks the run (`waiting_human`,
an "approval" question in the inbox); once approved, the tool runs and turn 1 answers `FINAL`.
The model is a local `FunctionModel`, so nothing leaves the process and no time goes to a provider.

When `TETHER_BENCH_TOOL_LOG` names a file, every call of the tool appends its run id there (one short
`O_APPEND` write per call), so the bench can count tool executions independently of the event log.
Worker target: `parked_agent:agent` (with `bench/` on `PYTHONPATH`).
"""

from __future__ import annotations

import json
import os

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, ToolCall, ToolContext, tool

FINAL = "Refund done."
TOOL_LOG_ENV = "TETHER_BENCH_TOOL_LOG"


@tool(side_effect="write", approval=True)
def refund(order_id: str, amount_usd: float, ctx: ToolContext) -> str:
    """Refund an order (always needs a person's approval)."""
    log = os.environ.get(TOOL_LOG_ENV)
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.run_id}\n".encode())
        finally:
            os.close(fd)
    return f"refunded {amount_usd} on {order_id}"


def respond(request: ModelRequest) -> ModelResponse:
    if request.turn == 0:
        arguments = {"order_id": "A-1", "amount_usd": 150.0}
        return ModelResponse(tool_calls=(ToolCall("call_0", "refund", arguments, json.dumps(arguments)),))
    return ModelResponse(content=FINAL)


agent = Agent(
    "parked-bench",
    instructions="Refund the order the customer names.",
    model=FunctionModel(respond, name="parked-bench"),
    tools=[refund],
)
