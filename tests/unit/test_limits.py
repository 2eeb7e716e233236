"""Per-key limits in the process: one atomic decision, sliding windows, exact token counts at the end."""

from __future__ import annotations

import pytest

from sender.limits import WINDOW_S, Hold, KeyLimits, MemoryLimits, Refusal, decide, duration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_no_limit_is_no_key_limits() -> None:
    assert not KeyLimits() and KeyLimits(rpm=1) and KeyLimits(max_parallel=0)


@pytest.mark.parametrize(
    ("limits", "state", "expected"),
    [
        (KeyLimits(max_parallel=2), (2, 0, 0), "parallel"),
        (KeyLimits(max_parallel=2), (1, 0, 0), None),
        (KeyLimits(rpm=3), (0, 3, 0), "requests"),
        (KeyLimits(tpm=100), (0, 0, 100), "tokens"),
        (KeyLimits(tpm=100), (0, 0, 99), None),  # under the limit: admitted, even if it will pass it
        (KeyLimits(max_parallel=1, rpm=1, tpm=1), (1, 1, 1), "parallel"),  # the first limit hit is named
    ],
)
def test_the_decision_names_the_limit_one_more_request_would_pass(limits, state, expected) -> None:
    assert decide(limits, *state, estimate=10) == expected


@pytest.mark.parametrize(("s", "text"), [(0.02, "20ms"), (0.0001, "1ms"), (1.5, "1.5s"), (59.95, "60s"), (360, "6m0s")])
def test_resets_are_written_as_openai_writes_them(s: float, text: str) -> None:
    assert duration(s) == text


async def test_max_parallel_counts_holds_until_they_are_released() -> None:
    store = MemoryLimits(Clock())
    lim = KeyLimits(max_parallel=2)
    a, b = await store.admit("k", lim, 10), await store.admit("k", lim, 10)
    assert isinstance(a, Hold) and isinstance(b, Hold)
    refused = await store.admit("k", lim, 10)
    assert isinstance(refused, Refusal) and refused.what == "parallel" and refused.limit == 2
    await store.release(a, 10)
    assert isinstance(await store.admit("k", lim, 10), Hold)


async def test_rpm_is_a_sliding_window_of_sixty_seconds() -> None:
    clock = Clock()
    store = MemoryLimits(clock)
    lim = KeyLimits(rpm=2)
    first = await store.admit("k", lim, 1)
    clock.now += 30
    second = await store.admit("k", lim, 1)
    assert isinstance(first, Hold) and isinstance(second, Hold)
    clock.now += 10
    refused = await store.admit("k", lim, 1)
    assert isinstance(refused, Refusal) and refused.what == "requests"
    assert refused.retry_after_s == pytest.approx(20)  # when the first one leaves the window
    clock.now += 20.001
    assert isinstance(await store.admit("k", lim, 1), Hold)


async def test_tpm_counts_the_estimate_then_the_exact_tokens() -> None:
    clock = Clock()
    store = MemoryLimits(clock)
    lim = KeyLimits(tpm=1000)
    hold = await store.admit("k", lim, 900)
    assert isinstance(hold, Hold) and hold.usage.tokens == 900
    await store.release(hold, 100)  # it used far less than estimated
    again = await store.admit("k", lim, 500)
    assert isinstance(again, Hold) and again.usage.tokens == 600
    await store.release(again, 950)
    refused = await store.admit("k", lim, 1)
    assert isinstance(refused, Refusal) and refused.what == "tokens" and refused.used == 1050
    clock.now += WINDOW_S
    assert isinstance(await store.admit("k", lim, 1), Hold), "the window moved past both"


async def test_a_refused_request_is_counted_in_no_limit() -> None:
    store = MemoryLimits(Clock())
    lim = KeyLimits(max_parallel=1, rpm=10)
    hold = await store.admit("k", lim, 1)
    assert isinstance(hold, Hold)
    for _ in range(5):
        assert isinstance(await store.admit("k", lim, 1), Refusal)
    await store.release(hold, 1)
    after = await store.admit("k", lim, 1)
    assert isinstance(after, Hold) and after.usage.requests == 2


async def test_keys_do_not_share_limits() -> None:
    store = MemoryLimits(Clock())
    lim = KeyLimits(max_parallel=1)
    assert isinstance(await store.admit("a", lim, 1), Hold)
    assert isinstance(await store.admit("b", lim, 1), Hold)


def test_headers_report_the_rpm_and_tpm_trios() -> None:
    from sender.limits import Usage

    usage = Usage(KeyLimits(rpm=60, tpm=1000), requests=1, tokens=250, requests_reset_s=1.0, tokens_reset_s=90)
    assert dict(usage.headers()) == {
        b"x-ratelimit-limit-requests": b"60",
        b"x-ratelimit-remaining-requests": b"59",
        b"x-ratelimit-reset-requests": b"1s",
        b"x-ratelimit-limit-tokens": b"1000",
        b"x-ratelimit-remaining-tokens": b"750",
        b"x-ratelimit-reset-tokens": b"1m30s",
    }
    assert Usage(KeyLimits(max_parallel=3)).headers() == [], "max parallel has no OpenAI header"


def test_a_key_is_far_from_its_limits_with_a_tenth_of_each_left_and_room_for_two_requests():
    from sender.limits import Usage, far_from_limits

    lim = KeyLimits(max_parallel=10, rpm=100, tpm=10_000)
    assert far_from_limits(Usage(lim, parallel=8, requests=90, tokens=9_000), estimate=500)
    assert not far_from_limits(Usage(lim, parallel=9, requests=10, tokens=0), estimate=10)  # 1 slot left
    assert not far_from_limits(Usage(lim, parallel=0, requests=91, tokens=0), estimate=10)  # 9 % of the rpm
    assert not far_from_limits(Usage(lim, parallel=0, requests=0, tokens=9_100), estimate=10)
    assert not far_from_limits(Usage(lim, parallel=0, requests=0, tokens=8_000), estimate=1_500)  # not two more
    assert far_from_limits(Usage(KeyLimits(rpm=3), requests=1), estimate=10)  # 2 left of 3: room for two
    assert not far_from_limits(Usage(KeyLimits(rpm=3), requests=2), estimate=10)
    assert far_from_limits(Usage(KeyLimits()), estimate=10**9)  # nothing limited
