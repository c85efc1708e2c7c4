"""A fake OpenAI-compatible chat server on stdlib asyncio: scripted turns plus injected faults."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import json
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, get_args

from pydantic import ValidationError

from tether.errors import ConfigurationError
from tether.models.scripted import ScriptedTurn, load_script
from tether.types import JsonDict

FaultKind = Literal["http_500", "http_429", "hang", "slow", "malformed_json", "truncated"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)

Responder = Callable[[JsonDict], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
"""Computes a turn (the script format) from the request's JSON body, instead of a script."""

_HOST = "127.0.0.1"
_MAX_BODY_BYTES = 64 * 1024 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
}


@dataclass(frozen=True, slots=True)
class Fault:
    """Misbehave on chosen chat requests: every Nth one (`every`) or by 1-based number (`requests`).

    `retry_after_s` is the Retry-After header of `http_429` (None sends none); `delay_s` is how long
    `slow` waits before answering. `hang` never answers; `truncated` closes mid-body.
    """

    kind: FaultKind
    every: int | None = None
    requests: Collection[int] | None = None
    retry_after_s: float | None = 1.0
    delay_s: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ConfigurationError(f"unknown fault kind {self.kind!r}; use one of {', '.join(FAULT_KINDS)}")
        if (self.every is None) == (self.requests is None):
            raise ConfigurationError(f"fault {self.kind!r} needs exactly one of every= or requests=")
        if self.every is not None and self.every < 1:
            raise ConfigurationError(f"fault {self.kind!r}: every= must be at least 1")
        if self.requests is not None:
            # Frozen, and a frozenset so membership stays cheap and the caller's set cannot drift.
            object.__setattr__(self, "requests", frozenset(self.requests))

    def applies_to(self, request_number: int) -> bool:
        if self.every is not None:
            return request_number % self.every == 0
        return self.requests is not None and request_number in self.requests


