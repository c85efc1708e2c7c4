"""Any OpenAI-compatible chat-completions endpoint, spoken over plain httpx (no SDK, no retries)."""

from __future__ import annotations

import datetime
import email.utils
import json
import os
import time
from typing import Any

import httpx

from tether.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContentFilterError,
    ContextTooLongError,
    ModelError,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
)
from tether.models.base import secret_from_env
from tether.types import JsonDict, Message, ModelRequest, ModelResponse, ToolCall, Usage

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_OPENAI_HOST = "api.openai.com"
_PREVIEW_CHARS = 200
# The default pool keeps only 20 idle connections; many concurrent runs would then reconnect often.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=30.0)


class OpenAIModel:
    """A chat model behind `/chat/completions`: OpenAI itself, vLLM, Ollama, llama.cpp server, ...

    The official SDK costs milliseconds per call in request transforms, so this builds plain dicts.
    It never retries: the gateway owns the retry budget, so retries never multiply.
    `timeout_s` bounds each phase of a call (connect, send, each read); the gateway owns deadlines.
    """

    def __init__(
        self,
        model_name: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if not model_name:
            raise ConfigurationError("OpenAIModel needs a model name, e.g. 'gpt-4o-mini'")
        if timeout_s <= 0:
            raise ConfigurationError(f"timeout_s must be positive, not {timeout_s!r}")
        resolved_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        try:
            parsed_url = httpx.URL(resolved_url)
        except httpx.InvalidURL as exc:
            raise ConfigurationError(f"OpenAI base URL {resolved_url!r} is invalid: {exc}") from None
        if parsed_url.scheme not in ("http", "https") or not parsed_url.host:
            raise ConfigurationError(
                f"OpenAI base URL {resolved_url!r} must be an http(s) URL like {DEFAULT_BASE_URL}"
            )
        key = api_key if api_key is not None else secret_from_env("OPENAI_API_KEY")
        # Local servers (vLLM, Ollama, llama.cpp) need no key; only OpenAI itself insists on one.
        if not key and parsed_url.host == _OPENAI_HOST:
            raise ConfigurationError(
                f"no API key for {resolved_url}: set OPENAI_API_KEY (or OPENAI_API_KEY_FILE) "
                "or pass api_key= "
                "(or point OPENAI_BASE_URL at a local server that needs none)"
            )
        self._model_name = model_name
        self._name = f"openai:{model_name}"
        self._url = f"{resolved_url}/chat/completions"
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._timeout = httpx.Timeout(timeout_s)
        self._timeout_s = timeout_s
        self._client = http_client
        self._owns_client = http_client is None

    @property
    def name(self) -> str:
        return self._name

    @property
    def url(self) -> str:
        """The chat-completions URL this model posts to."""
        return self._url

    async def request(self, request: ModelRequest) -> ModelResponse:
        payload = json.dumps(self._encode(request), separators=(",", ":")).encode()
        client = self._client
        if client is None:
            # Built on first use, not in __init__, so a model can be made outside an event loop.
            client = self._client = httpx.AsyncClient(
                transport=httpx.AsyncHTTPTransport(retries=0, limits=_LIMITS),
                timeout=self._timeout,
            )
        try:
            response = await client.post(
                self._url, content=payload, headers=self._headers, timeout=self._timeout
            )
        except httpx.TimeoutException as exc:
            raise ModelTimeoutError(
                f"{self._where()} did not answer within {self._timeout_s:g} s "
                f"({type(exc).__name__}); the outcome is unknown"
            ) from exc
        except httpx.RequestError as exc:
            raise ModelRetryableError(
                f"{self._where()} could not be reached or dropped the connection "
                f"({type(exc).__name__}: {exc}); is the server running at that URL?"
            ) from exc
        if response.status_code >= 300:
            raise self._status_error(response)
        return self._decode(response.content, response.status_code)

    async def aclose(self) -> None:
        # A caller's client is the caller's to close; ours is dropped so a later call builds anew.
        if self._owns_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _where(self) -> str:
        return f"model {self._model_name!r} at {self._url}"

    def _encode(self, request: ModelRequest) -> JsonDict:
        body: JsonDict = {
            "model": self._model_name,
            "messages": [_encode_message(message) for message in request.messages],
        }
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                }
                for tool in request.tools
            ]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_output_tokens is not None:
            body["max_tokens"] = request.max_output_tokens
        return body

    def _decode(self, content: bytes, status_code: int) -> ModelResponse:
        try:
            data = json.loads(content)
            choice = data["choices"][0]
            message = choice["message"]
            text = message.get("content") or ""
            if not isinstance(text, str):
                raise TypeError("message content is not a string")
            calls = tuple(
                _decode_tool_call(call, index) for index, call in enumerate(message.get("tool_calls") or ())
            )
            usage = data.get("usage") or {}
            input_tokens = int(usage.get("prompt_tokens") or 0)
            output_tokens = int(usage.get("completion_tokens") or 0)
            finish_reason = choice.get("finish_reason")
            model = data.get("model") or self._model_name
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            preview = content[:_PREVIEW_CHARS].decode("utf-8", "replace")
            raise ModelRetryableError(
                f"{self._where()} returned a malformed body (HTTP {status_code}, "
                f"{type(exc).__name__}: {exc}); it starts with {preview!r}",
                status_code=status_code,
            ) from None
        if finish_reason == "content_filter":
            raise ContentFilterError(
                f"{self._where()} withheld its answer (finish_reason 'content_filter'); "
                "a person should review the conversation",
                status_code=status_code,
            )
        return ModelResponse(
            content=text,
            tool_calls=calls,
            usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=None),
            model=str(model),
            finish_reason=finish_reason,
        )

    def _status_error(self, response: httpx.Response) -> ModelError:
        status = response.status_code
        code, detail = _error_details(response.content)
        where = self._where()
        if status < 400:
            location = response.headers.get("location", "an unknown location")
            return BadRequestError(
                f"{where} redirected (HTTP {status}) to {location}; set base_url to the final URL",
                status_code=status,
            )
        if status == 429:
            retry_after_s = _retry_after_s(response.headers)
            wait = "" if retry_after_s is None else f"; retry after {retry_after_s:g} s"
            return RateLimitedError(
                f"{where} rate-limited the request (HTTP 429): {detail}{wait}",
                status_code=status,
                retry_after_s=retry_after_s,
            )
        if status >= 500:
            return ModelRetryableError(
                f"{where} failed on its side (HTTP {status}): {detail}", status_code=status
            )
        if status in (401, 403):
            return AuthenticationError(
                f"{where} refused the credentials (HTTP {status}): {detail}; "
                "check OPENAI_API_KEY (or api_key=) and that the key may use this model",
                status_code=status,
            )
        if status == 408:
            return ModelTimeoutError(f"{where} timed out (HTTP 408): {detail}", status_code=status)
        if status == 409:
            return ModelRetryableError(
                f"{where} reported a conflict (HTTP 409): {detail}", status_code=status
            )
        if status == 413 or code == "context_length_exceeded" or "maximum context length" in detail.lower():
            return ContextTooLongError(
                f"{where} cannot take a prompt this long (HTTP {status}): {detail}; "
                "summarise the conversation or route to a longer-context model",
                status_code=status,
            )
        if code == "content_filter":
            return ContentFilterError(
                f"{where} refused the content (HTTP {status}): {detail}; a person should review it",
                status_code=status,
            )
        hint = "; check the model name and base_url" if status == 404 else ""
        return BadRequestError(
            f"{where} rejected the request (HTTP {status}): {detail}{hint}", status_code=status
        )


