"""tether: a durable, bounded, observed runtime for LLM agents."""

from __future__ import annotations

from tether.agent import Agent
from tether.errors import (
    BadRequestError,
    ConfigurationError,
    ErrorClass,
    IdempotencyConflictError,
    LeaseLostError,
    ModelError,
    RunNotFoundError,
    TetherError,
    ToolError,
    classify,
)
from tether.models import FunctionModel, Model, ScriptedModel, model_from_spec
from tether.runtime import Runtime, Worker
from tether.store import RunStore, SqliteRunStore, store_from_url
from tether.tools import Tool, ToolContext, ask_person, tool
from tether.types import (
    EventKind,
    Message,
    ModelRequest,
    ModelResponse,
    Run,
    RunEvent,
    RunStatus,
    ToolCall,
    Usage,
)

__all__ = [
    "Agent",
    "BadRequestError",
    "ConfigurationError",
    "ErrorClass",
    "EventKind",
    "FunctionModel",
    "IdempotencyConflictError",
    "LeaseLostError",
    "Message",
    "Model",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "Run",
    "RunEvent",
    "RunNotFoundError",
    "RunStatus",
    "RunStore",
    "Runtime",
    "ScriptedModel",
    "SqliteRunStore",
    "TetherError",
    "Tool",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "Usage",
    "Worker",
    "ask_person",
    "classify",
    "model_from_spec",
    "store_from_url",
    "tool",
]
