"""Pure parsing of a vLLM /metrics scrape, and the rate of generated tokens between two scrapes."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

# Sample names as the text format prints them (counters carry `_total`).
RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_CACHE = "vllm:kv_cache_usage_perc"
GENERATION_TOKENS = "vllm:generation_tokens_total"
_WANTED = {RUNNING, WAITING, KV_CACHE, GENERATION_TOKENS}


@dataclass(frozen=True, slots=True)
class VllmScrape:
    """One scrape, summed over engines (data-parallel ranks). None: the server did not report it."""

    at: float
    running: float | None
    waiting: float | None
    kv_cache_usage: float | None
    generation_tokens: float | None

    @classmethod
    def parse(cls, text: str, at: float) -> VllmScrape:
        sums: dict[str, float] = {}
        kv_max: float | None = None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in _WANTED:
                    continue
                if sample.name == KV_CACHE:  # a fraction: the fullest engine is what limits us
                    kv_max = sample.value if kv_max is None else max(kv_max, sample.value)
                else:
                    sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return cls(
            at=at,
            running=sums.get(RUNNING),
            waiting=sums.get(WAITING),
            kv_cache_usage=kv_max,
            generation_tokens=sums.get(GENERATION_TOKENS),
        )


def tokens_per_second(older: VllmScrape | None, newer: VllmScrape) -> float | None:
    """Generation throughput between two scrapes; None when it cannot be known (or a counter reset)."""
    if older is None or older.generation_tokens is None or newer.generation_tokens is None:
        return None
    dt = newer.at - older.at
    delta = newer.generation_tokens - older.generation_tokens
    if dt <= 0 or delta < 0:
        return None
    return delta / dt
