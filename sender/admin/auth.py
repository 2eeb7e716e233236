"""Who may call the admin API, and the log line of every call.

`require_admin` accepts `Authorization: Bearer <admin token>`, or else the console's session cookie
(`sender.console.session.console_session_token`, which also refuses a state-changing call without
the console's CSRF header or from another origin). No token, or an unknown, revoked or expired one:
401; a valid token without the admin role: 403; both in the OpenAI error shape.

`AdminRoute` logs each call on logger `sender.admin` once it is answered: the admin's token name
(never the token), method, path and status.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException

from llm_dispatcher.db import TokenRecord
from llm_dispatcher.db.cache import MISSING_MESSAGE
from llm_dispatcher.errors import AuthenticationError, DispatcherError, InvalidRequestError, PermissionDeniedError
from sender.context import SenderContext

admin_log = logging.getLogger("sender.admin")

NOT_ADMIN_MESSAGE = "This API key may not call the admin API (it has no admin role)."
ANONYMOUS = "-"

# Documents the scheme in the OpenAPI schema; the header itself is read by the token cache.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="An admin token: `llm-dispatcher tokens create NAME --admin` (or the console's session cookie).",
)


async def require_admin(request: Request, ctx: SenderContext) -> TokenRecord:
    """The admin token of this call (also kept as request.state.admin for the log), or the error."""
    authorization = request.headers.get("authorization")
    if authorization is not None:
        token = await ctx.tokens.authenticate(authorization)
    else:
        session = await _console_token(request, ctx)
        if session is None:
            raise AuthenticationError(MISSING_MESSAGE)
        if not session.enabled or session.is_expired():  # re-checked whatever the session layer did
            raise AuthenticationError("This console session's key is no longer valid; sign in again.")
        token = session
    request.state.admin = token.name
    if not token.admin:
        raise PermissionDeniedError(NOT_ADMIN_MESSAGE)
    return token


async def _console_token(request: Request, ctx: SenderContext) -> TokenRecord | None:
    try:
        from sender.console.session import console_session_token
    except ImportError:  # a build without the console: bearer tokens only
        return None
    return await console_session_token(request, ctx)


def validation_error(exc: RequestValidationError) -> InvalidRequestError:
    """FastAPI's validation errors as one OpenAI error naming the first field at fault."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    return InvalidRequestError(
        f"{'.'.join(loc) or 'request'}: {first.get('msg', 'invalid')}", param=loc[0] if loc else None
    )


class AdminRoute(APIRoute):
    """An admin route: validation errors in the OpenAI shape with their param, one log line per call."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def logged(request: Request) -> Response:
            started = time.perf_counter()
            status = 500
            try:
                response = await handler(request)
                status = response.status_code
                return response
            except RequestValidationError as exc:
                status = 400
                raise validation_error(exc) from None
            except DispatcherError as exc:
                status = exc.status
                raise
            except HTTPException as exc:
                status = exc.status_code
                raise
            finally:
                name = getattr(request.state, "admin", ANONYMOUS)
                admin_log.info(
                    "admin %s: %s %s -> %d in %.1f ms",
                    name,
                    request.method,
                    request.url.path,
                    status,
                    (time.perf_counter() - started) * 1000,
                    extra={"request_id": request.scope.get("request_id"), "status": status, "admin": name},
                )

        return logged
