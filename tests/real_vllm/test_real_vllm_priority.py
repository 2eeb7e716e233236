"""The scheduling contract of `--scheduling-policy priority`, on the real vLLM 0.32 (CPU) and on the
simulator, which must do exactly the same (../shared/VLLM_FACTS.md):

- a high-priority request that arrives while every slot (`--max-num-seqs`) is taken does NOT preempt a
  running lower-priority sequence: its first token comes only after a running one has finished;
- it is admitted before lower-priority requests that were waiting before it: vLLM orders its waiting
  queue by (priority, arrival), lower first.

So forwarding a priority into vLLM reorders who waits inside vLLM; it never frees a slot for an
interactive request (issue: interactive latency under overload).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from tests.fixtures.real_vllm import PRIORITY_MAX_NUM_SEQS

LONG = 32  # tokens of the first running low-priority request (the second: twice): seconds on the CPU engine
SHORT = 4


@dataclass
class Stream:
    name: str
    priority: int
    sent: float = 0.0
    tokens: list[float] = field(default_factory=list)  # arrival time of each content chunk
    completion_tokens: int = 0  # from the usage chunk

    @property
    def first(self) -> float:
        return self.tokens[0]

    @property
    def last(self) -> float:
        return self.tokens[-1]


@pytest.fixture(params=["real_vllm", "sim"])
def priority_upstream(request, sim_factory) -> tuple[str, str]:
    """(base URL, model) of an engine with the priority policy and 2 slots."""
    if request.param == "real_vllm":
        server = request.getfixturevalue("real_vllm_priority")
        return server.url, server.model
    sim = sim_factory(scheduling_policy="priority", max_num_seqs=PRIORITY_MAX_NUM_SEQS, itl_base=0.05, itl_per_seq=0.0)
    return sim.url, sim.config.model


async def run(client: httpx.AsyncClient, url: str, model: str, s: Stream, max_tokens: int) -> Stream:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Count slowly."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "priority": s.priority,
    }
    s.sent = time.monotonic()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            if chunk.get("usage"):
                s.completion_tokens = chunk["usage"]["completion_tokens"]
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                s.tokens.append(time.monotonic())
    return s


async def preemptions(client: httpx.AsyncClient, url: str) -> float:
    text = (await client.get(url + "/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:num_preemptions_total"))


async def test_a_high_priority_arrival_waits_for_a_free_slot_then_goes_before_earlier_lower_ones(priority_upstream):
    url, model = priority_upstream
    async with httpx.AsyncClient(timeout=120) as client:
        before = await preemptions(client, url)
        running = [Stream(f"low-running-{i}", 10) for i in range(PRIORITY_MAX_NUM_SEQS)]
        # Of different lengths, so that one slot frees well before the other.
        tasks = [asyncio.create_task(run(client, url, model, s, LONG * (i + 1))) for i, s in enumerate(running)]
        deadline = time.monotonic() + 60
        while not all(s.tokens for s in running):  # every slot taken, each sequence generating
            assert time.monotonic() < deadline, "the running requests never started"
            await asyncio.sleep(0.02)
        low_waiting = Stream("low-waiting", 10)
        tasks.append(asyncio.create_task(run(client, url, model, low_waiting, SHORT)))
        await asyncio.sleep(0.3)  # it waits first
        high = Stream("high", 0)
        tasks.append(asyncio.create_task(run(client, url, model, high, SHORT)))
        await asyncio.gather(*tasks)
        after = await preemptions(client, url)

    freed = min(s.last for s in running)
    assert high.first > freed, (  # no preemption: the high one waited for a running one to finish
        f"high-priority first token {high.first - high.sent:.2f} s after it was sent, "
        f"{freed - high.sent:.2f} s before the first slot freed"
    )
    assert [s.completion_tokens for s in running] == [LONG * (i + 1) for i in range(len(running))]  # to the end
    assert high.first < low_waiting.first  # the waiting queue is ordered by priority, not arrival
    assert after == before  # nothing was preempted
