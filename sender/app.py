"""The sender: an OpenAI-compatible gateway. Built by create_app(settings); the objects it needs are
made in the lifespan and passed down, never created at import time.

    endpoint.py   the raw ASGI hot path: request id middleware, the proxy endpoint
    steps.py      admit → dispatch → relay → record, each reusable on its own
    requests.py   reading a client request (headers, body, JSON) within bounds
    routes.py     the allow-list of forwarded inference paths
    dispatch.py   the broker side: tickets, grants, releases, heartbeats
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_dispatcher.db import Store, TokenCache, UsageWriter, load_tokens_file
from llm_dispatcher.errors import DispatcherError, ModelNotFoundError, UnknownURLError, error_body, shorten
from llm_dispatcher.serve import uvicorn_server
from llm_dispatcher.settings import placeholder_credential
from sender import proxy
from sender.admin import add_admin_routes
from sender.batches.api import add_batch_routes
from sender.batches.runner import BatchRunner
from sender.console import add_console_routes
from sender.context import SenderContext
from sender.dispatch import Dispatcher
from sender.endpoint import ProxyEndpoint, RequestIdMiddleware
from sender.fairness import FairShare
from sender.limits import LimitStore, MemoryLimits, RedisLimits
from sender.metrics import SenderMetrics
from sender.registry import Registry
from sender.routes import ForwardPaths
from sender.settings import SenderSettings
from sender.steps import inference_token

log = logging.getLogger(__name__)


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


@contextlib.asynccontextmanager
async def metrics_listener(settings: SenderSettings, metrics: SenderMetrics) -> AsyncIterator[None]:
    """/metrics on a port of its own (not reachable through the API port and its ingress)."""
    if not settings.metrics_port:
        yield
        return
    host = settings.metrics_host or settings.host
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, settings.metrics_port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"the metrics port {host}:{settings.metrics_port} is not free ({exc.strerror}); "
            "set LLMD_METRICS_PORT to another port (0: none)"
        ) from None
    server = uvicorn_server(make_asgi_app(metrics.registry), host, settings.metrics_port, loop="none")
    server.config.lifespan = "off"
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]), name="metrics-listener")
    try:
        yield
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 5)
        sock.close()


@contextlib.asynccontextmanager
async def running_context(settings: SenderSettings) -> AsyncIterator[SenderContext]:
    """Everything a request needs, built (database migrated and seeded, broker connected or, when it is
    down, connecting in the background with /readyz 503 until it is; metrics served), and at the end:
    new requests refused, in-flight ones given the grace, all closed."""
    metrics = SenderMetrics()
    registry = Registry(settings.heartbeat_ttl_s, settings.models)
    store = Store(settings.database_url.get_secret_value())
    if settings.auto_migrate:
        await store.migrate()
    await seed_tokens(store, settings)
    dispatcher = await Dispatcher.create(settings, registry, metrics)
    usage = UsageWriter(store, flush_interval_s=settings.usage_flush_interval_s)
    usage.start()
    tokens = TokenCache(store, ttl_s=settings.token_cache_ttl_s, retry_after_s=settings.retry_after_s)
    export_counters(metrics, usage, tokens)
    ctx = SenderContext(
        settings=settings,
        metrics=metrics,
        registry=registry,
        dispatcher=dispatcher,
        tokens=tokens,
        usage=usage,
        session=proxy.new_session(settings),
        forward_paths=ForwardPaths(settings.forward_paths),
        store=store,
        fairness=FairShare(settings.fair_levels, settings.fair_quantum_tokens),
        limits=limit_store(settings),
    )
    metrics.ready.set_function(lambda: 1.0 if ctx.dispatcher.connected and not ctx.draining else 0.0)
    runner = BatchRunner(ctx, store) if settings.batch_runner else None
    try:
        async with metrics_listener(settings, metrics):
            if runner is not None:
                runner.start()
            log.info("sender ready on %s:%d", settings.host, settings.port)
            yield ctx
            ctx.draining = True
            if runner is not None:
                await runner.stop()  # lines in flight are given back: another sender or the next start runs them
            if ctx.active:
                log.info("waiting for %d requests to finish", len(ctx.active))
                await asyncio.wait(list(ctx.active), timeout=settings.shutdown_grace_s)
    finally:
        ctx.draining = True
        if runner is not None:
            await runner.stop()
        await dispatcher.stop()
        await ctx.limits.close()
        await ctx.session.close()
        await usage.stop()
        await store.dispose()


def limit_store(settings: SenderSettings) -> LimitStore:
    """Per-key limits in Redis when several senders must share them, else in this process."""
    if settings.limits_redis_url is None:
        return MemoryLimits()
    url = settings.limits_redis_url.get_secret_value()
    return RedisLimits(url, settings.queue_prefix, hold_ttl_s=settings.limit_hold_ttl_s)


def export_counters(metrics: SenderMetrics, usage: UsageWriter, tokens: TokenCache) -> None:
    metrics.count("llmd_usage_records_dropped", "Usage records dropped (writer queue full)", lambda: usage.dropped)
    metrics.count("llmd_token_cache_hits", "Token lookups answered from the cache", lambda: tokens.hits)
    metrics.count("llmd_token_cache_misses", "Token lookups that went to the database", lambda: tokens.misses)
    metrics.count(
        "llmd_token_cache_stale_served", "Cached tokens served while the database failed", lambda: tokens.stale_served
    )
    metrics.usage_pending.set_function(lambda: usage.pending)


def create_app(settings: SenderSettings | None = None) -> FastAPI:
    settings = settings or SenderSettings()
    holder: dict[str, SenderContext] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with running_context(settings) as ctx:
            holder["ctx"] = app.state.ctx = ctx
            yield

    app = FastAPI(title="llm-dispatcher", lifespan=lifespan, docs_url=None, redoc_url=None)
    add_error_handlers(app)
    add_routes(app, settings, holder)
    add_batch_routes(app, lambda: holder["ctx"])
    add_admin_routes(app, lambda: holder["ctx"])
    add_console_routes(app, lambda: holder["ctx"])

    def ctx() -> SenderContext:
        return holder["ctx"]

    app.add_middleware(RequestIdMiddleware, get_ctx=ctx, proxy=ProxyEndpoint(ctx))
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error the framework raises answers in the OpenAI shape too."""

    @app.exception_handler(DispatcherError)
    async def _dispatcher_error(_request: Request, exc: DispatcherError) -> Response:
        return JSONBytes(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 or (exc.status_code == 405 and request.method == "POST"):
            return _unknown_url(request)  # a POST nothing serves: unknown, not "other methods exist"
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {405: "method_not_allowed"}.get(exc.status_code)
        return JSONBytes(error_body(str(exc.detail), type_, None, code), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return JSONBytes(error_body(str(exc.errors()), "invalid_request_error"), status_code=400)


def add_routes(app: FastAPI, settings: SenderSettings, holder: dict[str, SenderContext]) -> None:
    """The gateway's own routes (the forwarded inference paths are proxied by the middleware)."""

    def ctx() -> SenderContext:
        return holder["ctx"]

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        await inference_token(ctx(), request.headers.get("authorization"))
        return JSONBytes({"object": "list", "data": ctx().registry.models()})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        token = await inference_token(ctx(), request.headers.get("authorization"))
        for m in ctx().registry.models():
            if m["id"] == model_id and token.allows(model_id):
                return JSONBytes(m)
        raise ModelNotFoundError(f"The model `{shorten(model_id)}` does not exist.", param="model")

    @app.get("/livez")
    async def livez() -> Response:
        return JSONBytes({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        c = holder.get("ctx")
        ready = c is not None and c.dispatcher.connected and not c.draining
        return JSONBytes({"ready": ready}, status_code=200 if ready else 503)

    for path in ForwardPaths(settings.forward_paths):  # proxied by the middleware; here for 405 and the schema
        app.add_api_route(path, _taken_by_the_middleware, methods=["POST"])


async def _taken_by_the_middleware() -> Response:  # pragma: no cover - RequestIdMiddleware proxies these
    raise AssertionError("forwarded paths are proxied before the router")


async def seed_tokens(store: Store, settings: SenderSettings) -> None:
    """The tokens the deployment brings (LLMD_TOKENS_FILE, LLMD_ADMIN_TOKEN), upserted by name. A token
    revoked in the store stays revoked: an import leaves `enabled` as it is."""
    seeded = load_tokens_file(settings.tokens_file) if settings.tokens_file else []
    if settings.admin_token is not None:
        admin = {"name": settings.admin_token_name, "token": settings.admin_token.get_secret_value()}
        seeded.append({**admin, "admin": True, "inference": False})
    if seeded:
        refuse_placeholder_tokens(seeded, settings)
        await store.import_tokens(seeded)


def refuse_placeholder_tokens(tokens: list[dict], settings: SenderSettings) -> None:
    """Example tokens (`...change-me...`) copied into a real deployment are refused, as placeholder passwords are."""
    if settings.is_development():
        return
    names = [str(t.get("name")) for t in tokens if placeholder_credential(f"x://u:{t.get('token', '')}@h")]
    if names:
        raise SystemExit(
            f"LLMD_TOKENS_FILE seeds placeholder tokens outside development: {', '.join(names)}; "
            "give them real values (or LLMD_ENVIRONMENT=development)"
        )


def _unknown_url(request: Request) -> Response:
    exc = UnknownURLError(f"Invalid URL ({request.method} {shorten(request.url.path)})")
    return JSONBytes(exc.body(), status_code=exc.status)
