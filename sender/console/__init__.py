"""The web console under /console/ (admin-role tokens only).

Static pages and small JavaScript modules, all served by the sender (no CDN: it works air-gapped).
The pages hold no data: their scripts read it from the admin API (/admin/v1/...) with the session
cookie, and build the DOM with textContent, so nothing a token name or a model name contains is
ever parsed as HTML. The Playground calls the ordinary /v1 API with a key the operator pastes into
it, kept in the page's memory only.

    session.py       the sign-in cookie (signed, HttpOnly, SameSite=Strict) and the CSRF rule
    pages/*.html     each page's main part, put into one layout here
    static/          the scripts, the style sheet and the vendored chart library (static/vendor/)

Every response under /console/ carries a strict Content-Security-Policy (scripts and styles from the
sender only, nothing inline, no framing) and nosniff / no-referrer headers. Without a session every
page but the sign-in page redirects to it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Final

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_dispatcher.db.tokens import hash_token
from llm_dispatcher.errors import AuthenticationError, InvalidRequestError, PermissionDeniedError
from sender.console.session import (
    CONSOLE_HEADER,
    clear_session_cookie,
    console_session_token,
    same_origin,
    session_summary,
    set_session_cookie,
)

PREFIX: Final = "/console"
CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS: Final = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
CHART_PAGES: Final = frozenset({"usage", "queues"})
CHART_ASSETS: Final = (
    f'<link rel="stylesheet" href="{PREFIX}/static/vendor/uPlot.min.css">'
    f'<script src="{PREFIX}/static/vendor/uPlot.iife.min.js" defer></script>'
)
NO_STORE: Final = (b"cache-control", b"no-store")
# page path -> (title, navigation label); the order is the navigation's
PAGES: Final = {
    "models": ("Models", "Models"),
    "playground": ("Playground", "Playground"),
    "keys": ("API keys", "Keys"),
    "usage": ("Usage", "Usage"),
    "queues": ("Queues", "Queues"),
}


class ConsoleHeaders:
    """Adds the security headers to every response under /console/ (pages, assets, errors, redirects);
    pages and the console's JSON are not cached either. Other paths pass untouched."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not (path == PREFIX or path.startswith(PREFIX + "/")):
            return await self.app(scope, receive, send)
        extra = SECURITY_HEADERS if path.startswith(PREFIX + "/static/") else [*SECURITY_HEADERS, NO_STORE]
        names = {name for name, _ in extra}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() not in names]
                message["headers"] = [*headers, *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


@functools.cache
def _fragment(name: str) -> str:
    return resources.files(__package__).joinpath("pages", f"{name}.html").read_text("utf-8")


def render_page(page: str) -> str:
    """One page: the layout around pages/<page>.html. Only the package's own text goes in: the data
    comes later, from the admin API, through the page's script."""
    if page == "login":
        title, nav = "Sign in", ""
    else:
        title = PAGES[page][0]
        current = ' aria-current="page"'
        links = "".join(
            f'<a href="{PREFIX}/{p}"{current if p == page else ""}>{label}</a>' for p, (_, label) in PAGES.items()
        )
        nav = (
            f'<nav class="top"><span class="brand">llm-dispatcher</span>{links}'
            '<span class="who" id="who"></span>'
            '<button type="button" id="logout" class="link">Sign out</button></nav>'
        )
    return (
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title} · llm-dispatcher console</title>"
        f'<link rel="stylesheet" href="{PREFIX}/static/console.css">'
        f"{CHART_ASSETS if page in CHART_PAGES else ''}"
        f'<link rel="icon" href="{PREFIX}/static/favicon.svg" type="image/svg+xml">'
        f'<script type="module" src="{PREFIX}/static/{page}.js"></script>'
        f'</head><body data-page="{page}">{nav}<main>{_fragment(page)}</main></body></html>\n'
    )


def add_console_routes(app: FastAPI, get_ctx: Callable) -> None:
    """Registers the console's pages and assets."""
    app.add_middleware(ConsoleHeaders)

    async def signed_in(request: Request):
        return await console_session_token(request, get_ctx())

    def to_sign_in() -> Response:
        return RedirectResponse(f"{PREFIX}/login", status_code=303)

    @app.get(PREFIX, include_in_schema=False)
    @app.get(PREFIX + "/", include_in_schema=False)
    async def console_root(request: Request) -> Response:
        if await signed_in(request) is None:
            return to_sign_in()
        return RedirectResponse(f"{PREFIX}/models", status_code=303)

    @app.get(PREFIX + "/login", include_in_schema=False)
    async def sign_in_page(request: Request) -> Response:
        if await signed_in(request) is not None:
            return RedirectResponse(f"{PREFIX}/models", status_code=303)
        return HTMLResponse(render_page("login"))

    @app.post(PREFIX + "/login", include_in_schema=False)
    async def sign_in(request: Request) -> Response:
        """Exchanges an admin token (JSON {"token"} or a form field `token`) for the session cookie."""
        # Signing in changes state too: the console's header, or a form posted from this very host.
        if not (
            (request.headers.get(CONSOLE_HEADER) == "1" and same_origin(request)) or same_origin(request, required=True)
        ):
            raise PermissionDeniedError("sign in from the console's own page")
        form = "application/json" not in request.headers.get("content-type", "")
        token = await _posted_token(request, form)
        ctx = get_ctx()
        record = await ctx.tokens.authenticate(f"Bearer {token}")
        if not record.admin:
            raise PermissionDeniedError("this token has no admin role: the console needs an admin token")
        response: Response = (
            RedirectResponse(f"{PREFIX}/models", status_code=303) if form else JSONResponse(session_summary(record))
        )
        set_session_cookie(response, request, ctx, record, hash_token(token))
        return response

    @app.post(PREFIX + "/logout", include_in_schema=False)
    async def sign_out(request: Request) -> Response:
        if request.headers.get(CONSOLE_HEADER) != "1" or not same_origin(request):
            raise PermissionDeniedError("sign out from the console's own page")
        response = Response(status_code=204)
        clear_session_cookie(response, request)
        return response

    @app.get(PREFIX + "/session", include_in_schema=False)
    async def session_info(request: Request) -> Response:
        record = await signed_in(request)
        if record is None:
            raise AuthenticationError("not signed in to the console")
        return JSONResponse(session_summary(record))

    for page in PAGES:
        app.add_api_route(f"{PREFIX}/{page}", _page_route(page, signed_in, to_sign_in), include_in_schema=False)

    static = resources.files(__package__).joinpath("static")
    app.mount(PREFIX + "/static", StaticFiles(directory=str(static)), name="console-static")

    @app.get(PREFIX + "/{rest:path}", include_in_schema=False)
    async def console_other(rest: str, request: Request) -> Response:
        if await signed_in(request) is None:
            return to_sign_in()
        return HTMLResponse("<!doctype html><title>Not found</title><p>No such console page.</p>", status_code=404)


def _page_route(page: str, signed_in: Callable, to_sign_in: Callable[[], Response]) -> Callable:
    async def show(request: Request) -> Response:
        if await signed_in(request) is None:
            return to_sign_in()
        return HTMLResponse(render_page(page))

    show.__name__ = f"console_{page}"
    return show


async def _posted_token(request: Request, form: bool) -> str:
    try:
        if form:
            token = (await request.form()).get("token")
        else:
            token = (await request.json()).get("token")
    except (ValueError, AttributeError, AssertionError):
        token = None
    if not isinstance(token, str) or not token.strip():
        raise InvalidRequestError("give the admin token as `token`", param="token")
    return token.strip()
