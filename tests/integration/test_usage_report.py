"""Usage reports (llm_dispatcher/db/usage_report.py) against every database for real."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from llm_dispatcher.db import Store, UsageRecord
from llm_dispatcher.db.usage_report import aggregate_csv, records_csv, records_query, usage_query

NOW = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)


def record(
    at: datetime,
    *,
    token: str = "alice",
    model: str = "m1",
    replica: str = "r1",
    priority: int = 5,
    status: int = 200,
    prompt: int | None = 10,
    completion: int | None = 20,
    wait: float = 0.1,
    ttfb: float | None = 0.5,
    total: float = 1.0,
    request_id: str = "req",
) -> UsageRecord:
    return UsageRecord(
        None, token, model, replica, priority, status, prompt, completion, wait, ttfb, total, request_id, created_at=at
    )


@pytest.fixture
async def filled(store: Store) -> Store:
    """Seven requests over two UTC days (three hours), two tokens, two models, three statuses."""
    day = datetime(2026, 3, 3, tzinfo=UTC)
    await store.insert_usage(
        [
            record(day + timedelta(hours=23, minutes=5), total=1.0, wait=0.1, request_id="a1"),
            record(day + timedelta(hours=23, minutes=55), total=3.0, wait=0.3, request_id="a2"),
            record(
                day + timedelta(days=1, minutes=1),
                status=429,
                prompt=None,
                completion=None,
                ttfb=None,
                total=0.01,
                wait=0.0,
                request_id="a3",
            ),
            record(day + timedelta(days=1, hours=1), model="m2", replica="r2", total=2.0, request_id="a4"),
            record(
                day + timedelta(days=1, hours=1, minutes=30),
                token="bob",
                priority=1,
                status=503,
                ttfb=None,
                completion=None,
                total=5.0,
                wait=4.0,
                request_id="b1",
            ),
            record(
                day + timedelta(days=1, hours=2),
                token="bob",
                priority=1,
                model="m2",
                replica="r2",
                total=4.0,
                request_id="b2",
            ),
            record(day - timedelta(days=5), token="bob", request_id="old"),  # outside every range below
        ]
    )
    return store


def since_day() -> dict[str, datetime]:
    return {"since": datetime(2026, 3, 3, tzinfo=UTC), "until": NOW}


async def test_the_total_counts_requests_errors_statuses_tokens_and_latencies(filled: Store) -> None:
    agg = await filled.usage_aggregate(usage_query(**since_day(), now=NOW))
    (row,) = agg.rows
    assert row["requests"] == 6
    assert row["errors"] == 2  # 429 and 503
    assert row["by_status"] == {"200": 4, "429": 1, "503": 1}
    assert row["prompt_tokens"] == 50 and row["completion_tokens"] == 80
    assert row["total_s"]["mean"] == pytest.approx((1 + 3 + 0.01 + 2 + 5 + 4) / 6)
    assert row["total_s"]["max"] == 5.0
    assert row["ttfb_s"]["mean"] == pytest.approx(0.5)  # requests without a TTFB are left out
    assert row["queue_wait_s"]["max"] == 4.0


async def test_percentiles_are_computed_only_where_the_database_can(filled: Store) -> None:
    agg = await filled.usage_aggregate(usage_query(**since_day(), now=NOW))
    (row,) = agg.rows
    assert agg.percentiles is (filled.dialect == "postgresql")
    assert agg.to_json()["percentiles"] is agg.percentiles
    if agg.percentiles:
        assert row["total_s"]["p50"] == pytest.approx(2.5)  # of 0.01, 1, 2, 3, 4, 5
        assert row["total_s"]["p95"] == pytest.approx(4.75)
        assert row["ttfb_s"]["p50"] == pytest.approx(0.5)
    else:
        assert set(row["total_s"]) == {"mean", "max"}


async def test_grouping_by_token_and_model_gives_one_row_per_pair_in_order(filled: Store) -> None:
    agg = await filled.usage_aggregate(usage_query(**since_day(), group_by="token,model", now=NOW))
    got = [(r["token"], r["model"], r["requests"], r["by_status"]) for r in agg.rows]
    assert got == [
        ("alice", "m1", 3, {"200": 2, "429": 1}),
        ("alice", "m2", 1, {"200": 1}),
        ("bob", "m1", 1, {"503": 1}),
        ("bob", "m2", 1, {"200": 1}),
    ]


async def test_grouping_by_replica_and_priority(filled: Store) -> None:
    agg = await filled.usage_aggregate(usage_query(**since_day(), group_by=["priority", "replica"], now=NOW))
    assert [(r["priority"], r["replica"], r["requests"]) for r in agg.rows] == [
        (1, "r1", 1),
        (1, "r2", 1),
        (5, "r1", 3),
        (5, "r2", 1),
    ]


async def test_hour_buckets_are_utc_hours_as_iso_strings(filled: Store) -> None:
    agg = await filled.usage_aggregate(usage_query(**since_day(), group_by="hour", now=NOW))
    assert [(r["hour"], r["requests"]) for r in agg.rows] == [
        ("2026-03-03T23:00:00Z", 2),
        ("2026-03-04T00:00:00Z", 1),
        ("2026-03-04T01:00:00Z", 2),
        ("2026-03-04T02:00:00Z", 1),
    ]


async def test_day_buckets_split_at_utc_midnight(filled: Store) -> None:
    agg = await filled.usage_aggregate(usage_query(**since_day(), group_by="model,day", now=NOW))
    assert [(r["model"], r["day"], r["requests"]) for r in agg.rows] == [
        ("m1", "2026-03-03", 2),
        ("m1", "2026-03-04", 2),
        ("m2", "2026-03-04", 2),
    ]


async def test_filters_keep_one_token_or_one_model(filled: Store) -> None:
    bob = await filled.usage_aggregate(usage_query(**since_day(), token="bob", now=NOW))
    assert bob.rows[0]["requests"] == 2
    m2 = await filled.usage_aggregate(usage_query(**since_day(), model="m2", group_by="token", now=NOW))
    assert [(r["token"], r["requests"]) for r in m2.rows] == [("alice", 1), ("bob", 1)]
    both = await filled.usage_aggregate(usage_query(**since_day(), token="bob", model="m2", now=NOW))
    assert both.rows[0]["requests"] == 1


async def test_the_range_includes_since_and_excludes_until(filled: Store) -> None:
    exact = datetime(2026, 3, 3, 23, 5, tzinfo=UTC)  # the first request's time
    agg = await filled.usage_aggregate(usage_query(since=exact, until=exact + timedelta(minutes=50), now=NOW))
    assert agg.rows[0]["requests"] == 1  # the one at `since`; not the one at `until` (23:55)
    agg = await filled.usage_aggregate(usage_query(since=exact - timedelta(hours=1), until=exact, now=NOW))
    assert agg.rows[0]["requests"] == 0


async def test_an_empty_range_gives_a_zero_total_or_no_groups(filled: Store) -> None:
    empty = {"since": NOW + timedelta(hours=1), "until": NOW + timedelta(hours=2), "now": NOW}
    (total,) = (await filled.usage_aggregate(usage_query(**empty))).rows
    assert total["requests"] == 0 and total["errors"] == 0 and total["by_status"] == {}
    assert total["prompt_tokens"] == 0 and total["total_s"]["mean"] is None
    assert (await filled.usage_aggregate(usage_query(**empty, group_by="token"))).rows == []


async def test_the_json_shape_carries_the_range_and_the_grouping(filled: Store) -> None:
    body = (await filled.usage_aggregate(usage_query(since="2d", group_by="token,day", now=NOW))).to_json()
    assert body["object"] == "usage.aggregate"
    assert body["since"] == "2026-03-02T12:30:00Z" and body["until"] == "2026-03-04T12:30:00Z"
    assert body["group_by"] == ["token", "day"]
    assert {"token", "day", "requests", "errors", "by_status", "prompt_tokens", "completion_tokens"} <= set(
        body["data"][0]
    )


async def test_csv_has_a_header_and_one_line_per_group(filled: Store) -> None:
    agg = await filled.usage_aggregate(usage_query(**since_day(), group_by="token", now=NOW))
    lines = list(csv.DictReader(io.StringIO(aggregate_csv(agg))))
    assert [(r["token"], r["requests"], r["errors"]) for r in lines] == [("alice", "4", "1"), ("bob", "2", "1")]
    assert lines[0]["status_200"] == "3" and lines[0]["status_429"] == "1" and lines[0]["status_503"] == "0"
    assert lines[1]["total_s_max"] == "5.0"
    assert ("total_s_p95" in lines[0]) is agg.percentiles


async def test_records_come_newest_first_and_page_by_id(filled: Store) -> None:
    first = await filled.usage_records(records_query(limit=3))
    assert [r["request_id"] for r in first.rows] == ["old", "b2", "b1"]  # by id: the order written
    assert first.has_more and first.last_id == first.rows[-1]["id"]
    second = await filled.usage_records(records_query(limit=3, after=first.last_id))
    assert [r["request_id"] for r in second.rows] == ["a4", "a3", "a2"]
    third = await filled.usage_records(records_query(limit=3, after=second.last_id))
    assert [r["request_id"] for r in third.rows] == ["a1"] and not third.has_more
    assert third.to_json() == {"object": "list", "data": third.rows, "has_more": False, "last_id": third.rows[0]["id"]}
    last = await filled.usage_records(records_query(after=third.last_id))
    assert last.rows == [] and last.to_json()["last_id"] is None


async def test_records_filter_by_time_token_and_model(filled: Store) -> None:
    page = await filled.usage_records(records_query(**since_day(), token="bob"))
    assert [r["request_id"] for r in page.rows] == ["b2", "b1"]
    page = await filled.usage_records(records_query(**since_day(), model="m2"))
    assert [r["request_id"] for r in page.rows] == ["b2", "a4"]
    (row,) = (await filled.usage_records(records_query(**since_day(), token="alice", model="m2"))).rows
    assert row == {
        "id": row["id"],
        "created_at": "2026-03-04T01:00:00Z",
        "token": "alice",
        "user": None,
        "model": "m2",
        "replica": "r2",
        "priority": 5,
        "status": 200,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "queue_wait_s": 0.1,
        "ttfb_s": 0.5,
        "total_s": 2.0,
        "request_id": "a4",
    }


async def test_records_csv_has_every_field(filled: Store) -> None:
    page = await filled.usage_records(records_query(token="bob", **since_day()))
    lines = list(csv.DictReader(io.StringIO(records_csv(page))))
    assert [r["request_id"] for r in lines] == ["b2", "b1"]
    assert lines[1]["ttfb_s"] == "" and lines[1]["status"] == "503"


async def test_grouping_by_end_user_within_a_token(store: Store) -> None:
    at = NOW - timedelta(hours=1)
    rows = [record(at, request_id=f"u{i}") for i in range(3)]
    for r, user in zip(rows, ("ann", "ann", None), strict=True):
        r.end_user = user
    await store.insert_usage(rows)
    agg = await store.usage_aggregate(usage_query(group_by="token,user", now=NOW))
    got = {(r["token"], r["user"], r["requests"]) for r in agg.rows}  # where NULL sorts differs by database
    assert got == {("alice", None, 1), ("alice", "ann", 2)}
    page = await store.usage_records(records_query(now=NOW))
    assert sorted(str(r["user"]) for r in page.to_json()["data"]) == ["None", "ann", "ann"]
