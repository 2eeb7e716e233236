"""Open-loop load generator for the scheduling scenarios (asyncio + aiohttp, one process).

Poisson arrivals per traffic class, mixed prompt and output lengths, streaming chat completions with
`stream_options.include_usage` (exact output token counts). Each request records: class, status, time
to first token, end to end, output tokens, per-stream tokens/s, and (after the run, from the
simulators' `/sim/stats` admission logs) which replica served it.

The arrival schedule is a pure function of the classes and the seed, so every arm of a scenario
receives exactly the same offered load.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
import uuid
from dataclasses import asdict, dataclass, field

import aiohttp
import orjson


@dataclass
class TrafficClass:
    name: str
    rate: float  # requests/s (Poisson)
    prompt_tokens: tuple[int, int]  # uniform range
    max_tokens: tuple[int, int]  # uniform range (the simulator generates exactly max_tokens)
    vllm_priority: int = 0  # body "priority" for straight-to-vLLM with --scheduling-policy priority
    llmd_priority: int = 5  # the dispatcher token's priority (higher first)
    threshold: int = 100000  # the dispatcher token's queue threshold (429 at or above)
    token: str = ""  # bearer token through the dispatcher (set per run)


@dataclass
class Arrival:
    cls: str
    at: float
    prompt_tokens: int
    max_tokens: int
    rid: str


@dataclass
class Record:
    cls: str
    rid: str
    start: float  # offset from the run's start
    prompt_tokens: int
    max_tokens: int
    status: int = 0  # HTTP status; 0 = connection error; -1 = still running when the run was cut
    ttft: float | None = None
    e2e: float | None = None
    out_tokens: int = 0
    tps: float | None = None  # per-stream decode speed: (tokens - 1) / (last token - first token)
    replica: str = ""
    error: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def schedule(classes: list[TrafficClass], duration: float, seed: int) -> list[Arrival]:
    out: list[Arrival] = []
    for i, c in enumerate(classes):
        rng = random.Random(seed * 1000 + i)
        t = rng.expovariate(c.rate) if c.rate > 0 else duration
        while t < duration:
            out.append(
                Arrival(
                    c.name,
                    t,
                    rng.randint(*c.prompt_tokens),
                    rng.randint(*c.max_tokens),
                    f"{c.name}-{uuid.UUID(int=rng.getrandbits(128)).hex[:16]}",
                )
            )
            t += rng.expovariate(c.rate)
    out.sort(key=lambda a: a.at)
    return out


@dataclass
class Target:
    """Where requests go: one URL (the dispatcher) or several (straight to vLLM, round robin)."""

    urls: list[str]
    model: str
    mode: str  # "direct" | "direct-priority" | "dispatcher"
    classes: dict[str, TrafficClass] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._rr = itertools.cycle(self.urls)

    def request(self, a: Arrival) -> tuple[str, dict, bytes]:
        c = self.classes[a.cls]
        body: dict = {
            "model": self.model,
            "messages": [{"role": "user", "content": "abc " * max(1, a.prompt_tokens - 5)}],
            "max_tokens": a.max_tokens,
            "ignore_eos": True,  # exactly max_tokens on a real vLLM too (vLLM's extra sampling parameter)
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        headers = {"content-type": "application/json", "x-request-id": a.rid}
        if self.mode == "direct-priority" and c.vllm_priority:
            body["priority"] = c.vllm_priority
        if self.mode == "dispatcher":
            headers["authorization"] = f"Bearer {c.token}"
        return next(self._rr) + "/v1/chat/completions", headers, orjson.dumps(body)


async def _one(session: aiohttp.ClientSession, target: Target, a: Arrival, t0: float, rec: Record) -> None:
    url, headers, body = target.request(a)
    started = time.perf_counter()
    rec.start = started - t0
    first = last = None
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            rec.status = resp.status
            if resp.status != 200:
                rec.error = (await resp.text())[:200]
                rec.e2e = time.perf_counter() - started
                return
            async for line in resp.content:
                if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                    continue
                ev = orjson.loads(line[6:])
                usage = ev.get("usage")
                if usage:
                    rec.out_tokens = usage.get("completion_tokens", rec.out_tokens)
                for ch in ev.get("choices") or ():
                    if (ch.get("delta") or {}).get("content"):
                        now = time.perf_counter()
                        if first is None:
                            first = now
                            rec.ttft = now - started
                        last = now
        rec.e2e = time.perf_counter() - started
        if first is not None and last is not None and last > first and rec.out_tokens > 1:
            rec.tps = (rec.out_tokens - 1) / (last - first)
    except asyncio.CancelledError:
        rec.status = -1
        raise
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        rec.status = 0
        rec.error = repr(exc)[:200]
        rec.e2e = time.perf_counter() - started


async def run_load(target: Target, arrivals: list[Arrival], duration: float, drain_s: float = 20.0) -> list[Record]:
    """Fire `arrivals` on time; wait up to `drain_s` after the last arrival window, then cut the rest.
    A cut request keeps status -1; its TTFT (if none yet) is the censored value: time waited so far."""
    records = [Record(a.cls, a.rid, a.at, a.prompt_tokens, a.max_tokens) for a in arrivals]
    conn = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        t0 = time.perf_counter()
        tasks: list[asyncio.Task] = []
        for a, rec in zip(arrivals, records, strict=True):
            delay = a.at - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_one(session, target, a, t0, rec)))
        rest = duration - (time.perf_counter() - t0)
        if rest > 0:
            await asyncio.sleep(rest)
        if tasks:
            await asyncio.wait(tasks, timeout=drain_s)
        cut_at = time.perf_counter() - t0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for rec in records:
            if rec.status == -1:
                rec.e2e = cut_at - rec.start
                if rec.ttft is None:
                    rec.ttft = rec.e2e  # censored: it had waited at least this long
    return records


async def assign_replicas(records: list[Record], sim_urls: list[str], names: list[str]) -> None:
    """Which simulator admitted each request (from its `/sim/stats` admission log, by request id)."""
    where: dict[str, str] = {}
    async with aiohttp.ClientSession() as s:
        for url, name in zip(sim_urls, names, strict=True):
            with contextlib.suppress(aiohttp.ClientError):
                async with s.get(url + "/sim/stats") as r:
                    for rid in (await r.json())["admitted"]:
                        where[rid.removeprefix("chatcmpl-")] = name
    for rec in records:
        rec.replica = where.get(rec.rid, "")


@dataclass
class StreamTimes:
    """`n` concurrent streams read to their end: what each event's arrival says."""

    complete: int = 0  # streams that reached `data: [DONE]`
    failed: int = 0  # streams that raised
    events: int = 0  # `data:` lines read, [DONE] included
    ttfts: list[float] = field(default_factory=list)  # per stream: request to its first counted event
    gaps: list[float] = field(default_factory=list)  # between a stream's consecutive counted events
    gap_ends: list[float] = field(default_factory=list)  # when each gap ended (s since the first request)
    last_first_event: float = 0.0  # when the last stream to start got its first counted event (s)
    wall: float = 0.0

    def steady_gaps(self) -> list[float]:
        """The gaps that ended once every stream was open and streaming (the arrivals behind)."""
        return [g for g, end in zip(self.gaps, self.gap_ends, strict=True) if end > self.last_first_event]


async def stream_clients(
    url: str, body: bytes, n: int, headers: dict[str, str], skip_role_chunk: bool = False, ramp_s: float = 0.0
) -> StreamTimes:
    """POST `body` from `n` clients, at once or spread evenly over `ramp_s` seconds, and time every event
    of every stream; `skip_role_chunk` leaves out the empty-content chunk vLLM sends first (it comes at
    the instant of the first token)."""
    out = StreamTimes()
    start = time.monotonic()

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        await asyncio.sleep(ramp_s * i / n)
        t0, last = time.monotonic(), None
        async with session.post(url, data=body, headers=headers) as r:
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                now = time.monotonic()
                out.events += 1
                if line.startswith(b"data: [DONE]"):
                    out.complete += 1
                    break
                if skip_role_chunk and b'"content":""' in line:
                    continue
                if last is None:
                    out.ttfts.append(now - t0)
                    out.last_first_event = max(out.last_first_event, now - start)
                else:
                    out.gaps.append(now - last)
                    out.gap_ends.append(now - start)
                last = now

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        results = await asyncio.gather(*(one(session, i) for i in range(n)), return_exceptions=True)
        out.wall = time.monotonic() - start
    out.failed = sum(isinstance(r, BaseException) for r in results)
    return out
