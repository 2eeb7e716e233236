"""The open-loop load of the fault suite, and how every request it sends is classified.

Poisson arrivals at `rate` requests/s, a share of them streamed (`stream_share`), each asking for an
answer of 0.5-3 s (`max_tokens` = seconds / the simulator's inter-token latency). Every request ends
in exactly one class:

- ``ok``: 200 and a complete answer (a stream ends with ``data: [DONE]`` and carries no error event;
  a plain answer is a whole JSON completion).
- ``clear``: the client was told what happened: a status >= 400 with an OpenAI error body
  (``{"error": {"message", "type", ...}}``) and ``Retry-After`` on 429 and 503; or a stream that ends
  with an error event (what vLLM sends when its engine fails mid-stream).
- ``unclear``: anything else, by kind: ``reset`` (connection refused, reset or closed before a
  status), ``cut`` (a stream or body that ends without [DONE] and without an error event),
  ``no_body`` (an error status without an OpenAI body), ``no_retry_after`` (429/503 without it),
  ``hang`` (no end within the request deadline).
- ``killed``: the request was in flight at a sender the scenario SIGKILLed (its connection dies with
  the process; no gateway can answer it), and ``aborted``: the scenario's own client hung up.

The arrival schedule is a pure function of the seed, so every run of a scenario offers the same load.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
import orjson

UNCLEAR_KINDS = ("reset", "cut", "no_body", "no_retry_after", "hang")


@dataclass
class Shape:
    """The offered load."""

    rate: float = 22.0  # requests/s
    stream_share: float = 0.7
    seconds: tuple[float, float] = (0.5, 3.0)  # how long each answer takes to generate
    itl_s: float = 0.05  # the simulators' inter-token latency (to turn seconds into max_tokens)
    deadline_s: float = 45.0  # past this a request is a hang
    seed: int = 14


@dataclass
class Arrival:
    at: float
    stream: bool
    max_tokens: int
    rid: str


def schedule(shape: Shape) -> Iterator[Arrival]:
    """Poisson arrivals at `shape.rate`, without end (the caller says when to stop); the same seed
    gives the same sequence."""
    rng = random.Random(shape.seed)
    t, n = rng.expovariate(shape.rate), 0
    while True:
        secs = rng.uniform(*shape.seconds)
        yield Arrival(t, rng.random() < shape.stream_share, max(2, round(secs / shape.itl_s)), f"f{n:05d}")
        n += 1
        t += rng.expovariate(shape.rate)


@dataclass
class Result:
    rid: str
    start: float  # seconds from the run's start
    stream: bool
    target: str = ""  # the sender it went to
    klass: str = ""  # ok | clear | unclear | killed | aborted
    kind: str = ""  # the status for ok/clear ("200", "503", "stream-error"); the unclear kind
    status: int = 0
    end: float = 0.0
    ttfb: float | None = None
    detail: str = ""
    at_killed: bool = False  # in flight at a sender the scenario SIGKILLed


def openai_error(body: bytes) -> bool:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    err = data.get("error") if isinstance(data, dict) else None
    return isinstance(err, dict) and isinstance(err.get("message"), str) and "type" in err


async def _read_stream(resp: aiohttp.ClientResponse, res: Result, t0: float) -> None:
    done = errored = False
    async for line in resp.content:
        if res.ttfb is None:
            res.ttfb = time.perf_counter() - t0 - res.start
        if not line.startswith(b"data: "):
            continue
        data = line[6:].strip()
        if data == b"[DONE]":
            done = True
            continue
        if data.startswith(b'{"error"') or (b'"error"' in data and openai_error(data)):
            errored = True
    if errored:
        res.klass, res.kind = "clear", "stream-error"
    elif done:
        res.klass, res.kind = "ok", "200"
    else:
        res.klass, res.kind = "unclear", "cut"


async def one(
    session: aiohttp.ClientSession, url: str, token: str, model: str, a: Arrival, res: Result, t0: float
) -> None:
    body: dict = {
        "model": model,
        "messages": [{"role": "user", "content": "fault suite"}],
        "max_tokens": a.max_tokens,
        "stream": a.stream,
    }
    headers = {"authorization": f"Bearer {token}", "content-type": "application/json", "x-request-id": a.rid}
    res.start = time.perf_counter() - t0
    got_status = False
    try:
        async with session.post(url + "/v1/chat/completions", data=orjson.dumps(body), headers=headers) as resp:
            got_status = True
            res.status = resp.status
            if resp.status == 200 and a.stream:
                await _read_stream(resp, res, t0)
            elif resp.status == 200:
                raw = await resp.read()
                res.ttfb = time.perf_counter() - t0 - res.start
                try:
                    ok = bool(orjson.loads(raw).get("choices"))
                except (orjson.JSONDecodeError, AttributeError):
                    ok = False
                res.klass, res.kind = ("ok", "200") if ok else ("unclear", "cut")
            else:
                raw = await resp.read()
                if not openai_error(raw):
                    res.klass, res.kind, res.detail = "unclear", "no_body", raw[:120].decode(errors="replace")
                elif resp.status in (429, 503) and "retry-after" not in resp.headers:
                    res.klass, res.kind = "unclear", "no_retry_after"
                else:
                    res.klass, res.kind = "clear", str(resp.status)
                    res.detail = raw[:160].decode(errors="replace")
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        res.klass, res.kind, res.detail = "unclear", "cut" if got_status else "reset", repr(exc)[:160]
    res.end = time.perf_counter() - t0


@dataclass
class Load:
    """Runs a schedule against the senders `targets()` names (round robin over the live ones)."""

    shape: Shape
    model: str
    token: str
    targets: Callable[[], list[str]]
    results: list[Result] = field(default_factory=list)
    _tasks: dict[asyncio.Task, Result] = field(default_factory=dict)

    async def run(self, arriving: Callable[[float], bool], t0: float) -> None:
        """Sends the schedule's arrivals while `arriving(at)` holds, then waits for every answer."""
        conn = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self.shape.deadline_s)
        async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
            rr = 0
            for a in schedule(self.shape):
                delay = a.at - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
                if not arriving(a.at):  # asked when the arrival is due: a fault's end is known by then
                    break
                live = self.targets()
                url = live[rr % len(live)]
                rr += 1
                res = Result(a.rid, a.at, a.stream, target=url)
                self.results.append(res)
                task = asyncio.create_task(self._bounded(session, url, a, res, t0))
                self._tasks[task] = res
                task.add_done_callback(lambda t: self._tasks.pop(t, None))
            while self._tasks:
                await asyncio.wait(list(self._tasks), timeout=1)

    async def _bounded(self, session: aiohttp.ClientSession, url: str, a: Arrival, res: Result, t0: float) -> None:
        try:
            await asyncio.wait_for(one(session, url, self.token, self.model, a, res, t0), self.shape.deadline_s)
        except TimeoutError:
            res.klass, res.kind, res.end = "unclear", "hang", time.perf_counter() - t0

    def mark_killed(self, url: str) -> int:
        """The requests now in flight at sender `url` (about to be SIGKILLed): classed `killed` whatever
        their connection then reports. Returns how many."""
        n = 0
        for res in list(self._tasks.values()):
            if res.target == url:
                res.at_killed = True
                n += 1
        return n


