"""Agents the CLI tests name as module:attribute targets."""

from __future__ import annotations

from tether import Agent, tool


@tool(side_effect="read")
def lookup_order(order_id: str) -> dict[str, object]:
    """Look up an order."""
    return {"order_id": order_id, "status": "shipped"}


support = Agent("cli-support", instructions="Help the customer.", tools=[lookup_order])
not_an_agent = 42
