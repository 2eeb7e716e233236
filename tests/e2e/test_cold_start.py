"""A cold start in any order: a sender and a consumer started while the broker is down keep running,
report not-ready (and the sender answers 503 with Retry-After), and become ready by themselves once
the broker is up."""

from __future__ import annotations

import subprocess
import time

import httpx
import pytest

from devstack.broker import PrivateBroker
from devstack.broker import available as broker_available
from devstack.net import free_port
from devstack.processes import EXE
from devstack.processes import ProcessStack as Stack

MODEL = "cold-model"

pytestmark = pytest.mark.skipif(not broker_available(), reason="needs rabbitmq-server on this machine")


def status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0


def wait_status(url: str, want: int, timeout: float, procs: list[subprocess.Popen]) -> float:
    """Seconds until `url` answers `want`; fails if it does not in time or a process exits."""
    started = time.monotonic()
    while status(url) != want:
        for p in procs:
            assert p.poll() is None, f"{p.args} exited ({p.returncode})"
        assert time.monotonic() - started < timeout, f"{url} never answered {want}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_a_release_started_before_its_broker_waits_not_ready_and_converges(tmp_path):
    broker = PrivateBroker()  # its port is chosen, nothing listens there yet
    stack = Stack(str(tmp_path), model=MODEL)
    stack.env["LLMD_AMQP_URL"] = broker.url
    stack.env["LLMD_HEARTBEAT_INTERVAL_S"] = "0.2"
    sender_port = free_port()
    sender_url = f"http://127.0.0.1:{sender_port}"
    try:
        # The sender first, then the consumer, then its vLLM: the worst order there is.
        sender = subprocess.Popen(
            [*EXE, "sender"],
            env={**stack.env, "LLMD_PORT": str(sender_port), "LLMD_METRICS_PORT": "0", "LLMD_MODELS": f'["{MODEL}"]'},
        )
        stack.procs.append(sender)
        vllm_port = free_port()
        consumer = stack.start_consumer(f"http://127.0.0.1:{vllm_port}")
        stack.start_sim([], port=vllm_port)
        token = stack.token("cold")
        wait_status(sender_url + "/livez", 200, 30, stack.procs)
        time.sleep(2)  # several connection attempts have failed by now
        assert sender.poll() is None and consumer.poll() is None  # neither exited
        assert status(sender_url + "/readyz") == 503
        assert status(consumer.url + "/readyz") == 503  # type: ignore[attr-defined]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        headers = {"authorization": f"Bearer {token}"}
        r = httpx.post(sender_url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert r.status_code == 503 and "retry-after" in r.headers
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}

        broker.start()
        up = time.monotonic()
        wait_status(sender_url + "/readyz", 200, 20, stack.procs)
        wait_status(consumer.url + "/readyz", 200, 20, stack.procs)  # type: ignore[attr-defined]
        ready_after = time.monotonic() - up
        assert ready_after < 10, ready_after  # retries back off to 5 s at most
        deadline = time.monotonic() + 10
        while (
            r := httpx.post(sender_url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        ).status_code != 200:
            assert time.monotonic() < deadline, r.text  # the replica's heartbeat is on its way
            time.sleep(0.2)
        assert r.json()["usage"]["completion_tokens"] == 2
    finally:
        stack.stop()
        broker.stop()


def test_a_consumer_stopped_while_waiting_for_the_broker_exits_at_once(tmp_path):
    broker = PrivateBroker()
    stack = Stack(str(tmp_path), model=MODEL)
    stack.env["LLMD_AMQP_URL"] = broker.url
    try:
        consumer = stack.start_consumer("http://127.0.0.1:9")
        time.sleep(1)
        consumer.terminate()
        assert consumer.wait(10) == 0
    finally:
        stack.stop()
        broker.stop()
