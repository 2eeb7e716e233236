"""CPU and wall time of one limits-style EVALSHA through redis-py, with its pure-Python reply parser
and with hiredis (the C parser redis-py uses when it is installed), in one process, rounds alternating.

    .venv/bin/python bench/redis_parser.py [--url redis://127.0.0.1:6379/0] [--calls 4000] [--rounds 6]

The script is shaped like the sender's admit (sender/limits.py): a few counters touched, a six-item
array returned.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import redis.asyncio as redis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser

SCRIPT = """
redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
return {false, redis.call('GET', KEYS[1]), 5, 7, tonumber(ARGV[2]), 9}
"""
PARSERS = {"python": _AsyncRESP2Parser, "hiredis": _AsyncHiredisParser}


async def one_round(url: str, parser, calls: int) -> tuple[float, float]:
    """Microseconds per call: wall, CPU of this process."""
    client = redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, parser_class=parser))
    script = client.register_script(SCRIPT)
    keys = ["llmd-bench:redis-parser:a", "llmd-bench:redis-parser:b"]
    await script(keys=keys, args=[1, 17])
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        await script(keys=keys, args=[1, 17])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await client.delete(*keys)
    await client.aclose()
    return wall / calls * 1e6, cpu / calls * 1e6


async def main(args: argparse.Namespace) -> None:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in PARSERS}
    for _ in range(args.rounds):
        for name, parser in PARSERS.items():
            results[name].append(await one_round(args.url, parser, args.calls))
    print("| reply parser | wall µs / call (median) | CPU µs / call (median) |")
    print("|---|---:|---:|")
    for name, rows in results.items():
        wall = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        print(f"| {name} | {wall:.1f} | {cpu:.1f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=6)
    asyncio.run(main(ap.parse_args()))
