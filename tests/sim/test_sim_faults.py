"""Fault injection: failures, stalls, mid-stream drops, slow start-up, death; runtime control; signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devstack.net import free_port

CHAT = {"messages": [{"role": "user", "content": "hello"}]}


def test_failure_rate_1_returns_the_configured_status_with_vllm_error_body(sim_factory):
    sim = sim_factory(failure_rate=1.0, failure_status=500)
    r = httpx.post(sim.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["type"] == "InternalServerError" and error["code"] == 500 and error["param"] is None


def test_failure_rate_is_seeded_and_roughly_honoured(sim_factory):
    def statuses(seed: int) -> list[int]:
        sim = sim_factory(failure_rate=0.3, failure_status=503, seed=seed)
        with httpx.Client(base_url=sim.url) as c:
            return [c.post("/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code for _ in range(60)]

    first, again = statuses(3), statuses(3)
    assert first == again and set(first) == {200, 503}
    assert 8 <= first.count(503) <= 30


def test_runtime_config_sets_faults_and_refuses_unknown_fields(sim):
    r = httpx.post(sim.url + "/sim/config", json={"failure_rate": 1, "failure_status": 503})
    assert r.status_code == 200 and r.json()["failure_rate"] == 1.0
    failed = httpx.post(sim.url + "/v1/chat/completions", json=CHAT)
    assert failed.status_code == 503 and failed.json()["error"]["type"] == "ServiceUnavailableError"
    assert httpx.post(sim.url + "/sim/config", json={"failure_rate": 0}).status_code == 200
    assert httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}).status_code == 200
    bad = httpx.post(sim.url + "/sim/config", json={"max_num_seqs": 3})
    assert bad.status_code == 400 and "max_num_seqs" in bad.json()["error"]["message"]
    assert httpx.post(sim.url + "/sim/config", json={"failure_rate": 2}).status_code == 400
    assert httpx.get(sim.url + "/sim/config").json()["failure_rate"] == 0.0


@pytest.mark.parametrize("itl", [0.0, 0.002], ids=["zero-delay", "engine"])
def test_stall_before_first_token_delays_the_first_chunk(sim_factory, itl):
    sim = sim_factory(itl_base=itl, stall_before_first_token=0.3)
    t0 = time.monotonic()
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 2, "stream": True}) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if line.startswith("data: "))
        assert time.monotonic() - t0 >= 0.29


@pytest.mark.parametrize("itl", [0.0, 0.002], ids=["zero-delay", "engine"])
def test_drop_mid_stream_closes_the_connection_after_half_the_tokens(sim_factory, itl):
    sim = sim_factory(itl_base=itl, drop_mid_stream_rate=1.0)
    chunks = []
    with pytest.raises(httpx.RemoteProtocolError):
        with httpx.stream(
            "POST", sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 10, "stream": True}
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    chunks.append(line)
    assert 1 <= len(chunks) <= 6 and "[DONE]" not in chunks[-1]
    with pytest.raises(httpx.RemoteProtocolError):  # non-streamed: a truncated body
        httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 10})
    assert not sim.app.engine.running
    # the server is still fine
    httpx.post(sim.url + "/sim/config", json={"drop_mid_stream_rate": 0})
    assert httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}).status_code == 200


def test_startup_delay_gives_503_on_health_and_requests_until_ready(sim_factory):
    sim = sim_factory(startup_delay=0.4)
    assert httpx.get(sim.url + "/health").status_code == 503
    r = httpx.post(sim.url + "/v1/chat/completions", json=CHAT)
    assert r.status_code == 503 and r.json()["error"]["code"] == 503
    time.sleep(0.45)
    assert httpx.get(sim.url + "/health").status_code == 200
    assert httpx.post(sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 1}).status_code == 200


def test_die_makes_health_503_fails_in_flight_and_new_requests_and_revive_heals(sim_factory):
    sim = sim_factory(itl_base=0.01)
    with httpx.stream("POST", sim.url + "/v1/chat/completions", json={**CHAT, "max_tokens": 500, "stream": True}) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert httpx.post(sim.url + "/sim/die").json()["dead"] is True
        rest = [line for line in lines if line.startswith("data: ")]
    assert '"code":500' in rest[-2] and rest[-1] == "data: [DONE]"
    assert httpx.get(sim.url + "/health").status_code == 503
    failed = httpx.post(sim.url + "/v1/chat/completions", json=CHAT)
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "InternalServerError"
    httpx.post(sim.url + "/sim/revive")
    assert httpx.get(sim.url + "/health").status_code == 200


def test_die_with_exit_stops_the_server(sim_factory):
    sim = sim_factory()
    httpx.post(sim.url + "/sim/die", json={"exit": True})
    sim._thread.join(5)
    assert not sim._thread.is_alive()
    with pytest.raises(httpx.ConnectError):
        httpx.get(sim.url + "/health")


def test_cli_serves_then_sigusr1_turns_unhealthy_and_sigterm_exits_cleanly():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_dispatcher", "sim", "--port", str(port), "--served-model-name", "m1", "m2",
         "--max-num-seqs", "4", "--itl-base", "0.001"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 15
        while True:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end, "the CLI simulator did not start"
            time.sleep(0.05)
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["m1", "m2"]
        assert httpx.post(url + "/v1/chat/completions", json={**CHAT, "max_tokens": 2}).status_code == 200
        families = {f.name for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
        assert "vllm:num_requests_running" in families
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.2)
        assert httpx.get(url + "/health").status_code == 503
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
