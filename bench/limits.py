"""Per-key limits across sender processes, and what they cost on the hot path.

1. **Overshoot**: 4 sender processes sharing one Redis (`LLMD_LIMITS_REDIS_URL`), one broker, one
   simulated replica with room for everything; one token with rpm, tpm and max parallel; an open-loop
   load at ~2x its rpm spread round-robin over the 4 senders for `--duration` s. From every request's
   client-side start and end: the most requests admitted in any 60 s window (vs rpm), the most
   admitted requests at once (vs max parallel), the most tokens used in any 60 s window (vs tpm).
2. **Hot-path cost**: two senders (in-process store; Redis store), a zero-delay simulator, a closed
   loop at concurrency 1 of short non-streaming requests taking four arms in turn, request by request:
   on each sender an unlimited token and a limited one (limits far above the load); each limited arm's
   median p50 of the rounds against the unlimited arm on its own sender.
3. **Call cost**: one admit + release of a limited key in this process, per store (a full window).

    .venv/bin/python bench/limits.py [--duration 75] [--rounds 5] [--round-s 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import aiohttp
import orjson

from devstack.processes import EXE, ProcessStack

REDIS_URL = os.environ.get("LLMD_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
MODEL = "bench-model"


@dataclass
class Call:
    start: float
    end: float
    status: int
    tokens: int


def limit_token(stack: ProcessStack, name: str, *limits: str) -> str:
    token = stack.token(name, 5, 100000)
    if limits:
        subprocess.run([*EXE, "tokens", "update", name, *limits], env=stack.env, check=True, capture_output=True)
    return token


async def open_loop(urls: list[str], token: str, rate: float, duration: float, max_tokens: int) -> list[Call]:
    body = orjson.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens, "ignore_eos": True}
    )
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
    calls: list[Call] = []
    t0 = time.perf_counter()

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        start = time.perf_counter() - t0
        async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
            data = await r.read()
        tokens = 0
        if r.status == 200:
            usage = orjson.loads(data).get("usage") or {}
            tokens = int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        calls.append(Call(start, time.perf_counter() - t0, r.status, tokens))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks, i = [], 0
        while (now := time.perf_counter() - t0) < duration:
            tasks.append(asyncio.create_task(one(session, urls[i % len(urls)])))
            i += 1
            await asyncio.sleep(max(0.0, i / rate - now))
        await asyncio.gather(*tasks)
    return calls


def most_in_window(times: list[tuple[float, int]], window: float = 60.0) -> int:
    """The largest sum of weights of the events within any `window` seconds."""
    times = sorted(times)
    best = acc = lo = 0
    for t, w in times:
        acc += w
        while times[lo][0] <= t - window:
            acc -= times[lo][1]
            lo += 1
        best = max(best, acc)
    return best


def most_at_once(calls: list[Call]) -> int:
    events = sorted([(c.start, 1) for c in calls] + [(c.end, -1) for c in calls], key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def overshoot(args: argparse.Namespace, workdir: str) -> None:
    rpm, tpm, parallel = args.rpm, args.tpm, args.max_parallel
    stack = ProcessStack(workdir)
    try:
        sim = stack.start_sim(["--max-num-seqs", "512", "--itl-base", "0.02"])
        stack.start_consumer(sim, LLMD_MAX_CONCURRENCY="512")
        urls = []
        for _ in range(args.senders):
            stack.start_sender(LLMD_LIMITS_REDIS_URL=REDIS_URL, LLMD_TOKEN_CACHE_TTL_S="60")
            urls.append(stack.url)
        token = limit_token(stack, "limited", "--rpm", str(rpm), "--tpm", str(tpm), "--max-parallel", str(parallel))
        stack.wait_live(token)
        rate = 2 * rpm / 60
        calls = asyncio.run(open_loop(urls, token, rate, args.duration, args.max_tokens))
    finally:
        stack.stop()
    ok = [c for c in calls if c.status == 200]
    refused = sum(c.status == 429 for c in calls)
    other = len(calls) - len(ok) - refused
    per_request = statistics.mean(c.tokens for c in ok) if ok else float("nan")
    worst_rpm = most_in_window([(c.start, 1) for c in ok])
    worst_tpm = most_in_window([(c.start, c.tokens) for c in ok])
    print(
        f"\n### Limits across {args.senders} sender processes (one Redis), {args.duration:g} s at {rate:.1f} req/s "
        f"(2x the rpm), requests of {args.max_tokens} output tokens\n"
    )
    print("| limit | set | most used (any 60 s window, or at once) | overshoot |")
    print("|---|---:|---:|---:|")
    print(f"| rpm | {rpm} | {worst_rpm} | {max(0, worst_rpm - rpm)} |")
    print(f"| max parallel | {parallel} | {most_at_once(ok)} | {max(0, most_at_once(ok) - parallel)} |")
    print(
        f"| tpm | {tpm} | {worst_tpm} | {max(0, worst_tpm - tpm)} tokens "
        f"({max(0, worst_tpm - tpm) / per_request:.1f} requests of {per_request:.0f} tokens) |"
    )
    print(f"\n{len(calls)} requests: {len(ok)} served, {refused} refused with 429, {other} other")


async def interleaved_loop(arms: dict[str, tuple[str, str]], seconds: float) -> dict[str, list[float]]:
    """Back-to-back requests for `seconds`, one at a time, taking the arms in turn (so every arm sees
    the same machine at the same moments), in a new random order each turn (so no arm always follows
    the same one, whose aftermath it would pay for): each arm's latencies (ms)."""
    body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
    lat: dict[str, list[float]] = {name: [] for name in arms}
    order = list(arms)
    rng = random.Random(1)
    async with aiohttp.ClientSession() as session:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            rng.shuffle(order)
            for name in order:
                url, token = arms[name]
                headers = {"authorization": f"Bearer {token}", "content-type": "application/json"}
                t = time.perf_counter()
                async with session.post(url + "/v1/chat/completions", data=body, headers=headers) as r:
                    await r.read()
                    assert r.status == 200, r.status
                lat[name].append((time.perf_counter() - t) * 1000)
    return lat


