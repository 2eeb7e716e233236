"""Leases end to end: long requests keep theirs (renewed), a vanished sender's leases expire."""

from __future__ import annotations

import asyncio
import contextlib
import time

import httpx

from llm_dispatcher import protocol

MODEL = "sim-model"


def releases_counted(consumer, reason: str = "done") -> float:
    """Leases the consumer has seen end for `reason` (released by their sender, or expired)."""
    return (
        consumer.metrics.registry.get_sample_value(
            "llmd_consumer_releases_total",
            {"model": MODEL, "replica": consumer.settings.replica_id, "reason": reason},
        )
        or 0.0
    )


def expired(consumer) -> float:
    return releases_counted(consumer, "expired")


def test_a_stream_longer_than_the_lease_ttl_keeps_its_lease_by_renewal(stack_factory):
    s = stack_factory()
    sim = s.add_sim(model=MODEL, itl_base=0.02)
    consumer = s.add_consumer(MODEL, sim, lease_ttl_s=0.6)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({MODEL}, token)
    held = []
    with httpx.stream(
        "POST",
        s.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {token}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 100, "stream": True},
        timeout=30,
    ) as r:
        for _ in r.iter_bytes():
            held.append(consumer.in_flight)
    assert r.status_code == 200
    # ~2 s of streaming, more than three lease lifetimes, never reclaimed (the last chunks race the release)
    assert len(held) > 50 and min(held[:-5]) == 1, str(held)
    assert expired(consumer) == 0
    s.wait_idle()


def test_leases_of_a_sender_that_vanished_expire(stack_factory):
    s = stack_factory()
    sim = s.add_sim(model=MODEL)
    consumer = s.add_consumer(MODEL, sim, lease_ttl_s=0.5)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({MODEL}, token)
    grant = s.bg.call(s.ctx.dispatcher.acquire(MODEL, 5))
    s.ctx.dispatcher._held.pop(grant.lease_id)  # the sender forgets it, as if it had crashed
    assert consumer.in_flight == 1
    t0 = time.monotonic()
    s.wait_idle(timeout=3)
    assert time.monotonic() - t0 < 1.5
    assert expired(consumer) == 1


def test_a_release_cut_short_by_its_request_being_cancelled_is_still_sent(stack_factory):
    s = stack_factory(release_batch_s=0)  # one Release a lease, published by the request itself
    sim = s.add_sim(model=MODEL)
    consumer = s.add_consumer(MODEL, sim, lease_ttl_s=30)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({MODEL}, token)
    dispatcher = s.ctx.dispatcher
    grant = s.bg.call(dispatcher.acquire(MODEL, 5))
    assert consumer.in_flight == 1

    async def cancelled_release() -> None:
        raw = await dispatcher.nodes.first().link.raw()
        async with raw.lock:  # another publish holds the channel: the release waits for it ...
            task = asyncio.create_task(dispatcher.release(grant, 200, "done"))
            await asyncio.sleep(0.05)
            task.cancel()  # ... and its request is cancelled there
        with contextlib.suppress(asyncio.CancelledError):
            await task

    s.bg.call(cancelled_release())
    t0 = time.monotonic()
    s.wait_idle(timeout=5)  # sent again by the flush, not left to expire after 30 s
    assert time.monotonic() - t0 < 3
    assert expired(consumer) == 0


def release_together(s, n: int, token: str) -> list[int]:
    """`n` short requests at once; the consumer's in-flight count right after the last answer."""

    async def run() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}
            answers = await asyncio.gather(
                *(
                    client.post(
                        s.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
                    )
                    for _ in range(n)
                )
            )
        assert [r.status_code for r in answers] == [200] * n
        return [s.consumers[0].in_flight]

    return asyncio.run(run())


def test_releases_to_one_consumer_within_the_window_arrive_together_in_one_message(stack_factory):
    s = stack_factory(release_batch_s=1.0)
    sim = s.add_sim(model=MODEL)
    consumer = s.add_consumer(MODEL, sim, max_concurrency=8)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({MODEL}, token)
    time.sleep(0.5)  # a heartbeat has told the sender that this consumer reads Releases
    assert release_together(s, 6, token) == [6]  # answered, their releases waiting in one batch
    t0 = time.monotonic()
    s.wait_idle(timeout=3)
    assert time.monotonic() - t0 < 1.5
    assert releases_counted(consumer) == 6 and expired(consumer) == 0


def test_a_consumer_that_does_not_read_releases_gets_one_release_per_lease_at_once(stack_factory, monkeypatch):
    monkeypatch.setattr(protocol, "RELEASES_SINCE", protocol.PROTOCOL_VERSION + 1)  # as if it were of protocol 3
    s = stack_factory(release_batch_s=1.0)
    sim = s.add_sim(model=MODEL)
    consumer = s.add_consumer(MODEL, sim, max_concurrency=8)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({MODEL}, token)
    time.sleep(0.5)
    release_together(s, 6, token)
    t0 = time.monotonic()
    s.wait_idle(timeout=1)
    assert time.monotonic() - t0 < 0.5  # released as each request ended, not after the 1 s window
    assert releases_counted(consumer) == 6
