"""The simulator's HTTP surface matches vLLM 0.32: endpoint shapes, streaming, errors, OpenAI clients."""

from __future__ import annotations

import math

import httpx
import openai
import orjson
import pytest

CHAT = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


def sse_events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.splitlines() if line.startswith("data: ")]


def test_models_lists_every_served_name_in_vllm_shape(sim_factory):
    sim = sim_factory(model="/models/smol", served_model_names=["a", "b"], max_model_len=2048)
    body = httpx.get(sim.url + "/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a", "b"]
    card = body["data"][0]
    assert set(card) == {"id", "object", "created", "owned_by", "root", "parent", "max_model_len", "permission"}
    assert card["object"] == "model" and card["owned_by"] == "vllm"
    assert card["root"] == "/models/smol" and card["parent"] is None and card["max_model_len"] == 2048
    assert card["permission"][0]["object"] == "model_permission"


def test_health_is_200_with_empty_body_and_version_is_0_32_0(sim):
    health = httpx.get(sim.url + "/health")
    assert health.status_code == 200 and health.content == b""
    assert httpx.get(sim.url + "/version").json() == {"version": "0.32.0"}


def test_chat_completion_has_vllm_field_set_and_max_tokens_sets_length(sim):
    r = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "model": "sim-model", "max_tokens": 7})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {
        "id", "object", "created", "model", "choices", "usage", "service_tier", "system_fingerprint",
        "prompt_logprobs", "prompt_token_ids", "prompt_text", "kv_transfer_params", "ec_transfer_params", "metrics",
    }  # fmt: skip
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["model"] == "sim-model" and isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert {"index", "message", "finish_reason", "logprobs"} <= set(choice)
    assert choice["index"] == 0 and choice["finish_reason"] == "length" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant" and len(choice["message"]["content"].split()) == 7
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7 and usage["prompt_tokens"] > 0


def test_max_completion_tokens_also_sets_length(sim):
    body = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "max_completion_tokens": 3}).json()
    assert body["usage"]["completion_tokens"] == 3 and body["choices"][0]["finish_reason"] == "length"


def test_without_max_tokens_the_length_is_seeded_bounded_and_finishes_with_stop(sim_factory):
    sim = sim_factory(default_output_tokens=20, seed=7)
    first = httpx.post(sim.url + "/v1/chat/completions", json=CHAT).json()
    again = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "ignore_eos": False}).json()
    n = first["usage"]["completion_tokens"]
    assert 10 <= n <= 20 and first["choices"][0]["finish_reason"] == "stop"
    assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]


def test_model_is_optional_and_defaults_to_the_first_served_name(sim_factory):
    sim = sim_factory(served_model_names=["first", "second"])
    assert httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}).json()["model"] == "first"
    body = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1, "model": "second"}).json()
    assert body["model"] == "second"


def test_completion_has_text_completion_shape_and_defaults_to_at_most_16_tokens(sim_factory):
    sim = sim_factory(default_output_tokens=100)
    body = httpx.post(sim.url + "/v1/completions", json={"prompt": "Once upon a time"}).json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    (choice,) = body["choices"]
    assert {"index", "text", "logprobs", "finish_reason"} <= set(choice)
    assert body["usage"]["completion_tokens"] == 16 and choice["finish_reason"] == "length"
    ids = httpx.post(sim.url + "/v1/completions", json={"prompt": [1, 2, 3, 4, 5], "max_tokens": 2}).json()
    assert ids["usage"]["prompt_tokens"] == 5 and ids["usage"]["completion_tokens"] == 2


