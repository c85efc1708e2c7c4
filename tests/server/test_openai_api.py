"""The OpenAI-compatible endpoint over real HTTP, spoken to by the official openai client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import uvicorn
from openai.types.chat import ChatCompletion
from typer.testing import CliRunner

from tether.cli import app as cli_app
from tether.errors import (
    AllModelsFailedError,
    AuthenticationError,
    BadRequestError,
    CircuitOpenError,
    ConfigurationError,
    ContentFilterError,
    ContextTooLongError,
    ModelRetryableError,
    ModelTimeoutError,
    RateLimitedError,
    RateLimitExceededError,
)
from tether.models import FunctionModel, ScriptedModel
from tether.models.openai import OpenAIModel
from tether.server.openai_api import ChatBackend, ModelBackend, create_openai_app
from tether.testing.fakellm import FakeLLMServer, Fault
from tether.types import Message, ModelRequest, ModelResponse, ToolCall, ToolDefinition, Usage

USER: Any = {"role": "user", "content": "Where is order A-7?"}
PARAMETERS = {"type": "object", "properties": {"order_id": {"type": "string"}}}
TOOL: Any = {
    "type": "function",
    "function": {"name": "lookup_order", "description": "Find an order by id.", "parameters": PARAMETERS},
}
SCRIPT: list[dict[str, Any]] = [
    {"tool_calls": [{"name": "lookup_order", "arguments": {"order_id": "A-7"}}]},
    {"content": "Order A-7 has shipped."},
]
Start = Callable[..., openai.OpenAI]


@contextlib.contextmanager
def serving(backend: ChatBackend, *, api_keys: Collection[str] | None = None) -> Iterator[str]:
    """Serve the endpoint from a thread on 127.0.0.1:0; yield its /v1 URL; stop it and close the backend."""
    app = create_openai_app(backend, api_keys=api_keys)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", ws="none"))

    async def serve() -> None:
        try:
            await server.serve()
        finally:  # in the server's loop, where the models' connections live
            if isinstance(backend, ModelBackend):
                await backend.aclose()

    thread = threading.Thread(target=lambda: asyncio.run(serve()), name="gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "the server thread died on startup"
        assert time.monotonic() < deadline, "the server did not start within 10 s"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}/v1"
    finally:
        server.should_exit = True
        thread.join(10)
        assert not thread.is_alive(), "the server did not stop within 10 s"


def client(url: str, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=10)


@pytest.fixture
def gateway() -> Iterator[Start]:
    """`gateway(backend, api_keys=..., api_key=...)` serves the endpoint and returns an official client."""
    with contextlib.ExitStack() as stack:

        def start(backend: ChatBackend, api_keys: Collection[str] | None = None, api_key: str = "k") -> Any:
            url = stack.enter_context(serving(backend, api_keys=api_keys))
            return stack.enter_context(client(url, api_key))

        yield start


class FunctionBackend:
    """A bare ChatBackend (no Model behind it) with one route, `default`, answered by `answer`."""

    def __init__(self, answer: Callable[[ModelRequest], ModelResponse]) -> None:
        self.answer = answer

    def routes(self) -> list[str]:
        return ["default"]

    async def complete(self, route: str, request: ModelRequest) -> ModelResponse:
        return self.answer(request)


def answering(seen: list[ModelRequest] | None = None, **response: Any) -> ModelBackend:
    """A FunctionModel on route `default` that records each request in `seen` and answers "ok"."""

    def answer(request: ModelRequest) -> ModelResponse:
        if seen is not None:
            seen.append(request)
        return ModelResponse(**{"content": "ok", **response})

    return ModelBackend({"default": FunctionModel(answer)})


def raising(error: Exception) -> ModelBackend:
    def fail(request: ModelRequest) -> ModelResponse:
        raise error

    return ModelBackend({"default": FunctionModel(fail)})


def chat(c: openai.OpenAI, *messages: Any, **options: Any) -> Any:
    return c.chat.completions.create(model=options.pop("model", "default"), messages=messages, **options)


def first_tool_call(completion: ChatCompletion) -> Any:
    calls = completion.choices[0].message.tool_calls
    assert calls, completion
    return calls[0]


def test_client_gets_content_usage_and_the_route_as_model(gateway: Start) -> None:
    """A plain chat returns the model's text, its usage and the route name, in the chat.completion shape."""
    completion = chat(gateway(ModelBackend({"default": ScriptedModel([{"content": "Hello."}])})), USER)
    assert completion.id.startswith("chatcmpl-")
    assert (completion.object, completion.model) == ("chat.completion", "default")
    choice, usage = completion.choices[0], completion.usage
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "Hello.",
        "stop",
    )
    assert usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_tool_calls_go_out_and_their_results_come_back(gateway: Start) -> None:
    """Tool calls reach the client with JSON-string arguments; the next turn, with the results, answers."""
    c = gateway(ModelBackend({"default": ScriptedModel(SCRIPT)}))
    first = chat(c, USER, tools=[TOOL])
    call = first_tool_call(first)
    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.content is None
    assert call.function.name == "lookup_order"
    assert json.loads(call.function.arguments) == {"order_id": "A-7"}
    result = {"role": "tool", "tool_call_id": call.id, "content": '{"status": "shipped"}'}
    second = chat(c, USER, first.choices[0].message.model_dump(exclude_none=True), result, tools=[TOOL])
    assert second.choices[0].message.content == "Order A-7 has shipped."
    assert second.choices[0].finish_reason == "stop"


