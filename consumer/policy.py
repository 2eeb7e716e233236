"""Admission: may this replica take one more ticket now? A pure function of a snapshot."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


class Reason(StrEnum):
    ADMIT = "admit"
    ADMIT_METRICS_STALE = "admit_metrics_stale"  # /metrics unreadable: the in-flight cap alone decides
    UNHEALTHY = "unhealthy"
    AT_MAX_CONCURRENCY = "at_max_concurrency"
    VLLM_WAITING = "vllm_waiting"
    KV_CACHE_FULL = "kv_cache_full"
    SLOW_TOKENS = "slow_tokens_per_user"
    RESERVED = "reserved_for_high_priority"
    DRAINING = "draining"


@dataclass(frozen=True, slots=True)
class Limits:
    max_concurrency: int
    max_waiting: float = 0
    max_kv_cache_usage: float = 0.95
    min_tokens_per_second_per_user: float = 0
    reserved_slots: int = 0  # the last slots below max_concurrency only take tickets of ...
    reserved_min_priority: int = 0  # ... at least this priority


@dataclass(frozen=True, slots=True)
class Snapshot:
    healthy: bool
    in_flight: int
    metrics_fresh: bool
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    tokens_per_second: float | None = None
    draining: bool = False
    reserve_held: bool = True  # False: no high-priority grant for reserved_hold_s, the reserve is lent out


@dataclass(frozen=True, slots=True)
class Decision:
    admit: bool
    reason: Reason


def decide(s: Snapshot, limits: Limits, priority: int | None = None) -> Decision:
    """May the replica take one more ticket (of `priority`; None: of the highest priority)?"""
    if s.draining:
        return Decision(False, Reason.DRAINING)
    if not s.healthy:
        return Decision(False, Reason.UNHEALTHY)
    if s.in_flight >= limits.max_concurrency:
        return Decision(False, Reason.AT_MAX_CONCURRENCY)
    if (
        priority is not None
        and s.reserve_held
        and priority < limits.reserved_min_priority
        and s.in_flight >= limits.max_concurrency - limits.reserved_slots
    ):
        return Decision(False, Reason.RESERVED)
    if not s.metrics_fresh:
        return Decision(True, Reason.ADMIT_METRICS_STALE)
    # An idle replica always takes work: the gate must never leave the engine empty while tickets wait.
    if s.in_flight == 0 and not s.running:
        return Decision(True, Reason.ADMIT)
    if s.waiting is not None and s.waiting > limits.max_waiting:
        return Decision(False, Reason.VLLM_WAITING)
    if s.kv_cache_usage is not None and s.kv_cache_usage >= limits.max_kv_cache_usage:
        return Decision(False, Reason.KV_CACHE_FULL)
    floor = limits.min_tokens_per_second_per_user
    # The average speed per running request, as the original rule has it. vLLM's `running` lags our
    # grants by up to a scrape, so what we granted since counts as running too. (Judging the speed
    # "after one more" with today's throughput is far too strict: throughput grows with the batch,
    # and it starved the engine to 1 running sequence in scenario 4 of docs/benchmarks.md.)
    users = max(s.running or 0.0, float(s.in_flight))
    if floor > 0 and users and s.tokens_per_second is not None and s.tokens_per_second / users < floor:
        return Decision(False, Reason.SLOW_TOKENS)
    return Decision(True, Reason.ADMIT)


def preemption_helps(s: Snapshot, limits: Limits, priority: int) -> bool:
    """Would ending one running lease let the replica take a ticket of `priority`? Only when the slots
    are all that stops it: a replica refusing for its engine's state (waiting, KV cache, speed) or
    its health would stay closed, and the ended request would be lost work for nothing."""
    if decide(s, limits, priority).reason is not Reason.AT_MAX_CONCURRENCY:
        return False
    return decide(replace(s, in_flight=s.in_flight - 1), limits, priority).admit