@dataclass(slots=True)
class _Exchange:
    """One chat request on its connection, as fault handlers see it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: bytes
    number: int


_FaultHandler = Callable[[Fault, _Exchange], Awaitable[bool]]
"""Answers (or refuses to answer) one request; returns whether the connection stays open."""


class FakeLLMServer:
    """Serves `POST /v1/chat/completions` and `GET /v1/models` on 127.0.0.1.

    Turn N is the script's turn N, where N counts the assistant messages already in the request:
    stateless, so many concurrent runs and runs resumed after a crash all get the right turn.
    `stats` counts chat requests (`requests`) and each injected fault kind.
    """

    def __init__(
        self,
        script: Sequence[ScriptedTurn | Mapping[str, Any]] | None = None,
        *,
        responder: Responder | None = None,
        faults: Sequence[Fault] = (),
        port: int = 0,
        model_name: str = "fake-model",
    ) -> None:
        if (script is None) == (responder is None):
            raise ConfigurationError("FakeLLMServer needs either a script or a responder (not both)")
        turns = [_validate_turn(turn, f"script turn {index}") for index, turn in enumerate(script or ())]
        if script is not None and not turns:
            raise ConfigurationError("FakeLLMServer's script needs at least one turn")
        # Script answers are built once: serving them is the hot path of benchmarks.
        self._prepared = [_prepare(turn, index) for index, turn in enumerate(turns)]
        self._ends_in_tool_calls = bool(turns) and bool(turns[-1].tool_calls)
        self._responder = responder
        self._faults = tuple(faults)
        self._port = port
        self._model_name = model_name
        # Every key exists from the start so another thread can copy the dict while it changes.
        self._stats = dict.fromkeys(("requests", *FAULT_KINDS), 0)
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        # The seam for new fault kinds: one handler each, picked by `Fault.kind`.
        self._fault_handlers: dict[str, _FaultHandler] = {
            "http_500": self._fault_http_500,
            "http_429": self._fault_http_429,
            "hang": self._fault_hang,
            "slow": self._fault_slow,
            "malformed_json": self._fault_malformed_json,
            "truncated": self._fault_truncated,
        }

    @property
    def url(self) -> str:
        """The base URL for an OpenAI client, e.g. `http://127.0.0.1:8123/v1`."""
        if self._bound_port is None:
            raise RuntimeError("FakeLLMServer is not started; use `async with` or await start()")
        return f"http://{_HOST}:{self._bound_port}/v1"

    @property
    def stats(self) -> dict[str, int]:
        """A copy of the counters: `requests` (chat requests) and one per fault kind."""
        return dict(self._stats)

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("FakeLLMServer is already started")
        self._server = await asyncio.start_server(self._serve_connection, _HOST, self._port)
        self._bound_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Python 3.11 leaves open connections alone on close(); a hanging one would never end.
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> FakeLLMServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @contextlib.contextmanager
    def run_in_thread(self, *, timeout_s: float = 10.0) -> Iterator[FakeLLMServer]:
        """Serve from a daemon thread with its own event loop, for synchronous tests."""
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="fakellm", daemon=True)
        thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.start(), loop).result(timeout_s)
            try:
                yield self
            finally:
                asyncio.run_coroutine_threadsafe(self.stop(), loop).result(timeout_s)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout_s)
            loop.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        try:
            keep_alive = True
            while keep_alive:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    break  # the client closed the connection between requests
                keep_alive = await self._serve_request(head, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that goes away mid-request needs no answer
        except asyncio.CancelledError:
            # Only stop() or loop teardown cancels this; ending quietly keeps asyncio from logging
            # the cancellation as a failure of the connection callback.
            pass
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _serve_request(
        self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        try:
            method, path, headers, keep_alive = _parse_head(head)
            body = await _read_body(reader, headers)
        except _HttpError as exc:
            await _send(writer, exc.status, _error(exc.message, "invalid_request_error"), False)
            return False
        if (method, path) == ("POST", "/v1/chat/completions"):
            return await self._serve_chat(_Exchange(reader, writer, body, 0)) and keep_alive
        if (method, path) == ("GET", "/v1/models"):
            model = {"id": self._model_name, "object": "model", "created": 0, "owned_by": "tether"}
            await _send(writer, 200, {"object": "list", "data": [model]})
        else:
            message = f"no route {method} {path}; try POST /v1/chat/completions or GET /v1/models"
            await _send(writer, 404, _error(message, "invalid_request_error"))
        return keep_alive

    async def _serve_chat(self, exchange: _Exchange) -> bool:
        self._stats["requests"] += 1
        exchange.number = self._stats["requests"]
        for fault in self._faults:
            if fault.applies_to(exchange.number):
                self._stats[fault.kind] += 1
                return await self._fault_handlers[fault.kind](fault, exchange)
        status, payload = await self._answer(exchange)
        await _send(exchange.writer, status, payload)
        return True

    async def _answer(self, exchange: _Exchange) -> tuple[int, JsonDict]:
        try:
            request = json.loads(exchange.body)
        except ValueError as exc:
            return 400, _error(f"request body is not valid JSON: {exc}", "invalid_request_error")
        messages = request.get("messages") if isinstance(request, dict) else None
        if not isinstance(messages, list):
            return 400, _error("request body needs a 'messages' list", "invalid_request_error")
        if request.get("stream"):
            return 400, _error("the fake LLM server does not stream; send stream=false", "stream")
        turn_index = sum(1 for m in messages if isinstance(m, dict) and m.get("role") == "assistant")
        if self._responder is not None:
            try:
                result = self._responder(request)
                if inspect.isawaitable(result):
                    result = await result
                turn = _validate_turn(result, f"responder's turn {turn_index}")
            except Exception as exc:
                return 500, _error(f"responder failed: {type(exc).__name__}: {exc}", "server_error")
            message, finish_reason, completion_tokens = _prepare(turn, turn_index)
        elif turn_index < len(self._prepared):
            message, finish_reason, completion_tokens = self._prepared[turn_index]
        elif not self._ends_in_tool_calls:
            message, finish_reason, completion_tokens = self._prepared[-1]
        else:
            text = (
                f"the fake LLM script has {len(self._prepared)} turns but the request carries "
                f"{turn_index} assistant messages, and the last turn calls tools, so repeating it "
                "would loop; add a final content turn to the script"
            )
            return 400, _error(text, "script_exhausted")
        prompt_tokens = sum(len(_text(m.get("content"))) for m in messages if isinstance(m, dict))
        return 200, {
            "id": f"chatcmpl-fake-{exchange.number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model") or self._model_name,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
            "usage": {
                "prompt_tokens": prompt_tokens // 4,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens // 4 + completion_tokens,
            },
        }

    async def _fault_http_500(self, fault: Fault, exchange: _Exchange) -> bool:
        message = f"injected fault http_500 on request {exchange.number}"
        await _send(exchange.writer, 500, _error(message, "server_error"))
        return True

    async def _fault_http_429(self, fault: Fault, exchange: _Exchange) -> bool:
        headers = {} if fault.retry_after_s is None else {"Retry-After": f"{fault.retry_after_s:g}"}
        message = f"injected fault http_429 on request {exchange.number}: slow down"
        await _send(exchange.writer, 429, _error(message, "rate_limit_exceeded"), headers=headers)
        return True

    async def _fault_hang(self, fault: Fault, exchange: _Exchange) -> bool:
        # Wait for the client to give up and close, so a timed-out client frees this task at once.
        while await exchange.reader.read(65536):
            pass
        return False

    async def _fault_slow(self, fault: Fault, exchange: _Exchange) -> bool:
        await asyncio.sleep(fault.delay_s)
        status, payload = await self._answer(exchange)
        await _send(exchange.writer, status, payload)
        return True

    async def _fault_malformed_json(self, fault: Fault, exchange: _Exchange) -> bool:
        await _send_raw(exchange.writer, 200, b'{"id": "chatcmpl-fake", "choices": [{"mess', True)
        return True

    async def _fault_truncated(self, fault: Fault, exchange: _Exchange) -> bool:
        status, payload = await self._answer(exchange)
        body = json.dumps(payload).encode()
        # Announce the whole body, send half of it, then hang up: what a dying proxy looks like.
        await _send_raw(exchange.writer, status, body[: len(body) // 2], False, len(body))
        return False


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str], bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HttpError(400, f"malformed HTTP request line {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    # HTTP/1.1 keeps connections open unless told otherwise; HTTP/1.0 closes unless asked not to.
    keep_alive = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return method, target.split("?", 1)[0], headers, keep_alive


async def _read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _HttpError(400, f"malformed chunk size {size_line[:40]!r}") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers carry nothing this server needs
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY_BYTES:
                raise _HttpError(413, f"request body exceeds {_MAX_BODY_BYTES} bytes")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise _HttpError(400, "Content-Length is not a number") from None
    if length < 0 or length > _MAX_BODY_BYTES:
        raise _HttpError(413, f"request body must hold 0 to {_MAX_BODY_BYTES} bytes, not {length}")
    return await reader.readexactly(length)


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    payload: JsonDict,
    keep_alive: bool = True,
    *,
    headers: Mapping[str, str] | None = None,
) -> None:
    await _send_raw(writer, status, json.dumps(payload).encode(), keep_alive, headers=headers)


async def _send_raw(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    keep_alive: bool,
    content_length: int | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> None:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        "Content-Type: application/json",
        f"Content-Length: {len(body) if content_length is None else content_length}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        "Server: tether-fakellm",
    ]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def _error(message: str, code: str) -> JsonDict:
    """An error body shaped like OpenAI's, so clients surface `message` as they would OpenAI's."""
    return {"error": {"message": message, "type": code, "param": None, "code": code}}


def _validate_turn(turn: ScriptedTurn | Mapping[str, Any], where: str) -> ScriptedTurn:
    if isinstance(turn, ScriptedTurn):
        return turn
    try:
        return ScriptedTurn.model_validate(turn)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "turn"
        raise ConfigurationError(f"{where}: {field}: {first['msg']}") from None


def _prepare(turn: ScriptedTurn, turn_index: int) -> tuple[JsonDict, str, int]:
    """The assistant message, finish reason and completion tokens of a turn.

    `confidence` has no place on the OpenAI wire, so it is accepted (scripts are shared with
    ScriptedModel) but not sent.
    """
    calls: list[JsonDict] = [
        {
            "id": f"call_{turn_index}_{index}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for index, call in enumerate(turn.tool_calls or ())
    ]
    message: JsonDict = {"role": "assistant", "content": turn.content}
    if calls:
        message["tool_calls"] = calls
    text = (turn.content or "") + "".join(c["function"]["arguments"] for c in calls)
    return message, "tool_calls" if calls else "stop", len(text) // 4


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


async def _serve_until_signalled(server: FakeLLMServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        print(server.url, flush=True)
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a script in the foreground: print the URL on one line, serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m tether.testing.fakellm",
        description="A fake OpenAI-compatible chat server on 127.0.0.1 that answers from a script.",
    )
    parser.add_argument("--script", required=True, help="JSON file holding a list of turns")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 picks a free one)")
    parser.add_argument("--model", default="fake-model", help="model id listed by /v1/models")
    args = parser.parse_args(argv)
    try:
        server = FakeLLMServer(load_script(args.script), port=args.port, model_name=args.model)
        asyncio.run(_serve_until_signalled(server))
    except ConfigurationError as exc:
        print(f"fakellm: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fakellm: cannot serve on {_HOST}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
