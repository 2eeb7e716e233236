"""The floor under a dispatch: a bare AMQP RPC round trip through the machine's RabbitMQ.

One process publishes a message to a queue; another (aiormq, uvloop, nothing else) answers each on
the first one's reply queue; the first waits for the answer before the next publish. This is the
ticket → grant exchange with none of the dispatcher's own work, so the dispatcher's added latency at
concurrency 1 cannot go below it (plus one HTTP hop).

    .venv/bin/python bench/amqp_rtt.py [--round-trips 3000] [--url amqp://guest:guest@127.0.0.1:5672/]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
import uuid

import aiormq
import uvloop
from pamqp.commands import Basic


async def answer(url: str, queue: str, seconds: float) -> None:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    await channel.queue_declare(queue, auto_delete=True)

    async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        await channel.basic_publish(b"grant", routing_key=message.header.properties.reply_to or "", wait=False)
        await channel.basic_ack(message.delivery.delivery_tag)  # type: ignore[union-attr]

    await channel.basic_consume(queue, on_message)
    print("ready", flush=True)
    await asyncio.sleep(seconds)
    await connection.close()


async def ask(url: str, queue: str, n: int) -> list[float]:
    connection = await aiormq.connect(url)
    channel = await connection.channel(publisher_confirms=False)
    reply = (await channel.queue_declare("", exclusive=True)).queue
    loop = asyncio.get_running_loop()
    waiting: list[asyncio.Future] = []
    await channel.basic_consume(reply, lambda _m: waiting.pop().set_result(None), no_ack=True)
    times = []
    for _ in range(n):
        fut = loop.create_future()
        waiting.append(fut)
        t0 = time.perf_counter()
        await channel.basic_publish(
            b"ticket", routing_key=queue, properties=Basic.Properties(reply_to=reply), wait=False
        )
        await fut
        times.append(time.perf_counter() - t0)
    await connection.close()
    return times[n // 6 :]  # the first sixth warms up


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--round-trips", type=int, default=3000)
    ap.add_argument("--url", default="amqp://guest:guest@127.0.0.1:5672/")
    ap.add_argument("--_answer", metavar="QUEUE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    uvloop.install()
    if args._answer:
        asyncio.run(answer(args.url, args._answer, 120))
        return 0
    queue = f"rtt.{uuid.uuid4().hex[:8]}"
    server = subprocess.Popen([sys.executable, __file__, "--url", args.url, "--_answer", queue], stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"ready"
        times = asyncio.run(ask(args.url, queue, args.round_trips))
    finally:
        server.terminate()
        server.wait(10)
    ms = sorted(t * 1000 for t in times)
    p99 = ms[int(len(ms) * 0.99)]
    print(f"bare AMQP RPC round trip, {len(ms)} measured: p50 {statistics.median(ms):.3f} ms, p99 {p99:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
