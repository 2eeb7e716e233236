"""The sender's refusals-over-the-last-minutes counter (sender/refusals.py), on a fake clock."""

from __future__ import annotations

import pytest

from sender.refusals import NO_MODEL, RefusalCounter


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_refusals_are_counted_by_model_and_reason():
    counter = RefusalCounter(clock=Clock())
    counter.add("m", "queue_over_threshold")
    counter.add("m", "queue_over_threshold")
    counter.add("m", "no_live_replica")
    counter.add(NO_MODEL, "invalid_api_key")
    assert counter.recent(60) == {
        "m": {"queue_over_threshold": 2, "no_live_replica": 1},
        NO_MODEL: {"invalid_api_key": 1},
    }


def test_a_refusal_older_than_the_asked_window_is_left_out():
    clock = Clock()
    counter = RefusalCounter(window_s=600, bucket_s=10, clock=clock)
    counter.add("m", "old")
    clock.t += 120
    counter.add("m", "new")
    assert counter.recent(60) == {"m": {"new": 1}}
    assert counter.recent(300) == {"m": {"old": 1, "new": 1}}


def test_buckets_beyond_the_window_are_dropped_and_never_read():
    clock = Clock()
    counter = RefusalCounter(window_s=60, bucket_s=10, clock=clock)
    counter.add("m", "r")
    for _ in range(20):  # ten windows later, one refusal in every bucket
        clock.t += 10
        counter.add("m", "s")
    assert len(counter._buckets) <= 7
    assert counter.recent(10_000) == {"m": {"s": 7}}  # asking for more than the window gives the window


def test_quiet_buckets_cost_nothing_and_an_empty_counter_reads_empty():
    clock = Clock()
    counter = RefusalCounter(window_s=300, bucket_s=10, clock=clock)
    assert counter.recent(300) == {}
    counter.add("m", "r")
    clock.t += 3600  # an hour without refusals
    assert counter.recent(300) == {}
    counter.add("m", "r")
    assert len(counter._buckets) == 1  # the stale bucket went when the new one came


def test_a_window_smaller_than_a_bucket_reads_the_current_bucket():
    clock = Clock(1005.0)
    counter = RefusalCounter(window_s=300, bucket_s=10, clock=clock)
    counter.add("m", "r")
    assert counter.recent(1) == {"m": {"r": 1}}


def test_a_bucket_wider_than_the_window_is_refused():
    with pytest.raises(ValueError):
        RefusalCounter(window_s=5, bucket_s=10)
