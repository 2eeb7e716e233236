"""Scheduling semantics against the real broker: priority, thresholds, own-priority lowering,
disconnects and expiry. One replica with capacity 1, so the grant order is observable."""

from __future__ import annotations

import asyncio
import time

import aio_pika
import httpx
import pytest

from llm_dispatcher import protocol
from llm_dispatcher.protocol import Ticket

MODEL = "sim-model"


@pytest.fixture
def one_slot_stack(stack_factory):
    """A stack with one replica of capacity 1 (a slow simulator) and low, mid and high priority tokens."""
    s = stack_factory(queue_timeout_s=20.0)
    # ~20 ms per token: a 40-token blocker holds the only slot for ~0.8 s.
    s.upstream = s.add_sim(model=MODEL, itl_base=0.02)
    s.consumer = s.add_consumer(MODEL, s.upstream, max_concurrency=1)
    s.tokens = {}
    for name, prio, threshold in [("low", 1, 100), ("mid", 5, 100), ("high", 9, 100)]:
        s.tokens[name] = s.create_token(name, priority=prio, threshold=threshold)
    s.wait_models({MODEL}, s.tokens["low"])
    yield s
    s.wait_idle()


def body(max_tokens: int = 1, stream: bool = False) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": max_tokens, "stream": stream}


def auth(token: str, priority: int | None = None) -> dict:
    h = {"authorization": f"Bearer {token}"}
    if priority is not None:
        h["x-priority"] = str(priority)
    return h


async def depth(s) -> int:
    return await asyncio.wrap_future(s.bg.submit(s.ctx.dispatcher.depth(MODEL)))


