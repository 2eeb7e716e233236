"""/admin/v1/tokens: the same TokenStore operations (and validation) as `llm-dispatcher tokens`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from llm_dispatcher.db import DuplicateTokenError, TokenNotFoundError
from llm_dispatcher.db.tokens import LIMIT_FIELDS, TOKEN_FIELDS, token_columns, token_json, validate_name
from llm_dispatcher.errors import AlreadyExistsError, InvalidRequestError, NotFoundError, shorten
from sender.admin.auth import validation_error
from sender.admin.http import JSON, MAX_PAGE, body_schema
from sender.admin.schemas import Token, TokenCreate, TokenCreated, TokenList, TokenUpdate
from sender.context import SenderContext

M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, model: type[M]) -> M:
    """The JSON body as `model`, or a 400 naming the field (read after authentication)."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise validation_error(RequestValidationError(exc.errors())) from None


def check_fields(fields: dict[str, Any]) -> None:
    """Each field through the store's own validation, one at a time, so that the 400 names it."""
    for key, value in fields.items():
        if key in TOKEN_FIELDS:
            try:
                token_columns({key: value}, partial=True)
            except ValueError as exc:
                raise InvalidRequestError(str(exc), param=key) from None


def _no_token(name: str) -> NotFoundError:
    return NotFoundError(f"No token named {shorten(name)!r}", param="name")


def checked_creation(body: TokenCreate) -> bool:
    """Whether the new token has inference rights (by default: unless it is an admin token), once its
    name and fields are valid; an inference token needs a priority and a threshold."""
    try:
        validate_name(body.name)
    except ValueError as exc:
        raise InvalidRequestError(str(exc), param="name") from None
    inference = (not body.admin) if body.inference is None else body.inference
    fields = body.model_dump(exclude={"name", "admin", "inference"}, exclude_none=True)
    check_fields(fields)
    for required in ("priority", "threshold") if inference else ():
        if required not in fields:
            raise InvalidRequestError(f"{required} is required for a token with inference rights", param=required)
    return inference


def checked_changes(body: TokenUpdate) -> dict:
    """The fields a PATCH gives, at least one, none of the required ones set to null."""
    given = body.model_dump(include=body.model_fields_set)
    for key in ("priority", "threshold", "enabled", "admin", "inference"):
        if key in given and given[key] is None:
            raise InvalidRequestError(f"{key} cannot be null", param=key)
    if not given:
        raise InvalidRequestError("give at least one field to change")
    check_fields(given)
    return given


def add_token_routes(router: APIRouter, get_ctx: Callable[[], SenderContext]) -> None:
    add_token_reads(router, get_ctx)
    add_token_writes(router, get_ctx)


def add_token_reads(router: APIRouter, get_ctx: Callable[[], SenderContext]) -> None:
    @router.get("/tokens", summary="List tokens", response_model=TokenList)
    async def list_tokens(
        limit: int = Query(20, ge=1, le=MAX_PAGE, description="Tokens per page"),
        after: str | None = Query(None, description="Continue after this token name (`last_id` of a page)"),
    ) -> JSON:
        records = await get_ctx().store.list_tokens(after=after, limit=limit + 1)
        page = records[:limit]
        return JSON(
            {
                "object": "list",
                "data": [token_json(r) for r in page],
                "has_more": len(records) > limit,
                "last_id": page[-1].name if page else None,
            }
        )

    @router.get(
        "/tokens/{name}", summary="Get a token", response_model=Token, responses={404: {"description": "No such token"}}
    )
    async def get_token(name: str) -> JSON:
        try:
            record = await get_ctx().store.get_token(name)
        except TokenNotFoundError:
            raise _no_token(name) from None
        return JSON(token_json(record))


def add_token_writes(router: APIRouter, get_ctx: Callable[[], SenderContext]) -> None:
    @router.post(
        "/tokens",
        summary="Create a token (its value is returned this once)",
        status_code=201,
        response_model=TokenCreated,
        responses={409: {"description": "A token of that name exists"}},
        openapi_extra=body_schema(TokenCreate),
    )
    async def create_token(request: Request) -> JSON:
        body = await read_body(request, TokenCreate)
        inference = checked_creation(body)
        try:
            record, key = await get_ctx().store.create_token(
                body.name,
                priority=body.priority,
                threshold=body.threshold,
                allowed_models=body.allowed_models,
                expires_at=body.expires_at,
                batch_priority=body.batch_priority,
                admin=body.admin,
                inference=inference,
                **{name: getattr(body, name) for name in LIMIT_FIELDS},
            )
        except DuplicateTokenError as exc:
            raise AlreadyExistsError(str(exc), param="name") from None
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        return JSON({"token": token_json(record), "key": key}, status_code=201)

    @router.patch(
        "/tokens/{name}",
        summary="Change a token (only the fields given)",
        response_model=Token,
        responses={404: {"description": "No such token"}},
        openapi_extra=body_schema(TokenUpdate),
    )
    async def update_token(name: str, request: Request) -> JSON:
        given = checked_changes(await read_body(request, TokenUpdate))
        try:
            record = await get_ctx().store.update_token(name, **given)
        except TokenNotFoundError:
            raise _no_token(name) from None
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        return JSON(token_json(record))

    @router.delete(
        "/tokens/{name}",
        summary="Revoke a token (it stays listed, disabled)",
        response_model=Token,
        responses={404: {"description": "No such token"}},
    )
    async def revoke_token(name: str) -> JSON:
        try:
            record = await get_ctx().store.update_token(name, enabled=False)
        except TokenNotFoundError:
            raise _no_token(name) from None
        return JSON(token_json(record))
