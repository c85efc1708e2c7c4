"""The fake OpenAI-compatible server: scripts, responders, faults, HTTP details and entry points."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tether.errors import ConfigurationError
from tether.testing.fakellm import FakeLLMServer, Fault, main

USER = {"role": "user", "content": "What is the weather in Oslo today?"}
TOOL_TURN: dict[str, Any] = {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]}
SCRIPT: list[dict[str, Any]] = [TOOL_TURN, {"content": "It is cold in Oslo."}]


def assistant(content: str = "...") -> dict[str, Any]:
    return {"role": "assistant", "content": content}


async def chat(server: FakeLLMServer, messages: list[dict[str, Any]]) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.post(f"{server.url}/chat/completions", json={"model": "m", "messages": messages})


async def exchange(port: int, requests: list[bytes]) -> list[bytes]:
    """Send raw requests one after another on a single connection; return each raw response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    responses = []
    try:
        for raw in requests:
            writer.write(raw)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            responses.append(head + await reader.readexactly(length))
    finally:
        writer.close()
        await writer.wait_closed()
    return responses


async def test_turn_index_counts_assistant_messages() -> None:
    """The answer is the script's turn N, N being the assistant messages already in the request."""
    async with FakeLLMServer(SCRIPT) as server:
        first = (await chat(server, [USER])).json()
        second = (await chat(server, [USER, assistant(), {"role": "tool", "content": "-3"}])).json()
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert first["choices"][0]["message"]["content"] is None
    assert second["choices"][0]["message"]["content"] == "It is cold in Oslo."
    assert second["choices"][0]["finish_reason"] == "stop"


async def test_tool_call_ids_are_deterministic() -> None:
    """Tool call ids are call_{turn}_{index} and arguments are JSON strings."""
    turn = {"tool_calls": [{"name": "a", "arguments": {"x": 1}}, {"name": "b"}]}
    async with FakeLLMServer([{"content": "start"}, turn]) as server:
        body = (await chat(server, [USER, assistant()])).json()
    calls = body["choices"][0]["message"]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1_0", "call_1_1"]
    assert [c["type"] for c in calls] == ["function", "function"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"x": 1}


async def test_usage_is_estimated_from_text_length() -> None:
    """prompt_tokens and completion_tokens are len(text) // 4 of the prompt and the answer."""
    async with FakeLLMServer([{"content": "It is cold in Oslo."}]) as server:
        usage = (await chat(server, [USER])).json()["usage"]
    assert usage["prompt_tokens"] == len(USER["content"]) // 4
    assert usage["completion_tokens"] == len("It is cold in Oslo.") // 4
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_past_the_end_repeats_a_final_content_turn() -> None:
    """Past the end of the script the last turn answers again when it is a content turn."""
    async with FakeLLMServer(SCRIPT) as server:
        response = await chat(server, [USER, assistant(), assistant(), assistant()])
    assert response.json()["choices"][0]["message"]["content"] == "It is cold in Oslo."


async def test_past_the_end_after_a_tool_turn_is_an_error() -> None:
    """Past the end of a script ending in tool calls the server answers 400 explaining why."""
    async with FakeLLMServer([TOOL_TURN]) as server:
        response = await chat(server, [USER, assistant()])
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "script_exhausted"
    assert "add a final content turn" in error["message"]


async def test_responder_computes_each_turn() -> None:
    """A responder maps the request JSON to a turn, here echoing the last message."""

    def echo(body: dict[str, Any]) -> dict[str, Any]:
        return {"content": f"echo: {body['messages'][-1]['content']}"}

    async with FakeLLMServer(responder=echo) as server:
        body = (await chat(server, [USER])).json()
    assert body["choices"][0]["message"]["content"] == f"echo: {USER['content']}"


