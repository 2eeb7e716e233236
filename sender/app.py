"""The sender: an OpenAI-compatible gateway. Built by create_app(settings); the objects it needs are
made in the lifespan and passed down, never created at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route

from llm_dispatcher.db import Store, TokenCache, TokenRecord, UsageRecord, UsageWriter
from llm_dispatcher.errors import (
    DispatcherError,
    InvalidRequestError,
    ModelNotFoundError,
    NoReplicaError,
    OverThresholdError,
    PayloadTooLargeError,
    UpstreamError,
    error_body,
)
from llm_dispatcher.protocol import Grant, clamp_priority
from sender import proxy
from sender.dispatch import Dispatcher
from sender.metrics import SenderMetrics
from sender.registry import Registry
from sender.settings import SenderSettings
from sender.usage import Tail, UsageEventFilter

log = logging.getLogger(__name__)

PRIORITY_HEADER = b"x-priority"
REQUEST_ID_HEADER = b"x-request-id"
_STREAM_USAGE_PATHS = ("/v1/chat/completions", "/v1/completions")


class JSONBytes(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


@dataclass
class SenderContext:
    settings: SenderSettings
    metrics: SenderMetrics
    registry: Registry
    dispatcher: Dispatcher
    tokens: TokenCache
    usage: UsageWriter
    session: aiohttp.ClientSession
    draining: bool = False
    active: set[asyncio.Task] = field(default_factory=set)


class ClientGone(Exception):
    """The client closed the connection before the response ended."""


class UpstreamBroken(Exception):
    """vLLM failed after the response had started: the relayed response was cut short."""


# -- request id ------------------------------------------------------------------------------------
class RequestIdMiddleware:
    """Accepts X-Request-Id (or makes one), exposes it as scope['request_id'], returns it.

    Proxied requests (POST /v1/...) go from here straight to the proxy endpoint: the hot path skips
    the router and the framework's per-request machinery, which the proxy does not use."""

    def __init__(self, app, proxy=None):
        self.app = app
        self.proxy = proxy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request_id = ""
        for k, v in scope["headers"]:
            if k == REQUEST_ID_HEADER:
                request_id = v.decode("latin-1")[:128]
                break
        if not request_id:
            request_id = uuid.uuid4().hex
        scope["request_id"] = request_id
        rid = request_id.encode("latin-1")

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0] != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, rid))
                message["headers"] = headers
            await send(message)

        if self.proxy is not None and scope["method"] == "POST" and scope["path"].startswith("/v1/"):
            await self.proxy(scope, receive, send_with_id)
        else:
            await self.app(scope, receive, send_with_id)