@pytest.mark.parametrize("zero_delay", [True, False], ids=["zero-delay", "engine"])
def test_stream_with_include_usage_ends_with_usage_chunk_then_done(sim_factory, zero_delay):
    sim = sim_factory(itl_base=0.0 if zero_delay else 0.002)
    payload = {**CHAT, "max_tokens": 4, "stream": True, "stream_options": {"include_usage": True}}
    r = httpx.post(sim.url + "/v1/chat/completions", json=payload)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    *token_chunks, usage_chunk = chunks
    assert all("usage" not in c and c["object"] == "chat.completion.chunk" for c in token_chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert [c["choices"][0]["finish_reason"] for c in token_chunks] == [None, None, None, None, "length"]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 4
    assert "".join(c["choices"][0]["delta"]["content"] for c in token_chunks).split().__len__() == 4


@pytest.mark.parametrize("zero_delay", [True, False], ids=["zero-delay", "engine"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"], ids=["chat", "completions"])
def test_n_2_answers_two_choices_and_usage_sums_them(sim_factory, zero_delay, path):
    sim = sim_factory(itl_base=0.0 if zero_delay else 0.002)
    prompt = CHAT if path == "/v1/chat/completions" else {"prompt": "What is the capital of France?"}
    body = httpx.post(sim.url + path, json={**prompt, "max_tokens": 5, "n": 2}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    texts = [c["message"]["content"] if "message" in c else c["text"] for c in body["choices"]]
    assert all(len(t.split()) == 5 for t in texts) and texts[0] != texts[1]  # each choice its own text
    assert all(c["finish_reason"] == "length" for c in body["choices"])
    single = httpx.post(sim.url + path, json={**prompt, "max_tokens": 5}).json()
    usage = body["usage"]
    assert usage["prompt_tokens"] == single["usage"]["prompt_tokens"]  # the prompt counts once
    assert usage["completion_tokens"] == 10 and usage["total_tokens"] == usage["prompt_tokens"] + 10
    first = single["choices"][0]
    assert texts[0] == (first["message"]["content"] if "message" in first else first["text"])  # choice 0 as n=1
    again = httpx.post(sim.url + path, json={**prompt, "max_tokens": 5, "n": 2}).json()
    assert again["choices"] == body["choices"]  # deterministic


def test_n_without_max_tokens_gives_each_choice_its_own_seeded_length(sim_factory):
    sim = sim_factory(default_output_tokens=40, seed=3)
    body = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "n": 4}).json()
    lengths = [len(c["message"]["content"].split()) for c in body["choices"]]
    assert all(20 <= k <= 40 for k in lengths) and len(set(lengths)) > 1
    assert all(c["finish_reason"] == "stop" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == sum(lengths)


@pytest.mark.parametrize("zero_delay", [True, False], ids=["zero-delay", "engine"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"], ids=["chat", "completions"])
def test_n_2_stream_interleaves_one_choice_a_chunk_each_ending_with_its_finish(sim_factory, zero_delay, path):
    sim = sim_factory(itl_base=0.0 if zero_delay else 0.002)
    chat = path == "/v1/chat/completions"
    prompt = CHAT if chat else {"prompt": "What is the capital of France?"}
    payload = {**prompt, "max_tokens": 3, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(httpx.post(sim.url + path, json=payload).text)
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = [orjson.loads(e) for e in events[:-1]]
    assert all(len(c["choices"]) == 1 for c in chunks)
    indexes = [c["choices"][0]["index"] for c in chunks]
    if chat:  # a role event for each choice first
        assert [c["choices"][0]["delta"] for c in chunks[:2]] == [{"role": "assistant", "content": ""}] * 2
        assert indexes[:2] == [0, 1]
        chunks, indexes = chunks[2:], indexes[2:]
    assert indexes == [0, 1, 0, 1, 0, 1]  # interleaved, token by token
    for i in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert [c["finish_reason"] for c in mine] == [None, None, "length"]
        text = "".join(c["delta"]["content"] if chat else c["text"] for c in mine)
        assert len(text.split()) == 3
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 6
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 6


def test_n_below_1_is_400_like_vllm_sampling_params(sim):
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": "x", "n": 0})
    err = error_of(r)
    assert r.status_code == 400 and err["type"] == "BadRequestError"
    assert err["message"] == "n must be at least 1, got 0." and err["param"] is None
    r = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "n": "x"})
    assert r.status_code == 400 and error_of(r)["param"] == "body.n"


def test_stream_without_include_usage_has_no_usage_chunk(sim):
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": True})
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and len(events) == 4
    assert all("usage" not in orjson.loads(e) for e in events[:-1])
    assert orjson.loads(events[-2])["choices"][0]["finish_reason"] == "length"


def test_x_request_id_becomes_the_response_id_and_is_echoed_only_when_enabled(sim_factory):
    plain = sim_factory()
    r = httpx.post(plain.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}, headers={"X-Request-Id": "abc"})
    assert r.json()["id"] == "chatcmpl-abc" and "x-request-id" not in r.headers
    echoing = sim_factory(enable_request_id_headers=True)
    r = httpx.post(
        echoing.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1}, headers={"X-Request-Id": "r1"}
    )
    assert r.json()["id"] == "cmpl-r1" and r.headers["x-request-id"] == "r1"
    r = httpx.post(echoing.url + "/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert len(r.headers["x-request-id"]) == 32


def test_embeddings_are_deterministic_unit_vectors_in_vllm_shape(sim_factory):
    sim = sim_factory(embedding_dim=8)
    body = httpx.post(sim.url + "/v1/embeddings", json={"input": ["hello", "world"]}).json()
    assert body["object"] == "list" and body["id"].startswith("embd-") and body["model"] == "sim-model"
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1)]
    vec = body["data"][0]["embedding"]
    assert len(vec) == 8 and math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-5)
    again = httpx.post(sim.url + "/v1/embeddings", json={"input": "hello"}).json()
    assert again["data"][0]["embedding"] == vec
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > 0


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == response.status_code
    return body["error"]


