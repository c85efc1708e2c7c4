"""The exception tree and the classification that decides retries and escalation."""

from __future__ import annotations

import inspect
import re

import pytest

from tether import errors
from tether.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContentFilterError,
    ContextTooLongError,
    ErrorClass,
    IdempotencyConflictError,
    LeaseLostError,
    ModelError,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
    RunNotFoundError,
    ScriptExhaustedError,
    StoreError,
    TetherError,
    ToolArgumentsError,
    ToolError,
    ToolExecutionError,
    ToolNotFoundError,
    ToolTimeoutError,
    classify,
    classify_status,
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ConfigurationError("bad"), ErrorClass.FATAL),
        (ModelError("x"), ErrorClass.FATAL),
        (ModelRetryableError("x", status_code=503), ErrorClass.RETRYABLE),
        (RateLimitedError("x", retry_after_s=2.0), ErrorClass.RATE_LIMITED),
        (ModelTimeoutError("x"), ErrorClass.TIMEOUT),
        (BadRequestError("x", status_code=400), ErrorClass.BAD_REQUEST),
        (ContextTooLongError("x"), ErrorClass.CONTEXT_TOO_LONG),
        (ContentFilterError("x"), ErrorClass.CONTENT_FILTER),
        (AuthenticationError("x", status_code=401), ErrorClass.FATAL),
        (ScriptExhaustedError("x"), ErrorClass.FATAL),
        (ToolError("x", tool_name="t"), ErrorClass.BAD_REQUEST),
        (ToolNotFoundError("x", tool_name="t"), ErrorClass.BAD_REQUEST),
        (ToolArgumentsError("x", tool_name="t"), ErrorClass.BAD_REQUEST),
        (ToolTimeoutError("x", tool_name="t"), ErrorClass.TIMEOUT),
        (ToolExecutionError("x", tool_name="t"), ErrorClass.RETRYABLE),
        (StoreError("x"), ErrorClass.FATAL),
        (RunNotFoundError("x"), ErrorClass.FATAL),
        (LeaseLostError("x"), ErrorClass.FATAL),
        (IdempotencyConflictError("x"), ErrorClass.BAD_REQUEST),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classify_tether_errors(error: TetherError, expected: ErrorClass) -> None:
    """Each tether error class maps to the action its place in the tree promises."""
    assert classify(error) is expected


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError("slow"), ErrorClass.TIMEOUT),
        (ConnectionError("reset"), ErrorClass.RETRYABLE),
        (ConnectionResetError("reset by peer"), ErrorClass.RETRYABLE),
        (ConnectionRefusedError("refused"), ErrorClass.RETRYABLE),
        (ValueError("bug"), ErrorClass.FATAL),
        (KeyError("bug"), ErrorClass.FATAL),
        (RuntimeError("bug"), ErrorClass.FATAL),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_classify_foreign_errors(error: BaseException, expected: ErrorClass) -> None:
    """Timeouts are unknown outcomes, connection errors are retryable, anything unknown is fatal."""
    assert classify(error) is expected


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (500, ErrorClass.RETRYABLE),
        (502, ErrorClass.RETRYABLE),
        (503, ErrorClass.RETRYABLE),
        (529, ErrorClass.RETRYABLE),
        (429, ErrorClass.RATE_LIMITED),
        (400, ErrorClass.BAD_REQUEST),
        (401, ErrorClass.FATAL),
        (403, ErrorClass.FATAL),
        (404, ErrorClass.BAD_REQUEST),
        (408, ErrorClass.TIMEOUT),
        (413, ErrorClass.CONTEXT_TOO_LONG),
        (422, ErrorClass.BAD_REQUEST),
        (418, ErrorClass.BAD_REQUEST),
    ],
)
def test_classify_status(status: int, expected: ErrorClass) -> None:
    """HTTP statuses: 5xx retry, 429 wait, 401/403 fatal, 413 too long, other 4xx fix the request."""
    assert classify_status(status) is expected


def test_model_error_carries_status_code() -> None:
    """A ModelError keeps the HTTP status it came from; a rate limit defaults to 429 with Retry-After."""
    assert ModelRetryableError("boom", status_code=503).status_code == 503
    assert ModelError("no status").status_code is None
    limited = RateLimitedError("slow down", retry_after_s=1.5)
    assert limited.status_code == 429
    assert limited.retry_after_s == 1.5


def test_tool_error_names_the_tool_and_tells_the_model() -> None:
    """A ToolError records the tool's name and its message is what the model is told."""
    error = ToolArgumentsError("fix field x", tool_name="lookup")
    assert error.tool_name == "lookup"
    assert error.message_for_model == "fix field x"


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (ConfigurationError, TetherError),
        (ModelError, TetherError),
        (ContextTooLongError, BadRequestError),
        (ContentFilterError, BadRequestError),
        (BadRequestError, ModelError),
        (ScriptExhaustedError, ModelError),
        (ToolTimeoutError, ToolError),
        (ToolError, TetherError),
        (LeaseLostError, StoreError),
        (IdempotencyConflictError, StoreError),
        (RunNotFoundError, StoreError),
    ],
)
def test_tree_shape(child: type[Exception], parent: type[Exception]) -> None:
    """The classes nest as the tree in the module docstring draws them."""
    assert issubclass(child, parent)


def test_docstring_tree_names_every_error_class() -> None:
    """The tree drawn in the module docstring lists exactly the exception classes the module defines."""
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, TetherError) and value.__module__ == errors.__name__
    }
    drawn = set(re.findall(r"\b([A-Z][A-Za-z]+Error)\b", errors.__doc__ or ""))
    assert drawn == defined
