"""One error tree for the whole project, rendered as the OpenAI error envelope at the HTTP edge.

DispatcherError                      (status, type, code)
├── AuthenticationError              401 invalid_api_key
├── PermissionDeniedError            403 permission_denied (a valid token without the right for this route)
├── InvalidRequestError              400 invalid_request_error
│   ├── PayloadTooLargeError         413 request_too_large
│   ├── RequestTimeoutError          408 request_timeout (the body did not arrive in time)
│   ├── ConflictError                400 (a change the object's state does not allow)
│   └── AlreadyExistsError           409 already_exists (a name already taken)
├── UnknownURLError                  404 unknown_url (a path the gateway does not forward)
├── NotFoundError                    404 not_found (an object of the API: a token, a file, a batch)
├── ModelNotFoundError               404 model_not_found
├── OverThresholdError               429 queue_over_threshold (+ Retry-After)
├── RateLimitError                   429 rate_limit_exceeded (a per-key limit; + Retry-After, x-ratelimit-*)
├── ServiceUnavailableError          503 (+ Retry-After)
│   ├── QueueTimeoutError            503 queue_timeout
│   ├── NoReplicaError               503 no_live_replica
│   └── BrokerUnavailableError       503 broker_unavailable
├── UpstreamError                    502 upstream_unreachable
└── InternalError                    500 internal_error (a bug: logged with its traceback)
"""

from __future__ import annotations

import math
from typing import Any, ClassVar


class DispatcherError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "internal_error"
    code: ClassVar[str | None] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"retry-after": str(max(1, round(self.retry_after)))}


class AuthenticationError(DispatcherError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDeniedError(DispatcherError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class InvalidRequestError(DispatcherError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request_error"


class PayloadTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class RequestTimeoutError(InvalidRequestError):
    status = 408
    code = "request_timeout"


class UnknownURLError(DispatcherError):
    status = 404
    type = "invalid_request_error"
    code = "unknown_url"


class NotFoundError(DispatcherError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ConflictError(InvalidRequestError):
    pass


class AlreadyExistsError(InvalidRequestError):
    status = 409
    code = "already_exists"


class ModelNotFoundError(DispatcherError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class OverThresholdError(DispatcherError):
    status = 429
    type = "rate_limit_error"
    code = "queue_over_threshold"


class RateLimitError(DispatcherError):
    """A key's own limit (max parallel, requests or tokens per minute). Its `type` says which, as
    OpenAI's does (`requests`, `tokens`; `parallel_requests` for max parallel), and it carries the
    key's `x-ratelimit-*` headers and a Retry-After in milliseconds too (the SDKs' retry reads it)."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, kind: str, retry_after: float, rate_headers: list[tuple[bytes, bytes]]):
        super().__init__(message, retry_after=retry_after)
        self.kind = kind
        self.rate_headers = rate_headers

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.kind, self.param, self.code)

    def headers(self) -> dict[str, str]:
        assert self.retry_after is not None
        return {
            "retry-after": str(max(1, math.ceil(self.retry_after))),
            "retry-after-ms": str(max(1, math.ceil(self.retry_after * 1000))),
            **{k.decode(): v.decode() for k, v in self.rate_headers},
        }


class ServiceUnavailableError(DispatcherError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class QueueTimeoutError(ServiceUnavailableError):
    code = "queue_timeout"


class NoReplicaError(ServiceUnavailableError):
    code = "no_live_replica"


class BrokerUnavailableError(ServiceUnavailableError):
    code = "broker_unavailable"


class UpstreamError(DispatcherError):
    status = 502
    type = "upstream_error"
    code = "upstream_unreachable"


class InternalError(DispatcherError):
    status = 500
    type = "server_error"
    code = "internal_error"


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def shorten(value: str, limit: int = 64) -> str:
    """A client-chosen string fit to echo in a message or a log: at most `limit` characters, control
    characters escaped (a 100 KB model name, NUL bytes included, is never repeated back whole)."""
    cut = value[:limit]
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in cut)
    return shown + "…" if len(value) > limit else shown
