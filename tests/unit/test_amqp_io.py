"""The broker connection's writer: the frames of one loop turn leave in one socket write, in order."""

from __future__ import annotations

import asyncio

from llm_dispatcher.amqp_io import CoalescingWriter


class RecordingWriter:
    """What the socket would be asked to send, write by write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.drained = 0
        self.closed = False
        self.eof = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    async def drain(self) -> None:
        self.drained += 1

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"extra:{name}"


async def test_frames_written_in_one_turn_leave_in_one_write_in_order():
    raw = RecordingWriter()
    writer = CoalescingWriter(raw)  # type: ignore[arg-type]
    for frame in (b"grant", b"ack", b"ticket"):
        writer.write(frame)
    assert raw.writes == []  # nothing sent before the turn ends
    await asyncio.sleep(0)
    assert raw.writes == [b"grantackticket"]
    writer.write(b"next")
    await asyncio.sleep(0)
    assert raw.writes == [b"grantackticket", b"next"]


async def test_drain_eof_and_close_send_what_is_buffered_first():
    raw = RecordingWriter()
    writer = CoalescingWriter(raw)  # type: ignore[arg-type]
    writer.write(b"heartbeat")
    await writer.drain()
    assert raw.writes == [b"heartbeat"] and raw.drained == 1
    writer.write(b"close-ok")
    writer.write_eof()
    assert raw.writes[-1] == b"close-ok" and raw.eof
    writer.write(b"last")
    writer.close()
    assert raw.writes[-1] == b"last" and raw.closed
    await asyncio.sleep(0)
    assert raw.writes == [b"heartbeat", b"close-ok", b"last"]  # the scheduled flushes find nothing more


async def test_nothing_is_written_to_a_closing_socket_and_the_rest_is_delegated():
    raw = RecordingWriter()
    writer = CoalescingWriter(raw)  # type: ignore[arg-type]
    writer.write(b"late")
    raw.closed = True
    await asyncio.sleep(0)
    assert raw.writes == []
    assert writer.get_extra_info("peername") == "extra:peername"
    assert writer.is_closing()
