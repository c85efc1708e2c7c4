"""The demo support desk: orders in SQLite, lookup/policy/refund tools and a scripted support model."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from tether.agent import Agent
from tether.models.base import Model, estimate_tokens
from tether.models.scripted import FunctionModel
from tether.policy.gates import ConfidenceGate
from tether.resilience.retry import RetryPolicy
from tether.tools import Tool, ToolContext, tool
from tether.types import ModelRequest, ModelResponse, ToolCall, Usage

ORDER_ID = re.compile(r"\bA-\d{4}\b")
FAQ_ANSWER = "Refunds are possible within 30 days of delivery, to the original payment method."
POLICY_FAILURE_RATE = 0.25  # the policy service is flaky: about one call in four fails


@dataclass(frozen=True)
class DemoOrder:
    order_id: str
    customer: str
    item: str
    total_usd: float
    days_since_delivery: int


def seed_orders(path: Path, count: int = 60) -> None:
    """Create the demo's order database (idempotent: re-seeding keeps existing refunds)."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, customer TEXT, item TEXT, "
            "total_usd REAL, days_since_delivery INTEGER)"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS refunds (idempotency_key TEXT PRIMARY KEY, order_id TEXT, "
            "amount_usd REAL, created_at TEXT DEFAULT CURRENT_TIMESTAMP)"
        )
        items = ["headphones", "kettle", "desk lamp", "backpack", "monitor", "keyboard"]
        for n in range(count):
            db.execute(
                "INSERT OR IGNORE INTO orders VALUES (?, ?, ?, ?, ?)",
                (
                    f"A-{1000 + n}",
                    f"cust-{n % 17}",
                    items[n % len(items)],
                    20.0 + (n * 7) % 180,
                    (n * 11) % 45,
                ),
            )


def build_support_agent(orders_db: Path, model: str | Model | None = None) -> Agent:
    """The support agent, bound to one order database; by default its model is the local function."""

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(orders_db, timeout=10)

    @tool(side_effect="read", timeout_s=2.0, cache_ttl_s=60.0)
    def lookup_order(order_id: str) -> dict[str, object]:
        """Look up an order by its id (like A-1001)."""
        with connect() as db:
            row = db.execute(
                "SELECT order_id, customer, item, total_usd, days_since_delivery FROM orders "
                "WHERE order_id = ?",
                (order_id,),
            ).fetchone()
        if row is None:
            return {"found": False, "order_id": order_id}
        keys = ("order_id", "customer", "item", "total_usd", "days_since_delivery")
        return {"found": True, **dict(zip(keys, row, strict=True))}

    @tool(side_effect="read", timeout_s=2.0, retry=RetryPolicy(max_attempts=2, initial_backoff_s=0.01))
    def check_refund_policy(order_id: str, ctx: ToolContext) -> dict[str, object]:
        """Say whether an order can be refunded (30-day window) and for how much."""
        # Deterministic flakiness: the same call id fails the same way on every replay of the demo.
        digest = hashlib.sha256(f"{ctx.run_id}:{ctx.call_id}:{ctx.attempt}".encode()).digest()
        if digest[0] < 256 * POLICY_FAILURE_RATE:
            raise ConnectionError("policy service unavailable (connection reset)")
        with connect() as db:
            row = db.execute(
                "SELECT total_usd, days_since_delivery FROM orders WHERE order_id = ?", (order_id,)
            ).fetchone()
        if row is None:
            return {"eligible": False, "reason": "unknown order"}
        total, days = row
        if days > 30:
            return {"eligible": False, "reason": f"delivered {days} days ago; the window is 30 days"}
        return {"eligible": True, "max_refund_usd": total}

    # Refunds above $120 wait for a person in the inbox (`tether inbox list`).
    @tool(side_effect="write", idempotent=True, timeout_s=2.0, approval=lambda a: a["amount_usd"] > 120)
    def issue_refund(order_id: str, amount_usd: float, ctx: ToolContext) -> dict[str, object]:
        """Refund an order. Uses the idempotency key, so a retried call never pays twice."""
        with connect() as db:
            inserted = db.execute(
                "INSERT OR IGNORE INTO refunds (idempotency_key, order_id, amount_usd) VALUES (?, ?, ?)",
                (ctx.idempotency_key, order_id, amount_usd),
            ).rowcount
        return {"refunded_usd": amount_usd, "order_id": order_id, "duplicate_suppressed": inserted == 0}

    tools: list[Tool] = [lookup_order, check_refund_policy, issue_refund]
    return Agent(
        name="support-desk",
        version="1",
        instructions="You are a support agent. Look up the order, check the refund policy, refund "
        "when eligible, and answer the customer briefly.",
        model=model or FunctionModel(support_brain, name="scripted:support-desk"),
        tools=tools,
        max_steps=8,
        max_output_tokens=200,  # its answers are a few sentences; budgets reserve this much per call
        # The confidence gate: "let me talk to a human" goes to a person at once; an answer the
        # verifier doubts (an order it could not find) is confirmed with the user first.
        gate=ConfidenceGate(),
        verifier=demo_verifier,
    )


