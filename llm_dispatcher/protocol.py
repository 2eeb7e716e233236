"""The wire contract between senders and consumers (RabbitMQ messages).

Everything that crosses the broker is JSON (orjson), never pickle.

    sender ──ticket──> queue "<prefix>.model.<model>"   (priority = token priority, expiration = timeout;
                                                          broker node i > 0 of a cluster: model_queue(.., i))
    consumer ──grant──> sender's reply queue            (correlation_id = ticket id)
    sender ──release──> consumer's control queue        (routing key = grant.release_to)
    sender ──releases──> consumer's control queue       (several leases in one message, to consumers of 4+)
    sender ──renew──> consumer's control queue          (leases still streaming, every ttl/3)
    sender ──cancel──> fanout "<prefix>.cancel"         (ticket abandoned while queued)
    sender ──preempt──> consumer's control queue        (a higher-priority ticket waits: end a batch line)
    consumer ──preempted──> sender's reply queue        (that batch line's lease ended: abort, run it later)
    consumer ──heartbeat──> fanout "<prefix>.heartbeat" (model, replica address, capacity, load)

Compatibility (senders and consumers of different releases run side by side during a rolling
upgrade, so every message must be readable by the release before and the release after):

- Every message carries `v`, the `PROTOCOL_VERSION` of its writer. A message without `v` comes
  from a writer older than versioning and reads as version 0. Readers accept every version.
- Readers ignore fields they do not know, and give a missing optional field its default.
- So a new field is always optional (it has a default that means "the old behaviour"), and adding
  one bumps `PROTOCOL_VERSION`. A field is never removed, renamed, made required, or given another
  type or meaning: an old reader would drop the message. A change that old readers cannot ignore
  needs a new message type (or queue), not a new field.
- A body that is not a JSON object, lacks a required field or has a field of the wrong JSON type
  raises `MalformedMessage` (a ValueError) from `loads`; nothing else escapes it.

History: 0 = unversioned; 1 = `v` added, every message read tolerantly; 2 = Heartbeat gains
`tokens_per_second` and `admission` (for the operator's live view; senders of version 1 ignore them);
3 = Heartbeat gains `controls` (the consumer's control queue on each broker node of a cluster; senders
of version 2 use `control`, the one on node 0); 4 = a new message type, `Releases` (message type
"releases": several leases ended in one message), which a sender sends only to a consumer whose
heartbeats carry `v` 4 or more (to others, one `Release` each, as before); 5 = Ticket gains
`preemptible` (a batch line), Heartbeat gains `preemptible` (such leases held), and two message types:
`Preempt` (sender → consumer, sent only to consumers whose heartbeats carry `v` 5 or more) and
`Preempted` (consumer → sender, only for a preemptible ticket, which only a version 5 sender writes).
Version 0 readers refused unknown fields in every message but Heartbeat, `v` included: upgrading a
deployment from version 0 replaces all senders and consumers together (not rolling); from version 1
on, upgrades roll.
"""

from __future__ import annotations

import dataclasses
import time
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import orjson

DEFAULT_PREFIX = "llmd"
MAX_PRIORITY = 10
PROTOCOL_VERSION = 5
UNVERSIONED = 0  # the `v` of a message whose writer predates versioning


class MalformedMessage(ValueError):
    """A broker message that cannot be decoded into its type (see the compatibility rules above)."""


def model_queue(prefix: str, model: str, node: int = 0) -> str:
    """The model's queue on broker node `node` of a cluster (see llm_dispatcher/nodes.py): node 0 keeps
    the single-node name, so one node is the cluster of one."""
    if node == 0:
        return f"{prefix}.model.{model}"
    return f"{prefix}.node{node}.model.{model}"


def heartbeat_exchange(prefix: str) -> str:
    return f"{prefix}.heartbeat"


def cancel_exchange(prefix: str) -> str:
    return f"{prefix}.cancel"


def queue_arguments(max_priority: int = MAX_PRIORITY, levels: int = 1) -> dict[str, Any]:
    """Arguments every declarer of a model queue must use (RabbitMQ refuses a mismatch): priority bands
    0..max_priority, each split into `levels` broker priorities (the fair-share sub-levels)."""
    return {"x-max-priority": (max_priority + 1) * levels - 1}


def clamp_priority(requested: int | None, token_priority: int, max_priority: int = MAX_PRIORITY) -> int:
    """A request may lower its priority, never raise it above its token's; result in [0, max]."""
    top = max(0, min(token_priority, max_priority))
    if requested is None:
        return top
    return max(0, min(requested, top))


def now_ms() -> int:
    return int(time.time() * 1000)


# JSON type of each annotation a message field may have: the exact types orjson decodes to.
_JSON_TYPES: dict[Any, tuple[type, ...]] = {
    str: (str,),
    int: (int,),  # not bool: `type(x) in ...` is exact
    float: (float, int),
    bool: (bool,),
    list[str]: (list,),
}


def _json_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _json_types(arg))
    if hint is type(None):
        return (type(None),)
    return _JSON_TYPES[hint]


