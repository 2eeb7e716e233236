"""Several broker nodes (a RabbitMQ cluster) without a single node that can stop the gateway.

RabbitMQ's classic queues, the only ones with 0-255 priorities on every version users run, live on
one node and are not replicated. So each model has one priority queue *per node*
(`protocol.model_queue(prefix, model, i)`, declared over a connection to node i, which RabbitMQ
places on that node) and every process holds a connection to every node:

- a consumer subscribes to its model's queue on every node it reaches and grants each ticket over the
  node it came from;
- a sender publishes to the queue of the *first* node of the list it reaches. Every sender lists the
  nodes in the same order, so while node 0 is up every ticket waits in one queue and priorities,
  fair share and thresholds hold exactly as with one node. When node 0 is lost, each sender moves to
  node 1 as soon as its connection drops (it is already connected there); when node 0 is back, new
  tickets go there again, and the ones still waiting on node 1 are served from there.

One URL is the cluster of one: queue names, messages and behaviour are what they were.

    nodes = Nodes(broker_urls(url), "sender:...", attach, retry_after_s=2.0)
    await nodes.start()        each node tried once; the ones that failed are retried in the background
    nodes.first()              the first connected node (None: none connected)
    await nodes.close()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import aiormq

from llm_dispatcher import amqp

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # one connection attempt (a node still booting may accept and not answer)
CONNECT_RETRY_MAX_S = 5.0  # retries back off from 0.5 s to this
STILL_DOWN_LOG_S = 30.0  # while a node stays unreachable, a warning this often

# What a connection attempt raises when the node is not there (yet): retried.
UNREACHABLE = (OSError, aiormq.exceptions.AMQPError, asyncio.TimeoutError, RuntimeError)


def broker_urls(value: str) -> list[str]:
    """LLMD_AMQP_URL: one URL, or the nodes of a cluster separated by commas, listed in the same order
    by every sender and consumer (node 0 first)."""
    urls = [u.strip() for u in value.split(",") if u.strip()]
    if not urls:
        raise ValueError("no broker URL given")
    return urls


class Node:
    """One broker node: its place in the list, its URL and, once connected, its link."""

    def __init__(self, index: int, url: str):
        self.index = index
        self.url = url
        self.link: amqp.BrokerLink | None = None

    @property
    def connected(self) -> bool:
        return self.link is not None and self.link.connected

    def __repr__(self) -> str:
        return f"Node({self.index}, connected={self.connected})"


Attach = Callable[[Node], Awaitable[None]]


class Nodes:
    """A robust link to every node. `attach(node)` declares and subscribes what the service needs on a
    node's new link, once (also when the first connection is made in the background): aio-pika's robust
    connection restores it after every later loss, told to `on_lost(node)` / `on_restored(node)`."""

    def __init__(self, urls: list[str], name: str, attach: Attach, *, retry_after_s: float = 2.0):
        self.nodes = [Node(i, url) for i, url in enumerate(urls)]
        self.name = name
        self.retry_after_s = retry_after_s
        self._attach = attach
        self._on_lost: list[Callable[[Node], None]] = []
        self._on_restored: list[Callable[[Node], None]] = []
        self._connecting: set[asyncio.Task] = set()

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def on_lost(self, callback: Callable[[Node], None]) -> None:
        self._on_lost.append(callback)

    def on_restored(self, callback: Callable[[Node], None]) -> None:
        self._on_restored.append(callback)

    @property
    def any_connected(self) -> bool:
        return any(n.connected for n in self.nodes)

    @property
    def attached(self) -> bool:
        """Connected once at least (the robust connections restore themselves from then on)."""
        return any(n.link is not None for n in self.nodes)

    def first(self) -> Node | None:
        """The first node of the list that is connected now: where new tickets go."""
        return next((n for n in self.nodes if n.connected), None)

    def connected(self) -> list[Node]:
        return [n for n in self.nodes if n.connected]

    async def start(self) -> list[BaseException]:
        """Tries every node once, at the same time; each that failed is retried in the background until
        it answers. Returns the failures (all of them: no node reached yet)."""
        results = await asyncio.gather(*(self._connect(n) for n in self.nodes), return_exceptions=True)
        failures: list[BaseException] = []
        for node, result in zip(self.nodes, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, UNREACHABLE):
                    raise result
                failures.append(result)
                log.warning("broker node %d unreachable (%r); connecting in the background", node.index, result)
                task = asyncio.get_running_loop().create_task(self._connect_until_up(node), name=f"node-{node.index}")
                self._connecting.add(task)
                task.add_done_callback(self._connecting.discard)
        return failures

    async def _connect(self, node: Node) -> None:
        name = self.name if len(self.nodes) == 1 else f"{self.name}:node{node.index}"
        link = await asyncio.wait_for(
            amqp.BrokerLink.open(node.url, name, retry_after_s=self.retry_after_s), CONNECT_TIMEOUT_S
        )
        node.link = link
        try:
            await self._attach(node)
        except BaseException:
            node.link = None
            await link.close()
            raise
        link.on_lost(lambda: self._lost(node))
        link.on_restored(lambda: self._restored(node))

    async def _connect_until_up(self, node: Node) -> None:
        started = last_log = time.monotonic()
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect(node)
            except UNREACHABLE as exc:
                delay = min(CONNECT_RETRY_MAX_S, delay * 2)
                if time.monotonic() - last_log >= STILL_DOWN_LOG_S:
                    last_log = time.monotonic()
                    log.warning(
                        "broker node %d still unreachable after %.0f s: %r", node.index, last_log - started, exc
                    )
                continue
            log.info("connected to broker node %d after %.1f s", node.index, time.monotonic() - started)
            return

    def _lost(self, node: Node) -> None:
        for callback in self._on_lost:
            callback(node)

    def _restored(self, node: Node) -> None:
        for callback in self._on_restored:
            callback(node)

    async def close(self) -> None:
        """Stops the background connecting, then closes every link."""
        for task in list(self._connecting):
            task.cancel()
        await asyncio.gather(*self._connecting, return_exceptions=True)
        await asyncio.gather(*(n.link.close() for n in self.nodes if n.link is not None))
