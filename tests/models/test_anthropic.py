"""AnthropicModel against a fake Messages endpoint served over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tether.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContextTooLongError,
    ModelError,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
)
from tether.models import model_from_spec
from tether.models.anthropic import AnthropicModel
from tether.types import Message, ModelRequest, ToolCall, ToolDefinition

HELLO = ModelRequest(messages=(Message(role="user", content="hello"),))


def text_body(**extra: Any) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-test-20250101",
        "content": [{"type": "text", "text": "hi there"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 11, "output_tokens": 3},
        **extra,
    }


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@dataclass
class Reply:
    """What the fake endpoint answers; `hang` holds the connection open without answering."""

    status: int = 200
    body: dict[str, Any] | bytes = field(default_factory=text_body)
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class FakeAnthropic:
    """A minimal HTTP/1.1 server: one request per connection, replies taken from a queue."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.received: list[Received] = []
        self._release = asyncio.Event()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._models: list[AnthropicModel] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    def model(self, **kwargs: Any) -> AnthropicModel:
        """A model pointed at this server (unless told otherwise), closed with the server."""
        kwargs.setdefault("base_url", self.url)
        kwargs.setdefault("api_key", "sk-test")
        model = AnthropicModel(kwargs.pop("model_name", "claude-test"), **kwargs)
        self._models.append(model)
        return model

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for model in self._models:
            await model.aclose()
        self._release.set()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        # Python 3.11's wait_closed does not wait for open connections, so await the handlers.
        await asyncio.gather(*self._handlers)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve_one(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request_line = await reader.readline()
        if not request_line:
            return
        method, path, _ = request_line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        self.received.append(Received(method, path, headers, body))
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.hang:
            await self._release.wait()
            return
        payload = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
        # httpx ignores the reason phrase, and 529 has no standard one.
        head = [f"HTTP/1.1 {reply.status} Fake", "content-type: application/json"]
        head += [f"{k}: {v}" for k, v in reply.headers.items()]
        head += [f"content-length: {len(payload)}", "connection: close", "", ""]
        writer.write("\r\n".join(head).encode("latin-1") + payload)
        await writer.drain()


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    server = FakeAnthropic()
    await server.start()
    try:
        yield server
    finally:
        await server.close()


# --- wire format ---------------------------------------------------------------------------------


async def test_request_is_a_post_to_messages_with_auth_and_version(fake: FakeAnthropic) -> None:
    """A turn is one POST /v1/messages carrying x-api-key, anthropic-version and a JSON body."""
    await fake.model().request(HELLO)
    (seen,) = fake.received
    assert (seen.method, seen.path) == ("POST", "/v1/messages")
    assert seen.headers["x-api-key"] == "sk-test"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json() == {
        "model": "claude-test",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    }


async def test_system_messages_are_joined_into_the_system_field(fake: FakeAnthropic) -> None:
    """System messages leave the message list and are joined, in order, into `system`."""
    request = ModelRequest(
        messages=(
            Message(role="system", content="Be brief."),
            Message(role="user", content="hi"),
            Message(role="system", content="Answer in French."),
        )
    )
    await fake.model().request(request)
    body = fake.received[0].json()
    assert body["system"] == "Be brief.\n\nAnswer in French."
    assert [m["role"] for m in body["messages"]] == ["user"]


async def test_tool_calls_and_results_alternate_as_blocks(fake: FakeAnthropic) -> None:
    """Tool calls become tool_use blocks; tool results and a following note merge into one turn."""
    calls = (
        ToolCall(id="toolu_1", name="lookup", arguments={"q": "a"}, raw_arguments='{"q": "a"}'),
        ToolCall(id="toolu_2", name="lookup", arguments=None, raw_arguments="{not json"),
    )
    request = ModelRequest(
        messages=(
            Message(role="user", content="find a and b"),
            Message(role="assistant", content="Looking.", tool_calls=calls),
            Message(role="tool", content="A!", tool_call_id="toolu_1", name="lookup"),
            Message(role="tool", content="B!", tool_call_id="toolu_2", name="lookup"),
            Message(role="user", content="be quick"),
        )
    )
    await fake.model().request(request)
    assert fake.received[0].json()["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "find a and b"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "toolu_1", "name": "lookup", "input": {"q": "a"}},
                {"type": "tool_use", "id": "toolu_2", "name": "lookup", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "A!"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "B!"},
                {"type": "text", "text": "be quick"},
            ],
        },
    ]


