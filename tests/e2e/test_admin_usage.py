"""/admin/v1/usage and /admin/v1/usage/records end to end: aggregates grouped and filtered, records
in pages, CSV, the errors naming the parameter at fault; on SQLite, PostgreSQL and MariaDB (rows
written through the store), and the requests of a live stack showing up."""

from __future__ import annotations

import csv
import io
import time
import uuid
from datetime import timedelta

import httpx
import pytest

from llm_dispatcher.db import Store, UsageRecord
from llm_dispatcher.db.models import utcnow

MODEL = "sim-model"


def record(token: str, model: str, status: int = 200, ago_s: float = 60, **kw) -> UsageRecord:
    fields = {
        "token_id": None,
        "token_name": token,
        "model": model,
        "replica": "r0",
        "priority": 5,
        "status": status,
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "queue_wait_s": 0.1,
        "ttfb_s": 0.2,
        "total_s": 0.5,
        "request_id": uuid.uuid4().hex,
        "created_at": utcnow() - timedelta(seconds=ago_s),
        **kw,
    }
    return UsageRecord(**fields)


@pytest.fixture
def usage(stack_factory, database_url):
    """A stack on each database, an admin token, and seven usage rows: six in the last hour, one older."""
    s = stack_factory(database_url=database_url)
    token = s.create_token("root", admin=True, inference=False)
    rows = [
        record("alice", "m1"),
        record("alice", "m1", total_s=1.5),
        record("alice", "m2", status=429, prompt_tokens=None, completion_tokens=None, ttfb_s=None),
        record("bob", "m1"),
        record("bob", "m1", status=503, prompt_tokens=None, completion_tokens=None, ttfb_s=None),
        record("bob", "m2", completion_tokens=7),
        record("alice", "m1", ago_s=3 * 86400),  # three days ago
    ]

    async def insert() -> None:
        async with Store(database_url) as store:
            await store.insert_usage(rows)

    s.bg.call(insert())
    http = httpx.Client(base_url=s.url + "/admin/v1", headers={"authorization": f"Bearer {token}"}, timeout=30)
    yield http
    http.close()


def error_of(r: httpx.Response, status: int = 400) -> dict:
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    return r.json()["error"]


def test_usage_is_aggregated_by_token_and_model_over_the_default_day(usage):
    r = usage.get("/usage", params={"group_by": "token,model"})
    assert r.status_code == 200, r.text
    agg = r.json()
    assert agg["object"] == "usage.aggregate" and agg["group_by"] == ["token", "model"]
    assert isinstance(agg["percentiles"], bool)
    rows = {(row["token"], row["model"]): row for row in agg["data"]}
    assert set(rows) == {("alice", "m1"), ("alice", "m2"), ("bob", "m1"), ("bob", "m2")}
    alice = rows[("alice", "m1")]  # the row three days ago is outside the default 24 h
    assert alice["requests"] == 2 and alice["errors"] == 0 and alice["by_status"] == {"200": 2}
    assert alice["prompt_tokens"] == 20 and alice["completion_tokens"] == 10
    assert alice["total_s"]["mean"] == pytest.approx(1.0) and alice["total_s"]["max"] == pytest.approx(1.5)
    assert ("p50" in alice["total_s"]) == agg["percentiles"]
    bob = rows[("bob", "m1")]
    assert bob["requests"] == 2 and bob["errors"] == 1 and bob["by_status"] == {"200": 1, "503": 1}

    week = usage.get("/usage", params={"since": "7d", "group_by": "day", "token": "alice"}).json()
    assert sum(row["requests"] for row in week["data"]) == 4 and len(week["data"]) == 2
    assert all(len(row["day"]) == 10 for row in week["data"])  # 2026-01-02

    total = usage.get("/usage", params={"model": "m2"}).json()["data"]
    assert len(total) == 1 and total[0]["requests"] == 2 and total[0]["completion_tokens"] == 7


def test_usage_comes_as_csv_with_a_header_row(usage):
    r = usage.get("/usage", params={"group_by": "token", "format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(r.text)))
    assert {row["token"]: int(row["requests"]) for row in table} == {"alice": 3, "bob": 3}

    r = usage.get("/usage/records", params={"format": "csv", "token": "bob"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert [row["token"] for row in csv.DictReader(io.StringIO(r.text))] == ["bob"] * 3


def test_usage_records_come_latest_written_first_in_pages(usage):
    seen, after = [], None
    for _ in range(10):
        page = usage.get("/usage/records", params={"limit": 3} | ({"after": after} if after else {})).json()
        assert page["object"] == "list" and len(page["data"]) <= 3
        seen += page["data"]
        after = page["last_id"]
        if not page["has_more"]:
            break
    assert len(seen) == 7 and len({r["id"] for r in seen}) == 7
    ids = [r["id"] for r in seen]
    assert ids == sorted(ids, reverse=True)  # newest first: by id, the order they were written
    assert set(seen[0]) >= {"id", "created_at", "token", "model", "replica", "priority", "status", "request_id"}
    recent = usage.get("/usage/records", params={"since": "1h", "model": "m1"}).json()["data"]
    assert len(recent) == 4 and {r["model"] for r in recent} == {"m1"}


@pytest.mark.parametrize(
    ("path", "params", "param"),
    [
        ("/usage", {"since": "yesterday-ish"}, "since"),
        ("/usage", {"until": "soon"}, "until"),
        ("/usage", {"since": "1h", "until": "2h"}, "since"),
        ("/usage", {"group_by": "token,colour"}, "group_by"),
        ("/usage", {"group_by": "hour,day"}, "group_by"),
        ("/usage", {"format": "xml"}, "format"),
        ("/usage/records", {"limit": "0"}, "limit"),
        ("/usage/records", {"limit": "1001"}, "limit"),
        ("/usage/records", {"after": "x"}, "after"),
        ("/usage/records", {"since": "nope"}, "since"),
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_a_bad_usage_parameter_is_a_400_naming_it(usage, path, params, param):
    assert error_of(usage.get(path, params=params))["param"] == param


def test_requests_through_the_gateway_show_up_in_usage(stack_factory):
    s = stack_factory(heartbeat_ttl_s=5.0, usage_flush_interval_s=0.05)
    s.add_consumer(MODEL, s.add_sim(model=MODEL))
    admin = s.create_token("root", admin=True, inference=False)
    user = s.create_token("user", priority=5, threshold=100)
    s.wait_models({MODEL}, user)
    for _ in range(3):
        r = httpx.post(
            s.base_url + "/chat/completions",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
            headers={"authorization": f"Bearer {user}"},
        )
        assert r.status_code == 200
    s.usage_rows(3)
    headers = {"authorization": f"Bearer {admin}"}
    deadline = time.monotonic() + 10
    while True:
        data = httpx.get(s.url + "/admin/v1/usage", params={"group_by": "token,model"}, headers=headers).json()["data"]
        if data or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    (row,) = data
    assert (row["token"], row["model"], row["requests"], row["by_status"]) == ("user", MODEL, 3, {"200": 3})
    assert row["completion_tokens"] > 0 and row["ttfb_s"]["mean"] > 0
    records = httpx.get(s.url + "/admin/v1/usage/records", headers=headers).json()["data"]
    assert len(records) == 3 and all(r["replica"] for r in records)
    s.wait_idle()
