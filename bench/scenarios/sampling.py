"""The replicas' state every ``period`` seconds while an arm runs: vLLM's /metrics, the consumers'
/readyz, the sender's waiting tickets."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass, field

import aiohttp

_NUM = r"([0-9.eE+-]+|NaN)"


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` in a Prometheus text scrape whose labels include ``labels``
    (0 when absent)."""
    found = re.findall(rf"^{re.escape(name)}(?:{{([^}}]*)}})? {_NUM}", text, re.M)
    return sum(float(v) for have, v in found if all(f'{k}="{x}"' in have for k, x in labels.items()))


@dataclass
class Sample:
    """One round of scrapes. A failed scrape reads None (never 0, which would look like an idle engine)."""

    t: float  # seconds since the sampler started
    running: list[float | None]  # per replica: vllm:num_requests_running
    waiting: list[float | None]  # per replica: vllm:num_requests_waiting
    gen: list[float | None]  # per replica: vllm:generation_tokens_total
    in_flight: list[int | None] = field(default_factory=list)  # per consumer, when sampled
    tickets: float = 0.0  # tickets waiting at the sender, when sampled

    @property
    def complete(self) -> bool:
        """Every replica answered."""
        return None not in self.gen and None not in self.running and None not in self.waiting

    def running_total(self) -> float:
        return sum(x for x in self.running if x is not None)

    def waiting_total(self) -> float:
        return sum(x for x in self.waiting if x is not None)

    def gen_total(self) -> float:
        return sum(x for x in self.gen if x is not None)


def complete(samples: list[Sample]) -> list[Sample]:
    """Samples where every replica answered."""
    return [s for s in samples if s.complete]


class Sampler:
    """``run()`` scrapes until cancelled; ``samples`` holds what it read."""

    def __init__(self, sims: list[str], consumers: list[str], sender: str | None, period: float = 0.1):
        self.sims, self.consumers, self.sender, self.period = sims, consumers, sender, period
        self.samples: list[Sample] = []
        self.t0 = time.perf_counter()

    async def _get(self, s: aiohttp.ClientSession, url: str) -> str:
        try:
            async with s.get(url) as r:
                return await r.text()
        except (aiohttp.ClientError, TimeoutError):
            return ""

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as s:
            while True:
                t = time.perf_counter() - self.t0
                urls = [u + "/metrics" for u in self.sims] + [u + "/readyz" for u in self.consumers]
                if self.sender:
                    urls.append(self.sender + "/metrics")
                texts = await asyncio.gather(*(self._get(s, u) for u in urls))
                n = len(self.sims)
                sample = Sample(
                    t=t,
                    running=[metric_sum(x, "vllm:num_requests_running") if x else None for x in texts[:n]],
                    waiting=[metric_sum(x, "vllm:num_requests_waiting") if x else None for x in texts[:n]],
                    gen=[metric_sum(x, "vllm:generation_tokens_total") if x else None for x in texts[:n]],
                    tickets=metric_sum(texts[-1], "llmd_waiting_tickets") if self.sender and texts[-1] else 0.0,
                )
                for x in texts[n : n + len(self.consumers)]:
                    try:
                        sample.in_flight.append(json.loads(x)["in_flight"])
                    except (ValueError, KeyError):
                        sample.in_flight.append(None)
                self.samples.append(sample)
                await asyncio.sleep(max(0.0, self.period - (time.perf_counter() - self.t0 - t)))