def test_unknown_model_is_404_not_found_error_with_vllm_message(sim):
    r = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "model": "nope"})
    assert r.status_code == 404
    assert r.json() == {
        "error": {
            "message": "The model `nope` does not exist. Valid aliases: sim-model.",
            "type": "NotFoundError",
            "param": "model",
            "code": 404,
        }
    }


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("/v1/chat/completions", orjson.dumps({**CHAT, "max_tokens": -1})),
        ("/v1/chat/completions", orjson.dumps({**CHAT, "max_tokens": 0})),
        ("/v1/chat/completions", orjson.dumps({**CHAT, "n": 0})),
        ("/v1/chat/completions", orjson.dumps({**CHAT, "stream_options": {"include_usage": True}})),
        ("/v1/chat/completions", orjson.dumps({**CHAT, "max_tokens": 100_000})),
        ("/v1/chat/completions", orjson.dumps({"messages": []})),
        ("/v1/completions", orjson.dumps({"max_tokens": 3})),
        ("/v1/completions", orjson.dumps({"prompt": "x", "temperature": -1})),
        ("/v1/embeddings", orjson.dumps({"model": "sim-model"})),
    ],
    ids=[
        "negative-max-tokens", "zero-max-tokens", "n-0", "stream-options-without-stream", "over-context-length",
        "empty-conversation", "missing-prompt", "negative-temperature", "missing-input",
    ],
)  # fmt: skip
def test_invalid_requests_are_400_bad_request_error(sim, path, payload):
    r = httpx.post(sim.url + path, content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert error_of(r)["type"] == "BadRequestError"


@pytest.mark.parametrize(
    ("payload", "param", "detail"),
    [
        (b"notjson", "body.0", "{'type': 'json_invalid', 'loc': 'body.0', 'msg': 'JSON decode error', "
         "'input': '<dict of 0 items>', 'ctx': {'error': 'Expecting value'}}"),
        (b"[1, 2]", "body", "{'type': 'model_attributes_type', 'loc': 'body', 'msg': 'Input should be a valid "
         "dictionary or object to extract fields from', 'input': '<list of 2 items>'}"),
        (b'{"model": "sim-model"}', "body.messages",
         "{'type': 'missing', 'loc': 'body.messages', 'msg': 'Field required', 'input': '<dict of 1 items>'}"),
        (b'{"messages": "x"}', "body.messages",
         "{'type': 'list_type', 'loc': 'body.messages', 'msg': 'Input should be a valid list', 'input': 'x'}"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "abc"}', "body.max_tokens",
         "{'type': 'int_parsing', 'loc': 'body.max_tokens', 'msg': 'Input should be a valid integer, unable to "
         "parse string as an integer', 'input': 'abc'}"),
    ],
    ids=["invalid-json", "not-an-object", "missing-messages", "messages-not-a-list", "max-tokens-not-an-int"],
)  # fmt: skip
def test_schema_errors_are_400_bad_request_like_fastapi_in_vllm(sim, payload, param, detail):
    # Copied from what vLLM 0.32 answered for the same bodies.
    r = httpx.post(sim.url + "/v1/chat/completions", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json() == {
        "error": {"message": "1 validation error:\n  " + detail, "type": "Bad Request", "param": param, "code": 400}
    }


def test_vllm_parameter_errors_carry_the_parameter_suffix(sim):
    url = sim.url + "/v1/chat/completions"
    err = error_of(httpx.post(url, json={**CHAT, "max_tokens": -1}))
    assert err["message"] == "max_tokens must be at least 1, got -1. (parameter=max_tokens, value=-1)"
    err = error_of(httpx.post(url, json={**CHAT, "max_tokens": 3000}))
    assert err["param"] == "max_tokens"
    assert err["message"] == (
        "max_tokens=3000 cannot be greater than max_model_len=2048. Please request fewer output tokens. "
        "(parameter=max_tokens, value=3000)"
    )
    err = error_of(httpx.post(url, json={**CHAT, "max_completion_tokens": 3000}))
    assert err["param"] == "max_completion_tokens"
    err = error_of(httpx.post(url, json={**CHAT, "stream_options": {"include_usage": True}}))
    assert err["message"] == "Stream options can only be defined when `stream=True`. (parameter=stream_options)"
    err = error_of(httpx.post(sim.url + "/v1/completions", json={"max_tokens": 3}))
    assert err["param"] == "prompt"
    assert err["message"] == "Either prompt or prompt_embeds must be provided and non-empty. (parameter=prompt)"


def test_prompt_over_the_context_is_400_input_tokens(sim):
    # Text is tokenized with truncation at max_model_len + 1 ("at least"); token ids are counted exactly.
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": "hello " * 3000, "max_tokens": 4})
    err = error_of(r)
    assert err["type"] == "BadRequestError" and err["param"] == "input_tokens"
    assert err["message"] == (
        "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input "
        "tokens, which exceeds this limit even without any output tokens. Please reduce the length of the input "
        "prompt. (parameter=input_tokens, value=2049)"
    )
    err = error_of(httpx.post(sim.url + "/v1/completions", json={"prompt": [1] * 2100, "max_tokens": 1}))
    assert "your prompt contains 2100 input tokens" in err["message"] and err["message"].endswith("value=2100)")
    # A prompt that fills the context leaves no room: max_tokens is capped to 0.
    err = error_of(httpx.post(sim.url + "/v1/completions", json={"prompt": [1] * 2048, "max_tokens": 1}))
    assert err["message"] == "max_tokens must be at least 1, got 0. (parameter=max_tokens, value=0)"


def test_prompt_plus_max_tokens_over_the_context_is_capped_not_rejected(sim):
    r = httpx.post(sim.url + "/v1/completions", json={"prompt": [1] * 2040, "max_tokens": 100})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["completion_tokens"] == 8 and body["choices"][0]["finish_reason"] == "length"


def test_nonzero_priority_without_priority_scheduling_is_accepted_and_ignored(sim):
    # vLLM 0.32 accepts it on an fcfs server (older versions answered 400).
    r = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "priority": 5, "max_tokens": 1})
    assert r.status_code == 200, r.text
    r = httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "priority": "x", "max_tokens": 1})
    assert r.status_code == 400 and error_of(r)["type"] == "Bad Request"


