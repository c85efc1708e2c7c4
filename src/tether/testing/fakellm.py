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
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from pydantic import ValidationError

from tether.errors import ConfigurationError
from tether.models.scripted import ScriptedTurn, load_script
from tether.testing._http import HttpError, error_body, parse_head, read_body, send, send_raw
from tether.testing.faults import FAULT_KINDS, Fault, FaultKind, counts_as_turn, parse_faults, rewrite
from tether.types import JsonDict

__all__ = ["FAULT_KINDS", "FakeLLMServer", "Fault", "FaultKind", "main", "parse_faults", "serve"]

Responder = Callable[[JsonDict], Mapping[str, Any] | Awaitable[Mapping[str, Any]]]
"""Computes a turn (the script format) from the request's JSON body, instead of a script."""

_HOST = "127.0.0.1"
# What nginx sends when the upstream dies: proxies answer 502 in HTML, not in the API's JSON.
_BAD_GATEWAY_HTML = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


@dataclass(slots=True)
class _Exchange:
    """One chat request on its connection, as fault handlers see it."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    body: bytes
    number: int
    request: JsonDict = field(default_factory=dict)
    turn: int = 0


_FaultHandler = Callable[[Fault, _Exchange], Awaitable[bool]]
"""Answers (or refuses to answer) one request; returns whether the connection stays open."""


class FakeLLMServer:
    """Serves `POST /v1/chat/completions` and `GET /v1/models` on 127.0.0.1.

    Turn N is the script's turn N, where N counts the assistant messages already in the request
    (except hallucinated turns, whose tool call ids end in FAULT_CALL_SUFFIX): stateless, so many
    concurrent runs and runs resumed after a crash all get the right turn.

    Faults are checked in order on each chat request and the first that applies is injected; `seed`
    drives the `rate` ones. `stats` counts chat requests (`requests`) and each injected fault kind;
    `GET /_stats` returns them as JSON and `POST /_reset` zeroes them and restarts request numbers.
    """

    def __init__(
        self,
        script: Sequence[ScriptedTurn | Mapping[str, Any]] | None = None,
        *,
        responder: Responder | None = None,
        faults: Sequence[Fault] = (),
        port: int = 0,
        model_name: str = "fake-model",
        seed: int = 0,
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
        if not all(isinstance(fault, Fault) for fault in self._faults):
            raise ConfigurationError("FakeLLMServer's faults must be Fault objects (see parse_faults)")
        self._seed = seed
        self._port = port
        self._model_name = model_name
        # Every key exists from the start so another thread can copy the dict while it changes.
        self._stats = dict.fromkeys(("requests", *FAULT_KINDS), 0)
        # Headers of the latest chat request (lower-case names), for tests of what a client sends.
        self.last_headers: dict[str, str] = {}
        self._server: asyncio.Server | None = None
        self._bound_port: int | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        # The seam for new fault kinds: one handler each, picked by `Fault.kind`.
        self._fault_handlers: dict[str, _FaultHandler] = {
            "http_500": self._fault_http_500,
            "http_502": self._fault_http_502,
            "http_503": self._fault_http_503,
            "http_429": self._fault_http_429,
            "hang": self._fault_hang,
            "slow": self._fault_slow,
            "malformed_json": self._fault_malformed_json,
            "truncated": self._fault_truncated,
            "hallucinated_tool": self._fault_rewrite,
            "hallucinated_arguments": self._fault_rewrite,
            "injection": self._fault_rewrite,
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

    def reset_stats(self) -> None:
        """Zero the counters; request numbers, and so fault schedules, start over."""
        for key in self._stats:
            self._stats[key] = 0

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
            method, path, headers, keep_alive = parse_head(head)
            body = await read_body(reader, headers)
        except HttpError as exc:
            await send(writer, exc.status, error_body(exc.message, "invalid_request_error"), False)
            return False
        if (method, path) == ("POST", "/v1/chat/completions"):
            self.last_headers = {name.lower(): value for name, value in headers.items()}
            return await self._serve_chat(_Exchange(reader, writer, body, 0)) and keep_alive
        if (method, path) == ("GET", "/v1/models"):
            model = {"id": self._model_name, "object": "model", "created": 0, "owned_by": "tether"}
            await send(writer, 200, {"object": "list", "data": [model]})
        elif (method, path) == ("GET", "/_stats"):
            await send(writer, 200, self.stats)
        elif (method, path) == ("POST", "/_reset"):
            self.reset_stats()
            await send(writer, 200, self.stats)
        else:
            message = (
                f"no route {method} {path}; try POST /v1/chat/completions, GET /v1/models, "
                "GET /_stats or POST /_reset"
            )
            await send(writer, 404, error_body(message, "invalid_request_error"))
        return keep_alive

    async def _serve_chat(self, exchange: _Exchange) -> bool:
        self._stats["requests"] += 1
        exchange.number = self._stats["requests"]
        for position, fault in enumerate(self._faults):
            if fault.applies_to(exchange.number, seed=self._seed, position=position):
                # Each handler counts its fault once it is sure to inject it.
                return await self._fault_handlers[fault.kind](fault, exchange)
        status, payload = await self._answer(exchange)
        await send(exchange.writer, status, payload)
        return True

    def _count(self, fault: Fault) -> None:
        self._stats[fault.kind] += 1

    async def _answer(self, exchange: _Exchange) -> tuple[int, JsonDict]:
        try:
            request = json.loads(exchange.body)
        except ValueError as exc:
            return 400, error_body(f"request body is not valid JSON: {exc}", "invalid_request_error")
        messages = request.get("messages") if isinstance(request, dict) else None
        if not isinstance(messages, list):
            return 400, error_body("request body needs a 'messages' list", "invalid_request_error")
        if request.get("stream"):
            return 400, error_body("the fake LLM server does not stream; send stream=false", "stream")
        exchange.request = request
        turn_index = exchange.turn = sum(1 for m in messages if counts_as_turn(m))
        if self._responder is not None:
            try:
                result = self._responder(request)
                if inspect.isawaitable(result):
                    result = await result
                turn = _validate_turn(result, f"responder's turn {turn_index}")
            except Exception as exc:
                return 500, error_body(f"responder failed: {type(exc).__name__}: {exc}", "server_error")
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
            return 400, error_body(text, "script_exhausted")
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
        self._count(fault)
        message = f"injected fault http_500 on request {exchange.number}"
        await send(exchange.writer, 500, error_body(message, "server_error"))
        return True

    async def _fault_http_502(self, fault: Fault, exchange: _Exchange) -> bool:
        self._count(fault)
        await send_raw(exchange.writer, 502, _BAD_GATEWAY_HTML, True, content_type="text/html")
        return True

    async def _fault_http_503(self, fault: Fault, exchange: _Exchange) -> bool:
        self._count(fault)
        message = f"injected fault http_503 on request {exchange.number}: the server is overloaded"
        await send(
            exchange.writer, 503, error_body(message, "service_unavailable"), headers=_retry_after(fault)
        )
        return True

    async def _fault_http_429(self, fault: Fault, exchange: _Exchange) -> bool:
        self._count(fault)
        message = f"injected fault http_429 on request {exchange.number}: slow down"
        await send(
            exchange.writer, 429, error_body(message, "rate_limit_exceeded"), headers=_retry_after(fault)
        )
        return True

    async def _fault_hang(self, fault: Fault, exchange: _Exchange) -> bool:
        self._count(fault)
        # Wait for the client to give up and close, so a timed-out client frees this task at once.
        while await exchange.reader.read(65536):
            pass
        return False

    async def _fault_slow(self, fault: Fault, exchange: _Exchange) -> bool:
        self._count(fault)
        await asyncio.sleep(fault.delay_s)
        status, payload = await self._answer(exchange)
        await send(exchange.writer, status, payload)
        return True

    async def _fault_malformed_json(self, fault: Fault, exchange: _Exchange) -> bool:
        self._count(fault)
        await send_raw(exchange.writer, 200, b'{"id": "chatcmpl-fake", "choices": [{"mess', True)
        return True

    async def _fault_truncated(self, fault: Fault, exchange: _Exchange) -> bool:
        self._count(fault)
        status, payload = await self._answer(exchange)
        body = json.dumps(payload).encode()
        # Announce the whole body, send half of it, then hang up: what a dying proxy looks like.
        await send_raw(exchange.writer, status, body[: len(body) // 2], False, len(body))
        return False

    async def _fault_rewrite(self, fault: Fault, exchange: _Exchange) -> bool:
        status, payload = await self._answer(exchange)
        if status == 200:
            choice = payload["choices"][0]
            call_id = f"call_{exchange.turn}_0"
            message = rewrite(fault, choice["message"], exchange.request, call_id=call_id)
            if message is not None:
                self._count(fault)
                finish_reason = "tool_calls" if message.get("tool_calls") else "stop"
                payload["choices"] = [{**choice, "message": message, "finish_reason": finish_reason}]
        await send(exchange.writer, status, payload)
        return True


def _retry_after(fault: Fault) -> dict[str, str]:
    return {} if fault.retry_after_s is None else {"Retry-After": f"{fault.retry_after_s:g}"}


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


def _print_url(url: str) -> None:
    print(url, flush=True)


async def _serve_until_signalled(server: FakeLLMServer, ready: Callable[[str], None]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        ready(server.url)
        await stop.wait()


def serve(
    script: str | Path,
    *,
    faults: str = "",
    port: int = 0,
    model_name: str = "fake-model",
    ready: Callable[[str], None] = _print_url,
) -> None:
    """Serve a script file in the foreground until SIGTERM/SIGINT; `ready` gets the URL once bound.

    `faults` is a spec for parse_faults. Raises ConfigurationError for a bad script or spec, and
    OSError when the port cannot be bound.
    """
    server = FakeLLMServer(load_script(script), faults=parse_faults(faults), port=port, model_name=model_name)
    asyncio.run(_serve_until_signalled(server, ready))


def main(argv: Sequence[str] | None = None) -> int:
    """Serve a script in the foreground: print the URL on one line, serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m tether.testing.fakellm",
        description="A fake OpenAI-compatible chat server on 127.0.0.1 that answers from a script.",
    )
    parser.add_argument("--script", required=True, help="JSON file holding a list of turns")
    parser.add_argument("--faults", default="", help="faults to inject, e.g. 'http_500:rate=0.2,seed=7'")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0 picks a free one)")
    parser.add_argument("--model", default="fake-model", help="model id listed by /v1/models")
    args = parser.parse_args(argv)
    try:
        serve(args.script, faults=args.faults, port=args.port, model_name=args.model)
    except ConfigurationError as exc:
        print(f"fakellm: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"fakellm: cannot serve on {_HOST}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
