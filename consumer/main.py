"""`llm-dispatcher consumer`: one consumer for one vLLM replica, with /metrics and probes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable

import aiormq
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.metrics import ConsumerMetrics
from consumer.service import Consumer
from consumer.settings import ConsumerSettings
from llm_dispatcher.logs import setup_logging
from llm_dispatcher.serve import uvicorn_server, wait_for_signal

log = logging.getLogger(__name__)

EXIT_PORT_UNAVAILABLE = 1  # as uvicorn (the sender, the simulator) exits when its port is taken
CONNECT_RETRY_MAX_S = 5.0  # start-up retries while the broker is unreachable back off from 0.5 s to this
STILL_DOWN_LOG_S = 30.0  # and log a warning this often
# What a start-up attempt raises when the broker is not there (yet): retried.
_UNREACHABLE = (OSError, aiormq.exceptions.AMQPError, asyncio.TimeoutError, RuntimeError)


def create_http_app(metrics: ConsumerMetrics, consumer: Callable[[], Consumer | None]) -> FastAPI:
    """Probes and /metrics, served from the start: not ready until `consumer()` gives a running one."""
    app = FastAPI(title="llm-dispatcher consumer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/livez")
    async def livez() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        c = consumer()
        if c is None:
            return JSONResponse({"ready": False, "starting": True}, status_code=503)
        return JSONResponse(c.state(), status_code=200 if c.ready else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def listen_socket(host: str, port: int) -> socket.socket:
    """The socket of /metrics and the probes, bound before anything else starts: a port already taken
    is an error at once (OSError), not a server that fails in the background while the consumer runs."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(settings: ConsumerSettings, sock: socket.socket) -> None:
    metrics = ConsumerMetrics()
    holder: list[Consumer] = []
    app = create_http_app(metrics, lambda: holder[0] if holder else None)
    server = uvicorn_server(app, settings.host, settings.port, settings.log_level)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # ours: drain first
    http_task = asyncio.create_task(server.serve(sockets=[sock]))
    stop = asyncio.create_task(wait_for_signal(), name="signal")
    consumer = await start_consumer(settings, metrics, stop)
    if consumer is not None:
        holder.append(consumer)
        await stop
        log.info("draining: no new tickets, waiting for %d granted requests", consumer.in_flight)
        await consumer.drain()
        await consumer.stop()
    server.should_exit = True
    await http_task


async def start_consumer(settings: ConsumerSettings, metrics: ConsumerMetrics, stop: asyncio.Task) -> Consumer | None:
    """`Consumer.create`, retried (backing off to CONNECT_RETRY_MAX_S) while the broker is unreachable,
    so that a release started in any order converges by itself; /readyz answers 503 "starting" meanwhile.
    None when a signal came first."""
    delay, started, last_log = 0.5, time.monotonic(), 0.0
    while not stop.done():
        attempt = asyncio.create_task(Consumer.create(settings, metrics), name="consumer-start")
        await asyncio.wait([attempt, stop], return_when=asyncio.FIRST_COMPLETED)
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            return None
        try:
            consumer = attempt.result()
        except _UNREACHABLE as exc:
            if time.monotonic() - last_log >= STILL_DOWN_LOG_S:
                last_log = time.monotonic()
                log.warning(
                    "the message broker is unreachable (%r) %.0f s after start: not ready; retrying",
                    exc, last_log - started,
                )  # fmt: skip
            await asyncio.wait([stop], timeout=delay)
            delay = min(CONNECT_RETRY_MAX_S, delay * 2)
            continue
        if time.monotonic() - started > 1:
            log.info("connected to the message broker after %.1f s", time.monotonic() - started)
        return consumer
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="served model name (LLMD_MODEL)")
    parser.add_argument("--vllm-url", help="vLLM base URL (LLMD_VLLM_URL)")
    parser.add_argument("--advertise-url", help="URL the sender proxies to (LLMD_ADVERTISE_URL)")
    parser.add_argument("--port", type=int, help="port of /metrics and probes (LLMD_PORT)")
    parser.add_argument("--max-concurrency", type=int, help="in-flight cap (LLMD_MAX_CONCURRENCY)")


def run(args: argparse.Namespace) -> int:
    overrides = {
        k: v
        for k, v in {
            "model": args.model,
            "vllm_url": args.vllm_url,
            "advertise_url": args.advertise_url,
            "port": args.port,
            "max_concurrency": args.max_concurrency,
        }.items()
        if v is not None
    }
    settings = ConsumerSettings(**overrides)
    setup_logging(settings.log_level, settings.log_format)
    try:
        sock = listen_socket(settings.host, settings.port)
    except OSError as exc:
        log.error(
            "cannot listen on %s:%d for /metrics and probes: %s; another process holds the port "
            "(stop it, or choose another with LLMD_PORT or --port)",
            settings.host, settings.port, exc.strerror or exc,
        )  # fmt: skip
        return EXIT_PORT_UNAVAILABLE
    import uvloop

    with sock:
        uvloop.run(serve(settings, sock))
    return 0