def demo_verifier(request: ModelRequest, response: ModelResponse) -> float:
    """The demo's confidence hook: sure of tool calls and answers about found orders, less so when an
    order could not be found (the customer may have mistyped it)."""
    if not response.tool_calls and "could not find" in response.content.lower():
        return 0.7
    return 0.95


def support_brain(request: ModelRequest) -> ModelResponse:
    """A scripted support model: it reads the conversation and decides the next step, like a ReAct LLM."""
    user = next(m.content for m in request.messages if m.role == "user")
    match = ORDER_ID.search(user)
    wants_refund = "refund" in user.lower()
    results: dict[str, dict[str, object]] = {}
    last_error: str | None = None
    for message in request.messages:
        if message.role == "tool" and message.name:
            try:
                results[message.name] = json.loads(message.content)
                last_error = None
            except json.JSONDecodeError:
                last_error = message.name
    turn = request.turn

    def call(name: str, **arguments: object) -> ModelResponse:
        raw = json.dumps(arguments)
        return _response(request, "", (ToolCall(f"call_{turn}_0", name, dict(arguments), raw),))

    if match is None:
        if "polic" in user.lower() or "return" in user.lower():
            return _response(request, FAQ_ANSWER)
        return _response(request, "Could you give me your order number? It looks like A-1234.")
    order_id = match.group(0)
    order = results.get("lookup_order")
    if order is None:
        return call("lookup_order", order_id=order_id)
    if not order.get("found"):
        return _response(request, f"I could not find order {order_id}. Please check the number.")
    if not wants_refund:
        return _response(
            request,
            f"Order {order_id} ({order['item']}) was delivered {order['days_since_delivery']} days ago.",
        )
    policy = results.get("check_refund_policy")
    if policy is None or last_error == "check_refund_policy":
        return call("check_refund_policy", order_id=order_id)  # first try, or retry after a failure
    if not policy.get("eligible"):
        return _response(request, f"Sorry, order {order_id} cannot be refunded: {policy['reason']}.")
    refund = results.get("issue_refund")
    if refund is None:
        return call("issue_refund", order_id=order_id, amount_usd=policy["max_refund_usd"])
    return _response(request, f"Done: ${refund['refunded_usd']:.2f} refunded for order {order_id}.")


def _response(request: ModelRequest, content: str, calls: tuple[ToolCall, ...] = ()) -> ModelResponse:
    prompt = sum(estimate_tokens(m.content) for m in request.messages) + 120  # + instructions, tools
    answer = estimate_tokens(content + "".join(c.raw_arguments for c in calls))
    return ModelResponse(
        content=content,
        tool_calls=calls,
        usage=Usage(prompt, answer, 0.0),
        model="scripted:support-desk",
        finish_reason="tool_calls" if calls else "stop",
    )


def demo_inputs(count: int) -> list[str]:
    """A deterministic mix of refund requests, status questions, bad order numbers and FAQs."""
    inputs = []
    for n in range(count):
        order = f"A-{1000 + (n * 13) % 60}" if n % 9 != 8 else f"A-{9000 + n}"
        if n % 3 == 2 and n % 9 != 8:  # a customer who just asked for a refund asks about that order again
            order = f"A-{1000 + ((n - 1) * 13) % 60}"
        if n % 10 == 7:
            inputs.append("This is getting nowhere, let me talk to a human please.")  # the gate transfers
        elif n % 5 == 4:
            inputs.append("What is your refund policy?")  # asked again and again: the cache answers
        elif n % 3 == 2:
            inputs.append(f"Where is my order {order}?")
        else:
            inputs.append(f"Hi, I'd like a refund for order {order}, it arrived broken.")
    return inputs


def count_refunds(orders_db: Path, run_ids: list[str]) -> tuple[int, int]:
    """(refunds recorded for these runs, runs refunded more than once) — the second must be 0."""
    with sqlite3.connect(orders_db) as db:
        rows = db.execute("SELECT idempotency_key FROM refunds").fetchall()
    wanted = set(run_ids)
    per_run: dict[str, int] = {}
    for (key,) in rows:
        run_id = key.split(":", 1)[0]
        if run_id in wanted:
            per_run[run_id] = per_run.get(run_id, 0) + 1
    return sum(per_run.values()), sum(1 for n in per_run.values() if n > 1)
