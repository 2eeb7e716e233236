"""Every refusal in the OpenAI error shape with the right status; vLLM's own errors passed through."""

from __future__ import annotations

import datetime as dt
import time

import httpx
import openai
import pytest

from devstack.net import free_port

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}


@pytest.fixture
def sim_stack(stack_factory):
    """A stack with one simulator serving sim-model behind one consumer, small body and queue-timeout
    limits, and alice's token."""
    s = stack_factory(max_body_bytes=4096, queue_timeout_s=1.0, retry_after_s=3)
    s.upstream = s.add_sim(model="sim-model", served_model_names=["sim-model"])
    s.add_consumer("sim-model", s.upstream)
    s.token = s.create_token("alice", priority=5, threshold=100)
    s.wait_models({"sim-model"}, s.token)
    yield s
    s.wait_idle()


def post(sim_stack, body=None, token: str | None = "default", path="/chat/completions", **kw) -> httpx.Response:
    headers = kw.pop("headers", {})
    if token == "default":
        token = sim_stack.token
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    if body is None:
        body = CHAT
    if isinstance(body, bytes):
        return httpx.post(sim_stack.base_url + path, content=body, headers=headers, timeout=20, **kw)
    return httpx.post(sim_stack.base_url + path, json=body, headers=headers, timeout=20, **kw)


def assert_error(r: httpx.Response, status: int, code) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    assert err["code"] == code
    return err


@pytest.mark.parametrize(
    ("authorization", "fragment"),
    [(None, "missing"), ("Basic abc", "malformed"), ("Bearer sk-llmd-unknown", "invalid api key")],
)
def test_401_for_missing_malformed_or_unknown_tokens(sim_stack, authorization, fragment):
    headers = {"authorization": authorization} if authorization else {}
    r = httpx.post(sim_stack.base_url + "/chat/completions", json=CHAT, headers=headers)
    err = assert_error(r, 401, "invalid_api_key")
    assert fragment in err["message"].lower()


def test_401_for_a_revoked_token(sim_stack):
    token = sim_stack.create_token("bob", priority=1, threshold=10)
    assert post(sim_stack, token=token).status_code == 200

    async def revoke():
        from llm_dispatcher.db import Store

        async with Store(sim_stack.database_url) as store:
            await store.revoke_token("bob")

    sim_stack.bg.call(revoke())
    err = assert_error(post(sim_stack, token=token), 401, "invalid_api_key")
    assert "revoked" in err["message"].lower()


def test_401_for_an_expired_token(sim_stack):
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    token = sim_stack.create_token("old", priority=1, threshold=10, expires_at=past)
    err = assert_error(post(sim_stack, token=token), 401, "invalid_api_key")
    assert "expired" in err["message"].lower()


