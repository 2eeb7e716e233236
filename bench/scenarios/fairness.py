"""Scenario 7: fair share within a priority band. Two tokens of the same priority on one replica, a heavy
one offering 10x the light one's rate, together 2x the replica's capacity; three arms side by side in
one run, each on fresh processes with the same schedule:

- **light alone**: the light token's traffic by itself (its queue wait is the reference);
- **first come, first served**: both tokens, `LLMD_FAIR_LEVELS=1` (the queue as before sub-levels);
- **fair share**: both tokens, `LLMD_FAIR_LEVELS=4` (the default).

Each request's queue wait is the sender's own measurement (its usage record, joined by request id);
served shares are the output tokens of the requests that ended inside the measured window.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from dataclasses import dataclass, field

from loadgen import Record, Target, TrafficClass, run_load, schedule

from devstack.processes import ProcessStack
from scenarios.run import CONSUMER, MODEL, SENDER, SIM, WARMUP_S, _wait_ready
from scenarios.sampling import Sample, Sampler
from scenarios.stats import engine_tps, pct

HEAVY, LIGHT = "heavy", "light"


@dataclass(frozen=True)
class FairOptions:
    duration: float = 60.0  # arrival window per arm (s)
    light_rate: float = 0.55  # requests/s; the heavy token offers 10x: 6.05 req/s together, ~2x capacity
    ratio: float = 10.0
    prompt_tokens: tuple[int, int] = (50, 300)
    max_tokens: tuple[int, int] = (16, 64)
    drain_s: float = 20.0


def classes(o: FairOptions, heavy: bool = True) -> list[TrafficClass]:
    """The two classes, in the same order in every arm (each class's arrivals are drawn from its position,
    so the light token's schedule is the same alone and with the heavy one, which is silent when alone)."""
    light = TrafficClass(LIGHT, o.light_rate, o.prompt_tokens, o.max_tokens, llmd_priority=5, threshold=100000)
    rate = o.light_rate * o.ratio if heavy else 0.0
    return [TrafficClass(HEAVY, rate, o.prompt_tokens, o.max_tokens, llmd_priority=5, threshold=100000), light]


@dataclass
class FairArm:
    name: str
    levels: int
    records: list[Record] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    queue_wait: dict[str, list[float]] = field(default_factory=dict)  # class -> each served request's wait (s)
    engine_tps: float = float("nan")
    loadavg: tuple[float, float] = (0.0, 0.0)

    def served_tokens(self, cls: str, start: float, end: float) -> int:
        """Output tokens of the class's requests that ended inside [start, end] (s from the run's start)."""
        return sum(
            r.out_tokens
            for r in self.records
            if r.cls == cls and r.status == 200 and r.e2e is not None and start <= r.start + r.e2e <= end
        )


def _usage_waits(database_url: str) -> dict[str, float]:
    """request id -> queue wait (s) of every request the sender recorded as served."""
    path = database_url.split("///", 1)[1]
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT request_id, queue_wait_s FROM usage WHERE status = 200").fetchall()
    return dict(rows)


def run_fair_arm(name: str, levels: int, cls: list[TrafficClass], o: FairOptions, seed: int, workdir: str) -> FairArm:
    stack = ProcessStack(workdir)
    arm = FairArm(name, levels)
    try:
        url = stack.start_sim([*SIM, "--seed", str(seed)])
        fair = {"LLMD_FAIR_LEVELS": str(levels)}
        consumer = stack.start_consumer(url, **CONSUMER, **fair).url  # type: ignore[attr-defined]
        stack.start_sender(**SENDER, **fair)
        for c in cls:
            c.token = stack.token(f"{c.name}-{seed}", c.llmd_priority, c.threshold)
        stack.wait_live(cls[0].token)
        _wait_ready([consumer])
        target = Target([stack.url], MODEL, "dispatcher", {c.name: c for c in cls})
        arrivals = schedule(cls, o.duration, seed)
        arm.loadavg = (os.getloadavg()[0], 0.0)

        async def drive() -> None:
            sampler = Sampler([url], [consumer], stack.metrics_url, 0.25)
            task = asyncio.create_task(sampler.run())
            try:
                arm.records = await run_load(target, arrivals, o.duration, o.drain_s)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            arm.samples = sampler.samples

        asyncio.run(drive())
        time.sleep(2.5)  # the sender writes usage every second
        waits = _usage_waits(stack.env["LLMD_DATABASE_URL"])
        for r in arm.records:
            if r.rid in waits:
                arm.queue_wait.setdefault(r.cls, []).append(waits[r.rid])
        arm.engine_tps = engine_tps(arm.samples, WARMUP_S, o.duration)
        arm.loadavg = (arm.loadavg[0], os.getloadavg()[0])
        return arm
    finally:
        stack.stop()


def max_min_fair(capacity: float, demands: dict[str, float]) -> dict[str, float]:
    """Water-filling: each key gets its demand or an equal share of what is left, whichever is less."""
    out: dict[str, float] = {}
    left, keys = capacity, sorted(demands, key=demands.get)  # type: ignore[arg-type]
    for i, k in enumerate(keys):
        out[k] = min(demands[k], left / (len(keys) - i))
        left -= out[k]
    return out


@dataclass
class FairScenario:
    alone: FairArm
    fifo: FairArm
    fair: FairArm
    targets: dict[str, float]
    report: str


def run_scenario(o: FairOptions, seed: int, workdir: str) -> FairScenario:
    alone = run_fair_arm("light alone", 4, classes(o, heavy=False), o, seed, workdir)
    fifo = run_fair_arm("first come, first served (LLMD_FAIR_LEVELS=1)", 1, classes(o), o, seed, workdir)
    fair = run_fair_arm("fair share (LLMD_FAIR_LEVELS=4)", 4, classes(o), o, seed, workdir)
    mean_out = sum(o.max_tokens) / 2
    demand = {LIGHT: o.light_rate * mean_out, HEAVY: o.light_rate * o.ratio * mean_out}
    targets: dict[str, float] = {}
    lines = [
        f"### Scenario 7 (fair share within a priority) — {o.duration:g} s per arm, light {o.light_rate:g} req/s, "
        f"heavy {o.light_rate * o.ratio:g} req/s, both priority 5\n",
        "| arm | token | requests | served | queue wait p50 | p95 | max | TTFT p95 | output tokens/s served "
        f"{WARMUP_S:g}-{o.duration:g} s | share | max-min fair share | engine tokens/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    window = o.duration - WARMUP_S
    for arm in (alone, fifo, fair):
        served = {c: arm.served_tokens(c, WARMUP_S, o.duration) / window for c in (HEAVY, LIGHT)}
        total = sum(served.values())
        fair_share = max_min_fair(total, demand) if served[HEAVY] else {LIGHT: served[LIGHT]}
        for c in (HEAVY, LIGHT):
            rs = [r for r in arm.records if r.cls == c]
            if not rs:
                continue
            w = arm.queue_wait.get(c, [])
            ttft = [r.ttft for r in rs if r.ttft is not None and r.status in (200, -1)]
            share = served[c] / total if total else float("nan")
            lines.append(
                f"| {arm.name} | {c} | {len(rs)} | {sum(r.status == 200 for r in rs)} | {pct(w, 50):.3f} s | "
                f"{pct(w, 95):.3f} s | {max(w, default=float('nan')):.3f} s | {pct(ttft, 95):.3f} s | "
                f"{served[c]:.1f} | {share:.1%} | {fair_share[c] / total:.1%} | {arm.engine_tps:.0f} |"
            )
            if arm is fair:
                targets[f"{c}_share_error"] = abs(served[c] - fair_share[c]) / fair_share[c]
    light_alone, light_fair = pct(alone.queue_wait.get(LIGHT, []), 95), pct(fair.queue_wait.get(LIGHT, []), 95)
    light_fifo = pct(fifo.queue_wait.get(LIGHT, []), 95)
    targets["light_p95_wait_vs_alone"] = light_fair / light_alone
    targets["engine_tps_vs_fifo"] = fair.engine_tps / fifo.engine_tps
    ok = {True: "met", False: "not met"}
    lines += [
        "",
        f"- light token's p95 queue wait: fair {light_fair:.3f} s, first come first served {light_fifo:.3f} s, alone "
        f"{light_alone:.3f} s = {targets['light_p95_wait_vs_alone']:.2f}x alone (target <= 1.5x): "
        f"{ok[targets['light_p95_wait_vs_alone'] <= 1.5]}",
        f"- served share within 10 % of the max-min fair share: light off by {targets[f'{LIGHT}_share_error']:.1%}, "
        f"heavy by {targets[f'{HEAVY}_share_error']:.1%}: "
        f"{ok[max(targets[f'{LIGHT}_share_error'], targets[f'{HEAVY}_share_error']) <= 0.10]}",
        f"- engine output tokens/s {WARMUP_S:g}-{o.duration:g} s: fair {fair.engine_tps:.0f} vs first come first "
        f"served {fifo.engine_tps:.0f} = {targets['engine_tps_vs_fifo']:.3f} (target >= 0.97): "
        f"{ok[targets['engine_tps_vs_fifo'] >= 0.97]}",
        "- load average before → after: "
        + ", ".join(f"{a.name} {a.loadavg[0]:.1f} → {a.loadavg[1]:.1f}" for a in (alone, fifo, fair)),
    ]
    return FairScenario(alone, fifo, fair, targets, "\n".join(lines) + "\n")
