"""The steps of one dispatched request, each reusable on its own (a batch line, a per-key limit or a
fairness stage calls the ones it needs):

    admit     auth and rights → body → model → threshold (pure apart from the token lookup and the depth read)
    dispatch  ticket → grant (the wait in the model's priority queue)
    relay     the request to the granted replica, its answer relayed as it arrives
    record    release, metrics, access log, usage — whatever happened before

Every step fills the request's `Outcome`; `record` reads only that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from llm_dispatcher.db import TokenRecord, UsageRecord
from llm_dispatcher.errors import (
    ModelNotFoundError,
    NoReplicaError,
    OverThresholdError,
    PermissionDeniedError,
    RateLimitError,
    UpstreamError,
    error_body,
    shorten,
)
from llm_dispatcher.protocol import Grant, clamp_priority
from sender import proxy
from sender.context import SenderContext
from sender.fairness import Share, estimated_cost
from sender.limits import Hold, KeyLimits, Refusal
from sender.metrics import OTHER_MODEL
from sender.requests import (
    UpstreamBody,
    end_user,
    parse_body,
    read_body,
    read_headers,
    requested_priority,
    upstream_body,
)
from sender.usage import Tail, UsageEventFilter

log = logging.getLogger(__name__)
access_log = logging.getLogger("sender.access")  # one line per request (LLMD_ACCESS_LOG), apart from the rest


# Ends a stream whose model server was lost mid-way (blank lines first: they end a cut event, and are
# ignored after a whole one).
STREAM_LOST_EVENT = (
    b"\n\ndata: "
    + orjson.dumps(error_body("the model server was lost mid-stream", "server_error", None, "upstream_disconnected"))
    + b"\n\ndata: [DONE]\n\n"
)


class UpstreamBroken(Exception):
    """vLLM failed after the response had started: the relayed response was cut short."""


@dataclass(slots=True)
class Outcome:
    """Everything known about one request when it ends, however it ends."""

    started: float
    request_id: str
    model: str = ""  # as the client sent it, shortened (safe to log and store)
    model_label: str = OTHER_MODEL  # bounded: a known model's name or one bucket
    priority: int = 0
    status: int = 0
    reason: str = "done"
    token: TokenRecord | None = None
    grant: Grant | None = None
    share: Share | None = None  # its place in the band's fair share, from dispatch on
    holds: list[Hold] = field(default_factory=list)  # its places in its key's limits, from admit on
    holding: asyncio.Future[None] | None = None  # the limits' decision, when it runs beside the queue wait
    end_user: str | None = None
    delivered: bool = False  # a stream relayed up to its `data: [DONE]`: the client has its whole answer
    queue_depth: int | None = None
    queue_wait_s: float = 0.0
    ttfb_s: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    def fail(self, status: int, reason: str) -> None:
        self.status, self.reason = status, reason


@dataclass(frozen=True, slots=True)
class Admission:
    token: TokenRecord
    body: bytes
    payload: dict
    model: str
    priority: int


# -- admit -----------------------------------------------------------------------------------------
NO_INFERENCE_MESSAGE = "This API key may not call the inference API (it has no inference rights)."


async def inference_token(ctx: SenderContext, authorization: str | None) -> TokenRecord:
    """The token of a /v1 call: authenticated (401) and allowed to use the inference API (403)."""
    token = await ctx.tokens.authenticate(authorization)
    if not token.inference:
        raise PermissionDeniedError(NO_INFERENCE_MESSAGE)
    return token


async def admit(ctx: SenderContext, scope, receive, outcome: Outcome) -> Admission:
    """The token, the body and the model, checked; the priority clamped; the threshold applied to the
    model queue's real depth, less this sender's own batch lines. Raises a DispatcherError
    (the OpenAI error to answer) or ClientGone."""
    settings = ctx.settings
    headers = read_headers(scope["headers"])
    token = outcome.token = await inference_token(ctx, headers.authorization)
    body = await read_body(receive, settings.max_body_bytes, headers.content_length, settings.body_read_timeout_s)
    payload = parse_body(body)
    model = payload["model"]
    outcome.model = shorten(model)
    if not token.allows(model) or not ctx.registry.known(model):
        raise ModelNotFoundError(
            f"The model `{outcome.model}` does not exist or you do not have access to it.", param="model"
        )
    outcome.model_label = model
    if ctx.draining:
        raise NoReplicaError("the gateway is shutting down", retry_after=settings.retry_after_s)
    if not ctx.registry.live(model):
        raise NoReplicaError(f"no replica of model '{model}' is live", retry_after=settings.retry_after_s)
    priority = outcome.priority = clamp_priority(
        requested_priority(headers.priority), token.priority, settings.max_priority
    )
    # This sender's own batch lines in the queue do not count against an interactive threshold (a batch
    # fills idle capacity, it never sheds anyone); other senders' (at most batch_max_waiting each) do.
    depth = outcome.queue_depth = await ctx.dispatcher.depth_for_threshold(model, settings.queue_depth_max_age_s)
    if depth >= token.threshold:
        # The depth is for operators (log, metrics), not for the caller.
        raise OverThresholdError(
            f"model '{model}' is busy for this key's class of requests; retry later",
            retry_after=settings.retry_after_s,
        )
    outcome.end_user = end_user(payload, headers)
    admission = Admission(token=token, body=body, payload=payload, model=model, priority=priority)
    await hold_limits(ctx, admission, outcome)
    return admission


def key_limits(token: TokenRecord, user: str | None) -> list[tuple[str, KeyLimits]]:
    """The limited keys a request of this token (and end user) counts in: the token's, its end user's."""
    out = []
    limits = KeyLimits(token.max_parallel, token.rpm, token.tpm)
    if limits:
        out.append((f"t{token.id}", limits))
    if token.user_max_parallel is not None and user is not None:
        out.append((f"t{token.id}:u:{user}", KeyLimits(max_parallel=token.user_max_parallel)))
    return out


async def hold_limits(ctx: SenderContext, admission: Admission, outcome: Outcome) -> None:
    """Count the request in each of its keys' limits, or refuse it (429) with the one it would pass;
    a refused request is counted in none. When the store is a remote one and every key was far from
    its limits at its last decision here, the decision runs while the ticket waits (`limits_decided`
    awaits it before the relay, so the limits hold exactly; a refusal then releases its grant)."""
    keys = key_limits(admission.token, outcome.end_user)
    if not keys:
        return
    cost = estimated_cost(admission.body, admission.payload)
    if all(ctx.limits.likely_admitted(key, limits, cost) for key, limits in keys):
        outcome.holding = asyncio.ensure_future(take_holds(ctx, admission, outcome, keys, cost))
    else:
        await take_holds(ctx, admission, outcome, keys, cost)


async def limits_decided(outcome: Outcome) -> None:
    """The decision `hold_limits` left to run beside the queue wait, if it did: raises its 429. A client
    that leaves meanwhile does not cut it short (shielded): `record` waits for it, then releases its holds."""
    if outcome.holding is not None:
        await asyncio.shield(outcome.holding)
        outcome.holding = None


async def take_holds(
    ctx: SenderContext, admission: Admission, outcome: Outcome, keys: list[tuple[str, KeyLimits]], cost: int
) -> None:
    for key, limits in keys:
        result = await ctx.limits.admit(key, limits, cost)
        if isinstance(result, Refusal):
            await release_limits(ctx, outcome, 0)
            raise RateLimitError(
                refusal_message(result, key != f"t{admission.token.id}"),
                kind=REFUSAL_TYPES[result.what],
                retry_after=result.retry_after_s,
                rate_headers=result.usage.headers(),
            )
        outcome.holds.append(result)


REFUSAL_TYPES = {"parallel": "parallel_requests", "requests": "requests", "tokens": "tokens"}
_REFUSAL_UNITS = {
    "parallel": "requests at once",
    "requests": "requests per min (RPM)",
    "tokens": "tokens per min (TPM)",
}


def refusal_message(r: Refusal, per_user: bool) -> str:
    who = "this key's end user" if per_user else "this key"
    return (
        f"Rate limit reached for {who} on {_REFUSAL_UNITS[r.what]}: limit {r.limit}, used {r.used}. "
        f"Please try again in {r.retry_after_s:.1f}s."
    )


async def release_limits(ctx: SenderContext, outcome: Outcome, tokens: int | None) -> None:
    holds, outcome.holds = outcome.holds, []
    for hold in holds:
        try:
            await ctx.limits.release(hold, tokens)
        except Exception as exc:  # the store is away: a hold lapses with its TTL, a count with its window
            log.warning("releasing a limit hold failed: %r", exc, extra={"request_id": outcome.request_id})


def rate_headers(outcome: Outcome) -> list[tuple[bytes, bytes]]:
    """OpenAI's x-ratelimit-* headers of the request's token, for every response it gets."""
    return outcome.holds[0].usage.headers() if outcome.holds else []


# -- dispatch --------------------------------------------------------------------------------------
def used_tokens(outcome: Outcome) -> int | None:
    """What the request cost its key: the exact count when usage was read, none when no replica was
    reached, else unknown (its estimate stands)."""
    if outcome.prompt_tokens is not None or outcome.completion_tokens is not None:
        return (outcome.prompt_tokens or 0) + (outcome.completion_tokens or 0)
    return 0 if outcome.grant is None else None


def fair_key(admission: Admission, end_user: str | None = None) -> str:
    """Who a request's fair share belongs to within its band: its end user when it names one (one
    application key serving many people shares fairly between them), else its token."""
    token = str(admission.token.id)
    return token if end_user is None else f"{token}:{end_user}"


async def dispatch(ctx: SenderContext, admission: Admission, outcome: Outcome, *, batch: bool = False) -> Grant:
    """Wait in the model's queue for a grant, at the sub-level of the band the key's share gives. The
    caller owns the grant (and the share) from here: `record` releases both."""
    cost = estimated_cost(admission.body, admission.payload)
    key = fair_key(admission, outcome.end_user)
    share = outcome.share = ctx.fairness.enter(admission.model, admission.priority, key, cost)
    try:
        grant = outcome.grant = await ctx.dispatcher.acquire(
            admission.model, admission.priority, outcome.request_id, batch=batch, sub=share.sub
        )
    finally:
        ctx.fairness.stop_waiting(share)
    ctx.metrics.in_flight.labels(admission.model).inc()
    outcome.queue_wait_s = time.perf_counter() - outcome.started
    ctx.metrics.queue_wait.labels(admission.model, str(admission.priority)).observe(outcome.queue_wait_s)
    await limits_decided(outcome)  # a 429 after all: `record` releases the grant
    return grant


# -- relay -----------------------------------------------------------------------------------------
async def relay(
    ctx: SenderContext,
    admission: Admission,
    grant: Grant,
    path: str,
    query: bytes,
    client_headers: list[tuple[bytes, bytes]],
    send,
    outcome: Outcome,
) -> None:
    """Send the request to the granted replica and relay its answer to `send` (ASGI messages) as it
    arrives: status and headers as vLLM gave them, bytes unchanged, streams unbuffered."""
    request, upstream = await open_upstream(ctx, admission, grant, path, query, client_headers, outcome)
    outcome.status = upstream.status
    sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
    event_filter = UsageEventFilter() if request.strip_usage and sse else None
    tail = Tail()
    watchdog = proxy.StreamWatchdog(upstream, ctx.settings.upstream_read_timeout_s) if sse else None
    try:
        await send(
            {
                "type": "http.response.start",
                "status": upstream.status,
                "headers": proxy.relayed_headers(upstream, drop_length=event_filter is not None)
                + rate_headers(outcome),
            }
        )
        ttfb = ctx.metrics.ttfb.labels(admission.model)
        await relay_body(upstream, send, outcome, ttfb, event_filter, tail, sse, watchdog)
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Headers are gone already: a stream ends with an error event and [DONE], as vLLM ends one whose
        # engine failed, so that the client reads a clear error; any other body can only be cut short.
        log.warning("upstream failed mid-response: %r", exc, extra={"replica": grant.replica})
        upstream.close()
        if sse:
            with contextlib.suppress(Exception):
                await send({"type": "http.response.body", "body": STREAM_LOST_EVENT, "more_body": False})
        raise UpstreamBroken() from exc
    finally:
        if watchdog is not None:
            watchdog.close()
        upstream.release()
        # However the relay ended: a client that hangs up right after the last event (before vLLM's
        # connection closed) has still been served, and its tokens are counted.
        counted = tail if event_filter is None else event_filter
        outcome.prompt_tokens, outcome.completion_tokens = counted.usage()


async def open_upstream(
    ctx: SenderContext,
    admission: Admission,
    grant: Grant,
    path: str,
    query: bytes,
    client_headers: list[tuple[bytes, bytes]],
    outcome: Outcome,
) -> tuple[UpstreamBody, aiohttp.ClientResponse]:
    """The request as the replica gets it, sent: its response with status and headers read."""
    vllm_priority = ctx.settings.max_priority - admission.priority if grant.forward_priority else None
    request = upstream_body(admission.body, admission.payload, path, vllm_priority)
    url = grant.url.rstrip("/") + path
    if query:
        url += "?" + query.decode("latin-1")
    headers = proxy.forwarded_headers(client_headers, outcome.request_id, ctx.settings.forward_user_headers)
    try:
        return request, await ctx.session.post(url, data=request.body, headers=headers)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(f"the model server at {grant.replica} could not be reached: {exc!r}") from exc


async def relay_body(
    upstream: aiohttp.ClientResponse,
    send,
    outcome: Outcome,
    ttfb,
    event_filter: UsageEventFilter | None,
    tail: Tail,
    sse: bool,
    watchdog: proxy.StreamWatchdog | None,
) -> None:
    """The response body, chunk by chunk as it arrives (the usage event we added taken out of a stream)."""
    async for chunk in upstream.content.iter_any():
        if watchdog is not None:
            watchdog.chunks += 1
        if outcome.ttfb_s is None:
            outcome.ttfb_s = time.perf_counter() - outcome.started
            ttfb.observe(outcome.ttfb_s)
        if event_filter is not None:
            chunk = event_filter.feed(chunk)
            if not chunk:
                continue
        else:
            tail.add(chunk)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if sse and chunk.rstrip().endswith(b"data: [DONE]"):
            outcome.delivered = True
    rest = event_filter.flush() if event_filter is not None else b""
    await send({"type": "http.response.body", "body": rest, "more_body": False})


# -- record ----------------------------------------------------------------------------------------
async def record(ctx: SenderContext, method: str, path: str, outcome: Outcome) -> None:
    """The end of every request: the lease released, metrics, one access-log line, one usage record."""
    grant, m = outcome.grant, ctx.metrics
    if outcome.share is not None:
        ctx.fairness.leave(outcome.share)
    if outcome.holding is not None:  # the request ended while its limits were being decided
        with contextlib.suppress(Exception):
            await limits_decided(outcome)
    if outcome.holds:
        await release_limits(ctx, outcome, used_tokens(outcome))
    if grant is not None:
        await ctx.dispatcher.release(grant, outcome.status, outcome.reason)
    total = time.perf_counter() - outcome.started
    if outcome.model:
        m.requests.labels(outcome.model_label, str(outcome.priority), str(outcome.status)).inc()
    if grant is not None:
        m.in_flight.labels(outcome.model_label).dec()
        m.proxy_latency.labels(outcome.model_label).observe(total)
        if outcome.prompt_tokens is not None:
            m.tokens.labels(outcome.model_label, "prompt").inc(outcome.prompt_tokens)
        if outcome.completion_tokens is not None:
            m.tokens.labels(outcome.model_label, "completion").inc(outcome.completion_tokens)
    if ctx.settings.access_log:
        access_log.info(
            "%s %s %d in %.1f ms (queued %.1f ms)",
            method,
            path,
            outcome.status,
            total * 1000,
            outcome.queue_wait_s * 1000,
            extra={
                "request_id": outcome.request_id,
                "model": outcome.model or None,
                "priority": outcome.priority,
                "status": outcome.status,
                "replica": grant.replica if grant else None,
                "reason": outcome.reason,
                "queue_depth": outcome.queue_depth,
            },
        )
    if outcome.token is not None and outcome.model:
        ctx.usage.submit(
            UsageRecord(
                token_id=outcome.token.id,
                token_name=outcome.token.name,
                model=outcome.model,
                replica=grant.replica if grant else "",
                priority=outcome.priority,
                status=outcome.status,
                prompt_tokens=outcome.prompt_tokens,
                completion_tokens=outcome.completion_tokens,
                queue_wait_s=outcome.queue_wait_s,
                ttfb_s=outcome.ttfb_s,
                total_s=total,
                request_id=outcome.request_id,
                end_user=outcome.end_user,
            )
        )
