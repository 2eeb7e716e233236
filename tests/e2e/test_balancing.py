"""Balancing across replicas and priority forwarding, against the real broker and in-process simulators:
no ticket is parked at a busy replica, the faster replica serves more, and `forward_priority` puts
`max_priority - ticket priority` into the body vLLM receives (and nothing otherwise)."""

from __future__ import annotations

import asyncio
import time

import httpx
import orjson

MODEL = "sim-model"


def body(max_tokens: int = 1) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hello there"}], "max_tokens": max_tokens}


def auth(token: str, priority: int | None = None) -> dict:
    h = {"authorization": f"Bearer {token}"}
    if priority is not None:
        h["x-priority"] = str(priority)
    return h


def grants(consumer) -> float:
    return (
        consumer.metrics.registry.get_sample_value(
            "llmd_consumer_grants_total", {"model": MODEL, "replica": consumer.settings.replica_id}
        )
        or 0.0
    )


async def wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Recording:
    """ASGI wrapper that keeps the JSON body of every POST before handing it to the wrapped app."""

    def __init__(self, app):
        self.app = app
        self.bodies: list[dict] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        self.bodies.append(orjson.loads(raw))
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": raw, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


async def test_a_ticket_is_not_parked_at_a_busy_replica(stack_factory):
    s = stack_factory(queue_timeout_s=10.0)
    a = s.add_consumer(MODEL, s.add_sim(model=MODEL, itl_base=0.02), max_concurrency=1, replica_id="A")
    b = s.add_consumer(MODEL, s.add_sim(model=MODEL, itl_base=0.02), max_concurrency=1, replica_id="B")
    token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({MODEL}, token)
    async with httpx.AsyncClient(timeout=30) as client:
        # ~2 s of generation holds one replica's only slot.
        blocker = asyncio.create_task(
            client.post(s.base_url + "/chat/completions", json=body(100), headers=auth(token))
        )
        await wait_until(lambda: a.in_flight + b.in_flight == 1)
        busy, free = (a, b) if a.in_flight else (b, a)
        t0 = time.monotonic()
        r = await client.post(s.base_url + "/chat/completions", json=body(2), headers=auth(token))
        elapsed = time.monotonic() - t0
        assert r.status_code == 200
        assert not blocker.done()  # the busy replica is still busy: the ticket did not wait for it
        assert (await blocker).status_code == 200
    assert elapsed < 1.0, f"served after {elapsed:.2f} s"
    assert grants(free) == 1 and grants(busy) == 1
    s.wait_idle()


async def test_the_faster_replica_serves_more_requests_under_load(stack_factory):
    s = stack_factory(queue_timeout_s=20.0)
    slow = s.add_consumer(
        MODEL, s.add_sim(model=MODEL, itl_base=0.04, max_num_seqs=4), max_concurrency=4, replica_id="slow"
    )
    fast = s.add_consumer(
        MODEL, s.add_sim(model=MODEL, itl_base=0.02, max_num_seqs=4), max_concurrency=4, replica_id="fast"
    )
    token = s.create_token("t", priority=5, threshold=1000)
    s.wait_models({MODEL}, token)
    await asyncio.sleep(0.3)  # both replicas announced and pulling
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
        rs = await asyncio.gather(
            *(client.post(s.base_url + "/chat/completions", json=body(8), headers=auth(token)) for _ in range(60))
        )
    assert all(r.status_code == 200 for r in rs)
    n_fast, n_slow = grants(fast), grants(slow)
    assert n_fast + n_slow == 60
    assert n_fast >= 1.3 * n_slow, f"fast {n_fast:.0f} vs slow {n_slow:.0f}"
    s.wait_idle()


async def test_forward_priority_puts_the_vllm_priority_in_the_body(stack_factory):
    from vllm_sim.app import create_app as create_sim
    from vllm_sim.config import SimConfig

    s = stack_factory()
    rec = Recording(create_sim(SimConfig(model=MODEL, scheduling_policy="priority", itl_base=0.002)))
    consumer = s.add_consumer(MODEL, s.add_asgi(rec), max_concurrency=4, forward_priority=True)
    token = s.create_token("t", priority=7, threshold=100)
    s.wait_models({MODEL}, token)
    max_priority = consumer.settings.max_priority
    async with httpx.AsyncClient(timeout=30) as client:
        r1 = await client.post(s.base_url + "/chat/completions", json=body(2), headers=auth(token))
        r2 = await client.post(s.base_url + "/chat/completions", json=body(2), headers=auth(token, priority=2))
    assert r1.status_code == 200 and r2.status_code == 200
    posts = [b for b in rec.bodies if "messages" in b]
    assert [b["priority"] for b in posts] == [max_priority - 7, max_priority - 2]  # 3, 8: lower runs first
    assert all({k: v for k, v in b.items() if k != "priority"} == body(2) for b in posts)
    s.wait_idle()


async def test_without_forward_priority_the_body_reaches_vllm_unchanged(stack_factory):
    from vllm_sim.app import create_app as create_sim
    from vllm_sim.config import SimConfig

    s = stack_factory()
    rec = Recording(create_sim(SimConfig(model=MODEL, itl_base=0.002)))
    s.add_consumer(MODEL, s.add_asgi(rec), max_concurrency=4)
    token = s.create_token("t", priority=7, threshold=100)
    s.wait_models({MODEL}, token)
    async with httpx.AsyncClient(timeout=30) as client:
        r = await client.post(s.base_url + "/chat/completions", json=body(2), headers=auth(token, priority=3))
    assert r.status_code == 200
    assert [b for b in rec.bodies if "messages" in b] == [body(2)]
    s.wait_idle()
