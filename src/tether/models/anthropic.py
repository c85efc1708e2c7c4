"""AnthropicModel: a lean client of the Anthropic Messages API (`POST /v1/messages`) on httpx."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import httpx

from tether.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContextTooLongError,
    ErrorClass,
    ModelError,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
    classify_status,
)
from tether.models.base import secret_from_env
from tether.types import JsonDict, Message, ModelRequest, ModelResponse, ToolCall, Usage

DEFAULT_BASE_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"
_OFFICIAL_HOST = "api.anthropic.com"

# Anthropic words context overflows several ways ("prompt is too long: 210000 tokens > 200000
# maximum", "input length and `max_tokens` exceed context limit"); all mean the same remedy.
_CONTEXT_MARKERS = ("prompt is too long", "context limit", "context window", "context length")

# Normalised to the vocabulary the rest of tether uses (see ScriptedModel), so the loop need not
# know which provider answered; unknown reasons pass through unchanged.
_FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "tool_use": "tool_calls",
    "max_tokens": "length",
}


class AnthropicModel:
    """Speaks the Anthropic Messages wire format; raises `ModelError` subclasses, never retries."""

    def __init__(
        self,
        model_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_output_tokens: int = 4096,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        base = (base_url or os.environ.get("ANTHROPIC_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        try:
            url = httpx.URL(base)
        except httpx.InvalidURL as exc:
            raise ConfigurationError(f"Anthropic base URL {base!r} is invalid: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigurationError(
                f"Anthropic base URL {base!r} must be an http(s) URL such as {DEFAULT_BASE_URL}"
            )
        key = api_key or secret_from_env("ANTHROPIC_API_KEY") or None
        # Local gateways and proxies often need no key; only the official API certainly does.
        if key is None and url.host == _OFFICIAL_HOST:
            raise ConfigurationError(
                f"model 'anthropic:{model_name}' needs an API key: set ANTHROPIC_API_KEY "
                "(or ANTHROPIC_API_KEY_FILE) "
                "(or point ANTHROPIC_BASE_URL at a gateway that needs none)"
            )
        self._model_name = model_name
        self._endpoint = f"{base}/v1/messages"
        self._timeout_s = timeout_s
        self._max_output_tokens = max_output_tokens
        self._headers = {
            "anthropic-version": ANTHROPIC_VERSION,
            "content-type": "application/json",
        }
        if key is not None:
            self._headers["x-api-key"] = key
        self._client = http_client
        # A client the caller passed in is the caller's to close.
        self._owns_client = http_client is None

    @property
    def name(self) -> str:
        return f"anthropic:{self._model_name}"

    async def request(self, request: ModelRequest) -> ModelResponse:
        payload = self._build_payload(request)
        response = await self._send(payload)
        return self._parse_response(response)

    async def aclose(self) -> None:
        if self._client is not None and self._owns_client:
            await self._client.aclose()
        self._client = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            # Transport retries stay at 0: tether's gateway is the one layer that decides to retry.
            self._client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(retries=0),
                timeout=self._timeout_s,
            )
            self._owns_client = True
        return self._client

    def _build_payload(self, request: ModelRequest) -> JsonDict:
        system = "\n\n".join(m.content for m in request.messages if m.role == "system" and m.content)
        payload: JsonDict = {
            "model": self._model_name,
            "max_tokens": request.max_output_tokens or self._max_output_tokens,
            "messages": _to_wire_messages(request.messages),
        }
        if system:
            payload["system"] = system
        if request.tools:
            payload["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.parameters}
                for t in request.tools
            ]
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        return payload

    @property
    def _where(self) -> str:
        return f"POST {self._endpoint} (model {self._model_name})"

    async def _send(self, payload: JsonDict) -> httpx.Response:
        try:
            # The timeout is passed per request so that it also bounds an injected client.
            return await self._http().post(
                self._endpoint,
                content=json.dumps(payload).encode(),
                headers=self._headers,
                timeout=self._timeout_s,
            )
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(
                f"{self._where} got no answer within {self._timeout_s}s ({type(exc).__name__}); "
                "the outcome is unknown"
            ) from exc
        except httpx.TransportError as exc:
            raise ModelRetryableError(
                f"{self._where} failed before an answer: {type(exc).__name__}: {exc}"
            ) from exc

    def _parse_response(self, response: httpx.Response) -> ModelResponse:
        status = response.status_code
        if status >= 400:
            raise _status_error(response, self._where)
        try:
            return self._parse_body(json.loads(response.content))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ModelRetryableError(
                f"{self._where} returned {status} with a malformed body "
                f"({type(exc).__name__}: {exc}): {_snippet(response)}",
                status_code=status,
            ) from None

    def _parse_body(self, body: Any) -> ModelResponse:
        blocks = body["content"]
        if not isinstance(blocks, list):
            raise TypeError("'content' is not a list")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in blocks:
            if block["type"] == "text":
                texts.append(block["text"])
            elif block["type"] == "tool_use":
                arguments = block["input"]
                calls.append(
                    ToolCall(
                        id=block["id"],
                        name=block["name"],
                        arguments=arguments if isinstance(arguments, dict) else None,
                        raw_arguments=json.dumps(arguments),
                    )
                )
        usage = body.get("usage") or {}
        stop_reason = body.get("stop_reason")
        return ModelResponse(
            content="".join(texts),
            tool_calls=tuple(calls),
            usage=Usage(
                # Cached prompt tokens are reported apart; budgets count every prompt token.
                input_tokens=int(usage.get("input_tokens") or 0)
                + int(usage.get("cache_creation_input_tokens") or 0)
                + int(usage.get("cache_read_input_tokens") or 0),
                output_tokens=int(usage.get("output_tokens") or 0),
            ),
            model=str(body.get("model") or self._model_name),
            finish_reason=_FINISH_REASONS.get(stop_reason, stop_reason),
        )


def _to_wire_messages(messages: tuple[Message, ...]) -> list[JsonDict]:
    """Turn tether messages into Anthropic's strictly alternating user/assistant turns."""
    wire: list[JsonDict] = []
    for message in messages:
        if message.role == "system":
            continue
        blocks: list[JsonDict] = []
        if message.role == "tool":
            if message.tool_call_id is None:
                raise BadRequestError(
                    "a tool result message has no tool_call_id; Anthropic needs the tool_use id it answers"
                )
            result: JsonDict = {"type": "tool_result", "tool_use_id": message.tool_call_id}
            if message.content:
                result["content"] = message.content
            blocks.append(result)
        elif message.content:
            # Anthropic rejects empty text blocks, so an empty content adds none.
            blocks.append({"type": "text", "text": message.content})
        for call in message.tool_calls:
            # Unparsed arguments (None) still need an object on the wire; the model sees {} it sent.
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.id,
                    "name": call.name,
                    "input": call.arguments or {},
                }
            )
        if not blocks:
            continue
        role = "assistant" if message.role == "assistant" else "user"
        # Consecutive same-role turns (several tool results, or results then a user note) must be
        # one turn: the API requires strict alternation.
        if wire and wire[-1]["role"] == role:
            wire[-1]["content"].extend(blocks)
        else:
            wire.append({"role": role, "content": blocks})
    return wire


