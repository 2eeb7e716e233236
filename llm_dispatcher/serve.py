"""Running an ASGI app and a service side by side in one event loop, with staged shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
LINGER_S = 2.0  # after refusing oversized headers, how long what the client still sends is drained


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bound on the request line + headers: the parser
    buffers them whole, with no limit of its own. Over the bound: 431 and the connection closed."""

    def __init__(self, *args, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, **kwargs):
        super().__init__(*args, **kwargs)
        self._max_header_bytes = max_header_bytes
        self._head_bytes = 0
        self._in_head = True
        self._refused = False

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after the 431: read and drop, so that closing does not reset the answer away
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self._max_header_bytes and not self.transport.is_closing():
            self._refuse()

    def _refuse(self) -> None:
        body = (
            b'{"error":{"message":"request headers too large","type":"invalid_request_error",'
            b'"param":null,"code":"request_header_fields_too_large"}}'
        )
        self.logger.warning("request headers over %d bytes refused", self._max_header_bytes)
        self._refused = True
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


def bounded_http(max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES):
    """uvicorn's `http` protocol setting for BoundedHttpToolsProtocol with this bound."""
    return functools.partial(BoundedHttpToolsProtocol, max_header_bytes=max_header_bytes)


def uvicorn_server(
    app,
    host: str,
    port: int,
    log_level: str = "warning",
    *,
    loop: str = "uvloop",
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    **kwargs,
) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level.lower(),
        access_log=False,
        loop=loop,
        http=bounded_http(max_header_bytes),  # type: ignore[arg-type]
        lifespan="on",
        timeout_graceful_shutdown=kwargs.pop("timeout_graceful_shutdown", None),
        **kwargs,
    )
    return uvicorn.Server(config)


async def wait_for_signal() -> None:
    """Resolves on the first SIGINT/SIGTERM; a second one exits at once."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hits = 0

    def _handler() -> None:
        nonlocal hits
        hits += 1
        if hits > 1:
            log.warning("second signal: exiting now")
            raise SystemExit(1)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, _handler)
    await stop.wait()
