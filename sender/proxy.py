"""The upstream side: one pooled HTTP client per process, relaying bytes as they arrive."""

from __future__ import annotations

import asyncio

import aiohttp

from sender.settings import SenderSettings

# Request headers passed to vLLM. The client's Authorization is the dispatcher's, never forwarded.
FORWARD_REQUEST_HEADERS = frozenset(
    {b"content-type", b"accept", b"x-request-id", b"user-agent", b"openai-organization", b"openai-project"}
)
USER_INFO_HEADERS = frozenset(
    {b"x-openwebui-user-id", b"x-openwebui-user-email", b"x-openwebui-user-name", b"x-openwebui-user-role"}
)
# Response headers not relayed (hop-by-hop, or recomputed by our server).
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"date",
        b"server",
    }
)


def new_session(settings: SenderSettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_max_connections,
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=30,
    )
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.upstream_connect_timeout_s,
        sock_read=settings.upstream_read_timeout_s,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Content-Type"),
        raise_for_status=False,
    )


def forwarded_headers(
    scope_headers: list[tuple[bytes, bytes]], request_id: str, user_headers: bool = False
) -> dict[str, str]:
    """The client's headers vLLM may see (an allow-list; OpenWebUI's user headers only when asked)."""
    allowed = FORWARD_REQUEST_HEADERS | USER_INFO_HEADERS if user_headers else FORWARD_REQUEST_HEADERS
    out = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope_headers if k in allowed}
    out["x-request-id"] = request_id
    out["accept-encoding"] = "identity"
    return out


def relayed_headers(upstream: aiohttp.ClientResponse, drop_length: bool) -> list[tuple[bytes, bytes]]:
    out = []
    for k, v in upstream.raw_headers:
        name = k.lower()
        if name in HOP_BY_HOP or (drop_length and name == b"content-length"):
            continue
        out.append((name, v))
    return out


class StreamWatchdog:
    """The read timeout between the chunks of a stream, checked every quarter of it: a stream that
    sends nothing for `timeout_s` fails as aiohttp's own read timeout (`sock_read`) fails it, with
    SocketTimeoutError, after `timeout_s` to 1.25 `timeout_s` of silence. aiohttp re-arms a timer on
    every chunk it reads, about a tenth of the sender's CPU per relayed event; so once the response's
    headers are in (their wait stays aiohttp's), its timer is turned off for this response and the
    relay counts chunks in `chunks` instead."""

    def __init__(self, response: aiohttp.ClientResponse, timeout_s: float):
        self.chunks = 0
        self._response = response
        self._timeout_s = timeout_s
        self._period = timeout_s / 4
        self._seen = 0
        self._quiet = 0.0
        connection = response.connection
        if connection is not None and connection.protocol is not None:
            connection.protocol.read_timeout = None  # for this response only: the next request sets its own
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_later(self._period, self._check)

    def _check(self) -> None:
        if self.chunks != self._seen:
            self._seen, self._quiet = self.chunks, 0.0
        else:
            self._quiet += self._period
            if self._quiet >= self._timeout_s:
                self._response.content.set_exception(aiohttp.SocketTimeoutError("Timeout on reading data from socket"))
                return
        self._handle = self._loop.call_later(self._period, self._check)

    def close(self) -> None:
        self._handle.cancel()