def finalize(results: list[Result]) -> None:
    """Requests marked as in flight at a killed sender are `killed`, not `unclear`."""
    for r in results:
        if r.at_killed and r.klass != "ok":
            r.klass = "killed"


def summary(results: list[Result]) -> dict:
    klass = Counter(r.klass for r in results)
    clear = Counter(r.kind for r in results if r.klass == "clear")
    unclear = Counter(r.kind for r in results if r.klass == "unclear")
    return {
        "requests": len(results),
        "ok": klass["ok"],
        "clear": dict(sorted(clear.items())),
        "unclear": dict(sorted(unclear.items())),
        "unclear_total": klass["unclear"],
        "killed": klass["killed"],
        "aborted": klass["aborted"],
    }


def first_ok_after(results: list[Result], t: float) -> float | None:
    """Seconds from `t` to the start of the first request started after `t` that succeeded."""
    starts = sorted(r.start for r in results if r.klass == "ok" and r.start >= t)
    return starts[0] - t if starts else None


def failure_window(results: list[Result], t: float) -> tuple[float, float] | None:
    """From the first to the last start (after `t`, seconds from `t`) of a request that did not succeed."""
    bad = sorted(r.start for r in results if r.klass in ("clear", "unclear") and r.start >= t - 5)
    return (bad[0] - t, bad[-1] - t) if bad else None
