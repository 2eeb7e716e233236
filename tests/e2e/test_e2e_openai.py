"""End to end over real sockets: the official OpenAI client → sender → RabbitMQ → consumer → vLLM
simulator, and back."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def sim_stack(stack_factory):
    """A stack with one simulator serving sim-model behind one consumer, and alice's token."""
    s = stack_factory(usage_flush_interval_s=0.1)
    s.upstream = s.add_sim(model="sim-model", served_model_names=["sim-model"], default_output_tokens=8)
    s.add_consumer("sim-model", s.upstream)
    s.token = s.create_token("alice", priority=5, threshold=100)
    s.wait_models({"sim-model"}, s.token)
    yield s
    s.wait_idle()


def client(sim_stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim_stack.base_url, api_key=sim_stack.token, max_retries=0)


def aclient(sim_stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim_stack.base_url, api_key=sim_stack.token, max_retries=0)


def test_chat_completion_with_the_sync_client(sim_stack):
    r = client(sim_stack).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "hello"}], max_tokens=5
    )
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


async def test_chat_completion_with_the_async_client(sim_stack):
    async with aclient(sim_stack) as c:
        rs = await asyncio.gather(
            *(
                c.chat.completions.create(model="sim-model", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
                for _ in range(8)
            )
        )
    assert all(r.usage.completion_tokens == 3 for r in rs)


def test_streaming_chat_with_usage_requested_by_the_client(sim_stack):
    chunks = list(
        client(sim_stack).chat.completions.create(
            model="sim-model",
            messages=[{"role": "user", "content": "hello"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_streaming_without_usage_requested_hides_the_usage_event_but_records_exact_usage(sim_stack):
    chunks = list(
        client(sim_stack).chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": "count"}], max_tokens=7, stream=True
        )
    )
    assert chunks and all(c.choices for c in chunks)  # exactly what vLLM sends without include_usage
    assert all(c.usage is None for c in chunks)
    records = sim_stack.usage_rows(1)
    assert records[0]["completion_tokens"] == 7 and records[0]["prompt_tokens"] > 0
    assert records[0]["status"] == 200 and records[0]["token_name"] == "alice"


def test_completions_and_embeddings(sim_stack):
    c = client(sim_stack)
    r = c.completions.create(model="sim-model", prompt="Say hi", max_tokens=4)
    assert r.choices[0].text and r.usage.completion_tokens == 4
    e = c.embeddings.create(model="sim-model", input=["a", "b"], encoding_format="float")
    assert len(e.data) == 2 and len(e.data[0].embedding) > 0


def test_models_list_and_get_in_the_openai_shape(sim_stack):
    c = client(sim_stack)
    models = c.models.list()
    assert [m.id for m in models.data] == ["sim-model"]
    m = c.models.retrieve("sim-model")
    assert m.id == "sim-model" and m.object == "model" and m.owned_by
    assert m.model_extra.get("max_model_len") == 4096
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


def test_models_list_drops_a_model_when_its_last_replica_goes(sim_stack):
    sim_stack.stop_consumer(sim_stack.consumers[0])
    for _ in range(100):
        if not client(sim_stack).models.list().data:
            break
        time.sleep(0.05)
    assert client(sim_stack).models.list().data == []


def test_request_id_is_accepted_and_returned(sim_stack):
    r = httpx.post(
        sim_stack.base_url + "/chat/completions",
        headers={"authorization": f"Bearer {sim_stack.token}", "x-request-id": "req-123"},
        json={"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-123"
    r = httpx.get(sim_stack.base_url + "/models", headers={"authorization": f"Bearer {sim_stack.token}"})
    assert len(r.headers["x-request-id"]) == 32  # one is made when none is given


def test_sender_metrics_count_requests_tokens_and_latencies(sim_stack):
    x = [{"role": "user", "content": "x"}]
    client(sim_stack).chat.completions.create(model="sim-model", messages=x, max_tokens=2)
    text = httpx.get(sim_stack.metrics_url + "/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    assert samples[("llmd_requests_total", (("model", "sim-model"), ("priority", "5"), ("status", "200")))] == 1
    assert samples[("llmd_tokens_total", (("kind", "completion"), ("model", "sim-model")))] == 2
    assert samples[("llmd_queue_wait_seconds_count", (("model", "sim-model"), ("priority", "5")))] == 1
    assert samples[("llmd_time_to_first_byte_seconds_count", (("model", "sim-model"),))] == 1
    assert samples[("llmd_in_flight", (("model", "sim-model"),))] == 0  # went up and back down
    assert samples[("llmd_usage_records_dropped_total", ())] == 0


def test_metrics_are_served_apart_from_the_api_port_without_created_series(sim_stack):
    assert httpx.get(sim_stack.url + "/metrics").status_code == 404  # not on the API port (nor its ingress)
    x = [{"role": "user", "content": "x"}]
    client(sim_stack).chat.completions.create(model="sim-model", messages=x, max_tokens=1)
    sender_text = httpx.get(sim_stack.metrics_url + "/metrics").text
    consumer_text = generate_latest(sim_stack.consumers[0].metrics.registry).decode()
    for text, service in ((sender_text, "sender"), (consumer_text, "consumer")):
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert not [line for line in text.splitlines() if "_created" in line]
        assert "process_cpu_seconds" in families and "process_resident_memory_bytes" in families
        (build,) = families["llmd_build_info"].samples
        assert build.name == "llmd_build_info" and build.labels["service"] == service and build.labels["version"]
    families = {f.name: f for f in text_string_to_metric_families(sender_text)}
    assert families["llmd_usage_records_dropped"].type == "counter"
    assert families["llmd_token_cache_misses"].samples[0].value >= 1


def test_liveness_and_readiness(sim_stack):
    assert httpx.get(sim_stack.url + "/livez").status_code == 200
    assert httpx.get(sim_stack.url + "/readyz").status_code == 200
