"""The seven scenarios: each runs its arms, draws its plot and writes its report section."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from loadgen import TrafficClass

from scenarios import fairness
from scenarios.batch import BatchArmResult, BatchOptions, run_scenario
from scenarios.plots import plot_batch, plot_fairness, plot_floor, plot_goodput, plot_priority, plot_replicas
from scenarios.report import table
from scenarios.run import (
    CONSUMER,
    DISPATCHER,
    FIFO,
    SENDER,
    SIM,
    SIM_SLOW,
    WARMUP_S,
    Arm,
    ArmResult,
    pick,
    run_arm,
    three_arms,
)
from scenarios.stats import class_stats, idle_while_waiting


@dataclass(frozen=True)
class Options:
    """The command line's settings, passed to every scenario (nothing module-level is changed by them)."""

    duration: float = 45  # arrival window per arm (s)
    idle_duration: float = 30  # scenario 1's idle reference run (s)
    seed: int = 1
    floor: float = 12.0  # scenario 4: minTokensPerSecondPerUser
    floor_threshold: int = 20  # scenario 4: the token's queue threshold
    real_duration: float = 60
    real_rate_i: float = 0.2
    real_rate_b: float = 0.3
    consumer_overrides: dict[str, str] = field(default_factory=dict)  # --set LLMD_X=V
    max_num_batched_tokens: int = 0  # the simulators' chunked-prefill budget (0: a prompt prefilled whole)
    batch: BatchOptions = field(default_factory=BatchOptions)  # scenario 6
    fair: fairness.FairOptions = field(default_factory=fairness.FairOptions)  # scenario 7

    def consumer_env(self, **scenario: str) -> dict[str, str]:
        """The dispatcher arms' consumer settings: the defaults, then --set, then the scenario's own."""
        return {**CONSUMER, **self.consumer_overrides, **scenario}

    def sim(self, base: list[str]) -> list[str]:
        """A simulated replica's arguments: the scenario's engine, with --sim-max-num-batched-tokens."""
        if not self.max_num_batched_tokens:
            return list(base)
        return [*base, "--max-num-batched-tokens", str(self.max_num_batched_tokens)]


@dataclass
class ScenarioResult:
    report: str  # markdown
    results: list[ArmResult]
    idle: ArmResult | None = None  # scenario 1's idle reference arm
    targets: dict[str, float] = field(default_factory=dict)  # the figures each scenario is judged by
    replicas: dict[str, dict[str, int]] = field(default_factory=dict)  # scenario 3: completed per replica per arm
    batch_arms: list[BatchArmResult] = field(default_factory=list)  # scenario 6: saturation, alone, with the batch
    wall_s: float = 0.0


def s1_classes() -> list[TrafficClass]:
    # Capacity estimate at batch 16: 6.5 ms of engine time per output token + 0.4 ms per prompt token
    # → interactive ~0.33 s, batch ~1.28 s of engine time per request. 1.0·0.33 + 1.3·1.28 ≈ 2.0 = 2x.
    return [
        TrafficClass("interactive", 1.0, (50, 300), (16, 64), vllm_priority=0, llmd_priority=8, threshold=200),
        TrafficClass("batch", 1.3, (200, 1000), (64, 256), vllm_priority=1, llmd_priority=1, threshold=16),
    ]


