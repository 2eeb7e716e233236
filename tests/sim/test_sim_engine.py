"""The simulator's load model: continuous batching, queueing, ITL vs batch size, priority, aborts, KV cache."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from vllm_sim.config import SimConfig
from vllm_sim.engine import step_duration

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(url + "/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("engine", "model_name"))))] = (
                s.value
            )
    return out


def value(url: str, name: str, **labels: str) -> float:
    return scrape(url)[(name, tuple(sorted(labels.items())))]


async def wait_for(predicate, limit: float = 5.0) -> None:
    end = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def test_step_duration_grows_with_batch_and_prefill():
    cfg = SimConfig(itl_base=0.01, itl_per_seq=0.002, prefill_per_token=0.0001)
    assert step_duration(cfg, 1, 0) == pytest.approx(0.012)
    assert step_duration(cfg, 8, 0) == pytest.approx(0.026)
    assert step_duration(cfg, 1, 100) == pytest.approx(0.022)


async def test_max_num_seqs_2_with_4_requests_runs_2_and_queues_2_visible_in_gauges(sim_factory):
    sim = sim_factory(max_num_seqs=2, itl_base=0.02)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        tasks = [
            asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 25})) for _ in range(4)
        ]
        await wait_for(lambda: len(sim.app.engine.running) == 2 and sim.app.engine.num_waiting() == 2)
        assert value(sim.url, "vllm:num_requests_running") == 2
        assert value(sim.url, "vllm:num_requests_waiting") == 2
        assert value(sim.url, "vllm:num_requests_waiting_by_reason", reason="capacity") == 2
        assert value(sim.url, "vllm:kv_cache_usage_perc") > 0
        replies = await asyncio.gather(*tasks)
    assert all(r.status_code == 200 for r in replies)
    assert value(sim.url, "vllm:num_requests_running") == 0 and value(sim.url, "vllm:num_requests_waiting") == 0
    assert value(sim.url, "vllm:request_queue_time_seconds_count") == 4
    # two waited a whole batch (25 steps of 20 ms)
    assert value(sim.url, "vllm:request_queue_time_seconds_sum") >= 2 * 0.4
    assert value(sim.url, "vllm:request_success_total", finished_reason="length") == 4
    assert value(sim.url, "vllm:generation_tokens_total") == 100


async def measure_itl(sim, concurrency: int) -> float:
    async with httpx.AsyncClient(base_url=sim.url) as client:
        await asyncio.gather(
            *(client.post("/v1/completions", json={"prompt": "x", "max_tokens": 8}) for _ in range(concurrency))
        )
    return value(sim.url, "vllm:inter_token_latency_seconds_sum") / value(
        sim.url, "vllm:inter_token_latency_seconds_count"
    )


async def test_inter_token_latency_grows_with_batch_size(sim_factory):
    alone = await measure_itl(sim_factory(itl_base=0.004, itl_per_seq=0.006, max_num_seqs=8), 1)
    batched = await measure_itl(sim_factory(itl_base=0.004, itl_per_seq=0.006, max_num_seqs=8), 6)
    # The model's step: 4 ms + 6 ms per sequence, so 10 ms alone and 40 ms for six. A loaded machine only
    # makes steps longer (the simulator's own work for six responses is in each one), hence the wider
    # upper bounds; the lower bounds and the ratio are what show the batch's cost.
    assert 0.005 <= alone < 0.025
    assert 0.028 <= batched < 0.080
    assert batched > 2.5 * alone


async def test_time_to_first_token_is_queue_wait_plus_prefill(sim_factory):
    sim = sim_factory(itl_base=0.001, prefill_per_token=0.001)  # ~0.1 s for a 100-token prompt
    prompt = "x" * 400  # 100 tokens
    async with httpx.AsyncClient(base_url=sim.url) as client:
        t0 = time.monotonic()
        async with client.stream(
            "POST", "/v1/completions", json={"prompt": prompt, "max_tokens": 2, "stream": True}
        ) as r:
            async for _ in r.aiter_lines():
                ttft = time.monotonic() - t0
                break
    assert 0.09 <= ttft < 0.5
    assert value(sim.url, "vllm:time_to_first_token_seconds_sum") >= 0.1


async def test_priority_scheduling_admits_lowest_priority_value_first_then_by_arrival(sim_factory):
    sim = sim_factory(max_num_seqs=1, itl_base=0.01, scheduling_policy="priority")
    engine = sim.app.engine
    async with httpx.AsyncClient(base_url=sim.url) as client:

        def post(rid: str, priority: int, max_tokens: int = 3) -> asyncio.Task:
            body = {**CHAT, "max_tokens": max_tokens, "priority": priority}
            return asyncio.create_task(client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": rid}))

        tasks = [post("blocker", 0, max_tokens=60)]  # holds the only slot for ~0.6 s
        await wait_for(lambda: len(engine.running) == 1)
        for i, (rid, prio) in enumerate([("p5", 5), ("p1-a", 1), ("p3", 3), ("p1-b", 1), ("p-neg", -2)]):
            tasks.append(post(rid, prio))
            await wait_for(lambda i=i: engine.num_waiting() == i + 1)
        await asyncio.gather(*tasks)
        stats = (await client.get("/sim/stats")).json()
    order = [rid.removeprefix("chatcmpl-") for rid in stats["admitted"]]
    assert order == ["blocker", "p-neg", "p1-a", "p1-b", "p3", "p5"]


async def test_fcfs_admits_in_arrival_order(sim_factory):
    sim = sim_factory(max_num_seqs=1, itl_base=0.005)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        tasks = []
        for i in range(4):
            body = {**CHAT, "max_tokens": 3}
            tasks.append(
                asyncio.create_task(client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": f"r{i}"}))
            )
            await wait_for(lambda i=i: len(sim.app.engine.admission_log) + sim.app.engine.num_waiting() == i + 1)
        await asyncio.gather(*tasks)
    assert list(sim.app.engine.admission_log) == [f"chatcmpl-r{i}" for i in range(4)]


async def test_client_disconnect_mid_stream_aborts_and_frees_the_slot(sim_factory):
    sim = sim_factory(max_num_seqs=1, itl_base=0.01)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        async with client.stream(
            "POST", "/v1/chat/completions", json={**CHAT, "max_tokens": 1000, "stream": True}
        ) as r:
            lines = 0
            async for line in r.aiter_lines():
                lines += line.startswith("data: ")
                if lines >= 3:
                    break
        await wait_for(lambda: not sim.app.engine.running)
        assert value(sim.url, "vllm:request_success_total", finished_reason="abort") == 1
        # the slot is free again: the next request runs at once
        t0 = time.monotonic()
        r = await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 2})
        assert r.status_code == 200 and time.monotonic() - t0 < 0.5


async def test_client_disconnect_while_waiting_or_non_streaming_aborts(sim_factory):
    sim = sim_factory(max_num_seqs=1, itl_base=0.01)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        running = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 1000}))
        await wait_for(lambda: len(sim.app.engine.running) == 1)
        with pytest.raises(httpx.ReadTimeout):  # waits in the queue, then gives up
            await client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5}, timeout=0.2)
        await wait_for(lambda: sim.app.engine.num_waiting() == 0)
        running.cancel()
        await wait_for(lambda: not sim.app.engine.running)
    assert value(sim.url, "vllm:request_success_total", finished_reason="abort") == 2
    assert value(sim.url, "vllm:request_success_total", finished_reason="length") == 0


async def test_kv_cache_overflow_preempts_and_still_finishes_everything(sim_factory):
    # each request: ~5 prompt + 40 output tokens; 3 of them do not fit in 100 tokens of KV cache
    sim = sim_factory(max_num_seqs=8, itl_base=0.001, kv_cache_tokens=100)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 40}) for _ in range(3))
        )
    assert all(r.json()["usage"]["completion_tokens"] == 40 for r in replies)
    assert value(sim.url, "vllm:num_preemptions_total") >= 1
    assert value(sim.url, "vllm:kv_cache_usage_perc") == 0


async def test_zero_delay_mode_answers_at_once_and_still_counts_metrics(sim_factory):
    sim = sim_factory(itl_base=0.0)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        t0 = time.monotonic()
        replies = await asyncio.gather(
            *(client.post("/v1/chat/completions", json={**CHAT, "max_tokens": 50}) for _ in range(20))
        )
        elapsed = time.monotonic() - t0
    assert all(r.status_code == 200 for r in replies) and elapsed < 2
    assert sim.app.engine.steps == 0  # no per-token engine work
    assert value(sim.url, "vllm:generation_tokens_total") == 1000
    assert value(sim.url, "vllm:request_success_total", finished_reason="length") == 20


async def test_n_sequences_count_as_n_running_sequences_and_every_token_counts(sim_factory):
    sim = sim_factory(max_num_seqs=4, itl_base=0.02)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        body = {**CHAT, "max_tokens": 50, "n": 3}  # ~1 s: still running when the second request joins
        many = asyncio.create_task(client.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "m"}))
        await wait_for(lambda: len(sim.app.engine.running) == 3)
        stats = (await client.get("/sim/stats")).json()
        assert stats["running"] == ["0_chatcmpl-m", "1_chatcmpl-m", "2_chatcmpl-m"]  # vLLM's child ids
        assert value(sim.url, "vllm:num_requests_running") == 3
        kv_three = value(sim.url, "vllm:kv_cache_usage_perc")
        # one slot left: a second n=2 request runs one sequence and queues the other
        other = asyncio.create_task(client.post("/v1/chat/completions", json={**body, "n": 2}))
        await wait_for(lambda: len(sim.app.engine.running) == 4 and sim.app.engine.num_waiting() == 1)
        assert value(sim.url, "vllm:kv_cache_usage_perc") > kv_three
        replies = await asyncio.gather(many, other)
    assert [r.json()["usage"]["completion_tokens"] for r in replies] == [150, 100]
    assert value(sim.url, "vllm:generation_tokens_total") == 250
    assert value(sim.url, "vllm:request_success_total", finished_reason="length") == 5
    assert value(sim.url, "vllm:kv_cache_usage_perc") == 0


async def test_n_stream_disconnect_aborts_every_sequence(sim_factory):
    sim = sim_factory(max_num_seqs=4, itl_base=0.01)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        payload = {**CHAT, "max_tokens": 1000, "n": 3, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
            lines = 0
            async for line in r.aiter_lines():
                lines += line.startswith("data: ")
                if lines >= 6:
                    break
        await wait_for(lambda: not sim.app.engine.running)
    assert value(sim.url, "vllm:request_success_total", finished_reason="abort") == 3


async def test_zero_delay_n_counts_every_generated_token(sim_factory):
    sim = sim_factory(itl_base=0.0)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        r = await client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 7, "n": 3, "stream": True})
    assert r.status_code == 200 and sim.app.engine.steps == 0
    assert value(sim.url, "vllm:generation_tokens_total") == 21
    assert value(sim.url, "vllm:request_success_total", finished_reason="length") == 3
