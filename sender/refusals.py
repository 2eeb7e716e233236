"""Refusals by model and reason over the last minutes, for the admin API's live view (Prometheus has
the totals; this answers "why were requests refused just now" without a PromQL server).

A ring of time buckets: counting is one dict increment in the current bucket (a new bucket every
`bucket_s`, the oldest dropped beyond `window_s`); reading sums the buckets inside the asked window.
Pure: the clock is passed in, tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

NO_MODEL = ""  # refused before the model was read (a missing or unknown token)


class RefusalCounter:
    def __init__(self, window_s: float = 900.0, bucket_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if bucket_s <= 0 or window_s < bucket_s:
            raise ValueError("need 0 < bucket_s <= window_s")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._clock = clock
        self._keep = int(window_s // bucket_s) + 1  # the current bucket is partial
        self._buckets: deque[tuple[int, dict[tuple[str, str], int]]] = deque()
        self._current = -1
        self._counts: dict[tuple[str, str], int] = {}

    def add(self, model: str, reason: str) -> None:
        index = int(self._clock() // self.bucket_s)
        if index != self._current:
            self._rotate(index)
        key = (model, reason)
        self._counts[key] = self._counts.get(key, 0) + 1

    def _rotate(self, index: int) -> None:
        self._current = index
        self._counts = {}
        self._buckets.append((index, self._counts))
        while self._buckets and self._buckets[0][0] <= index - self._keep:
            self._buckets.popleft()

    def recent(self, seconds: float) -> dict[str, dict[str, int]]:
        """model -> reason -> refusals in the last `seconds` (the current bucket and the ones before it,
        up to the window), models and reasons with none left out."""
        now = int(self._clock() // self.bucket_s)
        span = min(self._keep, max(1, math.ceil(seconds / self.bucket_s)))
        out: dict[str, dict[str, int]] = {}
        for index, counts in self._buckets:
            if index <= now - span:
                continue
            for (model, reason), n in counts.items():
                by_reason = out.setdefault(model, {})
                by_reason[reason] = by_reason.get(reason, 0) + n
        return out
