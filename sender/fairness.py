"""Fair share within a priority band, on top of RabbitMQ's priority queue (FIFO within a level).

Each band (the token's priority) is split into `levels` broker priorities, the band's sub-levels: a
ticket's broker priority is `band * levels + sub`, so every sub-level of a band is above every one of
the band below (priorities between bands stay strict), and the queue is declared with
`x-max-priority = (max_priority + 1) * levels - 1`.

A new ticket's sub-level comes from what its fairness key (a token, or an end user within it) already
has outstanding at this sender — tickets waiting plus requests in flight, weighted by their estimated
cost in tokens: the less a key holds, the higher its ticket goes. A light user's tickets therefore
overtake a heavy user's backlog of the same band, while a key alone still gets every free slot (one
queue, the broker delivers whatever waits: work-conserving), and nothing is parked or held back in
the sender: thresholds keep reading the real queue, and a crash loses nothing the broker holds.

The scale is logarithmic in `quantum` (tokens): a key holding less than one quantum gets the top
sub-level, up to 3 quanta the next, up to 7 the next, and so on down to the band's lowest.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_MAX_TOKENS = 256  # the cost of a request that does not say how many tokens it wants
CHARS_PER_TOKEN = 4  # a prompt's cost is estimated from its bytes


def queue_max_priority(max_priority: int, levels: int) -> int:
    """The `x-max-priority` of a model queue whose bands 0..max_priority have `levels` sub-levels."""
    return (max_priority + 1) * levels - 1


def broker_priority(band: int, sub: int, levels: int) -> int:
    return band * levels + sub


def sub_level(outstanding: float, quantum: float, levels: int) -> int:
    """levels-1 (first) for a key holding under one quantum, one lower per doubling, 0 at the bottom."""
    if levels <= 1:
        return 0
    down = int(math.log2(1 + max(0.0, outstanding) / quantum))
    return levels - 1 - min(levels - 1, down)


def estimated_cost(body: bytes, payload: Mapping[str, Any]) -> int:
    """Tokens a request will cost: its prompt (from the body's size) plus the output it asks for."""
    wanted = payload.get("max_completion_tokens") or payload.get("max_tokens")
    out = wanted if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > 0 else DEFAULT_MAX_TOKENS
    return len(body) // CHARS_PER_TOKEN + out


@dataclass(frozen=True, slots=True)
class Share:
    """One request's place in the book: given back with `FairShare.leave` when it ends."""

    model: str
    band: int
    key: str
    cost: int
    sub: int


class FairShare:
    """Outstanding cost per (model, band, key) at this sender; no shared state, nothing to wait on.

    A key's own tickets keep their order: a new ticket never goes above the sub-level of the key's
    tickets still waiting (when some of its requests end, what it holds drops, and its next ticket
    would otherwise overtake its older ones, which then wait the longest)."""

    def __init__(self, levels: int, quantum: float):
        if levels < 1 or quantum <= 0:
            raise ValueError("levels must be >= 1 and quantum > 0")
        self.levels = levels
        self.quantum = quantum
        self._outstanding: dict[tuple[str, int, str], int] = {}
        self._waiting: dict[tuple[str, int, str], collections.Counter[int]] = {}  # sub-levels of waiting tickets

    def enter(self, model: str, band: int, key: str, cost: int) -> Share:
        """A new request of `key`: counted as held, and waiting, at its sub-level."""
        slot = (model, band, key)
        held = self._outstanding.get(slot, 0)
        self._outstanding[slot] = held + cost
        sub = sub_level(held, self.quantum, self.levels)
        waiting = self._waiting.setdefault(slot, collections.Counter())
        if waiting:
            sub = min(sub, min(waiting))
        waiting[sub] += 1
        return Share(model, band, key, cost, sub)

    def stop_waiting(self, share: Share) -> None:
        """Its ticket was granted, or given up: it no longer holds back the key's next ones."""
        slot = (share.model, share.band, share.key)
        waiting = self._waiting.get(slot)
        if waiting is None or not waiting[share.sub]:
            return
        waiting[share.sub] -= 1
        if not waiting[share.sub]:
            del waiting[share.sub]
        if not waiting:
            del self._waiting[slot]

    def leave(self, share: Share) -> None:
        slot = (share.model, share.band, share.key)
        left = self._outstanding.get(slot, 0) - share.cost
        if left > 0:
            self._outstanding[slot] = left
        else:
            self._outstanding.pop(slot, None)

    def outstanding(self, model: str, band: int, key: str) -> int:
        return self._outstanding.get((model, band, key), 0)

    def priority(self, share: Share) -> int:
        return broker_priority(share.band, share.sub, self.levels)
