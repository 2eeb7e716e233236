"""End to end against a REAL vLLM: the official OpenAI client → sender → RabbitMQ → consumer → vLLM 0.32
on CPU (``real_vllm`` fixture, SmolLM2-135M served as ``smollm2``), and back.

The same paths as tests/e2e/test_e2e_openai.py, with the simulator replaced by the real engine; and the
consumer's admission reading the real ``/metrics``. Generations stay short (max_tokens <= 8): the
engine does about 12 tokens/s.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

MAX_TOKENS = 6
MESSAGES = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture
def real_vllm_stack(stack_factory, real_vllm):
    """A stack with the real vLLM behind one consumer, and alice's token."""
    s = stack_factory(usage_flush_interval_s=0.1, queue_timeout_s=60.0)
    s.model = real_vllm.model
    s.upstream = real_vllm.url
    s.consumer = s.add_consumer(real_vllm.model, real_vllm.url)
    s.token = s.create_token("alice", priority=5, threshold=100)
    s.wait_models({real_vllm.model}, s.token, timeout=30)
    yield s
    s.wait_idle(timeout=30)


def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.token, max_retries=0, timeout=60)


def aclient(stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=stack.base_url, api_key=stack.token, max_retries=0, timeout=60)


def assert_usage(usage, max_tokens: int = MAX_TOKENS) -> None:
    assert usage is not None
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= max_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_with_the_sync_client(real_vllm_stack):
    r = client(real_vllm_stack).chat.completions.create(
        model=real_vllm_stack.model, messages=MESSAGES, max_tokens=8, temperature=0
    )
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == real_vllm_stack.model
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert "Paris" in r.choices[0].message.content  # a real model answers ("The capital of France is Paris.")
    assert r.choices[0].finish_reason in ("stop", "length")
    assert_usage(r.usage, 8)
    (record,) = real_vllm_stack.usage_rows(1)
    assert record["status"] == 200 and record["token_name"] == "alice"
    assert record["completion_tokens"] == r.usage.completion_tokens and record["prompt_tokens"] == r.usage.prompt_tokens


async def test_chat_with_the_async_client_two_at_once(real_vllm_stack):
    async with aclient(real_vllm_stack) as c:
        rs = await asyncio.gather(
            *(
                c.chat.completions.create(model=real_vllm_stack.model, messages=MESSAGES, max_tokens=4, temperature=0)
                for _ in range(2)
            )
        )
    for r in rs:
        assert r.choices[0].message.content
        assert_usage(r.usage, 4)
    assert rs[0].id != rs[1].id


