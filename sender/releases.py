"""Every lease release a sender owes: sent, batched where the consumer reads batches, never dropped.

Every request ends with a release; at hundreds of requests a second most of them go to the same few
control queues, and one message for several costs the broker and the consumer one delivery instead
of several. So releases bound for one control queue within `window_s` (a few milliseconds: the slot
is taken again that much later, nothing else changes) go out as one `Releases` message, off the
request's path: the request ends without waiting for the publish. Only consumers whose heartbeats
say they read `Releases` (protocol 4) get them; the others get one `Release` each, as before.

A release that cannot be sent (the node is away, the channel failed, the request was cancelled
while publishing) is kept, bounded, and sent again a second after the next reconnect. One the broker
lost anyway is covered by the consumer: after its own reconnect it reclaims every lease no sender
renews. A lease released twice is ignored the second time.

    releases = LeaseReleases(nodes, route, metrics, tasks, window_s)
    await releases.send(grant, node, status, reason)   `node`: the broker node the grant came through
    releases.reads_batches[control] = True             from that consumer's heartbeats
    releases.flush_later()                              after a reconnect
    await releases.close()                              what waits in a batch, sent now (shutdown)
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from llm_dispatcher.errors import BrokerUnavailableError
from llm_dispatcher.nodes import Node, Nodes
from llm_dispatcher.protocol import Grant, Release, Releases
from llm_dispatcher.tasks import BackgroundTasks
from sender.metrics import SenderMetrics

log = logging.getLogger(__name__)

MAX_PENDING_RELEASES = 100_000  # beyond that the consumers' reconciliation reclaims the leases
RETRY_AFTER_S = 1.0  # after a reconnect, time for consumers to re-subscribe their control queues


class Owed(NamedTuple):
    """A release not sent yet: the grant, the node it came through, how the request ended."""

    grant: Grant
    node: int
    status: int
    reason: str


class LeaseReleases:
    def __init__(
        self,
        nodes: Nodes,
        route: Callable[[Grant, int], tuple[Node, str] | None],
        metrics: SenderMetrics,
        tasks: BackgroundTasks,
        window_s: float,
    ):
        self.nodes = nodes
        self.window_s = window_s
        # consumer control queue -> its consumer reads Releases (from its heartbeats; a queue name is one
        # consumer's, while a replica's URL passes from an old consumer to a new one in a rolling upgrade)
        self.reads_batches: dict[str, bool] = {}
        self._route = route
        self._metrics = metrics
        self._tasks = tasks
        self._batches: dict[tuple[int, str], list[Owed]] = {}  # (node index, control queue) -> releases
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task] = set()
        self._pending: deque[Owed] = deque(maxlen=MAX_PENDING_RELEASES)
        self._retry: asyncio.Task | None = None

    async def send(self, grant: Grant, node: int, status: int, reason: str) -> None:
        owed = Owed(grant, node, status, reason)
        route = self._route(grant, node)
        if route is None:
            self._keep(owed)
        elif self.window_s > 0 and self.reads_batches.get(route[1]):
            self._batch(route[0].index, route[1], owed)
        else:
            await self._send_one(route, owed)

    async def _send_one(self, route: tuple[Node, str], owed: Owed) -> None:
        to, control = route
        assert to.link is not None
        grant = owed.grant
        try:
            await to.link.publish(
                control, Release(grant.lease_id, owed.status, owed.reason).dumps(), message_type="release"
            )
        except asyncio.CancelledError:  # the request's task, cancelled: the release is still owed
            self._keep(owed)
            raise
        except Exception as exc:  # whatever the failure, the release is kept, never dropped
            log.warning("release of lease %s not sent, kept for after the reconnect: %r", grant.lease_id, exc)
            self._keep(owed)

    # -- batches ---------------------------------------------------------------------------------
    def _batch(self, index: int, control: str, owed: Owed) -> None:
        self._batches.setdefault((index, control), []).append(owed)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.window_s, self._send_batches)

    def _send_batches(self) -> None:
        self._timer = None
        batches, self._batches = self._batches, {}
        for (index, control), owed in batches.items():
            task = self._tasks.spawn(self._send_batch(index, control, owed), "releases")
            self._sending.add(task)  # for close() to wait on
            task.add_done_callback(self._sending.discard)

    async def _send_batch(self, index: int, control: str, owed: list[Owed]) -> None:
        message = Releases([o.grant.lease_id for o in owed], [o.reason for o in owed])
        link = self.nodes.nodes[index].link
        try:
            if link is None:
                raise BrokerUnavailableError("the message broker is unreachable")
            await link.publish(control, message.dumps(), message_type="releases")
        except BaseException as exc:  # cancelled at shutdown included: the releases are still owed
            log.warning("%d lease releases not sent, kept for after the reconnect: %r", len(owed), exc)
            for o in owed:
                self._keep(o)
            if not isinstance(exc, Exception):
                raise

    async def close(self) -> None:
        """Send what waits in a batch now, and wait for the sends under way."""
        if self._timer is not None:
            self._timer.cancel()
        self._send_batches()
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)

    # -- kept for after a reconnect --------------------------------------------------------------
    def _keep(self, owed: Owed) -> None:
        if len(self._pending) == self._pending.maxlen:
            self._metrics.releases_dropped.inc()  # the consumer's reconciliation reclaims it
        self._pending.append(owed)
        if self.nodes.any_connected:
            self.flush_later()  # the channel failed under a live connection flag: retry soon

    def flush_later(self) -> None:
        if self._pending and (self._retry is None or self._retry.done()):
            self._retry = self._tasks.spawn(self._send_pending(), "flush-releases")

    async def _send_pending(self) -> None:
        await asyncio.sleep(RETRY_AFTER_S)
        if not self.nodes.any_connected:
            return  # the next reconnect schedules it again
        pending = list(self._pending)
        self._pending.clear()
        for owed in pending:
            await self.send(*owed)
