"""Wire compatibility across releases: during a rolling upgrade senders and consumers of different
versions read each other's messages (the rules are in `llm_dispatcher.protocol`'s docstring).

The bodies below are literal bytes, not produced by today's classes, so that a change to a message
class cannot silently change what the tests expect from other releases.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from llm_dispatcher.protocol import (
    PROTOCOL_VERSION,
    UNVERSIONED,
    Cancel,
    Grant,
    Heartbeat,
    MalformedMessage,
    Preempt,
    Preempted,
    Release,
    Releases,
    Renew,
    Ticket,
    now_ms,
)

# What a release from before versioning wrote: every field it had, no `v`.
UNVERSIONED_BODIES: dict[type, bytes] = {
    Ticket: b'{"id":"t1","model":"m","priority":3,"deadline_ms":1000,"request_id":"r1"}',
    Grant: (
        b'{"ticket_id":"t1","lease_id":"l1","url":"http://r:8000","replica":"r","release_to":"q",'
        b'"forward_priority":true,"lease_ttl_s":120.0}'
    ),
    Release: b'{"lease_id":"l1","status":200,"reason":"done"}',
    Renew: b'{"lease_ids":["l1","l2"]}',
    Releases: b'{"lease_ids":["l1","l2"],"reasons":["done","client_disconnected"]}',  # new in 4, read alike
    Cancel: b'{"ticket_ids":["t1"]}',
    Preempt: b'{"ticket_id":"t1","priority":8}',  # new in 5, read alike
    Preempted: b'{"lease_id":"l1","ticket_id":"t1"}',  # new in 5, read alike
    Heartbeat: (
        b'{"model":"m","replica":"r","url":"http://r:8000","ready":true,"max_concurrency":4,"in_flight":1,'
        b'"ts_ms":1700000000000,"interval_s":1.0,"max_model_len":4096,"running":1.0,"waiting":0.0,'
        b'"kv_cache_usage":0.25}'
    ),
}

# The least an older writer may send: the required fields only.
MINIMAL_BODIES: dict[type, bytes] = {
    Ticket: b'{"id":"t1","model":"m","priority":3,"deadline_ms":1000}',
    Grant: b'{"ticket_id":"t1","lease_id":"l1","url":"http://r:8000","replica":"r","release_to":"q"}',
    Release: b'{"lease_id":"l1"}',
    Renew: b'{"lease_ids":["l1"]}',
    Releases: b'{"lease_ids":["l1"]}',
    Cancel: b'{"ticket_ids":["t1"]}',
    Preempt: b'{"ticket_id":"t1","priority":8}',
    Preempted: b'{"lease_id":"l1","ticket_id":"t1"}',
    Heartbeat: b'{"model":"m","replica":"r","url":"http://r:8000","ready":true,"max_concurrency":4,"in_flight":1}',
}

# The defaults this release gives the optional fields a minimal body leaves out.
DEFAULTS: dict[type, dict[str, Any]] = {
    Ticket: {"request_id": "", "preemptible": False},
    Grant: {"forward_priority": False, "lease_ttl_s": 0.0},
    Release: {"status": 0, "reason": "done"},
    Renew: {},
    Releases: {"reasons": []},
    Cancel: {},
    Preempt: {},
    Preempted: {},
    Heartbeat: {
        "interval_s": 1.0,
        "max_model_len": None,
        "running": None,
        "waiting": None,
        "kv_cache_usage": None,
        "tokens_per_second": None,
        "admission": "",
        "control": "",
        "epoch": 0,
        "controls": [],
        "preemptible": 0,
    },
}

# Required fields are frozen: adding one would make every older writer's message unreadable.
REQUIRED: dict[type, set[str]] = {
    Ticket: {"id", "model", "priority", "deadline_ms"},
    Grant: {"ticket_id", "lease_id", "url", "replica", "release_to"},
    Release: {"lease_id"},
    Renew: {"lease_ids"},
    Releases: {"lease_ids"},
    Cancel: {"ticket_ids"},
    Preempt: {"ticket_id", "priority"},
    Preempted: {"lease_id", "ticket_id"},
    Heartbeat: {"model", "replica", "url", "ready", "max_concurrency", "in_flight"},
}

MESSAGES = list(UNVERSIONED_BODIES)
by_type = pytest.mark.parametrize("cls", MESSAGES, ids=lambda c: c.__name__)


def newer(body: bytes, version: int = PROTOCOL_VERSION + 1) -> bytes:
    """`body` as a later release would write it: a higher `v` and fields this release never heard of."""
    data = orjson.loads(body)
    data.update(
        v=version,
        zone="eu-west-1",  # a plain new field
        limits={"rpm": 60, "nested": [1, 2]},  # a new structured field
        weight=0.5,
    )
    return orjson.dumps(data)


@by_type
def test_a_reader_accepts_a_newer_writers_message_with_unknown_fields_and_a_higher_version(cls: type) -> None:
    expected = orjson.loads(UNVERSIONED_BODIES[cls])
    msg = cls.loads(newer(UNVERSIONED_BODIES[cls], version=PROTOCOL_VERSION + 5))
    assert msg.v == PROTOCOL_VERSION + 5
    assert {f: getattr(msg, f) for f in expected} == expected
    for unknown in ("zone", "limits", "weight"):
        assert not hasattr(msg, unknown)


@by_type
def test_a_reader_accepts_an_unversioned_writers_message_as_version_0(cls: type) -> None:
    msg = cls.loads(UNVERSIONED_BODIES[cls])
    assert msg.v == UNVERSIONED == 0
    assert {f: getattr(msg, f) for f in orjson.loads(UNVERSIONED_BODIES[cls])} == orjson.loads(UNVERSIONED_BODIES[cls])


@by_type
def test_a_reader_gives_the_optional_fields_an_older_writer_left_out_their_defaults(cls: type) -> None:
    before = now_ms()
    msg = cls.loads(MINIMAL_BODIES[cls])
    given = orjson.loads(MINIMAL_BODIES[cls])
    assert msg.v == UNVERSIONED
    assert {f: getattr(msg, f) for f in given} == given
    assert {f: getattr(msg, f) for f in DEFAULTS[cls]} == DEFAULTS[cls]
    if cls is Heartbeat:
        assert before <= msg.ts_ms <= now_ms()  # stamped on arrival when the writer did not


@by_type
def test_every_field_is_either_required_or_defaulted_and_the_required_set_is_frozen(cls: type) -> None:
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields == REQUIRED[cls] | set(DEFAULTS[cls]) | {"v"} | ({"ts_ms"} if cls is Heartbeat else set())
    for name in sorted(REQUIRED[cls]):
        data = orjson.loads(MINIMAL_BODIES[cls])
        del data[name]
        with pytest.raises(MalformedMessage, match=rf"{cls.__name__}: missing required fields \['{name}'\]"):
            cls.loads(orjson.dumps(data))


@by_type
def test_every_writer_writes_its_version_and_round_trips(cls: type) -> None:
    msg = cls.loads(UNVERSIONED_BODIES[cls])
    current = dataclasses.replace(msg, v=PROTOCOL_VERSION)
    body = current.dumps()
    assert orjson.loads(body)["v"] == PROTOCOL_VERSION
    assert cls.loads(body) == current
    assert cls.loads(newer(body)) == dataclasses.replace(current, v=PROTOCOL_VERSION + 1)


def test_messages_built_in_code_carry_the_current_version_without_changing_positional_arguments() -> None:
    assert Ticket("t", "m", 1, 2).v == PROTOCOL_VERSION
    assert Grant("t", "l", "u", "r", "q").v == PROTOCOL_VERSION
    assert Release("l", 200, "done") == Release(lease_id="l", status=200, reason="done", v=PROTOCOL_VERSION)
    assert Renew(["l"]).v == Cancel(["t"]).v == PROTOCOL_VERSION
    assert Heartbeat("m", "r", "u", True, 2, 0).v == PROTOCOL_VERSION


@by_type
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "expected a JSON object, got list"),
        (b'"grant"', "expected a JSON object, got str"),
        (b"null", "expected a JSON object, got NoneType"),
        (b"{}", "missing required fields"),
    ],
    ids=["empty", "broken", "not-utf8", "list", "string", "null", "empty-object"],
)
def test_what_is_not_a_message_raises_one_error_type(cls: type, body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage, match=reason) as caught:
        cls.loads(body)
    assert isinstance(caught.value, ValueError)  # callers that catch ValueError/Exception keep working


@pytest.mark.parametrize(
    ("cls", "field", "value"),
    [
        (Ticket, "deadline_ms", "1000"),  # would make `expired()` raise in the consumer
        (Ticket, "priority", True),  # a bool is not an int on the wire
        (Ticket, "priority", 2.5),
        (Ticket, "v", "2"),
        (Grant, "url", None),
        (Grant, "lease_ttl_s", "120"),
        (Release, "status", "200"),
        (Renew, "lease_ids", "l1"),
        (Renew, "lease_ids", ["l1", 2]),
        (Releases, "reasons", ["done", None]),
        (Cancel, "ticket_ids", [None]),
        (Heartbeat, "ready", "yes"),
        (Heartbeat, "running", [1]),
    ],
)
def test_a_known_field_of_the_wrong_json_type_is_malformed(cls: type, field: str, value: Any) -> None:
    data = orjson.loads(UNVERSIONED_BODIES[cls])
    data[field] = value
    with pytest.raises(MalformedMessage, match=rf"{cls.__name__}: field '{field}'"):
        cls.loads(orjson.dumps(data))


def test_numbers_written_as_integers_are_accepted_where_a_float_is_expected() -> None:
    grant = Grant.loads(
        b'{"ticket_id":"t","lease_id":"l","url":"u","replica":"r","release_to":"q","lease_ttl_s":120,"v":1}'
    )
    assert grant.lease_ttl_s == 120
    hb = Heartbeat.loads(MINIMAL_BODIES[Heartbeat][:-1] + b',"running":3,"waiting":null}')
    assert hb.running == 3 and hb.waiting is None


def test_a_releases_message_gives_every_lease_its_reason_and_done_where_none_was_sent() -> None:
    assert Releases(["a", "b", "c"], ["client_disconnected", "done"]).ended() == [
        ("a", "client_disconnected"),
        ("b", "done"),
        ("c", "done"),
    ]
    assert Releases.loads(Releases(["a"], ["error"]).dumps()).ended() == [("a", "error")]
