"""Decode throughput of a running vLLM: N concurrent streaming chat completions, tokens/s.

    .venv/bin/python scripts/bench_real_vllm.py --url http://127.0.0.1:18000 --streams 1 4 --max-tokens 64

Each stream asks for exactly --max-tokens tokens (ignore_eos) with stream_options.include_usage, so the
count comes from the server's own usage. Prints per run: wall time, time to first token (mean),
aggregate tokens/s (all generated tokens / wall time) and per-stream tokens/s after the first token.
Uses only httpx (the project's venv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httpx


async def one_stream(client: httpx.AsyncClient, model: str, max_tokens: int, i: int) -> tuple[float, float, int]:
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": f"Write a long story about a lighthouse keeper number {i}."}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    ttft = 0.0
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=payload) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["delta"].get("content") and not ttft:
                ttft = time.monotonic() - t0
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return ttft, time.monotonic() - t0, tokens


async def run(url: str, model: str, n: int, max_tokens: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        t0 = time.monotonic()
        results = await asyncio.gather(*(one_stream(client, model, max_tokens, i) for i in range(n)))
        wall = time.monotonic() - t0
    total = sum(t for _, _, t in results)
    ttft = sum(r[0] for r in results) / n
    per_stream = sum((t - 1) / (e - f) for f, e, t in results if e > f) / n
    print(
        f"streams={n} max_tokens={max_tokens}: wall {wall:.1f} s, mean TTFT {ttft:.2f} s, "
        f"aggregate {total / wall:.1f} tok/s ({total} tokens), per stream {per_stream:.1f} tok/s after first token"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:18000")
    p.add_argument("--model", default="smollm2")
    p.add_argument("--streams", type=int, nargs="+", default=[1, 4])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True)
    a = p.parse_args()
    if a.warmup:
        asyncio.run(run(a.url, a.model, 1, 4))
    for n in a.streams:
        asyncio.run(run(a.url, a.model, n, a.max_tokens))


if __name__ == "__main__":
    main()