class _Message:
    """dumps/loads for the message dataclasses below (orjson serialises dataclasses natively).

    `_fields`, `_required`, `_checks` and `_str_lists` are computed once per class by `@_message`."""

    __slots__ = ()
    _fields: ClassVar[frozenset[str]]
    _required: ClassVar[frozenset[str]]
    _checks: ClassVar[dict[str, tuple[type, ...]]]  # field -> the JSON types it accepts
    _str_lists: ClassVar[frozenset[str]]  # fields whose items must be strings too

    def dumps(self) -> bytes:
        return orjson.dumps(self)

    @classmethod
    def loads(cls, body: bytes | bytearray | memoryview | str) -> Self:
        """Tolerant decoding: unknown fields ignored, missing optional ones defaulted; MalformedMessage
        for anything that is not a message of this type."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedMessage(f"{cls.__name__}: not JSON ({exc})") from None
        if type(data) is not dict:
            raise MalformedMessage(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        if not data.keys() <= cls._fields:  # a newer writer's extra fields
            data = {k: v for k, v in data.items() if k in cls._fields}
        checks = cls._checks
        for name, value in data.items():
            if type(value) not in checks[name]:
                raise MalformedMessage(f"{cls.__name__}: field {name!r} has the wrong type: {value!r:.80}")
        for name in cls._str_lists:
            if name in data and not all(type(x) is str for x in data[name]):
                raise MalformedMessage(f"{cls.__name__}: field {name!r} must be a list of strings: {data[name]!r:.80}")
        if "v" not in data:
            data["v"] = UNVERSIONED
        try:
            return cls(**data)
        except TypeError:  # only a missing required field: the keys are known, __init__ only assigns
            raise MalformedMessage(
                f"{cls.__name__}: missing required fields {sorted(cls._required - data.keys())}"
            ) from None


Message = _Message  # the base of every message type, for annotations outside this module
_M = TypeVar("_M", bound=type[_Message])


def _message(cls: _M) -> _M:
    """Computes a message dataclass's decoding metadata, once (applied over `@dataclass(slots=True)`)."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    cls._fields = frozenset(f.name for f in fields)
    cls._required = frozenset(
        f.name for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    cls._checks = {f.name: _json_types(hints[f.name]) for f in fields}
    cls._str_lists = frozenset(f.name for f in fields if hints[f.name] == list[str])
    return cls


def _version() -> Any:
    """The last field of every message, keyword-only so that positional construction is unchanged."""
    return field(default=PROTOCOL_VERSION, kw_only=True)


@_message
@dataclass(slots=True)
class Ticket(_Message):
    """A request waiting for a replica. `deadline_ms` is absolute (epoch ms): never grant after it."""

    id: str
    model: str
    priority: int
    deadline_ms: int
    request_id: str = ""
    preemptible: bool = False  # a batch line: its replica may end it for a higher-priority ticket (version 5)
    v: int = _version()

    def expired(self, at_ms: int | None = None) -> bool:
        return (now_ms() if at_ms is None else at_ms) >= self.deadline_ms


@_message
@dataclass(slots=True)
class Grant(_Message):
    """A replica's answer to a ticket: where to send the request and how to give the slot back."""

    ticket_id: str
    lease_id: str
    url: str
    replica: str
    release_to: str
    forward_priority: bool = False
    lease_ttl_s: float = 0.0  # > 0: the holder renews the lease before this runs out
    v: int = _version()


@_message
@dataclass(slots=True)
class Release(_Message):
    lease_id: str
    status: int = 0
    reason: str = "done"
    v: int = _version()


@_message
@dataclass(slots=True)
class Releases(_Message):
    """Several leases ended (version 4): `reasons[i]` is `lease_ids[i]`'s, "done" where it is missing."""

    lease_ids: list[str]
    reasons: list[str] = field(default_factory=list)
    v: int = _version()

    def ended(self) -> list[tuple[str, str]]:
        """(lease id, reason) for every lease of the message."""
        return [(lease, self.reasons[i] if i < len(self.reasons) else "done") for i, lease in enumerate(self.lease_ids)]


RELEASES_SINCE = 4  # the protocol version from which a consumer reads `Releases`


@_message
@dataclass(slots=True)
class Renew(_Message):
    """Leases still in use (long streams): the consumer pushes their expiry back."""

    lease_ids: list[str]
    v: int = _version()


@_message
@dataclass(slots=True)
class Cancel(_Message):
    ticket_ids: list[str]
    v: int = _version()


@_message
@dataclass(slots=True)
class Preempt(_Message):
    """A ticket of `priority` is still waiting (version 5): end one preemptible lease of a lower priority
    if a full replica is what keeps the ticket waiting."""

    ticket_id: str
    priority: int
    v: int = _version()


@_message
@dataclass(slots=True)
class Preempted(_Message):
    """The lease of a preemptible ticket was ended for a higher-priority one (version 5): its holder
    aborts the request and runs it again later."""

    lease_id: str
    ticket_id: str
    v: int = _version()


PREEMPT_SINCE = 5  # the protocol version from which a consumer reads `Preempt`


@_message
@dataclass(slots=True)
class Heartbeat(_Message):
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
    tokens_per_second: float | None = None  # vLLM's generation throughput (None: not measured yet)
    admission: str = ""  # the consumer's admission decision now (consumer.policy.Reason; "": not said)
    # The consumer's control queue and its connection epoch (bumped on every broker reconnect): a
    # sender that sees a new epoch renews at once every lease it holds there, so the consumer can
    # reclaim the leases nobody claims (their release was lost with the broker) within seconds.
    control: str = ""
    epoch: int = 0
    # With several broker nodes: the control queue on each node (by node index, "" where the consumer
    # is not connected now). A sender whose grant came through a node that is gone sends the release
    # or renewal to the consumer's control queue on a node it still reaches.
    controls: list[str] = field(default_factory=list)
    preemptible: int = 0  # leases held by preemptible tickets (batch lines) now (version 5)
    v: int = _version()
