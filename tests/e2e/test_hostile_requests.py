"""What a hostile token holder can send, and what the gateway does with it: only the inference
endpoints reach a replica (paths matched after decoding and normalising, refused before any ticket
or lease), client strings never become metric labels or long echoes, one Authorization header,
bounded headers and body deadlines, and input vLLM would refuse refused the same way."""

from __future__ import annotations

import http.client
import socket
import time

import httpx
import orjson
import pytest

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1}


@pytest.fixture
def sim_stack(stack_factory):
    """A stack with one simulator behind one consumer, a short body deadline, and mallory's token."""
    s = stack_factory(body_read_timeout_s=0.5)
    s.upstream = s.add_sim(model=MODEL)
    s.consumer = s.add_consumer(MODEL, s.upstream)
    s.token = s.create_token("mallory", priority=5, threshold=100)
    s.wait_models({MODEL}, s.token)
    yield s
    s.wait_idle()


def raw_post(sim_stack, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict, bytes]:
    """POST with the path sent byte for byte (no client-side normalisation of `..` or `%2e`)."""
    host, port = sim_stack.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        for k, v in {
            "authorization": f"Bearer {sim_stack.token}",
            "content-type": "application/json",
            "content-length": str(len(body)),
            **(headers or {}),
        }.items():
            conn.putheader(k, v)
        conn.endheaders(body)
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def grants(sim_stack) -> float:
    return sum(
        s.value for m in sim_stack.consumer.metrics.grants.collect() for s in m.samples if s.name.endswith("_total")
    )


def sim_alive(sim_stack) -> bool:
    return (
        httpx.post(
            sim_stack.base_url + "/chat/completions",
            json=CHAT,
            headers={"authorization": f"Bearer {sim_stack.token}"},
            timeout=10,
        ).status_code
        == 200
    )


