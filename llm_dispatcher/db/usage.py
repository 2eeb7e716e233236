"""The `usage` table, and usage records written to it off the hot path.

`UsageStore.insert_usage` writes a batch in one executemany. `UsageWriter.submit()` appends to a
bounded in-memory queue; a background task writes batches every `flush_interval_s` or as soon as
`max_batch` records are waiting.

Failure policy: a batch that fails for an environmental reason (database down, table missing,
permissions) stays at the head of the queue and is retried at the next flush; a batch rejected for
its data (IntegrityError/DataError) is retried row by row and only the bad rows are dropped. The
queue bound applies throughout: when it is full, new records are dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from llm_dispatcher.db.engine import Database
from llm_dispatcher.db.models import (
    END_USER_LEN,
    MODEL_LEN,
    NAME_LEN,
    REPLICA_LEN,
    REQUEST_ID_LEN,
    UsageRecord,
    to_db_time,
    usage,
)

log = logging.getLogger(__name__)

_DATA_ERRORS = (sa.exc.IntegrityError, sa.exc.DataError)


def _clip(value: str, length: int) -> str:
    return value if len(value) <= length else value[:length]


def usage_row(r: UsageRecord) -> dict[str, Any]:
    """Strings are clipped to the column sizes: strict-mode MySQL would reject the whole batch."""
    return {
        "created_at": to_db_time(r.created_at),
        "token_id": r.token_id,
        "token_name": _clip(r.token_name, NAME_LEN),
        "model": _clip(r.model, MODEL_LEN),
        "replica": _clip(r.replica, REPLICA_LEN),
        "priority": r.priority,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "queue_wait_s": float(r.queue_wait_s),
        "ttfb_s": None if r.ttfb_s is None else float(r.ttfb_s),
        "total_s": float(r.total_s),
        "request_id": _clip(r.request_id, REQUEST_ID_LEN),
        "end_user": None if r.end_user is None else _clip(r.end_user, END_USER_LEN),
    }


class UsageStore(Database):
    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        """One executemany. Errors are translated (connection) or raised as-is (data)."""
        if not records:
            return
        rows = [usage_row(r) for r in records]
        async with self._begin("write usage") as conn:
            await conn.execute(usage.insert(), rows)


class UsageWriter:
    def __init__(
        self,
        store: UsageStore,
        flush_interval_s: float = 1.0,
        max_batch: int = 500,
        max_queue: int = 100_000,
    ):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be positive")
        self._store = store
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self._queue: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._lock = asyncio.Lock()  # one flush at a time (background loop vs. explicit flush())
        self.written = 0
        self.dropped = 0
        self.failed_flushes = 0

    @property
    def pending(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running:
            return
        self._stopping = False
        self._stop_event.clear()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="usage-writer")

    def submit(self, record: UsageRecord) -> None:
        """Never blocks, never raises."""
        try:
            if len(self._queue) >= self.max_queue:
                self.dropped += 1
                if self.dropped == 1 or self.dropped % 1000 == 0:
                    log.warning(
                        "usage queue full (%d records), dropped %d records so far",
                        self.max_queue,
                        self.dropped,
                    )
                return
            self._queue.append(record)
            if len(self._queue) >= self.max_batch:
                self._wake.set()
        except Exception:  # a bug here must never reach the request path
            log.exception("could not queue a usage record")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Writes what is queued (bounded by timeout_s), then ends the background task."""
        self._stopping = True
        self._stop_event.set()
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        elif self._queue:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.flush(), timeout_s)
        if self._queue:
            log.error("usage writer stopped with %d records not written", len(self._queue))

    async def flush(self) -> bool:
        """Writes everything queued now. True when the queue was emptied, False after a failure
        (the failed batch stays queued for the next flush)."""
        async with self._lock:
            while self._queue:
                batch = [self._queue[i] for i in range(min(self.max_batch, len(self._queue)))]
                try:
                    await self._store.insert_usage(batch)
                except _DATA_ERRORS:
                    log.warning("usage batch of %d rejected, retrying row by row", len(batch), exc_info=True)
                    if not await self._write_rows(batch):
                        return False
                    continue
                except Exception:
                    self._failed(len(batch))
                    return False
                self.written += len(batch)
                for _ in batch:
                    self._queue.popleft()
            return True

    async def _write_rows(self, batch: list[UsageRecord]) -> bool:
        for record in batch:
            try:
                await self._store.insert_usage([record])
            except _DATA_ERRORS:
                self.dropped += 1
                log.exception("dropped a usage record the database rejects: %r", record)
            except Exception:
                self._failed(1)
                return False
            else:
                self.written += 1
            self._queue.popleft()
        return True

    def _failed(self, n: int) -> None:
        self.failed_flushes += 1
        log.exception(
            "writing %d usage records failed; %d queued, retrying in %.1fs",
            n,
            len(self._queue),
            self.flush_interval_s,
        )

    async def _safe_flush(self) -> bool:
        try:
            return await self.flush()
        except Exception:  # never let the task die
            log.exception("usage flush crashed")
            return False

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            if self._stopping:
                break  # the final flush below is the only attempt once stop() is called
            if not await self._safe_flush() and not self._stopping:
                # back off for one interval instead of spinning on a full queue; stop() cuts it short
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), self.flush_interval_s)
        await self._safe_flush()
