"""Latency the dispatcher adds over calling the same upstream directly.

Non-streaming, short responses, a zero-delay simulator; closed-loop load from `wrk` (C, one
thread, so the load generator costs little CPU) at concurrency 1, 16 and 64. Each concurrency runs
direct and through-the-dispatcher alternately, `--rounds` times, and medians are reported.

    .venv/bin/python bench/overhead.py [--duration 8] [--rounds 3]
    .venv/bin/python bench/overhead.py --broker-nodes 3    # on a 3-node RabbitMQ cluster of its own

`--broker-nodes N`: RabbitMQ nodes of the run's own (1: one private node; 3: three, clustered, the
senders and consumer connected to all); default 0, the machine's broker on port 5672.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from devstack.broker import PrivateCluster
from devstack.processes import running, tree_cpu

BODY = {"model": "bench-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url: str, token: str | None, concurrency: int, duration: float, workdir: str) -> dict:
    script = Path(workdir) / "post.lua"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(json.dumps(BODY))}\n"
        + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in headers.items())
    )
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "--latency", "-s", str(script), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lat = {m[0]: float(m[1]) * _UNITS[m[2]] for m in re.findall(r"^\s+(50|99)\.000%\s+([\d.]+)(us|ms|s)", out, re.M)}
    if not lat:  # older wrk prints "50%" lines
        lat = {m[0]: float(m[1]) * _UNITS[m[2]] for m in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {
        "p50_ms": lat["50"],
        "p99_ms": lat["99"],
        "rps": rps,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def broker_pid(port: int = 5672) -> int | None:
    """The pid of the RabbitMQ listening on `port` (tests may run private nodes beside it); else any."""
    listening = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True).stdout
    if m := re.search(r"pid=(\d+)", listening):
        return int(m.group(1))
    out = subprocess.run(["pgrep", "-f", "beam.smp"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


def sender_means(url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of the sender's own latency histograms, to split the added time."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics") as r:
        text = r.read().decode()
    out: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for name in ("llmd_queue_wait_seconds", "llmd_time_to_first_byte_seconds", "llmd_request_duration_seconds"):
                if sample.name in (name + "_sum", name + "_count"):
                    acc = out.setdefault(name, [0.0, 0.0])
                    acc[0 if sample.name.endswith("_sum") else 1] += sample.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def delta_ms(before: dict, after: dict, name: str) -> float:
    (s0, c0), (s1, c1) = before.get(name, (0.0, 0.0)), after.get(name, (0.0, 0.0))
    return (s1 - s0) / (c1 - c0) * 1000 if c1 > c0 else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--duration", type=float, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--json", help="write raw results here")
    ap.add_argument("--broker-nodes", type=int, default=0, help="private RabbitMQ nodes (0: the machine's)")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: apt-get install -y wrk", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as brokers:
        beams = {}
        if args.broker_nodes:
            cluster = brokers.enter_context(PrivateCluster(args.broker_nodes))
            os.environ["LLMD_AMQP_URL"] = cluster.url
            beams = {f"rabbitmq{i}": n.pid for i, n in enumerate(cluster.nodes)}
        elif (beam := broker_pid()) is not None:
            beams = {"rabbitmq": beam}
        results = measure(args, beams)
    report(args, results)
    return 0


def measure(args: argparse.Namespace, beams: dict[str, int]) -> dict[int, dict[str, list[dict]]]:
    levels = [int(c) for c in args.concurrency.split(",")]
    workdir = tempfile.mkdtemp(prefix="llmd-bench-")
    with running(workdir, [["--max-num-seqs", "1024"]], consumer_env={"LLMD_MAX_CONCURRENCY": "1024"}) as stack:
        token = stack.token("bench")
        stack.wait_live(token)
        direct_url = stack.sim_urls[0] + "/v1/chat/completions"
        via_url = stack.url + "/v1/chat/completions"
        wrk(via_url, token, 16, 2, workdir)  # warm-up: caches, pools, JIT-free but page cache and queues
        wrk(direct_url, None, 16, 2, workdir)
        pids = {"sender": stack.sender.pid, "consumer": stack.consumers[0].pid, "simulator": stack.procs[0].pid}
        pids.update(beams)
        results: dict[int, dict[str, list[dict]]] = {}
        for c in levels:
            results[c] = {"direct": [], "dispatcher": []}
            for _ in range(args.rounds):
                results[c]["direct"].append(wrk(direct_url, None, c, args.duration, workdir))
                before = sender_means(stack.metrics_url)
                cpu0 = {k: tree_cpu(p) for k, p in pids.items()}
                run = wrk(via_url, token, c, args.duration, workdir)
                cpu1 = {k: tree_cpu(p) for k, p in pids.items()}
                after = sender_means(stack.metrics_url)
                served = run["rps"] * round(args.duration)
                run["cpu_ms_per_request"] = {k: (cpu1[k] - cpu0[k]) / served * 1000 for k in pids}
                run["mean_queue_wait_ms"] = delta_ms(before, after, "llmd_queue_wait_seconds")
                run["mean_ttfb_ms"] = delta_ms(before, after, "llmd_time_to_first_byte_seconds")
                run["mean_in_sender_ms"] = delta_ms(before, after, "llmd_request_duration_seconds")
                results[c]["dispatcher"].append(run)
    return results


def report(args: argparse.Namespace, results: dict[int, dict[str, list[dict]]]) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    print(
        f"\nmedians of {args.rounds} alternating rounds of {args.duration:g} s each, "
        f"{os.cpu_count()} CPUs, one sender process\n"
    )
    print(
        "| concurrency | direct p50 | direct p99 | direct req/s | dispatcher p50 | dispatcher p99 | "
        "dispatcher req/s | added p50 | added p99 | errors | mean ticket→grant | mean request→first byte |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c, runs in results.items():
        d = {k: statistics.median(r[k] for r in runs["direct"]) for k in ("p50_ms", "p99_ms", "rps")}
        v = {k: statistics.median(r[k] for r in runs["dispatcher"]) for k in ("p50_ms", "p99_ms", "rps")}
        errors = sum(r["non2xx"] for r in runs["dispatcher"])
        print(
            f"| {c} | {d['p50_ms']:.2f} ms | {d['p99_ms']:.2f} ms | {d['rps']:.0f} | {v['p50_ms']:.2f} ms | "
            f"{v['p99_ms']:.2f} ms | {v['rps']:.0f} | {v['p50_ms'] - d['p50_ms']:+.2f} ms | "
            f"{v['p99_ms'] - d['p99_ms']:+.2f} ms | {errors} | "
            f"{statistics.median(r['mean_queue_wait_ms'] for r in runs['dispatcher']):.2f} ms | "
            f"{statistics.median(r['mean_ttfb_ms'] for r in runs['dispatcher']):.2f} ms |"
        )
    print("\nCPU time per request through the dispatcher (median of rounds), by process:\n")
    names = list(next(iter(results.values()))["dispatcher"][0]["cpu_ms_per_request"])
    print("| concurrency | " + " | ".join(names) + " | total |")
    print("|---:|" + "---:|" * (len(names) + 1))
    for c, runs in results.items():
        per = {n: statistics.median(r["cpu_ms_per_request"][n] for r in runs["dispatcher"]) for n in names}
        print(f"| {c} | " + " | ".join(f"{per[n]:.2f} ms" for n in names) + f" | {sum(per.values()):.2f} ms |")


if __name__ == "__main__":
    sys.exit(main())