async def test_chat_streaming_with_usage_async(real_vllm_stack):
    async with aclient(real_vllm_stack) as c:
        stream = await c.chat.completions.create(
            model=real_vllm_stack.model,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    *content, last = chunks
    assert content[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.usage is None for c in content)
    assert content[-1].choices[0].finish_reason in ("stop", "length")
    assert "".join(c.choices[0].delta.content or "" for c in content)
    assert last.choices == []
    assert_usage(last.usage)
    (record,) = real_vllm_stack.usage_rows(1)
    assert record["completion_tokens"] == last.usage.completion_tokens
    assert record["prompt_tokens"] == last.usage.prompt_tokens


def test_chat_streaming_without_usage_sync_still_counts_usage(real_vllm_stack):
    chunks = list(
        client(real_vllm_stack).chat.completions.create(
            model=real_vllm_stack.model, messages=MESSAGES, max_tokens=4, temperature=0, stream=True
        )
    )
    assert chunks and all(len(c.choices) == 1 for c in chunks)  # no usage chunk: the client did not ask
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text
    (record,) = real_vllm_stack.usage_rows(1)
    assert record["status"] == 200 and record["prompt_tokens"] > 0
    assert 0 < record["completion_tokens"] <= 4


def test_completions_sync_and_streaming(real_vllm_stack):
    c = client(real_vllm_stack)
    prompt = "The capital of France is"
    r = c.completions.create(model=real_vllm_stack.model, prompt=prompt, max_tokens=4, temperature=0)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.choices[0].text
    assert_usage(r.usage, 4)
    chunks = list(
        c.completions.create(
            model=real_vllm_stack.model,
            prompt="The capital of France is",
            max_tokens=4,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == []
    assert_usage(chunks[-1].usage, 4)
    assert "".join(ch.choices[0].text for ch in chunks[:-1])
    # What each client was told is what was recorded (order: finishing order, hence sorted).
    records = real_vllm_stack.usage_rows(2)
    assert sorted(x["completion_tokens"] for x in records) == sorted(
        [r.usage.completion_tokens, chunks[-1].usage.completion_tokens]
    ), records


def test_models_through_the_dispatcher(real_vllm_stack):
    c = client(real_vllm_stack)
    models = c.models.list()
    assert [m.id for m in models.data] == [real_vllm_stack.model]
    m = c.models.retrieve(real_vllm_stack.model)
    assert m.id == real_vllm_stack.model and m.object == "model"
    assert m.model_extra.get("max_model_len") == 2048  # read from the real vLLM by the consumer
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("nope")


def test_vllm_errors_pass_through_unchanged(real_vllm_stack):
    headers = {"authorization": f"Bearer {real_vllm_stack.token}"}
    for body in (
        {"model": real_vllm_stack.model, "messages": MESSAGES, "max_tokens": 3000},  # over max_model_len
        {"model": real_vllm_stack.model, "messages": MESSAGES, "max_tokens": -1},
        {"model": real_vllm_stack.model, "messages": "x"},  # a schema error ("Bad Request")
    ):
        via = httpx.post(real_vllm_stack.base_url + "/chat/completions", json=body, headers=headers, timeout=60)
        direct = httpx.post(real_vllm_stack.upstream + "/v1/chat/completions", json=body, timeout=60)
        assert via.status_code == direct.status_code == 400
        assert via.json() == direct.json()
    err = via.json()["error"]
    assert err["type"] == "Bad Request" and err["param"] == "body.messages"
    with pytest.raises(openai.BadRequestError) as info:
        client(real_vllm_stack).chat.completions.create(model=real_vllm_stack.model, messages=MESSAGES, max_tokens=3000)
    assert info.value.body == {
        "message": "max_tokens=3000 cannot be greater than max_model_len=2048. Please request fewer output tokens. "
        "(parameter=max_tokens, value=3000)",
        "type": "BadRequestError",
        "param": "max_tokens",
        "code": 400,
    }


def test_vllm_404_passes_through_for_an_alias_the_replica_does_not_serve(real_vllm_stack):
    real_vllm_stack.add_consumer("alias", real_vllm_stack.upstream)  # misconfigured replica: vLLM itself answers 404
    real_vllm_stack.wait_models({"alias"}, real_vllm_stack.token, timeout=30)
    with pytest.raises(openai.NotFoundError) as info:
        client(real_vllm_stack).completions.create(model="alias", prompt="x", max_tokens=1)
    assert info.value.body == {
        "message": "The model `alias` does not exist. Valid aliases: smollm2.",
        "type": "NotFoundError",
        "param": "model",
        "code": 404,
    }


async def test_the_consumer_admission_reads_the_real_metrics(real_vllm_stack):
    consumer = real_vllm_stack.consumer
    async with aclient(real_vllm_stack) as c:
        await asyncio.gather(
            *(
                c.chat.completions.create(model=real_vllm_stack.model, messages=MESSAGES, max_tokens=MAX_TOKENS)
                for _ in range(2)
            )
        )
    watcher = consumer.watcher
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and watcher.tokens_per_second is None:
        await asyncio.sleep(0.1)
    latest = watcher.latest
    assert latest is not None
    assert latest.generation_tokens is not None and latest.generation_tokens > 0
    assert latest.running is not None and latest.waiting is not None
    assert latest.kv_cache_usage is not None and 0.0 <= latest.kv_cache_usage <= 1.0
    assert watcher.tokens_per_second is not None and watcher.tokens_per_second >= 0
    assert watcher.healthy and watcher.metrics_fresh
    labels = {"model": real_vllm_stack.model, "replica": consumer.settings.replica_id}
    registry = consumer.metrics.registry
    assert registry.get_sample_value("llmd_consumer_vllm_metrics_fresh", labels) == 1
    assert registry.get_sample_value("llmd_consumer_vllm_healthy", labels) == 1
    assert registry.get_sample_value("llmd_consumer_vllm_generation_tokens_per_second", labels) is not None


FORWARDED_BODIES = {
    "/v1/chat/completions": {"messages": MESSAGES, "max_tokens": 1},
    "/v1/completions": {"prompt": "Paris is", "max_tokens": 1},
    "/v1/responses": {"input": "Paris is", "max_output_tokens": 1},
    "/v1/messages": {"messages": MESSAGES, "max_tokens": 1},
    "/v1/messages/count_tokens": {"messages": MESSAGES},
    "/v1/embeddings": {"input": "Paris"},  # routes of pooling models: a generative vLLM answers its own 404
    "/v1/rerank": {"query": "capital", "documents": ["Paris"]},
    "/v1/score": {"text_1": "capital", "text_2": "Paris"},
}
GENERATIVE = {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages", "/v1/messages/count_tokens"}


def test_every_forwarded_endpoint_reaches_the_real_vllm_and_its_operator_routes_never_do(real_vllm_stack):
    from sender.routes import DEFAULT_FORWARD_PATHS

    assert set(FORWARDED_BODIES) == set(DEFAULT_FORWARD_PATHS)
    headers = {"authorization": f"Bearer {real_vllm_stack.token}"}
    for path, body in FORWARDED_BODIES.items():
        request = {"model": real_vllm_stack.model, **body}
        r = httpx.post(real_vllm_stack.url + path, json=request, headers=headers, timeout=60)
        assert r.json().get("error", {}).get("code") != "unknown_url", path  # the gateway forwarded it
        if path in GENERATIVE:
            assert r.status_code == 200, (path, r.text)
        else:
            assert r.status_code == 404 and r.json() == {"detail": "Not Found"}, (path, r.text)  # vLLM's own
    for path in (
        "/v1/../sleep",
        "/v1/%2e%2e/reset_prefix_cache",
        "/v1/load_lora_adapter",
        "/v1/models",
        "/collective_rpc",
        "/start_profile",
        "/pause",
    ):
        r = httpx.post(real_vllm_stack.url + path, json={"model": real_vllm_stack.model}, headers=headers, timeout=10)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url", (path, r.text)
    assert httpx.get(real_vllm_stack.upstream + "/health").status_code == 200
    real_vllm_stack.wait_idle(timeout=30)


def test_a_small_batch_runs_on_the_real_vllm(real_vllm_stack):
    import io
    import json

    c = client(real_vllm_stack)
    lines = [
        {
            "custom_id": f"q{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": real_vllm_stack.model, "messages": MESSAGES, "max_tokens": 4, "temperature": 0},
        }
        for i in range(3)
    ]
    lines.append(
        {
            "custom_id": "bad",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": real_vllm_stack.model, "messages": MESSAGES, "max_tokens": -1},
        }
    )
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    f = c.files.create(file=("q.jsonl", io.BytesIO(data)), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while (batch := c.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, batch
        time.sleep(0.5)
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 1
    out = [json.loads(x) for x in c.files.content(batch.output_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == ["q0", "q1", "q2"]
    assert all(o["response"]["body"]["choices"][0]["message"]["content"] for o in out)
    (bad,) = [json.loads(x) for x in c.files.content(batch.error_file_id).text.splitlines()]
    assert (
        bad["response"]["status_code"] == 400 and bad["response"]["body"]["error"]["type"] == "BadRequestError"
    )  # vLLM's
    real_vllm_stack.wait_idle(timeout=30)
