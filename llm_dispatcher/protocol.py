"""The wire contract between senders and consumers (RabbitMQ messages).

Everything that crosses the broker is JSON (orjson), never pickle.

    sender ──ticket──> queue "<prefix>.model.<model>"   (priority = token priority, expiration = timeout)
    consumer ──grant──> sender's reply queue            (correlation_id = ticket id)
    sender ──release──> consumer's control queue        (routing key = grant.release_to)
    sender ──renew──> consumer's control queue          (leases still streaming, every ttl/3)
    sender ──cancel──> fanout "<prefix>.cancel"         (ticket abandoned while queued)
    consumer ──heartbeat──> fanout "<prefix>.heartbeat" (model, replica address, capacity, load)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Self

import orjson

DEFAULT_PREFIX = "llmd"
MAX_PRIORITY = 10


def model_queue(prefix: str, model: str) -> str:
    return f"{prefix}.model.{model}"


def heartbeat_exchange(prefix: str) -> str:
    return f"{prefix}.heartbeat"


def cancel_exchange(prefix: str) -> str:
    return f"{prefix}.cancel"


def queue_arguments(max_priority: int = MAX_PRIORITY) -> dict[str, Any]:
    """Arguments every declarer of a model queue must use (RabbitMQ refuses a mismatch)."""
    return {"x-max-priority": max_priority}


def clamp_priority(requested: int | None, token_priority: int, max_priority: int = MAX_PRIORITY) -> int:
    """A request may lower its priority, never raise it above its token's; result in [0, max]."""
    top = max(0, min(token_priority, max_priority))
    if requested is None:
        return top
    return max(0, min(requested, top))


def now_ms() -> int:
    return int(time.time() * 1000)


class _Json:
    """dumps/loads for the message dataclasses below (orjson serialises dataclasses natively)."""

    __slots__ = ()

    def dumps(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def loads(cls, body: bytes) -> Self:
        return cls(**orjson.loads(body))


@dataclass(slots=True)
class Ticket(_Json):
    """A request waiting for a replica. `deadline_ms` is absolute (epoch ms): never grant after it."""

    id: str
    model: str
    priority: int
    deadline_ms: int
    request_id: str = ""


    def expired(self, at_ms: int | None = None) -> bool:
        return (now_ms() if at_ms is None else at_ms) >= self.deadline_ms


@dataclass(slots=True)
class Grant(_Json):
    """A replica's answer to a ticket: where to send the request and how to give the slot back."""

    ticket_id: str
    lease_id: str
    url: str
    replica: str
    release_to: str
    forward_priority: bool = False
    lease_ttl_s: float = 0.0  # > 0: the holder renews the lease before this runs out



@dataclass(slots=True)
class Release(_Json):
    lease_id: str
    status: int = 0
    reason: str = "done"



@dataclass(slots=True)
class Renew(_Json):
    """Leases still in use (long streams): the consumer pushes their expiry back."""

    lease_ids: list[str]



@dataclass(slots=True)
class Cancel(_Json):
    ticket_ids: list[str]



@dataclass(slots=True)
class Heartbeat(_Json):
    model: str
    replica: str
    url: str
    ready: bool
    max_concurrency: int
    in_flight: int
    ts_ms: int = field(default_factory=now_ms)
    interval_s: float = 1.0
    max_model_len: int | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None

    @classmethod
    def loads(cls, body: bytes) -> Heartbeat:
        data = orjson.loads(body)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})