def test_the_openai_client_raises_authentication_error(sim_stack):
    c = openai.OpenAI(base_url=sim_stack.base_url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        c.models.list()


def test_400_for_invalid_json_or_missing_model(sim_stack):
    assert_error(post(sim_stack, b"{not json"), 400, "invalid_request_error")
    err = assert_error(post(sim_stack, {"messages": []}), 400, "invalid_request_error")
    assert err["param"] == "model"
    assert_error(post(sim_stack, b"[1, 2]"), 400, "invalid_request_error")


def test_404_for_an_unknown_model(sim_stack):
    err = assert_error(post(sim_stack, {**CHAT, "model": "gpt-9"}), 404, "model_not_found")
    assert err["param"] == "model"


def test_404_for_a_model_the_token_may_not_use(sim_stack):
    token = sim_stack.create_token("narrow", priority=1, threshold=10, allowed_models=["other"])
    assert_error(post(sim_stack, token=token), 404, "model_not_found")


def test_413_for_a_body_over_the_limit(sim_stack):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    assert_error(post(sim_stack, big), 413, "request_too_large")


def test_503_with_retry_after_when_no_replica_is_live(sim_stack):
    sim_stack.stop_consumer(sim_stack.consumers[0])
    import time

    deadline = time.monotonic() + 5
    while (r := post(sim_stack)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert_error(r, 503, "no_live_replica")
    assert r.headers["retry-after"] == "3"


def test_502_when_the_granted_replica_is_unreachable(stack_factory):
    s = stack_factory()
    sim = s.add_sim(model="m")
    s.add_consumer("m", sim, advertise_url=f"http://127.0.0.1:{free_port()}")
    token = s.create_token("t", priority=1, threshold=10)
    s.wait_models({"m"}, token)
    r = httpx.post(
        s.base_url + "/completions", json={"model": "m", "prompt": "x"}, headers={"authorization": f"Bearer {token}"}
    )
    assert_error(r, 502, "upstream_unreachable")
    s.wait_idle()


def test_vllm_errors_pass_through_with_status_and_body_unchanged(sim_stack):
    r = post(sim_stack, {**CHAT, "max_tokens": -1})
    direct = httpx.post(sim_stack.upstream + "/v1/chat/completions", json={**CHAT, "max_tokens": -1})
    assert r.status_code == direct.status_code == 400
    assert r.json() == direct.json()
    assert r.json()["error"]["type"] == "BadRequestError"


def test_vllm_404_passes_through_for_a_model_the_replica_does_not_serve(stack_factory):
    s = stack_factory()
    sim = s.add_sim(model="real-name")
    s.add_consumer("alias", sim)  # misconfigured replica: vLLM itself answers 404
    token = s.create_token("t", priority=1, threshold=10)
    s.wait_models({"alias"}, token)
    c = openai.OpenAI(base_url=s.base_url, api_key=token, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        c.completions.create(model="alias", prompt="x", max_tokens=1)
    assert info.value.body["type"] == "NotFoundError" and info.value.body["code"] == 404
    s.wait_idle()


def test_unknown_routes_answer_in_the_openai_shape(sim_stack):
    r = httpx.get(sim_stack.url + "/nothing-here")
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(sim_stack.base_url + "/chat/completions")  # only POST is proxied
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_a_vllm_that_drops_mid_stream_ends_the_stream_with_an_error_event_and_the_lease_is_released(
    stack_factory,
):
    s = stack_factory(usage_flush_interval_s=0.1)
    sim = s.add_sim(model="m", itl_base=0.005, drop_mid_stream_rate=1.0)
    s.add_consumer("m", sim)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({"m"}, token)
    c = openai.OpenAI(base_url=s.base_url, api_key=token, max_retries=0)
    with pytest.raises(openai.APIError, match="lost mid-stream"):  # the error event, not a broken connection
        for _ in c.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=40, stream=True
        ):
            pass
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 40, "stream": True}
    with httpx.stream(
        "POST", s.base_url + "/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}
    ) as r:
        raw = b"".join(r.iter_bytes())  # read to its end: no transport error
    assert raw.endswith(b"data: [DONE]\n\n") and b'"code":"upstream_disconnected"' in raw
    s.wait_idle()
    records = s.usage_rows(2)
    assert [r["status"] for r in records] == [502, 502]  # recorded as an upstream failure, not a client disconnect


def test_400_for_a_priority_header_that_is_not_an_integer(sim_stack):
    err = assert_error(post(sim_stack, headers={"x-priority": "high"}), 400, "invalid_request_error")
    assert err["param"] == "X-Priority"


def stream_body(max_tokens: int) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": max_tokens, "stream": True}


def test_a_stream_that_goes_silent_longer_than_the_read_timeout_ends_with_an_error_event(stack_factory):
    s = stack_factory(usage_flush_interval_s=0.1, upstream_read_timeout_s=0.4)
    sim = s.add_sim(model="m", itl_base=0.02)
    s.add_consumer("m", sim)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({"m"}, token)
    headers = {"authorization": f"Bearer {token}"}
    with httpx.stream("POST", s.base_url + "/chat/completions", json=stream_body(200), headers=headers) as r:
        chunks = r.iter_bytes()
        first = next(chunks)
        assert httpx.post(sim + "/sim/config", json={"itl_base": 30}).status_code == 200  # vLLM stalls
        stalled = time.monotonic()
        raw = first + b"".join(chunks)
        silent_for = time.monotonic() - stalled
    assert raw.endswith(b"data: [DONE]\n\n") and b'"code":"upstream_disconnected"' in raw
    assert 0.4 <= silent_for < 2.0  # cut after 0.4-0.5 s of silence (and the step that was running)
    s.wait_idle()
    assert [r["status"] for r in s.usage_rows(1)] == [502]


def test_a_stream_whose_gaps_stay_under_the_read_timeout_runs_longer_than_it_to_its_end(stack_factory):
    s = stack_factory(upstream_read_timeout_s=0.4)
    sim = s.add_sim(model="m", itl_base=0.15)  # 12 tokens: ~1.8 s in all, 0.15 s between chunks
    s.add_consumer("m", sim)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({"m"}, token)
    c = openai.OpenAI(base_url=s.base_url, api_key=token, max_retries=0)
    started = time.monotonic()
    events = list(c.chat.completions.create(**stream_body(12)))
    assert time.monotonic() - started > 1.2
    assert sum(1 for e in events if e.choices and e.choices[0].delta.content) == 12
    s.wait_idle()
