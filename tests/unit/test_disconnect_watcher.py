"""The client-disconnect watcher of a proxied request: it cancels the request while it is served, and
never once the request has started recording its end."""

from __future__ import annotations

import asyncio

from sender.endpoint import DisconnectWatcher


def receive_until(gone: asyncio.Event):
    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    return receive


async def test_a_disconnect_while_served_cancels_the_request():
    gone = asyncio.Event()

    async def request() -> None:
        watcher = DisconnectWatcher(receive_until(gone), asyncio.current_task())
        try:
            await asyncio.sleep(10)
        finally:
            watcher.close()

    task = asyncio.create_task(request())
    await asyncio.sleep(0)
    gone.set()
    await asyncio.wait_for(asyncio.wait({task}), 1)
    assert task.cancelled()


async def test_a_disconnect_that_arrives_as_the_watcher_closes_cancels_nothing():
    gone = asyncio.Event()
    recorded = []

    async def request() -> None:
        watcher = DisconnectWatcher(receive_until(gone), asyncio.current_task())
        await asyncio.sleep(0)  # the reader now waits for the disconnect
        gone.set()
        await asyncio.sleep(0)  # the reader ends: its done callback is scheduled, not yet run
        watcher.close()  # the response is complete: recording its end begins
        await asyncio.sleep(0)  # the callback runs here, as a release publish would wait here
        await asyncio.sleep(0)
        recorded.append("released")

    await asyncio.wait_for(request(), 1)
    assert recorded == ["released"]
