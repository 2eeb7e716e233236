"""The consumer's side of batch lines giving way (protocol 5; the sender's is sender/preemption.py).

A sender whose ticket waits asks replicas that hold batch lines to make room (`Preempt`). This replica
acts only when its slots alone keep the ticket out (`consumer.policy.preemption_helps`). It then ends
the batch line of a lower priority that it granted last, which loses the least work, and tells that
line's sender (`Preempted`): the sender aborts the request (vLLM drops the sequence) and runs the line
again later. The freed slot pulls the head of the queue, which is that ticket or one of a higher
priority. At most one lease is ended per waiting ticket, and none for a ticket granted here already.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict

from consumer.leases import Lease, LeaseTable, remember
from consumer.policy import Limits, Snapshot, preemption_helps
from consumer.topology import Pull
from llm_dispatcher.protocol import Preempt, Preempted


class Preemption:
    def __init__(self, enabled: bool, leases: LeaseTable, limits: Limits):
        self.enabled = enabled
        self.leases = leases
        self.limits = limits
        self._served: OrderedDict[str, None] = OrderedDict()  # tickets a lease was ended for

    def victim_for(self, request: Preempt, now: Snapshot) -> Lease | None:
        """The lease to end for this ask (remembered as served), or None when ending one would not let
        the ticket in, when this ticket was served already, or when no batch line of a lower priority
        runs here."""
        if not self.enabled or request.ticket_id in self._served:
            return None
        if not preemption_helps(now, self.limits, request.priority):
            return None
        if self.leases.holds_ticket(request.ticket_id):
            return None  # granted here while the ask was on its way
        victim = self.leases.victim(request.priority)
        if victim is not None:
            remember(self._served, request.ticket_id)
        return victim


async def tell_holder(pulls: list[Pull], lease: Lease) -> None:
    """Tell the sender holding `lease` that it was ended, through the node it was granted on."""
    pull = pulls[lease.node] if lease.node < len(pulls) else None
    if pull is None or not pull.usable or not lease.reply_to:
        return  # the holder's node is gone: it finishes the line, and its release finds no lease
    with contextlib.suppress(Exception):
        await pull.link.publish(
            lease.reply_to,
            Preempted(lease.id, lease.ticket_id).dumps(),
            correlation_id=lease.ticket_id,
            message_type="preempted",
        )


__all__ = ["Preemption", "tell_holder"]
