"""A sender hears that the replica ended one of its batch lines' leases (`Preempted`): the line's abort
runs, whether the notice comes while the line relays or between its grant and the relay's start."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from llm_dispatcher.protocol import Grant, Preempted
from sender.dispatch import Dispatcher
from sender.metrics import SenderMetrics
from sender.registry import Registry
from sender.settings import SenderSettings


def dispatcher() -> Dispatcher:
    return Dispatcher(SenderSettings(), Registry(5.0), SenderMetrics(CollectorRegistry()))


def held(d: Dispatcher, lease_id: str) -> None:
    d._held[lease_id] = (Grant("t", lease_id, "http://r", "r", "q"), 0)


def test_a_notice_while_the_line_relays_aborts_it_once():
    d, aborted = dispatcher(), []
    held(d, "l1")
    d.preemption.when_preempted("l1", lambda: aborted.append("l1"))
    d.preemption.on_notice(Preempted("l1", "t").dumps())
    d.preemption.on_notice(Preempted("l1", "t").dumps())  # a duplicate changes nothing
    assert aborted == ["l1"]


def test_a_notice_before_the_relay_started_aborts_the_line_as_soon_as_it_starts():
    d, aborted = dispatcher(), []
    held(d, "l1")
    d.preemption.on_notice(Preempted("l1", "t").dumps())  # right after the grant
    d.preemption.when_preempted("l1", lambda: aborted.append("l1"))
    assert aborted == ["l1"]
    d.preemption.when_preempted("l1", lambda: aborted.append("again"))  # remembered once
    assert aborted == ["l1"]


def test_a_notice_for_a_lease_not_held_here_or_ended_already_is_dropped():
    d, aborted = dispatcher(), []
    d.preemption.on_notice(Preempted("someone-elses", "t").dumps())
    d.preemption.on_notice(b"not json")
    held(d, "l2")
    d.preemption.when_preempted("l2", lambda: aborted.append("l2"))
    d.preemption.when_preempted("l2", None)  # the line ended ...
    del d._held["l2"]  # ... and its lease was released
    d.preemption.on_notice(Preempted("l2", "t").dumps())
    assert aborted == [] and not d.preemption.remembered