def test_messages_and_tools_become_a_model_request(gateway: Start) -> None:
    """Roles, tool calls, tool results, text parts and tool definitions arrive as tether types."""
    seen: list[ModelRequest] = []
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "lookup_order", "arguments": '{"id": 7}'}},
        {"id": "c2", "type": "function", "function": {"name": "lookup_order", "arguments": "{oops"}},
    ]
    chat(
        gateway(answering(seen)),
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Where is"}, {"type": "text", "text": "A-7?"}]},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "c1", "content": "shipped"},
        tools=[TOOL],
    )
    (request,) = seen
    unparsed = ToolCall("c2", "lookup_order", None, "{oops")  # arguments that are not JSON stay raw
    assert request.messages == (
        Message(role="system", content="Be brief."),
        Message(role="user", content="Where is\nA-7?"),
        Message("assistant", tool_calls=(ToolCall("c1", "lookup_order", {"id": 7}, '{"id": 7}'), unparsed)),
        Message(role="tool", content="shipped", tool_call_id="c1"),
    )
    assert request.tools == (ToolDefinition("lookup_order", "Find an order by id.", PARAMETERS),)
    assert request.turn == 1  # one assistant turn so far


def test_user_tenant_tags_and_sampling_reach_the_model_request(gateway: Start) -> None:
    """`user` is the principal, X-Tether-Tenant the tenant, X-Tether-Tags the tags; extras are tolerated."""
    seen: list[ModelRequest] = []
    c = gateway(answering(seen))
    headers = {"X-Tether-Tenant": "acme", "X-Tether-Tags": "simple, billing,,"}
    options = {"user": "customer-42", "temperature": 0.2, "max_completion_tokens": 50, "n": 1, "seed": 7}
    chat(c, USER, extra_headers=headers, extra_body={"future_field": 1}, parallel_tool_calls=False, **options)
    chat(c, USER, max_tokens=20, tools=[TOOL], tool_choice="none")
    first, second = seen
    assert (first.principal, first.tenant, first.tags) == ("customer-42", "acme", ("simple", "billing"))
    assert (first.temperature, first.max_output_tokens) == (0.2, 50)
    assert (second.principal, second.tenant, second.tags, second.max_output_tokens) == (None, None, (), 20)
    assert second.tools == ()  # tool_choice "none" is honoured by offering no tools


EVENTS: Any = (("fallback.used", {"from": "openai:gpt-4o"}), ("cache.hit", {}))