def scenario1(a: Options, workdir: str, img: Path) -> ScenarioResult:
    classes = s1_classes()
    idle_arm = Arm("idle (interactive only, dispatcher)", DISPATCHER, [a.sim(SIM)], a.consumer_env(), dict(SENDER))
    idle = run_arm(idle_arm, [classes[0]], a.idle_duration, a.seed, workdir)
    results = [
        run_arm(arm, s1_classes(), a.duration, a.seed, workdir) for arm in three_arms([a.sim(SIM)], a.consumer_env())
    ]
    plot_priority(results, idle, img / "scenario1-priority.png", "Scenario 1: priority under 2x overload (simulator)")
    idle_p95 = class_stats(idle.records, "interactive").ttft_p95
    disp_p95 = class_stats(pick(results, DISPATCHER).records, "interactive").ttft_p95
    report = (
        f"### Scenario 1 (priority under overload) — {a.duration:g} s per arm\n\n"
        + table([idle], ["interactive"])
        + "\n\n"
        + table(results, ["interactive", "batch"])
        + f"\n\nTarget 1: interactive p95 TTFT through the dispatcher {disp_p95:.3f} s vs idle {idle_p95:.3f} s"
        f" = {disp_p95 / idle_p95:.2f}x (target <= 1.5x)\n"
    )
    return ScenarioResult(report, results, idle=idle, targets={"interactive_p95_ttft_vs_idle": disp_p95 / idle_p95})


def scenario2(a: Options, workdir: str, img: Path) -> ScenarioResult:
    # ~1.1 s of engine time per request at batch 16 → capacity ~0.9 req/s; offered 1.2 req/s (1.3x).
    def classes() -> list[TrafficClass]:
        return [TrafficClass("mixed", 1.2, (50, 1000), (16, 256), llmd_priority=5, threshold=100000)]

    results = [
        run_arm(arm, classes(), a.duration, a.seed, workdir) for arm in three_arms([a.sim(SIM)], a.consumer_env())
    ]
    plot_goodput(results, img / "scenario2-goodput.png", "Scenario 2: goodput at saturation (1.3x, simulator)")
    dispatcher, fifo = pick(results, DISPATCHER), pick(results, FIFO)
    ratio = dispatcher.engine_tps / fifo.engine_tps
    report = (
        f"### Scenario 2 (goodput) — {a.duration:g} s per arm\n\n"
        + table(results, ["mixed"])
        + f"\n\nTarget 2: engine output tokens/s from {WARMUP_S:g} s to {a.duration:g} s: dispatcher "
        f"{dispatcher.engine_tps:.0f} vs vLLM FIFO {fifo.engine_tps:.0f} = {ratio:.3f} "
        f"(target >= 0.95)\n"
    )
    return ScenarioResult(report, results, targets={"engine_tps_vs_fifo": ratio})


