"""Live replicas per model, from consumer heartbeats (no management API)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from llm_dispatcher.protocol import Heartbeat


@dataclass(slots=True)
class Replica:
    heartbeat: Heartbeat
    seen_at: float


class Registry:
    def __init__(self, ttl_s: float, configured: list[str] | tuple[str, ...] = (), clock=time.monotonic):
        self.ttl_s = ttl_s
        self._clock = clock
        self._replicas: dict[tuple[str, str], Replica] = {}
        self._first_seen: dict[str, int] = {m: int(time.time()) for m in configured}

    def update(self, hb: Heartbeat) -> None:
        self._replicas[(hb.model, hb.replica)] = Replica(hb, self._clock())
        self._first_seen.setdefault(hb.model, int(time.time()))

    def _fresh(self, r: Replica, now: float) -> bool:
        return now - r.seen_at <= max(self.ttl_s, 3 * r.heartbeat.interval_s)

    def prune(self) -> None:
        now = self._clock()
        for key in [k for k, r in self._replicas.items() if not self._fresh(r, now)]:
            del self._replicas[key]

    def live(self, model: str) -> list[Heartbeat]:
        now = self._clock()
        return [
            r.heartbeat
            for (m, _), r in self._replicas.items()
            if m == model and r.heartbeat.ready and self._fresh(r, now)
        ]

    def replicas(self) -> list[Heartbeat]:
        now = self._clock()
        return [r.heartbeat for r in self._replicas.values() if self._fresh(r, now)]

    def seen(self) -> list[tuple[Heartbeat, float]]:
        """Every replica heard from within its freshness window, ready or not, with the seconds since
        its last heartbeat (for the admin API's live view)."""
        now = self._clock()
        return [(r.heartbeat, now - r.seen_at) for r in self._replicas.values() if self._fresh(r, now)]

    def model_names(self) -> list[str]:
        """Every model configured or seen since the start, live or not."""
        return sorted(self._first_seen)

    def known(self, model: str) -> bool:
        return model in self._first_seen

    def models(self) -> list[dict]:
        """Models with at least one live replica, in the OpenAI /v1/models shape."""
        out: dict[str, dict] = {}
        for hb in self.replicas():
            if not hb.ready:
                continue
            entry = out.setdefault(
                hb.model,
                {
                    "id": hb.model,
                    "object": "model",
                    "created": self._first_seen.get(hb.model, 0),
                    "owned_by": "llm-dispatcher",
                },
            )
            if hb.max_model_len:
                entry["max_model_len"] = max(entry.get("max_model_len", 0), hb.max_model_len)
        return sorted(out.values(), key=lambda m: m["id"])
