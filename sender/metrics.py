"""Every Prometheus metric the sender exports, on a registry of its own."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from llm_dispatcher.metrics import CounterFunction, new_registry
from sender.refusals import RefusalCounter

# The `model` label of requests whose model is not known (never the client's string: bounded labels).
OTHER_MODEL = "(other)"

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class SenderMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or new_registry("sender")
        r = self.registry
        self.requests = Counter(
            "llmd_requests",
            "Requests answered, by model, priority and HTTP status",
            ("model", "priority", "status"),
            registry=r,
        )
        self.refusals = Counter(
            "llmd_refusals", "Requests refused before reaching vLLM, by reason", ("model", "reason"), registry=r
        )
        self.queue_wait = Histogram(
            "llmd_queue_wait_seconds",
            "Time from ticket to grant",
            ("model", "priority"),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttfb = Histogram(
            "llmd_time_to_first_byte_seconds",
            "Time from request to the first byte from vLLM",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.proxy_latency = Histogram(
            "llmd_request_duration_seconds",
            "Time from request to the last byte relayed",
            ("model",),
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("llmd_tokens", "Tokens counted from vLLM usage", ("model", "kind"), registry=r)
        self.in_flight = Gauge("llmd_in_flight", "Requests being proxied by this sender", ("model",), registry=r)
        self.waiting = Gauge(
            "llmd_waiting_tickets",
            "Tickets this sender is waiting on, by priority",
            ("model", "priority"),
            registry=r,
        )
        self.queue_depth = Gauge(
            "llmd_queue_depth", "Tickets in the model's queue (all senders), last observed", ("model",), registry=r
        )
        self.replica_in_flight = Gauge(
            "llmd_replica_in_flight", "In-flight grants per replica (heartbeats)", ("model", "replica"), registry=r
        )
        self.replica_capacity = Gauge(
            "llmd_replica_capacity", "Max concurrency per replica (heartbeats)", ("model", "replica"), registry=r
        )
        self.replicas_live = Gauge("llmd_replicas_live", "Ready replicas per model", ("model",), registry=r)
        self.releases_dropped = Counter(
            "llmd_releases_dropped", "Lease releases not kept for resending (too many pending)", registry=r
        )
        self.tickets_moved = Counter(
            "llmd_tickets_moved",
            "Waiting tickets published anew on another broker node after theirs was lost",
            ("model",),
            registry=r,
        )
        self.usage_pending = Gauge("llmd_usage_records_pending", "Usage records waiting to be written", registry=r)
        self.ready = Gauge(
            "llmd_sender_ready", "1 while /readyz answers 200 (broker connected, not draining)", registry=r
        )
        self.batch_lines = Counter(
            "llmd_batch_lines", "Batch lines ended, by model and outcome", ("model", "outcome"), registry=r
        )
        # The same refusals over the last minutes, by reason, for the admin API (not exported).
        self.recent_refusals = RefusalCounter()

    def count(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """Export a running total kept by another object (the usage writer, the token cache)."""
        CounterFunction(name, documentation, read, self.registry)
