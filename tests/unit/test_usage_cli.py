"""`llm-dispatcher usage` and the report parameters: parsing and rendering, no database."""

from __future__ import annotations

import argparse
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from llm_dispatcher.cli import main
from llm_dispatcher.db.usage_report import (
    MAX_RECORDS_LIMIT,
    UsageAggregate,
    UsageQuery,
    UsageQueryError,
    aggregate_csv,
    parse_group_by,
    records_query,
    usage_query,
)
from llm_dispatcher.timespec import parse_duration, parse_instant
from llm_dispatcher.usage_cli import add_arguments, build_query, render, render_table

NOW = datetime(2026, 3, 4, 12, 30, tzinfo=UTC)

# -- times -----------------------------------------------------------------------------------------


def test_an_instant_is_a_duration_ago_now_or_iso_8601() -> None:
    assert parse_instant("24h", now=NOW) == NOW - timedelta(hours=24)
    assert parse_instant("1w2d", now=NOW) == NOW - timedelta(days=9)
    assert parse_instant("now", now=NOW) == NOW
    assert parse_instant("2026-03-01", now=NOW) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_instant("2026-03-01T10:00:00+02:00", now=NOW) == datetime(2026, 3, 1, 8, tzinfo=UTC)
    assert parse_instant("2026-03-01T10:00:00", now=NOW) == datetime(2026, 3, 1, 10, tzinfo=UTC)  # naive = UTC
    assert parse_instant("2026-03-01T10:00:00Z", now=NOW) == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert parse_instant(None, now=NOW, default=NOW) == NOW and parse_instant(" ", now=NOW) is None


@pytest.mark.parametrize("bad", ["yesterday", "3x", "24 hours", "2026-13-01", "0h"])
def test_an_instant_that_is_neither_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_instant(bad, now=NOW)


def test_durations_refuse_garbage_and_zero() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    for bad in ("", "d", "5x", "0s", "-1d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# -- report parameters -----------------------------------------------------------------------------


def test_a_usage_query_defaults_to_the_last_24_hours_ungrouped() -> None:
    assert usage_query(now=NOW) == UsageQuery(NOW - timedelta(hours=24), NOW, ())


def test_group_by_accepts_a_comma_list_or_a_sequence_in_the_order_given() -> None:
    assert parse_group_by("token, model,DAY") == ("token", "model", "day")
    assert parse_group_by(["replica", "priority", "replica"]) == ("replica", "priority")
    assert parse_group_by("") == () and parse_group_by(None) == ()


@pytest.mark.parametrize(("value", "message"), [("end-user", "cannot group by 'end-user'"), ("hour,day", "not both")])
def test_group_by_refuses_unknown_keys_and_both_buckets(value: str, message: str) -> None:
    with pytest.raises(UsageQueryError, match=message) as info:
        parse_group_by(value)
    assert info.value.param == "group_by"


def test_a_range_must_run_forwards_and_errors_name_their_parameter() -> None:
    with pytest.raises(UsageQueryError, match="before") as info:
        usage_query(since="1h", until="2h", now=NOW)
    assert info.value.param == "since"
    with pytest.raises(UsageQueryError) as info:
        usage_query(until="soon", now=NOW)
    assert info.value.param == "until"


def test_empty_filters_mean_no_filter() -> None:
    q = usage_query(token=" ", model="", now=NOW)
    assert q.token is None and q.model is None


def test_a_records_query_has_no_default_range_and_bounds_its_limit() -> None:
    q = records_query(after="41", limit="5", now=NOW)
    assert (q.since, q.until, q.after, q.limit) == (None, None, 41, 5)
    assert records_query(limit=None).limit == 100
    for bad in (0, MAX_RECORDS_LIMIT + 1, "ten", True):
        with pytest.raises(UsageQueryError) as info:
            records_query(limit=bad)
        assert info.value.param == "limit"
    with pytest.raises(UsageQueryError):
        records_query(after=-1)


# -- the command -----------------------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_the_command_builds_its_query_from_the_options() -> None:
    q = build_query(parse("--since", "7d", "--until", "1d", "--by", "token,day", "--model", "m"), now=NOW)
    assert q == UsageQuery(NOW - timedelta(days=7), NOW - timedelta(days=1), ("token", "day"), None, "m")


def test_a_bad_option_is_reported_by_its_flag_before_the_database_is_opened(capsys, tmp_path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'never' / 'db.sqlite'}"
    assert main(["usage", "--database-url", url, "--by", "colour"]) == 2
    assert "error: --by: cannot group by 'colour'" in capsys.readouterr().err
    assert main(["usage", "--database-url", url, "--since", "soon"]) == 2
    assert "error: --since:" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def aggregate(percentiles: bool) -> UsageAggregate:
    stats = {"mean": 0.25, "max": 1.5, **({"p50": 0.2, "p95": 1.0} if percentiles else {})}
    rows = [
        {
            "token": "alice",
            "day": "2026-03-03",
            "requests": 12,
            "errors": 2,
            "by_status": {"200": 10, "429": 2},
            "prompt_tokens": 1200,
            "completion_tokens": 300,
            "queue_wait_s": dict(stats),
            "ttfb_s": {k: None for k in stats},
            "total_s": dict(stats),
        }
    ]
    return UsageAggregate(UsageQuery(NOW - timedelta(days=1), NOW, ("token", "day")), percentiles, rows)


def test_the_table_heads_with_the_range_and_says_which_statistics() -> None:
    lines = render_table(aggregate(False)).splitlines()
    assert lines[0] == "usage from 2026-03-03T12:30:00Z to 2026-03-04T12:30:00Z (latencies in seconds: mean, max)"
    header, row = lines[1].split(), lines[2].split()
    assert header[:5] == ["TOKEN", "DAY", "REQUESTS", "ERRORS", "STATUS"]
    assert "TOTAL_MAX" in header and "TOTAL_P95" not in header
    assert row[:4] == ["alice", "2026-03-03", "12", "2"] and "200:10" in row and "429:2" in row
    assert row[header.index("TTFB_MEAN") + 1] == "-"  # no values: a dash (STATUS takes two cells)
    with_pct = render_table(aggregate(True)).splitlines()
    assert "mean, p50, p95" in with_pct[0] and "TOTAL_P95" in with_pct[1]


def test_an_empty_report_says_so() -> None:
    agg = UsageAggregate(UsageQuery(NOW - timedelta(days=1), NOW, ("token",)), False, [])
    assert render_table(agg).splitlines()[1] == "no requests in this range"


def test_csv_and_json_renderings() -> None:
    agg = aggregate(True)
    (line,) = csv.DictReader(io.StringIO(render(agg, "csv")))
    assert line["token"] == "alice" and line["status_429"] == "2" and line["total_s_p95"] == "1.0"
    assert line["ttfb_s_mean"] == ""
    assert render(agg, "csv") == aggregate_csv(agg)
    body = json.loads(render(agg, "json"))
    assert body["object"] == "usage.aggregate" and body["percentiles"] is True and body["group_by"] == ["token", "day"]
    assert body["data"][0]["by_status"] == {"200": 10, "429": 2}