@pytest.mark.parametrize(
    ("backend", "cost", "events"),
    [
        (answering(usage=Usage(10, 2, 0.0012), events=EVENTS), "0.00120000", '["fallback.used","cache.hit"]'),
        (FunctionBackend(lambda request: ModelResponse(content="ok")), None, None),  # cost unknown
    ],
)
def test_cost_and_events_headers(gateway: Start, backend: ChatBackend, cost: str, events: str) -> None:
    """X-Tether-Cost-USD carries a known cost, X-Tether-Events the gateway's event kinds; else neither."""
    raw = gateway(backend).chat.completions.with_raw_response.create(model="default", messages=[USER])
    assert raw.parse().choices[0].message.content == "ok"
    assert (raw.headers.get("x-tether-cost-usd"), raw.headers.get("x-tether-events")) == (cost, events)


def test_routes_are_the_models_and_an_unknown_one_is_404(gateway: Start) -> None:
    """GET /v1/models lists the routes; an unknown model is a 404 naming the routes that exist."""
    c = gateway(ModelBackend({"support-default": ScriptedModel(SCRIPT), "cheap": ScriptedModel(SCRIPT)}))
    assert [m.id for m in c.models.list()] == ["support-default", "cheap"]
    assert c.models.retrieve("cheap").owned_by == "tether"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-5")
    with pytest.raises(openai.NotFoundError) as info:
        chat(c, USER, model="gpt-4o")
    assert info.value.code == "model_not_found"
    assert "'gpt-4o'" in info.value.message
    assert "support-default, cheap" in info.value.message


ONE: Any = [{"role": "user", "content": "x"}]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"model": "default", "messa', "not valid JSON"),
        (b"[1, 2]", "body"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "tool_call_id"),
        ({"messages": [{"role": "user"}]}, "needs 'content'"),
        ({"messages": ONE, "temperature": 9}, "temperature"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "only text content parts"),
        (
            {"messages": ONE, "tools": [{"type": "function", "function": {"name": "a b"}}]},
            "tools[0].function.name",
        ),
    ],
)
def test_malformed_requests_are_400_naming_the_problem(gateway: Start, body: Any, needle: str) -> None:
    """Bodies that are not JSON, not an object, or break the schema get an OpenAI-style 400."""
    content = body if isinstance(body, bytes) else json.dumps({"model": "default", **body})
    response = httpx.post(f"{gateway(answering()).base_url}chat/completions", content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert needle in error["message"]
    assert "Traceback" not in response.text


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"stream": True}, "stream"),
        ({"n": 2}, "n"),
        ({"tool_choice": "required", "tools": [TOOL]}, "tool_choice"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
    ],
)
def test_options_we_cannot_honour_are_refused(gateway: Start, options: dict[str, Any], param: str) -> None:
    """Streaming, n>1, forced tools, JSON mode and logprobs are a clear 400, never silently ignored."""
    seen: list[ModelRequest] = []
    with pytest.raises(openai.BadRequestError) as info:
        chat(gateway(answering(seen)), USER, **options)
    assert info.value.param == param
    assert info.value.code == "unsupported_parameter"
    if param == "stream":
        assert "streaming is not supported" in info.value.message
    assert seen == []


CHAIN: Any = [
    ("a", RateLimitedError("429", retry_after_s=4)),
    ("b", CircuitOpenError("x", name="b", retry_in_s=9)),
]
CLIENT_ERRORS = {400: openai.BadRequestError, 429: openai.RateLimitError}


