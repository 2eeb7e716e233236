"""The command line: `.venv/bin/python bench/scenarios 1 2 3 4 [options]` (see the package's docstring)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a directory (`python bench/scenarios`) or as `python -m bench.scenarios`: the scenario modules
# import `scenarios.*` and the load generator `loadgen`, both from bench/.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import dataclasses
import json
import os
import signal
import tempfile
import time

import scenarios
from scenarios.suite import SCENARIOS, Options, ScenarioResult


def parse_set(items: list[str]) -> dict[str, str]:
    """``--set LLMD_X=V`` (repeatable) as a mapping."""
    out = {}
    for kv in items:
        k, sep, v = kv.partition("=")
        if not sep or not k:
            raise SystemExit(f"--set wants LLMD_X=V, got {kv!r}")
        out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the started processes on the way out
    d = Options()
    ap = argparse.ArgumentParser(
        prog="bench/scenarios", description=scenarios.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("scenarios", nargs="*", default=["1", "2", "3", "4"], choices=[*SCENARIOS], metavar="N",
                    help="any of 1 2 3 4 5 6 7")  # fmt: skip
    ap.add_argument("--duration", type=float, default=d.duration, help="arrival window per arm (s)")
    ap.add_argument("--idle-duration", type=float, default=d.idle_duration, help="scenario 1's idle reference run (s)")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--floor", type=float, default=d.floor, help="scenario 4: minTokensPerSecondPerUser")
    ap.add_argument("--floor-threshold", type=int, default=d.floor_threshold, help="scenario 4: the token's threshold")
    ap.add_argument("--real-duration", type=float, default=d.real_duration)
    ap.add_argument("--real-rate-i", type=float, default=d.real_rate_i)
    ap.add_argument("--real-rate-b", type=float, default=d.real_rate_b)
    b = d.batch
    ap.add_argument("--batch-lines", type=int, default=b.lines, help="scenario 6: lines in the batch")
    ap.add_argument("--batch-duration", type=float, default=b.duration, help="scenario 6: interactive window (s)")
    ap.add_argument("--batch-rate", type=float, default=b.rate, help="scenario 6: interactive requests/s")
    ap.add_argument(
        "--batch-poll", type=float, default=b.poll_interval_s, help="scenario 6: the sender's poll interval"
    )
    ap.add_argument("--batch-max-waiting", type=int, default=b.max_waiting, help="scenario 6: LLMD_BATCH_MAX_WAITING")
    ap.add_argument(
        "--batch-preempt-after", type=float, default=b.preempt_after_s, help="scenario 6: LLMD_PREEMPT_AFTER_S"
    )
    ap.add_argument("--batch-real-url", default="", help="scenario 6: a real vLLM's URL instead of the simulator")
    ap.add_argument("--batch-saturation-clients", type=int, default=b.saturation_clients,
                    help="scenario 6: closed-loop clients of the saturation arm")  # fmt: skip
    f = d.fair
    ap.add_argument("--fair-duration", type=float, default=f.duration, help="scenario 7: arrival window per arm (s)")
    ap.add_argument("--fair-light-rate", type=float, default=f.light_rate, help="scenario 7: the light token's req/s")
    ap.add_argument(
        "--sim-max-num-batched-tokens",
        type=int,
        default=d.max_num_batched_tokens,
        metavar="N",
        help="scenarios 1-4 and 6: each simulated replica's chunked-prefill token budget per step (0: none)",
    )
    ap.add_argument("--img", default="docs/img")
    ap.add_argument("--json", help="write every record and sample here")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="LLMD_X=V",
        help="override a consumer setting of the dispatcher arms (repeatable)",
    )
    args = ap.parse_args(argv)
    options = Options(
        duration=args.duration,
        idle_duration=args.idle_duration,
        seed=args.seed,
        floor=args.floor,
        floor_threshold=args.floor_threshold,
        real_duration=args.real_duration,
        real_rate_i=args.real_rate_i,
        real_rate_b=args.real_rate_b,
        consumer_overrides=parse_set(args.set),
        max_num_batched_tokens=args.sim_max_num_batched_tokens,
        fair=dataclasses.replace(f, duration=args.fair_duration, light_rate=args.fair_light_rate),
        batch=dataclasses.replace(
            b,
            lines=args.batch_lines,
            duration=args.batch_duration,
            rate=args.batch_rate,
            poll_interval_s=args.batch_poll,
            max_waiting=args.batch_max_waiting,
            preempt_after_s=args.batch_preempt_after,
            real_url=args.batch_real_url,
            saturation_clients=args.batch_saturation_clients,
        ),
    )
    img = Path(args.img)
    img.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="llmd-scen-")
    out: dict[str, ScenarioResult] = {}
    for s in args.scenarios:
        t0 = time.monotonic()
        res = SCENARIOS[s](options, workdir, img)
        res.wall_s = time.monotonic() - t0
        out[s] = res
        print(res.report, flush=True)
        print(f"(scenario {s}: {res.wall_s:.0f} s wall, load average {os.getloadavg()[0]:.1f})\n", flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps({k: dataclasses.asdict(v) for k, v in out.items()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
