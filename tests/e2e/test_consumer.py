"""The consumer against a real broker and a real (simulated) vLLM: health gating, stale metrics,
its own probes and metrics."""

from __future__ import annotations

import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from consumer.main import create_http_app

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}


def wait_for(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - t0


@pytest.fixture
def sim_stack(stack_factory):
    """A stack with one simulator behind one consumer (unhealthy after 2 s of failed probes) and a token."""
    s = stack_factory(queue_timeout_s=10.0)
    s.upstream = s.add_sim(model=MODEL)
    s.consumer = s.add_consumer(MODEL, s.upstream, unhealthy_after_s=2.0)
    s.token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({MODEL}, s.token)
    yield s
    s.wait_idle()


def test_vllm_down_stops_pulling_within_two_seconds_and_resumes_by_itself(sim_stack):
    c = sim_stack.consumer
    assert httpx.post(sim_stack.upstream + "/sim/die").status_code == 200
    took = wait_for(lambda: not c.ready and c.state()["pulling"] is False, 2.0, "consumer to stop pulling")
    assert took < 2.0
    assert c.state()["decision"] == "unhealthy"
    # The sender hears it on the next heartbeat: no live replica, refused at once.
    wait_for(lambda: not sim_stack.ctx.registry.live(MODEL), 2.0, "the sender to see the replica not ready")
    r = httpx.post(
        sim_stack.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {sim_stack.token}"}
    )
    assert r.status_code == 503
    assert httpx.post(sim_stack.upstream + "/sim/revive").status_code == 200
    wait_for(lambda: c.ready and c.state()["pulling"], 3.0, "consumer to resume")
    sim_stack.wait_models({MODEL}, sim_stack.token)
    r = httpx.post(
        sim_stack.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {sim_stack.token}"}
    )
    assert r.status_code == 200


def test_a_request_queued_while_vllm_is_down_is_served_when_it_recovers(sim_stack):
    c = sim_stack.consumer
    httpx.post(sim_stack.upstream + "/sim/die")
    wait_for(lambda: not c.state()["pulling"], 2.0, "consumer to stop pulling")
    # The sender refuses new requests while no replica is ready, so queue a ticket directly.
    grant_future = sim_stack.bg.submit(sim_stack.ctx.dispatcher.acquire(MODEL, 5))
    time.sleep(0.3)
    assert not grant_future.done()  # nobody pulls while vLLM is down
    httpx.post(sim_stack.upstream + "/sim/revive")
    grant = grant_future.result(5)
    assert grant.url == sim_stack.upstream
    sim_stack.bg.call(sim_stack.ctx.dispatcher.release(grant, 200, "done"))


def metrics_broken_upstream():
    async def health(_r: Request) -> Response:
        return Response(status_code=200)

    async def broken(_r: Request) -> Response:
        return Response("boom", status_code=500)

    async def models(_r: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": MODEL, "max_model_len": 64}]})

    async def chat(_r: Request) -> Response:
        return JSONResponse({"ok": True, "usage": {"prompt_tokens": 1, "completion_tokens": 1}})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", broken),
            Route("/v1/models", models),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )


def test_unreadable_metrics_fall_back_to_the_in_flight_cap_and_say_so(stack_factory):
    s = stack_factory()
    url = s.add_asgi(metrics_broken_upstream())
    c = s.add_consumer(MODEL, url, max_concurrency=2)
    token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({MODEL}, token)
    r = httpx.post(s.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200
    reg = c.metrics.registry
    labels = {"model": MODEL, "replica": c.settings.replica_id}
    assert reg.get_sample_value("llmd_consumer_vllm_metrics_fresh", labels) == 0
    decisions = {**labels, "reason": "admit_metrics_stale"}
    assert reg.get_sample_value("llmd_consumer_admission_decisions_total", decisions) == 1
    errors = reg.get_sample_value("llmd_consumer_vllm_scrape_errors_total", {**labels, "endpoint": "metrics"})
    polls = time.monotonic()
    time.sleep(0.5)
    later = reg.get_sample_value("llmd_consumer_vllm_scrape_errors_total", {**labels, "endpoint": "metrics"})
    # One failed read per scrape interval (0.1 s here): a steady pace, never a hot retry loop.
    assert 2 <= later - errors <= 8, (errors, later, time.monotonic() - polls)
    s.wait_idle()


async def test_consumer_probes_and_metrics_endpoints(sim_stack):
    app = create_http_app(sim_stack.consumer.metrics, lambda: sim_stack.consumer)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://c") as client:
        assert (await client.get("/livez")).status_code == 200
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        text = (await client.get("/metrics")).text
        assert "llmd_consumer_in_flight" in text and "llmd_consumer_vllm_healthy" in text
        sim_stack.bg.call(sim_stack.consumer.drain(grace_s=0))
        assert (await client.get("/readyz")).status_code == 503
