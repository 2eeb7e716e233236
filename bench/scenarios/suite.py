"""Scheduling scenarios: the same offered load straight to vLLM (FIFO), straight to vLLM with
`--scheduling-policy priority`, and through llm-dispatcher, side by side in one run.

    .venv/bin/python bench/scenarios.py 1 2 3 4 [--duration 40] [--json results.json] [--img docs/img]
    .venv/bin/python bench/scenarios.py 5            # real vLLM on CPU (LLMD_REAL_VLLM_URL or port 18041)

1 priority under overload · 2 goodput at saturation · 3 uneven replicas · 4 per-user speed floor ·
5 real engine. Every arm starts fresh processes (simulators, consumers, sender) on loopback against
the local RabbitMQ; the load generator (bench/loadgen.py) runs in this process. A markdown report is
printed; PNG plots go to --img.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Record, Target, TrafficClass, assign_replicas, run_load, schedule

from llm_dispatcher.localstack import Stack

# A replica that saturates like a GPU: at most 16 sequences, each step 40 ms + 4 ms per running
# sequence (ITL 44 ms alone, 104 ms at 16), prefill 0.4 ms per prompt token: ~150 output tokens/s at
# a full batch. (Half the speed of the example, so that the 2 shared CPU cores relaying every
# token through sender and load generator do not slow the simulated engine itself.)
SIM = ["--max-num-seqs", "16", "--itl-base", "0.04", "--itl-per-seq", "0.004", "--prefill-per-token", "0.0004"]
SIM_SLOW = ["--max-num-seqs", "16", "--itl-base", "0.08", "--itl-per-seq", "0.008", "--prefill-per-token", "0.0008"]
# The consumer settings used unless a scenario says otherwise: the in-flight cap equals the engine's
# batch (max-num-seqs), so the ordering happens in RabbitMQ, not in vLLM's queue. LLMD_MAX_WAITING=4,
# not 0: with the cap at max-num-seqs, vLLM's waiting queue only ever holds requests granted since the
# engine's last step; a scrape that catches one of them would otherwise stop pulling for a whole
# scrape interval while a slot is free.
CONSUMER = {"LLMD_MAX_CONCURRENCY": "16", "LLMD_MAX_WAITING": "4", "LLMD_SCRAPE_INTERVAL_S": "0.25"}
SENDER = {"LLMD_QUEUE_TIMEOUT_S": "60"}
MODEL = "bench-model"
WARMUP_S = 5.0  # engine tokens/s is measured from here to the end of the arrival window


@dataclass
class Arm:
    name: str
    mode: str  # direct | direct-priority | dispatcher
    sims: list[list[str]]
    consumer_env: dict = field(default_factory=dict)
    sender_env: dict = field(default_factory=dict)
    external: list[str] = field(default_factory=list)  # upstream URLs not started here (real vLLM)


def three_arms(
    sims: list[list[str]],
    consumer_env: dict | None = None,
    external: list[str] | None = None,
    fifo_policy: str = "fcfs",
) -> list[Arm]:
    pol = ["--scheduling-policy", "priority"]
    ext = external or []
    return [
        Arm("vLLM FIFO", "direct", [[*s, "--scheduling-policy", fifo_policy] for s in sims], external=ext),
        Arm("vLLM priority", "direct-priority", [[*s, *pol] for s in sims], external=ext),
        Arm(
            "llm-dispatcher",
            "dispatcher",
            [[*s, "--scheduling-policy", fifo_policy] for s in sims],
            {**CONSUMER, **(consumer_env or {})},
            dict(SENDER),
            external=ext,
        ),
    ]


# -- sampling the replicas every 100 ms ------------------------------------------------------------
_NUM = r"([0-9.eE+-]+|NaN)"


def _sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? {_NUM}", text, re.M))


class Sampler:
    def __init__(self, sims: list[str], consumers: list[str], sender: str | None, period: float = 0.1):
        self.sims, self.consumers, self.sender, self.period = sims, consumers, sender, period
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()

    async def _get(self, s: aiohttp.ClientSession, url: str) -> str:
        try:
            async with s.get(url) as r:
                return await r.text()
        except (aiohttp.ClientError, TimeoutError):
            return ""

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
            while True:
                t = time.perf_counter() - self.t0
                urls = [u + "/metrics" for u in self.sims] + [u + "/readyz" for u in self.consumers]
                if self.sender:
                    urls.append(self.sender + "/metrics")
                texts = await asyncio.gather(*(self._get(s, u) for u in urls))
                n = len(self.sims)
                row = {
                    "t": t,  # a failed scrape reads None (never 0, which would look like an idle engine)
                    "running": [_sum(x, "vllm:num_requests_running") if x else None for x in texts[:n]],
                    "waiting": [_sum(x, "vllm:num_requests_waiting") if x else None for x in texts[:n]],
                    "gen": [_sum(x, "vllm:generation_tokens_total") if x else None for x in texts[:n]],
                    "in_flight": [],
                    "tickets": _sum(texts[-1], "llmd_waiting_tickets") if self.sender and texts[-1] else 0.0,
                }
                for x in texts[n : n + len(self.consumers)]:
                    try:
                        row["in_flight"].append(json.loads(x)["in_flight"])
                    except (ValueError, KeyError):
                        row["in_flight"].append(None)
                self.rows.append(row)
                await asyncio.sleep(max(0.0, self.period - (time.perf_counter() - self.t0 - t)))


def complete(rows: list[dict]) -> list[dict]:
    """Samples where every replica answered."""
    return [r for r in rows if None not in r["gen"] and None not in r["running"] and None not in r["waiting"]]


def engine_tps(rows: list[dict], start: float, end: float) -> float:
    inside = [r for r in complete(rows) if start <= r["t"] <= end]
    if len(inside) < 2:
        return float("nan")
    a, b = inside[0], inside[-1]
    return (sum(b["gen"]) - sum(a["gen"])) / (b["t"] - a["t"])


def idle_while_waiting(rows: list[dict], mode: str) -> list[dict]:
    """Per replica: longest stretch (and total) with the engine running nothing while work waited
    (dispatcher: tickets waiting at the sender; straight to vLLM: another replica's waiting queue)."""
    out = []
    rows = complete(rows)
    n = len(rows[0]["running"]) if rows else 0
    for i in range(n):
        longest = total = cur = 0.0
        prev_t = None
        for r in rows:
            waiting = r["tickets"] > 0 if mode == "dispatcher" else sum(r["waiting"]) > 0
            dt = r["t"] - prev_t if prev_t is not None else 0.0
            prev_t = r["t"]
            if waiting and r["running"][i] == 0:
                cur += dt
                total += dt
                longest = max(longest, cur)
            else:
                cur = 0.0
        out.append({"longest_s": longest, "total_s": total})
    return out


# -- running one arm -------------------------------------------------------------------------------
def run_arm(
    arm: Arm,
    classes: list[TrafficClass],
    duration: float,
    seed: int,
    workdir: str,
    drain_s: float = 20.0,
    model: str = MODEL,
    sample_period: float = 0.25,
    sample_tickets: bool = False,
) -> dict:
    stack = Stack(workdir, model=model)
    try:
        urls = list(arm.external) or [stack.start_sim([*a, "--seed", str(seed)]) for a in arm.sims]
        consumers: list[str] = []
        if arm.mode == "dispatcher":
            for u in urls:
                consumers.append(stack.start_consumer(u, **arm.consumer_env).url)  # type: ignore[attr-defined]
            stack.start_sender(**arm.sender_env)
            for c in classes:
                c.token = stack.token(f"{c.name}-{seed}", c.llmd_priority, c.threshold)
            stack.wait_live(classes[0].token)
            _wait_ready(consumers)
            target = Target([stack.url], model, "dispatcher", {c.name: c for c in classes})
        else:
            target = Target(urls, model, arm.mode, {c.name: c for c in classes})
        arrivals = schedule(classes, duration, seed)
        load_before = os.getloadavg()[0]

        async def drive() -> tuple[list[Record], list[dict]]:
            sender = stack.url if arm.mode == "dispatcher" and sample_tickets else None
            sampler = Sampler(urls, consumers if sample_tickets else [], sender, sample_period)
            task = asyncio.create_task(sampler.run())
            try:
                records = await run_load(target, arrivals, duration, drain_s)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if not arm.external:
                await assign_replicas(records, urls, [f"r{i}" for i in range(len(urls))])
            return records, sampler.rows

        t_start = time.time()
        records, rows = asyncio.run(drive())
        return {
            "arm": arm.name,
            "mode": arm.mode,
            "records": [r.as_dict() for r in records],
            "rows": rows,
            "engine_tps": engine_tps(rows, WARMUP_S, duration),
            "loadavg": [load_before, os.getloadavg()[0]],
            "started": t_start,
            "consumer_env": arm.consumer_env,
        }
    finally:
        stack.stop()


def _wait_ready(consumer_urls: list[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    for u in consumer_urls:
        while True:
            try:
                with urllib.request.urlopen(u + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"consumer {u} never ready")
            time.sleep(0.1)
    time.sleep(1.0)  # let the sender hear every replica's heartbeat


# -- statistics ------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def class_stats(records: list[dict], cls: str | None = None) -> dict:
    rs = [r for r in records if cls is None or r["cls"] == cls]
    ok = [r for r in rs if r["status"] == 200]
    cut = [r for r in rs if r["status"] == -1]
    waited = ok + cut  # a cut request counts with its censored (lower-bound) TTFT and end-to-end
    ttft = [r["ttft"] for r in waited if r["ttft"] is not None]
    e2e = [r["e2e"] for r in waited if r["e2e"] is not None]
    tps = [r["tps"] for r in ok if r["tps"] is not None]
    return {
        "n": len(rs),
        "ok": len(ok),
        "429": sum(r["status"] == 429 for r in rs),
        "503": sum(r["status"] == 503 for r in rs),
        "cut": len(cut),
        "other": sum(r["status"] not in (200, 429, 503, -1) for r in rs),
        "ttft_p50": pct(ttft, 50),
        "ttft_p95": pct(ttft, 95),
        "e2e_p50": pct(e2e, 50),
        "e2e_p95": pct(e2e, 95),
        "tps_p10": pct(tps, 10),
        "tps_p50": pct(tps, 50),
        "tokens": sum(r["out_tokens"] for r in ok),
        "last_end": max((r["start"] + r["e2e"] for r in ok), default=float("nan")),
    }


def fmt(x: float, unit: str = "s") -> str:
    if x != x:
        return "-"
    return f"{x:.2f} {unit}" if unit else f"{x:.1f}"


def table(results: list[dict], classes: list[str], duration: float) -> str:
    lines = [
        "| arm | class | requests | ok | 429 | 503 | cut | TTFT p50 | TTFT p95 | e2e p50 | e2e p95 | "
        "stream tok/s p10 | class output tok/s | engine tok/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in results:
        for i, c in enumerate(classes):
            s = class_stats(res["records"], c)
            eng = f"{res['engine_tps']:.0f}" if i == 0 else ""
            lines.append(
                f"| {res['arm'] if i == 0 else ''} | {c} | {s['n']} | {s['ok']} | {s['429']} | {s['503']} | "
                f"{s['cut']} | {fmt(s['ttft_p50'])} | {fmt(s['ttft_p95'])} | {fmt(s['e2e_p50'])} | "
                f"{fmt(s['e2e_p95'])} | {fmt(s['tps_p10'], '')} | {s['tokens'] / s['last_end']:.0f} | {eng} |"
            )
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {
    "vLLM FIFO": "tab:red",
    "vLLM priority": "tab:orange",
    "llm-dispatcher": "tab:blue",
    "idle (interactive only, dispatcher)": "tab:green",
}


def plot_priority(results: list[dict], idle: dict | None, path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    arms = ([idle] if idle else []) + results
    for ax, cls in zip(axes[:2], ("interactive", "batch"), strict=True):
        for res in arms:
            v = sorted(
                r["ttft"]
                for r in res["records"]
                if r["cls"] == cls and r["status"] in (200, -1) and r["ttft"] is not None
            )
            if v:
                ax.plot(v, np.linspace(0, 1, len(v)), label=res["arm"], color=COLORS.get(res["arm"]))
        ax.set_xscale("log")
        ax.set_xlabel("time to first token (s, log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{cls}: TTFT CDF")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[2]
    for res in results:
        pts = [
            (r["start"], r["ttft"])
            for r in res["records"]
            if r["cls"] == "interactive" and r["status"] in (200, -1) and r["ttft"] is not None
        ]
        if pts:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=6, label=res["arm"], color=COLORS.get(res["arm"]))
    ax.set_yscale("log")
    ax.set_xlabel("arrival time (s)")
    ax.set_ylabel("interactive TTFT (s, log)")
    ax.set_title("interactive TTFT over the run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def _save(plt, fig, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_goodput(results: list[dict], path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for res in results:
        rows = complete(res["rows"])
        t = np.array([r["t"] for r in rows])
        g = np.array([sum(r["gen"]) for r in rows])
        run = np.array([sum(r["running"]) for r in rows])
        if len(t) > 10:
            step = 10  # ~1 s
            axes[0].plot(
                t[step:],
                (g[step:] - g[:-step]) / (t[step:] - t[:-step]),
                label=res["arm"],
                color=COLORS.get(res["arm"]),
            )
            axes[1].plot(t, run, label=res["arm"], color=COLORS.get(res["arm"]), alpha=0.8)
    axes[0].set_title("engine output tokens/s (1 s window)")
    axes[1].set_title("sequences running in the engine (max 16)")
    for ax in axes:
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def plot_replicas(results: list[dict], path: Path, title: str, names: list[str]) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(results) + 1, figsize=(5 * (len(results) + 1), 4.2))
    for ax, res in zip(axes, results, strict=False):
        rows = complete(res["rows"])
        t = [r["t"] for r in rows]
        for i, n in enumerate(names):
            ax.plot(t, [r["running"][i] for r in rows], label=f"{n} running")
        if res["mode"] == "dispatcher":
            ax.plot(t, [r["tickets"] for r in rows], label="tickets waiting", color="grey", alpha=0.6)
        else:
            ax.plot(t, [sum(r["waiting"]) for r in rows], label="vLLM waiting (both)", color="grey", alpha=0.6)
        ax.set_title(res["arm"])
        ax.set_xlabel("time (s)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[-1]
    x = np.arange(len(results))
    for i, n in enumerate(names):
        counts = [sum(r["replica"] == f"r{i}" and r["status"] == 200 for r in res["records"]) for res in results]
        ax.bar(x + (i - 0.5) * 0.38, counts, 0.38, label=n)
    ax.set_xticks(x, [r["arm"] for r in results], fontsize=8)
    ax.set_title("completed requests per replica")
    ax.legend(fontsize=8)
    _save(plt, fig, path, title)


def plot_floor(results: list[dict], floor: float, path: Path, title: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.4))
    for res in results:
        v = sorted(r["tps"] for r in res["records"] if r["status"] == 200 and r["tps"])
        if v:
            axes[0].plot(v, np.linspace(0, 1, len(v)), label=res["arm"], color=COLORS.get(res["arm"]))
        rows = complete(res["rows"])
        axes[1].plot(
            [r["t"] for r in rows],
            [sum(r["running"]) for r in rows],
            label=res["arm"],
            color=COLORS.get(res["arm"]),
            alpha=0.8,
        )
    axes[0].axvline(floor, color="k", ls="--", label=f"floor {floor:g} tok/s")
    axes[0].set_xlabel("per-stream decode tokens/s")
    axes[0].set_ylabel("fraction of admitted requests")
    axes[0].set_title("per-stream speed CDF")
    axes[1].set_title("sequences running in the engine")
    axes[1].set_xlabel("time (s)")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(plt, fig, path, title)


# -- the scenarios ---------------------------------------------------------------------------------
def s1_classes() -> list[TrafficClass]:
    # Capacity estimate at batch 16: 6.5 ms of engine time per output token + 0.4 ms per prompt token
    # → interactive ~0.33 s, batch ~1.28 s of engine time per request. 1.0·0.33 + 1.3·1.28 ≈ 2.0 = 2x.
    return [
        TrafficClass("interactive", 1.0, (50, 300), (16, 64), vllm_priority=0, llmd_priority=8, threshold=200),
        TrafficClass("batch", 1.3, (200, 1000), (64, 256), vllm_priority=1, llmd_priority=1, threshold=16),
    ]


def scenario1(a, workdir: str, img: Path) -> dict:
    classes = s1_classes()
    idle_arm = Arm("idle (interactive only, dispatcher)", "dispatcher", [[*SIM]], dict(CONSUMER), dict(SENDER))
    idle = run_arm(idle_arm, [classes[0]], a.idle_duration, a.seed, workdir)
    results = [run_arm(arm, s1_classes(), a.duration, a.seed, workdir) for arm in three_arms([SIM])]
    plot_priority(results, idle, img / "scenario1-priority.png", "Scenario 1: priority under 2x overload (simulator)")
    idle_p95 = class_stats(idle["records"], "interactive")["ttft_p95"]
    disp_p95 = class_stats(results[2]["records"], "interactive")["ttft_p95"]
    report = (
        f"### Scenario 1 (priority under overload) — {a.duration:g} s per arm\n\n"
        + table([idle], ["interactive"], a.idle_duration)
        + "\n\n"
        + table(results, ["interactive", "batch"], a.duration)
        + f"\n\nTarget 1: interactive p95 TTFT through the dispatcher {disp_p95:.3f} s vs idle {idle_p95:.3f} s"
        f" = {disp_p95 / idle_p95:.2f}x (target <= 1.5x)\n"
    )
    return {"report": report, "idle": idle, "results": results, "ratio": disp_p95 / idle_p95}


def scenario2(a, workdir: str, img: Path) -> dict:
    # ~1.1 s of engine time per request at batch 16 → capacity ~0.9 req/s; offered 1.2 req/s (1.3x).
    def classes() -> list[TrafficClass]:
        return [TrafficClass("mixed", 1.2, (50, 1000), (16, 256), llmd_priority=5, threshold=100000)]

    results = [run_arm(arm, classes(), a.duration, a.seed, workdir) for arm in three_arms([SIM])]
    plot_goodput(results, img / "scenario2-goodput.png", "Scenario 2: goodput at saturation (1.3x, simulator)")
    ratio = results[2]["engine_tps"] / results[0]["engine_tps"]
    report = (
        f"### Scenario 2 (goodput) — {a.duration:g} s per arm\n\n"
        + table(results, ["mixed"], a.duration)
        + f"\n\nTarget 2: engine output tokens/s from {WARMUP_S:g} s to {a.duration:g} s: dispatcher "
        f"{results[2]['engine_tps']:.0f} vs vLLM FIFO {results[0]['engine_tps']:.0f} = {ratio:.3f} "
        f"(target >= 0.95)\n"
    )
    return {"report": report, "results": results, "ratio": ratio}


def scenario3(a, workdir: str, img: Path) -> dict:
    # r0 slow (SIM_SLOW, ~77 tok/s), r1 fast (SIM, ~150 tok/s). ~0.58 s of fast-engine time per request
    # → capacity ~1.7 + 0.86 req/s; offered 3.1 req/s (1.2x). Straight to vLLM = client round robin.
    def classes() -> list[TrafficClass]:
        return [TrafficClass("mixed", 3.1, (50, 500), (16, 128), llmd_priority=5, threshold=100000)]

    results = [
        run_arm(arm, classes(), a.duration, a.seed, workdir, sample_period=0.1, sample_tickets=True)
        for arm in three_arms([SIM_SLOW, SIM])
    ]
    plot_replicas(
        results,
        img / "scenario3-replicas.png",
        "Scenario 3: uneven replicas (r1 twice as fast)",
        ["r0 slow", "r1 fast"],
    )
    lines = [
        f"### Scenario 3 (uneven replicas) — {a.duration:g} s per arm\n",
        table(results, ["mixed"], a.duration),
        "",
        "| arm | completed on r0 (slow) | completed on r1 (fast) | fast/slow | longest idle while work waited "
        "r0 / r1 | total idle while work waited r0 / r1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    summary = {}
    for res in results:
        c0 = sum(r["replica"] == "r0" and r["status"] == 200 for r in res["records"])
        c1 = sum(r["replica"] == "r1" and r["status"] == 200 for r in res["records"])
        idle = idle_while_waiting(res["rows"], res["mode"])
        res["idle"] = idle
        summary[res["arm"]] = {"r0": c0, "r1": c1, "idle": idle}
        lines.append(
            f"| {res['arm']} | {c0} | {c1} | {c1 / max(c0, 1):.2f} | {idle[0]['longest_s']:.1f} s / "
            f"{idle[1]['longest_s']:.1f} s | {idle[0]['total_s']:.1f} s / {idle[1]['total_s']:.1f} s |"
        )
    return {"report": "\n".join(lines) + "\n", "results": results, "summary": summary}


def scenario4(a, workdir: str, img: Path) -> dict:
    floor = a.floor

    def classes() -> list[TrafficClass]:
        # ~0.48 s of engine time per request at batch 16 → ~2 req/s; offered 3 req/s (1.5x).
        return [TrafficClass("mixed", 3.0, (50, 400), (16, 128), llmd_priority=5, threshold=a.floor_threshold)]

    arms = three_arms([SIM], {"LLMD_MIN_TOKENS_PER_SECOND_PER_USER": str(floor)})
    results = [run_arm(arm, classes(), a.duration, a.seed, workdir) for arm in arms]
    plot_floor(
        results,
        floor,
        img / "scenario4-floor.png",
        f"Scenario 4: per-user speed floor {floor:g} tok/s (1.5x offered, simulator)",
    )
    p10 = class_stats(results[2]["records"])["tps_p10"]
    report = (
        f"### Scenario 4 (per-user speed floor {floor:g} tok/s) — {a.duration:g} s per arm\n\n"
        + table(results, ["mixed"], a.duration)
        + f"\n\nTarget 4: p10 per-stream tokens/s through the dispatcher {p10:.1f} (floor {floor:g})\n"
    )
    return {"report": report, "results": results, "p10": p10}


def scenario5(a, workdir: str, img: Path) -> dict:
    """Real vLLM (one server started with --scheduling-policy priority --max-num-seqs 4). With every
    request at the same priority (no field) its scheduler is FCFS by arrival, so the FIFO arm and the
    dispatcher arm use the same server without the field; the priority arm sends it."""
    url = os.environ.get("LLMD_REAL_VLLM_URL", "http://127.0.0.1:18041").rstrip("/")

    def classes() -> list[TrafficClass]:
        return [
            TrafficClass(
                "interactive", a.real_rate_i, (20, 60), (8, 16), vllm_priority=0, llmd_priority=8, threshold=200
            ),
            TrafficClass("batch", a.real_rate_b, (50, 200), (32, 64), vllm_priority=1, llmd_priority=1, threshold=8),
        ]

    arms = three_arms([[]], {"LLMD_MAX_CONCURRENCY": "4"}, external=[url], fifo_policy="priority")
    results = [run_arm(arm, classes(), a.real_duration, a.seed, workdir, drain_s=30, model="smollm2") for arm in arms]
    plot_priority(
        results,
        None,
        img / "scenario5-real-vllm.png",
        "Scenario 5: real vLLM on CPU (SmolLM2-135M, max-num-seqs 4), interactive vs batch",
    )
    report = (
        f"### Scenario 5 (real vLLM on CPU) — {a.real_duration:g} s per arm, {url}\n\n"
        + table(results, ["interactive", "batch"], a.real_duration)
        + "\n"
    )
    return {"report": report, "results": results}


SCENARIOS = {"1": scenario1, "2": scenario2, "3": scenario3, "4": scenario4, "5": scenario5}


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the started processes on the way out
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", default=["1", "2", "3", "4"], help="any of 1 2 3 4 5")
    ap.add_argument("--duration", type=float, default=45, help="arrival window per arm (s)")
    ap.add_argument("--idle-duration", type=float, default=30, help="scenario 1's idle reference run (s)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--floor", type=float, default=12.0, help="scenario 4: minTokensPerSecondPerUser")
    ap.add_argument("--floor-threshold", type=int, default=20, help="scenario 4: the token's queue threshold")
    ap.add_argument("--real-duration", type=float, default=60)
    ap.add_argument("--real-rate-i", type=float, default=0.2)
    ap.add_argument("--real-rate-b", type=float, default=0.3)
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--json", help="write every record and sample here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="LLMD_X=V",
        help="override a consumer setting of the dispatcher arms (repeatable)",
    )
    args = ap.parse_args()
    for kv in args.set:
        k, _, v = kv.partition("=")
        CONSUMER[k] = v
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="llmd-scen-")
    out: dict = {}
    for s in args.scenarios:
        t0 = time.monotonic()
        res = SCENARIOS[s](args, workdir, img)
        res["wall_s"] = time.monotonic() - t0
        out[s] = res
        print(res["report"], flush=True)
        print(f"(scenario {s}: {res['wall_s']:.0f} s wall, load average {os.getloadavg()[0]:.1f})\n", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