# -- helpers ---------------------------------------------------------------------------------------
async def send_error(send, exc: DispatcherError) -> None:
    body = orjson.dumps(exc.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in exc.headers().items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive, limit: int, declared: int | None) -> bytes:
    too_large = PayloadTooLargeError(f"request body is larger than the limit of {limit} bytes", param=None)
    if declared is not None and declared > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_body(body: bytes) -> dict:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError("the request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    model = payload.get("model")
    if not model or not isinstance(model, str):
        raise InvalidRequestError("you must provide a model parameter", param="model")
    return payload


def requested_priority(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError("X-Priority must be an integer", param="X-Priority") from None


# -- the proxied endpoints: every POST /v1/* ------------------------------------------------------
class ProxyEndpoint:
    """Auth → model → threshold → ticket → grant → relay → release. A raw ASGI app (hot path)."""

    def __init__(self, get_ctx):
        self._get_ctx = get_ctx

    async def __call__(self, scope, receive, send) -> None:
        ctx: SenderContext = self._get_ctx()
        started = time.perf_counter()
        request_id = scope.get("request_id", "")
        headers = scope["headers"]
        model, priority, status, reason = "", 0, 0, "done"
        token: TokenRecord | None = None
        grant: Grant | None = None
        queue_wait, ttfb = 0.0, None
        usage: tuple[int | None, int | None] = (None, None)
        task = asyncio.current_task()
        assert task is not None
        ctx.active.add(task)
        watcher: DisconnectWatcher | None = None
        try:
            auth, declared, wanted_priority = None, None, None
            for k, v in headers:
                if k == b"authorization":
                    auth = v.decode("latin-1")
                elif k == b"content-length":
                    declared = int(v) if v.isdigit() else None
                elif k == PRIORITY_HEADER:
                    wanted_priority = v
            token = await ctx.tokens.authenticate(auth)
            body = await read_body(receive, ctx.settings.max_body_bytes, declared)
            payload = parse_body(body)
            model = payload["model"]
            if not token.allows(model) or not ctx.registry.known(model):
                raise ModelNotFoundError(
                    f"The model `{model}` does not exist or you do not have access to it.", param="model"
                )
            if ctx.draining:
                raise NoReplicaError("the gateway is shutting down", retry_after=ctx.settings.retry_after_s)
            if not ctx.registry.live(model):
                raise NoReplicaError(
                    f"no replica of model '{model}' is live", retry_after=ctx.settings.retry_after_s
                )
            priority = clamp_priority(requested_priority(wanted_priority), token.priority, ctx.settings.max_priority)
            depth = await ctx.dispatcher.depth(model, ctx.settings.queue_depth_max_age_s)
            if depth >= token.threshold:
                raise OverThresholdError(
                    f"model '{model}' has {depth} requests waiting, at or above this key's limit "
                    f"of {token.threshold}; retry later",
                    retry_after=ctx.settings.retry_after_s,
                )
            # From here on a client disconnect cancels this task: the ticket is abandoned, or the
            # upstream request is aborted (vLLM stops generating) and the lease released.
            watcher = DisconnectWatcher(receive, task)
            grant = await ctx.dispatcher.acquire(model, priority, request_id)
            ctx.metrics.in_flight.labels(model).inc()
            queue_wait = time.perf_counter() - started
            ctx.metrics.queue_wait.labels(model, str(priority)).observe(queue_wait)
            status, ttfb, usage = await self._relay(ctx, scope, send, body, payload, grant, priority, started)
        except DispatcherError as exc:
            status, reason = exc.status, exc.code or "error"
            if not isinstance(exc, UpstreamError) and model:
                ctx.metrics.refusals.labels(model, reason).inc()
            with contextlib.suppress(Exception):
                await send_error(send, exc)
        except ClientGone:
            status, reason = 499, "client_disconnected"
        except UpstreamBroken:
            status, reason = 502, "upstream_broken"
        except asyncio.CancelledError:
            if watcher is None or not watcher.fired:
                raise  # a real cancellation (shutdown), not the client leaving
            task.uncancel()
            status, reason = 499, "client_disconnected"
            log.info("client disconnected", extra={"request_id": request_id, "model": model})
        finally:
            if watcher is not None:
                watcher.close()
            if grant is not None:
                await ctx.dispatcher.release(grant, status, reason)
            ctx.active.discard(task)
            total = time.perf_counter() - started
            if model:
                ctx.metrics.requests.labels(model, str(priority), str(status)).inc()
            if grant is not None:
                ctx.metrics.in_flight.labels(model).dec()
                ctx.metrics.proxy_latency.labels(model).observe(total)
                if usage[0] is not None:
                    ctx.metrics.tokens.labels(model, "prompt").inc(usage[0])
                if usage[1] is not None:
                    ctx.metrics.tokens.labels(model, "completion").inc(usage[1])
            if ctx.settings.access_log:
                log.info(
                    "%s %s %d in %.1f ms (queued %.1f ms)", scope["method"], scope["path"], status, total * 1000,
                    queue_wait * 1000,
                    extra={"request_id": request_id, "model": model or None, "priority": priority,
                           "status": status, "replica": grant.replica if grant else None, "reason": reason},
                )
            if token is not None and model:
                ctx.usage.submit(
                    UsageRecord(
                        token_id=token.id,
                        token_name=token.name,
                        model=model,
                        replica=grant.replica if grant else "",
                        priority=priority,
                        status=status,
                        prompt_tokens=usage[0],
                        completion_tokens=usage[1],
                        queue_wait_s=queue_wait,
                        ttfb_s=ttfb,
                        total_s=total,
                        request_id=request_id,
                    )
                )

    async def _relay(self, ctx, scope, send, body, payload, grant: Grant, priority: int, started: float):
        strip_usage = False
        path = scope["path"]
        if payload.get("stream") is True and path in _STREAM_USAGE_PATHS:
            options = payload.get("stream_options") or {}
            if not (isinstance(options, dict) and options.get("include_usage")):
                # Ask vLLM for exact usage on the client's behalf; its usage event is removed again.
                payload["stream_options"] = {**(options if isinstance(options, dict) else {}), "include_usage": True}
                strip_usage = True
        if grant.forward_priority:
            payload["priority"] = ctx.settings.max_priority - priority  # vLLM: lower value runs first
        if strip_usage or grant.forward_priority:
            body = orjson.dumps(payload)
        url = grant.url.rstrip("/") + path
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = proxy.forwarded_headers(scope["headers"], scope.get("request_id", ""))
        try:
            upstream = await ctx.session.request(scope["method"], url, data=body, headers=headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"the model server at {grant.replica} could not be reached: {exc!r}") from exc
        model = payload["model"]
        ttfb = None
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        event_filter = UsageEventFilter() if strip_usage and sse else None
        tail = Tail()
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": upstream.status,
                    "headers": proxy.relayed_headers(upstream, drop_length=event_filter is not None),
                }
            )
            async for chunk in upstream.content.iter_any():
                if ttfb is None:
                    ttfb = time.perf_counter() - started
                    ctx.metrics.ttfb.labels(model).observe(ttfb)
                if event_filter is not None:
                    chunk = event_filter.feed(chunk)
                    if not chunk:
                        continue
                else:
                    tail.add(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            rest = event_filter.flush() if event_filter is not None else b""
            await send({"type": "http.response.body", "body": rest, "more_body": False})
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are gone already: all we can do is end the response early.
            log.warning("upstream failed mid-response: %r", exc, extra={"replica": grant.replica})
            upstream.close()
            raise UpstreamBroken() from exc  # the response is cut; nothing more can be sent
        finally:
            upstream.release()
        if event_filter is not None:
            usage = (event_filter.prompt_tokens, event_filter.completion_tokens)
        else:
            usage = tail.usage()
        return upstream.status, ttfb, usage


class DisconnectWatcher:
    """Reads the request's receive channel after the body; cancels `task` if the client leaves."""

    def __init__(self, receive, task: asyncio.Task):
        self.fired = False
        self._task = task
        self._reader = asyncio.create_task(self._wait(receive))
        self._reader.add_done_callback(self._done)

    @staticmethod
    async def _wait(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    def _done(self, reader: asyncio.Task) -> None:
        if not reader.cancelled() and reader.exception() is None and not self._task.done():
            self.fired = True
            self._task.cancel()

    def close(self) -> None:
        self._reader.remove_done_callback(self._done)
        self._reader.cancel()


# -- the app ---------------------------------------------------------------------------------------
def create_app(settings: SenderSettings | None = None) -> FastAPI:
    settings = settings or SenderSettings()
    holder: dict[str, SenderContext] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = SenderMetrics()
        registry = Registry(settings.heartbeat_ttl_s, settings.models)
        store = Store(settings.database_url)
        if settings.auto_migrate:
            await store.migrate()
        if settings.tokens_file:
            await store.import_tokens(_load_tokens_file(settings.tokens_file))
        dispatcher = Dispatcher(settings, registry, metrics)
        await dispatcher.start()
        usage = UsageWriter(store, flush_interval_s=settings.usage_flush_interval_s)
        usage.start()
        metrics.usage_dropped.set_function(lambda: usage.dropped)
        metrics.usage_pending.set_function(lambda: usage.pending)
        ctx = SenderContext(
            settings=settings,
            metrics=metrics,
            registry=registry,
            dispatcher=dispatcher,
            tokens=TokenCache(store, ttl_s=settings.token_cache_ttl_s),
            usage=usage,
            session=proxy.new_session(settings),
        )
        holder["ctx"] = ctx
        app.state.ctx = ctx
        log.info("sender ready on %s:%d", settings.host, settings.port)
        try:
            yield
        finally:
            ctx.draining = True
            if ctx.active:
                log.info("waiting for %d requests to finish", len(ctx.active))
                await asyncio.wait(list(ctx.active), timeout=settings.shutdown_grace_s)
            await dispatcher.stop()
            await ctx.session.close()
            await usage.stop()
            await store.dispose()

    app = FastAPI(
        title="llm-dispatcher",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )

    def ctx() -> SenderContext:
        return holder["ctx"]

    @app.exception_handler(DispatcherError)
    async def _dispatcher_error(_request: Request, exc: DispatcherError) -> Response:
        return JSONBytes(exc.body(), status_code=exc.status, headers=exc.headers())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return JSONBytes(error_body(str(exc.detail), type_, None, code), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> Response:
        return JSONBytes(error_body(str(exc.errors()), "invalid_request_error"), status_code=400)

    @app.get("/v1/models")
    async def list_models(request: Request) -> Response:
        await ctx().tokens.authenticate(request.headers.get("authorization"))
        return JSONBytes({"object": "list", "data": ctx().registry.models()})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, request: Request) -> Response:
        token = await ctx().tokens.authenticate(request.headers.get("authorization"))
        for m in ctx().registry.models():
            if m["id"] == model_id and token.allows(model_id):
                return JSONBytes(m)
        raise ModelNotFoundError(f"The model `{model_id}` does not exist.", param="model")

    @app.get("/livez")
    async def livez() -> Response:
        return JSONBytes({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        c = holder.get("ctx")
        ready = c is not None and c.dispatcher.connected and not c.draining
        return JSONBytes({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(ctx().metrics.registry), media_type=CONTENT_TYPE_LATEST)

    endpoint = ProxyEndpoint(ctx)
    app.router.routes.append(Route("/v1/{path:path}", endpoint, methods=["POST"]))  # for the OpenAPI/405 view
    app.add_middleware(RequestIdMiddleware, proxy=endpoint)
    return app


def _load_tokens_file(path: str) -> list[dict]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        items = orjson.loads(raw)
    except orjson.JSONDecodeError:
        import yaml

        items = yaml.safe_load(raw)
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a list of tokens")
    return items
