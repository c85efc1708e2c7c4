"""The exception tree of tether and the classification that drives retries and escalation.

    TetherError
    ├── ConfigurationError          invalid settings, model spec, agent target (exit code 2)
    ├── InvalidAnswerError          a person's answer does not fit the question
    ├── ModelError                  a model call failed; `error_class` says what to do next
    │   ├── ModelRetryableError         5xx, connection reset, malformed body  -> retry
    │   ├── RateLimitedError            429; carries `retry_after_s`          -> wait, retry
    │   ├── ModelTimeoutError           no answer in time; outcome unknown    -> retry
    │   ├── BadRequestError             4xx other than 429                    -> fix, never retry
    │   │   ├── ContextTooLongError         the prompt exceeds the window     -> longer model / summarise
    │   │   └── ContentFilterError          the provider refused the content  -> person
    │   ├── AuthenticationError         401/403: a key is missing or wrong    -> fatal
    │   ├── ScriptExhaustedError        a scripted model ran out of turns     -> fatal
    │   └── AllModelsFailedError        every model of a route failed         -> cache / person
    ├── UnavailableError            refused locally, fast, before any call    -> another path or later
    │   ├── CircuitOpenError            the breaker of a model or tool is open
    │   ├── RateLimitExceededError      a token bucket is empty beyond the allowed wait
    │   └── BulkheadFullError           a concurrency pool is full beyond the allowed wait
    ├── BudgetExceededError         a call would pass a budget; nothing ran   -> stop, escalate
    ├── ToolError                   a tool call could not produce a result
    │   ├── ToolNotFoundError           the model named a tool the agent lacks
    │   ├── ToolArgumentsError          the arguments do not match the schema
    │   ├── ToolTimeoutError            the tool did not finish in time; outcome unknown
    │   └── ToolExecutionError          the tool raised
    └── StoreError                  the durable store refused an operation
        ├── RunNotFoundError
        ├── EscalationNotFoundError
        ├── LeaseLostError              another worker owns the run now (fencing)
        └── IdempotencyConflictError    same idempotency key, different request

Tool errors never end a run: the loop turns them into an actionable message for the model and an
event. Model errors are classified by `classify()` so that exactly one layer decides to retry.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorClass(enum.StrEnum):
    """What the caller should do about an error."""

    RETRYABLE = "retryable"  # transient: try again with backoff
    RATE_LIMITED = "rate_limited"  # try again after the provider's Retry-After
    TIMEOUT = "timeout"  # no answer in time: the outcome is unknown
    BAD_REQUEST = "bad_request"  # our request is wrong: fix it, retrying cannot help
    CONTEXT_TOO_LONG = "context_too_long"  # use a longer-context model or summarise
    CONTENT_FILTER = "content_filter"  # the provider refused: a person decides
    UNAVAILABLE = "unavailable"  # refused locally (breaker open, limit, pool full): another path
    FATAL = "fatal"  # configuration or programming error: stop


class TetherError(Exception):
    """Base of every error tether raises on purpose.

    `events` carries what happened before the error (retries, fallbacks, breaker transitions) as
    (kind, data) pairs, so the run's event log can record them.
    """

    error_class: ErrorClass = ErrorClass.FATAL
    events: tuple[tuple[str, dict[str, Any]], ...] = ()


class ConfigurationError(TetherError):
    """Settings, a model spec or an agent target are invalid; the message names the bad value."""


class InvalidAnswerError(TetherError):
    """An answer to an escalation names an option it does not offer, or lacks required text."""

    error_class = ErrorClass.BAD_REQUEST


class ModelError(TetherError):
    """A model call failed. `status_code` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ModelRetryableError(ModelError):
    error_class = ErrorClass.RETRYABLE


