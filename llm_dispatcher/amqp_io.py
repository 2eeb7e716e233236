"""Fewer system calls per request on the broker connection: the AMQP frames written within one turn
of the event loop go out in one socket write.

aiormq's writer task writes every frame (a publish, an ack, a heartbeat) with its own `write()`, and
on a loopback socket each write is a system call that also runs the receiving side's TCP input. A
consumer's grant and the ack of its ticket, a sender's tickets and releases of one turn, are
written in the same turn: joined, they cost one call. The frames keep their order (one buffer, one
connection) and leave at the end of the turn (`loop.call_soon`), before anything waits on the
socket: `drain()`, `write_eof()` and `close()` write what is buffered first.

Plugged in through the libraries' own extension points: aiormq's `transport_factory` and aio-pika's
`connection_class`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL


class CoalescingWriter:
    """A StreamWriter whose writes of one loop turn are joined into one (everything else delegated)."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self._buffer: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not self._buffer:
            self._loop.call_soon(self.flush)
        self._buffer.append(data)

    def flush(self) -> None:
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else b"".join(self._buffer)
        self._buffer.clear()
        if not self._writer.is_closing():
            self._writer.write(data)

    async def drain(self) -> None:
        self.flush()
        await self._writer.drain()

    def write_eof(self) -> None:
        self.flush()
        self._writer.write_eof()

    def close(self) -> None:
        self.flush()
        self._writer.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._writer, name)


class CoalescingTransports(TransportFactory):
    """aiormq's own TCP or TLS transport, its writer a CoalescingWriter."""

    def __init__(self, tls: bool):
        self._inner = TLSTransportFactory() if tls else TCPTransportFactory()

    async def create(self, url: URL, **kwargs: Any) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await self._inner.create(url, **kwargs)
        return reader, CoalescingWriter(writer)  # type: ignore[return-value]  # a StreamWriter by its methods


class CoalescingRobustConnection(aio_pika.RobustConnection):
    """aio-pika's robust connection, every (re)connection made with CoalescingTransports."""

    def __init__(self, url: URL, *args: Any, **kwargs: Any):
        super().__init__(url, *args, **kwargs)
        self.kwargs["transport_factory"] = CoalescingTransports(tls=URL(url).scheme == "amqps")
