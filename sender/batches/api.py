"""/v1/files and /v1/batches, in OpenAI's shapes (the official client is the judge). Every file and
batch belongs to the token that made it: another token gets 404 and never sees it in a list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from fastapi import FastAPI, Request, Response
from pydantic import BaseModel

from llm_dispatcher.db import TokenRecord
from llm_dispatcher.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    shorten,
)
from sender.batches.input import COMPLETION_WINDOWS, ENDPOINTS, check_input
from sender.batches.objects import batch_object, file_object, page
from sender.context import SenderContext
from sender.steps import inference_token

FILE_PURPOSES = ("batch",)
MAX_PAGE = 100


class JSON(Response):
    media_type = "application/json"

    def render(self, content) -> bytes:
        return orjson.dumps(content)


class BatchRequest(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _limit(value: int | None, default: int = 20) -> int:
    if value is None:
        return default
    if not 1 <= value <= MAX_PAGE:
        raise InvalidRequestError(f"limit must be between 1 and {MAX_PAGE}", param="limit")
    return value


def add_batch_routes(app: FastAPI, get_ctx: Callable[[], SenderContext]) -> None:
    """/v1/files and /v1/batches on `app`."""
    add_file_routes(app, get_ctx)
    add_batch_object_routes(app, get_ctx)


def _owner(get_ctx: Callable[[], SenderContext]) -> Callable[[Request], Awaitable[TokenRecord]]:
    async def owner(request: Request) -> TokenRecord:
        return await inference_token(get_ctx(), request.headers.get("authorization"))

    return owner


def add_file_routes(app: FastAPI, get_ctx: Callable[[], SenderContext]) -> None:
    owner = _owner(get_ctx)

    @app.post("/v1/files")
    async def create_file(request: Request) -> Response:
        token = await owner(request)
        ctx = get_ctx()
        limit = ctx.settings.batch_max_file_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 65536:
            raise PayloadTooLargeError(f"files are limited to {limit} bytes")
        form = await request.form(max_files=1, max_fields=4)
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose not in FILE_PURPOSES:
            raise InvalidRequestError(f"purpose must be one of {', '.join(FILE_PURPOSES)}", param="purpose")
        if upload is None or isinstance(upload, str):
            raise InvalidRequestError("a file is required (multipart field 'file')", param="file")
        content = await upload.read(limit + 1)
        if len(content) > limit:
            raise PayloadTooLargeError(f"files are limited to {limit} bytes")
        record = await ctx.store.create_file(token.id, purpose, upload.filename or "upload.jsonl", content)
        return JSON(file_object(record))

    @app.get("/v1/files")
    async def list_files(
        request: Request, after: str | None = None, limit: int | None = None, purpose: str | None = None
    ) -> Response:
        token = await owner(request)
        records, more = await get_ctx().store.list_files(
            token.id, after=after, limit=_limit(limit, 100), purpose=purpose
        )
        return JSON(page([file_object(f) for f in records], more))

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> Response:
        token = await owner(request)
        record = await get_ctx().store.get_file(file_id, token.id)
        if record is None:
            raise _no_file(file_id)
        return JSON(file_object(record))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, request: Request) -> Response:
        token = await owner(request)
        content = await get_ctx().store.file_content(file_id, token.id)
        if content is None:
            raise _no_file(file_id)
        return Response(content, media_type="application/octet-stream")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> Response:
        token = await owner(request)
        if not await get_ctx().store.delete_file(file_id, token.id):
            raise _no_file(file_id)
        return JSON({"id": file_id, "object": "file", "deleted": True})


def add_batch_object_routes(app: FastAPI, get_ctx: Callable[[], SenderContext]) -> None:
    owner = _owner(get_ctx)

    @app.post("/v1/batches")
    async def create_batch(body: BatchRequest, request: Request) -> Response:
        token = await owner(request)
        ctx = get_ctx()
        if body.endpoint not in ENDPOINTS:
            raise InvalidRequestError(f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint")
        window = COMPLETION_WINDOWS.get(body.completion_window)
        if window is None:
            raise InvalidRequestError("completion_window must be 24h", param="completion_window")
        content = await ctx.store.file_content(body.input_file_id, token.id)
        if content is None:
            raise _no_file(body.input_file_id, param="input_file_id")
        checked = check_input(content, body.endpoint, ctx.settings.batch_max_lines)
        record = await ctx.store.create_batch(
            token.id,
            body.endpoint,
            body.input_file_id,
            window,
            body.completion_window,
            body.metadata,
            checked.lines,
            checked.errors or None,
        )
        return JSON(batch_object(record))

    @app.get("/v1/batches")
    async def list_batches(request: Request, after: str | None = None, limit: int | None = None) -> Response:
        token = await owner(request)
        records, more = await get_ctx().store.list_batches(token.id, after=after, limit=_limit(limit))
        return JSON(page([batch_object(b) for b in records], more))

    @app.get("/v1/batches/{batch_id}")
    async def get_batch(batch_id: str, request: Request) -> Response:
        token = await owner(request)
        record = await get_ctx().store.get_batch(batch_id, token.id)
        if record is None:
            raise _no_batch(batch_id)
        return JSON(batch_object(record))

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(batch_id: str, request: Request) -> Response:
        token = await owner(request)
        store = get_ctx().store
        record = await store.get_batch(batch_id, token.id)
        if record is None:
            raise _no_batch(batch_id)
        if record.status in ("validating", "in_progress"):
            await store.move(batch_id, ("validating", "in_progress"), "cancelling")
        elif record.status not in ("cancelling", "cancelled"):
            raise ConflictError(f"a batch that is {record.status} cannot be cancelled")
        record = await store.get_batch(batch_id, token.id)
        assert record is not None
        return JSON(batch_object(record))


def _no_file(file_id: str, param: str | None = None) -> NotFoundError:
    return NotFoundError(f"No such File object: {shorten(file_id)}", param=param)


def _no_batch(batch_id: str) -> NotFoundError:
    return NotFoundError(f"No such Batch object: {shorten(batch_id)}")
