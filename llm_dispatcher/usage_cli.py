"""`llm-dispatcher usage`: the usage report of the admin API, on the command line.

    llm-dispatcher usage [--since 24h] [--until now] [--by token,model,day] [--token T] [--model M]
                         [--format table|csv|json]

Same query code as `/admin/v1/usage` (llm_dispatcher/db/usage_report.py). Times are a duration ago
(`24h`, `7d`), `now` or ISO 8601 (UTC when no zone is given); hours and days are UTC.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime
from typing import Any

from llm_dispatcher.db import DatabaseUnavailableError, Store
from llm_dispatcher.db.usage_report import (
    GROUP_KEYS,
    LATENCIES,
    UsageAggregate,
    UsageQuery,
    UsageQueryError,
    aggregate_csv,
    usage_query,
)
from llm_dispatcher.db_cli import EXIT_UNAVAILABLE, add_database_option, database_url, fail

FORMATS = ("table", "csv", "json")
_OPTION = {"since": "--since", "until": "--until", "group_by": "--by", "token": "--token", "model": "--model"}
_SHORT = {"queue_wait_s": "WAIT", "ttfb_s": "TTFB", "total_s": "TOTAL"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_option(parser)
    parser.add_argument("--since", default="24h", help="start: a duration ago (24h, 7d), now or ISO 8601 (default 24h)")
    parser.add_argument("--until", default=None, help="end, excluded (default: now)")
    parser.add_argument(
        "--by", dest="group_by", default="", metavar="KEYS", help=f"group by any of {','.join(GROUP_KEYS)}"
    )
    parser.add_argument("--token", help="only this token's requests (by name)")
    parser.add_argument("--model", help="only this model's requests")
    parser.add_argument("--format", choices=FORMATS, default="table")


def build_query(args: argparse.Namespace, now: datetime | None = None) -> UsageQuery:
    """UsageQueryError names the option (`--by: ...`)."""
    try:
        return usage_query(
            since=args.since, until=args.until, group_by=args.group_by, token=args.token, model=args.model, now=now
        )
    except UsageQueryError as exc:
        raise UsageQueryError(f"{_OPTION.get(exc.param, exc.param)}: {exc}", exc.param) from None


def run(args: argparse.Namespace) -> int:
    try:
        query = build_query(args)
        aggregate = asyncio.run(_report(database_url(args), query))
    except UsageQueryError as exc:
        return fail(str(exc))
    except DatabaseUnavailableError as exc:
        return fail(exc.message, EXIT_UNAVAILABLE)
    sys.stdout.write(render(aggregate, args.format))
    return 0


async def _report(url: str, query: UsageQuery) -> UsageAggregate:
    async with Store(url) as store:
        await store.migrate()
        return await store.usage_aggregate(query)


def render(aggregate: UsageAggregate, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(aggregate.to_json(), indent=2) + "\n"
    if fmt == "csv":
        return aggregate_csv(aggregate)
    return render_table(aggregate)


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _statuses(by_status: dict[str, int]) -> str:
    return " ".join(f"{code}:{n}" for code, n in by_status.items()) or "-"


def render_table(aggregate: UsageAggregate) -> str:
    """A heading (range, filters, which statistics), then one aligned line per group."""
    q = aggregate.query
    filters = "".join(f", {k} {v}" for k, v in (("token", q.token), ("model", q.model)) if v is not None)
    stats = ("mean", "p50", "p95") if aggregate.percentiles else ("mean", "max")
    note = "latencies in seconds: mean, p50, p95" if aggregate.percentiles else "latencies in seconds: mean, max"
    span = f"{_time(q.since)} to {_time(q.until)}"
    lines = [f"usage from {span}{filters} ({note})"]
    header = [
        *(k.upper() for k in q.group_by),
        "REQUESTS",
        "ERRORS",
        "STATUS",
        "PROMPT_TOKENS",
        "COMPLETION_TOKENS",
        *(f"{_SHORT[m]}_{s.upper()}" for m in LATENCIES for s in stats),
    ]
    table: list[list[str]] = [header]
    for row in aggregate.rows:
        table.append(
            [
                *("-" if row[k] is None else str(row[k]) for k in q.group_by),
                str(row["requests"]),
                str(row["errors"]),
                _statuses(row["by_status"]),
                str(row["prompt_tokens"]),
                str(row["completion_tokens"]),
                *(_seconds(row[m][s]) for m in LATENCIES for s in stats),
            ]
        )
    if not aggregate.rows or (not q.group_by and aggregate.rows[0]["requests"] == 0):
        lines.append("no requests in this range")
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    numeric = len(q.group_by)  # group keys left-aligned, numbers right-aligned
    for r in table:
        cells: list[Any] = [
            cell.ljust(w) if i < numeric or i == numeric + 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"
