"""The OpenAI-compatible endpoint (`/v1/chat/completions`, `/v1/models`) over any ChatBackend.

Requests are untrusted: fields validated, body size bounded, errors OpenAI-shaped, never a stack trace.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, Self

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from tether.errors import (
    AllModelsFailedError,
    BadRequestError,
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    ErrorClass,
    RateLimitExceededError,
    TetherError,
    classify,
)
from tether.models.base import Model
from tether.types import JsonDict, Message, ModelRequest, ModelResponse, ToolCall, ToolDefinition

if TYPE_CHECKING:
    from tether.observe.metrics import RunMetrics

MAX_BODY_BYTES = 8 * 1024 * 1024
TENANT_HEADER = "X-Tether-Tenant"
TAGS_HEADER = "X-Tether-Tags"
COST_HEADER = "X-Tether-Cost-USD"
EVENTS_HEADER = "X-Tether-Events"

_MAX_TENANT_CHARS = 128
_MAX_TAGS = 32
_MAX_TAG_CHARS = 64
_MAX_EVENTS_IN_HEADER = 16
_MAX_MESSAGE_CHARS = 1000
_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
# Upstream base URLs are the operator's business: the log gets them, the caller this instead.
_URL = re.compile(r"https?://[^\s'\"<>]+")
_ERROR_TYPES = {429: "rate_limit_error"}
# Pydantic names the branch of a union in an error's location; the caller only needs the field.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict"})

_log = logging.getLogger(__name__)


class ChatBackend(Protocol):
    """Named routes answering chat turns; `complete` raises tether errors, which may carry `events`."""

    def routes(self) -> list[str]:
        """The route names served as OpenAI "models", e.g. `support-default`, `cheap`."""

    async def complete(self, route: str, request: ModelRequest, /) -> ModelResponse:
        """Answer one turn on `route`."""


class ModelBackend:
    """Serves plain tether models as routes, one model each: no fallbacks, breakers, cache or cost."""

    def __init__(self, models: Mapping[str, Model]) -> None:
        if not models:
            raise ConfigurationError("ModelBackend needs at least one route, e.g. {'default': model}")
        if bad := [route for route in models if not route or route.strip() != route]:
            raise ConfigurationError(f"route names {bad!r} must be non-empty, without surrounding spaces")
        self._models = dict(models)

    def routes(self) -> list[str]:
        return list(self._models)

    async def complete(self, route: str, request: ModelRequest) -> ModelResponse:
        model = self._models.get(route)
        if model is None:
            message = f"no route {route!r}; routes are {', '.join(self._models)}"
            raise BadRequestError(message, status_code=404)
        return await model.request(request)

    async def aclose(self) -> None:
        """Close every model, even when one of them fails to close."""
        results = await asyncio.gather(*(m.aclose() for m in self._models.values()), return_exceptions=True)
        if failures := [result for result in results if isinstance(result, BaseException)]:
            raise failures[0]


def create_openai_app(
    backend: ChatBackend,
    *,
    api_keys: Collection[str] | None = None,
    api_key_sha256: Collection[str] | None = None,
    metrics: RunMetrics | None = None,
) -> FastAPI:
    """The endpoint as an ASGI app. With `api_keys` (or only their SHA-256 hex digests, as the HTTP API's
    keys keep them), every request needs `Authorization: Bearer <key>`. With `metrics`, its calls are
    counted there and `GET /metrics` serves them (behind the keys too).

    The caller owns `backend` and closes it once the server has stopped.
    """
    if api_keys is not None and (not api_keys or not all(isinstance(k, str) and k for k in api_keys)):
        raise ConfigurationError("api_keys must hold non-empty strings; pass None to serve without keys")
    if metrics is not None:
        backend = metrics.metered(backend)
    app = FastAPI(title="tether gateway", docs_url=None, redoc_url=None)
    # Starlette runs the middleware added last first: keys are checked before any body is read.
    app.add_middleware(_LimitBodySize, max_bytes=MAX_BODY_BYTES)
    digests = [hashlib.sha256(key.encode()).digest() for key in api_keys or ()]
    digests += [bytes.fromhex(digest) for digest in api_key_sha256 or ()]
    if api_keys is not None or api_key_sha256 is not None:
        if not digests:
            raise ConfigurationError("no API key may call the endpoint: give at least one")
        app.add_middleware(_RequireApiKey, digests=digests)
    app.add_exception_handler(_ApiError, _api_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_error_handler)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = _parse_body(await request.body())
        _refuse_unsupported(body)
        _require_route(backend, body.model)
        model_request = _model_request(body, request.headers)
        try:
            response = await backend.complete(body.model, model_request)
        except Exception as exc:
            raise _backend_error(body.model, exc) from None
        return JSONResponse(_completion_json(body.model, response), headers=_tether_headers(response))

    @app.get("/v1/models")
    async def list_models() -> JsonDict:
        return {"object": "list", "data": [_model_json(route) for route in backend.routes()]}

    @app.get("/v1/models/{route:path}")
    async def retrieve_model(route: str) -> JsonDict:
        _require_route(backend, route)
        return _model_json(route)

    if metrics is not None:
        scraped = metrics

        @app.get("/metrics", include_in_schema=False)
        async def prometheus_metrics() -> Response:
            return Response(await scraped.render(), media_type=scraped.content_type)

    return app


# The request: OpenAI's wire format, validated.
class _Wire(BaseModel):
    # Clients send fields unused here (parallel_tool_calls, seed, ...); refusing them breaks clients.
    model_config = ConfigDict(extra="ignore")


class _FunctionCallIn(_Wire):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = ""  # some compatible clients send an object, not a JSON string


class _ToolCallIn(_Wire):
    id: str = Field(min_length=1)
    type: Literal["function"] = "function"
    function: _FunctionCallIn

    def to_tool_call(self) -> ToolCall:
        raw = self.function.arguments
        if isinstance(raw, dict):
            return ToolCall(self.id, self.function.name, raw, json.dumps(raw))
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = None
        # None when not an object, as the providers do: the model then sees its own slip verbatim.
        return ToolCall(self.id, self.function.name, parsed if isinstance(parsed, dict) else None, raw)


class _MessageIn(_Wire):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | None = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        texts: list[Any] = [p.get("text") for p in value if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(value) or not all(isinstance(text, str) for text in texts):
            raise PydanticCustomError("content_part", "only text content parts are supported here")
        return "\n".join(texts)

    @model_validator(mode="after")
    def _fields_of_role(self) -> Self:
        if self.role == "tool" and not self.tool_call_id:
            raise PydanticCustomError("tool_call_id", "a 'tool' message needs a 'tool_call_id'")
        if self.tool_calls and self.role != "assistant":
            raise PydanticCustomError("tool_calls", "only 'assistant' messages may carry 'tool_calls'")
        if self.content is None and self.role != "assistant":
            raise PydanticCustomError("content", "a {role!r} message needs 'content'", {"role": self.role})
        return self

    def to_message(self) -> Message:
        return Message(
            role="system" if self.role == "developer" else self.role,  # OpenAI's newer name for it
            content=self.content or "",
            tool_calls=tuple(call.to_tool_call() for call in self.tool_calls or ()),
            tool_call_id=self.tool_call_id if self.role == "tool" else None,
            name=self.name,
        )


class _FunctionIn(_Wire):
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None


class _ToolIn(_Wire):
    type: Literal["function"]
    function: _FunctionIn

    def to_definition(self) -> ToolDefinition:
        parameters = self.function.parameters or {"type": "object", "properties": {}}
        return ToolDefinition(self.function.name, self.function.description or "", parameters)


class _ChatCompletionIn(_Wire):
    model: str = Field(min_length=1, max_length=256)
    messages: list[_MessageIn] = Field(min_length=1)
    tools: list[_ToolIn] | None = None
    tool_choice: Any = None
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    user: str | None = Field(default=None, max_length=256)
    # Read only to refuse what cannot be honoured; see _refuse_unsupported.
    stream: bool | None = None
    n: int | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = None


def _parse_body(raw: bytes) -> _ChatCompletionIn:
    try:
        return _ChatCompletionIn.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        if first["type"] == "json_invalid":
            raise _ApiError(400, f"the request body is not valid JSON: {first['msg']}") from None
        param = _field_path(first["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        message = f"invalid request: {param or 'body'}: {first['msg']}{more}"
        raise _ApiError(400, message, param=param or None) from None


def _field_path(loc: tuple[int | str, ...]) -> str:
    fields = [p for p in loc if isinstance(p, int) or (p not in _UNION_TAGS and "[" not in p)]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in fields).lstrip(".")


def _refuse_unsupported(body: _ChatCompletionIn) -> None:
    """Refuse options whose absence a client would not notice: silently ignoring them would lie."""
    forced_tool = body.tool_choice not in (None, "auto", "none")
    json_mode = (body.response_format or {}).get("type", "text") != "text"
    refusals = (
        (body.stream, "stream", "streaming is not supported by the tether gateway yet; send stream=false"),
        (body.n not in (None, 1), "n", f"n={body.n} is not supported; only one choice (n=1) is returned"),
        (forced_tool, "tool_choice", "tool_choice 'required' or a named tool is not supported yet"),
        (json_mode, "response_format", "only response_format {'type': 'text'} is supported yet"),
        (body.logprobs, "logprobs", "logprobs are not supported"),
    )
    for refused, param, message in refusals:
        if refused:
            raise _ApiError(400, message, param=param, code="unsupported_parameter")


def _require_route(backend: ChatBackend, route: str) -> None:
    routes = backend.routes()
    if route not in routes:
        message = (
            f"the model {route!r} does not exist; this gateway serves: {', '.join(routes) or '(nothing)'}"
        )
        raise _ApiError(404, message, param="model", code="model_not_found")


def _model_request(body: _ChatCompletionIn, headers: Headers) -> ModelRequest:
    messages = tuple(m.to_message() for m in body.messages)
    tenant = headers.get(TENANT_HEADER, "").strip()
    tags = tuple(tag.strip() for tag in headers.get(TAGS_HEADER, "").split(",") if tag.strip())
    if len(tenant) > _MAX_TENANT_CHARS:
        raise _ApiError(400, f"{TENANT_HEADER} exceeds {_MAX_TENANT_CHARS} characters", param=TENANT_HEADER)
    if len(tags) > _MAX_TAGS or any(len(tag) > _MAX_TAG_CHARS for tag in tags):
        message = f"{TAGS_HEADER} takes up to {_MAX_TAGS} comma-separated tags of {_MAX_TAG_CHARS} characters"
        raise _ApiError(400, message, param=TAGS_HEADER)
    return ModelRequest(
        messages=messages,
        # tool_choice "none" is honoured by offering no tools; earlier tool calls stay in the history.
        tools=() if body.tool_choice == "none" else tuple(t.to_definition() for t in body.tools or ()),
        # Stateless: the turn is the number of assistant turns so far, as the fake LLM server counts it.
        turn=sum(1 for m in messages if m.role == "assistant"),
        temperature=body.temperature,
        max_output_tokens=body.max_completion_tokens or body.max_tokens,
        principal=body.user or None,
        tenant=tenant or None,
        tags=tags,
    )


# The response.
def _completion_json(route: str, response: ModelResponse) -> JsonDict:
    calls = [{"id": c.id, "type": "function", "function": _function(c)} for c in response.tool_calls]
    message: JsonDict = {"role": "assistant", "content": response.content or (None if calls else "")}
    if calls:
        message["tool_calls"] = calls
    finish_reason = response.finish_reason
    if finish_reason not in _FINISH_REASONS:
        finish_reason = "tool_calls" if calls else "stop"
    prompt, completion = response.usage.input_tokens, response.usage.output_tokens
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": route,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }


def _function(call: ToolCall) -> JsonDict:
    # Unparseable arguments go back verbatim, as the model produced them.
    arguments = call.raw_arguments if call.arguments is None else json.dumps(call.arguments)
    return {"name": call.name, "arguments": arguments}


def _tether_headers(response: ModelResponse) -> dict[str, str]:
    headers = _events_header(response.events)
    if response.usage.cost_usd is not None:
        headers[COST_HEADER] = f"{response.usage.cost_usd:.8f}"
    return headers


def _events_header(events: object) -> dict[str, str]:
    """The kinds of the gateway's events (fallback, cache hit, ...), as a short JSON list."""
    if not isinstance(events, tuple | list) or not events:
        return {}
    # Kinds only: event data can hold upstream URLs and error texts meant for the operator.
    kinds = [str(event[0]) for event in events[:_MAX_EVENTS_IN_HEADER] if isinstance(event, tuple) and event]
    return {EVENTS_HEADER: json.dumps(kinds, separators=(",", ":"))} if kinds else {}


