"""vLLM's /metrics, with vLLM's names, types, labels and buckets, in a private registry per simulator."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

# Buckets as vLLM v1 declares them (vllm/v1/metrics/loggers.py).
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
ITL_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip
FINISHED_REASONS = ("stop", "length", "abort", "error", "repetition")  # as vLLM 0.32 declares them
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class SimMetrics:
    """Every metric the simulator exports. Gauges are read from the engine at scrape time."""

    def __init__(self, model_name: str, *, process_metrics: bool = True) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        if process_metrics:  # vLLM uses the default registry, which carries these
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        base = {"engine": "0", "model_name": model_name}
        names = ["engine", "model_name"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, names, registry=registry, multiprocess_mode="mostrecent")

        def counter(name: str, doc: str):  # type: ignore[no-untyped-def]
            return Counter(name, doc, names, registry=registry).labels(**base)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]):  # type: ignore[no-untyped-def]
            return Histogram(name, doc, names, buckets=buckets, registry=registry).labels(**base)

        self._running = gauge("vllm:num_requests_running", "Number of requests in model execution batches.")
        self._waiting = gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.")
        self._waiting_by_reason = Gauge(
            "vllm:num_requests_waiting_by_reason",
            "Number of requests waiting to be processed, broken down by reason.",
            [*names, "reason"],
            registry=registry,
        )
        self._kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.")
        self._base = base

        self.prompt_tokens = counter("vllm:prompt_tokens", "Number of prefill tokens processed.")
        self.generation_tokens = counter("vllm:generation_tokens", "Number of generation tokens processed.")
        self.preemptions = counter("vllm:num_preemptions", "Cumulative number of preemption from the engine.")
        self.prefix_cache_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in terms of number of queried tokens."
        )
        self.prefix_cache_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in terms of number of cached tokens."
        )
        success = Counter(
            "vllm:request_success",
            "Count of successfully processed requests.",
            ["engine", "finished_reason", "model_name"],
            registry=registry,
        )
        self.request_success = {r: success.labels(finished_reason=r, **base) for r in FINISHED_REASONS}

        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS
        )
        self.tpot = histogram(
            "vllm:request_time_per_output_token_seconds",
            "Histogram of time_per_output_token_seconds per request.",
            ITL_BUCKETS,
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.queue_time = histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill_time = histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode_time = histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )

    def bind(
        self,
        running: Callable[[], float],
        waiting: Callable[[], float],
        kv_usage: Callable[[], float],
    ) -> None:
        """Read the engine's state when scraped (no cost per step)."""
        self._running.labels(**self._base).set_function(running)
        self._waiting.labels(**self._base).set_function(waiting)
        self._kv_usage.labels(**self._base).set_function(kv_usage)
        self._waiting_by_reason.labels(reason="capacity", **self._base).set_function(waiting)
        self._waiting_by_reason.labels(reason="deferred", **self._base).set(0)

    def observe_finished(
        self,
        reason: str,
        *,
        e2e: float,
        queue: float,
        ttft: float | None,
        prefill: float,
        decode: float,
        output_tokens: int,
    ) -> None:
        self.request_success[reason].inc()
        self.e2e.observe(e2e)
        self.queue_time.observe(queue)
        if ttft is not None:
            self.ttft.observe(ttft)
        self.prefill_time.observe(prefill)
        self.decode_time.observe(decode)
        if output_tokens > 1:
            self.tpot.observe(decode / (output_tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
