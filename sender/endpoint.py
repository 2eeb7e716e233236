"""The raw ASGI edge of the hot path: the request id middleware and the proxy endpoint, which runs
the steps of sender/steps.py and turns whatever ends a request into its answer and its outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence

import orjson

from llm_dispatcher.errors import DispatcherError, InternalError, InvalidRequestError, UpstreamError
from sender import steps
from sender.context import SenderContext
from sender.refusals import NO_MODEL
from sender.requests import AUTHORIZATION, REQUEST_ID_HEADER, ClientGone, client_request_id
from sender.steps import Outcome, UpstreamBroken

log = logging.getLogger(__name__)


async def send_error(send, exc: DispatcherError, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = orjson.dumps(exc.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode(), v.encode()) for k, v in exc.headers().items()]
    headers += extra
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestIdMiddleware:
    """Accepts X-Request-Id (printable ASCII, kept byte for byte) or makes one, exposes it as
    scope['request_id'] and returns it; refuses two Authorization headers on every route.

    POSTs to a forwarded inference path go from here straight to the proxy endpoint (the hot path
    skips the router), with the canonical path in scope['forward_path']; every other request,
    including any path that is not on the list, goes to the app (its own 404 in the OpenAI shape)."""

    def __init__(self, app, get_ctx, proxy):
        self.app = app
        self._get_ctx = get_ctx
        self.proxy = proxy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        raw_id, authorizations = None, 0
        for k, v in scope["headers"]:  # one pass for both
            if k == REQUEST_ID_HEADER and raw_id is None:
                raw_id = v
            elif k == AUTHORIZATION:
                authorizations += 1
        request_id, refusal = None, None
        if raw_id:  # an empty header is no id: one is made, as for none
            request_id = client_request_id(raw_id)
            if request_id is None:
                refusal = InvalidRequestError("X-Request-Id must be printable ASCII", param="X-Request-Id")
        if request_id is None:
            request_id = uuid.uuid4().hex
        scope["request_id"] = request_id
        rid = request_id.encode("ascii")

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                out = [h for h in message.get("headers", ()) if h[0] != REQUEST_ID_HEADER]
                out.append((REQUEST_ID_HEADER, rid))
                message["headers"] = out
            await send(message)

        if refusal is None and authorizations > 1:
            refusal = InvalidRequestError("send exactly one Authorization header", param="Authorization")
        if refusal is not None:
            return await send_error(send_with_id, refusal)
        if scope["method"] == "POST":
            path = self._get_ctx().forward_paths.match(scope["path"])
            if path is not None:
                scope["forward_path"] = path
                return await self.proxy(scope, receive, send_with_id)
        await self.app(scope, receive, send_with_id)


class ProxyEndpoint:
    """admit → dispatch → relay, then record, for one POST to a forwarded path."""

    def __init__(self, get_ctx):
        self._get_ctx = get_ctx

    async def __call__(self, scope, receive, send) -> None:
        ctx: SenderContext = self._get_ctx()
        outcome = Outcome(started=time.perf_counter(), request_id=scope.get("request_id", ""))
        path = scope["forward_path"]
        task = asyncio.current_task()
        assert task is not None
        ctx.active.add(task)
        watcher: DisconnectWatcher | None = None
        try:
            admission = await steps.admit(ctx, scope, receive, outcome)
            # From here on a client disconnect cancels this task: the ticket is abandoned, or the
            # upstream request is aborted (vLLM stops generating) and the lease released.
            watcher = DisconnectWatcher(receive, task)
            grant = await steps.dispatch(ctx, admission, outcome)
            await steps.relay(
                ctx, admission, grant, path, scope.get("query_string", b""), scope["headers"], send, outcome
            )
        except DispatcherError as exc:
            outcome.fail(exc.status, exc.code or "error")
            if not isinstance(exc, UpstreamError):
                ctx.metrics.recent_refusals.add(outcome.model_label if outcome.model else NO_MODEL, outcome.reason)
                if outcome.model:
                    ctx.metrics.refusals.labels(outcome.model_label, outcome.reason).inc()
            with contextlib.suppress(Exception):
                await send_error(send, exc, steps.rate_headers(outcome))
        except ClientGone:
            outcome.fail(499, "client_disconnected")
        except UpstreamBroken:
            outcome.fail(502, "upstream_broken")
        except asyncio.CancelledError:
            if watcher is None or not watcher.fired:
                raise  # a real cancellation (shutdown), not the client leaving
            task.uncancel()
            if not outcome.delivered:  # gone after its whole stream (before vLLM closed its end): served
                outcome.fail(499, "client_disconnected")
            log.info("client disconnected", extra={"request_id": outcome.request_id, "model": outcome.model})
        except Exception:
            log.exception("request failed", extra={"request_id": outcome.request_id, "model": outcome.model})
            outcome.fail(500, "internal_error")
            with contextlib.suppress(Exception):  # unless the response had started already
                await send_error(send, InternalError("the gateway failed to handle this request"))
        finally:
            if watcher is not None:
                watcher.close()
            try:
                await steps.record(ctx, scope["method"], path, outcome)
            finally:
                ctx.active.discard(task)


class DisconnectWatcher:
    """Reads the request's receive channel after the body; cancels `task` if the client leaves."""

    def __init__(self, receive, task: asyncio.Task):
        self.fired = False
        self._closed = False
        self._task = task
        self._reader = asyncio.create_task(self._wait(receive))
        self._reader.add_done_callback(self._done)

    @staticmethod
    async def _wait(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    def _done(self, reader: asyncio.Task) -> None:
        # A done callback is scheduled when the reader ends, so it may run after close(): by then the
        # request is recording its end (the lease release among it), which no disconnect may cut short.
        if self._closed:
            return
        if not reader.cancelled() and reader.exception() is None and not self._task.done():
            self.fired = True
            self._task.cancel()

    def close(self) -> None:
        self._closed = True
        self._reader.remove_done_callback(self._done)
        self._reader.cancel()
