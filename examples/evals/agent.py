"""A small support agent to evaluate offline (`docs/evals.md`): order lookups and refunds, decided by a
local function model, so every run is free and the same on every machine.

Three versions of one agent, as a team would compare them:
    support          the current version
    support_strict   asks a person before any refund above $50 (escalates more)
    support_pricey   the same behaviour on a model that costs twice as much per turn
"""

from __future__ import annotations

import json
import re

from tether import Agent, tool
from tether.models import FunctionModel
from tether.models.base import estimate_tokens
from tether.tools import Tool
from tether.types import ModelRequest, ModelResponse, ToolCall, Usage

ORDERS: dict[str, dict[str, object]] = {
    "A-1001": {"item": "kettle", "total_usd": 40.0, "days_since_delivery": 3},
    "A-1002": {"item": "desk lamp", "total_usd": 90.0, "days_since_delivery": 12},
    "A-1003": {"item": "monitor", "total_usd": 240.0, "days_since_delivery": 5},
    "A-1004": {"item": "backpack", "total_usd": 60.0, "days_since_delivery": 41},
}
REFUND_WINDOW_DAYS = 30
ORDER_ID = re.compile(r"\bA-\d{4}\b")


@tool(side_effect="read")
def lookup_order(order_id: str) -> dict[str, object]:
    """Look up an order by its id (like A-1001)."""
    order = ORDERS.get(order_id)
    return {"found": False, "order_id": order_id} if order is None else {"found": True, **order}


def refund_tool(approval_above_usd: float) -> Tool:
    """`issue_refund`, asking a person first when the amount is above `approval_above_usd`."""

    @tool(side_effect="write", idempotent=True, approval=lambda args: args["amount_usd"] > approval_above_usd)
    def issue_refund(order_id: str, amount_usd: float) -> dict[str, object]:
        """Refund an order to the original payment method."""
        return {"order_id": order_id, "refunded_usd": amount_usd}

    return issue_refund


def support_model(cost_per_turn_usd: float) -> FunctionModel:
    """A model that reads the conversation and picks the next step, as a ReAct LLM would."""

    def decide(request: ModelRequest) -> ModelResponse:
        user = next(m.content for m in request.messages if m.role == "user")
        results: dict[str, dict[str, object]] = {}
        for message in request.messages:
            if message.role == "tool" and message.name:
                try:
                    results[message.name] = json.loads(message.content)
                except json.JSONDecodeError:
                    results[message.name] = {"error": message.content}

        def reply(content: str, *calls: ToolCall) -> ModelResponse:
            prompt = sum(estimate_tokens(m.content) for m in request.messages)
            usage = Usage(prompt, estimate_tokens(content), cost_per_turn_usd)
            return ModelResponse(content, calls, usage, "support-model", "tool_calls" if calls else "stop")

        def call(name: str, **arguments: object) -> ModelResponse:
            return reply("", ToolCall(f"call_{request.turn}_0", name, dict(arguments), json.dumps(arguments)))

        match = ORDER_ID.search(user)
        if match is None:
            return reply("Could you give me your order number? It looks like A-1234.")
        order_id = match.group(0)
        order = results.get("lookup_order")
        if order is None:
            return call("lookup_order", order_id=order_id)
        if not order.get("found"):
            return reply(f"I could not find order {order_id}. Please check the number.")
        days = order["days_since_delivery"]
        assert isinstance(days, int)
        if "refund" not in user.lower():
            return reply(f"Order {order_id} ({order['item']}) was delivered {days} days ago.")
        if days > REFUND_WINDOW_DAYS:
            return reply(f"Sorry, order {order_id} cannot be refunded: it was delivered {days} days ago.")
        refund = results.get("issue_refund")
        if refund is None:
            return call("issue_refund", order_id=order_id, amount_usd=order["total_usd"])
        if "error" in refund:
            return reply(f"I could not refund order {order_id}; a colleague will follow up.")
        return reply(f"Done: ${refund['refunded_usd']:.2f} refunded for order {order_id}.")

    return FunctionModel(decide, name="support-model")


def build(*, version: str, approval_above_usd: float, cost_per_turn_usd: float) -> Agent:
    return Agent(
        name="eval-support",
        version=version,
        instructions="Look up the order, refund it when it is within 30 days, answer briefly.",
        model=support_model(cost_per_turn_usd),
        tools=[lookup_order, refund_tool(approval_above_usd)],
        max_steps=6,
    )


support = build(version="1", approval_above_usd=150.0, cost_per_turn_usd=0.001)
support_strict = build(version="2-strict", approval_above_usd=50.0, cost_per_turn_usd=0.001)
support_pricey = build(version="2-pricey", approval_above_usd=150.0, cost_per_turn_usd=0.002)
