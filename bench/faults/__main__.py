"""The command line: `.venv/bin/python bench/faults [SCENARIO ...] [options]` (see the package's docstring)."""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a directory (`python bench/faults`) or as `python -m bench.faults`: imports from the checkout.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import argparse
import asyncio
import json
import signal
import tempfile
import time

from bench.faults import __doc__ as DOC
from bench.faults.load import Shape
from bench.faults.report import table
from bench.faults.run import SHORT_OPTIONS, Options, passed, run_scenario
from bench.faults.scenarios import SCENARIOS, SHORT
from bench.faults.stack import old_release
from devstack.broker import PrivateBroker, PrivateCluster
from devstack.broker import available as broker_available

ROOT = Path(__file__).resolve().parents[2]


async def run_all(names: list[str], opts: Options, out: Path) -> list[dict]:
    workdir = tempfile.mkdtemp(prefix="llmd-faults-")
    old = None
    if any(SCENARIOS[n].versions for n in names):
        old = old_release(ROOT, Path(tempfile.gettempdir()) / "llmd-faults-releases")
        print(f"old release: {old.commit[:12]} (protocol {old.version}) from {old.path}", flush=True)
    results = []
    with PrivateBroker() as broker:
        for name in names:
            print(f"== {name}: {SCENARIOS[name].what}", flush=True)
            sc = SCENARIOS[name]
            if sc.cluster:
                with PrivateCluster(sc.cluster) as cluster:
                    result = await run_scenario(sc, cluster, opts, workdir, old)
            else:
                result = await run_scenario(sc, broker, opts, workdir, old)
            results.append(result)
            s = result["summary"]
            print(
                f"   {s['requests']} requests: ok {s['ok']}, clear {s['clear']}, unclear {s['unclear']}, "
                f"killed {s['killed']}; checks {[c['ok'] for c in result['checks'].values()]}; "
                f"{'PASS' if passed(result) else 'FAIL'} ({result['seconds']} s)",
                flush=True,
            )
            await asyncio.to_thread(out.write_text, json.dumps(results, indent=1))
            if not broker.accepting():  # a scenario that left the node down
                broker.start()
    return results


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the started processes on the way out
    ap = argparse.ArgumentParser(
        prog="bench/faults", description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"default: all ({', '.join(SCENARIOS)})")
    ap.add_argument("--short", action="store_true", help=f"{', '.join(SHORT)}: 16 s of load at 12 requests/s each")
    ap.add_argument("--duration", type=float, help="seconds of arrivals per scenario (default 40; --short 16)")
    ap.add_argument("--fault-at", type=float, default=None, help="seconds into the load (default 10; --short 4)")
    ap.add_argument("--rate", type=float, default=None, help="requests/s (default 22; --short 12)")
    ap.add_argument("--seed", type=int, default=Shape.seed)
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON of every request (default: bench/results/faults-<time>.json)"
    )
    args = ap.parse_args(argv)
    names = args.scenarios or (SHORT if args.short else list(SCENARIOS))
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        ap.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if not broker_available():
        ap.error("needs rabbitmq-server on this machine")
    base = SHORT_OPTIONS if args.short else Options()
    opts = Options(
        duration=args.duration or base.duration,
        fault_at=args.fault_at if args.fault_at is not None else base.fault_at,
        shape=Shape(rate=args.rate or base.shape.rate, seed=args.seed),
    )
    out = args.out or ROOT / "bench" / "results" / f"faults-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = asyncio.run(run_all(names, opts, out))
    print(f"\n{len(results)} scenarios in {time.monotonic() - started:.0f} s; every request in {out}\n")
    print(table(results))
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
