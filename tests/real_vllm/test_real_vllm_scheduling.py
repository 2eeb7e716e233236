"""The scheduling contract of `--scheduling-policy priority` and of `--max-num-batched-tokens`, on the
real vLLM 0.32 (CPU) and on the simulator, which must do exactly the same (../shared/VLLM_FACTS.md):

- a high-priority request that arrives while every slot (`--max-num-seqs`) is taken does NOT preempt a
  running lower-priority sequence: its first token comes only after a running one has finished;
- it is admitted before lower-priority requests that were waiting before it: vLLM orders its waiting
  queue by (priority, arrival), lower first.

So forwarding a priority into vLLM reorders who waits inside vLLM; it never frees a slot for an
interactive request (issue: interactive latency under overload).

- with a per-step token budget (chunked prefill), a long prompt is computed a chunk per step while the
  running sequences keep decoding: a running stream gets a token in every step of the long prompt's
  prefill, instead of waiting for one step that computes the whole prompt.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import httpx
import orjson
import pytest

from tests.fixtures.real_vllm import PRIORITY_MAX_NUM_SEQS, SCHEDULING_MAX_NUM_BATCHED_TOKENS

LONG = 32  # tokens of the first running low-priority request (the second: twice): seconds on the CPU engine
SHORT = 4


@dataclass
class Stream:
    name: str
    priority: int
    sent: float = 0.0
    tokens: list[float] = field(default_factory=list)  # arrival time of each content chunk
    completion_tokens: int = 0  # from the usage chunk
    prompt_tokens: int = 0

    @property
    def first(self) -> float:
        return self.tokens[0]

    @property
    def last(self) -> float:
        return self.tokens[-1]


@pytest.fixture(params=["real_vllm", "sim"])
def priority_upstream(request, sim_factory) -> tuple[str, str]:
    """(base URL, model) of an engine with the priority policy, 2 slots and a 64-token step budget."""
    if request.param == "real_vllm":
        server = request.getfixturevalue("real_vllm_scheduling")
        return server.url, server.model
    sim = sim_factory(
        scheduling_policy="priority",
        max_num_seqs=PRIORITY_MAX_NUM_SEQS,
        max_num_batched_tokens=SCHEDULING_MAX_NUM_BATCHED_TOKENS,
        itl_base=0.05,
        itl_per_seq=0.0,
    )
    return sim.url, sim.config.model


async def run(
    client: httpx.AsyncClient, url: str, model: str, s: Stream, max_tokens: int, content: str = "Count slowly."
) -> Stream:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
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
                s.prompt_tokens = chunk["usage"]["prompt_tokens"]
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


def a_long_prompt(words: int) -> str:
    """A prompt no earlier request shares a prefix with (vLLM's prefix cache would skip its prefill)."""
    rng = random.Random()
    return " ".join(rng.choice(("apple", "river", "stone", "cloud", "maple", "ember")) for _ in range(words))


async def tokens_a_running_stream_gets_during_a_long_prefill(
    url: str, model: str, decode_tokens: int = 400
) -> tuple[int, int]:
    """(tokens a running stream received between a long prompt's send and its first token, that
    prompt's tokens)."""
    async with httpx.AsyncClient(timeout=120) as client:
        decode = Stream("decode", 0)
        decoding = asyncio.create_task(run(client, url, model, decode, decode_tokens))
        deadline = time.monotonic() + 60
        while len(decode.tokens) < 3:  # generating, past its own prefill
            assert time.monotonic() < deadline, "the running request never started"
            await asyncio.sleep(0.02)
        long = await run(client, url, model, Stream("long", 0), 1, content=a_long_prompt(600))
        during = sum(long.sent < t < long.first for t in decode.tokens)
        await decoding
    assert decode.completion_tokens == decode_tokens  # it ran to the end, beside the long prefill
    return during, long.prompt_tokens


async def test_a_long_prompt_is_prefilled_a_chunk_per_step_while_running_streams_keep_decoding(
    priority_upstream, request
):
    url, model = priority_upstream
    # The running stream outlasts the long prompt's prefill: 10-12 chunk steps (50 ms each on the simulator).
    decode_tokens = 60 if request.node.callspec.params["priority_upstream"] == "sim" else 400
    during, prompt_tokens = await tokens_a_running_stream_gets_during_a_long_prefill(url, model, decode_tokens)
    steps = prompt_tokens // SCHEDULING_MAX_NUM_BATCHED_TOKENS  # at least; a decode takes 1 token of each
    assert prompt_tokens > 4 * SCHEDULING_MAX_NUM_BATCHED_TOKENS
    assert during >= steps - 1, f"{during} tokens during the prefill of {prompt_tokens} prompt tokens"


async def test_without_a_token_budget_a_long_prompt_takes_one_step_and_running_streams_wait(sim_factory):
    """The measure above tells the two apart: the simulator with no budget prefills the prompt whole."""
    # Steps of 0.2 s, so that the long request reaches the engine within one step even on a busy machine.
    sim = sim_factory(max_num_seqs=PRIORITY_MAX_NUM_SEQS, itl_base=0.2, itl_per_seq=0.0, prefill_per_token=0.001)
    during, prompt_tokens = await tokens_a_running_stream_gets_during_a_long_prefill(sim.url, sim.config.model, 40)
    assert prompt_tokens > 4 * SCHEDULING_MAX_NUM_BATCHED_TOKENS
    assert during <= 2  # the step under way when it was sent, and the one that computes it all
