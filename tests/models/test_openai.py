"""OpenAIModel against real HTTP on loopback: the fake server, or a tiny fixed-answer server."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tether.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContentFilterError,
    ContextTooLongError,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
)
from tether.models import model_from_spec
from tether.models.base import Model
from tether.models.openai import OpenAIModel
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import Message, ModelRequest, ToolCall, ToolDefinition

HELLO = ModelRequest(messages=(Message(role="user", content="Say hello to the operator."),))


@dataclass
class FixedServer:
    url: str
    seen: list[tuple[bytes, bytes]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def fixed_server(
    status: int = 200,
    body: Any = b"",
    headers: dict[str, str] | None = None,
    *,
    answer: bool = True,
) -> AsyncIterator[FixedServer]:
    """Answer every request with one fixed response (or hang up without one), recording requests."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} X", f"Content-Length: {len(payload)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    response = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    seen: list[tuple[bytes, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":", 1)[1])
            seen.append((head, await reader.readexactly(length)))
            if answer:
                writer.write(response)
                await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield FixedServer(f"http://127.0.0.1:{port}/v1", seen)
    finally:
        server.close()
        await server.wait_closed()


def completion(message: dict[str, Any], finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "model": "m",
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }


async def ask(url: str, request: ModelRequest = HELLO, **kwargs: Any) -> Any:
    model = OpenAIModel("m", base_url=url, **kwargs)
    try:
        return await model.request(request)
    finally:
        await model.aclose()


async def test_request_wire_format_carries_tools_calls_and_results() -> None:
    """Tools become function tools; assistant arguments are JSON strings; tool results carry ids."""
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"content": "ok"}

    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    request = ModelRequest(
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="Weather in Oslo?"),
            Message(
                role="assistant",
                tool_calls=(ToolCall("call_0_0", "weather", {"city": "Oslo"}, '{"city":"Oslo"}'),),
            ),
            Message(role="tool", content="-3 C", tool_call_id="call_0_0", name="weather"),
        ),
        tools=(ToolDefinition("weather", "Current weather of a city.", schema),),
        temperature=0.2,
        max_output_tokens=50,
    )
    async with FakeLLMServer(responder=responder) as server:
        await ask(server.url, request)
    body = seen[0]
    assert body["model"] == "m"
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 50
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "weather",
                "description": "Current weather of a city.",
                "parameters": schema,
            },
        }
    ]
    assistant, tool = body["messages"][2], body["messages"][3]
    assert assistant["content"] is None
    (call,) = assistant["tool_calls"]
    assert call["id"] == "call_0_0"
    assert call["type"] == "function"
    assert call["function"]["name"] == "weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}
    assert tool == {"role": "tool", "content": "-3 C", "tool_call_id": "call_0_0"}


async def test_unparsed_arguments_are_sent_back_verbatim() -> None:
    """A tool call whose arguments never parsed goes back with the model's own raw text."""
    seen: list[dict[str, Any]] = []

    def responder(body: dict[str, Any]) -> dict[str, Any]:
        seen.append(body)
        return {"content": "ok"}

    broken = ToolCall("call_0_0", "weather", None, '{"city": Oslo')
    request = ModelRequest(
        messages=(
            Message(role="user", content="hi"),
            Message(role="assistant", tool_calls=(broken,)),
            Message(role="tool", content="bad JSON", tool_call_id="call_0_0"),
        )
    )
    async with FakeLLMServer(responder=responder) as server:
        await ask(server.url, request)
    assert seen[0]["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": Oslo'


async def test_content_and_usage_are_parsed() -> None:
    """Content, finish reason, model and token usage come from the response; cost stays unknown."""
    async with FakeLLMServer([{"content": "Hello, operator!"}]) as server:
        response = await ask(server.url)
    assert response.content == "Hello, operator!"
    assert response.tool_calls == ()
    assert response.finish_reason == "stop"
    assert response.model == "m"
    assert response.usage.input_tokens == len("Say hello to the operator.") // 4
    assert response.usage.output_tokens == len("Hello, operator!") // 4
    assert response.usage.cost_usd is None


async def test_tool_calls_are_parsed() -> None:
    """Tool calls come back with their ids, names, parsed arguments and raw argument text."""
    turn = {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "time"}]}
    async with FakeLLMServer([turn]) as server:
        response = await ask(server.url)
    assert response.finish_reason == "tool_calls"
    first, second = response.tool_calls
    assert (first.id, first.name, first.arguments) == ("call_0_0", "weather", {"city": "Oslo"})
    assert json.loads(first.raw_arguments) == {"city": "Oslo"}
    assert (second.id, second.name, second.arguments) == ("call_0_1", "time", {})