async def test_async_responder_is_awaited() -> None:
    """An async responder is awaited before the answer is built."""

    async def later(body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        return {"content": "awaited"}

    async with FakeLLMServer(responder=later) as server:
        body = (await chat(server, [USER])).json()
    assert body["choices"][0]["message"]["content"] == "awaited"


async def test_responder_returning_a_bad_turn_is_a_500() -> None:
    """A responder whose turn is invalid yields a 500 whose message names the problem."""
    async with FakeLLMServer(responder=lambda body: {"words": "?"}) as server:
        response = await chat(server, [USER])
    assert response.status_code == 500
    assert "responder" in response.json()["error"]["message"]


async def test_every_nth_fault_and_stats() -> None:
    """`every=2` fails requests 2 and 4, and stats count requests and faults."""
    async with FakeLLMServer(SCRIPT, faults=[Fault("http_500", every=2)]) as server:
        statuses = [(await chat(server, [USER])).status_code for _ in range(4)]
        stats = server.stats
    assert statuses == [200, 500, 200, 500]
    assert stats["requests"] == 4
    assert stats["http_500"] == 2
    assert stats["http_429"] == 0


async def test_fault_by_request_number_with_retry_after() -> None:
    """`requests={1, 3}` rate-limits exactly those requests, with the Retry-After header."""
    fault = Fault("http_429", requests={1, 3}, retry_after_s=2)
    async with FakeLLMServer(SCRIPT, faults=[fault]) as server:
        responses = [await chat(server, [USER]) for _ in range(3)]
    assert [r.status_code for r in responses] == [429, 200, 429]
    assert responses[0].headers["retry-after"] == "2"
    assert server.stats["http_429"] == 2


async def test_slow_fault_delays_the_answer() -> None:
    """A slow fault answers normally, only after delay_s."""
    fault = Fault("slow", every=1, delay_s=0.3)
    async with FakeLLMServer(SCRIPT, faults=[fault]) as server:
        started = time.monotonic()
        response = await chat(server, [USER, assistant()])
        elapsed = time.monotonic() - started
    assert elapsed >= 0.3
    assert response.json()["choices"][0]["message"]["content"] == "It is cold in Oslo."


async def test_hang_fault_never_answers() -> None:
    """A hang fault sends nothing, so the client times out."""
    async with FakeLLMServer(SCRIPT, faults=[Fault("hang", every=1)]) as server:
        async with httpx.AsyncClient(timeout=0.2) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(f"{server.url}/chat/completions", json={"messages": [USER]})
        assert server.stats["hang"] == 1


async def test_stop_ends_a_hanging_connection() -> None:
    """stop() returns while a client still waits on a hang, and closes that connection unanswered."""
    server = FakeLLMServer(SCRIPT, faults=[Fault("hang", every=1)])
    await server.start()
    port = int(server.url.split(":")[2].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        body = b'{"messages": []}'
        writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 16\r\n\r\n" + body)
        await writer.drain()
        await asyncio.wait_for(server.stop(), timeout=5)
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_json_fault_sends_invalid_json() -> None:
    """A malformed_json fault answers 200 with a body that does not parse."""
    async with FakeLLMServer(SCRIPT, faults=[Fault("malformed_json", every=1)]) as server:
        response = await chat(server, [USER])
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_truncated_fault_cuts_the_body_short() -> None:
    """A truncated fault announces the full length, sends half and closes the connection."""
    async with FakeLLMServer(SCRIPT, faults=[Fault("truncated", every=1)]) as server:
        with pytest.raises(httpx.RemoteProtocolError):
            await chat(server, [USER])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kind": "explode", "every": 1},
        {"kind": "http_500"},
        {"kind": "http_500", "every": 2, "requests": {1}},
        {"kind": "http_500", "every": 0},
    ],
)
def test_invalid_faults_are_configuration_errors(kwargs: dict[str, Any]) -> None:
    """A fault with an unknown kind or without exactly one valid trigger is refused."""
    with pytest.raises(ConfigurationError, match="fault"):
        Fault(**kwargs)


@pytest.mark.parametrize(
    ("script", "responder", "match"),
    [
        (None, None, "script or a responder"),
        ([{"content": "x"}], lambda body: {"content": "y"}, "script or a responder"),
        ([], None, "at least one turn"),
        ([{"content": "x"}, {"confidence": 0.5}], None, "script turn 1"),
    ],
)
def test_invalid_server_setup_is_a_configuration_error(script: Any, responder: Any, match: str) -> None:
    """Missing, doubled, empty or invalid scripts fail at construction with the bad turn named."""
    with pytest.raises(ConfigurationError, match=match):
        FakeLLMServer(script, responder=responder)


