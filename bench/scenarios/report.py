"""Markdown tables of a scenario's arms."""

from __future__ import annotations

from collections.abc import Sequence

from scenarios.run import ArmResult
from scenarios.stats import class_stats


def fmt(x: float, unit: str = "s") -> str:
    if x != x:
        return "-"
    return f"{x:.2f} {unit}" if unit else f"{x:.1f}"


def table(results: Sequence[ArmResult], classes: list[str]) -> str:
    """One row per arm and class: requests by outcome, TTFT / end-to-end percentiles, speeds."""
    lines = [
        "| arm | class | requests | ok | 429 | 503 | cut | TTFT p50 | TTFT p95 | e2e p50 | e2e p95 | "
        "stream tok/s p10 | class output tok/s | engine tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for i, c in enumerate(classes):
            s = class_stats(res.records, c)
            eng = f"{res.engine_tps:.0f}" if i == 0 else ""
            lines.append(
                f"| {res.arm if i == 0 else ''} | {c} | {s.n} | {s.ok} | {s.refused_429} | {s.timed_out_503} | "
                f"{s.cut} | {fmt(s.ttft_p50)} | {fmt(s.ttft_p95)} | {fmt(s.e2e_p50)} | "
                f"{fmt(s.e2e_p95)} | {fmt(s.tps_p10, '')} | {s.tokens / s.last_end:.0f} | {eng} |"
            )
    return "\n".join(lines)
