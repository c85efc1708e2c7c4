"""Two fake OpenAI-compatible providers for the demo: a flaky primary and a healthy backup."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tether.demo.desk import support_brain
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import JsonDict, Message, ModelRequest

# The primary's bad day: a few scattered 500s, one 429 asking to wait, then an outage of six
# requests in a row: enough for retries to fail and the primary's breaker to open. Every other
# answer takes 30 ms, like a fast model, so the breaker's half-open probe comes back during the demo.
PRIMARY_FAULTS = (
    Fault("http_500", rate=0.04, seed=11),
    Fault("http_429", requests={6}, retry_after_s=0.2),
    Fault("http_503", start=20, burst=6, retry_after_s=None),
    Fault("slow", every=1, delay_s=0.03),
)
BACKUP_FAULTS = (Fault("slow", every=1, delay_s=0.03),)


def wire_responder(body: JsonDict) -> dict[str, Any]:
    """The support brain behind the OpenAI wire format: JSON messages in, a scripted turn out."""
    names: dict[str, str] = {}
    messages: list[Message] = []
    for raw in body.get("messages", []):
        role = raw.get("role")
        content = raw.get("content") or ""
        if role == "assistant":
            for call in raw.get("tool_calls") or []:
                names[call["id"]] = call["function"]["name"]
            messages.append(Message(role="assistant", content=content))
        elif role == "tool":
            call_id = raw.get("tool_call_id")
            messages.append(
                Message(role="tool", content=content, tool_call_id=call_id, name=names.get(call_id))
            )
        elif role in ("system", "user"):
            messages.append(Message(role=role, content=content))
    turn = sum(1 for m in messages if m.role == "assistant")
    response = support_brain(ModelRequest(messages=tuple(messages), turn=turn))
    if response.tool_calls:
        return {"tool_calls": [{"name": c.name, "arguments": c.arguments or {}} for c in response.tool_calls]}
    return {"content": response.content}


@dataclass
class Providers:
    primary: FakeLLMServer
    backup: FakeLLMServer


@contextlib.contextmanager
def fake_providers() -> Iterator[Providers]:
    """Serve both providers on 127.0.0.1 from background threads for the duration of the block."""
    primary = FakeLLMServer(responder=wire_responder, faults=PRIMARY_FAULTS, model_name="desk-primary")
    backup = FakeLLMServer(responder=wire_responder, faults=BACKUP_FAULTS, model_name="desk-backup")
    with primary.run_in_thread(), backup.run_in_thread():
        yield Providers(primary, backup)
