"""Per-key limits: requests in parallel, requests per minute (rpm) and tokens per minute (tpm).

One decision for the three, taken atomically where the state lives, before a request's ticket is
published: either every limit has room and the request is counted in all of them, or none is touched
and the caller answers 429 with the limit that was hit. What is counted:

- parallel: a hold per request, from admission to its end (waiting and in flight), returned at the end;
  a hold also expires after `hold_ttl_s` unless renewed, so a sender that dies leaks no slot for long;
- rpm: each admitted request, over the last 60 s (a sliding window, exact);
- tpm: each request's prompt + completion tokens over the last 60 s: its estimate is counted when it is
  admitted (so concurrent requests cannot all slip under the limit) and replaced by the exact count from
  usage when it ends (counted per second: the window moves a second at a time) — overshoot is bounded
  by how much the estimates fell short.

Two stores with one contract: `MemoryLimits` in the process (the embedded default: one sender), and
`RedisLimits` (`LLMD_LIMITS_REDIS_URL`), one Lua script per decision, for several senders.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger(__name__)

WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class KeyLimits:
    """A key's limits; None: that one is not limited."""

    max_parallel: int | None = None
    rpm: int | None = None
    tpm: int | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in (self.max_parallel, self.rpm, self.tpm))


@dataclass(frozen=True, slots=True)
class Usage:
    """What a key has used, as the headers report it: each limit's remaining room and when it grows."""

    limits: KeyLimits
    parallel: int = 0
    requests: int = 0  # in the window, this request included
    tokens: int = 0
    requests_reset_s: float = 0.0  # until the oldest request in the window leaves it
    tokens_reset_s: float = 0.0

    def headers(self) -> list[tuple[bytes, bytes]]:
        """OpenAI's `x-ratelimit-*` headers for the limits the key has."""
        out: list[tuple[bytes, bytes]] = []
        lim = self.limits
        if lim.rpm is not None:
            out += _trio("requests", lim.rpm, lim.rpm - self.requests, self.requests_reset_s)
        if lim.tpm is not None:
            out += _trio("tokens", lim.tpm, lim.tpm - self.tokens, self.tokens_reset_s)
        return out


def _trio(kind: str, limit: int, remaining: int, reset_s: float) -> list[tuple[bytes, bytes]]:
    return [
        (f"x-ratelimit-limit-{kind}".encode(), str(limit).encode()),
        (f"x-ratelimit-remaining-{kind}".encode(), str(max(0, remaining)).encode()),
        (f"x-ratelimit-reset-{kind}".encode(), duration(reset_s).encode()),
    ]


