"""The consumer of one vLLM replica: pulls tickets only while the replica can serve them well.

Pull-based balancing: while the policy says no, this consumer is not subscribed to the model queue
at all (basic.cancel), so tickets stay in the queue for replicas with room. A ticket that arrives
just as room runs out is handed back unacked (it keeps its place) after the subscription is cancelled.
The grant is published before the ticket is acked: a crash in between redelivers the ticket, and the
sender releases the second grant it did not wait for, so nothing is served twice and nothing is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import OrderedDict

from aio_pika.abc import AbstractIncomingMessage
from aiormq.abc import DeliveredMessage

from consumer.leases import LeaseTable, remember
from consumer.metrics import ConsumerMetrics
from consumer.policy import Decision, Limits, Reason, Snapshot, decide
from consumer.preemption import Preemption, tell_holder
from consumer.settings import ConsumerSettings
from consumer.topology import Pull, Topology
from consumer.watcher import VllmWatcher
from llm_dispatcher import amqp, protocol
from llm_dispatcher.errors import BrokerUnavailableError
from llm_dispatcher.nodes import Node, Nodes, broker_urls
from llm_dispatcher.protocol import (
    Cancel,
    Grant,
    Heartbeat,
    Preempt,
    Release,
    Releases,
    Renew,
    Ticket,
)
from llm_dispatcher.tasks import BackgroundTasks

log = logging.getLogger(__name__)


class Consumer:
    """Built by `await Consumer.create(settings)`: watching vLLM, connected and pulling when it returns."""

    def __init__(self, settings: ConsumerSettings, metrics: ConsumerMetrics):
        self.settings = settings
        self.metrics = metrics
        self.labels = (settings.model, settings.replica_id)
        self.limits = Limits(
            max_concurrency=settings.max_concurrency,
            max_waiting=settings.max_waiting,
            max_kv_cache_usage=settings.max_kv_cache_usage,
            min_tokens_per_second_per_user=settings.min_tokens_per_second_per_user,
            reserved_slots=settings.reserved_slots,
            reserved_min_priority=settings.reserved_min_priority,
        )
        self._hold_until = 0.0  # a low ticket at the head was refused for the reserve: look again then
        self._high_granted_at = -float("inf")  # the last grant of a ticket that may use the reserve
        self.leases = LeaseTable(settings.lease_ttl_s)
        self.watcher = VllmWatcher(
            settings.vllm_url,
            interval_s=settings.scrape_interval_s,
            stale_after_s=settings.metrics_stale_after_s,
            unhealthy_after_s=settings.unhealthy_after_s,
            on_change=self.poke,
            metrics=self.metrics,
            labels=self.labels,
        )
        self.draining = False
        self._epoch = 0  # bumped on every broker reconnect (and node loss), announced in heartbeats
        self._heartbeat_now = asyncio.Event()
        self._cancelled: OrderedDict[str, None] = OrderedDict()
        self.preemption = Preemption(settings.preempt_batch, self.leases, self.limits)
        self._gate_lock = asyncio.Lock()
        self._gate_wakeup = asyncio.Event()
        self._tasks = BackgroundTasks("consumer")
        st = settings
        base = f"{st.queue_prefix}.ctl.{st.replica_id}.{uuid.uuid4().hex[:8]}"
        self.nodes = Nodes(
            broker_urls(st.amqp_url.get_secret_value()),
            f"consumer:{st.queue_prefix}:{st.model}:{st.replica_id}",
            self._attach,
        )
        self.pulls = [Pull(n, base + (f".n{n.index}" if n.index else "")) for n in self.nodes]
        self.metrics.capacity.labels(*self.labels).set(settings.max_concurrency)
        self.nodes.on_lost(self._on_lost)
        self.nodes.on_restored(self._on_restored)

    @classmethod
    async def create(cls, settings: ConsumerSettings, metrics: ConsumerMetrics | None = None) -> Consumer:
        """Connected to at least one broker node (the others are connected in the background), or the
        error of the first node (the caller retries)."""
        st = settings
        self = cls(st, metrics or ConsumerMetrics())
        failures = await self.nodes.start()
        if len(failures) == len(self.nodes):
            await self.nodes.close()
            raise failures[0]
        try:
            await self.watcher.start()
        except BaseException:
            await self.nodes.close()
            raise
        self._tasks.spawn(self._gate_loop(), "gate")
        self._tasks.spawn(self._heartbeat_loop(), "heartbeat")
        self._tasks.spawn(self._expiry_loop(), "lease-expiry")
        self.poke()
        log.info(
            "consumer of %s for %s started (max_concurrency=%d)",
            st.model,
            st.advertise_url,
            st.max_concurrency,
            extra={"model": st.model, "replica": st.replica_id},
        )
        return self

    async def _attach(self, node: Node) -> None:
        """A node's first connection: the model queue there, the exchanges, the control queue."""
        pull = self.pulls[node.index]
        link = pull.link
        await link.channel.set_qos(prefetch_count=1)
        pull.prefetch = 1
        pull.topology = await Topology.declare(link, self.settings, pull.control_name, node.index)
        link.channel.return_callbacks.add(self._on_returned)  # type: ignore[arg-type]
        await self._consume_control(pull)
        self._heartbeat_now.set()
        self.poke()

    async def _consume_control(self, pull: Pull) -> None:
        """A release per request arrives here: consumed straight on the aiormq channel, without aio-pika's
        message objects (aio-pika restores the control queue after a reconnect; this subscription is
        renewed in _on_restored, as the model queue's is by the gate)."""
        raw = await pull.link.raw()
        await raw.basic_consume(pull.control_name, self._on_control, no_ack=True)

    @property
    def connected(self) -> bool:
        return self.nodes.any_connected

    @property
    def pulling(self) -> bool:
        return any(p.tag is not None for p in self.pulls)

    # -- state ---------------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return len(self.leases)

    @property
    def ready(self) -> bool:
        return self.connected and self.watcher.healthy and not self.draining

    def snapshot(self) -> Snapshot:
        w = self.watcher
        s = w.latest
        return Snapshot(
            healthy=w.healthy,
            in_flight=self.in_flight,
            metrics_fresh=w.metrics_fresh,
            running=s.running if s else None,
            waiting=s.waiting if s else None,
            kv_cache_usage=s.kv_cache_usage if s else None,
            tokens_per_second=w.tokens_per_second,
            draining=self.draining,
            reserve_held=self.reserve_held,
        )

    @property
    def reserve_held(self) -> bool:
        """Are the reserved slots kept for high priority now? Always, unless reserved_hold_s is set: then
        only that long after the last high-priority grant (a batch alone may fill the whole replica)."""
        hold = self.settings.reserved_hold_s
        return hold == 0 or time.monotonic() - self._high_granted_at < hold

    def decide(self, priority: int | None = None) -> Decision:
        return decide(self.snapshot(), self.limits, priority)

    def _holding_for_reserve(self) -> bool:
        """In the reserved slots, after the head of the queue was a low ticket: wait a moment before
        looking at the head again (a high ticket may arrive), instead of fetching the same one in a loop."""
        lim = self.limits
        return (
            lim.reserved_slots > 0
            and self.reserve_held
            and self.in_flight >= lim.max_concurrency - lim.reserved_slots
            and time.monotonic() < self._hold_until
        )

    def poke(self) -> None:
        """Something changed (release, scrape, health): re-run the gate soon."""
        self._gate_wakeup.set()

    # -- life cycle ----------------------------------------------------------------------------
    async def drain(self, grace_s: float | None = None) -> None:
        """Stop pulling, tell the senders, let granted requests finish (up to the grace period)."""
        self.draining = True
        self.poke()
        await self._set_pulling(False)
        with contextlib.suppress(Exception):
            await self._publish_heartbeat()
        deadline = time.monotonic() + (self.settings.shutdown_grace_s if grace_s is None else grace_s)
        while self.in_flight and time.monotonic() < deadline:  # noqa: ASYNC110 - leases end on other tasks
            await asyncio.sleep(0.05)
        if self.in_flight:
            log.warning("shutting down with %d requests still granted", self.in_flight)

    async def stop(self) -> None:
        """Leave: cancel the subscription (unacked tickets return to the queue), say goodbye, close."""
        self.draining = True

        await self._tasks.cancel()
        with contextlib.suppress(Exception):
            await self._set_pulling(False)
        with contextlib.suppress(Exception):
            await self._publish_heartbeat()  # ready=False: senders stop routing here at once
        await self.nodes.close()
        await self.watcher.stop()

    def _on_lost(self, node: Node) -> None:
        """The broker forgot the subscription with the channel. With other nodes still reached, a grant
        sent through this one may have been lost with it: the leases are put in doubt now, and the
        heartbeat through another node asks the senders to confirm theirs."""
        pull = self.pulls[node.index]
        pull.tag = pull.raw = None
        self.metrics.pulling.labels(*self.labels).set(1 if self.pulling else 0)
        if self.nodes.any_connected:
            self._reconcile()

    def _on_restored(self, node: Node) -> None:
        """Releases sent while the broker was away are lost: every lease is in doubt until its sender
        renews it (senders renew at once when a heartbeat shows the new epoch); the rest expire."""
        pull = self.pulls[node.index]
        if pull.topology is not None:
            self._tasks.spawn(self._consume_control(pull), "consume-control")
        self._reconcile()

    def _reconcile(self) -> None:
        self._epoch += 1
        grace = self.settings.lease_reconcile_s
        doubtful = self.leases.doubt(grace)
        log.info("%d leases to be confirmed within %g s", doubtful, grace)
        asyncio.get_running_loop().call_later(grace + 0.05, self._expire_leases)
        self._heartbeat_now.set()
        self.poke()

    # -- the gate: subscribe while the policy admits, cancel otherwise -------------------------
    async def _gate_loop(self) -> None:
        while True:
            await self._gate_wakeup.wait()
            self._gate_wakeup.clear()
            decision = self.decide()
            try:
                await self._set_pulling(decision.admit and self.connected and not self._holding_for_reserve())
            except Exception as exc:  # broker away: the next poke (at least every scrape) retries
                log.warning("gate could not %s: %r", "subscribe" if decision.admit else "cancel", exc)
                await asyncio.sleep(self.settings.scrape_interval_s)
                self.poke()

    async def _set_pulling(self, on: bool) -> None:
        """Subscribe to the model queue on every node reached (cancel everywhere when `on` is False)."""
        async with self._gate_lock:
            errors = []
            for pull in self.pulls:
                try:
                    await self._set_pulling_at(pull, on and pull.usable)
                except Exception as exc:
                    errors.append(exc)
            self.metrics.pulling.labels(*self.labels).set(1 if self.pulling else 0)
            if errors:
                raise errors[0]

    async def _set_pulling_at(self, pull: Pull, on: bool) -> None:
        if on and pull.tag is None:
            assert pull.topology is not None
            # Never ask for more tickets than there is room for: what arrives can be granted at
            # once, so a small prefetch costs no priority inversion and parks nothing.
            room = self.limits.max_concurrency - self.in_flight
            prefetch = max(1, min(self.settings.prefetch, room))
            if prefetch != pull.prefetch:
                await pull.link.channel.set_qos(prefetch_count=prefetch)
                pull.prefetch = prefetch
            # Straight on the aiormq channel (the hot path); after a reconnect the gate subscribes anew.
            raw = await pull.link.raw()
            ok = await raw.basic_consume(pull.topology.queue.name, lambda m: self._on_ticket(m, pull))
            pull.tag, pull.raw = ok.consumer_tag, raw
        elif not on and pull.tag is not None:
            tag, pull.tag = pull.tag, None
            if pull.raw is not None and not pull.raw.is_closed:
                await pull.raw.basic_cancel(tag)

    # -- tickets -------------------------------------------------------------------------------
    async def _on_ticket(self, message: DeliveredMessage, pull: Pull) -> None:
        m, lab = self.metrics, self.labels
        channel = message.channel
        tag: int = message.delivery.delivery_tag  # type: ignore[union-attr,assignment]  # a Deliver here
        ticket = amqp.decode(Ticket, message.body, "ticket")
        if ticket is None:
            m.dropped.labels(*lab, "malformed").inc()
            await channel.basic_reject(tag, requeue=False)
            return
        stale = self._stale(ticket)
        if stale is not None:
            m.dropped.labels(*lab, stale).inc()
            await channel.basic_ack(tag)
            return
        if not self._admits(ticket):
            # Stop the broker pushing more, then hand this one back: it keeps its place in the queue.
            await self._set_pulling(False)
            await channel.basic_nack(tag, requeue=True)
            m.returned.labels(*lab).inc()
            self.poke()
            return
        await self._grant(ticket, message, tag, pull)

    def _stale(self, ticket: Ticket) -> str | None:
        """Why a ticket is dropped unserved ("cancelled": its sender gave up; "expired"), or None."""
        if ticket.id in self._cancelled:
            return "cancelled"
        if ticket.expired():
            return "expired"
        return None

    def _admits(self, ticket: Ticket) -> bool:
        decision = self.decide(ticket.priority)
        self.metrics.decisions.labels(*self.labels, decision.reason.value).inc()
        if decision.reason is Reason.RESERVED:
            recheck = min(0.2, self.settings.scrape_interval_s)
            self._hold_until = time.monotonic() + recheck
            asyncio.get_running_loop().call_later(recheck, self.poke)
        return decision.admit

    async def _grant(self, ticket: Ticket, message: DeliveredMessage, tag: int, pull: Pull) -> None:
        """Lease a slot, publish the grant to the ticket's sender, then ack the ticket (a crash in
        between redelivers it, and the sender releases the grant it no longer waits for)."""
        m, lab = self.metrics, self.labels
        reply_to = message.header.properties.reply_to or ""
        lease = self.leases.grant(
            ticket.id, ticket.priority, preemptible=ticket.preemptible, reply_to=reply_to, node=pull.node.index
        )
        if ticket.preemptible and self.leases.preemptible == 1:
            self._heartbeat_now.set()  # senders ask only replicas that say they hold preemptible leases
        if ticket.priority >= self.limits.reserved_min_priority:
            self._high_granted_at = time.monotonic()
        m.in_flight.labels(*lab).set(self.in_flight)
        grant = Grant(
            ticket_id=ticket.id,
            lease_id=lease.id,
            url=self.settings.advertise_url,
            replica=self.settings.replica_id,
            release_to=pull.control_name,
            forward_priority=self.settings.forward_priority,
            lease_ttl_s=self.settings.lease_ttl_s,
        )
        try:
            await pull.link.publish(reply_to, grant.dumps(), correlation_id=ticket.id, mandatory=True)
        except Exception:
            log.exception("could not send grant; ticket goes back to the queue", extra={"ticket_id": ticket.id})
            self._end_lease(lease.id, "grant_failed")
            with contextlib.suppress(Exception):
                await message.channel.basic_nack(tag, requeue=True)
            return
        await message.channel.basic_ack(tag)
        m.grants.labels(*lab).inc()
        log.debug(
            "granted %s (lease %s)",
            ticket.id,
            lease.id,
            extra={"ticket_id": ticket.id, "lease_id": lease.id, "request_id": ticket.request_id},
        )
        if self.in_flight >= self.limits.max_concurrency:
            self.poke()

    def _on_returned(self, message: AbstractIncomingMessage) -> None:
        """A grant came back unroutable: its sender is gone. Free the slot."""
        grant = amqp.decode(Grant, message.body, "returned grant")
        if grant is None:
            return
        self.metrics.dropped.labels(*self.labels, "sender_gone").inc()
        self._end_lease(grant.lease_id, "sender_gone")

    async def _on_control(self, message: DeliveredMessage) -> None:
        kind = message.header.properties.message_type
        try:
            if kind == "releases":
                for lease_id, reason in Releases.loads(message.body).ended():
                    self._end_lease(lease_id, reason)
            elif kind == "release":
                release = Release.loads(message.body)
                self._end_lease(release.lease_id, release.reason)
            elif kind == "renew":
                for lease_id in Renew.loads(message.body).lease_ids:
                    self.leases.renew(lease_id)
            elif kind == "cancel":
                for ticket_id in Cancel.loads(message.body).ticket_ids:
                    remember(self._cancelled, ticket_id)
            elif kind == "preempt":
                self._preempt(Preempt.loads(message.body))
            else:
                log.warning("unknown control message type %r", kind)
        except Exception:
            log.exception("bad control message dropped")

    def _preempt(self, request: Preempt) -> None:
        """A ticket of `request.priority` waits somewhere: end a batch line here if that lets it in
        (consumer/preemption.py)."""
        if request.ticket_id in self._cancelled:
            return
        victim = self.preemption.victim_for(request, self.snapshot())
        if victim is None:
            return
        self._end_lease(victim.id, "preempted")
        log.info(
            "lease %s (priority %d) ended for ticket %s (priority %d)",
            victim.id,
            victim.priority,
            request.ticket_id,
            request.priority,
            extra={"lease_id": victim.id, "ticket_id": request.ticket_id},
        )
        self._tasks.spawn(tell_holder(self.pulls, victim), "preempted")

    def _end_lease(self, lease_id: str, reason: str) -> None:
        if self.leases.release(lease_id) is None:
            return
        self.metrics.releases.labels(*self.labels, reason).inc()
        self.metrics.in_flight.labels(*self.labels).set(self.in_flight)
        self.poke()

    # -- background loops ----------------------------------------------------------------------
    async def _expiry_loop(self) -> None:
        period = min(5.0, max(0.1, self.settings.lease_ttl_s / 4))
        while True:
            await asyncio.sleep(period)
            self._expire_leases()

    def _expire_leases(self) -> None:
        for lease in self.leases.expire():
            log.warning("lease %s expired unreleased", lease.id, extra={"lease_id": lease.id})
            self.metrics.releases.labels(*self.labels, "expired").inc()
        self.metrics.in_flight.labels(*self.labels).set(self.in_flight)
        self.poke()

    async def _heartbeat_loop(self) -> None:
        while True:
            try:
                await self._publish_heartbeat()
            except Exception as exc:
                log.debug("heartbeat not sent: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._heartbeat_now.wait(), self.settings.heartbeat_interval_s)
            self._heartbeat_now.clear()

    async def _publish_heartbeat(self) -> None:
        """Through the first node reached (an exchange of a cluster reaches every node's queues)."""
        node = self.nodes.first()
        if node is None or node.link is None:
            raise BrokerUnavailableError("the message broker is unreachable")
        controls = [p.control_name if p.usable else "" for p in self.pulls]
        st, s = self.settings, self.watcher.latest
        hb = Heartbeat(
            model=st.model,
            replica=st.replica_id,
            url=st.advertise_url,
            ready=self.ready,
            max_concurrency=st.max_concurrency,
            in_flight=self.in_flight,
            interval_s=st.heartbeat_interval_s,
            max_model_len=self.watcher.max_model_len,
            running=s.running if s else None,
            waiting=s.waiting if s else None,
            kv_cache_usage=s.kv_cache_usage if s else None,
            tokens_per_second=self.watcher.tokens_per_second,
            admission=self.decide().reason.value,
            control=next((c for c in controls if c), ""),
            epoch=self._epoch,
            controls=controls if len(controls) > 1 else [],
            preemptible=self.leases.preemptible,
        )
        await node.link.publish(
            "",
            hb.dumps(),
            exchange=protocol.heartbeat_exchange(st.queue_prefix),
            expiration_s=max(1.0, st.heartbeat_interval_s * 3),
        )

    def state(self) -> dict:
        d = self.decide()
        return {
            "model": self.settings.model,
            "replica": self.settings.replica_id,
            "url": self.settings.advertise_url,
            "ready": self.ready,
            "pulling": self.pulling,
            "broker_nodes": [n.connected for n in self.nodes],
            "in_flight": self.in_flight,
            "max_concurrency": self.limits.max_concurrency,
            "decision": d.reason.value,
            "vllm_healthy": self.watcher.healthy,
            "metrics_fresh": self.watcher.metrics_fresh,
            "tokens_per_second": self.watcher.tokens_per_second,
        }


__all__ = ["Consumer"]