def _model_json(route: str) -> JsonDict:
    return {"id": route, "object": "model", "created": 0, "owned_by": "tether"}


# Errors.
class _ApiError(Exception):
    """An OpenAI-shaped error answer: `{"error": {"message", "type", "code", "param"}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        error_type = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        body = {"error": {"message": message, "type": error_type, "code": code, "param": param}}
        self.response = JSONResponse(body, status_code=status, headers=headers)


# (status, OpenAI error code, param) per error class; RETRYABLE and FATAL are the upstream's fault: 502.
_STATUS_BY_CLASS: dict[ErrorClass, tuple[int, str | None, str | None]] = {
    ErrorClass.RATE_LIMITED: (429, "rate_limit_exceeded", None),
    ErrorClass.UNAVAILABLE: (503, "service_unavailable", None),
    ErrorClass.TIMEOUT: (504, "timeout", None),
    ErrorClass.CONTEXT_TOO_LONG: (400, "context_length_exceeded", "messages"),
    ErrorClass.CONTENT_FILTER: (400, "content_filter", None),
    ErrorClass.BAD_REQUEST: (400, None, None),
}
_UNAVAILABLE_CODES: tuple[tuple[type[Exception], str], ...] = (
    (RateLimitExceededError, "rate_limit_exceeded"),
    (CircuitOpenError, "circuit_open"),
    (BulkheadFullError, "overloaded"),
    (AllModelsFailedError, "all_models_failed"),
)


def _backend_error(route: str, exc: Exception) -> _ApiError:
    """Map a backend failure to a status by its class; the caller's fault is 4xx, the rest is 5xx."""
    error_class = classify(exc)
    if isinstance(exc, TetherError):
        message = _URL.sub("<upstream>", str(exc))[:_MAX_MESSAGE_CHARS]
        _log.warning("route %r failed (%s): %s: %s", route, error_class, type(exc).__name__, exc)
    else:
        message = f"the gateway backend failed unexpectedly ({type(exc).__name__}); its log has the details"
        _log.error("route %r failed unexpectedly", route, exc_info=exc)
    status, code, param = _STATUS_BY_CLASS.get(error_class, (502, "upstream_error", None))
    if status == 503:
        code = next((c for kind, c in _UNAVAILABLE_CODES if isinstance(exc, kind)), code)
        if isinstance(exc, RateLimitExceededError):  # our own limiter: the caller is over its rate
            status = 429
    headers = _events_header(getattr(exc, "events", ()))
    retry_after_s = _retry_after_s(exc)
    if retry_after_s is not None and status in (429, 503):
        headers["Retry-After"] = str(math.ceil(retry_after_s))
        headers["retry-after-ms"] = str(math.ceil(retry_after_s * 1000))
    return _ApiError(status, message, param=param, code=code, headers=headers)


