"""Usage reports on a large `usage` table: SQLite (a file) and PostgreSQL (a database of its own).

Fills the migrated table with `--rows` rows (default 1,000,000) in bulk (executemany on SQLite, COPY
on PostgreSQL), then times the reports through `Store` exactly as the CLI and the admin API run
them — medians of `--runs` runs after one warm-up — and prints each report's query plan.

The rows: 30 days ending at the current hour, the last day holding `--last-day` of them (default
15 %) and the other 29 days the rest evenly; 20 tokens (Zipf-like shares), 5 models (one takes
40 %), 8 replicas (each model on its own 1 to 3), priorities 0 to 9 by token; statuses 94 % 200,
3 % 429, 1 % 503, 1 % 400, 0.5 % 401, 0.5 % 500; log-normal latencies, no TTFB on errors.

    .venv/bin/python bench/usage_report.py [--rows 1000000] [--runs 5] [--backends sqlite,postgresql]

PostgreSQL comes from LLMD_BENCH_POSTGRES_URL (default postgresql+asyncpg://postgres@127.0.0.1:5432/postgres);
the script creates `llmd_bench_usage` next to it and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from llm_dispatcher.db import Store
from llm_dispatcher.db.usage_report import records_query, usage_query

PG_URL = os.environ.get("LLMD_BENCH_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "llmd_bench_usage"
TOKENS = [f"team-{i:02d}" for i in range(20)]
TOKEN_WEIGHTS = [1 / (i + 1) for i in range(20)]
MODELS = {  # model: (share, replicas)
    "llama-3.1-8b": (0.40, ["gpu-a0", "gpu-a1", "gpu-a2"]),
    "llama-3.1-70b": (0.25, ["gpu-b0", "gpu-b1"]),
    "qwen2.5-coder-32b": (0.15, ["gpu-c0"]),
    "mistral-7b": (0.12, ["gpu-d0"]),
    "bge-m3": (0.08, ["gpu-e0"]),
}
STATUSES = [(200, 0.94), (429, 0.03), (503, 0.01), (400, 0.01), (401, 0.005), (500, 0.005)]
COLUMNS = (
    "created_at",
    "token_id",
    "token_name",
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


def generate(n: int, end: datetime, last_day_share: float, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """Rows in time order (as the writer appends them), naive UTC."""
    rng = random.Random(seed)
    last_day = round(n * last_day_share)
    older = n - last_day
    start = end - timedelta(days=30)
    day_start = end - timedelta(days=1)
    tokens = rng.choices(range(20), TOKEN_WEIGHTS, k=n)
    models = rng.choices(list(MODELS), [share for share, _ in MODELS.values()], k=n)
    statuses = rng.choices([s for s, _ in STATUSES], [w for _, w in STATUSES], k=n)
    span_old = (day_start - start).total_seconds() / max(older, 1)
    span_new = (end - day_start).total_seconds() / max(last_day, 1)
    for i in range(n):
        at = (
            start + timedelta(seconds=i * span_old)
            if i < older
            else day_start + timedelta(seconds=(i - older) * span_new)
        )
        token = tokens[i]
        model = models[i]
        status = statuses[i]
        wait = rng.lognormvariate(-3.0, 1.2)
        ok = status < 400
        prompt = int(rng.lognormvariate(6.0, 1.0)) if status not in (401, 429) else None
        completion = int(rng.lognormvariate(5.0, 0.9)) if ok else None
        ttfb = rng.lognormvariate(-1.5, 0.6) if ok else None
        total = wait + (ttfb or 0.0) + (completion or 0) * rng.uniform(0.01, 0.04)
        yield (
            at.replace(tzinfo=None),
            token + 1,
            TOKENS[token],
            model,
            rng.choice(MODELS[model][1]),
            token % 10,
            status,
            prompt,
            completion,
            wait,
            ttfb,
            total,
            f"req-{i:08d}",
        )


def batches(rows: Iterator[tuple[Any, ...]], size: int = 50_000) -> Iterator[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def fill_sqlite(path: Path, rows: Iterator[tuple[Any, ...]]) -> None:
    """The format SQLAlchemy stores datetimes in on SQLite (text, always with microseconds)."""
    conn = sqlite3.connect(path)
    sql = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    with conn:
        for batch in batches(rows):
            conn.executemany(sql, [(r[0].strftime("%Y-%m-%d %H:%M:%S.%f"), *r[1:]) for r in batch])
    conn.close()


async def fill_postgresql(dsn: str, rows: Iterator[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for batch in batches(rows):
            await conn.copy_records_to_table("usage", records=batch, columns=list(COLUMNS))
        await conn.execute("VACUUM ANALYZE usage")
    finally:
        await conn.close()


async def median_s(fn: Callable[[], Awaitable[Any]], runs: int) -> tuple[float, Any]:
    result = await fn()  # warm-up (and the result shown)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


async def explain(store: Store, statement: sa.Select[Any]) -> list[str]:
    compiled = statement.compile(dialect=store.engine.dialect, compile_kwargs={"literal_binds": True})
    prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
    async with store.engine.connect() as conn:
        rows = (await conn.exec_driver_sql(prefix + str(compiled))).all()
    return [str(r[-1]) for r in rows]


async def measure(store: Store, end: datetime, runs: int) -> list[dict[str, Any]]:
    day_ago = end - timedelta(days=1)
    cases: list[tuple[str, Any]] = [
        ("aggregate, last day, by token", usage_query(since=day_ago, until=end, group_by="token")),
        ("aggregate, last day, by model,hour", usage_query(since=day_ago, until=end, group_by="model,hour")),
        ("aggregate, last day, by token,model,day", usage_query(since=day_ago, until=end, group_by="token,model,day")),
        (
            "aggregate, last day, one token, by hour",
            usage_query(since=day_ago, until=end, group_by="hour", token="team-05"),
        ),
        (
            "aggregate, last 7 days, by model,day",
            usage_query(since=end - timedelta(days=7), until=end, group_by="model,day"),
        ),
        (
            "aggregate, 30 days, one token, by day",
            usage_query(since=end - timedelta(days=30), until=end, group_by="day", token="team-05"),
        ),
        ("records, newest 100", records_query(limit=100)),
        ("records, 100 below the middle id", None),
        ("records, one token and model, 100", records_query(token="team-05", model="mistral-7b", limit=100)),
    ]
    out = []
    for name, query in cases:
        if query is None:
            async with store.engine.connect() as conn:
                middle = await conn.scalar(sa.text("SELECT max(id) / 2 FROM usage"))
            query = records_query(after=int(middle), limit=100)
        if name.startswith("aggregate"):
            seconds, result = await median_s(lambda q=query: store.usage_aggregate(q), runs)
            groups, by_status = store.aggregate_statements(query)
            plan = await explain(store, groups) + ["-- by status:"] + await explain(store, by_status)
            size = {"groups": len(result.rows), "requests": sum(r["requests"] for r in result.rows)}
        else:
            seconds, result = await median_s(lambda q=query: store.usage_records(q), runs)
            plan = await explain(store, store.records_statement(query))
            size = {"rows": len(result.rows)}
        out.append({"case": name, "median_s": round(seconds, 4), **size, "plan": plan})
        print(f"  {name:45s} {seconds * 1000:8.1f} ms  {size}", flush=True)
    return out


async def drop_indexes(store: Store, names: list[str]) -> None:
    async with store.engine.begin() as conn:
        for name in names:
            await conn.execute(sa.text(f"DROP INDEX {name}"))


async def bench_sqlite(n: int, end: datetime, share: float, runs: int, without: list[str]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="llmd-bench-") as tmp:
        path = Path(tmp) / "usage.db"
        async with Store(f"sqlite+aiosqlite:///{path}") as store:
            await store.migrate()
            await drop_indexes(store, without)
        t0 = time.perf_counter()
        fill_sqlite(path, generate(n, end, share))
        print(f"sqlite: {n:,} rows in {time.perf_counter() - t0:.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")
        async with Store(f"sqlite+aiosqlite:///{path}") as store:
            return await measure(store, end, runs)


async def bench_postgresql(n: int, end: datetime, share: float, runs: int, without: list[str]) -> list[dict[str, Any]]:
    admin = create_async_engine(PG_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"))
        await conn.execute(sa.text(f"CREATE DATABASE {PG_DATABASE}"))
    url = sa.make_url(PG_URL).set(database=PG_DATABASE)
    try:
        async with Store(url) as store:
            await store.migrate()
            await drop_indexes(store, without)
            t0 = time.perf_counter()
            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            await fill_postgresql(dsn, generate(n, end, share))
            print(f"postgresql: {n:,} rows in {time.perf_counter() - t0:.1f} s (COPY, then VACUUM ANALYZE)")
            return await measure(store, end, runs)
    finally:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f"DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)"))
        await admin.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--last-day", type=float, default=0.15, help="share of the rows in the last day")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per report (median), after a warm-up")
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--json", type=Path, help="write the results (with query plans) here")
    parser.add_argument("--plans", action="store_true", help="print the query plans")
    parser.add_argument(
        "--without-index", action="append", default=[], metavar="NAME", help="drop this index first (to compare)"
    )
    args = parser.parse_args()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    results: dict[str, Any] = {"rows": args.rows, "last_day_share": args.last_day, "end": end.isoformat()}
    for backend in args.backends.split(","):
        run = {"sqlite": bench_sqlite, "postgresql": bench_postgresql}[backend.strip()]
        results[backend] = await run(args.rows, end, args.last_day, args.runs, args.without_index)
        if args.plans:
            for case in results[backend]:
                print(f"\n{backend}: {case['case']}\n    " + "\n    ".join(case["plan"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