class RateLimitedError(ModelError):
    error_class = ErrorClass.RATE_LIMITED

    def __init__(
        self, message: str, *, status_code: int | None = 429, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after_s = retry_after_s


class ModelTimeoutError(ModelError):
    error_class = ErrorClass.TIMEOUT


class BadRequestError(ModelError):
    error_class = ErrorClass.BAD_REQUEST


class ContextTooLongError(BadRequestError):
    error_class = ErrorClass.CONTEXT_TOO_LONG


class ContentFilterError(BadRequestError):
    error_class = ErrorClass.CONTENT_FILTER


class AuthenticationError(ModelError):
    error_class = ErrorClass.FATAL


class ScriptExhaustedError(ModelError):
    error_class = ErrorClass.FATAL


class AllModelsFailedError(ModelError):
    """Every model of a route failed; `errors` holds (model name, error) in the order tried."""

    error_class = ErrorClass.UNAVAILABLE

    def __init__(self, message: str, *, errors: list[tuple[str, BaseException]]) -> None:
        super().__init__(message)
        self.errors = errors


class UnavailableError(TetherError):
    """Refused locally and at once, before any call was made; `retry_in_s` says when to try again."""

    error_class = ErrorClass.UNAVAILABLE

    def __init__(self, message: str, *, name: str, retry_in_s: float | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.retry_in_s = retry_in_s


class CircuitOpenError(UnavailableError):
    pass


class RateLimitExceededError(UnavailableError):
    pass


class BulkheadFullError(UnavailableError):
    pass


class BudgetExceededError(TetherError):
    """A call would pass a budget limit (tokens, cost, tool calls, mutations, a custom counter).

    Nothing was reserved and the action must not run. Deliberately not an UnavailableError: those
    tell the model "try later, or without this tool", while a budget breach stops the action and goes
    to a person (UNAVAILABLE is one of the classes the run loop escalates on). `scope` is the level
    that refused ("run", "session", "principal-day", "tenant-day", "principal-hour"); `retry_in_s`
    is when that window resets, None for runs and sessions, which never reset.
    """

    error_class = ErrorClass.UNAVAILABLE

    def __init__(
        self,
        message: str,
        *,
        scope: str,
        scope_key: str,
        counter: str,
        limit: float,
        used: float,
        reserved: float,
        requested: float,
        retry_in_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.scope = scope
        self.scope_key = scope_key
        self.counter = counter
        self.limit = limit
        self.used = used
        self.reserved = reserved
        self.requested = requested
        self.retry_in_s = retry_in_s


class ToolError(TetherError):
    """A tool call could not produce a result; `message_for_model` is what the model is told."""

    error_class = ErrorClass.BAD_REQUEST

    def __init__(self, message: str, *, tool_name: str) -> None:
        super().__init__(message)
        self.tool_name = tool_name

    @property
    def message_for_model(self) -> str:
        return str(self)


class ToolNotFoundError(ToolError):
    pass


class ToolArgumentsError(ToolError):
    pass


class ToolTimeoutError(ToolError):
    error_class = ErrorClass.TIMEOUT


class ToolExecutionError(ToolError):
    error_class = ErrorClass.RETRYABLE


class StoreError(TetherError):
    pass


class RunNotFoundError(StoreError):
    pass


class EscalationNotFoundError(StoreError):
    pass


class LeaseLostError(StoreError):
    """This worker no longer holds the run's lease; its writes are rejected."""


class IdempotencyConflictError(StoreError):
    error_class = ErrorClass.BAD_REQUEST


_STATUS_CLASSES: dict[int, ErrorClass] = {
    400: ErrorClass.BAD_REQUEST,
    401: ErrorClass.FATAL,
    403: ErrorClass.FATAL,
    404: ErrorClass.BAD_REQUEST,
    408: ErrorClass.TIMEOUT,
    409: ErrorClass.RETRYABLE,
    413: ErrorClass.CONTEXT_TOO_LONG,
    422: ErrorClass.BAD_REQUEST,
    429: ErrorClass.RATE_LIMITED,
}


def classify(error: BaseException) -> ErrorClass:
    """Say what to do about `error`; anything tether does not know is fatal, never silently retried."""
    if isinstance(error, TetherError):
        return error.error_class
    if isinstance(error, TimeoutError):
        return ErrorClass.TIMEOUT
    if isinstance(error, ConnectionError):
        return ErrorClass.RETRYABLE
    return ErrorClass.FATAL


def classify_status(status_code: int) -> ErrorClass:
    """Classify an HTTP status from a provider: 5xx retry, 429 wait, other 4xx fix."""
    if status_code >= 500:
        return ErrorClass.RETRYABLE
    return _STATUS_CLASSES.get(status_code, ErrorClass.BAD_REQUEST)