async def wait_depth(s, n: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while (d := await depth(s)) != n:
        assert time.monotonic() < deadline, f"queue depth {d}, expected {n}"
        await asyncio.sleep(0.02)


async def wait_in_flight(s, n: int, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while s.consumer.in_flight != n:
        assert time.monotonic() < deadline, f"in flight {s.consumer.in_flight}, expected {n}"
        await asyncio.sleep(0.01)


def consumer_sample(s, name: str, **labels) -> float:
    value = s.consumer.metrics.registry.get_sample_value(
        name, {"model": MODEL, "replica": s.consumer.settings.replica_id, **labels}
    )
    return value or 0.0


class Recorder:
    """Posts requests and records the order in which they complete (= grant order at capacity 1)."""

    def __init__(self, s, client: httpx.AsyncClient):
        self.s, self.client, self.order = s, client, []

    def start(self, name: str, token: str, priority: int | None = None, max_tokens: int = 1) -> asyncio.Task:
        async def run() -> httpx.Response:
            r = await self.client.post(
                self.s.base_url + "/chat/completions", json=body(max_tokens), headers=auth(token, priority)
            )
            self.order.append(name)
            return r

        return asyncio.create_task(run())


async def test_high_priority_is_served_before_earlier_low_priority_tickets(one_slot_stack):
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(one_slot_stack, client)
        blocker = rec.start("blocker", one_slot_stack.tokens["low"], max_tokens=40)
        await wait_in_flight(one_slot_stack, 1)
        lows = [rec.start(f"low{i}", one_slot_stack.tokens["low"]) for i in range(3)]
        await wait_depth(one_slot_stack, 3)
        high = rec.start("high", one_slot_stack.tokens["high"])
        await wait_depth(one_slot_stack, 4)
        responses = await asyncio.gather(blocker, *lows, high)
    assert all(r.status_code == 200 for r in responses)
    assert rec.order == ["blocker", "high", "low0", "low1", "low2"]


async def test_threshold_refuses_at_once_when_the_queue_is_that_deep_and_admits_above(one_slot_stack):
    tight = one_slot_stack.create_token("tight", priority=9, threshold=2)
    roomy = one_slot_stack.create_token("roomy", priority=9, threshold=3)
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(one_slot_stack, client)
        blocker = rec.start("blocker", one_slot_stack.tokens["low"], max_tokens=40)
        await wait_in_flight(one_slot_stack, 1)
        queued = [rec.start(f"q{i}", one_slot_stack.tokens["low"]) for i in range(2)]
        await wait_depth(one_slot_stack, 2)
        t0 = time.monotonic()
        refused = await client.post(one_slot_stack.base_url + "/chat/completions", json=body(), headers=auth(tight))
        elapsed = time.monotonic() - t0
        admitted = rec.start("roomy", roomy)
        await wait_depth(one_slot_stack, 3)
        responses = await asyncio.gather(blocker, *queued, admitted)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "queue_over_threshold"
    assert int(refused.headers["retry-after"]) >= 1
    assert elapsed < 0.5  # refused at once, not after waiting
    assert all(r.status_code == 200 for r in responses)


async def test_a_request_may_lower_its_priority_but_never_raise_it(one_slot_stack):
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(one_slot_stack, client)
        blocker = rec.start("blocker", one_slot_stack.tokens["low"], max_tokens=40)
        await wait_in_flight(one_slot_stack, 1)
        tasks = [rec.start("high-lowered-to-2", one_slot_stack.tokens["high"], priority=2)]
        await wait_depth(one_slot_stack, 1)
        tasks.append(rec.start("low-asks-for-9", one_slot_stack.tokens["low"], priority=9))  # stays at 1
        await wait_depth(one_slot_stack, 2)
        tasks.append(rec.start("mid", one_slot_stack.tokens["mid"]))
        await wait_depth(one_slot_stack, 3)
        await asyncio.gather(blocker, *tasks)
    assert rec.order == ["blocker", "mid", "high-lowered-to-2", "low-asks-for-9"]


async def test_a_client_that_leaves_while_queued_never_consumes_a_slot(one_slot_stack):
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(one_slot_stack, client)
        blocker = rec.start("blocker", one_slot_stack.tokens["low"], max_tokens=40)
        await wait_in_flight(one_slot_stack, 1)
        async with httpx.AsyncClient(timeout=0.3) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post(
                    one_slot_stack.base_url + "/chat/completions",
                    json=body(),
                    headers=auth(one_slot_stack.tokens["high"]),
                )
        await blocker
        after = await client.post(
            one_slot_stack.base_url + "/chat/completions", json=body(), headers=auth(one_slot_stack.tokens["low"])
        )
    assert after.status_code == 200
    assert consumer_sample(one_slot_stack, "llmd_consumer_grants_total") == 2  # blocker and after, never the leaver
    assert consumer_sample(one_slot_stack, "llmd_consumer_tickets_dropped_total", reason="cancelled") == 1


async def test_a_client_that_leaves_mid_stream_releases_its_lease_and_vllm_aborts(one_slot_stack):
    async with httpx.AsyncClient(timeout=30) as client:
        t0 = time.monotonic()
        async with client.stream(
            "POST",
            one_slot_stack.base_url + "/chat/completions",
            json=body(200, stream=True),
            headers=auth(one_slot_stack.tokens["low"]),
        ) as r:
            assert r.status_code == 200
            async for _ in r.aiter_bytes():
                break  # read the first chunk, then hang up
        await wait_in_flight(one_slot_stack, 0, timeout=2)
        released_after = time.monotonic() - t0
        metrics = (await client.get(one_slot_stack.upstream + "/metrics")).text
    assert released_after < 2.0  # the full answer would take ~4 s
    assert 'finished_reason="abort"' in metrics
    aborted = [
        line
        for line in metrics.splitlines()
        if line.startswith("vllm:request_success_total") and 'finished_reason="abort"' in line
    ]
    assert float(aborted[0].rsplit(" ", 1)[1]) == 1.0


async def test_a_ticket_that_times_out_in_the_queue_gets_503_and_is_never_granted(stack_factory):
    s = stack_factory(queue_timeout_s=0.5, retry_after_s=2)
    sim = s.add_sim(model=MODEL, itl_base=0.02)
    s.consumer = s.add_consumer(MODEL, sim, max_concurrency=1)
    token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({MODEL}, token)
    async with httpx.AsyncClient(timeout=30) as client:
        blocker = asyncio.create_task(client.post(s.base_url + "/chat/completions", json=body(50), headers=auth(token)))
        await wait_in_flight(s, 1)
        late = await client.post(s.base_url + "/chat/completions", json=body(), headers=auth(token))
        assert (await blocker).status_code == 200
    assert late.status_code == 503 and late.json()["error"]["code"] == "queue_timeout"
    assert late.headers["retry-after"] == "2"
    await asyncio.sleep(0.3)
    assert consumer_sample(s, "llmd_consumer_grants_total") == 1
    s.wait_idle()


async def test_an_expired_ticket_is_dropped_by_the_consumer_not_granted(stack_factory, amqp_url):
    s = stack_factory()
    sim = s.add_sim(model=MODEL)
    s.consumer = s.add_consumer(MODEL, sim, max_concurrency=4)
    prefix = s.sender_settings.queue_prefix
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        ticket = Ticket(id="stale", model=MODEL, priority=5, deadline_ms=protocol.now_ms() - 1)
        await channel.default_exchange.publish(
            aio_pika.Message(ticket.dumps(), priority=5, correlation_id="stale", reply_to=replies.name),
            routing_key=protocol.model_queue(prefix, MODEL),
        )
        deadline = time.monotonic() + 5
        while consumer_sample(s, "llmd_consumer_tickets_dropped_total", reason="expired") < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert await replies.get(fail=False) is None  # no grant was sent
    assert s.consumer.in_flight == 0


async def test_reserved_slots_keep_room_for_high_priority_while_low_priority_waits(stack_factory):
    s = stack_factory(queue_timeout_s=20.0)
    sim = s.add_sim(model=MODEL, itl_base=0.02)
    s.consumer = s.add_consumer(MODEL, sim, max_concurrency=2, reserved_slots=1, reserved_min_priority=7)
    low = s.create_token("low", priority=1, threshold=100)
    high = s.create_token("high", priority=9, threshold=100)
    s.wait_models({MODEL}, low)
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(s, client)
        blocker = rec.start("blocker", low, max_tokens=60)  # ~1.2 s in the one unreserved slot
        await wait_in_flight(s, 1)
        waiting_low = rec.start("low", low)
        await wait_depth(s, 1)
        await asyncio.sleep(0.3)
        assert s.consumer.in_flight == 1  # the reserved slot stays free for the low ticket
        t0 = time.monotonic()
        r = await client.post(s.base_url + "/chat/completions", json=body(), headers=auth(high))
        high_took = time.monotonic() - t0
        rec.order.append("high")
        await asyncio.gather(blocker, waiting_low)
    assert r.status_code == 200
    assert high_took < 0.8  # served in the reserved slot while the blocker still runs
    assert rec.order == ["high", "blocker", "low"]
    assert consumer_sample(s, "llmd_consumer_admission_decisions_total", reason="reserved_for_high_priority") >= 1
    s.wait_idle()


async def test_a_reserve_with_a_hold_is_lent_to_low_priority_once_high_priority_has_gone_quiet(stack_factory):
    hold_s = 1.5
    s = stack_factory(queue_timeout_s=20.0)
    sim = s.add_sim(model=MODEL, itl_base=0.02)
    s.consumer = s.add_consumer(
        MODEL, sim, max_concurrency=2, reserved_slots=1, reserved_min_priority=7, reserved_hold_s=hold_s
    )
    low = s.create_token("low", priority=1, threshold=100)
    high = s.create_token("high", priority=9, threshold=100)
    s.wait_models({MODEL}, low)
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(s, client)
        # No high-priority grant yet: two low requests use both slots, the reserved one included.
        first = [rec.start("low-a", low, max_tokens=40), rec.start("low-b", low, max_tokens=40)]
        await wait_in_flight(s, 2)
        await asyncio.gather(*first)
        r = await client.post(s.base_url + "/chat/completions", json=body(), headers=auth(high))
        assert r.status_code == 200
        high_at = time.monotonic()
        # A high-priority grant holds the reserve: a second low request waits though a slot is free ...
        blocker = rec.start("blocker", low, max_tokens=200)  # ~4 s in the unreserved slot
        await wait_in_flight(s, 1)
        waiting_low = rec.start("waiting-low", low)
        await wait_depth(s, 1)
        await asyncio.sleep(0.3)
        assert s.consumer.in_flight == 1
        # ... until the hold has passed with no high-priority grant: then it takes the reserved slot.
        await waiting_low
        assert hold_s - 0.1 <= time.monotonic() - high_at < hold_s + 1.5
        assert not blocker.done()
        await blocker
    assert rec.order[-2:] == ["waiting-low", "blocker"]
    s.wait_idle()
