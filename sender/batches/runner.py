"""Runs batch lines: claims them in the database, sends each through the same steps as an interactive
request (admit's checks, dispatch at the token's batch priority, relay, record), stores each result.

- A batch never floods a queue: this runner keeps at most `batch_max_waiting` of a batch's lines
  waiting for a grant, and claims more only as grants come back; a line waits (it is given back and
  claimed again) rather than failing when no replica is free.
- Several senders may run batches: lines are claimed row by row (db/batches.py), claims are extended
  while a line runs, and a claim a dead runner left expires after `batch_claim_s`; its line runs again.
  So after a crash only lines that were in flight can run twice, never a line whose result is stored,
  and the output has each line exactly once.
- A batch yields to interactive traffic: a line's replica may end its lease for a higher-priority
  request that waits (consumer `preempt_batch`); the line is aborted and given back, and runs again.
- Cancel and expiry stop feeding at once, cancel the lines in flight here (the upstream request is
  aborted, the lease released), and end the rest; a runner that finishes a line after that drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from functools import partial

import orjson

from llm_dispatcher.db import Store, TokenRecord
from llm_dispatcher.db.batches import BatchRecord, Line
from llm_dispatcher.errors import DispatcherError, ModelNotFoundError, ServiceUnavailableError, shorten
from llm_dispatcher.protocol import clamp_priority
from sender import steps
from sender.batches.objects import output_files
from sender.context import SenderContext
from sender.requests import parse_body
from sender.steps import Admission, Outcome

log = logging.getLogger(__name__)

CANCELLED = {"code": "batch_cancelled", "message": "the batch was cancelled before this request ran"}
EXPIRED = {"code": "batch_expired", "message": "the batch expired before this request ran"}
FINALIZE_STUCK_S = 60  # a batch finalizing this long without output files lost its finalizer


class LinePreempted(Exception):
    """The line's replica ended its lease for a higher-priority request: abort it, run it again later."""


class Collector:
    """An ASGI `send` that keeps the relayed response (a batch line's answer is stored, not streamed)."""

    def __init__(self) -> None:
        self.status = 0
        self.chunks: list[bytes] = []

    async def send(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        else:
            self.chunks.append(message.get("body", b""))

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)


