"""Lease accounting, priority clamping and the wire messages."""

from __future__ import annotations

from consumer.leases import LeaseTable
from consumer.policy import Limits, Snapshot
from consumer.preemption import Preemption
from llm_dispatcher.protocol import Grant, Heartbeat, Preempt, Ticket, clamp_priority


def test_each_grant_is_one_lease_and_release_is_exactly_once():
    table = LeaseTable(ttl_s=60)
    a, b = table.grant("t1"), table.grant("t2")
    assert len(table) == 2
    assert table.release(a.id) is a
    assert table.release(a.id) is None  # a second release changes nothing
    assert table.release("someone-elses") is None
    assert len(table) == 1 and table.release(b.id) is b


def test_leases_expire_as_a_backstop():
    now = [0.0]
    table = LeaseTable(ttl_s=10, clock=lambda: now[0])
    lease = table.grant("t")
    now[0] = 9.9
    assert table.expire() == []
    now[0] = 10.0
    assert table.expire() == [lease]
    assert len(table) == 0


def test_the_lease_ended_for_a_higher_ticket_is_the_lowest_priority_batch_line_granted_last():
    now = [0.0]
    table = LeaseTable(ttl_s=60, clock=lambda: now[0])
    interactive = table.grant("chat", 2)
    older = table.grant("b1", 1, preemptible=True)
    now[0] = 1.0
    newer = table.grant("b2", 1, preemptible=True)
    mid = table.grant("b3", 4, preemptible=True)
    assert table.preemptible == 3
    assert table.victim(below_priority=8) is newer  # lowest priority first, then the least work lost
    assert table.victim(below_priority=4) is newer  # never one of the same priority or higher
    assert table.victim(below_priority=1) is None
    for lease in (newer, older):
        table.release(lease.id)
    assert table.victim(below_priority=8) is mid
    table.release(mid.id)
    assert table.victim(below_priority=8) is None  # an interactive lease is never a victim
    assert table.preemptible == 0 and len(table) == 1 and interactive.id


def test_a_ticket_is_held_until_its_last_lease_ends_even_when_granted_twice():
    table = LeaseTable(ttl_s=60)
    first, again = table.grant("t"), table.grant("t")  # a redelivered ticket granted a second time
    assert table.holds_ticket("t") and not table.holds_ticket("other")
    table.release(first.id)
    assert table.holds_ticket("t")
    table.release(again.id)
    assert not table.holds_ticket("t")


def full(table: LeaseTable) -> Snapshot:
    return Snapshot(healthy=True, in_flight=len(table), metrics_fresh=True, running=len(table), waiting=0)


def test_a_replica_ends_at_most_one_batch_line_per_waiting_ticket_and_only_when_it_lets_the_ticket_in():
    table, limits = LeaseTable(ttl_s=60), Limits(max_concurrency=2)
    table.grant("chat", 8)
    line = table.grant("b1", 1, preemptible=True)
    preemption = Preemption(True, table, limits)
    assert preemption.victim_for(Preempt("t", 1), full(table)) is None  # not above the batch line
    assert preemption.victim_for(Preempt("t", 8), full(table)) is line
    table.release(line.id)
    table.grant("b2", 1, preemptible=True)
    assert preemption.victim_for(Preempt("t", 8), full(table)) is None  # served once already
    room = Snapshot(healthy=True, in_flight=1, metrics_fresh=True)
    assert preemption.victim_for(Preempt("u", 8), room) is None  # a free slot: nothing to end
    sick = Snapshot(healthy=False, in_flight=2, metrics_fresh=True)
    assert preemption.victim_for(Preempt("u", 8), sick) is None  # ending one would not let it in
    assert Preemption(False, table, limits).victim_for(Preempt("u", 8), full(table)) is None  # turned off


def test_no_batch_line_is_ended_for_a_ticket_this_replica_granted_already():
    table = LeaseTable(ttl_s=60)
    table.grant("b1", 1, preemptible=True)
    table.grant("t", 8)
    assert Preemption(True, table, Limits(max_concurrency=2)).victim_for(Preempt("t", 8), full(table)) is None


def test_expiry_keeps_the_count_of_preemptible_leases():
    now = [0.0]
    table = LeaseTable(ttl_s=10, clock=lambda: now[0])
    table.grant("b", 1, preemptible=True)
    now[0] = 10.0
    assert len(table.expire()) == 1 and table.preemptible == 0


def test_a_request_may_lower_its_priority_but_never_raise_it():
    assert clamp_priority(None, 7) == 7
    assert clamp_priority(3, 7) == 3
    assert clamp_priority(9, 7) == 7
    assert clamp_priority(-5, 7) == 0
    assert clamp_priority(None, 50, max_priority=10) == 10


def test_ticket_deadline_and_json_round_trip():
    t = Ticket(id="x", model="m", priority=3, deadline_ms=1000)
    assert Ticket.loads(t.dumps()) == t
    assert t.expired(at_ms=1000) and not t.expired(at_ms=999)
    g = Grant("x", "l", "http://r", "r", "q")
    assert Grant.loads(g.dumps()) == g


def test_heartbeat_ignores_unknown_fields_from_newer_consumers():
    hb = Heartbeat(model="m", replica="r", url="u", ready=True, max_concurrency=2, in_flight=0)
    raw = hb.dumps()[:-1] + b',"future_field":1}'
    assert Heartbeat.loads(raw).model == "m"