def scenario3(a: Options, workdir: str, img: Path) -> ScenarioResult:
    # r0 slow (SIM_SLOW, ~77 tok/s), r1 fast (SIM, ~150 tok/s). ~0.58 s of fast-engine time per request
    # → capacity ~1.7 + 0.86 req/s; offered 3.1 req/s (1.2x). Straight to vLLM = client round robin.
    def classes() -> list[TrafficClass]:
        return [TrafficClass("mixed", 3.1, (50, 500), (16, 128), llmd_priority=5, threshold=100000)]

    results = [
        run_arm(arm, classes(), a.duration, a.seed, workdir, sample_period=0.1, sample_tickets=True)
        for arm in three_arms([a.sim(SIM_SLOW), a.sim(SIM)], a.consumer_env())
    ]
    plot_replicas(
        results,
        img / "scenario3-replicas.png",
        "Scenario 3: uneven replicas (r1 twice as fast)",
        ["r0 slow", "r1 fast"],
    )
    lines = [
        f"### Scenario 3 (uneven replicas) — {a.duration:g} s per arm\n",
        table(results, ["mixed"]),
        "",
        "| arm | completed on r0 (slow) | completed on r1 (fast) | fast/slow | longest idle while work waited "
        "r0 / r1 | total idle while work waited r0 / r1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    replicas = {}
    for res in results:
        c0 = sum(r.replica == "r0" and r.status == 200 for r in res.records)
        c1 = sum(r.replica == "r1" and r.status == 200 for r in res.records)
        idle = res.idle = idle_while_waiting(res.samples, res.through_dispatcher)
        replicas[res.arm] = {"r0": c0, "r1": c1}
        lines.append(
            f"| {res.arm} | {c0} | {c1} | {c1 / max(c0, 1):.2f} | {idle[0].longest_s:.1f} s / "
            f"{idle[1].longest_s:.1f} s | {idle[0].total_s:.1f} s / {idle[1].total_s:.1f} s |"
        )
    return ScenarioResult("\n".join(lines) + "\n", results, replicas=replicas)


def scenario4(a: Options, workdir: str, img: Path) -> ScenarioResult:
    floor = a.floor

    def classes() -> list[TrafficClass]:
        # ~0.48 s of engine time per request at batch 16 → ~2 req/s; offered 3 req/s (1.5x).
        return [TrafficClass("mixed", 3.0, (50, 400), (16, 128), llmd_priority=5, threshold=a.floor_threshold)]

    arms = three_arms([a.sim(SIM)], a.consumer_env(LLMD_MIN_TOKENS_PER_SECOND_PER_USER=str(floor)))
    results = [run_arm(arm, classes(), a.duration, a.seed, workdir) for arm in arms]
    plot_floor(
        results,
        floor,
        img / "scenario4-floor.png",
        f"Scenario 4: per-user speed floor {floor:g} tok/s (1.5x offered, simulator)",
    )
    p10 = class_stats(pick(results, DISPATCHER).records).tps_p10
    report = (
        f"### Scenario 4 (per-user speed floor {floor:g} tok/s) — {a.duration:g} s per arm\n\n"
        + table(results, ["mixed"])
        + f"\n\nTarget 4: p10 per-stream tokens/s through the dispatcher {p10:.1f} (floor {floor:g})\n"
    )
    return ScenarioResult(report, results, targets={"dispatcher_tps_p10": p10})


def scenario5(a: Options, workdir: str, img: Path) -> ScenarioResult:
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

    arms = three_arms([[]], a.consumer_env(LLMD_MAX_CONCURRENCY="4"), external=[url], fifo_policy="priority")
    results = [run_arm(arm, classes(), a.real_duration, a.seed, workdir, drain_s=30, model="smollm2") for arm in arms]
    plot_priority(
        results,
        None,
        img / "scenario5-real-vllm.png",
        "Scenario 5: real vLLM on CPU (SmolLM2-135M, max-num-seqs 4), interactive vs batch",
    )
    report = (
        f"### Scenario 5 (real vLLM on CPU) — {a.real_duration:g} s per arm, {url}\n\n"
        + table(results, ["interactive", "batch"])
        + "\n"
    )
    return ScenarioResult(report, results)


def scenario6(a: Options, workdir: str, img: Path) -> ScenarioResult:
    """Interactive at ~60 % of capacity, alone and with a batch submitted as it starts (scenarios/batch.py)."""
    o = dataclasses.replace(a.batch, sim=tuple(a.sim(SIM)))
    scen = run_scenario(o, a.seed, workdir, a.consumer_env())
    plot_batch(
        scen,
        o.duration,
        img / "scenario6-batch.png",
        f"Scenario 6: interactive at ~60 % of capacity, alone and with a {o.lines:,}-line batch (simulator)",
    )
    return ScenarioResult(
        scen.report, [], targets=scen.targets, batch_arms=[scen.saturation, scen.alone, scen.with_batch]
    )


def scenario7(a: Options, workdir: str, img: Path) -> ScenarioResult:
    """Two tokens of one priority, a heavy one at 10x the light one's rate, 2x capacity (scenarios/fairness.py)."""
    o = a.fair
    scen = fairness.run_scenario(o, a.seed, workdir)
    plot_fairness(scen, o.duration, img / "scenario7-fairness.png", "Scenario 7: fair share within a priority")
    return ScenarioResult(scen.report, [], targets=scen.targets)


SCENARIOS: dict[str, Callable[[Options, str, Path], ScenarioResult]] = {
    "1": scenario1,
    "2": scenario2,
    "3": scenario3,
    "4": scenario4,
    "5": scenario5,
    "6": scenario6,
    "7": scenario7,
}
