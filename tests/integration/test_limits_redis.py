"""Per-key limits shared through the real Redis by several senders (each a RedisLimits of its own):
rpm and max parallel never exceeded however the admissions interleave, a dead sender's holds expire,
tpm counts the exact tokens."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from sender.limits import Hold, KeyLimits, MemoryLimits, RedisLimits, Refusal

REDIS_URL = os.environ.get("LLMD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
async def senders():
    prefix = f"t.{uuid.uuid4().hex[:8]}"
    made: list[RedisLimits] = []

    def make(hold_ttl_s: float = 30.0) -> RedisLimits:
        made.append(RedisLimits(REDIS_URL, prefix, hold_ttl_s=hold_ttl_s))
        return made[-1]

    yield make
    for store in made:
        await store.close()


async def test_rpm_is_never_exceeded_by_four_senders_admitting_at_once(senders) -> None:
    stores = [senders() for _ in range(4)]
    lim = KeyLimits(rpm=50)
    results = await asyncio.gather(*(stores[i % 4].admit("team", lim, 10) for i in range(200)))
    admitted = [r for r in results if isinstance(r, Hold)]
    refused = [r for r in results if isinstance(r, Refusal)]
    assert len(admitted) == 50 and len(refused) == 150
    assert {r.what for r in refused} == {"requests"} and all(0 < r.retry_after_s <= 60 for r in refused)


async def test_max_parallel_is_never_exceeded_across_senders(senders) -> None:
    stores = [senders() for _ in range(4)]
    lim = KeyLimits(max_parallel=5)
    held, peak = 0, 0

    async def one(store: RedisLimits) -> None:
        nonlocal held, peak
        for _ in range(20):
            r = await store.admit("team", lim, 1)
            if isinstance(r, Hold):
                held += 1
                peak = max(peak, held)
                await asyncio.sleep(0.005)
                held -= 1
                await store.release(r, 1)
            else:
                await asyncio.sleep(0.002)

    await asyncio.gather(*(one(stores[i % 4]) for i in range(16)))
    assert peak == 5


async def test_a_dead_senders_holds_expire_and_live_ones_are_renewed(senders) -> None:
    dead, live = senders(hold_ttl_s=1.0), senders(hold_ttl_s=1.0)
    lim = KeyLimits(max_parallel=2)
    assert isinstance(await dead.admit("team", lim, 1), Hold)  # never released: its sender "dies"
    dead._renewer.cancel()  # a SIGKILLed sender renews nothing
    kept = await live.admit("team", lim, 1)
    assert isinstance(kept, Hold)
    assert isinstance(await live.admit("team", lim, 1), Refusal)
    await asyncio.sleep(1.6)  # past the TTL: the live hold was renewed, the dead one expired
    back = await live.admit("team", lim, 1)
    assert isinstance(back, Hold), "the dead sender's slot came back"
    assert isinstance(await live.admit("team", lim, 1), Refusal), "the live hold is still counted"


async def test_tpm_replaces_the_estimate_with_the_exact_count(senders) -> None:
    a, b = senders(), senders()
    lim = KeyLimits(tpm=1000)
    first = await a.admit("team", lim, 900)
    assert isinstance(first, Hold)
    await a.release(first, 100)
    second = await b.admit("team", lim, 500)
    assert isinstance(second, Hold) and second.usage.tokens == 600
    await b.release(second, 950)
    refused = await a.admit("team", lim, 1)
    assert isinstance(refused, Refusal) and refused.what == "tokens" and refused.used == 1050
    assert dict(refused.usage.headers())[b"x-ratelimit-remaining-tokens"] == b"0"


async def test_only_a_key_seen_far_from_its_limits_lately_is_decided_beside_its_queue_wait(
    senders, monkeypatch
) -> None:
    import sender.limits as limits_module

    store = senders()
    lim = KeyLimits(rpm=10)
    assert not store.likely_admitted("k", lim, 1)  # never decided here: decided before the ticket
    for _ in range(7):
        assert isinstance(await store.admit("k", lim, 1), Hold)
    assert store.likely_admitted("k", lim, 1)  # 3 of 10 left
    assert not store.likely_admitted("k", KeyLimits(rpm=5), 1)  # its limits changed since
    for _ in range(2):
        assert isinstance(await store.admit("k", lim, 1), Hold)
    assert not store.likely_admitted("k", lim, 1)  # 1 left: no room for two
    for _ in range(2):
        await store.admit("k", lim, 1)
    assert not store.likely_admitted("k", lim, 1)  # refused last
    await store.admit("other", lim, 1)
    assert store.likely_admitted("other", lim, 1)
    monkeypatch.setattr(limits_module, "SEEN_S", 0.0)
    assert not store.likely_admitted("other", lim, 1)  # that decision is too old to tell
    assert not MemoryLimits().likely_admitted("other", lim, 1)  # in the process: always before the ticket
