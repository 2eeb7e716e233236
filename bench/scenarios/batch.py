"""Scenario 6: interactive traffic at ~60 % of the replica's capacity, alone and with a 2,000-line batch
(the OpenAI Batch API, submitted when the interactive load starts), side by side in one run.

Three arms, each on fresh processes (simulator, consumer, sender) with the same interactive schedule:

- **saturation** (capacity): straight to a simulator, a closed loop of more clients than engine slots
  sending the batch's own lines; the engine's output tokens/s is the capacity the batch arm is judged
  against (the capacity computed from the simulator's settings is reported next to it);
- **interactive alone**: the interactive class through the dispatcher;
- **interactive + batch**: the same, and at the same moment the batch token uploads the JSONL and
  creates the batch with the official `openai` client; polled with `batches.retrieve` until final.

The batch lines have the same prompt-to-output ratio as the interactive requests, so one capacity
figure (output tokens/s at a full engine, prefill included) holds for both and for any mix of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime

import aiohttp
import openai
import orjson
from loadgen import Record, Target, TrafficClass, run_load, schedule

from devstack.processes import EXE, ProcessStack, cpu_seconds
from scenarios.run import MODEL, SENDER, SIM, WARMUP_S, _wait_ready
from scenarios.sampling import Sample, Sampler, complete, metric_sum
from scenarios.stats import class_stats

SATURATION_CLIENTS = 32  # closed-loop clients of the saturation arm: twice the engine's 16 slots


@dataclass(frozen=True)
class BatchOptions:
    lines: int = 2000
    prompt_tokens: tuple[int, int] = (20, 50)
    max_tokens: tuple[int, int] = (4, 12)
    duration: float = 90.0  # the interactive arrival window of both dispatcher arms (s)
    rate: float = 1.8  # interactive requests/s: ~60 % of the replica's capacity
    poll_interval_s: float = 0.05  # the sender's LLMD_BATCH_POLL_INTERVAL_S
    max_waiting: int = 2  # the sender's LLMD_BATCH_MAX_WAITING
    preempt_after_s: float = 0.05  # the sender's LLMD_PREEMPT_AFTER_S
    saturation_s: float = 20.0
    timeout_s: float = 480.0  # give up waiting for the batch after this long
    interactive_threshold: int = 5
    batch_priority: int = 1
    real_url: str = ""  # a real vLLM (e.g. scripts/real-vllm.sh) instead of a fresh simulator per arm
    real_model: str = "smollm2"  # the real server's served model name
    saturation_clients: int = SATURATION_CLIENTS
    sim: tuple[str, ...] = tuple(SIM)  # the simulated replica's arguments

    @property
    def model(self) -> str:
        return self.real_model if self.real_url else MODEL

    def upstream(self, stack: ProcessStack, seed: int) -> str:
        """The arm's engine: the real server, or a fresh simulator."""
        return self.real_url.rstrip("/") if self.real_url else stack.start_sim([*self.sim, "--seed", str(seed)])


def interactive_class(o: BatchOptions) -> TrafficClass:
    # Prompts 50-300, outputs 16-64: 4.4 prompt tokens per output token, as the batch lines below.
    # On a real vLLM on CPU (a few tokens/s) prompts 20-60 and outputs 8-16, as scenario 5's.
    prompts, outputs = ((20, 60), (8, 16)) if o.real_url else ((50, 300), (16, 64))
    return TrafficClass("interactive", o.rate, prompts, outputs, llmd_priority=8, threshold=o.interactive_threshold)


