"""Usage reports: aggregates of the `usage` table over a time range, and its records page by page.

One implementation behind `llm-dispatcher usage` and the admin API:

    usage_query(...)            -> UsageQuery     the checked parameters (UsageQueryError: which one)
    Store.usage_aggregate(q)    -> UsageAggregate grouped by any of GROUP_KEYS, in [since, until)
        .to_json() / aggregate_csv(agg)
    records_query(...)          -> RecordsQuery
    Store.usage_records(q)      -> RecordsPage    newest first, keyset pagination by id
        .to_json() / records_csv(page)

Per group: requests, errors (status >= 400), counts by status, prompt and completion token sums, and
for each latency (queue_wait_s, ttfb_s, total_s) its mean and max, plus p50 and p95 where the
database computes percentiles (PostgreSQL's percentile_cont; `percentiles` says whether it did).
Hours and days are UTC (every datetime column holds naive UTC). Two queries per report (the groups,
then the groups by status), both reading the time range through `ix_usage_created_at` (or the
token's / model's index when filtered).
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final

import sqlalchemy as sa

from llm_dispatcher.db.engine import Database
from llm_dispatcher.db.models import from_db_time, to_db_time, usage, utcnow
from llm_dispatcher.timespec import parse_instant

GROUP_KEYS: Final = ("token", "user", "model", "replica", "priority", "hour", "day")
LATENCIES: Final = ("queue_wait_s", "ttfb_s", "total_s")
RECORD_FIELDS: Final = (
    "id",
    "created_at",
    "token",
    "user",
    "model",
    "replica",
    "priority",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "queue_wait_s",
    "ttfb_s",
    "total_s",
    "request_id",
)
DEFAULT_SINCE: Final = timedelta(hours=24)
DEFAULT_RECORDS_LIMIT: Final = 100
MAX_RECORDS_LIMIT: Final = 1000

_KEY_COLUMNS: Final = {
    "token": usage.c.token_name,
    "user": usage.c.end_user,  # the end user within a token (null where none was given)
    "model": usage.c.model,
    "replica": usage.c.replica,
}


class UsageQueryError(ValueError):
    """A report parameter that cannot be used; `param` names it (400 at the HTTP edge)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


# -- the parameters (pure) -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class UsageQuery:
    since: datetime
    until: datetime
    group_by: tuple[str, ...] = ()
    token: str | None = None
    model: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class RecordsQuery:
    since: datetime | None = None
    until: datetime | None = None
    token: str | None = None
    model: str | None = None
    after: int | None = None  # continue below this id
    limit: int = DEFAULT_RECORDS_LIMIT


