"""Per-key limits end to end, with the official `openai` client: 429 `rate_limit_exceeded` with
OpenAI's x-ratelimit-* headers and Retry-After, the client's retry honouring them, limits per end user,
the end user recorded in usage; and several senders sharing one limit through the real Redis."""

from __future__ import annotations

import asyncio
import os

import httpx
import openai
import pytest

MODEL = "sim-model"
REDIS_URL = os.environ.get("LLMD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def chat(**extra) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


@pytest.fixture
def stack(stack_factory):
    s = stack_factory()
    s.add_consumer(MODEL, s.add_sim(model=MODEL, itl_base=0.02))
    s.wait_models({MODEL}, s.create_token("probe"))
    yield s
    s.wait_idle()


def test_over_its_rpm_a_key_gets_429_with_openais_headers(stack) -> None:
    token = stack.create_token("limited", rpm=2, tpm=100_000)
    client = openai.OpenAI(base_url=stack.base_url, api_key=token, max_retries=0)
    ok = client.chat.completions.with_raw_response.create(**chat())
    assert ok.headers["x-ratelimit-limit-requests"] == "2"
    assert ok.headers["x-ratelimit-remaining-requests"] == "1"
    assert ok.headers["x-ratelimit-limit-tokens"] == "100000"
    assert ok.headers["x-ratelimit-reset-requests"].endswith(("s", "ms"))
    client.chat.completions.create(**chat())
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(**chat())
    r = refused.value.response
    body = r.json()["error"]
    assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
    assert "requests per min (RPM): limit 2, used 2" in body["message"]
    assert r.headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(r.headers["retry-after"]) <= 60 and int(r.headers["retry-after-ms"]) <= 60_000


def test_an_unlimited_key_gets_no_rate_limit_headers(stack) -> None:
    token = stack.create_token("free")
    r = httpx.post(stack.base_url + "/chat/completions", json=chat(), headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 200 and not any(h.startswith("x-ratelimit") for h in r.headers)


async def test_the_clients_retry_waits_for_a_parallel_slot_as_retry_after_says(stack) -> None:
    token = stack.create_token("one-at-a-time", max_parallel=1)
    client = openai.AsyncOpenAI(base_url=stack.base_url, api_key=token, max_retries=3)
    raw = openai.AsyncOpenAI(base_url=stack.base_url, api_key=token, max_retries=0)
    long = asyncio.create_task(client.chat.completions.create(**chat(max_tokens=40)))  # ~1 s at 20 ms a token
    await asyncio.sleep(0.3)
    with pytest.raises(openai.RateLimitError) as refused:
        await raw.chat.completions.create(**chat())
    assert refused.value.response.json()["error"]["type"] == "parallel_requests"
    assert refused.value.response.headers["retry-after-ms"] == "1000"
    retried = await client.chat.completions.with_raw_response.create(**chat())
    assert retried.http_response.status_code == 200, "served after a retry, once the first one ended"
    assert (await long).choices[0].message.content


def test_end_users_of_one_key_each_have_their_own_parallel_limit(stack) -> None:
    token = stack.create_token("app", user_max_parallel=1)
    headers = {"authorization": f"Bearer {token}"}

    async def run() -> list[int]:
        async with httpx.AsyncClient(base_url=stack.base_url, headers=headers, timeout=30) as http:
            alice = asyncio.create_task(http.post("/chat/completions", json=chat(user="alice", max_tokens=30)))
            await asyncio.sleep(0.2)
            others = await asyncio.gather(
                http.post("/chat/completions", json=chat(user="alice")),
                http.post("/chat/completions", json=chat(), headers={"x-openwebui-user-id": "bob"}),
            )
            return [(await alice).status_code, *(r.status_code for r in others)]

    assert asyncio.run(run()) == [200, 429, 200]
    rows = stack.usage_rows(3)
    assert sorted(r["end_user"] or "" for r in rows if r["token_name"] == "app") == ["alice", "alice", "bob"]


def test_four_senders_on_one_redis_never_pass_a_keys_rpm(stack_factory, tmp_path) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    # The Redis keys are under the test's own queue prefix.
    senders = [stack_factory(database_url=database_url, limits_redis_url=REDIS_URL) for _ in range(4)]
    senders[0].add_consumer(MODEL, senders[0].add_sim(model=MODEL), max_concurrency=64)
    token = senders[0].create_token("shared", rpm=20)
    for s in senders:
        s.wait_models({MODEL}, token)

    async def fire() -> list[int]:
        async with httpx.AsyncClient(headers={"authorization": f"Bearer {token}"}, timeout=30) as http:
            calls = [http.post(senders[i % 4].base_url + "/chat/completions", json=chat()) for i in range(60)]
            return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(fire())
    assert statuses.count(200) == 20 and statuses.count(429) == 40
    for s in senders:
        s.wait_idle()


def test_a_decision_run_beside_the_queue_wait_still_refuses_exactly_and_frees_its_grant(
    stack_factory, tmp_path
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path}/shared.db"
    a, b = (stack_factory(database_url=database_url, limits_redis_url=REDIS_URL) for _ in range(2))
    sim = a.add_sim(model=MODEL)
    consumer = a.add_consumer(MODEL, sim)
    token = a.create_token("shared", rpm=20)
    a.wait_models({MODEL}, token)
    b.wait_models({MODEL}, token)
    headers = {"authorization": f"Bearer {token}"}
    for _ in range(18):  # sender a's last decision: 2 of 20 left, far enough to decide beside the wait
        assert httpx.post(a.base_url + "/chat/completions", json=chat(), headers=headers).status_code == 200
    for _ in range(2):  # the other sender takes them
        assert httpx.post(b.base_url + "/chat/completions", json=chat(), headers=headers).status_code == 200
    grants = consumer.metrics.registry.get_sample_value(
        "llmd_consumer_grants_total", {"model": MODEL, "replica": consumer.settings.replica_id}
    )
    r = httpx.post(a.base_url + "/chat/completions", json=chat(), headers=headers)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert r.headers["x-ratelimit-remaining-requests"] == "0" and r.headers["retry-after"]
    after = consumer.metrics.registry.get_sample_value(
        "llmd_consumer_grants_total", {"model": MODEL, "replica": consumer.settings.replica_id}
    )
    assert after == grants + 1  # its ticket went out beside the decision and was granted ...
    a.wait_idle()  # ... and that grant was released without reaching vLLM
    assert httpx.post(a.base_url + "/chat/completions", json=chat(), headers=headers).status_code == 429  # before
    assert (
        consumer.metrics.registry.get_sample_value(
            "llmd_consumer_grants_total", {"model": MODEL, "replica": consumer.settings.replica_id}
        )
        == after
    )  # the ticket now: a refusal was the last decision seen
    served = sum(
        float(line.rsplit(" ", 1)[1])
        for line in httpx.get(sim + "/metrics").text.splitlines()
        if line.startswith("vllm:request_success_total{")
    )
    assert served == 20  # the limit, exactly
