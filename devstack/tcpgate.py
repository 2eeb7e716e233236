"""A loopback TCP forwarder in front of a real server, to cut it off without touching it.

    gate = TcpGate(("127.0.0.1", 5432))
    await gate.open()        # clients connect to 127.0.0.1:gate.port and reach the server
    await gate.close()       # the outage: new connections refused, open ones cut
    await gate.open()        # the recovery (the same port)

It runs on the caller's event loop; it is meant for light traffic (a database's), not for load.
"""

from __future__ import annotations

import asyncio
import contextlib

from devstack.net import free_port


class TcpGate:
    def __init__(self, target: tuple[str, int], port: int | None = None):
        self.target = target
        self.port = port or free_port()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port, reuse_address=True)

    async def close(self) -> None:
        """Refuse new connections and cut the open ones (both directions)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pair = {writer, up_writer}
        self._writers |= pair

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers -= pair
