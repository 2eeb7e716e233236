"""Usage records: batched writes off the hot path, flushed on stop, surviving database errors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from llm_dispatcher.db import Store, UsageRecord, UsageWriter
from llm_dispatcher.db.models import MODEL_LEN, from_db_time, usage


def record(i: int = 0, **overrides) -> UsageRecord:
    fields = {
        "token_id": 1,
        "token_name": "alice",
        "model": "qwen",
        "replica": "http://10.0.0.1:8000",
        "priority": 5,
        "status": 200,
        "prompt_tokens": 10 + i,
        "completion_tokens": 20 + i,
        "queue_wait_s": 0.25,
        "ttfb_s": 0.5,
        "total_s": 1.5,
        "request_id": f"req-{i}",
    }
    return UsageRecord(**{**fields, **overrides})


async def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {timeout_s}s")


async def rows(store: Store) -> list[sa.Row]:
    async with store.engine.connect() as conn:
        return list((await conn.execute(sa.select(usage).order_by(usage.c.id))).all())


@pytest.fixture
def insert_calls(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Batch sizes of the writer's inserts; each still goes to the real database."""
    sizes: list[int] = []
    real = store.insert_usage

    async def counting(records):
        sizes.append(len(records))
        await real(records)

    monkeypatch.setattr(store, "insert_usage", counting)
    return sizes


async def test_insert_usage_round_trips_every_field(store: Store) -> None:
    created = datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    await store.insert_usage([record(1, created_at=created), record(2, token_id=None, prompt_tokens=None, ttfb_s=None)])
    await store.insert_usage([])  # nothing to do, no error
    first, second = await rows(store)
    assert from_db_time(first.created_at) == created
    assert (first.token_id, first.token_name, first.model, first.replica) == (
        1,
        "alice",
        "qwen",
        "http://10.0.0.1:8000",
    )
    assert (first.priority, first.status, first.prompt_tokens, first.completion_tokens) == (5, 200, 11, 21)
    assert (first.queue_wait_s, first.ttfb_s, first.total_s, first.request_id) == (0.25, 0.5, 1.5, "req-1")
    assert (second.token_id, second.prompt_tokens, second.ttfb_s) == (None, None, None)


async def test_over_long_strings_are_clipped_instead_of_failing_the_batch(store: Store) -> None:
    await store.insert_usage([record(model="m" * 1000, request_id="r" * 500)])
    (row,) = await rows(store)
    assert row.model == "m" * MODEL_LEN


async def test_writer_writes_in_batches_of_max_batch(store: Store, insert_calls: list[int]) -> None:
    writer = UsageWriter(store, flush_interval_s=60, max_batch=2)
    for i in range(5):
        writer.submit(record(i))
    assert await writer.flush() is True
    assert insert_calls == [2, 2, 1]
    assert [r.request_id for r in await rows(store)] == [f"req-{i}" for i in range(5)]
    assert writer.written == 5 and writer.pending == 0


async def test_stop_flushes_what_is_queued(store: Store) -> None:
    writer = UsageWriter(store, flush_interval_s=3600)  # the timer would never fire in this test
    writer.start()
    for i in range(3):
        writer.submit(record(i))
    await writer.stop()
    assert len(await rows(store)) == 3
    assert not writer.running


async def test_a_full_batch_is_written_without_waiting_for_the_interval(store: Store) -> None:
    writer = UsageWriter(store, flush_interval_s=3600, max_batch=3)
    writer.start()
    try:
        for i in range(3):
            writer.submit(record(i))
        await wait_until(lambda: writer.written == 3)
    finally:
        await writer.stop()
    assert len(await rows(store)) == 3


async def test_submit_never_blocks_and_drops_when_the_queue_is_full(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    writer = UsageWriter(store, max_queue=2)
    with caplog.at_level(logging.WARNING, logger="llm_dispatcher.db.usage"):
        for i in range(4):
            writer.submit(record(i))
    assert (writer.pending, writer.dropped) == (2, 2)
    assert "usage queue full" in caplog.text
    await writer.flush()
    assert [r.request_id for r in await rows(store)] == ["req-0", "req-1"]


async def test_writer_survives_a_database_error_and_retries_at_the_next_flush(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    writer = UsageWriter(store, flush_interval_s=0.05)
    async with store.engine.begin() as conn:
        await conn.run_sync(usage.drop)  # a real failure: the table is gone
    writer.start()
    try:
        with caplog.at_level(logging.ERROR, logger="llm_dispatcher.db.usage"):
            writer.submit(record(1))
            await wait_until(lambda: writer.failed_flushes >= 2)  # failed, and the task kept going
        assert writer.running and writer.pending == 1
        assert "usage records failed" in caplog.text
        async with store.engine.begin() as conn:
            await conn.run_sync(usage.create)
        writer.submit(record(2))
    finally:
        await writer.stop()
    assert [r.request_id for r in await rows(store)] == ["req-1", "req-2"]
    assert writer.pending == 0


async def test_stop_gives_up_after_one_failed_flush_and_does_not_hang(store: Store) -> None:
    writer = UsageWriter(store, flush_interval_s=3600)
    writer.start()
    async with store.engine.begin() as conn:
        await conn.run_sync(usage.drop)
    writer.submit(record())
    async with asyncio.timeout(5):
        await writer.stop()
    assert writer.pending == 1 and writer.failed_flushes == 1