def duration(seconds: float) -> str:
    """As OpenAI writes its resets: `20ms`, `1.5s`, `6m0s`."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 10) / 10:g}s"
    minutes, rest = divmod(math.ceil(seconds), 60)
    return f"{minutes}m{rest}s"


@dataclass(frozen=True, slots=True)
class Refusal:
    """The limit that was hit: `what` is parallel, requests or tokens."""

    what: str
    limit: int
    used: int
    retry_after_s: float
    usage: Usage


@dataclass(slots=True)
class Hold:
    """An admitted request's place in its key's limits, given back by `release`."""

    key: str
    limits: KeyLimits
    id: str
    estimate: int
    at: float  # when it was counted (epoch s)
    usage: Usage = field(default_factory=lambda: Usage(KeyLimits()))


class LimitStore(Protocol):
    def likely_admitted(self, key: str, limits: KeyLimits, estimate: int) -> bool: ...
    async def admit(self, key: str, limits: KeyLimits, estimate: int) -> Hold | Refusal: ...
    async def release(self, hold: Hold, tokens: int | None) -> None: ...
    async def close(self) -> None: ...


# -- the decision (pure) ---------------------------------------------------------------------------
def decide(limits: KeyLimits, parallel: int, requests: int, tokens: int, estimate: int) -> str | None:
    """Which limit one more request (of `estimate` tokens) would pass, or None: room in all three.
    tpm admits a request while the window is under the limit (a single request larger than the whole
    limit would otherwise never pass)."""
    if limits.max_parallel is not None and parallel >= limits.max_parallel:
        return "parallel"
    if limits.rpm is not None and requests >= limits.rpm:
        return "requests"
    if limits.tpm is not None and tokens >= limits.tpm:
        return "tokens"
    return None


ROOM_SHARE = 0.1  # a key with this share of every limit left (and room for two such requests) is far from them


def far_from_limits(usage: Usage, estimate: int) -> bool:
    """Does `usage` (a key's last decision) leave so much room that one more request of `estimate`
    tokens is all but sure to be admitted: a tenth of each limit left, and room for two such requests?"""
    lim = usage.limits
    for limit, used, need in (
        (lim.max_parallel, usage.parallel, 1),
        (lim.rpm, usage.requests, 1),
        (lim.tpm, usage.tokens, estimate),
    ):
        if limit is not None and limit - used < max(2 * need, ROOM_SHARE * limit):
            return False
    return True


# -- in the process (one sender) -------------------------------------------------------------------
@dataclass(slots=True)
class _KeyState:
    parallel: set[str] = field(default_factory=set)
    requests: deque[float] = field(default_factory=deque)  # admission times
    tokens: dict[int, int] = field(default_factory=dict)  # second -> tokens counted in it (oldest first)
    token_sum: int = 0


class MemoryLimits:
    """The embedded store: exact for one sender process, nothing to run."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}

    def likely_admitted(self, key: str, limits: KeyLimits, estimate: int) -> bool:
        return False  # a decision here takes microseconds: always taken before the ticket

    def _state(self, key: str, now: float) -> _KeyState:
        st = self._keys.setdefault(key, _KeyState())
        while st.requests and st.requests[0] <= now - WINDOW_S:
            st.requests.popleft()
        while st.tokens and (oldest := next(iter(st.tokens))) <= now - WINDOW_S:
            st.token_sum -= st.tokens.pop(oldest)
        return st

    def _usage(self, st: _KeyState, limits: KeyLimits, now: float) -> Usage:
        return Usage(
            limits,
            parallel=len(st.parallel),
            requests=len(st.requests),
            tokens=st.token_sum,
            requests_reset_s=(st.requests[0] + WINDOW_S - now) if st.requests else 0.0,
            tokens_reset_s=max(0.0, next(iter(st.tokens)) + 1 + WINDOW_S - now) if st.tokens else 0.0,
        )

    async def admit(self, key: str, limits: KeyLimits, estimate: int) -> Hold | Refusal:
        now = self._clock()
        st = self._state(key, now)
        hit = decide(limits, len(st.parallel), len(st.requests), st.token_sum, estimate)
        if hit is not None:
            return _refusal(hit, limits, self._usage(st, limits, now))
        hold = Hold(key, limits, uuid.uuid4().hex, estimate, now)
        st.parallel.add(hold.id)
        st.requests.append(now)
        second = int(now)
        st.tokens[second] = st.tokens.get(second, 0) + estimate
        st.token_sum += estimate
        hold.usage = self._usage(st, limits, now)
        return hold

    async def release(self, hold: Hold, tokens: int | None) -> None:
        st = self._state(hold.key, self._clock())
        st.parallel.discard(hold.id)
        delta = (hold.estimate if tokens is None else tokens) - hold.estimate
        second = int(hold.at)
        if delta and second in st.tokens:  # counted in the second it was admitted, while in the window
            st.tokens[second] += delta
            st.token_sum += delta

    async def close(self) -> None:
        return None


def _refusal(hit: str, limits: KeyLimits, usage: Usage) -> Refusal:
    if hit == "parallel":
        assert limits.max_parallel is not None
        return Refusal(hit, limits.max_parallel, usage.parallel, 1.0, usage)
    if hit == "requests":
        assert limits.rpm is not None
        return Refusal(hit, limits.rpm, usage.requests, usage.requests_reset_s, usage)
    assert limits.tpm is not None
    return Refusal(hit, limits.tpm, usage.tokens, usage.tokens_reset_s, usage)


# -- in Redis (several senders) --------------------------------------------------------------------
# KEYS: parallel (zset hold -> expiry ms), requests (zset hold -> ms), tokens (hash second -> tokens)
# ARGV: now ms, window ms, hold id, max_parallel, rpm, tpm (-1: none), estimate, hold ttl ms
_ADMIT = """
local now, window, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local maxp, rpm, tpm = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local estimate, ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
local second = math.floor(now / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
local parallel = redis.call('ZCARD', KEYS[1])
local requests = redis.call('ZCARD', KEYS[2])
local tokens, oldest_second = 0, second
local buckets = redis.call('HGETALL', KEYS[3])
for i = 1, #buckets, 2 do
  local at = tonumber(buckets[i])
  if (at + 1) * 1000 <= now - window then
    redis.call('HDEL', KEYS[3], buckets[i])
  else
    tokens = tokens + tonumber(buckets[i + 1])
    if at < oldest_second then oldest_second = at end
  end
end
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local oldest_request = now
if #oldest > 0 then oldest_request = tonumber(oldest[2]) end
local hit = ''
if maxp >= 0 and parallel >= maxp then hit = 'parallel'
elseif rpm >= 0 and requests >= rpm then hit = 'requests'
elseif tpm >= 0 and tokens >= tpm then hit = 'tokens' end
if hit == '' then
  redis.call('ZADD', KEYS[1], now + ttl, id)
  redis.call('ZADD', KEYS[2], now, id)
  redis.call('HINCRBY', KEYS[3], second, estimate)
  for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], math.max(window, ttl) * 2) end
  parallel, requests, tokens = parallel + 1, requests + 1, tokens + estimate
end
return {hit, parallel, requests, tokens, oldest_request, (oldest_second + 1) * 1000}
"""
# KEYS: parallel, tokens; ARGV: hold id, the second it was counted in, tokens to add (exact - estimate)
_RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
local delta = tonumber(ARGV[3])
if delta ~= 0 and redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[2], delta)
end
return 1
"""
# KEYS: parallel; ARGV: expiry ms, hold ids... (only holds still there are renewed)
_RENEW = """
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]), ARGV[i]) end
return 1
"""


SEEN_S = 1.0  # how long a key's last decision tells whether the next may run beside its ticket's wait
SEEN_KEYS = 10_000  # keys remembered so (all forgotten at once beyond: a cache, not state)


class RedisLimits:
    """Shared by every sender through one Redis; one round trip per decision, one per release."""

    def __init__(self, url: str, prefix: str, hold_ttl_s: float = 30.0):
        import redis.asyncio as redis

        self._redis = redis.from_url(url)
        self._prefix = prefix
        self._ttl_ms = int(hold_ttl_s * 1000)
        self._admit = self._redis.register_script(_ADMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._held: dict[str, Hold] = {}
        self._renewer: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[float, Usage]] = {}  # key -> its last decision here (monotonic time)

    def likely_admitted(self, key: str, limits: KeyLimits, estimate: int) -> bool:
        """Was the key far from its limits at its decision here within the last SEEN_S? Then the
        decision (a round trip to Redis) may run while the ticket waits: it still comes before the
        relay, so the limits stay exact; a refusal only costs the grant it releases."""
        seen = self._seen.get(key)
        return (
            seen is not None
            and time.monotonic() - seen[0] < SEEN_S
            and seen[1].limits == limits
            and far_from_limits(seen[1], estimate)
        )

    def _saw(self, key: str, usage: Usage) -> None:
        if len(self._seen) >= SEEN_KEYS:
            self._seen.clear()
        self._seen[key] = (time.monotonic(), usage)

    def _keys(self, key: str) -> list[str]:
        base = f"{self._prefix}:limits:{{{key}}}"  # one hash slot per key (Redis Cluster)
        return [f"{base}:parallel", f"{base}:requests", f"{base}:tokens"]

    async def admit(self, key: str, limits: KeyLimits, estimate: int) -> Hold | Refusal:
        if self._renewer is None:
            self._renewer = asyncio.get_running_loop().create_task(self._renew_loop(), name="limit-holds")
        now_ms = int(time.time() * 1000)
        hold_id = uuid.uuid4().hex
        caps = [-1 if v is None else v for v in (limits.max_parallel, limits.rpm, limits.tpm)]
        args: list[int | str] = [now_ms, int(WINDOW_S * 1000), hold_id, *caps, estimate, self._ttl_ms]
        hit, parallel, requests, tokens, oldest_req, oldest_tok = await self._admit(keys=self._keys(key), args=args)
        window_ms = WINDOW_S * 1000
        usage = Usage(
            limits,
            parallel=int(parallel),
            requests=int(requests),
            tokens=int(tokens),
            requests_reset_s=max(0.0, (int(oldest_req) + window_ms - now_ms) / 1000),
            tokens_reset_s=max(0.0, (int(oldest_tok) + window_ms - now_ms) / 1000),
        )
        hit = hit.decode() if isinstance(hit, bytes) else hit
        self._saw(key, usage)
        if hit:
            return _refusal(hit, limits, usage)
        hold = Hold(key, limits, hold_id, estimate, now_ms / 1000, usage)
        self._held[hold_id] = hold
        return hold

    async def release(self, hold: Hold, tokens: int | None) -> None:
        self._held.pop(hold.id, None)
        keys = self._keys(hold.key)
        delta = 0 if tokens is None else tokens - hold.estimate
        await self._release(keys=[keys[0], keys[2]], args=[hold.id, int(hold.at), delta])

    async def _renew_loop(self) -> None:
        """Holds of requests still running are kept alive; a dead sender's expire within the TTL."""
        while True:
            await asyncio.sleep(self._ttl_ms / 3000)
            by_key: dict[str, list[str]] = {}
            for hold in list(self._held.values()):
                by_key.setdefault(hold.key, []).append(hold.id)
            expiry = int(time.time() * 1000) + self._ttl_ms
            for key, ids in by_key.items():
                try:
                    await self._renew(keys=self._keys(key)[:1], args=[expiry, *ids])
                except Exception as exc:  # Redis away: the next round tries again
                    log.warning("renewing %d limit holds failed: %r", len(ids), exc)

    async def close(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        await self._redis.aclose()
