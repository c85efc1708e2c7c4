"""The little HTTP/1.1 the fake LLM server speaks: request heads, bodies (plain or chunked), answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping

from tether.types import JsonDict

_MAX_BODY_BYTES = 64 * 1024 * 1024
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_head(head: bytes) -> tuple[str, str, dict[str, str], bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"malformed HTTP request line {lines[0][:100]!r}")
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


async def read_body(reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HttpError(400, f"malformed chunk size {size_line[:40]!r}") from None
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers carry nothing this server needs
                return b"".join(chunks)
            total += size
            if total > _MAX_BODY_BYTES:
                raise HttpError(413, f"request body exceeds {_MAX_BODY_BYTES} bytes")
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "Content-Length is not a number") from None
    if length < 0 or length > _MAX_BODY_BYTES:
        raise HttpError(413, f"request body must hold 0 to {_MAX_BODY_BYTES} bytes, not {length}")
    return await reader.readexactly(length)


async def send(
    writer: asyncio.StreamWriter,
    status: int,
    payload: JsonDict,
    keep_alive: bool = True,
    *,
    headers: Mapping[str, str] | None = None,
) -> None:
    await send_raw(writer, status, json.dumps(payload).encode(), keep_alive, headers=headers)


async def send_raw(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    keep_alive: bool,
    content_length: int | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str = "application/json",
) -> None:
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body) if content_length is None else content_length}",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
        "Server: tether-fakellm",
    ]
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()


def error_body(message: str, code: str) -> JsonDict:
    """An error body shaped like OpenAI's, so clients surface `message` as they would OpenAI's."""
    return {"error": {"message": message, "type": code, "param": None, "code": code}}
