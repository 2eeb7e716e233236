"""Fair share within a band: sub-levels from what a key holds, broker priorities that keep bands strict."""

from __future__ import annotations

import pytest

from llm_dispatcher.protocol import queue_arguments
from sender.fairness import (
    DEFAULT_MAX_TOKENS,
    FairShare,
    broker_priority,
    estimated_cost,
    queue_max_priority,
    sub_level,
)


def test_every_sub_level_of_a_band_is_above_every_sub_level_of_the_band_below() -> None:
    levels = 4
    for band in range(1, 11):
        lowest_of_band = broker_priority(band, 0, levels)
        highest_below = broker_priority(band - 1, levels - 1, levels)
        assert lowest_of_band == highest_below + 1


def test_the_queue_holds_every_broker_priority_of_every_band() -> None:
    assert queue_max_priority(10, 4) == broker_priority(10, 3, 4) == 43
    assert queue_arguments(10, 4) == {"x-max-priority": 43}
    assert queue_arguments(10) == {"x-max-priority": 10}, "one level per band: the queue as before sub-levels"


@pytest.mark.parametrize(
    ("outstanding", "expected"),
    [(0, 3), (1999, 3), (2000, 2), (5999, 2), (6000, 1), (13999, 1), (14000, 0), (10**9, 0)],
)
def test_a_key_drops_one_sub_level_per_doubling_of_what_it_holds(outstanding: int, expected: int) -> None:
    assert sub_level(outstanding, quantum=2000, levels=4) == expected


def test_with_one_level_every_ticket_is_first_come_first_served() -> None:
    assert {sub_level(x, 2000, 1) for x in (0, 10**6)} == {0}


def test_a_light_key_overtakes_a_heavy_keys_backlog_of_the_same_band() -> None:
    book = FairShare(levels=4, quantum=1000)
    heavy = [book.enter("m", 5, "heavy", 500) for _ in range(40)]
    light = book.enter("m", 5, "light", 500)
    assert heavy[0].sub == 3 and heavy[-1].sub == 0
    assert book.priority(light) > book.priority(heavy[-1])
    assert book.priority(light) == broker_priority(5, 3, 4)


def test_a_lone_key_starts_at_the_top_and_comes_back_up_when_its_requests_end() -> None:
    book = FairShare(levels=4, quantum=1000)
    shares = [book.enter("m", 5, "k", 1000) for _ in range(10)]
    assert [s.sub for s in shares[:4]] == [3, 2, 2, 1]
    for s in shares:
        book.stop_waiting(s)
        book.leave(s)
    assert book.outstanding("m", 5, "k") == 0
    assert book.enter("m", 5, "k", 1000).sub == 3


def test_keys_are_counted_per_model_and_band() -> None:
    book = FairShare(levels=4, quantum=1000)
    for _ in range(20):
        book.enter("m", 5, "k", 1000)
    assert book.enter("other", 5, "k", 1000).sub == 3
    assert book.enter("m", 4, "k", 1000).sub == 3


def test_cost_is_the_prompt_estimated_from_its_bytes_plus_the_output_asked_for() -> None:
    body = b"x" * 400
    assert estimated_cost(body, {"max_tokens": 50}) == 100 + 50
    assert estimated_cost(body, {"max_completion_tokens": 70, "max_tokens": 50}) == 170
    assert estimated_cost(body, {}) == 100 + DEFAULT_MAX_TOKENS
    assert estimated_cost(body, {"max_tokens": "lots"}) == 100 + DEFAULT_MAX_TOKENS
    assert estimated_cost(body, {"max_tokens": True}) == 100 + DEFAULT_MAX_TOKENS


def test_levels_that_would_pass_rabbitmqs_255_priorities_are_refused() -> None:
    from llm_dispatcher.settings import CommonSettings

    with pytest.raises(ValueError, match="at most 255"):
        CommonSettings(max_priority=10, fair_levels=24)
    assert CommonSettings(max_priority=10, fair_levels=23).fair_levels == 23


def test_a_keys_new_ticket_never_overtakes_its_own_tickets_still_waiting() -> None:
    book = FairShare(levels=4, quantum=1000)
    running = [book.enter("m", 5, "k", 1000) for _ in range(8)]  # the first ones get slots...
    for s in running[:4]:
        book.stop_waiting(s)
    waiting = running[4:]  # ...the last four wait, the latest at the lowest sub-level
    assert waiting[-1].sub == 0
    for s in running[:4]:  # the running ones end: what the key holds drops
        book.leave(s)
    newer = book.enter("m", 5, "k", 1000)
    assert newer.sub == 0, "not above its older tickets still waiting"
    for s in waiting:
        book.stop_waiting(s)
    assert book.enter("m", 5, "k", 1000).sub < 3, "it still holds the four granted ones and the newer"
    for s in [*waiting, newer]:
        book.leave(s)


def test_stop_waiting_is_idempotent_and_forgets_empty_keys() -> None:
    book = FairShare(levels=4, quantum=1000)
    s = book.enter("m", 5, "k", 10)
    book.stop_waiting(s)
    book.stop_waiting(s)
    book.leave(s)
    assert book.enter("m", 5, "k", 10).sub == 3