@pytest.mark.parametrize(
    ("error", "status", "code", "retry_after"),
    [
        (RateLimitedError("upstream says slow down", retry_after_s=7), 429, "rate_limit_exceeded", "7"),
        (RateLimitExceededError("over budget", name="p", retry_in_s=2.5), 429, "rate_limit_exceeded", "3"),
        (CircuitOpenError("breaker of m is open", name="m", retry_in_s=12), 503, "circuit_open", "12"),
        (AllModelsFailedError("every model failed", errors=CHAIN), 503, "all_models_failed", "4"),
        (ModelTimeoutError("no answer within 8 s"), 504, "timeout", None),
        (BadRequestError("the upstream rejected it"), 400, None, None),
        (ContextTooLongError("too long"), 400, "context_length_exceeded", None),
        (ContentFilterError("refused"), 400, "content_filter", None),
        (AuthenticationError("upstream refused our key"), 502, "upstream_error", None),
    ],
)
def test_backend_errors_map_by_class(
    gateway: Start, error: Exception, status: int, code: Any, retry_after: Any
) -> None:
    """Each tether error class gets its status, its OpenAI error code and, when known, Retry-After."""
    with pytest.raises(openai.APIStatusError) as info:
        chat(gateway(raising(error)), USER)
    assert type(info.value) is CLIENT_ERRORS.get(status, openai.InternalServerError)
    assert (info.value.status_code, info.value.code) == (status, code)
    assert info.value.response.headers.get("retry-after") == retry_after
    assert str(error) in info.value.message


@pytest.mark.parametrize(
    ("error", "secret"),
    [
        (ModelRetryableError("model 'm' at http://10.0.0.7:8000/v1/chat/completions failed"), "10.0.0.7"),
        (RuntimeError("password=hunter2"), "hunter2"),
    ],
)
def test_failures_are_502_without_internals(gateway: Start, error: Exception, secret: str) -> None:
    """Upstream failures and backend bugs are a 502 with a message, never a traceback or an internal URL."""
    url = f"{gateway(raising(error)).base_url}chat/completions"
    response = httpx.post(url, json={"model": "default", "messages": [USER]})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "server_error"
    assert response.json()["error"]["message"]
    assert secret not in response.text
    assert "Traceback" not in response.text


def test_api_key_is_required_when_configured(gateway: Start) -> None:
    """With api_keys, a missing or wrong bearer key is a 401 on every path; a right one is served."""
    wrong = gateway(answering(), api_keys=["key-one", "key-two"], api_key="wrong")
    with pytest.raises(openai.AuthenticationError) as info:
        chat(wrong, USER)
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with client(str(wrong.base_url), api_key="key-two") as right:
        assert chat(right, USER).choices[0].message.content == "ok"
        assert [m.id for m in right.models.list()] == ["default"]
    response = httpx.get(f"{wrong.base_url}models")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


def test_empty_api_keys_are_a_configuration_error() -> None:
    """An empty key collection would lock everyone out, so it is refused at creation."""
    with pytest.raises(ConfigurationError, match="api_keys"):
        create_openai_app(answering(), api_keys=[])


def test_oversized_bodies_are_413(gateway: Start) -> None:
    """A body over 8 MiB is a 413, whether its length is declared or it arrives in chunks."""
    seen: list[ModelRequest] = []
    url = f"{gateway(answering(seen)).base_url}chat/completions"
    big = b" " * (8 * 1024 * 1024 + 1)
    with httpx.Client(timeout=30) as http:
        declared = http.post(url, content=big)
        streamed = http.post(url, content=(big[i : i + 2**18] for i in range(0, len(big), 2**18)))
        after = http.post(url, json={"model": "default", "messages": [USER]})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert "exceeds 8 MiB" in response.json()["error"]["message"]
    assert after.status_code == 200
    assert len(seen) == 1


