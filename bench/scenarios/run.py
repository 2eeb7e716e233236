"""Arms and running one: fresh processes (simulators, consumers, sender), the offered load, the samples."""

from __future__ import annotations

import asyncio
import os
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from loadgen import Record, Target, TrafficClass, assign_replicas, run_load, schedule

from devstack.processes import ProcessStack
from scenarios.sampling import Sample, Sampler
from scenarios.stats import IdleTime, engine_tps

# A replica that saturates like a GPU: at most 16 sequences, each step 40 ms + 4 ms per running
# sequence (ITL 44 ms alone, 104 ms at 16), prefill 0.4 ms per prompt token: ~150 output tokens/s at
# a full batch. (Half the speed of the example, so that the 2 shared CPU cores relaying every
# token through sender and load generator do not slow the simulated engine itself.)
SIM = ["--max-num-seqs", "16", "--itl-base", "0.04", "--itl-per-seq", "0.004", "--prefill-per-token", "0.0004"]
SIM_SLOW = ["--max-num-seqs", "16", "--itl-base", "0.08", "--itl-per-seq", "0.008", "--prefill-per-token", "0.0008"]
# The consumer settings used unless a scenario (or --set) says otherwise: the in-flight cap equals the
# engine's batch (max-num-seqs), so the ordering happens in RabbitMQ, not in vLLM's queue.
# LLMD_MAX_WAITING=4, not 0: with the cap at max-num-seqs, vLLM's waiting queue only ever holds requests
# granted since the engine's last step; a scrape that catches one of them would otherwise stop pulling
# for a whole scrape interval while a slot is free.
CONSUMER: Mapping[str, str] = {"LLMD_MAX_CONCURRENCY": "16", "LLMD_MAX_WAITING": "4", "LLMD_SCRAPE_INTERVAL_S": "0.25"}
SENDER: Mapping[str, str] = {"LLMD_QUEUE_TIMEOUT_S": "60"}
MODEL = "bench-model"
WARMUP_S = 5.0  # engine tokens/s is measured from here to the end of the arrival window

Mode = Literal["direct", "direct-priority", "dispatcher"]
FIFO: Mode = "direct"
PRIORITY: Mode = "direct-priority"
DISPATCHER: Mode = "dispatcher"


@dataclass
class Arm:
    name: str
    mode: Mode
    sims: list[list[str]]  # `llm-dispatcher sim` arguments of each replica
    consumer_env: dict[str, str] = field(default_factory=dict)
    sender_env: dict[str, str] = field(default_factory=dict)
    external: list[str] = field(default_factory=list)  # upstream URLs not started here (real vLLM)


def three_arms(
    sims: list[list[str]],
    consumer_env: Mapping[str, str],
    external: list[str] | None = None,
    fifo_policy: str = "fcfs",
) -> list[Arm]:
    """vLLM FIFO, vLLM priority and llm-dispatcher (whose consumers get ``consumer_env``) on the same replicas."""
    pol = ["--scheduling-policy", "priority"]
    ext = external or []
    return [
        Arm("vLLM FIFO", FIFO, [[*s, "--scheduling-policy", fifo_policy] for s in sims], external=ext),
        Arm("vLLM priority", PRIORITY, [[*s, *pol] for s in sims], external=ext),
        Arm(
            "llm-dispatcher",
            DISPATCHER,
            [[*s, "--scheduling-policy", fifo_policy] for s in sims],
            dict(consumer_env),
            dict(SENDER),
            external=ext,
        ),
    ]


@dataclass
class ArmResult:
    arm: str
    mode: Mode
    records: list[Record]
    samples: list[Sample]
    engine_tps: float  # all replicas' output tokens/s from WARMUP_S to the end of the arrival window
    loadavg: tuple[float, float]  # 1-minute load average before and after
    started: float  # wall clock
    consumer_env: dict[str, str]
    idle: list[IdleTime] | None = None  # per replica, where a scenario computes it

    @property
    def through_dispatcher(self) -> bool:
        return self.mode == DISPATCHER


def pick(results: Sequence[ArmResult], mode: Mode) -> ArmResult:
    """The result of the one arm of that mode."""
    (found,) = (r for r in results if r.mode == mode)
    return found


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
) -> ArmResult:
    stack = ProcessStack(workdir, model=model)
    try:
        urls = list(arm.external) or [stack.start_sim([*a, "--seed", str(seed)]) for a in arm.sims]
        consumers: list[str] = []
        if arm.mode == DISPATCHER:
            for u in urls:
                consumers.append(stack.start_consumer(u, **arm.consumer_env).url)  # type: ignore[attr-defined]
            stack.start_sender(**arm.sender_env)
            for c in classes:
                c.token = stack.token(f"{c.name}-{seed}", c.llmd_priority, c.threshold)
            stack.wait_live(classes[0].token)
            _wait_ready(consumers)
            target = Target([stack.url], model, arm.mode, {c.name: c for c in classes})
        else:
            target = Target(urls, model, arm.mode, {c.name: c for c in classes})
        arrivals = schedule(classes, duration, seed)
        load_before = os.getloadavg()[0]

        async def drive() -> tuple[list[Record], list[Sample]]:
            sender = stack.metrics_url if arm.mode == DISPATCHER and sample_tickets else None
            sampler = Sampler(urls, consumers if sample_tickets else [], sender, sample_period)
            task = asyncio.create_task(sampler.run())
            try:
                records = await run_load(target, arrivals, duration, drain_s)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            if not arm.external:
                await assign_replicas(records, urls, [f"r{i}" for i in range(len(urls))])
            return records, sampler.samples

        t_start = time.time()
        records, samples = asyncio.run(drive())
        return ArmResult(
            arm=arm.name,
            mode=arm.mode,
            records=records,
            samples=samples,
            engine_tps=engine_tps(samples, WARMUP_S, duration),
            loadavg=(load_before, os.getloadavg()[0]),
            started=t_start,
            consumer_env=arm.consumer_env,
        )
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
