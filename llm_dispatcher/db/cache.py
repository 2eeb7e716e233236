"""Bearer-token authentication with an in-memory TTL cache in front of the store.

Positive and negative lookups are cached for `ttl_s` (so revocation and new tokens take effect
within that time); concurrent lookups of the same uncached token share one query; expiry is
evaluated on every call against the cached record. If a refresh fails because the database is down,
a stale entry is served rather than locking every client out; a token seen for the first time gets a
generic 503 with Retry-After (the database's own error text stays in the log, reported once, then as
a count).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime

from llm_dispatcher.db.errors import DatabaseUnavailableError
from llm_dispatcher.db.models import TokenRecord, utcnow
from llm_dispatcher.db.store import Store
from llm_dispatcher.db.tokens import hash_token
from llm_dispatcher.errors import AuthenticationError
from llm_dispatcher.logs import RepeatedFailureLog

log = logging.getLogger(__name__)

MISSING_MESSAGE = "Missing API key. Send it as 'Authorization: Bearer <token>'."
MALFORMED_MESSAGE = "Malformed Authorization header. Expected 'Authorization: Bearer <token>'."
UNKNOWN_MESSAGE = "Invalid API key."
UNAVAILABLE_MESSAGE = "The token database is unavailable; retry later."
REVOKED_MESSAGE = "This API key has been revoked."
EXPIRED_MESSAGE = "This API key expired at {expires_at}."


def parse_bearer(header: str | None) -> str:
    """The token from an Authorization header value, or AuthenticationError."""
    if header is None or not header.strip():
        raise AuthenticationError(MISSING_MESSAGE)
    parts = header.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise AuthenticationError(MALFORMED_MESSAGE)
    return parts[1]


class TokenCache:
    def __init__(
        self,
        store: Store,
        ttl_s: float = 10.0,
        *,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utcnow,
        retry_after_s: float = 2.0,
    ):
        self._store = store
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._now = now
        # token hash -> (record or None for "unknown", monotonic time fetched); LRU order
        self._entries: OrderedDict[str, tuple[TokenRecord | None, float]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[TokenRecord | None]] = {}
        self.retry_after_s = retry_after_s
        self.hits = 0
        self.misses = 0
        self.stale_served = 0
        self._failures = RepeatedFailureLog(log, "token lookups")

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    async def authenticate(self, authorization: str | None) -> TokenRecord:
        """The token's record, or AuthenticationError saying what is wrong with the credential."""
        record = await self.lookup(parse_bearer(authorization))
        if record is None:
            raise AuthenticationError(UNKNOWN_MESSAGE)
        if not record.enabled:
            raise AuthenticationError(REVOKED_MESSAGE)
        if record.is_expired(self._now()):
            assert record.expires_at is not None
            raise AuthenticationError(
                EXPIRED_MESSAGE.format(expires_at=record.expires_at.isoformat().replace("+00:00", "Z"))
            )
        return record

    async def lookup(self, plaintext: str) -> TokenRecord | None:
        key = hash_token(plaintext)
        entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[1] < self.ttl_s:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[0]
        self.misses += 1
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._fetch(key))
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._done(key, f))
        try:
            # shield: a client that goes away does not cancel the lookup the others are waiting on
            record = await asyncio.shield(fut)
        except Exception as exc:
            self._failures.failed(exc)
            if entry is not None:
                self.stale_served += 1
                return entry[0]
            raise DatabaseUnavailableError(UNAVAILABLE_MESSAGE, retry_after=self.retry_after_s) from exc
        self._failures.succeeded()
        return record

    def _done(self, key: str, fut: asyncio.Future[TokenRecord | None]) -> None:
        self._inflight.pop(key, None)
        if not fut.cancelled():
            fut.exception()  # retrieved here so an error nobody awaited is not reported as lost

    async def _fetch(self, key: str) -> TokenRecord | None:
        record = await self._store.get_token_by_hash(key)
        self._entries[key] = (record, self._clock())
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return record
