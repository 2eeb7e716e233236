"""The sender's side of the broker: tickets out, grants in, releases and cancels out, heartbeats in.

One waiter per waiting request, keyed by ticket id and removed when the wait ends however it ends
(so a cancelled wait never leaks). A grant nobody waits for any more (client gone, timed out, or a
redelivered ticket granted twice) is released at once, so it never holds a slot.

Releases (sender/releases.py: several to one consumer in one message) are never dropped on a send
failure: they wait (bounded) and go out after the reconnect. A release that the broker lost anyway
(it died with it in a buffer) is covered by the consumer: after its own reconnect it reclaims every
lease no sender renews, and this sender renews the leases it still holds as soon as a consumer's
heartbeat shows that new connection epoch.

With several broker nodes (llm_dispatcher/nodes.py) tickets go to the first node reached; when a
node is lost, the tickets waiting there move on to the next (a grant of the old one that still comes
is released as abandoned), releases and renewals of grants made through it go to the consumer's
control queue on a node still reached, and new tickets go to the next node at once. With one node a
lost connection fails the waiting requests fast (503 with Retry-After).

A broker that is down when the sender starts does not stop it: the dispatcher is made unconnected
(`connected` False: /readyz 503, requests 503 with Retry-After) and connects in the background,
retrying, so that a whole release started in any order converges by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

from llm_dispatcher import amqp, protocol
from llm_dispatcher.errors import BrokerUnavailableError, QueueTimeoutError
from llm_dispatcher.nodes import Node, Nodes, broker_urls
from llm_dispatcher.protocol import Cancel, Grant, Heartbeat, Renew, Ticket
from llm_dispatcher.tasks import BackgroundTasks
from sender.fairness import broker_priority
from sender.metrics import SenderMetrics
from sender.preemption import Preemption
from sender.registry import Registry
from sender.releases import LeaseReleases
from sender.settings import SenderSettings

log = logging.getLogger(__name__)


@dataclasses.dataclass(slots=True)
class Waiter:
    """A request waiting for a grant: its ticket now (a new one when it moves to another node)."""

    fut: asyncio.Future[Grant]
    ticket: Ticket
    node: int
    sub: int
    asks: int = 0  # how often it asked a replica to make room (sender/preemption.py)
    timer: asyncio.TimerHandle | None = None  # the next time it asks


class Dispatcher:
    """Built by `await Dispatcher.create(...)`: connected, subscribed and running when it returns, or,
    when no broker node is reachable then, not connected and connecting in the background."""

    def __init__(self, settings: SenderSettings, registry: Registry, metrics: SenderMetrics):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.prefix = settings.queue_prefix
        self._id = uuid.uuid4().hex
        self.nodes = Nodes(
            broker_urls(settings.amqp_url.get_secret_value()),
            f"sender:{self.prefix}.reply.{self._id}",
            self._attach,
            retry_after_s=settings.retry_after_s,
        )
        self._tasks = BackgroundTasks("broker")
        self._waiting: dict[str, Waiter] = {}
        self._batch_waiting: dict[str, int] = {}  # model -> this sender's batch-line tickets in its queue
        self._depth_calls: dict[str, asyncio.Future[int]] = {}
        # model -> (monotonic time, depth, this sender's batch tickets published before that reading)
        self._depth_seen: dict[str, tuple[float, int, int]] = {}
        self._held: dict[str, tuple[Grant, int]] = {}  # lease id -> grant and its node, while proxied
        self._renewed: dict[str, float] = {}  # lease id -> when it was granted or last renewed
        self._renew_period = 1.0  # at most a sixth of the shortest lease TTL seen
        self._renew_wakeup = asyncio.Event()
        self.releases = LeaseReleases(self.nodes, self._route, metrics, self._tasks, settings.release_batch_s)
        # consumer (its replica URL) -> its connection epoch and control queue per node, from heartbeats
        self._epochs: dict[str, int] = {}
        self._controls: dict[str, list[str]] = {}
        self._shapes: dict[tuple[str, int], amqp.QueueShape] = {}  # (model, node) -> its queue's shape
        self.preemption = Preemption(
            settings.preempt_after_s, self._control_route, self._held.__contains__, self._tasks
        )

    @classmethod
    async def create(cls, settings: SenderSettings, registry: Registry, metrics: SenderMetrics) -> Dispatcher:
        self = cls(settings, registry, metrics)
        self.nodes.on_lost(self._on_lost)
        self.nodes.on_restored(self._on_restored)
        failures = await self.nodes.start()
        if len(failures) == len(self.nodes):
            log.warning("the message broker is unreachable (%r): not ready; connecting in the background", failures[0])
        self._tasks.spawn(self._depth_loop(), "queue-depth")
        self._tasks.spawn(self._renew_loop(), "lease-renewal")
        return self

    def _reply_name(self, node: Node) -> str:
        return f"{self.prefix}.reply.{self._id}" + (f".n{node.index}" if node.index else "")

    async def _attach(self, node: Node) -> None:
        """A node's first connection: exchanges, reply queue, heartbeats. aio-pika's robust connection
        restores all of it after every later loss."""
        assert node.link is not None
        channel, prefix = node.link.channel, self.prefix
        await amqp.declare_fanout(channel, protocol.cancel_exchange(prefix))
        heartbeats = await amqp.declare_fanout(channel, protocol.heartbeat_exchange(prefix))
        await channel.declare_queue(self._reply_name(node), exclusive=True, auto_delete=True)
        await self._consume_replies(node)
        hb_queue = await channel.declare_queue(f"{prefix}.hb.{uuid.uuid4().hex}", exclusive=True, auto_delete=True)
        await hb_queue.bind(heartbeats)
        await hb_queue.consume(self._on_heartbeat, no_ack=True)

    @property
    def connected(self) -> bool:
        return self.nodes.any_connected

    async def stop(self) -> None:
        await self.releases.close()
        await self._tasks.cancel()
        await self.nodes.close()
        self._fail_waiting("the sender is shutting down")

    # -- connection events ---------------------------------------------------------------------
    def _on_lost(self, node: Node) -> None:
        """The tickets waiting on `node` move to the first node still reached, or fail fast (503)."""
        to = self.nodes.first()
        for waiter in [w for w in self._waiting.values() if w.node == node.index and not w.fut.done()]:
            if to is None:
                waiter.fut.set_exception(
                    BrokerUnavailableError(
                        "the message broker connection was lost", retry_after=self.settings.retry_after_s
                    )
                )
            else:
                self._tasks.spawn(self._move(waiter, node.index, to), "move-ticket")

    async def _move(self, waiter: Waiter, lost: int, to: Node) -> None:
        """Publish the waiter's ticket anew (new id, same deadline) on `to`; a grant of the old one that
        still arrives finds no waiter and is released."""
        old = waiter.ticket
        ttl_s = old.deadline_ms / 1000 - time.time()
        if waiter.fut.done() or ttl_s <= 0 or waiter.node != lost:  # granted, expired, or published elsewhere
            return
        ticket = dataclasses.replace(old, id=uuid.uuid4().hex)
        self._waiting.pop(old.id, None)
        waiter.ticket, waiter.node = ticket, to.index
        self._waiting[ticket.id] = waiter
        self.metrics.tickets_moved.labels(ticket.model).inc()
        try:
            await self._publish_ticket(ticket, ttl_s, waiter.sub, to)
            await self._publish_cancel(old.id, to)  # should the old one be delivered after all (a blip)
        except Exception as exc:
            log.warning("ticket %s not moved to broker node %d: %r", old.id, to.index, exc)
            if not waiter.fut.done():
                waiter.fut.set_exception(
                    BrokerUnavailableError("the message broker is unreachable", retry_after=self.settings.retry_after_s)
                )

    async def _consume_replies(self, node: Node) -> None:
        """Grants arrive on the hot path: consumed straight on the aiormq channel (aio-pika restores
        the reply queue itself after a reconnect; this subscription is renewed in _on_restored)."""
        assert node.link is not None
        raw = await node.link.raw()
        await raw.basic_consume(self._reply_name(node), lambda m: self._on_grant(m, node), no_ack=True)

    def _on_restored(self, node: Node) -> None:
        for key in [k for k in self._shapes if k[1] == node.index]:
            del self._shapes[key]  # a node that lost its queues declares them anew
        self._tasks.spawn(self._consume_replies(node), "consume-replies")
        self.releases.flush_later()

    def _fail_waiting(self, why: str) -> None:
        for waiter in list(self._waiting.values()):
            if not waiter.fut.done():
                waiter.fut.set_exception(BrokerUnavailableError(why, retry_after=self.settings.retry_after_s))

    # -- queue depth ---------------------------------------------------------------------------
    async def depth(self, model: str, max_age_s: float = 0.0) -> int:
        """Tickets waiting in the model's queue (all senders). Concurrent callers share one query;
        a reading younger than `max_age_s` is reused (the threshold check needs no more precision)."""
        if max_age_s > 0:
            seen = self._depth_seen.get(model)
            if seen is not None and time.monotonic() - seen[0] <= max_age_s:
                return seen[1]
        call = self._depth_calls.get(model)
        if call is None:
            call = asyncio.get_running_loop().create_future()
            self._depth_calls[model] = call
            try:
                call.set_result(await self._declare(model))
            except BaseException as exc:
                call.set_exception(exc)
                call.exception()  # retrieved: callers re-raise it
            finally:
                del self._depth_calls[model]
        return await asyncio.shield(call)

    def batch_waiting(self, model: str) -> int:
        """This sender's batch-line tickets waiting in `model`'s queue (at most batch_max_waiting a batch)."""
        return self._batch_waiting.get(model, 0)

    async def depth_for_threshold(self, model: str, max_age_s: float = 0.0) -> int:
        """The depth an interactive threshold is held against: the queue's, less this sender's own batch
        tickets counted at the moment of that reading (a ticket published before the declare is in its
        count: one channel keeps them in order; one granted since is in neither), never below 0."""
        count = await self.depth(model, max_age_s)
        seen = self._depth_seen.get(model)
        return max(0, count - (seen[2] if seen is not None else 0))

    async def _declare(self, model: str) -> int:
        """The depth of the model's queue on the first node reached; on the next one if that node is lost
        during the query."""
        tried: set[int] = set()
        while True:
            node = self._first_untried(tried)
            if node is None:
                raise BrokerUnavailableError(
                    "the message broker is unreachable", retry_after=self.settings.retry_after_s
                )
            tried.add(node.index)
            try:
                return await self._declare_on(model, node)
            except BrokerUnavailableError:
                if len(self.nodes) == 1:
                    raise

    async def _declare_on(self, model: str, node: Node) -> int:
        assert node.link is not None
        shape = await self._shape(model, node)
        channel = await node.link.raw()
        batch_then = self.batch_waiting(model)
        with amqp.broker_errors(self.settings.retry_after_s):
            ok = await channel.queue_declare(
                protocol.model_queue(self.prefix, model, node.index),
                durable=True,
                passive=shape.arguments is None,
                arguments=shape.arguments,
            )
        count = ok.message_count or 0
        self._depth_seen[model] = (time.monotonic(), count, batch_then)
        self.metrics.queue_depth.labels(model).set(count)
        return count

    async def _shape(self, model: str, node: Node) -> amqp.QueueShape:
        shape = self._shapes.get((model, node.index))
        if shape is None:
            if node.link is None:
                raise BrokerUnavailableError(
                    "the message broker is unreachable", retry_after=self.settings.retry_after_s
                )
            st = self.settings
            with amqp.broker_errors(st.retry_after_s):
                shape = await amqp.model_queue_shape(
                    node.link.connection, self.prefix, model, st.max_priority, st.fair_levels, node.index
                )
            self._shapes[(model, node.index)] = shape
        return shape

    async def _depth_loop(self) -> None:
        """Export queue depth for every model with a live replica, even when no request asks."""
        while True:
            await asyncio.sleep(2.0)
            self.registry.prune()
            models = {hb.model for hb in self.registry.replicas()}
            for model in models:
                with contextlib.suppress(Exception):
                    await self.depth(model)
            for model in self.registry.model_names():  # configured or seen: 0 once the last replica is gone
                live = self.registry.live(model)
                self.metrics.replicas_live.labels(model).set(len(live))
                self.preemption.keep_only(model, {hb.url for hb in live})

    # -- tickets and grants --------------------------------------------------------------------
    async def acquire(
        self, model: str, priority: int, request_id: str = "", *, batch: bool = False, sub: int = 0
    ) -> Grant:
        """Wait for a replica of `model`, at band `priority` and fair-share sub-level `sub` (see
        sender/fairness.py). Raises QueueTimeoutError, BrokerUnavailableError; a cancellation (client
        gone) abandons the ticket so that no consumer grants it."""
        timeout = self.settings.queue_timeout_s
        node = self.nodes.first()
        if node is None:
            raise BrokerUnavailableError("the message broker is unreachable", retry_after=self.settings.retry_after_s)
        ticket = Ticket(
            id=uuid.uuid4().hex,
            model=model,
            priority=priority,
            deadline_ms=protocol.now_ms() + int(timeout * 1000),
            request_id=request_id,
            preemptible=batch,
        )
        waiter = Waiter(asyncio.get_running_loop().create_future(), ticket, node.index, sub)
        self._waiting[ticket.id] = waiter
        waiting = self.metrics.waiting.labels(model, str(priority))
        waiting.inc()
        if batch:
            self._batch_waiting[model] = self._batch_waiting.get(model, 0) + 1
        try:
            await self._publish_first(waiter, timeout)
            if not batch and self.settings.preempt_after_s > 0:
                self.preemption.ask_later(waiter)
            return await asyncio.wait_for(waiter.fut, timeout)
        except TimeoutError:
            self._abandon(waiter)
            raise QueueTimeoutError(
                f"no replica of model '{model}' became free within {timeout:g} s",
                retry_after=self.settings.retry_after_s,
            ) from None
        except asyncio.CancelledError:
            self._abandon(waiter)
            raise
        finally:
            if waiter.timer is not None:
                waiter.timer.cancel()
            waiting.dec()
            if batch:
                self._batch_waiting[model] -= 1
            self._waiting.pop(waiter.ticket.id, None)

    def _first_untried(self, tried: set[int]) -> Node | None:
        """The first connected node not tried yet (a node that just failed may not know it is lost yet)."""
        return next((n for n in self.nodes.connected() if n.index not in tried), None)

    async def _publish_first(self, waiter: Waiter, ttl_s: float) -> None:
        """Publish on the waiter's node; if that fails as the node is lost, on the next node reached."""
        tried: set[int] = set()
        while True:
            node = self.nodes.nodes[waiter.node]
            tried.add(node.index)
            try:
                await self._publish_ticket(waiter.ticket, ttl_s, waiter.sub, node)
                return
            except BrokerUnavailableError:
                nxt = self._first_untried(tried)
                if nxt is None:
                    raise
                waiter.node = nxt.index

    async def _publish_ticket(self, ticket: Ticket, ttl_s: float, sub: int, node: Node) -> None:
        levels = (await self._shape(ticket.model, node)).levels
        assert node.link is not None
        await node.link.publish(
            protocol.model_queue(self.prefix, ticket.model, node.index),
            ticket.dumps(),
            priority=broker_priority(ticket.priority, min(sub, levels - 1), levels),
            correlation_id=ticket.id,
            reply_to=self._reply_name(node),
            expiration_s=ttl_s,
        )

    def _abandon(self, waiter: Waiter) -> None:
        """Tell every consumer to drop this ticket if they see it (fire and forget)."""
        node: Node | None = self.nodes.nodes[waiter.node]
        if node is None or not node.connected:
            node = self.nodes.first()
        if node is not None:
            self._tasks.spawn(self._publish_cancel(waiter.ticket.id, node), "cancel")

    async def _publish_cancel(self, ticket_id: str, node: Node) -> None:
        assert node.link is not None
        await node.link.publish(
            "",
            Cancel([ticket_id]).dumps(),
            exchange=protocol.cancel_exchange(self.prefix),
            message_type="cancel",
            expiration_s=self.settings.queue_timeout_s,
        )

    async def _on_grant(self, message: DeliveredMessage, node: Node) -> None:
        if message.header.properties.message_type == "preempted":
            self.preemption.on_notice(message.body)
            return
        grant = amqp.decode(Grant, message.body, "grant")
        if grant is None:
            return
        waiter = self._waiting.get(grant.ticket_id)
        if waiter is not None and not waiter.fut.done():
            self._held[grant.lease_id] = (grant, node.index)
            if grant.lease_ttl_s > 0:
                self._renewed[grant.lease_id] = time.monotonic()
                period = max(0.05, grant.lease_ttl_s / 6)
                if period < self._renew_period:
                    self._renew_period = period
                    self._renew_wakeup.set()  # the loop may be asleep for the old, longer period
            waiter.fut.set_result(grant)
            return
        log.info("grant for abandoned ticket %s released", grant.ticket_id, extra={"ticket_id": grant.ticket_id})
        await self.releases.send(grant, node.index, 499, "abandoned")

    async def release(self, grant: Grant, status: int, reason: str) -> None:
        held = self._held.pop(grant.lease_id, None)
        self.preemption.forget(grant.lease_id)
        await self.releases.send(grant, held[1] if held else 0, status, reason)

    def _route(self, grant: Grant, node: int) -> tuple[Node, str] | None:
        """Where a release or renewal of `grant` (made through `node`) goes: the control queue it
        names while that node is reached, else the consumer's control queue on a node still reached
        (from its heartbeats); None while there is none."""
        through = self.nodes.nodes[node] if node < len(self.nodes) else None
        if through is not None and through.connected:
            return through, grant.release_to
        return self._control_route(grant.url)

    def _control_route(self, url: str) -> tuple[Node, str] | None:
        """The control queue of the consumer at `url` on a node reached (from its heartbeats), or None."""
        controls = self._controls.get(url, [])
        for n in self.nodes.connected():
            if n.index < len(controls) and controls[n.index]:
                return n, controls[n.index]
        return None

    async def _renew_loop(self) -> None:
        """Keep the leases of long requests alive: every held lease is renewed at a third of its TTL,
        batched per consumer. A sender that dies stops renewing, and its leases expire."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._renew_wakeup.wait(), self._renew_period)
            self._renew_wakeup.clear()
            now = time.monotonic()
            due = []
            for grant, node in list(self._held.values()):
                last = self._renewed.get(grant.lease_id)
                if last is not None and now - last >= grant.lease_ttl_s / 3:
                    due.append((grant, node))
                    self._renewed[grant.lease_id] = now
            for lease_id in [k for k in self._renewed if k not in self._held]:
                del self._renewed[lease_id]
            await self._renew(due)

    async def _renew(self, held: list[tuple[Grant, int]]) -> None:
        """One Renew per consumer control queue for these leases."""
        batches: dict[tuple[int, str], list[str]] = {}
        for grant, node in held:
            route = self._route(grant, node)
            if route is not None:
                batches.setdefault((route[0].index, route[1]), []).append(grant.lease_id)
        for (index, control), lease_ids in batches.items():
            link = self.nodes.nodes[index].link
            if link is not None:
                with contextlib.suppress(BrokerUnavailableError):
                    await link.publish(control, Renew(lease_ids).dumps(), message_type="renew")

    async def _on_heartbeat(self, message: AbstractIncomingMessage) -> None:
        hb = amqp.decode(Heartbeat, message.body, "heartbeat")
        if hb is None:
            return
        self.registry.update(hb)
        self.preemption.heard(hb)
        controls = self._controls[hb.url] = hb.controls or [hb.control]  # protocol 2: node 0 only
        for control in controls:  # this consumer's own queues: a replica's URL outlives its consumers
            if control:
                self.releases.reads_batches[control] = hb.v >= protocol.RELEASES_SINCE
        if hb.control and self._epochs.get(hb.url) != hb.epoch:
            self._epochs[hb.url] = hb.epoch
            await self._confirm_leases(hb.url)
        self.metrics.replica_in_flight.labels(hb.model, hb.replica).set(hb.in_flight)
        self.metrics.replica_capacity.labels(hb.model, hb.replica).set(hb.max_concurrency)

    async def _confirm_leases(self, url: str) -> None:
        """A consumer (re)connected: renew at once the leases held there, before it reclaims them."""
        now = time.monotonic()
        held = [(g, n) for g, n in self._held.values() if g.url == url]
        if not held or not self.connected:
            return
        for grant, _ in held:
            self._renewed[grant.lease_id] = now
        await self._renew(held)
