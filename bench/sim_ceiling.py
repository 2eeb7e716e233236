"""The simulator's own ceiling: how fast it answers, how many streams it holds.

Runs the simulator (`llm-dispatcher sim`) in its own process and an aiohttp load generator in another:

1. requests/s for short non-streaming chat completions (zero-delay mode, max_tokens=16), closed loop
   at concurrency 16 and 64;
2. N concurrent slow streams (itl 0.1 s, 40 tokens each, max_num_seqs=N): do they all finish, and how
   far does the inter-chunk gap stray from the configured 0.1 s?

Each measurement runs 3 times; the median is reported. Usage:

    .venv/bin/python bench/sim_ceiling.py [--runs 3] [--duration 8] [--streams 500 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from devstack.processes import SimProcess

ROOT = Path(__file__).resolve().parent.parent
CHAT = {"messages": [{"role": "user", "content": "Say something short."}], "max_tokens": 16}


def quiet_sim(*flags: str) -> SimProcess:
    """`llm-dispatcher sim` in a subprocess, quiet; `with` waits until it is healthy and stops it after."""
    return SimProcess(flags, cwd=ROOT, quiet=True)


# -- load generator (runs in its own process: `sim_ceiling.py _loadgen ...`) ----------------------
async def _closed_loop(url: str, concurrency: int, duration: float) -> dict:
    import aiohttp

    payload = json.dumps(CHAT).encode()
    headers = {"content-type": "application/json"}
    done = errors = 0
    stop_at = 0.0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while time.monotonic() < stop_at:
            async with session.post(url + "/v1/chat/completions", data=payload, headers=headers) as r:
                await r.read()
                if r.status == 200:
                    done += 1
                else:
                    errors += 1

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # warm-up: open the connections
        stop_at = time.monotonic() + 0.5
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        done = errors = 0
        t0 = time.monotonic()
        stop_at = t0 + duration
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.monotonic() - t0
    return {"rps": done / elapsed, "ok": done, "errors": errors}


async def _streams(url: str, n: int, max_tokens: int) -> dict:
    from loadgen import stream_clients

    body = json.dumps({**CHAT, "max_tokens": max_tokens, "stream": True}).encode()
    run = await stream_clients(
        url + "/v1/chat/completions", body, n, {"content-type": "application/json"}, skip_role_chunk=True
    )
    gaps = sorted(run.gaps)
    q = statistics.quantiles(gaps, n=100) if len(gaps) > 1 else [0.0] * 99
    return {
        "complete": run.complete,
        "failed": run.failed,
        "gap_p50": q[49],
        "gap_p99": q[98],
        "ttft_p50": statistics.median(run.ttfts) if run.ttfts else None,
        "wall": run.wall,
    }


def loadgen(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["rps", "streams"])
    p.add_argument("url")
    p.add_argument("n", type=int)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--max-tokens", type=int, default=40)
    a = p.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass
    if a.mode == "rps":
        result = asyncio.run(_closed_loop(a.url, a.n, a.duration))
    else:
        result = asyncio.run(_streams(a.url, a.n, a.max_tokens))
    print(json.dumps(result))


def run_wrk(url: str, concurrency: int, duration: float) -> dict:
    """wrk (C, one thread) as the load generator: it costs far less CPU than any Python client."""
    import re
    import tempfile

    script = (
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [[{json.dumps(CHAT)}]]\n'
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", "-d1s", "-s", f.name, url + "/v1/chat/completions"],
            check=True,
            capture_output=True,
        )  # warm-up
        out = subprocess.run(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{duration:g}s", "-s", f.name, url + "/v1/chat/completions"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "errors": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(0) if errors else ""}


def run_loadgen(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "_loadgen", *args], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def engine_itl(url: str) -> float:
    """Mean inter-token latency as the simulator itself measured it (its /metrics)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    values = {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "vllm:inter_token_latency_seconds"
        for s in f.samples
    }
    count = values.get("vllm:inter_token_latency_seconds_count", 0.0)
    return values.get("vllm:inter_token_latency_seconds_sum", 0.0) / count if count else 0.0


# -- driver ------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, nargs="*", default=[16, 64])
    p.add_argument("--streams", type=int, nargs="*", default=[500, 1000])
    p.add_argument("--stream-tokens", type=int, default=40)
    p.add_argument(
        "--loadgen",
        choices=["wrk", "aiohttp"],
        default="wrk" if shutil.which("wrk") else "aiohttp",
        help="load generator for the requests/s runs (default: wrk when installed)",
    )
    a = p.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")

    for c in a.concurrency:
        runs = []
        for _ in range(a.runs):
            with quiet_sim("--max-num-seqs", "1024") as sim:
                cpu0 = sim.cpu_seconds()
                t0 = time.monotonic()
                if a.loadgen == "wrk":
                    r = run_wrk(sim.url, c, a.duration)
                else:
                    r = run_loadgen("rps", sim.url, str(c), "--duration", str(a.duration))
                r["sim_cpu"] = (sim.cpu_seconds() - cpu0) / (time.monotonic() - t0)
                runs.append(r)
        rps = [r["rps"] for r in runs]
        print(
            f"non-streaming ({a.loadgen}), concurrency {c}: median {statistics.median(rps):.0f} req/s "
            f"(runs {', '.join(f'{x:.0f}' for x in rps)}; errors {sum(r['errors'] for r in runs)}; "
            f"sim CPU {statistics.median(r['sim_cpu'] for r in runs):.2f} cores)   [{sim.command}]"
        )

    for n in a.streams:
        runs = []
        for _ in range(a.runs):
            with quiet_sim("--max-num-seqs", str(n), "--itl-base", "0.1") as sim:
                cpu0 = sim.cpu_seconds()
                r = run_loadgen("streams", sim.url, str(n), "--max-tokens", str(a.stream_tokens))
                r["sim_cpu"] = (sim.cpu_seconds() - cpu0) / r["wall"]
                r["engine_itl"] = engine_itl(sim.url)
                runs.append(r)
        med = {
            k: statistics.median(r[k] for r in runs)
            for k in ("complete", "gap_p50", "gap_p99", "ttft_p50", "wall", "sim_cpu", "engine_itl")
        }
        print(
            f"{n} streams x {a.stream_tokens} tokens at itl 0.1 s: completed {med['complete']:.0f}/{n} "
            f"(failed {sum(r['failed'] for r in runs)} over {a.runs} runs), "
            f"inter-chunk gap p50 {med['gap_p50'] * 1000:.0f} ms "
            f"p99 {med['gap_p99'] * 1000:.0f} ms, TTFT p50 {med['ttft_p50'] * 1000:.0f} ms, wall {med['wall']:.1f} s, "
            f"sim CPU {med['sim_cpu']:.2f} cores, engine-side ITL mean {med['engine_itl'] * 1000:.0f} ms"
            f"   [{sim.command}]"
        )
    print(f"load average {os.getloadavg()[0]:.2f} at end")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_loadgen":
        loadgen(sys.argv[2:])
    else:
        main()
