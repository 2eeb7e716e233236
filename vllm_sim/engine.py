"""A continuous-batching engine in one asyncio task, shaped like vLLM's V1 scheduler.

At most ``max_num_seqs`` requests run; the rest wait, FIFO or by (priority, arrival). Each engine
step computes tokens for the requests it schedules and lasts
``itl_base + itl_per_seq * <requests scheduled> + prefill_per_token * <prompt tokens computed>``, so
the inter-token latency grows with the batch and the time to first token is queue wait + prefill.
The KV cache holds the computed prompt + generated tokens of running sequences; when it overflows,
the newest (or lowest-priority) running sequence is preempted back to the queue
(``vllm:num_preemptions_total``) and, readmitted, prefills its prompt and output again.

Chunked prefill (``max_num_batched_tokens`` B > 0) follows ``Scheduler.schedule()`` in vLLM's
``vllm/v1/core/sched/scheduler.py``: a step has a budget of B tokens. The running requests come
first, in order: a decoding one costs 1 token, one still prefilling gets min(its remaining prompt,
budget left); once the budget is spent the rest of the running requests sit the step out. Then
waiting requests are admitted while a slot is free, the KV cache allows and budget is left, each
with min(its prompt, budget left) tokens. A request samples its first token in the step that
computes the last chunk of its prompt; a step that computes a partial chunk samples nothing for it.
Partially prefilled requests are running (``vllm:num_requests_running``). As vLLM, B must be at
least ``max_num_seqs``. B = 0 means no budget: a whole prompt is prefilled in the step that admits
it (vLLM always has a budget: 2048 by default for the OpenAI server, 8192 on GPUs of 70 GiB or more
other than A100, ``EngineArgs.get_batch_defaults()`` in ``vllm/engine/arg_utils.py``).

Not modelled: ``long_prefill_token_threshold`` (a cap per chunk; 0 by default, set to 4% of
``max_model_len`` only with ``max_num_partial_prefills`` > 1), prefix caching (no prompt is ever
cached), KV blocks (the cache is counted in tokens), the KV allocation of a running request's chunk
failing during scheduling (here the cache may overflow for one step and preemption follows it, and
waiting requests may still be admitted in a step after a preemption, which vLLM skips), speculative
decoding, async scheduling, and the multimodal encoder budget.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from vllm_sim.config import SimConfig
from vllm_sim.metrics import SimMetrics

log = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "abort", "error"]


def step_duration(config: SimConfig, batch_size: int, prefill_tokens: int) -> float:
    """Duration of one engine step (pure)."""
    return config.itl_base + config.itl_per_seq * batch_size + config.prefill_per_token * prefill_tokens


@dataclass(frozen=True)
class StepPlan:
    """The tokens one step computes: per running request (0: not scheduled) and per admitted one."""

    running: tuple[int, ...]
    admitted: tuple[int, ...]  # for the first len(admitted) waiting requests, in queue order
    batch_size: int  # requests scheduled
    prefill_tokens: int  # prompt tokens computed (decodes not counted)


def plan_step(
    prefill_left: Sequence[int], waiting: Iterable[int], *, budget: int, free_slots: int, kv_free: int
) -> StepPlan:
    """Split one step's token budget as vLLM V1's ``Scheduler.schedule()`` does (pure).

    ``prefill_left``: per running request, in order, the prompt tokens it has still to compute (0:
    it decodes, 1 token). ``waiting``: the tokens each waiting request must prefill (prompt, plus the
    output so far for a preempted one), in queue order; read lazily, one past the last admitted at
    most. ``budget`` 0: unlimited. ``kv_free``: free KV cache tokens; the first request to run
    is admitted even if it does not fit. A request samples a token in this step iff it decodes or
    its chunk is the rest of its prompt.
    """
    left = budget if budget > 0 else sys.maxsize
    running: list[int] = []
    batch = prefill = 0
    for todo in prefill_left:
        n = min(todo or 1, left)
        running.append(n)
        left -= n
        batch += n > 0
        if todo:
            prefill += n
            kv_free -= n  # a decode's slot was counted when its previous token was sampled
    admitted: list[int] = []
    heads = iter(waiting)
    while left > 0 and len(admitted) < free_slots:
        need = next(heads, None)
        if need is None:
            break
        chunk = min(need, left)
        if (running or admitted) and chunk > kv_free:
            break  # head of line waits for KV cache
        admitted.append(chunk)
        left -= chunk
        kv_free -= chunk
        prefill += chunk
    return StepPlan(tuple(running), tuple(admitted), batch + len(admitted), prefill)


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
        "prefill_left",
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
        self.prefill_left = 0  # prompt (+ output, after a preemption) tokens not computed yet
        self.finish_reason: FinishReason | None = None
        self.done: asyncio.Future[None] | None = None
        self.waiter: asyncio.Future[None] | None = None  # set by a streaming reader between tokens

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def kv_tokens(self) -> int:
        """KV cache tokens it holds while running."""
        return self.prompt_tokens + self.generated - self.prefill_left

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
            self._kv_tokens -= req.kv_tokens
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
    def _queue_key(self, req: SimRequest) -> tuple[int, int, SimRequest]:
        return (req.priority if self.config.scheduling_policy == "priority" else 0, req.seq, req)

    def _enqueue(self, req: SimRequest) -> None:
        heapq.heappush(self._waiting, self._queue_key(req))
        self._num_waiting += 1

    def schedule(self, now: float) -> tuple[list[SimRequest], StepPlan]:
        """Plan one step and admit its waiting requests; return the requests scheduled and the plan.

        ``schedule`` and ``complete`` are one step without the clock: the loop sleeps between them.
        """
        cfg = self.config
        popped: list[SimRequest] = []

        def heads() -> Iterator[int]:
            while self._waiting:
                req = heapq.heappop(self._waiting)[2]
                if not req.finished:  # an aborted one is dropped here
                    popped.append(req)
                    yield req.prompt_tokens + req.generated

        plan = plan_step(
            [r.prefill_left for r in self.running],
            heads(),
            budget=cfg.max_num_batched_tokens,
            free_slots=cfg.max_num_seqs - len(self.running),
            kv_free=cfg.kv_cache_tokens - self._kv_tokens,
        )
        for req in popped[len(plan.admitted) :]:  # read but not admitted: back in its place
            heapq.heappush(self._waiting, self._queue_key(req))
        scheduled: list[SimRequest] = []
        for req, n in zip(self.running, plan.running, strict=True):
            if n:
                scheduled.append(req)
            if req.prefill_left:
                req.prefill_left -= n
                self._kv_tokens += n
        for req, n in zip(popped, plan.admitted, strict=False):
            self._num_waiting -= 1
            if req.admitted_at is None:
                req.admitted_at = now
                self.admission_log.append(req.request_id)
            req.prefill_left = req.prompt_tokens + req.generated - n  # a preempted one computes all again
            self.running.append(req)
            self._kv_tokens += n
            scheduled.append(req)
        return scheduled, plan

    def complete(self, scheduled: list[SimRequest], now: float) -> None:
        """End a step: a token for each scheduled request whose prompt is computed; finish; preempt."""
        self.steps += 1
        sampled = [r for r in scheduled if not r.finished and not r.prefill_left]  # aborts during the step
        self.metrics.generation_tokens.inc(len(sampled))
        itl = self.metrics.itl
        finished: list[SimRequest] = []
        for req in sampled:
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
        self._kv_tokens += len(sampled)
        for req in finished:
            self.running.remove(req)
            self._kv_tokens -= req.kv_tokens
            self._finish(req, "stop" if req.natural_stop else "length", now)
        self._preempt_if_needed()

    def _preempt_if_needed(self) -> None:
        cfg = self.config
        while self._kv_tokens > cfg.kv_cache_tokens and len(self.running) > 1:
            if cfg.scheduling_policy == "priority":
                victim = max(self.running, key=lambda r: (r.priority, r.seq))
            else:
                victim = self.running[-1]
            self.running.remove(victim)
            self._kv_tokens -= victim.kv_tokens
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
        scheduled, plan = self.schedule(loop.time())
        if not scheduled:
            await asyncio.sleep(0.001)  # only aborted leftovers were queued
            return
        duration = step_duration(self.config, plan.batch_size, plan.prefill_tokens)
        # Steps follow one another without drift: the loop's own work eats into the next step.
        spent = loop.time() - self._woke_at if self._busy else 0.0
        await asyncio.sleep(max(0.0, duration - spent))  # 0 still yields to the HTTP side
        now = self._woke_at = loop.time()
        self._busy = True
        self.complete(scheduled, now)

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