async def test_models_endpoint_lists_the_model() -> None:
    """GET /v1/models lists the configured model id."""
    async with FakeLLMServer(SCRIPT, model_name="fake-7b") as server, httpx.AsyncClient() as c:
        body = (await c.get(f"{server.url}/models")).json()
    assert [model["id"] for model in body["data"]] == ["fake-7b"]


@pytest.mark.parametrize(
    ("method", "path", "content", "status", "match"),
    [
        ("GET", "/v1/nowhere", b"", 404, "no route"),
        ("GET", "/v1/chat/completions", b"", 404, "POST /v1/chat/completions"),
        ("POST", "/v1/chat/completions", b"{not json", 400, "not valid JSON"),
        ("POST", "/v1/chat/completions", b'{"model": "m"}', 400, "'messages' list"),
        ("POST", "/v1/chat/completions", b'{"messages": [], "stream": true}', 400, "stream"),
    ],
)
async def test_bad_requests_get_explanatory_errors(
    method: str, path: str, content: bytes, status: int, match: str
) -> None:
    """Unknown routes, wrong methods, bad JSON and streaming get OpenAI-shaped errors."""
    async with FakeLLMServer(SCRIPT) as server, httpx.AsyncClient() as client:
        url = server.url.removesuffix("/v1") + path
        response = await client.request(method, url, content=content)
    assert response.status_code == status
    assert match in response.json()["error"]["message"]


async def test_keep_alive_serves_several_requests_on_one_connection() -> None:
    """Two requests on one connection get two answers; chunked request bodies are read."""
    body = json.dumps({"messages": [USER]}).encode()
    plain = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    chunked = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    async with FakeLLMServer([{"content": "same socket"}]) as server:
        port = int(server.url.split(":")[2].split("/")[0])
        responses = await exchange(port, [plain, chunked])
    assert len(responses) == 2
    for response in responses:
        assert response.startswith(b"HTTP/1.1 200")
        assert b"same socket" in response


async def test_official_openai_client_is_wire_compatible() -> None:
    """The official openai client gets the scripted content and tool calls from the fake server."""
    async with (
        FakeLLMServer(SCRIPT) as server,
        openai.AsyncOpenAI(base_url=server.url, api_key="sk-fake", max_retries=0) as client,
    ):
        first = await client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "Weather?"}]
        )
        second = await client.chat.completions.create(
            model="fake-model",
            messages=[
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "checking"},
            ],
        )
        models = await client.models.list()
    calls = first.choices[0].message.tool_calls
    assert calls is not None
    assert calls[0].id == "call_0_0"
    assert calls[0].function.name == "weather"  # type: ignore[union-attr]
    assert second.choices[0].message.content == "It is cold in Oslo."
    assert [m.id for m in models.data] == ["fake-model"]


def test_run_in_thread_serves_synchronous_clients() -> None:
    """run_in_thread serves from its own loop, so plain synchronous code can call it."""
    server = FakeLLMServer([{"content": "from a thread"}])
    with server.run_in_thread() as running, httpx.Client() as client:
        response = client.post(f"{running.url}/chat/completions", json={"messages": [USER]})
    assert response.json()["choices"][0]["message"]["content"] == "from a thread"
    assert server.stats["requests"] == 1


def test_url_before_start_is_an_error() -> None:
    """Asking for the URL of a server that is not started says how to start it."""
    with pytest.raises(RuntimeError, match="not started"):
        _ = FakeLLMServer(SCRIPT).url


def test_module_entry_point_prints_url_and_serves(tmp_path: Path) -> None:
    """`python -m tether.testing.fakellm` prints its URL, serves the script and exits on SIGTERM."""
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": "from a subprocess"}]), encoding="utf-8")
    command = [sys.executable, "-m", "tether.testing.fakellm", "--script", str(script)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            url = process.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            assert url.endswith("/v1")
            response = httpx.post(f"{url}/chat/completions", json={"messages": [USER]})
            assert response.json()["choices"][0]["message"]["content"] == "from a subprocess"
        finally:
            process.terminate()
            returncode = process.wait(timeout=10)
    assert returncode == 0


def test_entry_point_reports_a_missing_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing script file exits with code 2 and names the file on stderr."""
    missing = tmp_path / "missing.json"
    assert main(["--script", str(missing)]) == 2
    assert "missing.json" in capsys.readouterr().err