def test_unknown_paths_get_openai_style_errors(gateway: Start) -> None:
    """Other paths and methods answer 404/405 in the OpenAI error shape."""
    base_url = gateway(answering()).base_url
    missing, wrong_method = httpx.get(f"{base_url}embeddings"), httpx.delete(f"{base_url}models")
    assert missing.status_code == 404
    assert "/v1/chat/completions" in missing.json()["error"]["message"]
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_round_trip_through_openai_model_and_fake_llm_server(gateway: Start) -> None:
    """official client → tether endpoint → tether OpenAIModel → FakeLLMServer, tool call and answer."""
    with FakeLLMServer(SCRIPT).run_in_thread() as fake:
        c = gateway(ModelBackend({"up": OpenAIModel("fake-model", base_url=fake.url, api_key="x")}))
        first = chat(c, USER, model="up", tools=[TOOL])
        call = first_tool_call(first)
        result = {"role": "tool", "tool_call_id": call.id, "content": "shipped"}
        second = chat(c, USER, first.choices[0].message.model_dump(exclude_none=True), result, model="up")
        assert fake.stats["requests"] == 2
    assert first.model == "up"
    assert (call.function.name, json.loads(call.function.arguments)) == ("lookup_order", {"order_id": "A-7"})
    assert second.choices[0].message.content == "Order A-7 has shipped."
    assert second.usage is not None
    assert second.usage.completion_tokens > 0


def test_upstream_429_reaches_the_client_with_retry_after(gateway: Start) -> None:
    """An upstream 429 with Retry-After becomes the endpoint's 429 with the same Retry-After."""
    with FakeLLMServer(
        SCRIPT, faults=[Fault("http_429", requests={1}, retry_after_s=3)]
    ).run_in_thread() as fake:
        c = gateway(ModelBackend({"up": OpenAIModel("fake-model", base_url=fake.url, api_key="x")}))
        with pytest.raises(openai.RateLimitError) as info:
            chat(c, USER, model="up")
    assert info.value.response.headers["retry-after"] == "3"
    assert "<upstream>" in info.value.message
    assert "127.0.0.1" not in info.value.message


async def test_model_backend_serves_its_routes_and_refuses_others() -> None:
    """ModelBackend lists its routes in order, answers on each and names the routes for an unknown one."""
    backend = ModelBackend(
        {"a": ScriptedModel([{"content": "from a"}]), "b": ScriptedModel([{"content": "b"}])}
    )
    assert backend.routes() == ["a", "b"]
    request = ModelRequest(messages=(Message("user", "hi"),))
    assert (await backend.complete("a", request)).content == "from a"
    with pytest.raises(BadRequestError, match="routes are a, b"):
        await backend.complete("c", request)
    await backend.aclose()
    with pytest.raises(ConfigurationError):
        ModelBackend({})


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ((), "at least one --model"),
        (("--model", "default"), "ROUTE=SPEC"),
        (("--model", "=openai:gpt-4o"), "ROUTE=SPEC"),
        (("--model", "default=nope:x"), "'default=nope:x'"),
        (("--model", "a=scripted:/no/such/file.json"), "does not exist"),
        (("--model", "a=openai:m", "--model", "a=openai:n"), "given twice"),
    ],
)
def test_gateway_command_rejects_bad_models(args: tuple[str, ...], needle: str) -> None:
    """Without a --model, or with a malformed, unknown or repeated one, `tether gateway` exits 2 naming it."""
    local = {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}  # a local server needs no key
    result = CliRunner().invoke(cli_app, ["gateway", "--port", "0", *args], env=local)
    assert result.exit_code == 2, result.output
    assert needle in result.output


def test_gateway_command_serves_until_sigterm(tmp_path: Path) -> None:
    """`tether gateway` (a real subprocess) prints its URL, serves the official client, exits 0 on SIGTERM."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": "Served by the CLI."}]))
    command = [sys.executable, "-m", "tether", "gateway", "--port", "0", "--model", f"fast=scripted:{script}"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("serving on http://127.0.0.1:"), line
        with client(line.split()[-1]) as c:
            completion = chat(c, USER, model="fast")
            assert [m.id for m in c.models.list()] == ["fast"]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert completion.choices[0].message.content == "Served by the CLI."
    assert proc.returncode == 0, err


def test_gateway_command_reports_a_port_in_use(tmp_path: Path) -> None:
    """A port that cannot be bound exits 1 with a message naming it."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps(SCRIPT))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["gateway", "--port", str(port), "--model", f"default=scripted:{script}"]
        result = CliRunner().invoke(cli_app, args)
    assert result.exit_code == 1
    assert f"127.0.0.1:{port}" in result.output
