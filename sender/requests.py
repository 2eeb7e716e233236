"""Reading a client request at the edge: headers in one pass, the body within bounds, the JSON and
the few fields the gateway itself acts on. Pure apart from `read_body` (which awaits the body)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import orjson

from llm_dispatcher.errors import InvalidRequestError, PayloadTooLargeError, RequestTimeoutError, shorten

AUTHORIZATION = b"authorization"
CONTENT_LENGTH = b"content-length"
PRIORITY_HEADER = b"x-priority"
REQUEST_ID_HEADER = b"x-request-id"
MAX_REQUEST_ID = 128
# OpenWebUI's ENABLE_FORWARD_USER_INFO_HEADERS, in the order one of them is taken as the end user.
USER_HEADERS = {
    b"x-openwebui-user-id": 0,
    b"x-openwebui-user-email": 1,
    b"x-openwebui-user-name": 2,
}
STREAM_USAGE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions"})


class ClientGone(Exception):
    """The client closed the connection before the response ended."""


@dataclass(slots=True)
class RequestHeaders:
    authorization: str | None = None
    content_length: int | None = None
    priority: bytes | None = None
    user: bytes | None = None  # OpenWebUI's user (ENABLE_FORWARD_USER_INFO_HEADERS): its id, else email, else name
    user_rank: int = len(USER_HEADERS)


def read_headers(headers: list[tuple[bytes, bytes]]) -> RequestHeaders:
    """The headers the gateway acts on, in one pass (RequestIdMiddleware has already refused a request
    with two Authorization headers: which one a component would take is ambiguous)."""
    out = RequestHeaders()
    for k, v in headers:
        if k == AUTHORIZATION:
            out.authorization = v.decode("latin-1")
        elif k == CONTENT_LENGTH:
            out.content_length = int(v) if v.isdigit() else None
        elif k == PRIORITY_HEADER:
            out.priority = v
        elif k in USER_HEADERS and USER_HEADERS[k] < out.user_rank and v:
            out.user, out.user_rank = v, USER_HEADERS[k]
    return out


def end_user(payload: dict, headers: RequestHeaders) -> str | None:
    """Who the request is for, within its token: the OpenAI `user` field, else OpenWebUI's user header
    (the first 255 characters, control characters escaped)."""
    user = payload.get("user")
    if not isinstance(user, str) or not user:
        user = headers.user.decode("utf-8", "replace") if headers.user else None
    return None if not user else shorten(user, 255)


def client_request_id(value: bytes) -> str | None:
    """The client's X-Request-Id if it is printable ASCII (kept byte for byte, cut at 128), else None."""
    if not value or any(b < 0x20 or b > 0x7E for b in value):
        return None
    return value[:MAX_REQUEST_ID].decode("ascii")


async def read_body(receive, limit: int, declared: int | None, timeout_s: float) -> bytes:
    """The whole body, at most `limit` bytes, arrived within `timeout_s` (408 otherwise: a client
    that announces more than it sends does not hold the connection)."""
    too_large = PayloadTooLargeError(f"request body is larger than the limit of {limit} bytes")
    if declared is not None and declared > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
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
    except TimeoutError:
        raise RequestTimeoutError(f"the request body did not arrive within {timeout_s:g} s") from None


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
    options = payload.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequestError("stream_options must be an object", param="stream_options")
    return payload


def requested_priority(value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError("X-Priority must be an integer", param="X-Priority") from None


@dataclass(frozen=True, slots=True)
class UpstreamBody:
    body: bytes
    strip_usage: bool  # the usage event was asked for on the client's behalf: remove it when relaying


def upstream_body(body: bytes, payload: dict, path: str, vllm_priority: int | None) -> UpstreamBody:
    """What is sent to vLLM: the client's bytes, unless a stream must report usage (asked for on the
    client's behalf) or the priority is forwarded. The payload given is never changed."""
    strip_usage = False
    changes: dict = {}
    if payload.get("stream") is True and path in STREAM_USAGE_PATHS:
        options = payload.get("stream_options") or {}
        if not options.get("include_usage"):
            changes["stream_options"] = {**options, "include_usage": True}
            strip_usage = True
    if vllm_priority is not None:
        changes["priority"] = vllm_priority
    if not changes:
        return UpstreamBody(body, False)
    return UpstreamBody(orjson.dumps({**payload, **changes}), strip_usage)
