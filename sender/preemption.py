"""The sender's side of batch lines giving way (protocol 5; the consumer's is consumer/preemption.py).

Asking: a non-batch ticket still waiting after `preempt_after_s` asks one replica whose heartbeat says
it holds batch-line leases to make room (a `Preempt` on its control queue), and asks again every
`preempt_after_s` while it waits, each time the next such replica. With none, it looks again ten
times less often, which keeps an overloaded sender quiet.

Hearing: a replica that ended one of this sender's batch lines says so (`Preempted` on the reply
queue). The line's relay registered how to abort it (`when_preempted`); a notice that comes between
the grant and the relay's start is remembered and the relay is aborted as it starts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from llm_dispatcher import amqp, protocol
from llm_dispatcher.errors import BrokerUnavailableError
from llm_dispatcher.nodes import Node
from llm_dispatcher.protocol import Heartbeat, Preempt, Preempted, Ticket
from llm_dispatcher.tasks import BackgroundTasks

if TYPE_CHECKING:
    from sender.dispatch import Waiter

_EARLY_MEMORY = 10_000  # notices remembered for lines not relaying yet (bounded)


class Preemption:
    def __init__(
        self,
        after_s: float,
        control_route: Callable[[str], tuple[Node, str] | None],
        is_held: Callable[[str], bool],
        tasks: BackgroundTasks,
    ):
        self.after_s = after_s
        self._control_route = control_route  # a consumer's URL -> a node and its control queue there
        self._is_held = is_held  # is this lease id granted to this sender and not released yet?
        self._tasks = tasks
        self._holders: dict[str, set[str]] = {}  # model -> consumers (URL) holding batch lines, by heartbeat
        self._aborts: dict[str, Callable[[], None]] = {}  # lease id -> what aborts its batch line
        self._early: dict[str, None] = {}  # ended before its line said how to abort it

    # -- which replicas hold batch lines ---------------------------------------------------------
    def heard(self, hb: Heartbeat) -> None:
        holders = self._holders.setdefault(hb.model, set())
        if hb.ready and hb.preemptible > 0 and hb.v >= protocol.PREEMPT_SINCE:
            holders.add(hb.url)
        else:
            holders.discard(hb.url)

    def keep_only(self, model: str, live_urls: set[str]) -> None:
        """Forget the holders of `model` whose heartbeats stopped."""
        self._holders.get(model, set()).intersection_update(live_urls)

    # -- asking for room -------------------------------------------------------------------------
    def ask_later(self, waiter: Waiter, period: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        waiter.timer = loop.call_later(period or self.after_s, self._ask_for_room, waiter)

    def _ask_for_room(self, waiter: Waiter) -> None:
        """The request has waited `after_s` (again): ask one replica whose slots batch lines hold to end
        one for it (the replica decides; it ends at most one lease per ticket). Each ask goes to the
        next such replica, so a replica that could not help is not asked twice in a row."""
        if waiter.fut.done():
            return
        ticket = waiter.ticket
        holders = self._holders.get(ticket.model)
        if not holders:  # no batch line runs there: look again less often (cheap under overload)
            self.ask_later(waiter, 10 * self.after_s)
            return
        candidates = sorted(holders)
        route = self._control_route(candidates[waiter.asks % len(candidates)])
        if route is not None:
            waiter.asks += 1
            self._tasks.spawn(self._publish(ticket, *route), "preempt")
        self.ask_later(waiter)

    async def _publish(self, ticket: Ticket, node: Node, control: str) -> None:
        assert node.link is not None
        with contextlib.suppress(BrokerUnavailableError):
            await node.link.publish(
                control,
                Preempt(ticket.id, ticket.priority).dumps(),
                message_type="preempt",
                expiration_s=max(1.0, 10 * self.after_s),  # stale asks are not acted on
            )

    # -- hearing that a batch line was ended ------------------------------------------------------
    def when_preempted(self, lease_id: str, abort: Callable[[], None] | None) -> None:
        """Call `abort` if the replica ends this (batch line's) lease for a higher-priority request, at
        once if it did so already (the notice may come right after the grant); None: no longer."""
        if abort is None:
            self._aborts.pop(lease_id, None)
        elif lease_id in self._early:
            del self._early[lease_id]
            abort()
        else:
            self._aborts[lease_id] = abort

    def on_notice(self, body: bytes) -> None:
        notice = amqp.decode(Preempted, body, "preempted")
        if notice is None:
            return
        abort = self._aborts.pop(notice.lease_id, None)
        if abort is not None:
            abort()
        elif self._is_held(notice.lease_id):  # granted, its line not relaying yet: it aborts when it starts
            if len(self._early) >= _EARLY_MEMORY:
                self._early.clear()
            self._early[notice.lease_id] = None

    def forget(self, lease_id: str) -> None:
        """The lease was released: a notice remembered for it is no longer needed."""
        self._early.pop(lease_id, None)

    @property
    def remembered(self) -> int:
        return len(self._early)


__all__ = ["Preemption"]