def _retry_after_s(exc: BaseException) -> float | None:
    """When to try again, if the error knows; for a failed chain, the soonest of its models."""
    if isinstance(exc, AllModelsFailedError):
        return min((h for _, e in exc.errors if (h := _retry_after_s(e)) is not None), default=None)
    # RateLimitedError says retry_after_s, UnavailableError retry_in_s.
    hint = getattr(exc, "retry_after_s", getattr(exc, "retry_in_s", None))
    return float(hint) if isinstance(hint, int | float) else None


async def _api_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _ApiError)
    return exc.response


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = f"{request.method} {request.url.path}: {exc.detail}"
    if exc.status_code == 404:
        message += "; this gateway serves POST /v1/chat/completions and GET /v1/models"
    return _ApiError(exc.status_code, message, code=exc.detail.lower().replace(" ", "_")).response


async def _unexpected_error_handler(request: Request, exc: Exception) -> Response:
    _log.error("unexpected error serving %s %s", request.method, request.url.path, exc_info=exc)
    return _ApiError(500, "the gateway failed unexpectedly; its log has the details").response


# Middleware.
class _RequireApiKey:
    """Answers 401 unless the request carries `Authorization: Bearer <one of the keys>`."""

    def __init__(self, app: ASGIApp, *, digests: Collection[bytes]) -> None:
        self.app = app
        # Digests all have one length, so comparing them leaks neither a key's length nor a prefix.
        self._digests = list(digests)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._authorised(Headers(scope=scope).get("authorization", "")):
            await self.app(scope, receive, send)
            return
        message = "missing or invalid API key: send the header 'Authorization: Bearer <key>'"
        error = _ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        await error.response(scope, receive, send)

    def _authorised(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        # Starlette decodes headers as latin-1; encoding back gives the bytes the client sent.
        presented = hashlib.sha256(token.strip().encode("latin-1")).digest()
        matched = False
        for digest in self._digests:  # no early exit: the time taken does not say which key matched
            matched |= hmac.compare_digest(presented, digest)
        return matched


class _LimitBodySize:
    """Answers 413 when a request body exceeds `max_bytes`: declared up front, or counted as it streams."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = _ApiError(413, f"the request body exceeds {self.max_bytes / 2**20:g} MiB; send less")
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await too_large.response(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> AsgiMessage:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise too_large
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _ApiError as error:
            await error.response(scope, receive, send)