def _encode_message(message: Message) -> JsonDict:
    encoded: JsonDict = {"role": message.role, "content": message.content}
    if message.tool_calls:
        encoded["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    # Unparseable arguments go back verbatim, so the model sees its own slip.
                    "arguments": call.raw_arguments if call.arguments is None else json.dumps(call.arguments),
                },
            }
            for call in message.tool_calls
        ]
        if not message.content:
            encoded["content"] = None
    if message.tool_call_id is not None:
        encoded["tool_call_id"] = message.tool_call_id
    # OpenAI rejects `name` on tool messages; the tool_call_id already names the call there.
    elif message.name is not None:
        encoded["name"] = message.name
    return encoded


def _decode_tool_call(call: Any, index: int) -> ToolCall:
    function = call["function"]
    raw = function.get("arguments")
    arguments: JsonDict | None
    if isinstance(raw, dict):  # some compatible servers send an object, not a JSON string
        arguments, raw = raw, json.dumps(raw)
    elif not raw:  # some local servers send "" for a tool without parameters
        arguments, raw = {}, ""
    else:
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        # Left None on purpose: the agent loop tells the model its arguments were not a JSON object.
        arguments = parsed if isinstance(parsed, dict) else None
    return ToolCall(
        id=str(call.get("id") or f"call_{index}"),
        name=str(function["name"]),
        arguments=arguments,
        raw_arguments=str(raw),
    )


def _error_details(content: bytes) -> tuple[str, str]:
    """The provider's error code and message, or ("", a preview of the body) without them."""
    try:
        error = json.loads(content).get("error")
    except (ValueError, AttributeError):
        error = None
    if isinstance(error, dict):
        code = str(error.get("code") or error.get("type") or "")
        message = str(error.get("message") or code or "no message")
        return code, message
    if isinstance(error, str):  # vLLM and others sometimes send {"error": "text"}
        return "", error
    preview = content[:_PREVIEW_CHARS].decode("utf-8", "replace").strip()
    return "", preview or "empty body"


def _retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` (OpenAI) or `Retry-After` (seconds or an HTTP date)."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always UTC
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())
