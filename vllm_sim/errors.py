"""vLLM's error responses: ``{"error": {message, type, param, code}}`` with vLLM's type names and texts.

Three families, as vLLM 0.32 produces them: its own request checks (``param_error``: "... (parameter=p,
value=v)"), request-schema errors from pydantic/FastAPI (``validation_error``: type "Bad Request"), and
everything else named after the HTTP status (``vllm_error_type``: 404 NotFoundError, ...).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson

ENGINE_DEAD = "EngineCore encountered an issue. See stack trace (above) for the root cause."


class ApiError(Exception):
    """An error rendered as vLLM's envelope {"error": {message, type, param, code}}."""

    def __init__(self, status: int, message: str, *, param: str | None = None, err_type: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.err_type = err_type or vllm_error_type(status)

    def body(self) -> bytes:
        return vllm_error_body(self.status, self.message, self.err_type, self.param)


def vllm_error_type(status: int) -> str:
    """vLLM's names: 400 BadRequestError, 404 NotFoundError, 500 InternalServerError, ..."""
    return "".join(HTTPStatus(status).phrase.split()) + "Error" if status != 500 else "InternalServerError"


def vllm_error_body(status: int, message: str, err_type: str | None = None, param: str | None = None) -> bytes:
    """The JSON bytes of vLLM's error envelope (the product's own envelope is ``llm_dispatcher.errors``)."""
    return orjson.dumps(
        {"error": {"message": message, "type": err_type or vllm_error_type(status), "param": param, "code": status}}
    )


def engine_dead() -> ApiError:
    """What vLLM answers once its engine core has died."""
    return ApiError(500, ENGINE_DEAD)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def param_error(message: str, param: str, value: Any = ..., *, status: int = 400) -> ApiError:
    """vLLM's own request checks: ``"<message> (parameter=<param>, value=<value>)"``, type BadRequestError."""
    suffix = f"(parameter={param})" if value is ... else f"(parameter={param}, value={value})"
    return ApiError(status, f"{message} {suffix}", param=param)


def _pydantic_input(value: Any) -> Any:
    """How FastAPI's validation errors print an input: containers abbreviated, scalars as they are."""
    if isinstance(value, dict):
        return f"<dict of {len(value)} items>"
    if isinstance(value, list):
        return f"<list of {len(value)} items>"
    return value


def validation_error(kind: str, loc: str, msg: str, value: Any, ctx: dict[str, Any] | None = None) -> ApiError:
    """A request-schema (pydantic) error as vLLM 0.32 renders it: type "Bad Request", param the location.

    e.g. ``1 validation error:\n  {'type': 'list_type', 'loc': 'body.messages', 'msg': ..., 'input': 'x'}``
    """
    detail: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": _pydantic_input(value)}
    if ctx is not None:
        detail["ctx"] = ctx
    return ApiError(400, f"1 validation error:\n  {detail!r}", param=loc, err_type="Bad Request")
