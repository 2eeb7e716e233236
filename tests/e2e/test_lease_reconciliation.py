"""After a broker reconnect a consumer cannot know which releases were lost: every lease is in doubt
until its holder renews it. A sender still streaming renews at once (it sees the consumer's new
connection epoch in a heartbeat) and keeps its lease; a lease nobody holds any more is reclaimed
within `lease_reconcile_s`, not after the lease TTL."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid

import aio_pika
import httpx
import pytest

from llm_dispatcher import protocol
from llm_dispatcher.protocol import Grant, Ticket
from tests.fixtures import broker

MODEL = "sim-model"
RECONCILE_S = 2.0

pytestmark = pytest.mark.skipif(shutil.which("rabbitmqctl") is None, reason="needs rabbitmqctl on this machine")


def close_consumer_connections(prefix: str) -> int:
    return broker.close_connections(f"consumer:{prefix}", "test: consumer reconnect")


async def take_an_orphan_lease(amqp_url: str, prefix: str) -> Grant:
    """A ticket granted to a 'sender' that then vanishes without releasing it."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True, auto_delete=True)
        ticket = Ticket(id=uuid.uuid4().hex, model=MODEL, priority=5, deadline_ms=protocol.now_ms() + 30_000)
        await channel.default_exchange.publish(
            aio_pika.Message(ticket.dumps(), priority=5, correlation_id=ticket.id, reply_to=replies.name),
            routing_key=protocol.model_queue(prefix, MODEL),
        )
        async with replies.iterator() as it:
            async for message in it:
                await message.ack()
                return Grant.loads(message.body)
    raise AssertionError("no grant")


async def test_after_a_reconnect_orphan_leases_are_reclaimed_and_streaming_ones_kept(stack_factory, amqp_url):
    s = stack_factory(queue_timeout_s=10.0)
    sim = s.add_sim(model=MODEL, itl_base=0.05)
    consumer = s.add_consumer(MODEL, sim, max_concurrency=4, lease_ttl_s=300.0, lease_reconcile_s=RECONCILE_S)
    token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({MODEL}, token)
    prefix = s.sender_settings.queue_prefix

    await take_an_orphan_lease(amqp_url, prefix)
    assert consumer.in_flight == 1
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 200, "stream": True}  # ~10 s
    async with httpx.AsyncClient(timeout=30) as client:

        async def stream() -> tuple[int, bytes]:
            async with client.stream(
                "POST", s.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
            ) as r:
                return r.status_code, b"".join([c async for c in r.aiter_bytes()])

        streaming = asyncio.create_task(stream())
        while consumer.in_flight != 2:
            await asyncio.sleep(0.01)
        assert await asyncio.to_thread(close_consumer_connections, prefix) == 1
        t0 = time.monotonic()
        while consumer.in_flight != 1:  # the orphan goes, the stream's lease stays
            assert time.monotonic() - t0 < RECONCILE_S + 3, consumer.in_flight
            await asyncio.sleep(0.05)
        reclaimed_after = time.monotonic() - t0
        assert not streaming.done()  # the stream is still running and still holds its lease
        await asyncio.sleep(RECONCILE_S)  # past the reconcile deadline: renewed, so kept
        assert not streaming.done() and consumer.in_flight == 1
        status, raw = await streaming
    assert status == 200 and raw.rstrip().endswith(b"data: [DONE]")
    assert reclaimed_after >= RECONCILE_S * 0.9  # reclaimed by the reconciliation, not by anything sooner
    s.wait_idle(timeout=5)
