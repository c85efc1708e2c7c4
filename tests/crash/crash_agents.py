"""Agents for the crash tests, imported by real worker subprocesses (`crash_agents:pay_agent`).

The test chooses a crash point with CRASH_AT; the first time a process reaches it, it writes a
marker file and hangs, so the test can SIGKILL it exactly there. Every model call, tool call and
side effect is appended to ledgers in CRASH_DIR so the test can count what was redone.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
from pathlib import Path

from tether import Agent, FunctionModel, ModelRequest, ModelResponse, ToolCall, ToolContext, tool

DIR = Path(os.environ.get("CRASH_DIR", "."))
CRASH_AT = os.environ.get("CRASH_AT", "")
# Seconds each model call and tool call takes, so that random kills land mid-run.
STEP_DELAY_S = float(os.environ.get("CRASH_STEP_DELAY_S", "0"))


def log(name: str, line: str) -> None:
    with open(DIR / name, "a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())


def reached(point: str) -> bool:
    """True (once per test) when this is the chosen crash point: the caller must then hang."""
    marker = DIR / f"reached-{point}"
    if point != CRASH_AT or marker.exists():
        return False
    marker.write_text(str(os.getpid()))
    return True


async def hang_if(point: str) -> None:
    if reached(point):
        await asyncio.sleep(3600)
    elif STEP_DELAY_S:
        await asyncio.sleep(STEP_DELAY_S)


@tool(side_effect="read", timeout_s=60)
async def lookup_order(order_id: str) -> str:
    """Look up an order."""
    log("calls.log", f"lookup_order {order_id}")
    return json.dumps({"order_id": order_id, "total_usd": 30})


@tool(side_effect="write", idempotent=True, timeout_s=60)
async def charge_card(order_id: str, amount_usd: float, ctx: ToolContext) -> str:
    """Charge a card through a payment provider that honours idempotency keys."""
    log("calls.log", f"charge_card {ctx.idempotency_key} attempt={ctx.attempt}")
    await hang_if("charge-before-effect")
    with sqlite3.connect(DIR / "payments.db") as db:
        db.execute("CREATE TABLE IF NOT EXISTS payments (key TEXT PRIMARY KEY, order_id TEXT, amount REAL)")
        db.execute(
            "INSERT OR IGNORE INTO payments VALUES (?, ?, ?)", (ctx.idempotency_key, order_id, amount_usd)
        )
    await hang_if("charge-after-effect")
    return "charged"


@tool(side_effect="write", idempotent=False, timeout_s=60)
async def send_email(to: str, ctx: ToolContext) -> str:
    """Send an email; the mail server has no idempotency keys."""
    log("calls.log", f"send_email {ctx.idempotency_key} attempt={ctx.attempt}")
    log("emails.log", to)
    await hang_if("email-after-effect")
    return "sent"


def _call(turn: int, name: str, **arguments: object) -> ModelResponse:
    call = ToolCall(f"call_{turn}_0", name, dict(arguments), json.dumps(arguments))
    return ModelResponse(tool_calls=(call,), model="crash-brain")


async def pay_brain(request: ModelRequest) -> ModelResponse:
    log("model.log", f"pay turn={request.turn}")
    await hang_if(f"model-turn-{request.turn}")
    if request.turn == 0:
        return _call(0, "lookup_order", order_id="A-1")
    if request.turn == 1:
        return _call(1, "charge_card", order_id="A-1", amount_usd=30.0)
    return ModelResponse(content="charged A-1", model="crash-brain")


async def email_brain(request: ModelRequest) -> ModelResponse:
    log("model.log", f"email turn={request.turn}")
    if request.turn == 0:
        return _call(0, "send_email", to="customer@example.com")
    return ModelResponse(content="email sent", model="crash-brain")


pay_agent = Agent(
    "crash-pay", model=FunctionModel(pay_brain, name="crash-brain"), tools=[lookup_order, charge_card]
)
email_agent = Agent("crash-email", model=FunctionModel(email_brain, name="crash-brain"), tools=[send_email])


@tool(side_effect="read", timeout_s=60)
async def render_invoice(order_id: str) -> str:
    """Render an invoice with a library that takes the whole process down, until POISON_FIXED=1."""
    log("calls.log", f"render_invoice {order_id}")
    if os.environ.get("POISON_FIXED") != "1":
        os.kill(os.getpid(), signal.SIGKILL)  # a segfault or the OOM killer: no exception, no cleanup
    return "invoice A-1: 30 USD"


async def poison_brain(request: ModelRequest) -> ModelResponse:
    log("model.log", f"poison turn={request.turn}")
    if request.turn == 0:
        return _call(0, "lookup_order", order_id="A-1")
    if request.turn == 1:
        return _call(1, "render_invoice", order_id="A-1")
    return ModelResponse(content="invoice sent for A-1", model="crash-brain")


poison_agent = Agent(
    "crash-poison",
    model=FunctionModel(poison_brain, name="crash-brain"),
    tools=[lookup_order, render_invoice],
)