def parse_group_by(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """`"token,model,day"` or a list of keys, in the order given; `hour` and `day` exclude each other."""
    if value is None:
        return ()
    parts = value.split(",") if isinstance(value, str) else list(value)
    keys: list[str] = []
    for part in parts:
        key = part.strip().lower() if isinstance(part, str) else part
        if not key:
            continue
        if key not in GROUP_KEYS:
            raise UsageQueryError(f"cannot group by {part!r}: choose from {', '.join(GROUP_KEYS)}", "group_by")
        if key not in keys:
            keys.append(key)
    if "hour" in keys and "day" in keys:
        raise UsageQueryError("group by hour or by day, not both", "group_by")
    return tuple(keys)


def _instant(value: str | datetime | None, param: str, now: datetime, default: datetime | None) -> datetime | None:
    try:
        return parse_instant(value, now=now, default=default)
    except ValueError as exc:
        raise UsageQueryError(str(exc), param) from None


def _range(
    since: str | datetime | None, until: str | datetime | None, now: datetime, default_since: datetime | None
) -> tuple[datetime | None, datetime | None]:
    start = _instant(since, "since", now, default_since)
    end = _instant(until, "until", now, now if default_since is not None else None)
    if start is not None and end is not None and start >= end:
        raise UsageQueryError("since must be before until", "since")
    return start, end


def _name(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UsageQueryError(f"{param} must be a name, got {value!r}", param)
    return value.strip() or None


def usage_query(
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    group_by: str | Sequence[str] | None = None,
    token: str | None = None,
    model: str | None = None,
    now: datetime | None = None,
) -> UsageQuery:
    """The checked parameters of an aggregate: since (default 24h ago) and until (default now) as a
    duration ago (`24h`, `7d`), `now` or ISO 8601; group_by keys; token and model filters."""
    now = now or utcnow()
    start, end = _range(since, until, now, now - DEFAULT_SINCE)
    assert start is not None and end is not None
    return UsageQuery(start, end, parse_group_by(group_by), _name(token, "token"), _name(model, "model"))


def _int(value: int | str | None, param: str, low: int, high: int | None = None) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise UsageQueryError(f"{param} must be an integer, got {value!r}", param) from None
    if isinstance(value, bool) or number < low or (high is not None and number > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise UsageQueryError(f"{param} must be {bounds}, got {value!r}", param)
    return number


def records_query(
    *,
    since: str | datetime | None = None,
    until: str | datetime | None = None,
    token: str | None = None,
    model: str | None = None,
    after: int | str | None = None,
    limit: int | str | None = DEFAULT_RECORDS_LIMIT,
    now: datetime | None = None,
) -> RecordsQuery:
    """The checked parameters of a records page: every filter optional, limit 1..MAX_RECORDS_LIMIT."""
    start, end = _range(since, until, now or utcnow(), None)
    size = _int(limit, "limit", 1, MAX_RECORDS_LIMIT)
    return RecordsQuery(
        start,
        end,
        _name(token, "token"),
        _name(model, "model"),
        _int(after, "after", 0),
        DEFAULT_RECORDS_LIMIT if size is None else size,
    )


# -- results -------------------------------------------------------------------------------------


def iso(value: datetime) -> str:
    """Aware UTC as ISO 8601 with a Z."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True, slots=True)
class UsageAggregate:
    query: UsageQuery
    percentiles: bool  # whether p50/p95 were computed (else only mean and max)
    rows: list[dict[str, Any]]  # JSON-ready, ordered by the group keys

    def to_json(self) -> dict[str, Any]:
        return {
            "object": "usage.aggregate",
            "since": iso(self.query.since),
            "until": iso(self.query.until),
            "group_by": list(self.query.group_by),
            "token": self.query.token,
            "model": self.query.model,
            "percentiles": self.percentiles,
            "data": self.rows,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class RecordsPage:
    rows: list[dict[str, Any]]  # JSON-ready, newest first
    has_more: bool

    @property
    def last_id(self) -> int | None:
        return self.rows[-1]["id"] if self.rows else None

    def to_json(self) -> dict[str, Any]:
        return {"object": "list", "data": self.rows, "has_more": self.has_more, "last_id": self.last_id}


def stat_names(percentiles: bool) -> tuple[str, ...]:
    return ("mean", "p50", "p95", "max") if percentiles else ("mean", "max")


def _csv_cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6)
    return "" if value is None else value


def aggregate_csv(aggregate: UsageAggregate) -> str:
    """One line per group: its keys, the counts, each latency's statistics, then one
    `status_<code>` column per status that occurs anywhere in the report."""
    statuses = sorted({int(code) for row in aggregate.rows for code in row["by_status"]})
    stats = stat_names(aggregate.percentiles)
    header = [
        *aggregate.query.group_by,
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        *(f"{m}_{s}" for m in LATENCIES for s in stats),
        *(f"status_{code}" for code in statuses),
    ]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in aggregate.rows:
        writer.writerow(
            [
                *(_csv_cell(row[k]) for k in aggregate.query.group_by),
                row["requests"],
                row["errors"],
                row["prompt_tokens"],
                row["completion_tokens"],
                *(_csv_cell(row[m][s]) for m in LATENCIES for s in stats),
                *(row["by_status"].get(str(code), 0) for code in statuses),
            ]
        )
    return out.getvalue()


def records_csv(page: RecordsPage) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(RECORD_FIELDS)
    for row in page.rows:
        writer.writerow([_csv_cell(row[f]) for f in RECORD_FIELDS])
    return out.getvalue()


# -- the queries ---------------------------------------------------------------------------------


def _bucket(dialect: str, unit: str) -> sa.ColumnElement[Any]:
    """The UTC hour or day of `created_at`, with no bound parameters (the same expression must
    appear in SELECT and GROUP BY, and PostgreSQL compares them as written)."""
    col = usage.c.created_at
    if dialect == "postgresql":
        return sa.func.date_trunc(sa.literal_column("'hour'"), col) if unit == "hour" else sa.cast(col, sa.Date)
    if dialect in ("mysql", "mariadb"):
        if unit == "hour":
            return sa.func.timestampadd(sa.literal_column("HOUR"), sa.func.hour(col), sa.func.date(col))
        return sa.func.date(col)
    # SQLite keeps datetimes as text ('YYYY-MM-DD HH:MM:SS.ffffff')
    return sa.func.strftime(sa.literal_column("'%Y-%m-%dT%H:00:00'" if unit == "hour" else "'%Y-%m-%d'"), col)


def _key_expression(dialect: str, key: str) -> sa.ColumnElement[Any]:
    if key in ("hour", "day"):
        return _bucket(dialect, key)
    if key == "priority":
        return usage.c.priority
    return _KEY_COLUMNS[key]


def _key_value(key: str, value: Any) -> Any:
    """A group key as JSON: an hour as `2026-01-02T13:00:00Z`, a day as `2026-01-02`."""
    if key not in ("hour", "day") or value is None:
        return int(value) if key == "priority" and value is not None else value
    if isinstance(value, str):
        value = datetime.fromisoformat(value) if key == "hour" else date.fromisoformat(value[:10])
    if key == "day":
        return (value.date() if isinstance(value, datetime) else value).isoformat()
    if not isinstance(value, datetime):
        value = datetime.combine(value, datetime.min.time())
    aware = from_db_time(value)
    assert aware is not None
    return iso(aware.replace(minute=0, second=0, microsecond=0))


def _where(
    since: datetime | None, until: datetime | None, token: str | None, model: str | None
) -> list[sa.ColumnElement[bool]]:
    conditions: list[sa.ColumnElement[bool]] = []
    if since is not None:
        conditions.append(usage.c.created_at >= to_db_time(since))
    if until is not None:
        conditions.append(usage.c.created_at < to_db_time(until))
    if token is not None:
        conditions.append(usage.c.token_name == token)
    if model is not None:
        conditions.append(usage.c.model == model)
    return conditions


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _int_or_zero(value: Any) -> int:
    return 0 if value is None else int(value)


class UsageReportStore(Database):
    @property
    def computes_percentiles(self) -> bool:
        return self.dialect == "postgresql"

    def aggregate_statements(self, query: UsageQuery) -> tuple[sa.Select[Any], sa.Select[Any]]:
        """The two statements of a report (the groups; the groups by status), for EXPLAIN too."""
        keys = [_key_expression(self.dialect, k).label(f"k_{k}") for k in query.group_by]
        where = _where(query.since, query.until, query.token, query.model)
        columns: list[sa.ColumnElement[Any]] = [
            sa.func.count().label("requests"),
            sa.func.sum(sa.case((usage.c.status >= 400, 1), else_=0)).label("errors"),
            sa.func.sum(usage.c.prompt_tokens).label("prompt_tokens"),
            sa.func.sum(usage.c.completion_tokens).label("completion_tokens"),
        ]
        for name in LATENCIES:
            col = usage.c[name]
            columns += [sa.func.avg(col).label(f"{name}_mean"), sa.func.max(col).label(f"{name}_max")]
            if self.computes_percentiles:
                quantiles: sa.ColumnElement[Any] = sa.literal_column("ARRAY[0.5, 0.95]::double precision[]")
                columns.append(sa.func.percentile_cont(quantiles).within_group(col).label(f"{name}_pct"))
        groups = sa.select(*keys, *columns).where(*where)
        by_status = sa.select(*keys, usage.c.status, sa.func.count().label("n")).where(*where)
        if keys:
            groups = groups.group_by(*(k.element for k in keys)).order_by(*keys)
        by_status = by_status.group_by(*(k.element for k in keys), usage.c.status)
        return groups, by_status

    async def usage_aggregate(self, query: UsageQuery) -> UsageAggregate:
        groups, by_status = self.aggregate_statements(query)
        async with self._begin("read usage") as conn:
            group_rows = (await conn.execute(groups)).all()
            status_rows = (await conn.execute(by_status)).all()
        width = len(query.group_by)
        statuses: dict[tuple[Any, ...], dict[str, int]] = {}
        for row in sorted(status_rows, key=lambda r: r.status):
            statuses.setdefault(tuple(row[:width]), {})[str(row.status)] = int(row.n)
        percentiles = self.computes_percentiles
        out = []
        for row in group_rows:
            raw_key = tuple(row[:width])
            item: dict[str, Any] = {k: _key_value(k, v) for k, v in zip(query.group_by, raw_key, strict=True)}
            item.update(
                requests=int(row.requests),
                errors=_int_or_zero(row.errors),
                by_status=statuses.get(raw_key, {}),
                prompt_tokens=_int_or_zero(row.prompt_tokens),
                completion_tokens=_int_or_zero(row.completion_tokens),
            )
            for name in LATENCIES:
                stats: dict[str, float | None] = {"mean": _float(row._mapping[f"{name}_mean"])}
                if percentiles:
                    pct = row._mapping[f"{name}_pct"]
                    stats["p50"], stats["p95"] = (None, None) if pct is None else (_float(pct[0]), _float(pct[1]))
                stats["max"] = _float(row._mapping[f"{name}_max"])
                item[name] = stats
            out.append(item)
        return UsageAggregate(query, percentiles, out)

    def records_statement(self, query: RecordsQuery) -> sa.Select[Any]:
        where = _where(query.since, query.until, query.token, query.model)
        if query.after is not None:
            where.append(usage.c.id < query.after)
        return usage.select().where(*where).order_by(usage.c.id.desc()).limit(query.limit + 1)

    async def usage_records(self, query: RecordsQuery) -> RecordsPage:
        async with self._begin("read usage records") as conn:
            rows = (await conn.execute(self.records_statement(query))).all()
        page = [_record_json(r) for r in rows[: query.limit]]
        return RecordsPage(page, has_more=len(rows) > query.limit)


def _record_json(row: sa.Row[Any]) -> dict[str, Any]:
    created = from_db_time(row.created_at)
    assert created is not None
    return {
        "id": int(row.id),
        "created_at": iso(created),
        "token": row.token_name,
        "user": row.end_user,
        "model": row.model,
        "replica": row.replica,
        "priority": row.priority,
        "status": row.status,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "queue_wait_s": row.queue_wait_s,
        "ttfb_s": row.ttfb_s,
        "total_s": row.total_s,
        "request_id": row.request_id,
    }
