"""A continuous-batching engine in one asyncio task, shaped like vLLM's V1 scheduler.

At most ``max_num_seqs`` requests run; the rest wait, FIFO or by (priority, arrival). Each engine
step yields one token for every running sequence and lasts
``itl_base + itl_per_seq * batch + prefill_per_token * <prompt tokens admitted this step>``, so the
inter-token latency grows with the batch and the time to first token is queue wait + prefill. The
KV cache holds prompt + generated tokens of running sequences; when it overflows, the newest (or
lowest-priority) running sequence is preempted back to the queue (``vllm:num_preemptions_total``).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
from typing import Literal

from vllm_sim.config import SimConfig
from vllm_sim.metrics import SimMetrics

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "abort", "error"]


def step_duration(config: SimConfig, batch_size: int, prefill_tokens: int) -> float:
    """Duration of one engine step (pure)."""
    return config.itl_base + config.itl_per_seq * batch_size + config.prefill_per_token * prefill_tokens


class SimRequest:
    """One request's life in the engine. The HTTP layer reads ``generated`` and waits on futures."""

    __slots__ = (
        "admitted_at",
        "arrival",
        "done",
        "finish_reason",
        "finished_at",
        "first_token_at",
        "generated",
        "last_token_at",
        "natural_stop",
        "priority",
        "prompt_tokens",
        "request_id",
        "seq",
        "target_tokens",
        "waiter",
    )

    def __init__(
        self,
        request_id: str,
        prompt_tokens: int,
        target_tokens: int,
        *,
        natural_stop: bool,
        priority: int = 0,
    ) -> None:
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.target_tokens = target_tokens
        self.natural_stop = natural_stop  # finish "stop" (EOS) rather than "length"
        self.priority = priority
        self.seq = 0
        self.arrival = 0.0
        self.admitted_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at = 0.0
        self.finished_at: float | None = None
        self.generated = 0
        self.finish_reason: FinishReason | None = None
        self.done: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None  # set by a streaming reader between tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def next_tokens(self) -> None:
        """Wait until more tokens were generated or the request finished."""
        if self.finish_reason is not None:
            return
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None


