"""Exact in-flight accounting: one lease per grant, ended by a release or by expiry."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass


@dataclass(slots=True)
class Lease:
    id: str
    ticket_id: str
    granted_at: float
    expires_at: float


class LeaseTable:
    def __init__(self, ttl_s: float, clock=time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._leases: dict[str, Lease] = {}

    def __len__(self) -> int:
        return len(self._leases)

    def grant(self, ticket_id: str) -> Lease:
        now = self._clock()
        lease = Lease(uuid.uuid4().hex, ticket_id, now, now + self.ttl_s)
        self._leases[lease.id] = lease
        return lease

    def release(self, lease_id: str) -> Lease | None:
        """The lease, or None when it was unknown (already released, expired, or another replica's)."""
        return self._leases.pop(lease_id, None)

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
            del self._leases[lease.id]
        return gone
