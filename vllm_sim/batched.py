"""The engine path: a ``Job`` submitted to the continuous-batching engine, answered token by token.

One engine request per choice (vLLM's parallel sampling, child ids ``"<index>_<request id>"``); a
client that disconnects aborts its requests; streamed choices are interleaved position by position,
as vLLM sends them.
"""

from __future__ import annotations

import asyncio

from vllm_sim.asgi import SSE, Headers, Receive, Send, send_json
from vllm_sim.config import SimConfig
from vllm_sim.engine import Engine, SimRequest
from vllm_sim.errors import engine_dead
from vllm_sim.faults import SimulatedDrop, drop_after_half
from vllm_sim.metrics import SimMetrics
from vllm_sim.render import DONE, Renderer, error_event, heads
from vllm_sim.text import TokenSource
from vllm_sim.validation import Job


class Batched:
    """Answers a ``Job`` through ``engine`` (its steps set the pace)."""

    def __init__(
        self, config: SimConfig, metrics: SimMetrics, tokens: TokenSource, render: Renderer, engine: Engine
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.tokens = tokens
        self.render = render
        self.engine = engine

    async def __call__(self, job: Job, receive: Receive, send: Send, headers: Headers, drop_at: int) -> None:
        loop = asyncio.get_running_loop()
        n, rid = job.n, job.request_id
        # n > 1: one engine request a choice, with vLLM's child ids "<index>_<request id>".
        reqs = [
            SimRequest(
                rid if n == 1 else f"{i}_{rid}", job.prompt_tokens, out, natural_stop=finish == "stop",
                priority=job.priority,
            )
            for i, (out, finish) in enumerate(zip(job.outputs, job.finishes, strict=True))
        ]  # fmt: skip
        disconnected: asyncio.Future[None] = loop.create_future()
        engine = self.engine

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
            if not disconnected.done():
                disconnected.set_result(None)
            for req in reqs:
                engine.abort(req)

        watcher = loop.create_task(watch())
        try:
            if job.stream:
                await send({"type": "http.response.start", "status": 200, "headers": [*SSE, *headers]})
            stall = self.config.stall_before_first_token
            if stall:
                await asyncio.wait([disconnected], timeout=stall)
                if disconnected.done():
                    self.metrics.request_success["abort"].inc(n)
                    return
            for req in reqs:
                engine.submit(req)
            if job.stream:
                await self._stream(job, reqs, send, drop_at)
            else:
                for req in reqs:
                    assert req.done is not None
                    await req.done
                await self._reply(job, reqs, send, headers, drop_at)
        finally:
            watcher.cancel()
            for req in reqs:
                if not req.finished and req.done is not None:
                    engine.abort(req)

    async def _reply(self, job: Job, reqs: list[SimRequest], send: Send, headers: Headers, drop_at: int) -> None:
        """The non-streamed answer, once every choice finished."""
        reasons = [req.finish_reason for req in reqs]
        if "abort" in reasons:
            return  # the client went away: nobody to answer
        if "error" in reasons:
            err = engine_dead()
            await send_json(send, err.status, err.body(), headers)
            return
        starts = self.tokens.starts(self.config.seed, job.prompt_text, job.n)
        texts = [self.tokens.text(start, 0, req.generated) for start, req in zip(starts, reqs, strict=True)]
        total = sum(req.generated for req in reqs)
        body = self.render.full_response(job, texts, [r or "length" for r in reasons], total)
        if drop_at >= 0:
            await drop_after_half(send, body, headers, self.metrics, job.n, job.request_id)
        await send_json(send, 200, body, headers)

    @staticmethod
    async def _next_tokens(reqs: list[SimRequest], sent: list[int]) -> None:
        """Wait until one of the still open choices has new tokens or finished."""
        if len(reqs) == 1:
            await reqs[0].next_tokens()
            return
        open_ = [(req, s) for req, s in zip(reqs, sent, strict=True) if s >= 0]
        if any(req.finished or req.generated > s for req, s in open_):
            return
        waiter = asyncio.get_running_loop().create_future()
        for req, _ in open_:
            req.waiter = waiter  # one future for all: whichever the engine steps first wakes it
        try:
            await waiter
        finally:
            for req, _ in open_:
                if req.waiter is waiter:
                    req.waiter = None

    async def _stream(self, job: Job, reqs: list[SimRequest], send: Send, drop_at: int) -> None:
        """The streamed answer: the new tokens of every engine step, as events."""
        n = len(reqs)
        prefix = self.render.chunk_prefix(job)
        starts = self.tokens.starts(self.config.seed, job.prompt_text, n)
        opens = heads(n)
        toks, chunk, engine = self.tokens, self.render.chunk, self.engine
        sent = [0] * n  # tokens sent of each choice; -1 once its finish event went out
        total_sent = 0
        first = True
        while True:
            await self._next_tokens(reqs, sent)
            reasons = [req.finish_reason for req in reqs]
            if "abort" in reasons:
                for req in reqs:
                    engine.abort(req)
                return
            if "error" in reasons:
                await send({"type": "http.response.body", "body": error_event(engine_dead()), "more_body": False})
                return
            parts: list[bytes] = []
            if first and job.kind == "chat":
                parts.extend(chunk(job, prefix, "", None, True, h) for h in opens)
            first = False
            # New tokens, interleaved like vLLM: position by position, choice by choice.
            budget = -1 if drop_at < 0 else drop_at - total_sent
            lo = min((s for s in sent if s >= 0), default=0)
            hi = max(req.generated for req in reqs)
            for t in range(lo, hi):
                for c in range(n):
                    req, s = reqs[c], sent[c]
                    if s < 0 or not s <= t < req.generated or budget == 0:
                        continue
                    reason = reasons[c]
                    final = reason is not None and t == req.generated - 1
                    text = toks.text(starts[c], t, t + 1)
                    parts.append(chunk(job, prefix, text, reason if final else None, False, opens[c]))
                    sent[c] = -1 if final else t + 1
                    total_sent += 1
                    budget -= 1
            if budget == 0:
                if parts:
                    await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
                for req in reqs:
                    engine.abort(req)
                raise SimulatedDrop(job.request_id)
            if all(s < 0 for s in sent):
                if job.include_usage:
                    parts.append(self.render.usage_chunk(job, prefix, sum(req.generated for req in reqs)))
                parts.append(DONE)
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": False})
                return
            if parts:
                await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