class Engine:
    """The scheduler and its step loop. Start with ``start()``; submit, wait on ``req.done``, abort."""

    def __init__(self, config: SimConfig, metrics: SimMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.running: list[SimRequest] = []
        self._waiting: list[tuple[int, int, SimRequest]] = []  # heap of (priority, seq, request)
        self._num_waiting = 0
        self._seq = itertools.count()
        self._kv_tokens = 0  # tokens held by running sequences
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self.steps = 0
        self._busy = False  # a step ended just before this one began
        self._woke_at = 0.0
        self.admission_log: collections.deque[str] = collections.deque(maxlen=4096)  # first admissions
        metrics.bind(self.num_running, self.num_waiting, self.kv_cache_usage)

    # -- state, read by /metrics -------------------------------------------------------------
    def num_running(self) -> float:
        return len(self.running)

    def num_waiting(self) -> float:
        return self._num_waiting

    def kv_cache_usage(self) -> float:
        return min(1.0, self._kv_tokens / self.config.kv_cache_tokens)

    def waiting_requests(self) -> list[SimRequest]:
        return [r for _, _, r in sorted(self._waiting) if not r.finished]

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        self.fail_all("abort")

    # -- requests ----------------------------------------------------------------------------
    def submit(self, req: SimRequest) -> None:
        loop = asyncio.get_running_loop()
        req.seq = next(self._seq)
        req.arrival = loop.time()
        req.done = loop.create_future()
        self.metrics.prompt_tokens.inc(req.prompt_tokens)
        self.metrics.prefix_cache_queries.inc(req.prompt_tokens)
        self._enqueue(req)
        w = self._wakeup
        if w is not None and not w.done():
            w.set_result(None)

    def abort(self, req: SimRequest, reason: FinishReason = "abort") -> None:
        """Client went away (or a fault): free its slot now; a waiting one is dropped lazily."""
        if req.finished or req.done is None:
            return
        if req.admitted_at is not None and req in self.running:
            self.running.remove(req)
            self._kv_tokens -= req.prompt_tokens + req.generated
        else:
            self._num_waiting -= 1
        self._finish(req, reason, asyncio.get_running_loop().time())

    def fail_all(self, reason: FinishReason = "error") -> None:
        for req in list(self.running):
            self.abort(req, reason)
        for _, _, req in list(self._waiting):
            self.abort(req, reason)
        self._waiting.clear()
        self._num_waiting = 0

    # -- the loop ----------------------------------------------------------------------------
    def _enqueue(self, req: SimRequest) -> None:
        key = req.priority if self.config.scheduling_policy == "priority" else 0
        heapq.heappush(self._waiting, (key, req.seq, req))
        self._num_waiting += 1

    def _admit(self, now: float) -> int:
        """Move waiting requests into the batch while slots and KV cache allow; return prefill tokens."""
        cfg = self.config
        prefill = 0
        waiting = self._waiting
        while waiting and len(self.running) < cfg.max_num_seqs:
            req = waiting[0][2]
            if req.finished:  # aborted while waiting
                heapq.heappop(waiting)
                continue
            need = req.prompt_tokens + req.generated
            if self.running and self._kv_tokens + need > cfg.kv_cache_tokens:
                break  # head of line waits for KV cache
            heapq.heappop(waiting)
            self._num_waiting -= 1
            if req.admitted_at is None:
                req.admitted_at = now
                self.admission_log.append(req.request_id)
            self.running.append(req)
            self._kv_tokens += need
            prefill += need
        return prefill

    def _preempt_if_needed(self) -> None:
        cfg = self.config
        while self._kv_tokens > cfg.kv_cache_tokens and len(self.running) > 1:
            if cfg.scheduling_policy == "priority":
                victim = max(self.running, key=lambda r: (r.priority, r.seq))
            else:
                victim = self.running[-1]
            self.running.remove(victim)
            self._kv_tokens -= victim.prompt_tokens + victim.generated
            self._enqueue(victim)
            self.metrics.preemptions.inc()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._step(loop)
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad step kill the engine
                log.exception("simulated engine step failed")
                await asyncio.sleep(0.01)

    async def _step(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.running and not self._num_waiting:
            self._waiting.clear()  # only aborted leftovers
            self._busy = False
            self._wakeup = loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None
        prefill = self._admit(loop.time())
        batch = self.running
        if not batch:
            await asyncio.sleep(0.001)  # only aborted leftovers were queued
            return
        duration = step_duration(self.config, len(batch), prefill)
        # Steps follow one another without drift: the loop's own work eats into the next step.
        spent = loop.time() - self._woke_at if self._busy else 0.0
        await asyncio.sleep(max(0.0, duration - spent))  # 0 still yields to the HTTP side
        now = self._woke_at = loop.time()
        self._busy = True
        self.steps += 1
        batch = list(self.running)  # aborts may have happened during the sleep
        if not batch:
            return
        self.metrics.generation_tokens.inc(len(batch))
        itl = self.metrics.itl
        finished: list[SimRequest] = []
        for req in batch:
            req.generated += 1
            if req.first_token_at is None:
                req.first_token_at = now
            else:
                itl.observe(now - req.last_token_at)
            req.last_token_at = now
            if req.generated >= req.target_tokens:
                finished.append(req)
            else:
                req._wake()
        self._kv_tokens += len(batch)
        for req in finished:
            self.running.remove(req)
            self._kv_tokens -= req.prompt_tokens + req.generated
            self._finish(req, "stop" if req.natural_stop else "length", now)
        self._preempt_if_needed()

    def _finish(self, req: SimRequest, reason: FinishReason, now: float) -> None:
        req.finish_reason = reason
        req.finished_at = now
        admitted = req.admitted_at if req.admitted_at is not None else now
        first = req.first_token_at
        self.metrics.observe_finished(
            reason,
            e2e=now - req.arrival,
            queue=admitted - req.arrival,
            ttft=None if first is None else first - req.arrival,
            prefill=0.0 if first is None else first - admitted,
            decode=0.0 if first is None else now - first,
            output_tokens=req.generated,
        )
        if req.done is not None and not req.done.done():
            req.done.set_result(None)
        req._wake()
