"""Pure parsing of a vLLM /metrics scrape, and the rate of generated tokens between two scrapes."""

from __future__ import annotations

from dataclasses import dataclass

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
        """Reads only the four samples the consumer needs. A real scrape carries hundreds of histogram
        lines; a full exposition-format parse of them costs tens of milliseconds, this a fraction."""
        sums: dict[str, float] = {}
        kv_max: float | None = None
        for line in text.splitlines():
            if not line.startswith("vllm:"):
                continue
            brace = line.find("{")
            space = line.find(" ")
            end = brace if 0 <= brace < space or (brace >= 0 and space < 0) else space
            name = line[:end]
            if name not in _WANTED:
                continue
            value = _sample_value(line)
            if name == KV_CACHE:  # a fraction: the fullest engine is what limits us
                kv_max = value if kv_max is None else max(kv_max, value)
            else:
                sums[name] = sums.get(name, 0.0) + value
        return cls(
            at=at,
            running=sums.get(RUNNING),
            waiting=sums.get(WAITING),
            kv_cache_usage=kv_max,
            generation_tokens=sums.get(GENERATION_TOKENS),
        )


def _sample_value(line: str) -> float:
    """The value of one exposition-format sample line: after the labels, before an optional timestamp."""
    close = line.rfind("}")
    rest = line[close + 1 :] if close >= 0 else line.split(" ", 1)[1]
    try:
        return float(rest.split()[0])
    except (IndexError, ValueError):
        raise ValueError(f"unreadable sample line: {line[:200]!r}") from None


def tokens_per_second(older: VllmScrape | None, newer: VllmScrape) -> float | None:
    """Generation throughput between two scrapes; None when it cannot be known (or a counter reset)."""
    if older is None or older.generation_tokens is None or newer.generation_tokens is None:
        return None
    dt = newer.at - older.at
    delta = newer.generation_tokens - older.generation_tokens
    if dt <= 0 or delta < 0:
        return None
    return delta / dt