async def test_tools_temperature_and_max_output_tokens_are_sent(fake: FakeAnthropic) -> None:
    """Tools go out as name/description/input_schema; the request's limits override the defaults."""
    schema = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
    request = ModelRequest(
        messages=HELLO.messages,
        tools=(ToolDefinition(name="lookup", description="Look up a word.", parameters=schema),),
        temperature=0.2,
        max_output_tokens=123,
    )
    await fake.model(max_output_tokens=999).request(request)
    body = fake.received[0].json()
    assert body["tools"] == [{"name": "lookup", "description": "Look up a word.", "input_schema": schema}]
    assert (body["temperature"], body["max_tokens"]) == (0.2, 123)


async def test_tool_result_without_call_id_never_reaches_the_wire(fake: FakeAnthropic) -> None:
    """A tool result that names no tool_use id raises BadRequestError before anything is sent."""
    request = ModelRequest(messages=(Message(role="tool", content="orphan"),))
    with pytest.raises(BadRequestError, match="tool_call_id"):
        await fake.model().request(request)
    assert fake.received == []


# --- response parsing ----------------------------------------------------------------------------


async def test_text_blocks_usage_model_and_stop_reason_are_parsed(fake: FakeAnthropic) -> None:
    """Text blocks concatenate; usage (cached prompt tokens included), model and finish_reason."""
    usage = {
        "input_tokens": 5,
        "output_tokens": 2,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1000,
    }
    body = text_body(usage=usage)
    body["content"] = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world."}]
    fake.replies.append(Reply(body=body))
    response = await fake.model().request(HELLO)
    assert response.content == "Hello, world."
    assert response.tool_calls == ()
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1105, 2)
    assert response.model == "claude-test-20250101"
    assert response.finish_reason == "stop"


async def test_tool_use_blocks_become_tool_calls(fake: FakeAnthropic) -> None:
    """Each tool_use block becomes a ToolCall with its input as arguments and as raw JSON."""
    body = text_body(stop_reason="tool_use")
    body["content"] = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_9", "name": "lookup", "input": {"q": "tether"}},
    ]
    fake.replies.append(Reply(body=body))
    response = await fake.model().request(HELLO)
    assert response.content == "Let me check."
    assert response.tool_calls == (
        ToolCall("toolu_9", "lookup", arguments={"q": "tether"}, raw_arguments='{"q": "tether"}'),
    )
    assert response.finish_reason == "tool_calls"


# --- error mapping -------------------------------------------------------------------------------


async def test_429_is_rate_limited_with_retry_after(fake: FakeAnthropic) -> None:
    """A 429 raises RateLimitedError carrying Retry-After seconds and the provider's message."""
    body = error_body("rate_limit_error", "slow down please")
    fake.replies.append(Reply(status=429, body=body, headers={"retry-after": "7"}))
    with pytest.raises(RateLimitedError, match="slow down please") as info:
        await fake.model().request(HELLO)
    assert (info.value.retry_after_s, info.value.status_code) == (7.0, 429)


TOO_LONG = "prompt is too long: 210000 tokens > 200000 maximum"
OVER_LIMIT = "input length and `max_tokens` exceed context limit: 199000 + 4096 > 200000"
BAD_ROLE = "messages.0.role: Input should be 'user' or 'assistant'"


