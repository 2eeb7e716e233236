"""The few ASGI pieces the simulator needs: types, response headers, sending JSON, reading a body.

The simulator is a raw ASGI app (no framework), so that it is never a benchmark's bottleneck.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON: Headers = [(b"content-type", b"application/json")]
SSE: Headers = [(b"content-type", b"text/event-stream; charset=utf-8")]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of a request header (``name`` in lower case), or None."""
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def json_start(status: int, body: bytes, headers: Headers | None = None) -> Message:
    """The response start of a JSON body of known length."""
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [*JSON, (b"content-length", str(len(body)).encode()), *(headers or ())],
    }


async def send_json(send: Send, status: int, body: bytes, headers: Headers | None = None) -> None:
    await send(json_start(status, body, headers))
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    """The whole request body; empty when the client disconnects first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)
