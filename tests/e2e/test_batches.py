"""The OpenAI Files and Batch APIs end to end with the official client: upload, create, poll to
completed, read the output and error files; invalid input, unknown and forbidden models, cancel,
pagination, ownership and limits."""

from __future__ import annotations

import io
import time

import openai
import orjson
import pytest

MODEL = "sim-model"


@pytest.fixture
def batch_stack(stack_factory):
    """A stack with one simulator behind one consumer, a token, and a fast batch runner."""
    s = stack_factory(batch_poll_interval_s=0.05, batch_max_file_bytes=256 * 1024, batch_max_lines=500)
    s.upstream = s.add_sim(model=MODEL)
    s.consumer = s.add_consumer(MODEL, s.upstream, max_concurrency=4)
    s.token = s.create_token("batcher", priority=5, threshold=100)
    s.other = s.create_token("someone-else", priority=5, threshold=100)
    s.limited = s.create_token("limited", priority=5, threshold=100, allowed_models=["other-model"])
    s.wait_models({MODEL}, s.token)
    yield s
    s.wait_idle(timeout=10)


def client(stack, token: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key=token or stack.token, max_retries=0, timeout=30)


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def chat_line(custom_id: str, model: str = MODEL, **body) -> dict:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": custom_id}], "max_tokens": 3, **body},
    }