@pytest.mark.parametrize(
    ("status", "kind", "detail", "expected"),
    [
        (529, "overloaded_error", "Overloaded", ModelRetryableError),
        (500, "api_error", "Internal server error", ModelRetryableError),
        (503, "api_error", "Service unavailable", ModelRetryableError),
        (401, "authentication_error", "invalid x-api-key", AuthenticationError),
        (403, "permission_error", "no access to this model", AuthenticationError),
        (400, "invalid_request_error", TOO_LONG, ContextTooLongError),
        (400, "invalid_request_error", OVER_LIMIT, ContextTooLongError),
        (400, "invalid_request_error", BAD_ROLE, BadRequestError),
        (404, "not_found_error", "model: claude-nope", BadRequestError),
    ],
)
async def test_error_status_maps_to_its_tether_error(
    fake: FakeAnthropic, status: int, kind: str, detail: str, expected: type[ModelError]
) -> None:
    """Each error status raises exactly its tether error, naming endpoint, model, status, detail."""
    fake.replies.append(Reply(status=status, body=error_body(kind, detail)))
    with pytest.raises(ModelError) as info:
        await fake.model().request(HELLO)
    assert type(info.value) is expected
    assert info.value.status_code == status
    message = str(info.value)
    for part in ("POST", "/v1/messages", "claude-test", str(status), kind, detail):
        assert part in message
    if expected is AuthenticationError:
        assert "ANTHROPIC_API_KEY" in message


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b'{"id": "msg_1"}', b""])
async def test_malformed_success_body_is_retryable(fake: FakeAnthropic, body: bytes) -> None:
    """A 200 whose body is not a Messages response raises ModelRetryableError."""
    fake.replies.append(Reply(status=200, body=body))
    with pytest.raises(ModelRetryableError, match="malformed body") as info:
        await fake.model().request(HELLO)
    assert info.value.status_code == 200


async def test_silent_server_times_out(fake: FakeAnthropic) -> None:
    """No answer within timeout_s raises ModelTimeoutError instead of waiting on."""
    fake.replies.append(Reply(hang=True))
    started = asyncio.get_running_loop().time()
    with pytest.raises(ModelTimeoutError, match=r"0\.2s"):
        await fake.model(timeout_s=0.2).request(HELLO)
    assert asyncio.get_running_loop().time() - started < 5


async def test_refused_connection_is_retryable(fake: FakeAnthropic) -> None:
    """A connection that cannot be made raises ModelRetryableError."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = fake.model(base_url=f"http://127.0.0.1:{port}")
    with pytest.raises(ModelRetryableError, match="ConnectError"):
        await model.request(HELLO)


# --- configuration -------------------------------------------------------------------------------


def test_missing_key_for_the_official_api_is_a_configuration_error() -> None:
    """Without ANTHROPIC_API_KEY the official endpoint is refused at construction, naming it."""
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-x")
    with pytest.raises(ConfigurationError, match="ANTHROPIC_API_KEY"):
        AnthropicModel("claude-x", base_url="https://api.anthropic.com/")


def test_base_url_must_be_http() -> None:
    """A base URL that is not http(s) is refused at construction."""
    with pytest.raises(ConfigurationError, match="http"):
        AnthropicModel("claude-x", base_url="ftp://example.test", api_key="k")


async def test_env_vars_supply_key_and_base_url(fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch) -> None:
    """ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL are read at construction and used on the wire."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-from-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url + "/")
    model = fake.model(base_url=None, api_key=None)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-changed-later")
    await model.request(HELLO)
    assert fake.received[0].path == "/v1/messages"
    assert fake.received[0].headers["x-api-key"] == "sk-from-env"


async def test_explicit_arguments_override_env_vars(
    fake: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Constructor arguments win over ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-env")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "https://api.anthropic.com")
    await fake.model(api_key="sk-arg").request(HELLO)
    assert fake.received[0].headers["x-api-key"] == "sk-arg"


async def test_a_non_official_base_url_needs_no_key(fake: FakeAnthropic) -> None:
    """A local gateway may be used keyless, and then no x-api-key header is sent."""
    await fake.model(api_key=None).request(HELLO)
    assert "x-api-key" not in fake.received[0].headers


def test_model_from_spec_builds_an_anthropic_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """`anthropic:NAME` gives an AnthropicModel named after the spec when a key is set."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    model = model_from_spec("anthropic:claude-x")
    assert isinstance(model, AnthropicModel)
    assert model.name == "anthropic:claude-x"


async def test_injected_http_client_is_used_and_left_open(fake: FakeAnthropic) -> None:
    """A caller's httpx client carries the requests, and aclose leaves it open for the caller."""
    async with httpx.AsyncClient(headers={"x-injected": "yes"}) as client:
        model = fake.model(http_client=client)
        await model.request(HELLO)
        await model.aclose()
        assert not client.is_closed
    assert fake.received[0].headers["x-injected"] == "yes"
