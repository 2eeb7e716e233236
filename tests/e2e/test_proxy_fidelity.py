"""What reaches vLLM and what comes back: byte for byte, unbuffered, over one pooled client."""

from __future__ import annotations

import asyncio
import resource
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def recording_upstream(seen: list, peers: set):
    """A vLLM stand-in that records every request exactly as it arrived."""

    async def record(request: Request) -> Response:
        body = await request.body()
        peers.add(request.client.port)
        seen.append(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "body": body,
                "headers": dict(request.headers),
            }
        )
        if request.url.path == "/v1/slow":

            async def slow():
                for i in range(5):
                    yield f'data: {{"n": {i}}}\n\n'.encode()
                    await asyncio.sleep(0.4)
                yield b"data: [DONE]\n\n"

            return StreamingResponse(slow(), media_type="text/event-stream")
        if request.url.path == "/v1/huge":
            chunk = b"x" * 65536

            async def huge():
                for _ in range(1600):  # 100 MiB
                    yield chunk

            return StreamingResponse(huge(), media_type="application/octet-stream")
        return JSONResponse({"echo": True}, status_code=201, headers={"x-upstream": "yes"})

    async def health(_request: Request) -> Response:
        return Response(status_code=200)

    async def metrics(_request: Request) -> Response:
        return Response("", media_type="text/plain")

    async def models(_request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "rec", "max_model_len": 128}]})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/v1/{path:path}", record, methods=["POST", "GET"]),
        ]
    )


@pytest.fixture
def recorder_stack(stack_factory):
    """A stack whose one upstream records every request it receives (`.seen`) and every peer (`.peers`)."""
    # The recorder's own endpoints are forwarded on purpose (a deployment can add paths vLLM serves).
    s = stack_factory(forward_paths=["/v1/chat/completions", "/v1/some/new/endpoint", "/v1/slow", "/v1/huge", "/v1/x"])
    s.seen, s.peers = [], set()
    s.upstream = s.add_asgi(recording_upstream(s.seen, s.peers))
    s.add_consumer("rec", s.upstream, max_concurrency=64)
    s.token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({"rec"}, s.token)
    yield s
    s.wait_idle()


def test_method_path_query_and_body_reach_vllm_unchanged(recorder_stack):
    raw = b'{ "model" : "rec",  "weird": [1, 2.50, "\\u00e9"], "keep":   "spacing" }'
    r = httpx.post(
        recorder_stack.base_url + "/some/new/endpoint?a=1&b=two%20words",
        content=raw,
        headers={"authorization": f"Bearer {recorder_stack.token}", "content-type": "application/json"},
    )
    assert r.status_code == 201  # vLLM's status, not ours
    assert r.json() == {"echo": True} and r.headers["x-upstream"] == "yes"
    got = recorder_stack.seen[-1]
    assert got["method"] == "POST"
    assert got["path"] == "/v1/some/new/endpoint"
    assert got["query"] == "a=1&b=two%20words"
    assert got["body"] == raw  # not re-serialised
    assert "authorization" not in got["headers"]  # the dispatcher's key never reaches vLLM
    assert got["headers"]["x-request-id"] == r.headers["x-request-id"]


def test_streaming_is_relayed_unbuffered(recorder_stack):
    with httpx.stream(
        "POST",
        recorder_stack.base_url + "/slow",
        json={"model": "rec"},
        headers={"authorization": f"Bearer {recorder_stack.token}"},
        timeout=10,
    ) as r:
        t0 = time.monotonic()
        arrivals = []
        for _chunk in r.iter_raw():
            arrivals.append(time.monotonic() - t0)
    assert arrivals[0] < 0.3  # the first event arrives at once
    assert arrivals[-1] > 1.5  # the upstream took ~2 s to finish


def test_memory_does_not_grow_with_response_length(recorder_stack):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB; sender, upstream and client share it
    received = 0
    with httpx.stream(
        "POST",
        recorder_stack.base_url + "/huge",
        json={"model": "rec"},
        headers={"authorization": f"Bearer {recorder_stack.token}"},
        timeout=60,
    ) as r:
        for chunk in r.iter_raw():
            received += len(chunk)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert received == 100 * 1024 * 1024
    assert grown_mib < 40, f"peak memory grew {grown_mib:.0f} MiB for a 100 MiB response"


def test_the_upstream_client_is_pooled_not_created_per_request(recorder_stack):
    session = recorder_stack.ctx.session
    with httpx.Client(headers={"authorization": f"Bearer {recorder_stack.token}"}) as c:
        for _ in range(30):
            assert c.post(recorder_stack.base_url + "/x", json={"model": "rec"}).status_code == 201
    assert recorder_stack.ctx.session is session
    peers = recorder_stack.peers
    assert len(peers) <= 2, f"{len(peers)} upstream connections for 30 sequential requests"