def wait_final(c: openai.OpenAI, batch_id: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        b = c.batches.retrieve(batch_id)
        assert b.request_counts.completed + b.request_counts.failed <= b.request_counts.total
        if b.status in ("completed", "failed", "expired", "cancelled"):
            return b
        assert time.monotonic() < deadline, b
        time.sleep(0.1)


def read_lines(c: openai.OpenAI, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    return [orjson.loads(x) for x in c.files.content(file_id).content.splitlines() if x.strip()]


def test_a_batch_runs_to_completed_with_one_output_line_per_input_line(batch_stack):
    c = client(batch_stack)
    lines = [chat_line(f"req-{i}") for i in range(12)]
    f = c.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes == len(jsonl(lines))
    b = c.batches.create(
        input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "nightly"}
    )
    assert b.status == "validating" and b.request_counts.total == 12 and b.metadata == {"job": "nightly"}
    done = wait_final(c, b.id)
    assert done.status == "completed", done
    assert done.request_counts.completed == 12 and done.request_counts.failed == 0
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    out = read_lines(c, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"req-{i}" for i in range(12)]  # each once, input order
    for o in out:
        assert o["error"] is None and o["response"]["status_code"] == 200
        assert o["response"]["body"]["object"] == "chat.completion"
    assert done.error_file_id is None
    rows = batch_stack.usage_rows(12)
    assert len([r for r in rows if r["token_name"] == "batcher"]) == 12  # every line recorded in usage


async def test_the_async_client_sees_the_same_life_cycle(batch_stack):
    c = openai.AsyncOpenAI(base_url=batch_stack.base_url, api_key=batch_stack.token, max_retries=0)
    f = await c.files.create(file=("a.jsonl", jsonl([chat_line("a"), chat_line("b")])), purpose="batch")
    b = await c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(300):
        b = await c.batches.retrieve(b.id)
        if b.status == "completed":
            break
        await __import__("asyncio").sleep(0.1)
    assert b.status == "completed" and b.request_counts.completed == 2
    content = await c.files.content(b.output_file_id)
    assert len(content.content.splitlines()) == 2


def test_invalid_lines_fail_the_batch_with_errors_and_nothing_runs(batch_stack):
    c = client(batch_stack)
    bad = jsonl([chat_line("ok"), {"custom_id": "x", "method": "GET", "url": "/v1/chat/completions", "body": {}}])
    bad += b"not json\n" + jsonl([chat_line("ok")])  # a duplicate custom_id
    f = c.files.create(file=("bad.jsonl", io.BytesIO(bad)), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and b.failed_at
    errors = {(e.line, e.code) for e in b.errors.data}
    assert errors == {(2, "invalid_value"), (3, "invalid_json_line"), (4, "duplicate_custom_id")}
    assert b.request_counts.total == 0


def test_unknown_and_forbidden_models_are_lines_in_the_error_file_not_a_failed_batch(batch_stack):
    c = client(batch_stack)
    lines = [chat_line("good"), chat_line("nope", model="no-such-model"), chat_line("bad-arg", max_tokens=-1)]
    f = c.files.create(file=("m.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    done = wait_final(
        c, c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert done.status == "completed" and done.request_counts.completed == 1 and done.request_counts.failed == 2
    errors = {e["custom_id"]: e for e in read_lines(c, done.error_file_id)}
    assert errors["nope"]["response"]["status_code"] == 404
    assert errors["nope"]["response"]["body"]["error"]["code"] == "model_not_found"
    assert errors["bad-arg"]["response"]["status_code"] == 400  # vLLM's (the simulator's) own answer
    assert [o["custom_id"] for o in read_lines(c, done.output_file_id)] == ["good"]

    limited = client(batch_stack, batch_stack.limited)
    f = limited.files.create(file=("l.jsonl", io.BytesIO(jsonl([chat_line("x")]))), purpose="batch")
    done = wait_final(
        limited, limited.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    (only,) = read_lines(limited, done.error_file_id)
    assert only["response"]["status_code"] == 404  # a model this token may not use


def slow_batch_under_way(stack_factory, lines: int):
    """A one-slot slow replica and a batch of `lines` lines of which 2 are done: (stack, client, batch)."""
    s = stack_factory(batch_poll_interval_s=0.05)
    sim = s.add_sim(model=MODEL, itl_base=0.05)
    s.add_consumer(MODEL, sim, max_concurrency=1)
    token = s.create_token("t", priority=5, threshold=100)
    s.wait_models({MODEL}, token)
    c = client(s, token)
    content = jsonl([chat_line(f"r{i}", max_tokens=10) for i in range(lines)])
    f = c.files.create(file=("slow.jsonl", io.BytesIO(content)), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    while c.batches.retrieve(b.id).request_counts.completed < 2:
        time.sleep(0.05)
    return s, c, b


def test_cancel_stops_the_batch_and_keeps_what_finished(stack_factory):
    s, c, b = slow_batch_under_way(stack_factory, 40)
    cancelling = c.batches.cancel(b.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_final(c, b.id)
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    assert 2 <= done.request_counts.completed < 40
    assert len(read_lines(c, done.output_file_id)) == done.request_counts.completed
    cancelled = [e for e in read_lines(c, done.error_file_id) if e["error"]["code"] == "batch_cancelled"]
    assert len(cancelled) == done.request_counts.failed  # every line reported once: done, or cancelled
    assert done.request_counts.completed + done.request_counts.failed == 40
    s.wait_idle(timeout=10)  # lines in flight were aborted and their leases released


def test_files_and_batches_belong_to_their_token_and_lists_paginate(batch_stack):
    c, other = client(batch_stack), client(batch_stack, batch_stack.other)
    ids = [
        c.files.create(file=(f"f{i}.jsonl", io.BytesIO(jsonl([chat_line(f"p{i}")]))), purpose="batch").id
        for i in range(3)
    ]
    for file_id in ids:
        with pytest.raises(openai.NotFoundError):
            other.files.retrieve(file_id)
        with pytest.raises(openai.NotFoundError):
            other.files.content(file_id)
    assert other.files.list().data == []
    batch_ids = [
        c.batches.create(input_file_id=i, endpoint="/v1/chat/completions", completion_window="24h").id for i in ids
    ]
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch_ids[0])
    with pytest.raises(openai.NotFoundError):
        other.batches.cancel(batch_ids[0])
    first = c.batches.list(limit=2)
    assert len(first.data) == 2 and first.has_more
    rest = c.batches.list(limit=2, after=first.data[-1].id)
    assert {b.id for b in first.data} | {b.id for b in rest.data} == set(batch_ids) and not rest.has_more
    assert [b.id for b in c.batches.list()] == list(reversed(batch_ids))  # the client pages by itself
    for b in batch_ids:
        wait_final(c, b)
    assert c.files.delete(ids[0]).deleted
    with pytest.raises(openai.NotFoundError):
        c.files.retrieve(ids[0])


def test_limits_refused_in_the_openai_shape(batch_stack):
    c = client(batch_stack)
    with pytest.raises(openai.APIStatusError) as info:
        c.files.create(file=("big.jsonl", io.BytesIO(b"x" * (257 * 1024))), purpose="batch")
    assert info.value.status_code == 413 and info.value.body["code"] == "request_too_large"
    with pytest.raises(openai.BadRequestError):
        c.files.create(file=("f.jsonl", io.BytesIO(b"{}")), purpose="fine-tune")
    f = c.files.create(
        file=("many.jsonl", io.BytesIO(jsonl([chat_line(f"m{i}") for i in range(501)]))), purpose="batch"
    )
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "failed" and b.errors.data[0].code == "too_many_requests"
    with pytest.raises(openai.BadRequestError):
        c.batches.create(input_file_id=f.id, endpoint="/v1/moderations", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        c.batches.create(input_file_id="file-nope", endpoint="/v1/chat/completions", completion_window="24h")


def test_a_big_batch_never_pushes_the_queue_past_an_interactive_threshold(stack_factory):
    s = stack_factory(batch_poll_interval_s=0.02, batch_max_waiting=2)
    sim = s.add_sim(model=MODEL, itl_base=0.01, max_num_seqs=2)
    s.add_consumer(MODEL, sim, max_concurrency=2)
    batcher = s.create_token("nightly", priority=5, threshold=1000, batch_priority=1)
    interactive = s.create_token("chat", priority=8, threshold=1)  # refused once 1 interactive ticket waits
    s.wait_models({MODEL}, interactive)
    c = client(s, batcher)
    f = c.files.create(file=("big.jsonl", io.BytesIO(jsonl([chat_line(f"b{i}") for i in range(200)]))), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    chat = client(s, interactive)
    statuses, depths = [], []
    while (state := c.batches.retrieve(b.id)).status != "completed":
        try:
            chat.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
            statuses.append(200)
        except openai.RateLimitError:
            statuses.append(429)
        depths.append(s.bg.call(s.ctx.dispatcher.depth(MODEL)))
        assert len(statuses) < 2000, state
    assert statuses and set(statuses) == {200}  # the batch's own tickets never caused a 429 for it
    assert max(depths) <= 2  # at most batch_max_waiting batch tickets in the queue
    assert state.request_counts.completed == 200  # and the batch still finished


def test_two_senders_share_a_batch_and_never_run_the_same_line(stack_factory):
    a = stack_factory(batch_poll_interval_s=0.02, batch_max_waiting=2)
    b = stack_factory(database_url=a.database_url, batch_poll_interval_s=0.02, batch_max_waiting=2)
    sim = a.add_sim(model=MODEL, itl_base=0.005, max_num_seqs=8)
    a.add_consumer(MODEL, sim, max_concurrency=8)
    token = a.create_token("shared", priority=5, threshold=1000)
    a.wait_models({MODEL}, token)
    b.wait_models({MODEL}, token)
    c = client(a, token)
    f = c.files.create(file=("s.jsonl", io.BytesIO(jsonl([chat_line(f"s{i}") for i in range(80)]))), purpose="batch")
    done = wait_final(
        c, c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
    )
    assert done.status == "completed" and done.request_counts.completed == 80
    out = read_lines(c, done.output_file_id)
    assert [o["custom_id"] for o in out] == [f"s{i}" for i in range(80)]
    rows = a.usage_rows(80)  # both senders write usage to the shared database
    assert len(rows) == 80  # 80 lines, 80 requests: none ran twice
    assert all(r["status"] == 200 for r in rows)
    served = [
        sum(x.value for m in stack.ctx.metrics.requests.collect() for x in m.samples if x.name.endswith("_total"))
        for stack in (a, b)
    ]
    assert all(n > 0 for n in served) and sum(served) == 80, served  # both runners took lines, none twice


def test_an_expired_batch_keeps_finished_lines_and_reports_the_rest_as_expired(stack_factory):
    import sqlalchemy as sa

    from llm_dispatcher.db import Store
    from llm_dispatcher.db.models import batches

    s, c, b = slow_batch_under_way(stack_factory, 30)

    async def window_passed() -> None:  # as if 24 hours had gone by
        async with Store(s.database_url) as store, store.engine.begin() as conn:
            await conn.execute(sa.update(batches).where(batches.c.id == b.id).values(expires_at=int(time.time()) - 1))

    s.bg.call(window_passed())
    done = wait_final(c, b.id)
    assert done.status == "expired" and done.expired_at
    finished = read_lines(c, done.output_file_id)
    expired = [e for e in read_lines(c, done.error_file_id) if e["error"] and e["error"]["code"] == "batch_expired"]
    assert len(finished) >= 2 and len(finished) + len(expired) == 30  # every line reported once
    assert all(e["response"] is None for e in expired)
    s.wait_idle(timeout=10)


@pytest.mark.parametrize(
    ("preempt", "via_other_sender"),
    [(True, False), (True, True), (False, False)],
    ids=["preempting", "preempting-for-another-sender", "not-preempting"],
)
def test_an_interactive_request_waiting_on_a_replica_full_of_batch_lines_ends_one_and_the_line_runs_again(
    stack_factory, preempt, via_other_sender
):
    s = stack_factory(batch_poll_interval_s=0.02, batch_max_waiting=1, preempt_after_s=0.05)
    # The interactive request through this sender or through a second one that runs no batch: the
    # line's own sender hears that its lease was ended, whichever sender asked.
    chat_stack = (
        stack_factory(database_url=s.database_url, batch_runner=False, preempt_after_s=0.05) if via_other_sender else s
    )
    sim = s.add_sim(model=MODEL, itl_base=0.02, max_num_seqs=2)
    consumer = s.add_consumer(MODEL, sim, max_concurrency=2, preempt_batch=preempt)
    batcher = s.create_token("nightly", priority=5, threshold=1000, batch_priority=1)
    interactive = s.create_token("chat", priority=8, threshold=100)
    s.wait_models({MODEL}, interactive)
    chat_stack.wait_models({MODEL}, interactive)
    c = client(s, batcher)
    lines = [chat_line(f"b{i}", max_tokens=100, ignore_eos=True) for i in range(4)]  # ~2 s a line
    f = c.files.create(file=("long.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    b = c.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 10
    while consumer.leases.preemptible < 2:  # both slots held by batch lines
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)  # and the senders have heard so from a heartbeat
    t0 = time.monotonic()
    answer = client(chat_stack, interactive).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    took = time.monotonic() - t0
    assert answer.choices[0].message.content
    preempted = consumer.metrics.registry.get_sample_value(
        "llmd_consumer_releases_total", {"model": MODEL, "replica": consumer.settings.replica_id, "reason": "preempted"}
    )
    if preempt:
        assert took < 0.8, took  # not behind a 2 s line: one was ended for it
        assert preempted == 1
    else:
        assert took > 1.0, took  # waited for a batch line to finish
        assert not preempted
    done = wait_final(c, b.id, timeout=60)
    assert done.status == "completed" and done.request_counts.completed == 4 and done.request_counts.failed == 0
    out = read_lines(c, done.output_file_id)
    assert sorted(o["custom_id"] for o in out) == [f"b{i}" for i in range(4)]  # the ended line once, in full
    assert all(o["response"]["body"]["usage"]["completion_tokens"] == 100 for o in out)
    aborted = s.bg.call(sim_aborted(sim))
    assert aborted == (1 if preempt else 0)  # the ended line's sequence was dropped by the engine
    s.wait_idle(timeout=10)


async def sim_aborted(url: str) -> float:
    import httpx

    async with httpx.AsyncClient() as http:
        text = (await http.get(url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total{") and 'finished_reason="abort"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0