def _status_error(response: httpx.Response, where: str) -> ModelError:
    status = response.status_code
    detail = _provider_message(response)
    message = f"{where} returned {status}: {detail}"
    error_class = classify_status(status)
    if error_class is ErrorClass.RATE_LIMITED:
        return RateLimitedError(message, status_code=status, retry_after_s=_retry_after_s(response))
    if error_class is ErrorClass.RETRYABLE:
        return ModelRetryableError(message, status_code=status)
    if error_class is ErrorClass.TIMEOUT:
        return ModelTimeoutError(message, status_code=status)
    if error_class is ErrorClass.FATAL:
        return AuthenticationError(
            f"{message}; check ANTHROPIC_API_KEY and that the key may use this model",
            status_code=status,
        )
    if error_class is ErrorClass.CONTEXT_TOO_LONG or any(
        marker in detail.lower() for marker in _CONTEXT_MARKERS
    ):
        return ContextTooLongError(
            f"{message}; use a longer-context model or shorten the conversation",
            status_code=status,
        )
    return BadRequestError(message, status_code=status)


def _provider_message(response: httpx.Response) -> str:
    """The provider's own error message when the body is Anthropic's error JSON, else a snippet."""
    try:
        body: Any = json.loads(response.content)
        error = body["error"]
        return f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return _snippet(response)


def _retry_after_s(response: httpx.Response) -> float | None:
    # Anthropic sends delta-seconds; an HTTP-date or garbage leaves the wait to the gateway.
    try:
        seconds = float(response.headers["retry-after"])
    except (KeyError, ValueError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _snippet(response: httpx.Response, limit: int = 300) -> str:
    text = response.content[:limit].decode("utf-8", errors="replace")
    return repr(text) if text else "(empty body)"
