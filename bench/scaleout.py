"""Scale-out against one broker: 1, 2, 4 sender processes and 1, 2 consumers.

One zero-delay simulator (`llm-dispatcher sim`, every latency 0) behind every consumer, so the
upstream costs almost nothing and what is measured is the dispatcher and its broker. For each shape
a fresh stack (its own queue prefix and token database); the load is one `wrk` per sender (C, one
thread), the total concurrency split evenly between them, all started together; medians of the
rounds. Reported: total req/s, p50 (the median of the wrk processes' p50s), CPU ms per request by
role (every sender together, every consumer together, RabbitMQ), and RabbitMQ's messages per
second. A request is three messages through the broker (ticket, grant, release: each published
once and delivered once) and one ack, so broker messages/s = 3 x req/s; what one broker core can
carry follows from its CPU per request.

    .venv/bin/python bench/scaleout.py [--shapes 1x1,2x1,4x1,1x2,2x2,4x2] [--concurrency 32] [--rounds 3] [--duration 6]

`--shapes SxC`: S senders and C consumers. `wrk` comes from scripts/ensure-wrk.sh.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

from overhead import broker_pid, wrk

from devstack.processes import running, tree_cpu

MESSAGES_PER_REQUEST = 3  # ticket, grant, release


def measure_shape(senders: int, consumers: int, args: argparse.Namespace, beam: int | None) -> dict:
    workdir = tempfile.mkdtemp(prefix="llmd-scaleout-")
    consumer_env = {"LLMD_MAX_CONCURRENCY": "1024"}
    with running(workdir, [], consumer_env=consumer_env) as stack:  # starts the first sender
        sender_procs, urls = [stack.sender], [stack.url + "/v1/chat/completions"]
        sim = stack.start_sim(["--max-num-seqs", "4096"])
        consumer_procs = [stack.start_consumer(sim) for _ in range(consumers)]
        for _ in range(senders - 1):
            sender_procs.append(stack.start_sender())
            urls.append(stack.url + "/v1/chat/completions")
        token = stack.token("bench")
        stack.wait_live(token)
        per_sender = max(1, args.concurrency // senders)
        with ThreadPoolExecutor(senders) as pool:

            def load(duration: float) -> list[dict]:
                return list(pool.map(lambda u: wrk(u, token, per_sender, duration, workdir), urls))

            load(2)  # warm-up: connection pools, caches, queues declared
            roles = {"sender": sender_procs, "consumer": consumer_procs}
            rounds = []
            for _ in range(args.rounds):
                cpu0 = {r: sum(tree_cpu(p.pid) for p in ps) for r, ps in roles.items()}
                broker0 = tree_cpu(beam) if beam else 0.0
                runs = load(args.duration)
                cpu1 = {r: sum(tree_cpu(p.pid) for p in ps) for r, ps in roles.items()}
                broker1 = tree_cpu(beam) if beam else 0.0
                rps = sum(r["rps"] for r in runs)
                served = max(rps * round(args.duration), 1.0)
                cpu = {r: (cpu1[r] - cpu0[r]) / served * 1000 for r in roles}
                cpu["rabbitmq"] = (broker1 - broker0) / served * 1000
                rounds.append(
                    {
                        "rps": rps,
                        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
                        "errors": sum(r["non2xx"] for r in runs),
                        "cpu_ms_per_request": cpu,
                    }
                )
    return {"senders": senders, "consumers": consumers, "rounds": rounds}


def summary(shape: dict) -> dict:
    rounds = shape["rounds"]
    cpu = {k: statistics.median(r["cpu_ms_per_request"][k] for r in rounds) for k in rounds[0]["cpu_ms_per_request"]}
    rps = statistics.median(r["rps"] for r in rounds)
    return {
        "rps": rps,
        "p50_ms": statistics.median(r["p50_ms"] for r in rounds),
        "errors": sum(r["errors"] for r in rounds),
        "cpu": cpu,
        "broker_msgs_per_s": rps * MESSAGES_PER_REQUEST,
        "broker_core_rps": 1000 / cpu["rabbitmq"] if cpu["rabbitmq"] > 0 else float("nan"),
    }


def report(shapes: list[dict], args: argparse.Namespace) -> None:
    print(
        f"\nmedians of {args.rounds} rounds of {args.duration:g} s, total concurrency {args.concurrency} "
        "split over the senders\n"
    )
    print(
        "| senders | consumers | req/s | p50 | errors | CPU ms / request: senders, consumers, rabbitmq | "
        "broker messages/s | requests/s one broker core carries |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    for shape in shapes:
        s = summary(shape)
        c = s["cpu"]
        print(
            f"| {shape['senders']} | {shape['consumers']} | {s['rps']:,.0f} | {s['p50_ms']:.2f} ms | {s['errors']} | "
            f"{c['sender']:.3f}, {c['consumer']:.3f}, {c['rabbitmq']:.3f} | {s['broker_msgs_per_s']:,.0f} | "
            f"{s['broker_core_rps']:,.0f} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="1x1,2x1,4x1,1x2,2x2,4x2", help="SxC: S senders, C consumers")
    ap.add_argument("--concurrency", type=int, default=32, help="total, split over the senders")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6)
    ap.add_argument("--json", help="write raw results here")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        print("wrk is needed: bash scripts/ensure-wrk.sh", file=sys.stderr)
        return 2
    beam = broker_pid()
    shapes = []
    for spec in args.shapes.split(","):
        senders, consumers = (int(x) for x in spec.split("x"))
        print(f"{senders} senders, {consumers} consumers ...", file=sys.stderr, flush=True)
        shapes.append(measure_shape(senders, consumers, args, beam))
    report(shapes, args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(shapes, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
