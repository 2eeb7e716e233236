"""Exact in-flight accounting: one lease per grant, ended by a release or by expiry."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

_TICKET_MEMORY = 100_000  # ticket ids remembered (abandoned, or a lease was ended for them), at most


def remember(seen: OrderedDict[str, None], ticket_id: str) -> None:
    """Add to a bounded memory of ticket ids (the oldest forgotten first)."""
    seen[ticket_id] = None
    while len(seen) > _TICKET_MEMORY:
        seen.popitem(last=False)


@dataclass(slots=True)
class Lease:
    id: str
    ticket_id: str
    granted_at: float
    expires_at: float
    priority: int = 0
    preemptible: bool = False  # a batch line's: may be ended for a higher-priority ticket
    reply_to: str = ""  # where its holder hears that it was (the sender's reply queue) ...
    node: int = 0  # ... through this broker node


class LeaseTable:
    def __init__(self, ttl_s: float, clock=time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._leases: dict[str, Lease] = {}
        self._tickets: dict[str, int] = {}  # ticket id -> its leases (two when a redelivered ticket is granted again)
        self.preemptible = 0  # how many of the leases are preemptible

    def __len__(self) -> int:
        return len(self._leases)

    def grant(
        self, ticket_id: str, priority: int = 0, *, preemptible: bool = False, reply_to: str = "", node: int = 0
    ) -> Lease:
        now = self._clock()
        lease = Lease(uuid.uuid4().hex, ticket_id, now, now + self.ttl_s, priority, preemptible, reply_to, node)
        self._leases[lease.id] = lease
        self._tickets[ticket_id] = self._tickets.get(ticket_id, 0) + 1
        if preemptible:
            self.preemptible += 1
        return lease

    def holds_ticket(self, ticket_id: str) -> bool:
        return ticket_id in self._tickets

    def victim(self, below_priority: int) -> Lease | None:
        """The lease to end for a ticket of `below_priority`: the preemptible one of a lower priority
        granted last (the least work lost), lowest priority first; None when there is none."""
        candidates = [lease for lease in self._leases.values() if lease.preemptible and lease.priority < below_priority]
        return max(candidates, key=lambda lease: (-lease.priority, lease.granted_at), default=None)

    def release(self, lease_id: str) -> Lease | None:
        """The lease, or None when it was unknown (already released, expired, or another replica's)."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        if lease.preemptible:
            self.preemptible -= 1
        held = self._tickets.pop(lease.ticket_id) - 1
        if held:
            self._tickets[lease.ticket_id] = held
        return lease

    def renew(self, lease_id: str) -> bool:
        lease = self._leases.get(lease_id)
        if lease is None:
            return False
        lease.expires_at = self._clock() + self.ttl_s
        return True

    def doubt(self, grace_s: float) -> int:
        """Every lease must be renewed or released within `grace_s` or it expires (after a broker
        reconnect, when a release may have been lost). Returns how many leases are in doubt."""
        deadline = self._clock() + grace_s
        for lease in self._leases.values():
            lease.expires_at = min(lease.expires_at, deadline)
        return len(self._leases)

    def expire(self) -> list[Lease]:
        now = self._clock()
        gone = [lease for lease in self._leases.values() if lease.expires_at <= now]
        for lease in gone:
            self.release(lease.id)
        return gone
