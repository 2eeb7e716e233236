"""Running one scenario: its stack, the load with the fault, the invariants at +5 s and +20 s."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from bench.faults.load import Load, Shape, failure_window, finalize, summary
from bench.faults.scenarios import Run, Scenario
from bench.faults.stack import MODEL, FaultStack, OldRelease
from devstack.broker import PrivateBroker, PrivateCluster
from devstack.tcpgate import TcpGate

POSTGRES_URL = os.environ.get("LLMD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")


@dataclass
class Options:
    duration: float = 40.0  # seconds of arrivals at least
    fault_at: float = 10.0
    after_fault: float = 6.0  # and arrivals go on this long after the fault's end (a slow broker boot)
    checks: tuple[float, ...] = (5.0, 20.0)  # seconds after the last answer
    shape: Shape = field(default_factory=Shape)


# `--short` and tests/e2e/test_faults_short.py: 16 s of arrivals at 12 requests/s (longer when the fault
# ends late: a killed broker is back ~8 s later, ~12 s on a busy machine), the fault at 4 s, about 50 s a
# scenario with its checks.
SHORT_OPTIONS = Options(duration=16.0, fault_at=4.0, shape=Shape(rate=12.0))


async def run_scenario(
    sc: Scenario, broker: PrivateBroker | PrivateCluster, opts: Options, workdir: str, old: OldRelease | None = None
) -> dict:
    if sc.versions and old is None:
        raise RuntimeError(f"{sc.name} needs the old release")
    env = dict(sc.env)
    gate: TcpGate | None = None
    db: str | None = None
    if sc.postgres:
        db = await create_database()
        url = sa.make_url(POSTGRES_URL)
        gate = TcpGate((url.host or "127.0.0.1", url.port or 5432))
        await gate.open()
        env["LLMD_DATABASE_URL"] = url.set(host="127.0.0.1", port=gate.port, database=db).render_as_string(
            hide_password=False
        )
    stack = FaultStack(broker, workdir, sc.replicas, sc.senders, env, dict(sc.versions), old.env if old else {})
    started = time.monotonic()
    try:
        await asyncio.to_thread(stack.start)
        token = await asyncio.to_thread(stack.token, "load")
        extra: dict = {}
        if gate is not None:
            extra = {"gate": gate, "fresh_token": await asyncio.to_thread(stack.token, "never-cached")}
        await asyncio.to_thread(stack.wait_live, token)
        versions = {n: p.version for n, p in sorted(stack.procs.items()) if not n.startswith("sim")}
        load = Load(opts.shape, MODEL, token, stack.sender_urls)
        upstream_before = await asyncio.to_thread(stack.counter, stack.sims(), "vllm:request_success")
        t0 = time.perf_counter()
        run = Run(stack, load, t0, opts.fault_at, opts.duration, extra=extra)
        fault = asyncio.create_task(sc.fault(run), name=sc.name)
        await load.run(lambda at: at < opts.duration or arriving_after(run, fault, at, opts.after_fault), t0)
        await fault
        finalize(load.results)
        # From the last answer, or the fault's end if it outlasted the load (an outage, a reclaim).
        ended = max([run.now(), *(r.end for r in load.results)])
        if "node_lost_at" in run.notes:  # requests vLLM served against answers: nothing granted twice
            run.notes["upstream_requests"] = round(
                await asyncio.to_thread(stack.counter, stack.sims(), "vllm:request_success") - upstream_before
            )
            run.notes["ok_answers"] = sum(1 for r in load.results if r.klass == "ok")
            lost = run.notes["node_lost_at"]  # the first request started after the loss that succeeded
            starts = [r.start for r in load.results if r.klass == "ok" and r.start >= lost]
            run.notes["ok_after_loss_s"] = round(min(starts) - lost, 2) if starts else None
            run.notes["refused_in_loss"] = sum(
                1 for r in load.results if r.klass == "clear" and lost <= r.start <= run.notes["fault_end"]
            )
        if "broker_down_s" in run.notes:  # the first request started after the node's return that succeeded
            back = run.notes["fault_end"]
            starts = [r.start for r in load.results if r.klass == "ok" and r.start >= back]
            run.notes["ok_again_after_s"] = round(min(starts) - back, 1) if starts else None
        checks = {}
        for c in opts.checks:
            await run.at(ended + c)
            checks[f"+{c:g} s"] = await stack.invariants()
        if gate is not None and db is not None:
            run.notes["usage_rows"] = await count_usage(db)
            run.notes["usage_pending"] = int(
                await asyncio.to_thread(stack.counter, stack.senders_live(), "llmd_usage_records_pending")
            )
        return {
            "scenario": sc.name,
            "what": sc.what,
            "versions": versions,
            "fault_at": opts.fault_at,
            "summary": summary(load.results),
            "failure_window": failure_window(load.results, opts.fault_at),
            "checks": checks,
            "notes": run.notes,
            "seconds": round(time.monotonic() - started, 1),
            "results": [asdict(r) for r in load.results],
        }
    finally:
        await asyncio.to_thread(stack.close)
        if gate is not None:
            await gate.close()
        if db is not None:
            await drop_database(db)


def arriving_after(run: Run, fault: asyncio.Task, at: float, tail: float) -> bool:
    """Whether load still arrives at `at` for the fault's sake: until `tail` seconds past its end, so
    the run shows service coming back however long the repair took."""
    if not fault.done():
        return True
    return at < run.notes.get("fault_end", 0.0) + tail


def passed(result: dict) -> bool:
    """No unclear failure, every check held."""
    return result["summary"]["unclear_total"] == 0 and all(c["ok"] for c in result["checks"].values())


async def create_database() -> str:
    name = f"llmd_faults_{uuid.uuid4().hex[:8]}"
    engine = create_async_engine(POSTGRES_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        await engine.dispose()
    return name


async def drop_database(name: str) -> None:
    engine = create_async_engine(POSTGRES_URL, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    with contextlib.suppress(Exception):
        async with engine.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await engine.dispose()


async def count_usage(db: str) -> int | None:
    engine = create_async_engine(sa.make_url(POSTGRES_URL).set(database=db), poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            return int(await conn.scalar(sa.text("SELECT count(*) FROM usage")) or 0)
    except Exception:
        return None
    finally:
        await engine.dispose()