def hot_path(args: argparse.Namespace, workdir: str) -> None:
    """Each store's arm against an unlimited token on the same sender process, the four arms taken in
    turn request by request: added p50 = the limited arm's p50 less its own sender's unlimited p50."""
    stack = ProcessStack(workdir)
    try:
        sim = stack.start_sim(["--max-num-seqs", "64"])
        stack.start_consumer(sim, LLMD_MAX_CONCURRENCY="64")
        stack.start_sender()
        memory_url = stack.url
        stack.start_sender(LLMD_LIMITS_REDIS_URL=REDIS_URL)
        redis_url = stack.url
        high = ("--rpm", "1000000", "--tpm", "1000000000", "--max-parallel", "1000")
        free = limit_token(stack, "free")
        arms = {
            "in-process store: no limit": (memory_url, free),
            "in-process store: limited": (memory_url, limit_token(stack, "mem", *high)),
            "Redis store: no limit": (redis_url, free),
            "Redis store: limited": (redis_url, limit_token(stack, "redis", *high)),
        }
        stack.wait_live(free)
        asyncio.run(interleaved_loop(arms, 2.0))  # warm-up
        p50: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.rounds):
            for name, values in asyncio.run(interleaved_loop(arms, args.round_s)).items():
                p50[name].append(statistics.median(values))
    finally:
        stack.stop()
    title = f"Hot-path cost of the limits: closed loop at concurrency 1, arms in turn, medians of {args.rounds} rounds"
    print(f"\n### {title}\n")
    print("| arm | p50 | added p50 (against no limit on the same sender) |")
    print("|---|---:|---:|")
    for store in ("in-process store", "Redis store"):
        base = statistics.median(p50[f"{store}: no limit"])
        limited = statistics.median(p50[f"{store}: limited"])
        print(f"| {store}: no limit | {base:.3f} ms | — |")
        print(f"| {store}: limited | {limited:.3f} ms | {limited - base:+.3f} ms |")


async def store_cost(store, n: int) -> tuple[float, float]:
    """Median µs of one admit (before the ticket: on the hot path) and one release (after the response)
    of a limited key (limits far above the calls)."""
    from sender.limits import Hold, KeyLimits

    lim = KeyLimits(max_parallel=1000, rpm=10**7, tpm=10**9)
    admits, releases = [], []
    for _ in range(n):
        t = time.perf_counter()
        hold = await store.admit("bench", lim, 50)
        t1 = time.perf_counter()
        assert isinstance(hold, Hold)
        await store.release(hold, 44)
        admits.append((t1 - t) * 1e6)
        releases.append((time.perf_counter() - t1) * 1e6)
    await store.close()
    return statistics.median(admits), statistics.median(releases)


def call_cost(args: argparse.Namespace) -> None:
    from sender.limits import MemoryLimits, RedisLimits

    memory = asyncio.run(store_cost(MemoryLimits(), args.calls))
    redis = asyncio.run(store_cost(RedisLimits(REDIS_URL, f"bench.{os.getpid()}"), args.calls))
    print(f"\n### One admit + release, in the sender's process, median of {args.calls} (the key's window full)\n")
    print("| store | admit (before the ticket) | release (after the response) |")
    print("|---|---:|---:|")
    print(f"| in-process | {memory[0]:.1f} µs | {memory[1]:.1f} µs |")
    print(f"| Redis on loopback | {redis[0]:.1f} µs | {redis[1]:.1f} µs |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=75.0, help="overshoot: seconds of load")
    ap.add_argument("--senders", type=int, default=4)
    ap.add_argument("--rpm", type=int, default=300)
    ap.add_argument("--tpm", type=int, default=12000)
    ap.add_argument("--max-parallel", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=40, help="output tokens per request (20 ms each)")
    ap.add_argument("--rounds", type=int, default=5, help="hot path: alternating rounds")
    ap.add_argument("--round-s", type=float, default=5.0, help="hot path: seconds per round and arm")
    ap.add_argument("--calls", type=int, default=20000, help="call cost: admit + release pairs per store")
    ap.add_argument("--only", choices=["overshoot", "hot-path", "call-cost"])
    args = ap.parse_args()
    workdir = tempfile.mkdtemp(prefix="llmd-limits-")
    if args.only in (None, "overshoot"):
        overshoot(args, workdir)
    if args.only in (None, "hot-path"):
        hot_path(args, workdir)
    if args.only in (None, "call-cost"):
        call_cost(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
