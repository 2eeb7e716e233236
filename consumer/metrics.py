"""Every Prometheus metric the consumer exports, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from llm_dispatcher.metrics import new_registry


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or new_registry("consumer")
        r = self.registry
        labels = ("model", "replica")
        self.decisions = Counter(
            "llmd_consumer_admission_decisions", "Admission decisions by outcome", (*labels, "reason"), registry=r
        )
        self.grants = Counter("llmd_consumer_grants", "Tickets granted", labels, registry=r)
        self.releases = Counter("llmd_consumer_releases", "Leases ended", (*labels, "reason"), registry=r)
        self.dropped = Counter(
            "llmd_consumer_tickets_dropped", "Tickets dropped without a grant", (*labels, "reason"), registry=r
        )
        self.returned = Counter(
            "llmd_consumer_tickets_returned", "Tickets handed back to the queue unacked", labels, registry=r
        )
        self.in_flight = Gauge("llmd_consumer_in_flight", "Granted, unreleased requests", labels, registry=r)
        self.capacity = Gauge("llmd_consumer_max_concurrency", "Configured in-flight cap", labels, registry=r)
        self.pulling = Gauge("llmd_consumer_pulling", "1 while the consumer takes tickets", labels, registry=r)
        self.healthy = Gauge("llmd_consumer_vllm_healthy", "1 while vLLM /health answers 200", labels, registry=r)
        self.metrics_fresh = Gauge(
            "llmd_consumer_vllm_metrics_fresh", "1 while vLLM /metrics is readable and recent", labels, registry=r
        )
        self.scrape_errors = Counter(
            "llmd_consumer_vllm_scrape_errors", "Failed reads of vLLM", (*labels, "endpoint"), registry=r
        )
        self.vllm_running = Gauge("llmd_consumer_vllm_running", "vLLM running requests", labels, registry=r)
        self.vllm_waiting = Gauge("llmd_consumer_vllm_waiting", "vLLM waiting requests", labels, registry=r)
        self.vllm_kv = Gauge("llmd_consumer_vllm_kv_cache_usage", "vLLM KV-cache use (0..1)", labels, registry=r)
        self.vllm_tps = Gauge(
            "llmd_consumer_vllm_generation_tokens_per_second", "vLLM generation throughput", labels, registry=r
        )
