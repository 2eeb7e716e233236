"""A replica scaled in while it streams: the consumer drains before its vLLM stops, and no stream is cut.

The shutdown order comes from the chart as rendered (tests/chart/test_monitoring_chart.py checks it for
every model): when a pod is removed, its consumer (no preStop) gets SIGTERM at once, and its vLLM gets
SIGTERM only after its preStop sleep (as long as the consumer's drain). Here that order is played with real
processes, two replicas of one model behind a sender: the replica holding a stream is "scaled in" (SIGTERM
to its consumer now, SIGTERM to its simulator when the preStop would end). It must stop pulling at once,
the other replica must serve what comes meanwhile, the stream must finish whole, the consumer must exit by
itself before its vLLM is told to stop, and vLLM must still be up until then.
"""

from __future__ import annotations

import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import helm_python as helm
import httpx
import pytest
import yaml

from devstack.processes import ProcessStack
from tests.fixtures.broker import AMQP_URL

ROOT = Path(__file__).resolve().parents[2]
MODEL = "drain-model"
GRACE_S = 6  # the chart's consumer.settings.shutdownGraceS here; a ~3 s stream fits in it


def rendered_shutdown(grace_s: int) -> tuple[float, float]:
    """(the consumer's drain limit, vLLM's preStop sleep) of the model StatefulSet the chart renders."""
    with helm.Chart.load(ROOT / "charts" / "llm-dispatcher") as chart:
        manifests = chart.render(
            values={"consumer": {"settings": {"shutdownGraceS": grace_s}}}, name="llmd", namespace="ai", is_install=True
        )
    docs = [d for p, t in manifests.items() if not p.endswith(".txt") for d in yaml.safe_load_all(t) if d]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"].endswith("qwen2-5-1-5b")]
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    assert "lifecycle" not in containers["consumer"], "the consumer must get SIGTERM at once"
    drain = float({e["name"]: e.get("value") for e in containers["consumer"]["env"]}["LLMD_SHUTDOWN_GRACE_S"])
    sleep, seconds = containers["vllm"]["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    return drain, float(seconds)


def grants(consumer: subprocess.Popen) -> float:
    text = httpx.get(consumer.url + "/metrics", timeout=5).text  # type: ignore[attr-defined]
    m = re.search(r"^llmd_consumer_grants_total\{[^}]*\} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def state(consumer: subprocess.Popen) -> dict:
    return httpx.get(consumer.url + "/readyz", timeout=5).json()  # type: ignore[attr-defined]


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.02)


def chat(url: str, token: str, max_tokens: int, stream: bool) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": max_tokens, "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, headers={"authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture
def two_replicas(tmp_path):
    stack = ProcessStack(str(tmp_path), model=MODEL)
    stack.env["LLMD_AMQP_URL"] = AMQP_URL
    stack.env["LLMD_HEARTBEAT_INTERVAL_S"] = "0.2"
    stack.env["LLMD_SCRAPE_INTERVAL_S"] = "0.1"
    sims: list[subprocess.Popen] = []
    try:
        for _ in range(2):
            url = stack.start_sim(["--itl-base", "0.02"])
            sims.append(stack.procs[-1])
            stack.start_consumer(url, LLMD_SHUTDOWN_GRACE_S=str(GRACE_S))
        stack.start_sender()
        yield stack, sims
    finally:
        stack.stop()


def test_a_replica_scaled_in_while_it_streams_drains_before_its_vllm_stops(two_replicas) -> None:
    stack, sims = two_replicas
    drain_s, prestop_s = rendered_shutdown(GRACE_S)
    assert drain_s == GRACE_S and prestop_s >= drain_s
    token = stack.token("t")
    stack.wait_live(token)
    wait_until(lambda: all(state(c)["ready"] for c in stack.consumers), 10, "both replicas ready")

    out: dict = {}

    def stream() -> None:
        with httpx.stream(
            "POST",
            stack.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 150, "stream": True},
            headers={"authorization": f"Bearer {token}"},
            timeout=30,
        ) as r:
            out["status"] = r.status_code
            out["body"] = b"".join(r.iter_bytes())
        out["ended"] = time.monotonic()

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()  # ~3 s of tokens
    wait_until(lambda: any(state(c)["in_flight"] == 1 for c in stack.consumers), 5, "the stream granted")
    (i,) = [n for n, c in enumerate(stack.consumers) if state(c)["in_flight"] == 1]
    leaving, staying = stack.consumers[i], stack.consumers[1 - i]
    leaving_vllm = sims[i]

    # The kubelet removes the pod: SIGTERM to the consumer now, to vLLM when its preStop sleep ends.
    t0 = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    vllm_sigterm_at = t0 + prestop_s
    wait_until(lambda: state(leaving)["pulling"] is False, 2, "the leaving consumer to stop pulling")
    assert httpx.get(leaving.url + "/readyz", timeout=5).status_code == 503  # type: ignore[attr-defined]

    # What arrives meanwhile goes to the replica that stays.
    before = grants(staying)
    for _ in range(3):
        assert chat(stack.url, token, 4, stream=False).status_code == 200
    assert grants(staying) == before + 3
    assert thread.is_alive(), "the stream is still running on the leaving replica"

    # The stream finishes whole, then the consumer exits by itself, before vLLM is told to stop.
    thread.join(15)
    assert out.get("status") == 200 and out["body"].rstrip().endswith(b"data: [DONE]"), out
    assert leaving.wait(max(0.1, vllm_sigterm_at - time.monotonic())) == 0, "the consumer did not exit in its grace"
    exited = time.monotonic()
    assert out["ended"] <= exited < vllm_sigterm_at
    assert leaving_vllm.poll() is None, "vLLM must still be up until its preStop ends"
    time.sleep(max(0.0, vllm_sigterm_at - time.monotonic()))
    leaving_vllm.send_signal(signal.SIGTERM)
    assert leaving_vllm.wait(10) in (0, -signal.SIGTERM)

    # The model keeps being served by the replica that stayed.
    assert chat(stack.url, token, 4, stream=True).status_code == 200