@pytest.mark.parametrize("raw", ['{"city": Oslo', "[1, 2]", "not json at all"])
async def test_unparseable_tool_arguments_keep_raw_text(raw: str) -> None:
    """Arguments that are not a JSON object give arguments=None and keep the raw text for the loop."""
    call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": raw}}
    body = completion({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")
    async with fixed_server(200, body) as server:
        response = await ask(server.url)
    (parsed,) = response.tool_calls
    assert parsed.arguments is None
    assert parsed.raw_arguments == raw
    assert parsed.name == "weather"


async def test_confidence_in_json_content_is_not_interpreted() -> None:
    """A numeric "confidence" inside JSON content is left alone: confidence stays None."""
    content = json.dumps({"answer": "yes", "confidence": 0.42})
    async with FakeLLMServer([{"content": content, "confidence": 0.9}]) as server:
        response = await ask(server.url)
    assert response.content == content
    assert response.confidence is None


async def test_http_500_is_retryable() -> None:
    """A 5xx answer raises ModelRetryableError naming the model, the URL and the status."""
    async with FakeLLMServer([{"content": "x"}], faults=[Fault("http_500", every=1)]) as server:
        with pytest.raises(ModelRetryableError, match="HTTP 500") as caught:
            await ask(server.url)
    assert caught.value.status_code == 500
    assert "model 'm'" in str(caught.value)
    assert server.url in str(caught.value)


async def test_http_429_carries_retry_after_seconds() -> None:
    """A 429 raises RateLimitedError with Retry-After (seconds) as retry_after_s."""
    fault = Fault("http_429", every=1, retry_after_s=7)
    async with FakeLLMServer([{"content": "x"}], faults=[fault]) as server:
        with pytest.raises(RateLimitedError, match="retry after 7 s") as caught:
            await ask(server.url)
    assert caught.value.retry_after_s == 7.0
    assert caught.value.status_code == 429


async def test_http_429_retry_after_http_date_is_parsed() -> None:
    """A Retry-After given as an HTTP date becomes the number of seconds until that date."""
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    body = {"error": {"message": "slow down", "code": "rate_limit_exceeded"}}
    async with fixed_server(429, body, {"Retry-After": when}) as server:
        with pytest.raises(RateLimitedError) as caught:
            await ask(server.url)
    assert caught.value.retry_after_s is not None
    assert 25 <= caught.value.retry_after_s <= 31


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failures_raise_authentication_error(status: int) -> None:
    """401 and 403 raise AuthenticationError telling the user to check OPENAI_API_KEY."""
    body = {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}}
    async with fixed_server(status, body) as server:
        with pytest.raises(AuthenticationError, match="OPENAI_API_KEY") as caught:
            await ask(server.url)
    assert caught.value.status_code == status
    assert "Incorrect API key provided" in str(caught.value)


@pytest.mark.parametrize(
    "error",
    [
        {"message": "too long", "code": "context_length_exceeded"},
        {"message": "This model's maximum context length is 8192 tokens", "code": None},
    ],
)
async def test_context_length_exceeded_raises_context_too_long(error: dict[str, Any]) -> None:
    """A 400 saying the context is too long raises ContextTooLongError with a way out."""
    async with fixed_server(400, {"error": error}) as server:
        with pytest.raises(ContextTooLongError, match="longer-context model") as caught:
            await ask(server.url)
    assert caught.value.status_code == 400


async def test_content_filter_error_code_raises_content_filter() -> None:
    """A 400 with code content_filter raises ContentFilterError."""
    body = {"error": {"message": "The response was filtered", "code": "content_filter"}}
    async with fixed_server(400, body) as server:
        with pytest.raises(ContentFilterError, match="filtered"):
            await ask(server.url)


async def test_content_filter_finish_reason_raises_content_filter() -> None:
    """A 200 whose finish_reason is content_filter raises ContentFilterError."""
    body = completion({"role": "assistant", "content": ""}, "content_filter")
    async with fixed_server(200, body) as server:
        with pytest.raises(ContentFilterError, match="content_filter") as caught:
            await ask(server.url)
    assert caught.value.status_code == 200


@pytest.mark.parametrize("status", [400, 404, 422])
async def test_other_4xx_raise_bad_request(status: int) -> None:
    """Any other 4xx raises a plain BadRequestError quoting the provider's message."""
    body = {"error": {"message": "The model `m` does not exist", "code": "model_not_found"}}
    async with fixed_server(status, body) as server:
        with pytest.raises(BadRequestError, match="does not exist") as caught:
            await ask(server.url)
    assert type(caught.value) is BadRequestError
    assert caught.value.status_code == status


async def test_malformed_json_body_is_retryable() -> None:
    """A 200 whose body is not JSON raises ModelRetryableError quoting the start of the body."""
    fault = Fault("malformed_json", every=1)
    async with FakeLLMServer([{"content": "x"}], faults=[fault]) as server:
        with pytest.raises(ModelRetryableError, match="malformed body") as caught:
            await ask(server.url)
    assert "chatcmpl-fake" in str(caught.value)


async def test_body_without_choices_is_retryable() -> None:
    """A JSON body lacking `choices` raises ModelRetryableError saying the body was malformed."""
    async with fixed_server(200, {"object": "chat.completion", "usage": {}}) as server:
        with pytest.raises(ModelRetryableError, match="malformed body") as caught:
            await ask(server.url)
    assert "chat.completion" in str(caught.value)


async def test_truncated_body_is_retryable() -> None:
    """A body cut short by a closed connection raises ModelRetryableError."""
    async with FakeLLMServer([{"content": "x"}], faults=[Fault("truncated", every=1)]) as server:
        with pytest.raises(ModelRetryableError, match="dropped the connection"):
            await ask(server.url)


async def test_hang_raises_timeout() -> None:
    """No answer within timeout_s raises ModelTimeoutError, saying the outcome is unknown."""
    async with FakeLLMServer([{"content": "x"}], faults=[Fault("hang", every=1)]) as server:
        with pytest.raises(ModelTimeoutError, match=r"within 0\.2 s") as caught:
            await ask(server.url, timeout_s=0.2)
    assert "outcome is unknown" in str(caught.value)


async def test_connection_refused_is_retryable() -> None:
    """Nothing listening at the URL raises ModelRetryableError asking whether the server runs."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ModelRetryableError, match="is the server running"):
        await ask(f"http://127.0.0.1:{port}/v1")


async def test_connection_closed_without_answer_is_retryable() -> None:
    """A server that hangs up without answering raises ModelRetryableError."""
    async with fixed_server(answer=False) as server:
        with pytest.raises(ModelRetryableError, match="RemoteProtocolError"):
            await ask(server.url)


async def test_environment_base_url_needs_no_key_for_local_servers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OPENAI_BASE_URL is honoured, and a local server needs no OPENAI_API_KEY."""
    async with FakeLLMServer([{"content": "from env"}]) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        model = OpenAIModel("m")
        try:
            response = await model.request(HELLO)
        finally:
            await model.aclose()
    assert model.url == f"{server.url}/chat/completions"
    assert response.content == "from env"


async def test_environment_api_key_is_sent_as_bearer(monkeypatch: pytest.MonkeyPatch) -> None:
    """OPENAI_API_KEY is sent as a bearer token; an explicit api_key wins over it."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    body = completion({"role": "assistant", "content": "ok"})
    async with fixed_server(200, body) as server:
        await ask(server.url)
        await ask(server.url, api_key="sk-explicit")
    heads = [head.decode().lower() for head, _ in server.seen]
    assert "authorization: bearer sk-from-env" in heads[0]
    assert "authorization: bearer sk-explicit" in heads[1]


async def test_no_key_means_no_authorization_header() -> None:
    """Without any key, no Authorization header is sent to a local server."""
    body = completion({"role": "assistant", "content": "ok"})
    async with fixed_server(200, body) as server:
        await ask(server.url)
    assert b"authorization" not in server.seen[0][0].lower()


@pytest.mark.parametrize("base_url", [None, "https://api.openai.com/v1"])
def test_missing_key_for_openai_is_a_configuration_error(base_url: str | None) -> None:
    """Talking to api.openai.com without a key fails at construction, naming OPENAI_API_KEY."""
    with pytest.raises(ConfigurationError, match="set OPENAI_API_KEY"):
        OpenAIModel("gpt-4o-mini", base_url=base_url)


def test_explicit_base_url_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """base_url= overrides OPENAI_BASE_URL, and a trailing slash is tolerated."""
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:1/v1")
    model = OpenAIModel("m", base_url="http://127.0.0.1:2/v1/")
    assert model.url == "http://127.0.0.1:2/v1/chat/completions"


@pytest.mark.parametrize("base_url", ["ftp://example.com/v1", "not a url"])
def test_invalid_base_url_is_a_configuration_error(base_url: str) -> None:
    """A base URL that is not http(s) fails at construction with the URL in the message."""
    with pytest.raises(ConfigurationError, match="base URL"):
        OpenAIModel("m", base_url=base_url)


def test_spec_builds_an_openai_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`openai:NAME` builds an OpenAIModel named after the spec that satisfies the Model protocol."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    model = model_from_spec("openai:gpt-4o-mini")
    assert isinstance(model, OpenAIModel)
    assert isinstance(model, Model)
    assert model.name == "openai:gpt-4o-mini"


def test_model_built_outside_event_loop_works_inside_one() -> None:
    """The HTTP client is created on first request, so a model can be built before any loop runs."""
    server = FakeLLMServer([{"content": "late binding"}])
    with server.run_in_thread():
        model = OpenAIModel("m", base_url=server.url)

        async def use() -> str:
            try:
                return (await model.request(HELLO)).content
            finally:
                await model.aclose()

        assert asyncio.run(use()) == "late binding"


async def test_injected_http_client_is_used_and_left_open() -> None:
    """A caller's httpx client is used for requests and not closed by aclose()."""
    async with FakeLLMServer([{"content": "shared"}]) as server, httpx.AsyncClient() as client:
        model = OpenAIModel("m", base_url=server.url, http_client=client)
        response = await model.request(HELLO)
        await model.aclose()
        assert not client.is_closed
        assert response.content == "shared"