def test_api_key_gives_401_with_a_plain_string_error(sim_factory):
    sim = sim_factory(api_key="secret")
    r = httpx.post(sim.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
    ok = httpx.post(
        sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}, headers={"Authorization": "Bearer secret"}
    )
    assert ok.status_code == 200
    assert httpx.get(sim.url + "/health").status_code == 200


def test_unknown_route_is_404_and_wrong_method_405_like_fastapi(sim):
    assert httpx.get(sim.url + "/nope").json() == {"detail": "Not Found"}
    r = httpx.get(sim.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}


def test_openai_sync_client_chat_completions_and_models(sim):
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    assert [m.id for m in client.models.list()] == ["sim-model"]
    reply = client.chat.completions.create(model="sim-model", messages=CHAT["messages"], max_tokens=5)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 5
    text = client.completions.create(model="sim-model", prompt="hello", max_tokens=2)
    assert text.usage.completion_tokens == 2
    emb = client.embeddings.create(model="sim-model", input="hi")
    assert len(emb.data[0].embedding) == 32
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=CHAT["messages"])
    assert info.value.body["message"] == "The model `nope` does not exist. Valid aliases: sim-model."


async def test_openai_async_client_streams_with_include_usage(sim):
    client = openai.AsyncOpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    stream = await client.chat.completions.create(
        model="sim-model", messages=CHAT["messages"], max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]).split().__len__() == 6
    two = await client.chat.completions.create(model="sim-model", messages=CHAT["messages"], max_tokens=2, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.usage.completion_tokens == 4
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="sim-model", messages=CHAT["messages"], n=0)
    await client.close()


def test_openai_sync_client_streams_completions(sim):
    client = openai.OpenAI(base_url=sim.base_url, api_key="x", max_retries=0)
    chunks = list(client.completions.create(model="sim-model", prompt="hi", max_tokens=3, stream=True))
    assert [c.choices[0].finish_reason for c in chunks] == [None, None, "length"]
