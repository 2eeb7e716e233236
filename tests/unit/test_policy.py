"""Admission policy: a pure function of a snapshot."""

from __future__ import annotations

from dataclasses import replace

import pytest

from consumer.policy import Limits, Reason, Snapshot, decide, preemption_helps

LIMITS = Limits(max_concurrency=4, max_waiting=0, max_kv_cache_usage=0.9, min_tokens_per_second_per_user=10)


def snap(**kw) -> Snapshot:
    base = dict(
        healthy=True, in_flight=1, metrics_fresh=True, running=1, waiting=0, kv_cache_usage=0.1, tokens_per_second=50.0
    )
    base.update(kw)
    return Snapshot(**base)


def test_admits_when_every_bound_holds():
    assert decide(snap(), LIMITS).reason is Reason.ADMIT


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"healthy": False}, Reason.UNHEALTHY),
        ({"in_flight": 4}, Reason.AT_MAX_CONCURRENCY),
        ({"waiting": 1}, Reason.VLLM_WAITING),
        ({"kv_cache_usage": 0.9}, Reason.KV_CACHE_FULL),
        ({"running": 6, "tokens_per_second": 50.0}, Reason.SLOW_TOKENS),
        ({"draining": True}, Reason.DRAINING),
    ],
)
def test_refuses_with_the_reason_of_the_first_bound_broken(change, reason):
    d = decide(snap(**change), LIMITS)
    assert not d.admit
    assert d.reason is reason


def test_stale_metrics_fall_back_to_the_in_flight_cap_alone():
    s = snap(metrics_fresh=False, waiting=50, kv_cache_usage=1.0, tokens_per_second=0.1)
    assert decide(s, LIMITS).reason is Reason.ADMIT_METRICS_STALE
    assert decide(snap(metrics_fresh=False, in_flight=4), LIMITS).reason is Reason.AT_MAX_CONCURRENCY


def test_unhealthy_wins_over_stale_metrics():
    assert decide(snap(healthy=False, metrics_fresh=False), LIMITS).reason is Reason.UNHEALTHY


def test_idle_replica_always_takes_work_so_the_engine_never_sits_empty():
    s = snap(in_flight=0, running=0, tokens_per_second=0.0, waiting=0)
    assert decide(s, LIMITS).admit


def test_speed_floor_is_off_when_zero():
    limits = Limits(max_concurrency=100, min_tokens_per_second_per_user=0)
    assert decide(snap(running=90, tokens_per_second=1.0), limits).admit


def test_speed_floor_ignored_until_throughput_is_known():
    assert decide(snap(tokens_per_second=None, running=10), LIMITS).admit


def test_waiting_bound_allows_a_small_vllm_queue():
    limits = Limits(max_concurrency=4, max_waiting=2)
    assert decide(snap(waiting=2), limits).admit
    assert not decide(snap(waiting=3), limits).admit


def test_speed_floor_counts_grants_vllm_has_not_reported_yet():
    # vLLM still says 2 running, but 8 are granted: 80 tokens/s over 8 users is under 12.
    limits = Limits(max_concurrency=16, min_tokens_per_second_per_user=12)
    assert decide(snap(running=2, in_flight=8, tokens_per_second=80.0), limits).reason is Reason.SLOW_TOKENS
    assert decide(snap(running=2, in_flight=2, tokens_per_second=80.0), limits).admit


RESERVE = Limits(max_concurrency=8, reserved_slots=2, reserved_min_priority=7)


def test_reserved_slots_take_only_high_priority_tickets():
    low, high = 3, 8
    assert decide(snap(in_flight=5), RESERVE, priority=low).admit  # below the reserve: anyone
    assert decide(snap(in_flight=6), RESERVE, priority=low).reason is Reason.RESERVED
    assert decide(snap(in_flight=6), RESERVE, priority=high).admit
    assert decide(snap(in_flight=7), RESERVE, priority=7).admit
    assert decide(snap(in_flight=8), RESERVE, priority=high).reason is Reason.AT_MAX_CONCURRENCY


def test_without_a_ticket_the_gate_asks_whether_any_ticket_could_be_taken():
    assert decide(snap(in_flight=7), RESERVE).admit


def test_a_reserve_not_held_lets_low_priority_fill_every_slot():
    low = 3
    assert decide(snap(in_flight=6, reserve_held=False), RESERVE, priority=low).admit
    assert decide(snap(in_flight=7, reserve_held=False), RESERVE, priority=low).admit
    assert decide(snap(in_flight=8, reserve_held=False), RESERVE, priority=low).reason is Reason.AT_MAX_CONCURRENCY


def test_ending_a_lease_helps_only_when_the_slots_alone_keep_a_ticket_out():
    full = snap(in_flight=4, running=4, tokens_per_second=200.0)
    assert preemption_helps(full, LIMITS, priority=8)
    assert not preemption_helps(snap(in_flight=3, running=3, tokens_per_second=200.0), LIMITS, 8)  # room already
    assert not preemption_helps(replace(full, waiting=2), LIMITS, 8)  # the engine queues
    assert not preemption_helps(replace(full, healthy=False), LIMITS, 8)
    assert not preemption_helps(replace(full, draining=True), LIMITS, 8)


def test_ending_a_lease_does_not_help_a_low_ticket_kept_out_of_the_reserve():
    limits = Limits(max_concurrency=4, reserved_slots=1, reserved_min_priority=7)
    full = snap(in_flight=4, running=4)
    assert preemption_helps(full, limits, priority=8)
    assert not preemption_helps(full, limits, priority=3)  # one slot freed is still the reserved one
