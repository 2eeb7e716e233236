"""The zero-delay path (every latency at 0): the whole answer at once, without the scheduler.

Used by benchmarks that measure the dispatcher, not the engine: one response built and sent in one
piece, with the same bytes, metrics and faults as the engine path would give.
"""

from __future__ import annotations

import asyncio
import time

from vllm_sim.asgi import SSE, Headers, Send, send_json
from vllm_sim.config import SimConfig
from vllm_sim.faults import SimulatedDrop, drop_after_half
from vllm_sim.metrics import SimMetrics
from vllm_sim.render import DONE, Renderer, heads
from vllm_sim.text import TokenSource
from vllm_sim.validation import Job


class ZeroDelay:
    """Answers a ``Job`` at once (after ``stall_before_first_token``, if set)."""

    def __init__(self, config: SimConfig, metrics: SimMetrics, tokens: TokenSource, render: Renderer) -> None:
        self.config = config
        self.metrics = metrics
        self.tokens = tokens
        self.render = render

    async def __call__(self, job: Job, send: Send, headers: Headers, drop_at: int) -> None:
        cfg, metrics = self.config, self.metrics
        t0 = time.perf_counter()
        stall = cfg.stall_before_first_token
        outputs, finishes, n = job.outputs, job.finishes, job.n
        total = outputs[0] if n == 1 else sum(outputs)
        starts = self.tokens.starts(cfg.seed, job.prompt_text, n)
        # Each of the n sequences is one engine request (vLLM's parallel sampling): its prompt counts.
        metrics.prompt_tokens.inc(job.prompt_tokens * n)
        metrics.prefix_cache_queries.inc(job.prompt_tokens * n)
        if not job.stream:
            if stall:
                await asyncio.sleep(stall)
            texts = [self.tokens.text(start, 0, out) for start, out in zip(starts, outputs, strict=True)]
            body = self.render.full_response(job, texts, finishes, total)
            if drop_at >= 0:
                await drop_after_half(send, body, headers, metrics, job.n, job.request_id)
            metrics.generation_tokens.inc(total)
            self._observe(job, time.perf_counter() - t0)
            await send_json(send, 200, body, headers)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [*SSE, *headers]})
        if stall:
            await asyncio.sleep(stall)
        prefix = self.render.chunk_prefix(job)
        toks = self.tokens
        limit = total if drop_at < 0 else drop_at
        chunk = self.render.chunk
        if n == 1:
            start, out, finish = starts[0], outputs[0], finishes[0]
            parts = [chunk(job, prefix, "", None, True)] if job.kind == "chat" else []
            for i in range(limit):
                last = i == out - 1
                parts.append(chunk(job, prefix, toks.text(start, i, i + 1), finish if last else None, False))
        else:  # vLLM interleaves the choices: token t of every choice, then token t + 1
            opens = heads(n)
            parts = [chunk(job, prefix, "", None, True, h) for h in opens] if job.kind == "chat" else []
            emitted = 0
            for t in range(max(outputs)):
                for c in range(n):
                    out = outputs[c]
                    if t < out and emitted < limit:
                        text = toks.text(starts[c], t, t + 1)
                        parts.append(chunk(job, prefix, text, finishes[c] if t == out - 1 else None, False, opens[c]))
                        emitted += 1
        if drop_at >= 0:
            await send({"type": "http.response.body", "body": b"".join(parts), "more_body": True})
            metrics.generation_tokens.inc(limit)
            metrics.request_success["abort"].inc(n)
            raise SimulatedDrop(job.request_id)
        if job.include_usage:
            parts.append(self.render.usage_chunk(job, prefix, total))
        parts.append(DONE)
        metrics.generation_tokens.inc(total)
        self._observe(job, time.perf_counter() - t0)
        await send({"type": "http.response.body", "body": b"".join(parts)})

    def _observe(self, job: Job, elapsed: float) -> None:
        """Every sequence finishes (vLLM counts each of the n as a request in its histograms)."""
        observe = self.metrics.observe_finished
        for finish, out in zip(job.finishes, job.outputs, strict=True):
            observe(finish, e2e=elapsed, queue=0.0, ttft=elapsed, prefill=0.0, decode=0.0, output_tokens=out)
