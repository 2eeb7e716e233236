"""Fair share within a priority band, against the real broker: a light token's tickets overtake a heavy
token's backlog of the same priority; with one level per band the queue is first come, first served;
a queue declared before sub-levels keeps working. One replica of capacity 1: completion order = grant order."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import httpx
import pytest

from llm_dispatcher import protocol
from tests.e2e.test_scheduling import Recorder, wait_depth, wait_in_flight

MODEL = "sim-model"


def fair_stack(stack_factory, levels: int):
    # A small quantum: each of these short requests (~30-70 estimated tokens) is a quantum or more.
    s = stack_factory(queue_timeout_s=20.0, fair_levels=levels, fair_quantum_tokens=20)
    s.upstream = s.add_sim(model=MODEL, itl_base=0.02)
    s.consumer = s.add_consumer(MODEL, s.upstream, max_concurrency=1, fair_levels=levels)
    s.tokens = {name: s.create_token(name, priority=5, threshold=100) for name in ("heavy", "light")}
    s.wait_models({MODEL}, s.tokens["heavy"])
    return s


async def backlog_then_light(s) -> list[str]:
    """The heavy token holds the slot and queues 5 more; then the light token sends one."""
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(s, client)
        blocker = rec.start("blocker", s.tokens["heavy"], max_tokens=40)
        await wait_in_flight(s, 1)
        heavy = []
        for i in range(5):
            heavy.append(rec.start(f"heavy{i}", s.tokens["heavy"]))
            await wait_depth(s, i + 1)
        light = rec.start("light", s.tokens["light"])
        await wait_depth(s, 6)
        responses = await asyncio.gather(blocker, *heavy, light)
    assert all(r.status_code == 200 for r in responses)
    return rec.order


async def test_a_light_token_overtakes_the_backlog_of_a_heavy_token_of_the_same_priority(stack_factory):
    s = fair_stack(stack_factory, levels=4)
    order = await backlog_then_light(s)
    assert order[:2] == ["blocker", "light"], order
    assert order[2:] == [f"heavy{i}" for i in range(5)], "the heavy token's own tickets keep their order"
    s.wait_idle()


async def test_with_one_level_per_band_the_same_traffic_is_first_come_first_served(stack_factory):
    s = fair_stack(stack_factory, levels=1)
    order = await backlog_then_light(s)
    assert order == ["blocker", *(f"heavy{i}" for i in range(5)), "light"]
    s.wait_idle()


async def test_a_queue_declared_before_sub_levels_is_used_as_it_is(amqp_url, queue_prefix, stack_factory, caplog):
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            protocol.model_queue(queue_prefix, MODEL), durable=True, arguments=protocol.queue_arguments(10)
        )
    caplog.set_level(logging.WARNING, logger="llm_dispatcher.amqp")
    s = fair_stack(stack_factory, levels=4)
    order = await backlog_then_light(s)
    assert order == ["blocker", *(f"heavy{i}" for i in range(5)), "light"], "first come, first served"
    warned = [r.getMessage() for r in caplog.records if "exists with other arguments" in r.getMessage()]
    assert warned and "delete it while idle" in warned[0]
    high = s.create_token("high", priority=9, threshold=100)
    r = httpx.post(
        s.base_url + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
        headers={"authorization": f"Bearer {high}"},
        timeout=30,
    )
    assert r.status_code == 200, "band priorities fit the old queue"
    s.wait_idle()


@pytest.fixture(autouse=True)
def _no_leftover_queue(amqp_url, queue_prefix):
    yield

    async def drop() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(protocol.model_queue(queue_prefix, MODEL))

    asyncio.run(drop())


async def test_end_users_of_one_token_share_fairly_between_them(stack_factory):
    """One application key, two people: the one with a backlog does not hold up the other."""
    s = fair_stack(stack_factory, levels=4)
    app = s.tokens["heavy"]
    async with httpx.AsyncClient(timeout=30) as client:
        rec = Recorder(s, client)
        blocker = rec.start("blocker", app, max_tokens=40)
        await wait_in_flight(s, 1)
        url, headers = s.base_url + "/chat/completions", {"authorization": f"Bearer {app}"}

        def post(name: str, user: str) -> asyncio.Task:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "user": user}

            async def run() -> httpx.Response:
                r = await client.post(url, json=body, headers=headers)
                rec.order.append(name)
                return r

            return asyncio.create_task(run())

        ann = []
        for i in range(4):
            ann.append(post(f"ann{i}", "ann"))
            await wait_depth(s, i + 1)
        bob = post("bob", "bob")
        await wait_depth(s, 5)
        responses = await asyncio.gather(blocker, *ann, bob)
    assert all(r.status_code == 200 for r in responses)
    assert rec.order[:2] == ["blocker", "ann0"] or rec.order[:2] == ["blocker", "bob"], rec.order
    assert rec.order.index("bob") < rec.order.index("ann1"), rec.order
    s.wait_idle()