HOSTILE_PATHS = [
    "/v1/../sim/die",  # dot segments
    "/v1/%2e%2e/sim/die",  # encoded dots
    "/v1/%2E%2E/sim/die",
    "/v1/..%2fsim/die",  # encoded slash
    "/v1/%2e%2e%2fsim%2fdie",
    "/v1/%252e%252e/sim/die",  # doubly encoded
    "/v1//../../sim/die",
    "/v1/./../sim/die",
    "/v1/chat/completions/../../../sim/die",
    "/sim/die",
    "/v1/models",  # a GET route, not an inference endpoint (it used to take a lease)
    "/v1/load_lora_adapter",  # vLLM's operator routes, inside and outside /v1
    "/v1/unload_lora_adapter",
    "/sleep",
    "/collective_rpc",
    "/reset_prefix_cache",
    "/start_profile",
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_a_path_off_the_inference_list_is_a_404_before_any_ticket_and_the_replica_is_untouched(sim_stack, path):
    before = grants(sim_stack)
    status, _, body = raw_post(sim_stack, path, orjson.dumps({"model": MODEL}))
    assert status == 404, body
    err = orjson.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "unknown_url"
    assert grants(sim_stack) == before  # no ticket was granted, no lease taken
    assert sim_stack.in_flight() == [0]
    assert sim_alive(sim_stack)  # the simulator's /sim/die was never reached


def test_a_normalised_path_on_the_list_is_forwarded_as_the_canonical_path(sim_stack):
    status, _, body = raw_post(sim_stack, "/v1/./chat//completions", orjson.dumps(CHAT))
    assert status == 200, body
    assert orjson.loads(body)["object"] == "chat.completion"


def test_other_methods_on_an_inference_path_are_405_and_get_v1_models_still_works(sim_stack):
    r = httpx.get(sim_stack.base_url + "/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.get(sim_stack.base_url + "/models", headers={"authorization": f"Bearer {sim_stack.token}"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == MODEL


def test_made_up_model_names_never_become_metric_labels_nor_long_echoes(sim_stack):
    samples_before = len(httpx.get(sim_stack.metrics_url + "/metrics").text)
    headers = {"authorization": f"Bearer {sim_stack.token}"}
    with httpx.Client(headers=headers, timeout=10) as c:
        for i in range(200):
            name = f"fake-{i}-" + "\x00" * 10 + "x" * 10_000
            r = c.post(sim_stack.base_url + "/chat/completions", json={**CHAT, "model": name})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert len(r.content) < 600  # the name is cut, not echoed whole
            assert "\x00" not in r.json()["error"]["message"]
    text = httpx.get(sim_stack.metrics_url + "/metrics").text
    assert "fake-" not in text and "\x00" not in text
    assert 'model="(other)"' in text
    assert len(text) < samples_before + 4096  # one bucket, not one series per name


def test_two_authorization_headers_are_refused_on_every_route(sim_stack):
    good, bad = f"Bearer {sim_stack.token}", "Bearer sk-llmd-someone-else"
    for method, url in [
        ("POST", sim_stack.base_url + "/chat/completions"),
        ("GET", sim_stack.base_url + "/models"),
        ("GET", sim_stack.base_url + f"/models/{MODEL}"),
    ]:
        for pair in ([good, bad], [bad, good]):
            r = httpx.request(
                method,
                url,
                json=CHAT if method == "POST" else None,
                headers=[("authorization", pair[0]), ("authorization", pair[1])],
            )
            assert r.status_code == 400, (method, url, r.text)
            assert r.json()["error"]["param"] == "Authorization"
    assert sim_stack.in_flight() == [0]


def test_a_body_shorter_than_its_content_length_gets_408_within_the_deadline(sim_stack):
    host, port = sim_stack.url.removeprefix("http://").split(":")
    body = orjson.dumps(CHAT)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer " + sim_stack.token.encode() + b"\r\n"
            b"content-length: " + str(len(body) + 50).encode() + b"\r\n\r\n" + body
        )
        t0 = time.monotonic()
        answer = b""
        while b'"request_timeout"' not in answer and (chunk := sock.recv(65536)):
            answer += chunk
        waited = time.monotonic() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"request_timeout"' in answer
    assert waited < 5


def test_stream_options_that_is_not_an_object_is_refused_like_vllm(sim_stack):
    for value in ("yes", 1, ["include_usage"], True):
        r = httpx.post(
            sim_stack.base_url + "/chat/completions",
            json={**CHAT, "stream": True, "stream_options": value},
            headers={"authorization": f"Bearer {sim_stack.token}"},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options", r.text


def test_a_request_id_with_bytes_outside_printable_ascii_is_refused_and_a_plain_one_kept_byte_for_byte(sim_stack):
    status, _, body = raw_post(
        sim_stack,
        "/v1/chat/completions",
        orjson.dumps(CHAT),
        {"x-request-id": "caf\u00e9-\u2603".encode().decode("latin-1")},
    )
    assert status == 400 and orjson.loads(body)["error"]["param"] == "X-Request-Id"
    rid = "req-AZaz09_.:~!*'()-" + "x" * 20
    r = httpx.post(
        sim_stack.base_url + "/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {sim_stack.token}", "x-request-id": rid},
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == rid
    assert r.json()["id"] == f"chatcmpl-{rid}"  # vLLM (and the simulator) build the id from it


def test_the_429_tells_the_caller_to_retry_without_revealing_the_queue_depth(stack_factory):
    s = stack_factory(models=(MODEL,))
    sim = s.add_sim(model=MODEL, itl_base=0.05)
    s.add_consumer(MODEL, sim, max_concurrency=1)
    token = s.create_token("low", priority=1, threshold=0)
    s.wait_models({MODEL}, token)
    r = httpx.post(s.base_url + "/chat/completions", json=CHAT, headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 429 and r.headers["retry-after"]
    message = r.json()["error"]["message"]
    assert "retry" in message and not any(ch.isdigit() for ch in message.replace("429", ""))


def test_request_headers_over_the_bound_get_431_and_the_connection_closed(stack_factory):
    s = stack_factory(max_header_bytes=16384)
    host, port = s.url.removeprefix("http://").split(":")

    def send_head(filler: int) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"GET /livez HTTP/1.1\r\nhost: x\r\nx-filler: ")
            sent = 0
            try:
                while sent < filler:  # in pieces, as a slow client would: the bound holds across reads
                    sock.sendall(b"a" * 4096)
                    sent += 4096
                sock.sendall(b"\r\nconnection: close\r\n\r\n")
            except OSError:
                pass  # closed by the server mid-way: what is wanted
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
            return answer

    assert send_head(8_000).startswith(b"HTTP/1.1 200")
    refused = send_head(1_000_000)
    assert refused.startswith(b"HTTP/1.1 431"), refused[:100]
    assert orjson.loads(refused.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_header_fields_too_large"


def test_an_empty_request_id_is_taken_as_none_and_one_is_made(sim_stack):
    r = httpx.post(
        sim_stack.base_url + "/chat/completions",
        json=CHAT,
        headers={"authorization": f"Bearer {sim_stack.token}", "x-request-id": ""},
    )
    assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32
