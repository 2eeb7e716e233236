"""The real entry points as separate processes: graceful shutdown of both services, and a consumer
killed with SIGKILL while it holds an unacked ticket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import httpx
import pytest

from devstack.processes import EXE
from devstack.processes import ProcessStack as Stack

MODEL = "proc-model"


@pytest.fixture
def process_stack(tmp_path, amqp_url):
    """The real entry points as separate processes (simulator, consumer, sender): each test starts what it needs."""
    stack = Stack(str(tmp_path), model=MODEL)
    stack.env["LLMD_AMQP_URL"] = amqp_url
    stack.env["LLMD_HEARTBEAT_INTERVAL_S"] = "0.2"
    stack.env["LLMD_SCRAPE_INTERVAL_S"] = "0.1"
    yield stack
    stack.stop()


def body(max_tokens: int, stream: bool = False) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": max_tokens, "stream": stream}


def stream_in_thread(url: str, token: str, max_tokens: int) -> dict:
    """Starts a streaming request in a thread; the dict fills in with status and body when it ends."""
    out: dict = {}

    def run() -> None:
        try:
            with httpx.stream(
                "POST",
                url + "/v1/chat/completions",
                json=body(max_tokens, True),
                headers={"authorization": f"Bearer {token}"},
                timeout=30,
            ) as r:
                out["status"] = r.status_code
                out["body"] = b"".join(r.iter_bytes())
        except httpx.HTTPError as exc:
            out["error"] = exc

    out["thread"] = threading.Thread(target=run, daemon=True)
    out["thread"].start()
    return out


def consumer_state(proc) -> dict:
    return httpx.get(proc.url + "/readyz").json()


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.02)


def test_sender_sigterm_finishes_streams_then_exits(process_stack):
    sim = process_stack.start_sim(["--itl-base", "0.02"])
    process_stack.start_consumer(sim)
    sender = process_stack.start_sender(LLMD_SHUTDOWN_GRACE_S="20")
    token = process_stack.token("t")
    process_stack.wait_live(token)
    s = stream_in_thread(process_stack.url, token, 100)  # ~2 s
    wait_until(lambda: consumer_state(process_stack.consumers[0])["in_flight"] == 1, 5, "stream granted")
    sender.send_signal(signal.SIGTERM)

    def refuses_new_connections() -> bool:
        try:
            httpx.get(process_stack.url + "/livez", timeout=1)
        except (httpx.ConnectError, httpx.ReadError):  # refused, or reset as the listener closed under it
            return True
        return False

    wait_until(refuses_new_connections, 3, "the sender to stop accepting")  # while the stream still runs
    assert s["thread"].is_alive()
    s["thread"].join(15)
    assert s.get("status") == 200 and s["body"].rstrip().endswith(b"data: [DONE]")
    # uvicorn re-raises the signal it caught once shutdown is complete: the conventional exit status
    assert sender.wait(15) in (0, -signal.SIGTERM)
    wait_until(lambda: consumer_state(process_stack.consumers[0])["in_flight"] == 0, 5, "lease released")


def test_consumer_sigterm_stops_pulling_lets_granted_requests_finish_then_exits(process_stack):
    sim = process_stack.start_sim(["--itl-base", "0.02"])
    consumer = process_stack.start_consumer(sim)
    process_stack.start_sender()
    token = process_stack.token("t")
    process_stack.wait_live(token)
    s = stream_in_thread(process_stack.url, token, 100)
    wait_until(lambda: consumer_state(consumer)["in_flight"] == 1, 5, "stream granted")
    consumer.send_signal(signal.SIGTERM)
    wait_until(lambda: consumer_state(consumer)["pulling"] is False, 2, "consumer to stop pulling")
    assert httpx.get(consumer.url + "/readyz").status_code == 503
    s["thread"].join(15)
    assert s.get("status") == 200 and s["body"].rstrip().endswith(b"data: [DONE]")
    assert consumer.wait(10) == 0


def test_a_consumer_killed_holding_an_unacked_ticket_returns_it_and_it_is_granted_once(process_stack):
    sim = process_stack.start_sim([])
    a = process_stack.start_consumer(sim, LLMD_REPLICA_ID="victim")
    process_stack.start_sender()
    token = process_stack.token("t")
    process_stack.wait_live(token)
    os.kill(a.pid, signal.SIGSTOP)  # frozen while subscribed: the broker still pushes it a ticket
    result: dict = {}

    def call() -> None:
        result["r"] = httpx.post(
            process_stack.url + "/v1/chat/completions",
            json=body(3),
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        )

    t = threading.Thread(target=call, daemon=True)
    t.start()
    time.sleep(1.0)  # the ticket is delivered to the frozen consumer, unacked
    assert "r" not in result
    os.kill(a.pid, signal.SIGKILL)
    a.wait(5)
    b = process_stack.start_consumer(sim, LLMD_REPLICA_ID="survivor")
    t.join(20)
    assert result["r"].status_code == 200
    assert result["r"].json()["usage"]["completion_tokens"] == 3
    metrics = httpx.get(b.url + "/metrics").text
    grants = [line for line in metrics.splitlines() if line.startswith("llmd_consumer_grants_total")]
    assert grants and float(grants[0].rsplit(" ", 1)[1]) == 1.0  # granted exactly once, by the survivor
    wait_until(lambda: consumer_state(b)["in_flight"] == 0, 5, "lease released")


def test_a_consumer_whose_port_is_taken_exits_at_once_with_a_clear_message(tmp_path, amqp_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **os.environ,
            "LLMD_AMQP_URL": amqp_url,
            "LLMD_MODEL": MODEL,
            "LLMD_HOST": "127.0.0.1",
            "LLMD_PORT": str(port),
            "LLMD_VLLM_URL": "http://127.0.0.1:9",
            "LLMD_LOG_FORMAT": "text",
        }
        started = time.monotonic()
        proc = subprocess.run([*EXE, "consumer"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert time.monotonic() - started < 20, "it must not wait for the broker or a retry before giving up"
    message = proc.stderr.lower()
    assert f"127.0.0.1:{port}" in message and "address already in use" in message and "llmd_port" in message
    assert "traceback" not in message
