"""The sender running a batch is SIGKILLed mid-way and started again, on every real database: the
batch resumes and completes, each line is in the output exactly once, and only lines that were in
flight at the kill can have run twice (a line whose result was stored never runs again)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import httpx
import openai
import orjson

from devstack.processes import ProcessStack

MODEL = "crash-model"
LINES = 60
MAX_CONCURRENCY = 4
MAX_WAITING = 2


def sim_requests_finished(sim_url: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(sim_url + "/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm:request_success_total"
    )


def run(stack: ProcessStack, database_url: str, amqp_url: str) -> None:
    stack.env.update(
        {
            "LLMD_AMQP_URL": amqp_url,
            "LLMD_DATABASE_URL": database_url,
            "LLMD_HEARTBEAT_INTERVAL_S": "0.2",
            "LLMD_SCRAPE_INTERVAL_S": "0.1",
            "LLMD_BATCH_CLAIM_S": "2",
            "LLMD_BATCH_POLL_INTERVAL_S": "0.1",
            "LLMD_BATCH_MAX_WAITING": str(MAX_WAITING),
        }
    )
    sim = stack.start_sim(["--itl-base", "0.02", "--max-num-seqs", str(MAX_CONCURRENCY)])
    # The killed sender's leases come back when they expire (it no longer renews them): a short TTL
    # here, so the replica's slots are free again within seconds.
    stack.start_consumer(sim, LLMD_MAX_CONCURRENCY=str(MAX_CONCURRENCY), LLMD_LEASE_TTL_S="4")
    stack.start_sender()
    token = stack.token("batch")
    stack.wait_live(token)
    c = openai.OpenAI(base_url=stack.url + "/v1", api_key=token, max_retries=0)
    lines = b"".join(
        orjson.dumps(
            {
                "custom_id": f"line-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": MODEL, "messages": [{"role": "user", "content": str(i)}], "max_tokens": 8},
            }
        )
        + b"\n"
        for i in range(LINES)
    )
    f = c.files.create(file=("in.jsonl", io.BytesIO(lines)), purpose="batch")
    batch = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while c.batches.retrieve(batch.id).request_counts.completed < LINES // 4:
        time.sleep(0.05)
    os.kill(stack.sender.pid, signal.SIGKILL)  # mid-batch: lines in flight, claims held
    stack.sender.wait(10)
    stack.procs.remove(stack.sender)
    stack.start_sender()  # the same database: the new runner takes over once the dead one's claims expire
    c = openai.OpenAI(base_url=stack.url + "/v1", api_key=token, max_retries=0)
    deadline = time.monotonic() + 60
    while (done := c.batches.retrieve(batch.id)).status != "completed":
        assert time.monotonic() < deadline, done
        time.sleep(0.1)
    assert done.request_counts.completed == LINES and done.request_counts.failed == 0
    out = [orjson.loads(x) for x in c.files.content(done.output_file_id).content.splitlines() if x.strip()]
    assert sorted(o["custom_id"] for o in out) == sorted(f"line-{i}" for i in range(LINES))  # each exactly once
    assert [o["custom_id"] for o in out] == [f"line-{i}" for i in range(LINES)]  # in input order
    ran = sim_requests_finished(sim)
    assert LINES <= ran <= LINES + MAX_CONCURRENCY + MAX_WAITING, ran  # re-run: at most what was in flight


async def test_a_batch_resumes_after_its_sender_is_killed_and_every_line_is_output_once(
    tmp_path, amqp_url, database_url
):
    stack = ProcessStack(str(tmp_path), model=MODEL)
    try:
        await asyncio.to_thread(run, stack, database_url, amqp_url)
    finally:
        stack.stop()
