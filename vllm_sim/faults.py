"""Fault injection: simulated failures, connections dropped mid-response, and the log filter for them.

Death (``POST /sim/die``, SIGUSR1), the start-up delay and stalls before the first token are handled
where they act (the app and the two generation paths); this module decides *whether* a request fails
or is dropped, from seeded generators, so a run is reproducible.
"""

from __future__ import annotations

import logging
import random

from vllm_sim.asgi import Headers, Send, json_start
from vllm_sim.config import SimConfig
from vllm_sim.errors import ApiError
from vllm_sim.metrics import SimMetrics


class SimulatedDrop(Exception):
    """Raised after a partial response so that uvicorn closes the connection (fault injection)."""


class DropLogFilter(logging.Filter):
    """Keeps uvicorn from logging a traceback for every injected connection drop."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedDrop)


def install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DropLogFilter) for f in logger.filters):
        logger.addFilter(DropLogFilter())


class Faults:
    """The seeded draws of one replica; reads the config on every draw (``POST /sim/config`` changes it)."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self._failure_rng = random.Random(config.seed)
        self._drop_rng = random.Random(config.seed + 1)

    def failure(self) -> ApiError | None:
        """The simulated failure this request meets, if it meets one (``failure_rate``)."""
        cfg = self.config
        if cfg.failure_rate and self._failure_rng.random() < cfg.failure_rate:
            return ApiError(cfg.failure_status, f"Simulated failure (status {cfg.failure_status}).")
        return None

    def drop_at(self, total_tokens: int) -> int:
        """Token events (of all choices) sent before the connection drops, or -1 (``drop_mid_stream_rate``)."""
        cfg = self.config
        if cfg.drop_mid_stream_rate and self._drop_rng.random() < cfg.drop_mid_stream_rate:
            return total_tokens // 2
        return -1


async def drop_after_half(send: Send, body: bytes, headers: Headers, metrics: SimMetrics, n: int, rid: str) -> None:
    """Start a non-streamed response, send half of it and close the connection (``n`` choices aborted)."""
    await send(json_start(200, body, headers))
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    metrics.request_success["abort"].inc(n)
    raise SimulatedDrop(rid)
