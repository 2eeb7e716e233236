"""The admin API under /admin/v1/ (admin-role tokens only), JSON in OpenAI's error shape.

auth.py     require_admin (bearer admin token or the console's session) and the log of every call
tokens.py   tokens: list, create (the value shown once), get, update, revoke
usage.py    usage aggregates and raw records, JSON or CSV
live.py     models, replicas and queues now (heartbeats, queue depths, recent refusals)
schemas.py  the shapes, for the OpenAPI schema (also served at /admin/v1/openapi.json)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request, Security

from sender.admin.auth import AdminRoute, bearer, require_admin
from sender.admin.http import JSON
from sender.admin.live import add_live_routes
from sender.admin.schemas import ERRORS
from sender.admin.tokens import add_token_routes
from sender.admin.usage import add_usage_routes
from sender.context import SenderContext

PREFIX = "/admin/v1"


def add_admin_routes(app: FastAPI, get_ctx: Callable[[], SenderContext]) -> None:
    """Registers the admin API's routes."""

    async def admin(request: Request, _credentials: Any = Security(bearer)) -> None:
        await require_admin(request, get_ctx())

    router = APIRouter(
        prefix=PREFIX,
        tags=["admin"],
        route_class=AdminRoute,
        dependencies=[Depends(admin)],
        responses=ERRORS,
    )
    add_token_routes(router, get_ctx)
    add_usage_routes(router, get_ctx)
    add_live_routes(router, get_ctx)
    schema: dict[str, Any] = {}

    @router.get("/openapi.json", summary="This API's OpenAPI schema", include_in_schema=False)
    async def openapi() -> JSON:
        if not schema:
            schema.update(admin_openapi(app))
        return JSON(schema)

    app.include_router(router)


def admin_openapi(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI schema cut down to the admin routes and the components they refer to."""
    full = copy.deepcopy(app.openapi())
    paths = {p: v for p, v in full["paths"].items() if p.startswith(PREFIX + "/")}
    for operation in (op for item in paths.values() for op in item.values()):
        operation.get("responses", {}).pop("422", None)  # validation errors answer 400 (documented)
    components = full.get("components", {})
    schemas = components.get("schemas", {})
    wanted: dict[str, Any] = {}
    pending = _refs(paths)
    while pending:
        name = pending.pop()
        if name not in wanted and name in schemas:
            wanted[name] = schemas[name]
            pending |= _refs(schemas[name])
    out = {
        "openapi": full["openapi"],
        "info": {**full["info"], "title": f"{full['info']['title']} admin API", "description": ADMIN_DESCRIPTION},
        "paths": paths,
        "components": {"schemas": dict(sorted(wanted.items()))},
    }
    if "securitySchemes" in components:
        out["components"]["securitySchemes"] = components["securitySchemes"]
    return out


ADMIN_DESCRIPTION = "Tokens, usage and live state, for admin tokens only (401 without a token, 403 without the role)."


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[-1]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node)) if node else set()
    return set()
