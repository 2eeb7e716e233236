"""The console's sign-in session: an HMAC-signed cookie naming an admin token, never holding it.

Signing in (POST /console/login) exchanges an admin token for the cookie `llmd_console`:

    base64url(json {"i": token id, "h": sha256 of the token, "e": expiry (unix s)}) "." base64url(HMAC-SHA256)

keyed by LLMD_CONSOLE_SECRET (or a random key per process). The plaintext token is never kept: the
cookie carries its hash (what the database stores anyway), so every use re-reads the token from the
database, at most `token_cache_ttl_s` old: a revoked, expired, demoted or re-keyed admin is signed
out within that time. The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's
page makes the browser send it) and Secure when the request came over https.

CSRF: besides SameSite=Strict, a cookie-authenticated call that changes state (any method but GET,
HEAD, OPTIONS) must carry `X-LLMD-Console: 1` — a header a cross-site form cannot set, and a cross-site
script cannot set without a CORS preflight, which the sender never grants — and, where the browser
sends one, an Origin naming the host the request was sent to. `console_session_token` refuses the
call otherwise, so every route authenticated by the cookie gets the check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from llm_dispatcher.db.models import TokenRecord
from llm_dispatcher.errors import PermissionDeniedError

if TYPE_CHECKING:
    from sender.context import SenderContext

COOKIE: Final = "llmd_console"
CONSOLE_HEADER: Final = "x-llmd-console"
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Session:
    token_id: int
    token_hash: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SessionSigner:
    """Issues and reads session values (pure: no I/O)."""

    def __init__(self, key: bytes, lifetime_s: float, clock: Callable[[], float] = time.time):
        if len(key) < 16:
            raise ValueError("the console secret must be at least 16 bytes")
        self._key = key
        self.lifetime_s = lifetime_s
        self._clock = clock

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode("ascii"), hashlib.sha256).digest())

    def issue(self, token_id: int, token_hash: str) -> str:
        body = {"i": token_id, "h": token_hash, "e": int(self._clock() + self.lifetime_s)}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def read(self, value: str | None) -> Session | None:
        """The session in a cookie value, or None when it is missing, forged, malformed or expired."""
        if not value or value.count(".") != 1 or len(value) > 512:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            body = json.loads(_unb64(payload))
            session = Session(int(body["i"]), str(body["h"]), float(body["e"]))
        except (ValueError, KeyError, TypeError):
            return None
        return session if session.expires_at > self._clock() else None


def usable_admin(record: TokenRecord | None) -> bool:
    """An enabled, unexpired token with the admin role."""
    return record is not None and record.enabled and not record.is_expired() and record.admin


def csrf_problem(request: Request) -> str | None:
    """Why a state-changing call authenticated by the cookie is refused (None: it is not)."""
    if request.method in SAFE_METHODS:
        return None
    if request.headers.get(CONSOLE_HEADER) != "1":
        return "console calls that change state must carry the X-LLMD-Console: 1 header"
    if not same_origin(request):
        return "cross-origin console calls are refused"
    return None


def same_origin(request: Request, *, required: bool = False) -> bool:
    """Whether the Origin header (when sent; `required`: it must be) names the host the request was
    sent to. The scheme is not compared: behind a TLS-terminating ingress the sender sees http."""
    origin = request.headers.get("origin")
    if origin is None:
        return not required
    host = request.headers.get("host") or request.url.netloc
    return urlsplit(origin).netloc.lower() == host.lower()


class ConsoleSessions:
    """The signer (made on first use, from the settings) and a short cache of the tokens sessions name."""

    def __init__(self) -> None:
        self._signer: SessionSigner | None = None
        self._records: dict[str, tuple[TokenRecord | None, float]] = {}

    def signer(self, ctx: SenderContext) -> SessionSigner:
        if self._signer is None:
            secret = ctx.settings.console_secret
            key = secret.get_secret_value().encode() if secret is not None else secrets.token_bytes(32)
            self._signer = SessionSigner(key, ctx.settings.console_session_s)
        return self._signer

    async def record(self, ctx: SenderContext, token_hash: str) -> TokenRecord | None:
        now = time.monotonic()
        cached = self._records.get(token_hash)
        if cached is not None and now - cached[1] < ctx.settings.token_cache_ttl_s:
            return cached[0]
        record = await ctx.store.get_token_by_hash(token_hash)
        if len(self._records) > 1000:
            self._records.clear()
        self._records[token_hash] = (record, now)
        return record


def sessions_of(request: Request) -> ConsoleSessions:
    state = request.app.state
    if not hasattr(state, "console_sessions"):
        state.console_sessions = ConsoleSessions()
    return state.console_sessions


async def console_session_token(request: Request, ctx: SenderContext) -> TokenRecord | None:
    """The admin token of the request's console session, re-read from the database (at most
    `token_cache_ttl_s` old), or None when there is no valid session. A state-changing call that fails
    the CSRF check (module docstring) raises PermissionDeniedError (403) instead."""
    sessions = sessions_of(request)
    session = sessions.signer(ctx).read(request.cookies.get(COOKIE))
    if session is None:
        return None
    record = await sessions.record(ctx, session.token_hash)
    if record is None or record.id != session.token_id or not usable_admin(record):
        return None
    if problem := csrf_problem(request):
        raise PermissionDeniedError(problem)
    return record


def set_session_cookie(response: Response, request: Request, ctx: SenderContext, token: TokenRecord, token_hash: str):
    signer = sessions_of(request).signer(ctx)
    response.set_cookie(
        COOKIE,
        signer.issue(token.id, token_hash),
        max_age=int(signer.lifetime_s),
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")


def session_summary(record: TokenRecord) -> dict[str, Any]:
    return {"name": record.name, "id": record.id}
