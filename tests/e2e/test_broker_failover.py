"""The broker drops every connection of the stack: streams keep flowing, waiters fail fast with 503,
and everything reconnects by itself."""

from __future__ import annotations

import asyncio
import shutil
import time

import httpx
import pytest

from tests.fixtures import broker

MODEL = "sim-model"

pytestmark = pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl on this machine")


def close_connections(prefix: str) -> int:
    """Close, broker-side, every AMQP connection whose name mentions this test's queue prefix."""
    return broker.close_connections(prefix, "test: broker failover")


async def test_broker_connection_loss_keeps_streams_fails_waiters_fast_and_recovers(stack_factory):
    s = stack_factory(queue_timeout_s=30.0)
    sim = s.add_sim(model=MODEL, itl_base=0.05)
    consumer = s.add_consumer(MODEL, sim, max_concurrency=1)
    token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({MODEL}, token)
    headers = {"authorization": f"Bearer {token}"}
    stream_body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 150, "stream": True}
    short = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}

    async with httpx.AsyncClient(timeout=30) as client:

        async def stream() -> tuple[int, bytes]:
            async with client.stream("POST", s.base_url + "/chat/completions", json=stream_body, headers=headers) as r:
                return r.status_code, b"".join([c async for c in r.aiter_bytes()])

        streaming = asyncio.create_task(stream())
        while consumer.in_flight != 1:
            await asyncio.sleep(0.01)
        waiting = asyncio.create_task(client.post(s.base_url + "/chat/completions", json=short, headers=headers))
        await asyncio.sleep(0.3)
        assert not waiting.done()

        assert await asyncio.to_thread(close_connections, s.sender_settings.queue_prefix) == 2
        t0 = time.monotonic()
        waited = await waiting
        failed_after = time.monotonic() - t0  # after the second close; the first one was the sender's
        status, body = await streaming

    assert waited.status_code == 503 and waited.json()["error"]["code"] == "broker_unavailable"
    assert "retry-after" in waited.headers
    assert failed_after < 0.5
    assert status == 200 and body.rstrip().endswith(b"data: [DONE]")  # the stream was not cut

    deadline = time.monotonic() + 20
    while True:  # reconnected by themselves
        r = httpx.post(s.base_url + "/chat/completions", json=short, headers=headers, timeout=10)
        if r.status_code == 200:
            break
        assert time.monotonic() < deadline, r.text
        time.sleep(0.3)
    s.wait_idle(timeout=10)  # the release of the stream that ended while disconnected arrived too
