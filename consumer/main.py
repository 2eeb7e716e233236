"""`llm-dispatcher consumer`: one consumer for one vLLM replica, with /metrics and probes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.service import Consumer
from consumer.settings import ConsumerSettings
from llm_dispatcher.logs import setup_logging
from llm_dispatcher.serve import uvicorn_server, wait_for_signal

log = logging.getLogger(__name__)


def create_http_app(consumer: Consumer) -> FastAPI:
    app = FastAPI(title="llm-dispatcher consumer", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/livez")
    async def livez() -> dict:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> Response:
        state = consumer.state()
        return JSONResponse(state, status_code=200 if consumer.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(consumer.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def serve(settings: ConsumerSettings) -> None:
    consumer = Consumer(settings)
    server = uvicorn_server(create_http_app(consumer), settings.host, settings.port, settings.log_level)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]  # ours: drain first
    http_task = asyncio.create_task(server.serve())
    await consumer.start()
    await wait_for_signal()
    log.info("draining: no new tickets, waiting for %d granted requests", consumer.in_flight)
    await consumer.drain()
    await consumer.stop()
    server.should_exit = True
    await http_task


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
    import uvloop

    uvloop.run(serve(settings))
    return 0
