"""Statistics of one arm: percentiles per traffic class, engine throughput, idle time while work waited."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from loadgen import Record

from scenarios.sampling import Sample, complete

CUT = -1  # Record.status of a request still running when the arm was cut


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


@dataclass(frozen=True)
class ClassStats:
    n: int
    ok: int
    refused_429: int
    timed_out_503: int
    cut: int
    other: int
    ttft_p50: float
    ttft_p95: float
    e2e_p50: float
    e2e_p95: float
    tps_p10: float
    tps_p50: float
    tokens: int  # output tokens of the requests that completed
    last_end: float  # when the last completed request ended (offset from the run's start)


def class_stats(records: list[Record], cls: str | None = None) -> ClassStats:
    """One class (all of them with None). A cut request counts with its censored (lower-bound) TTFT and
    end-to-end time, so an overloaded queue is never flattered by leaving its worst requests out."""
    rs = [r for r in records if cls is None or r.cls == cls]
    ok = [r for r in rs if r.status == 200]
    cut = [r for r in rs if r.status == CUT]
    waited = ok + cut
    ttft = [r.ttft for r in waited if r.ttft is not None]
    e2e = [r.e2e for r in waited if r.e2e is not None]
    tps = [r.tps for r in ok if r.tps is not None]
    return ClassStats(
        n=len(rs),
        ok=len(ok),
        refused_429=sum(r.status == 429 for r in rs),
        timed_out_503=sum(r.status == 503 for r in rs),
        cut=len(cut),
        other=sum(r.status not in (200, 429, 503, CUT) for r in rs),
        ttft_p50=pct(ttft, 50),
        ttft_p95=pct(ttft, 95),
        e2e_p50=pct(e2e, 50),
        e2e_p95=pct(e2e, 95),
        tps_p10=pct(tps, 10),
        tps_p50=pct(tps, 50),
        tokens=sum(r.out_tokens for r in ok),
        last_end=max((r.start + r.e2e for r in ok if r.e2e is not None), default=float("nan")),
    )


def engine_tps(samples: list[Sample], start: float, end: float) -> float:
    """Output tokens/s of all replicas together between ``start`` and ``end`` (s from the sampler's start)."""
    inside = [s for s in complete(samples) if start <= s.t <= end]
    if len(inside) < 2:
        return float("nan")
    a, b = inside[0], inside[-1]
    return (b.gen_total() - a.gen_total()) / (b.t - a.t)


@dataclass(frozen=True)
class IdleTime:
    """A replica's engine running nothing while work waited elsewhere."""

    longest_s: float
    total_s: float


def idle_while_waiting(samples: list[Sample], through_dispatcher: bool) -> list[IdleTime]:
    """Per replica: longest stretch (and total) with the engine running nothing while work waited
    (dispatcher: tickets waiting at the sender; straight to vLLM: another replica's waiting queue)."""
    out = []
    rows = complete(samples)
    n = len(rows[0].running) if rows else 0
    for i in range(n):
        longest = total = cur = 0.0
        prev_t = None
        for r in rows:
            waiting = r.tickets > 0 if through_dispatcher else r.waiting_total() > 0
            dt = r.t - prev_t if prev_t is not None else 0.0
            prev_t = r.t
            if waiting and r.running[i] == 0:
                cur += dt
                total += dt
                longest = max(longest, cur)
            else:
                cur = 0.0
        out.append(IdleTime(longest, total))
    return out