class BatchRunner:
    def __init__(self, ctx: SenderContext, store: Store):
        self.ctx = ctx
        self.store = store
        self.settings = ctx.settings
        self.id = f"runner-{uuid.uuid4().hex[:12]}"
        self._running: dict[tuple[str, int], asyncio.Task] = {}
        self._waiting: dict[str, int] = {}  # batch id -> its lines here not granted yet
        self._task: asyncio.Task | None = None
        self._born = time.monotonic()
        self._wakeup = asyncio.Event()  # a line was granted (or ended): room to feed another at once

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batch-runner")

    async def stop(self) -> None:
        """Stop feeding; lines in flight are cancelled and given back (another runner takes them)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        last_extend = time.monotonic()
        while True:
            try:
                for batch in await self.store.active_batches():
                    await self._tick(batch)
                if time.monotonic() - last_extend >= self.settings.batch_claim_s / 3:
                    await self.store.extend_claims(
                        self.id, list(self._running), int(self.settings.batch_claim_s * 1000)
                    )
                    last_extend = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch runner pass failed; next pass in %g s", self.settings.batch_poll_interval_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.settings.batch_poll_interval_s)
            self._wakeup.clear()

    # -- one batch, one pass -------------------------------------------------------------------
    async def _tick(self, batch: BatchRecord) -> None:
        """One pass over one batch. Every change of status is a conditional UPDATE: when several runners
        see the same batch, one wins each step (and writes the output files), the others only stop."""
        active = batch.status in ("validating", "in_progress")
        if not active and self._mine(batch.id):
            await self._abort_mine(batch.id)  # cancelled, expired or finished elsewhere: stop at once
        if active and time.time() >= batch.expires_at:
            if await self.store.move(
                batch.id, ("validating", "in_progress"), "finalizing", expired_at=int(time.time())
            ):
                await self._end(batch.id, EXPIRED, "expired")
        elif batch.status == "validating":
            await self.store.move(batch.id, ("validating",), "in_progress")
        elif batch.status == "in_progress":
            await self._feed(batch)
            if not self._mine(batch.id) and await self.store.unfinished(batch.id) == 0:
                if await self.store.move(batch.id, ("in_progress",), "finalizing"):
                    await self._write_output(batch.id, "completed")
        elif batch.status == "cancelling":
            if await self.store.move(batch.id, ("cancelling",), "finalizing"):
                await self._end(batch.id, CANCELLED, "cancelled")
        elif batch.status == "finalizing" and self._stuck(batch):  # its finalizer died: finish its work
            await self._write_output(
                batch.id,
                "expired"
                if batch.times.get("expired_at")
                else "cancelled"
                if batch.times.get("cancelling_at")
                else "completed",
            )

    @staticmethod
    def _stuck(batch: BatchRecord) -> bool:
        since = batch.times.get("finalizing_at") or 0
        return batch.output_file_id is None and batch.error_file_id is None and time.time() - since > FINALIZE_STUCK_S

    async def _abort_mine(self, batch_id: str) -> None:
        tasks = self._mine(batch_id)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _mine(self, batch_id: str) -> list[asyncio.Task]:
        return [t for (b, _), t in self._running.items() if b == batch_id]

    async def _feed(self, batch: BatchRecord) -> None:
        if time.monotonic() - self._born < self.settings.heartbeat_ttl_s:
            return  # just started: until every live replica has been heard from, "unknown model" is not known
        room = self.settings.batch_max_waiting - self._waiting.get(batch.id, 0)
        if room <= 0:
            return
        token = await self.store.get_token_by_id(batch.token_id)
        lines = await self.store.claim_lines(batch.id, self.id, room, int(self.settings.batch_claim_s * 1000))
        for line in lines:
            key = (line.batch_id, line.line_no)
            self._waiting[batch.id] = self._waiting.get(batch.id, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run_line(batch, line, token), name=f"line-{key}")
            self._running[key] = task
            task.add_done_callback(partial(self._line_done, key))

    async def _end(self, batch_id: str, error: dict, final: str) -> None:
        """Cancel or expire (this runner won the move to finalizing): lines in flight here are aborted,
        every unfinished line is ended with `error`, the output written. A line another runner still
        finishes now is dropped there (its line is done already)."""
        await self._abort_mine(batch_id)
        await self.store.end_unfinished(batch_id, error)
        await self._write_output(batch_id, final)

    async def _write_output(self, batch_id: str, final: str) -> None:
        batch = await self.store.get_batch(batch_id)
        if batch is None:
            return
        output, errors = output_files(await self.store.results(batch_id))
        values: dict = {}
        if output:
            f = await self.store.create_file(batch.token_id, "batch_output", f"{batch_id}_output.jsonl", output)
            values["output_file_id"] = f.id
        if errors:
            f = await self.store.create_file(batch.token_id, "batch_output", f"{batch_id}_error.jsonl", errors)
            values["error_file_id"] = f.id
        if final == "expired":
            values["expired_at"] = batch.times.get("expired_at") or int(time.time())
        await self.store.move(batch_id, ("finalizing",), final, **values)
        log.info("batch %s %s: %d completed, %d failed", batch_id, final, batch.completed, batch.failed)

    # -- one line ------------------------------------------------------------------------------
    async def _run_line(self, batch: BatchRecord, line: Line, token: TokenRecord | None) -> None:
        outcome = Outcome(started=time.perf_counter(), request_id=f"{batch.id}-{line.line_no}"[:64])
        answer: tuple[int, bytes] | None = None  # (status, body): the line's result, once there is one
        try:
            answer = await self._answer(batch, line, token, outcome)
        except LinePreempted:
            outcome.fail(503, "preempted")
        except ServiceUnavailableError:  # no replica free in time, broker away: the line waits its turn again
            outcome.fail(503, "requeued")
        except DispatcherError as exc:  # the gateway's own answer (unknown model...): the line's result
            outcome.fail(exc.status, exc.code or "error")
            answer = (exc.status, orjson.dumps(exc.body()))
        except asyncio.CancelledError:
            outcome.fail(499, "batch_stopped")
            raise
        except Exception:
            log.exception("batch line %s/%d failed", batch.id, line.line_no)
            outcome.fail(500, "internal_error")
        finally:
            if outcome.grant is None:
                self._stop_waiting(batch.id)
            stored = answer is not None and await self.store.finish_line(
                batch.id, line.line_no, self.id, status_code=answer[0], response=answer[1], error=None,
                request_id=outcome.request_id,
            )  # fmt: skip
            if not stored:
                with contextlib.suppress(Exception):
                    await self.store.give_back(batch.id, line.line_no, self.id)
            self.ctx.metrics.batch_lines.labels(
                self.ctx.model_label(line.model), _line_outcome(answer if stored else None, outcome)
            ).inc()
            if outcome.token is not None:
                await steps.record(self.ctx, "POST", batch.endpoint, outcome)

    async def _answer(self, batch: BatchRecord, line: Line, token: TokenRecord | None, outcome: Outcome):
        """The line through the interactive path's steps: its checks, dispatch at the batch priority, relay."""
        ctx = self.ctx
        payload = parse_body(line.body)
        outcome.model = shorten(line.model)
        outcome.token = token  # recorded in usage like any request, refused lines included
        if token is None or not token.enabled or not token.allows(line.model) or not ctx.registry.known(line.model):
            raise ModelNotFoundError(
                f"The model `{outcome.model}` does not exist or you do not have access to it.", param="model"
            )
        outcome.model_label = line.model
        priority = outcome.priority = clamp_priority(None, token.effective_batch_priority, self.settings.max_priority)
        admission = Admission(token=token, body=line.body, payload=payload, model=line.model, priority=priority)
        grant = await steps.dispatch(ctx, admission, outcome, batch=True)
        self._stop_waiting(batch.id)
        collector = Collector()
        headers = [(b"content-type", b"application/json")]
        relay = asyncio.ensure_future(
            steps.relay(ctx, admission, grant, batch.endpoint, b"", headers, collector.send, outcome)
        )
        await self._unless_preempted(relay, grant.lease_id)
        return collector.status, collector.body

    async def _unless_preempted(self, relay: asyncio.Future, lease_id: str) -> None:
        """Await the line's relay; if its replica ends the lease first, abort the relay (vLLM drops the
        sequence when the connection closes) and raise LinePreempted."""
        preempted = False

        def preempt() -> None:
            nonlocal preempted
            preempted = True
            relay.cancel()

        self.ctx.dispatcher.preemption.when_preempted(lease_id, preempt)
        try:
            await relay
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if preempted and not (task is not None and task.cancelling()):
                raise LinePreempted() from None
            raise
        finally:
            self.ctx.dispatcher.preemption.when_preempted(lease_id, None)

    def _line_done(self, key: tuple[str, int], _task: asyncio.Task) -> None:
        self._running.pop(key, None)

    def _stop_waiting(self, batch_id: str) -> None:
        """One of the batch's lines is no longer waiting for a grant: feed the next one now, not at the
        next poll (the feed follows free capacity, not the poll interval)."""
        self._waiting[batch_id] = max(0, self._waiting.get(batch_id, 1) - 1)
        self._wakeup.set()


def _line_outcome(stored: tuple[int, bytes] | None, outcome: Outcome) -> str:
    """The batch_lines metric's outcome of one run of a line: its stored answer's, else why it waits again."""
    if stored is None:
        return "preempted" if outcome.reason == "preempted" else "requeued"
    return "failed" if stored[0] >= 400 else "completed"