def batch_lines(o: BatchOptions, seed: int) -> list[dict]:
    """The JSONL lines: short non-streaming chat completions (prompt 20-50, output 4-12 tokens)."""
    rng = random.Random(seed * 7919 + 6)
    out = []
    for i in range(o.lines):
        p, n = rng.randint(*o.prompt_tokens), rng.randint(*o.max_tokens)
        body = {
            "model": o.model,
            "messages": [{"role": "user", "content": "abc " * max(1, p - 5)}],
            "max_tokens": n,
            "ignore_eos": True,
        }
        out.append({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    return out


def computed_capacity(sim: list[str], prompt_per_output: float) -> float:
    """Output tokens/s of a full engine from the simulator's settings: each step yields one token per
    running sequence and lasts itl_base + itl_per_seq·seqs + prefill_per_token·(prompt tokens admitted);
    at steady state a full batch admits seqs·prompt_per_output prompt tokens per step."""
    arg = {sim[i].removeprefix("--"): float(sim[i + 1]) for i in range(0, len(sim), 2)}
    seqs = arg["max-num-seqs"]
    step = arg["itl-base"] + arg["itl-per-seq"] * seqs + arg["prefill-per-token"] * seqs * prompt_per_output
    return seqs / step


@dataclass
class BatchPoll:
    t: float  # s since the arm's start
    status: str
    completed: int
    failed: int


@dataclass
class BatchArmResult:
    arm: str
    records: list[Record]
    samples: list[Sample]
    duration: float
    polls: list[BatchPoll] = field(default_factory=list)
    batch_total: int = 0
    batch_status: str = ""
    batch_done_s: float = float("nan")  # first poll that saw the batch final, s since the arm's start
    output_lines: int = 0
    output_unique: int = 0
    output_ok: int = 0
    error_lines: int = 0
    preempted: int = 0  # batch line runs ended for an interactive request (each ran again)
    long_waits: tuple[int, int] = (0, 0)  # interactive waits >= LONG_WAIT_S: all, and those beside a batch line
    loadavg: tuple[float, float] = (0.0, 0.0)
    cpu: dict[str, float] = field(default_factory=dict)  # cores used on average per process, over the arm


def starved(samples: list[Sample], start: float, end: float, slots: int = 16) -> float:
    """Fraction of samples with a free engine slot and no ticket waiting at the sender: nothing was fed."""
    inside = [s for s in complete(samples) if start <= s.t <= end]
    return sum(s.running_total() < slots and s.tickets == 0 for s in inside) / len(inside) if inside else float("nan")


def window_tps(samples: list[Sample], start: float, end: float) -> float:
    inside = [s for s in complete(samples) if start <= s.t <= end]
    if len(inside) < 2:
        return float("nan")
    return (inside[-1].gen_total() - inside[0].gen_total()) / (inside[-1].t - inside[0].t)


def window_running(samples: list[Sample], start: float, end: float) -> float:
    inside = [s.running_total() for s in complete(samples) if start <= s.t <= end]
    return sum(inside) / len(inside) if inside else float("nan")


def _batch_token(stack: ProcessStack, name: str, o: BatchOptions) -> str:
    argv = ["tokens", "create", name, "--priority", "5", "--threshold", "50"]
    out = subprocess.run(
        [*EXE, *argv, "--batch-priority", str(o.batch_priority), "--quiet"],
        env=stack.env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def run_saturation(o: BatchOptions, seed: int, workdir: str) -> BatchArmResult:
    """Straight to a fresh simulator: SATURATION_CLIENTS clients loop over the batch lines."""
    stack = ProcessStack(workdir, model=o.model)
    try:
        url = o.upstream(stack, seed)
        bodies = [orjson.dumps(line["body"]) for line in batch_lines(o, seed)]
        load_before = os.getloadavg()[0]

        async def drive() -> list[Sample]:
            sampler = Sampler([url], [], None, 0.25)
            task = asyncio.create_task(sampler.run())
            deadline = time.perf_counter() + o.saturation_s
            nxt = iter(range(10**9))

            async def client(s: aiohttp.ClientSession) -> None:
                while time.perf_counter() < deadline:
                    body = bodies[next(nxt) % len(bodies)]
                    async with s.post(url + "/v1/chat/completions", data=body) as r:
                        await r.read()

            hdr = {"content-type": "application/json"}
            async with aiohttp.ClientSession(headers=hdr, connector=aiohttp.TCPConnector(limit=0)) as s:
                await asyncio.gather(*(client(s) for _ in range(o.saturation_clients)))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return sampler.samples

        samples = asyncio.run(drive())
        return BatchArmResult(
            "saturation (straight to the engine)", [], samples, o.saturation_s, loadavg=(load_before, 0.0)
        )
    finally:
        stack.stop()


def run_dispatcher_arm(
    name: str, o: BatchOptions, with_batch: bool, seed: int, workdir: str, consumer_env: dict[str, str]
) -> BatchArmResult:
    stack = ProcessStack(workdir, model=o.model)
    try:
        url = o.upstream(stack, seed)
        consumer = stack.start_consumer(url, **consumer_env).url  # type: ignore[attr-defined]
        started = time.monotonic()
        stack.start_sender(
            **SENDER,
            LLMD_BATCH_POLL_INTERVAL_S=str(o.poll_interval_s),
            LLMD_BATCH_MAX_WAITING=str(o.max_waiting),
            LLMD_PREEMPT_AFTER_S=str(o.preempt_after_s),
        )
        cls = interactive_class(o)
        cls.token = stack.token(f"interactive-{seed}", cls.llmd_priority, cls.threshold)
        batch_token = _batch_token(stack, f"batch-{seed}", o)
        stack.wait_live(cls.token)
        _wait_ready([consumer])
        # The runner feeds no line in its first heartbeat TTL (5 s); start once it would.
        time.sleep(max(0.0, 6.0 - (time.monotonic() - started)))
        target = Target([stack.url], o.model, "dispatcher", {cls.name: cls})
        arrivals = schedule([cls], o.duration, seed)
        res = BatchArmResult(name, [], [], o.duration, loadavg=(os.getloadavg()[0], 0.0))
        procs = {"consumer": stack.consumers[0].pid, "sender": stack.sender.pid}
        if not o.real_url:
            procs = {"simulator": stack.procs[0].pid, **procs}
        cpu0, t0 = {k: cpu_seconds(pid) for k, pid in procs.items()}, time.monotonic()

        async def drive() -> None:
            client = openai.AsyncOpenAI(base_url=stack.url + "/v1", api_key=batch_token, max_retries=0, timeout=60)
            file_id = ""
            if with_batch:
                data = b"".join(orjson.dumps(x) + b"\n" for x in batch_lines(o, seed))
                file_id = (await client.files.create(file=("batch.jsonl", data), purpose="batch")).id
            sampler = Sampler([url], [consumer], stack.metrics_url, 0.25)
            sampling = asyncio.create_task(sampler.run())
            load = asyncio.create_task(run_load(target, arrivals, o.duration, drain_s=20))
            try:
                if with_batch:
                    b = await client.batches.create(
                        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
                    )
                    res.batch_total = b.request_counts.total if b.request_counts else 0
                    while True:
                        b = await client.batches.retrieve(b.id)
                        t = time.perf_counter() - sampler.t0
                        rc = b.request_counts
                        res.polls.append(BatchPoll(t, b.status, rc.completed if rc else 0, rc.failed if rc else 0))
                        if b.status in ("completed", "failed", "expired", "cancelled"):
                            res.batch_done_s = t
                            break
                        if t > o.timeout_s:
                            break
                        await asyncio.sleep(0.25)
                    res.batch_status = b.status
                    await _read_output(client, b, res)
                    res.preempted = await _preempted_lines(stack.metrics_url)
                    ask_at = o.preempt_after_s + ASKED_S
                    res.long_waits = long_waits(stack.env["LLMD_DATABASE_URL"], cls.llmd_priority, ask_at)
                res.records = await load
                await asyncio.sleep(1.0)  # one more second of samples after the last event
            finally:
                load.cancel()
                sampling.cancel()
                await asyncio.gather(load, sampling, return_exceptions=True)
                await client.close()
            res.samples = sampler.samples

        asyncio.run(drive())
        res.cpu = {k: (cpu_seconds(pid) - cpu0[k]) / (time.monotonic() - t0) for k, pid in procs.items()}
        res.loadavg = (res.loadavg[0], os.getloadavg()[0])
        return res
    finally:
        stack.stop()


async def _read_output(client: openai.AsyncOpenAI, b, res: BatchArmResult) -> None:
    if b.output_file_id:
        out = [orjson.loads(x) for x in (await client.files.content(b.output_file_id)).content.splitlines() if x]
        res.output_lines = len(out)
        res.output_unique = len({x["custom_id"] for x in out})
        res.output_ok = sum((x.get("response") or {}).get("status_code") == 200 for x in out)
    if b.error_file_id:
        res.error_lines = len((await client.files.content(b.error_file_id)).content.splitlines())


LONG_WAIT_S = 0.3  # an interactive queue wait this long is looked at: was a batch line holding a slot?
ASKED_S = 0.01  # ... at the moment its sender asked for room (LLMD_PREEMPT_AFTER_S), and this much later


def long_waits(database_url: str, interactive_priority: int, ask_at_s: float) -> tuple[int, int]:
    """From the sender's usage rows: interactive requests that waited >= LONG_WAIT_S for a grant, and how
    many of them had a batch line holding a slot `ask_at_s` into the wait (one a preemption could free).
    A row's request ran from created_at - total_s; it held its slot from the end of its queue wait."""
    path = database_url.split("///", 1)[1]
    with contextlib.closing(sqlite3.connect(path)) as db:
        rows = db.execute("SELECT created_at, priority, queue_wait_s, total_s, replica FROM usage").fetchall()
    held, waits = [], []
    for created, priority, queue_wait, total, replica in rows:
        end = datetime.fromisoformat(created).timestamp()
        start = end - (total or 0.0)
        if replica and priority < interactive_priority:
            held.append((start + (queue_wait or 0.0), end))
        if priority == interactive_priority and (queue_wait or 0.0) >= LONG_WAIT_S:
            waits.append(start + ask_at_s)
    beside = sum(any(g <= t < e for g, e in held) for t in waits)
    return len(waits), beside


async def _preempted_lines(sender_metrics: str) -> int:
    async with aiohttp.ClientSession() as s, s.get(sender_metrics + "/metrics") as r:
        return int(metric_sum(await r.text(), "llmd_batch_lines_total", outcome="preempted"))


# -- the scenario: arms, targets, report ---------------------------------------------------------
@dataclass
class BatchScenario:
    saturation: BatchArmResult
    alone: BatchArmResult
    with_batch: BatchArmResult
    capacity_measured: float
    capacity_computed: float
    targets: dict[str, float]
    report: str


def run_scenario(o: BatchOptions, seed: int, workdir: str, consumer_env: dict[str, str]) -> BatchScenario:
    sat = run_saturation(o, seed, workdir)
    alone = run_dispatcher_arm("interactive alone", o, False, seed, workdir, consumer_env)
    both = run_dispatcher_arm("interactive + batch", o, True, seed, workdir, consumer_env)
    measured = window_tps(sat.samples, WARMUP_S, o.saturation_s)
    ratio = (sum(o.prompt_tokens) / 2) / (sum(o.max_tokens) / 2)
    computed = float("nan") if o.real_url else computed_capacity(list(o.sim), ratio)
    a, b = class_stats(alone.records, "interactive"), class_stats(both.records, "interactive")
    done = both.batch_done_s
    busy = window_tps(both.samples, WARMUP_S, done)
    targets = {
        "interactive_p95_ttft_ratio": b.ttft_p95 / a.ttft_p95,
        "interactive_429_alone": a.refused_429,
        "interactive_429_with_batch": b.refused_429,
        "engine_busy_vs_capacity": busy / measured,
        "batch_completed_lines": float(both.output_ok),
        "batch_done_s": done,
    }
    report = _report(o, sat, alone, both, measured, computed)
    return BatchScenario(sat, alone, both, measured, computed, targets, report)


def _s(x: float) -> str:
    return "-" if x != x else f"{x:.2f} s"


def _report(
    o: BatchOptions,
    sat: BatchArmResult,
    alone: BatchArmResult,
    both: BatchArmResult,
    measured: float,
    computed: float,
) -> str:
    d, done = o.duration, both.batch_done_s
    lines = [
        f"### Scenario 6 (interactive at ~60 % + a {o.lines:,}-line batch) — interactive window {d:g} s\n",
        f"Capacity: **{measured:.0f} output tokens/s measured** (saturation arm, {o.saturation_clients} closed-loop "
        f"clients straight to {'the real vLLM' if o.real_url else 'the simulator'}, {WARMUP_S:g}-{o.saturation_s:g} s, "
        f"{window_running(sat.samples, WARMUP_S, o.saturation_s):.1f} sequences running on average)"
        + ("" if o.real_url else f"; {computed:.0f} computed from the simulator's settings")
        + ".\n",
        "| arm | interactive requests | ok | 429 | 503 | cut | TTFT p50 | TTFT p95 | e2e p50 | e2e p95 | "
        f"stream tok/s p10 | engine tok/s {WARMUP_S:g}-{d:g} s | sequences running {WARMUP_S:g}-{d:g} s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for res in (alone, both):
        s = class_stats(res.records, "interactive")
        lines.append(
            f"| {res.arm} | {s.n} | {s.ok} | {s.refused_429} | {s.timed_out_503} | {s.cut} | {_s(s.ttft_p50)} | "
            f"{_s(s.ttft_p95)} | {_s(s.e2e_p50)} | {_s(s.e2e_p95)} | {s.tps_p10:.1f} | "
            f"{window_tps(res.samples, WARMUP_S, d):.0f} | {window_running(res.samples, WARMUP_S, d):.1f} |"
        )
    last = both.polls[-1] if both.polls else BatchPoll(0, "-", 0, 0)
    busy = window_tps(both.samples, WARMUP_S, done)
    overlap = window_tps(both.samples, WARMUP_S, d)
    after = window_tps(both.samples, d, done)
    lines += [
        "",
        "| batch | status | completed | failed | output lines (distinct custom_id, status 200) | error lines | "
        f"done after | lines/s | engine tok/s {WARMUP_S:g} s → done (of capacity) | with interactive "
        f"{WARMUP_S:g}-{d:g} s | batch only {d:g} s → done | sequences running {d:g} s → done | "
        "free slot, no ticket waiting |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {both.batch_total} | {both.batch_status} | {last.completed} | {last.failed} | {both.output_lines} "
        f"({both.output_unique}, {both.output_ok}) | {both.error_lines} | {_s(done)} | "
        f"{last.completed / done:.1f} | {busy:.0f} ({busy / measured:.1%}) | {overlap:.0f} ({overlap / measured:.1%}) "
        f"| {after:.0f} ({after / measured:.1%}) | {window_running(both.samples, d, done):.1f} | "
        f"{starved(both.samples, WARMUP_S, done):.1%} |",
        "",
    ]
    a, b = class_stats(alone.records, "interactive"), class_stats(both.records, "interactive")
    ok = {True: "met", False: "not met"}
    complete_ok = both.batch_status == "completed" and both.output_ok == both.output_unique == o.lines
    lines += [
        f"- interactive p95 TTFT with the batch {b.ttft_p95:.3f} s vs alone {a.ttft_p95:.3f} s = "
        f"{b.ttft_p95 / a.ttft_p95:.2f}x (target <= 1.15x): {ok[b.ttft_p95 <= 1.15 * a.ttft_p95]}",
        f"- interactive 429s: {b.refused_429} with the batch, {a.refused_429} alone (target: none caused by the "
        f"batch): {ok[b.refused_429 <= a.refused_429]}",
        f"- engine busy while the batch ran: {busy:.0f} of {measured:.0f} tokens/s = {busy / measured:.1%} "
        f"(target >= 95 %): {ok[busy >= 0.95 * measured]}",
        f"- the batch completes: {both.batch_status}, {both.output_ok} of {o.lines} lines answered 200, "
        f"each once: {ok[complete_ok]}",
        f"- batch lines ended for an interactive request and run again: {both.preempted} "
        f"({both.preempted / max(1, o.lines):.1%} of the lines; the work lost is at most "
        f"{both.preempted * o.max_tokens[1]:,} output tokens, "
        f"{both.preempted * o.max_tokens[1] / max(1.0, busy * (done - WARMUP_S)):.1%} of the engine's); "
        f"interactive requests that waited >= {LONG_WAIT_S:g} s for a replica: {both.long_waits[0]}, of them "
        f"{both.long_waits[1]} while a batch line held a slot {(o.preempt_after_s + ASKED_S) * 1000:.0f} ms into "
        "the wait",
        f"- load average {alone.loadavg[0]:.1f}→{alone.loadavg[1]:.1f} (alone), "
        f"{both.loadavg[0]:.1f}→{both.loadavg[1]:.1f} (with the batch); cores used (simulator / consumer / "
        f"sender): {' / '.join(f'{v:.2f}' for v in alone.cpu.values())} alone, "
        f"{' / '.join(f'{v:.2f}' for v in both.cpu.values())} with the batch",
    ]
    return "\n".join(lines) + "\n"
