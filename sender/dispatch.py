"""The sender's side of the broker: tickets out, grants in, releases and cancels out, heartbeats in.

One future per waiting request, keyed by ticket id and removed when the wait ends however it ends
(so a cancelled wait never leaks). A grant nobody waits for any more (client gone, timed out, or a
redelivered ticket granted twice) is released at once, so it never holds a slot.

Releases are never dropped on a send failure: they wait (bounded) and go out after the reconnect. A
release that the broker lost anyway (it died with it in a buffer) is covered by the consumer: after
its own reconnect it reclaims every lease no sender renews, and this sender renews the leases it
still holds as soon as a consumer's heartbeat shows that new connection epoch.

A broker that is down when the sender starts does not stop it: the dispatcher is made unconnected
(`connected` False: /readyz 503, requests 503 with Retry-After) and connects in the background,
retrying, so that a whole release started in any order converges by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque

import aiormq
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

from llm_dispatcher import amqp, protocol
from llm_dispatcher.errors import BrokerUnavailableError, QueueTimeoutError
from llm_dispatcher.protocol import Cancel, Grant, Heartbeat, Release, Renew, Ticket
from sender.fairness import broker_priority
from sender.metrics import SenderMetrics
from sender.registry import Registry
from sender.settings import SenderSettings

log = logging.getLogger(__name__)

MAX_PENDING_RELEASES = 100_000  # beyond that the consumers' reconciliation reclaims the leases
CONNECT_TIMEOUT_S = 10.0  # one start-up connection attempt (a node still booting may accept and not answer)
CONNECT_RETRY_MAX_S = 5.0  # start-up retries back off from 0.5 s to this
STILL_DOWN_LOG_S = 30.0  # while the broker stays unreachable at start, a warning this often

# What a start-up connection attempt raises when the broker is not there (yet): retried.
_UNREACHABLE = (OSError, aiormq.exceptions.AMQPError, asyncio.TimeoutError, RuntimeError)


class Dispatcher:
    """Built by `await Dispatcher.create(...)`: connected, subscribed and running when it returns, or,
    when the broker is unreachable then, not connected and connecting in the background."""

    link: amqp.BrokerLink  # set once the first connection is made (`_attached`)
    cancels: AbstractExchange

    def __init__(self, settings: SenderSettings, registry: Registry, metrics: SenderMetrics):
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.prefix = settings.queue_prefix
        self._attached = False
        self._connecting: asyncio.Task | None = None
        self._reply_name = f"{self.prefix}.reply.{uuid.uuid4().hex}"
        self._waiting: dict[str, asyncio.Future[Grant]] = {}
        self._batch_waiting: dict[str, int] = {}  # model -> this sender's batch-line tickets in its queue
        self._depth_calls: dict[str, asyncio.Future[int]] = {}
        # model -> (monotonic time, depth, this sender's batch tickets published before that reading)
        self._depth_seen: dict[str, tuple[float, int, int]] = {}
        self._held: dict[str, Grant] = {}  # lease id -> grant, while the request is being proxied
        self._renewed: dict[str, float] = {}  # lease id -> when it was granted or last renewed
        self._renew_period = 1.0  # at most a sixth of the shortest lease TTL seen
        self._renew_wakeup = asyncio.Event()
        self._pending_releases: deque[tuple[Grant, int, str]] = deque(maxlen=MAX_PENDING_RELEASES)
        self._flush_task: asyncio.Task | None = None
        self._epochs: dict[str, int] = {}  # consumer control queue -> its connection epoch, from heartbeats
        self._shapes: dict[str, amqp.QueueShape] = {}  # model -> how its queue is declared, found once

    @classmethod
    async def create(cls, settings: SenderSettings, registry: Registry, metrics: SenderMetrics) -> Dispatcher:
        self = cls(settings, registry, metrics)
        try:
            await self._connect()
        except _UNREACHABLE as exc:
            log.warning("the message broker is unreachable (%r): not ready; connecting in the background", exc)
            self._connecting = asyncio.get_running_loop().create_task(self._connect_until_up(), name="broker-connect")
        return self

    async def _connect(self) -> None:
        """One attempt: connect, declare, subscribe. Once it succeeded, aio-pika's robust connection
        restores all of it after every later loss."""
        st, prefix = self.settings, self.prefix
        link = await asyncio.wait_for(
            amqp.BrokerLink.open(
                st.amqp_url.get_secret_value(), f"sender:{self._reply_name}", retry_after_s=st.retry_after_s
            ),
            CONNECT_TIMEOUT_S,
        )
        try:
            channel = link.channel
            self.link = link
            self.cancels = await amqp.declare_fanout(channel, protocol.cancel_exchange(prefix))
            heartbeats = await amqp.declare_fanout(channel, protocol.heartbeat_exchange(prefix))
            await channel.declare_queue(self._reply_name, exclusive=True, auto_delete=True)
            await self._consume_replies()
            hb_name = f"{prefix}.hb.{uuid.uuid4().hex}"
            hb_queue = await channel.declare_queue(hb_name, exclusive=True, auto_delete=True)
            await hb_queue.bind(heartbeats)
            await hb_queue.consume(self._on_heartbeat, no_ack=True)
        except BaseException:
            await link.close()
            raise
        link.on_lost(self._on_lost)
        link.on_restored(self._on_restored)
        link.spawn(self._depth_loop(), "queue-depth")
        link.spawn(self._renew_loop(), "lease-renewal")
        self._attached = True

    async def _connect_until_up(self) -> None:
        """Start-up retries while the broker is unreachable, backing off to CONNECT_RETRY_MAX_S."""
        started = last_log = time.monotonic()
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect()
            except _UNREACHABLE as exc:
                delay = min(CONNECT_RETRY_MAX_S, delay * 2)
                if time.monotonic() - last_log >= STILL_DOWN_LOG_S:
                    last_log = time.monotonic()
                    log.warning("the message broker is still unreachable after %.0f s: %r", last_log - started, exc)
                continue
            log.info("connected to the message broker after %.1f s", time.monotonic() - started)
            return

    @property
    def connected(self) -> bool:
        return self._attached and self.link.connected

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        if self._attached:
            await self.link.close()
        self._fail_waiting("the sender is shutting down")

    # -- connection events ---------------------------------------------------------------------
    def _on_lost(self) -> None:
        self._fail_waiting("the message broker connection was lost")

    async def _consume_replies(self) -> None:
        """Grants arrive on the hot path: consumed straight on the aiormq channel (aio-pika restores
        the reply queue itself after a reconnect; this subscription is renewed in _on_restored)."""
        raw = await self.link.raw()
        await raw.basic_consume(self._reply_name, self._on_grant, no_ack=True)

    def _on_restored(self) -> None:
        self._shapes.clear()  # a broker that lost its queues declares them anew
        self.link.spawn(self._consume_replies(), "consume-replies")
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._pending_releases and (self._flush_task is None or self._flush_task.done()):
            self._flush_task = self.link.spawn(self._flush_releases(), "flush-releases")

    async def _flush_releases(self) -> None:
        """Releases that could not be sent, sent again once consumers have re-subscribed."""
        await asyncio.sleep(1.0)
        if not self.connected:
            return  # the next reconnect schedules it again
        pending = list(self._pending_releases)
        self._pending_releases.clear()
        for grant, status, reason in pending:
            await self.release(grant, status, reason)

    def _fail_waiting(self, why: str) -> None:
        for fut in list(self._waiting.values()):
            if not fut.done():
                fut.set_exception(BrokerUnavailableError(why, retry_after=self.settings.retry_after_s))

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
        if not self.connected:
            raise BrokerUnavailableError("the message broker is unreachable", retry_after=self.settings.retry_after_s)
        shape = await self._shape(model)
        channel = await self.link.raw()
        batch_then = self.batch_waiting(model)
        with amqp.broker_errors(self.settings.retry_after_s):
            ok = await channel.queue_declare(
                protocol.model_queue(self.prefix, model),
                durable=True,
                passive=shape.arguments is None,
                arguments=shape.arguments,
            )
        count = ok.message_count or 0
        self._depth_seen[model] = (time.monotonic(), count, batch_then)
        self.metrics.queue_depth.labels(model).set(count)
        return count

    async def _shape(self, model: str) -> amqp.QueueShape:
        shape = self._shapes.get(model)
        if shape is None:
            st = self.settings
            with amqp.broker_errors(st.retry_after_s):
                shape = await amqp.model_queue_shape(
                    self.link.connection, self.prefix, model, st.max_priority, st.fair_levels
                )
            self._shapes[model] = shape
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
                self.metrics.replicas_live.labels(model).set(len(self.registry.live(model)))

    # -- tickets and grants --------------------------------------------------------------------
    async def acquire(
        self, model: str, priority: int, request_id: str = "", *, batch: bool = False, sub: int = 0
    ) -> Grant:
        """Wait for a replica of `model`, at band `priority` and fair-share sub-level `sub` (see
        sender/fairness.py). Raises QueueTimeoutError, BrokerUnavailableError; a cancellation (client
        gone) abandons the ticket so that no consumer grants it."""
        timeout = self.settings.queue_timeout_s
        if not self._attached:  # never connected yet (started while the broker was down)
            raise BrokerUnavailableError("the message broker is unreachable", retry_after=self.settings.retry_after_s)
        ticket = Ticket(
            id=uuid.uuid4().hex,
            model=model,
            priority=priority,
            deadline_ms=protocol.now_ms() + int(timeout * 1000),
            request_id=request_id,
        )
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiting[ticket.id] = fut
        waiting = self.metrics.waiting.labels(model, str(priority))
        waiting.inc()
        if batch:
            self._batch_waiting[model] = self._batch_waiting.get(model, 0) + 1
        try:
            await self._publish_ticket(ticket, timeout, sub)
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            self._abandon(ticket.id)
            raise QueueTimeoutError(
                f"no replica of model '{model}' became free within {timeout:g} s",
                retry_after=self.settings.retry_after_s,
            ) from None
        except asyncio.CancelledError:
            self._abandon(ticket.id)
            raise
        finally:
            waiting.dec()
            if batch:
                self._batch_waiting[model] -= 1
            self._waiting.pop(ticket.id, None)

    async def _publish_ticket(self, ticket: Ticket, ttl_s: float, sub: int = 0) -> None:
        levels = (await self._shape(ticket.model)).levels
        await self.link.publish(
            protocol.model_queue(self.prefix, ticket.model),
            ticket.dumps(),
            priority=broker_priority(ticket.priority, min(sub, levels - 1), levels),
            correlation_id=ticket.id,
            reply_to=self._reply_name,
            expiration_s=ttl_s,
        )

    def _abandon(self, ticket_id: str) -> None:
        """Tell every consumer to drop this ticket if they see it (fire and forget)."""
        if self.connected:
            self.link.spawn(self._publish_cancel(ticket_id), "cancel")

    async def _publish_cancel(self, ticket_id: str) -> None:
        await self.link.publish(
            "",
            Cancel([ticket_id]).dumps(),
            exchange=self.cancels.name,
            message_type="cancel",
            expiration_s=self.settings.queue_timeout_s,
        )

    async def _on_grant(self, message: DeliveredMessage) -> None:
        grant = amqp.decode(Grant, message.body, "grant")
        if grant is None:
            return
        fut = self._waiting.get(grant.ticket_id)
        if fut is not None and not fut.done():
            self._held[grant.lease_id] = grant
            if grant.lease_ttl_s > 0:
                self._renewed[grant.lease_id] = time.monotonic()
                period = max(0.05, grant.lease_ttl_s / 6)
                if period < self._renew_period:
                    self._renew_period = period
                    self._renew_wakeup.set()  # the loop may be asleep for the old, longer period
            fut.set_result(grant)
            return
        log.info("grant for abandoned ticket %s released", grant.ticket_id, extra={"ticket_id": grant.ticket_id})
        await self.release(grant, 499, "abandoned")

    async def release(self, grant: Grant, status: int, reason: str) -> None:
        self._held.pop(grant.lease_id, None)
        if self.connected:
            try:
                await self.link.publish(
                    grant.release_to, Release(grant.lease_id, status, reason).dumps(), message_type="release"
                )
                return
            except Exception as exc:  # whatever the failure, the release is kept, never dropped
                log.warning("release of lease %s not sent, kept for after the reconnect: %r", grant.lease_id, exc)
        if len(self._pending_releases) == self._pending_releases.maxlen:
            self.metrics.releases_dropped.inc()  # the consumer's reconciliation reclaims it
        self._pending_releases.append((grant, status, reason))
        if self.connected:
            self._schedule_flush()  # the channel failed under a live connection flag: retry soon

    async def _renew_loop(self) -> None:
        """Keep the leases of long requests alive: every held lease is renewed at a third of its TTL,
        batched per consumer. A sender that dies stops renewing, and its leases expire."""
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._renew_wakeup.wait(), self._renew_period)
            self._renew_wakeup.clear()
            now = time.monotonic()
            due: dict[str, list[str]] = {}
            for grant in list(self._held.values()):
                last = self._renewed.get(grant.lease_id)
                if last is not None and now - last >= grant.lease_ttl_s / 3:
                    due.setdefault(grant.release_to, []).append(grant.lease_id)
                    self._renewed[grant.lease_id] = now
            for lease_id in [k for k in self._renewed if k not in self._held]:
                del self._renewed[lease_id]
            for release_to, lease_ids in due.items():
                with contextlib.suppress(BrokerUnavailableError):
                    await self.link.publish(release_to, Renew(lease_ids).dumps(), message_type="renew")

    async def _on_heartbeat(self, message: AbstractIncomingMessage) -> None:
        hb = amqp.decode(Heartbeat, message.body, "heartbeat")
        if hb is None:
            return
        self.registry.update(hb)
        if hb.control and self._epochs.get(hb.control) != hb.epoch:
            self._epochs[hb.control] = hb.epoch
            await self._confirm_leases(hb.control)
        self.metrics.replica_in_flight.labels(hb.model, hb.replica).set(hb.in_flight)
        self.metrics.replica_capacity.labels(hb.model, hb.replica).set(hb.max_concurrency)

    async def _confirm_leases(self, control: str) -> None:
        """A consumer (re)connected: renew at once the leases held there, before it reclaims them."""
        now = time.monotonic()
        held = [g.lease_id for g in self._held.values() if g.release_to == control]
        if not held or not self.connected:
            return
        for lease_id in held:
            self._renewed[lease_id] = now
        with contextlib.suppress(BrokerUnavailableError):
            await self.link.publish(control, Renew(held).dumps(), message_type="renew")
