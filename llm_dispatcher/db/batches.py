"""The Files and Batch APIs' tables: the database is the source of truth of every batch and line.

Lines are claimed row by row with a conditional UPDATE (`state` pending, or running with an expired
claim → running, claimed by me until T): portable across SQLite, PostgreSQL and MariaDB, and two
runners never hold the same line. A result is stored only by the runner still holding the claim,
and a line once `done` is never run again, so the output holds each line exactly once.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import time
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

from llm_dispatcher.db.engine import Database
from llm_dispatcher.db.models import batch_lines, batches, files

PENDING, RUNNING, DONE = "pending", "running", "done"
# A batch's statuses (OpenAI's): validating -> in_progress -> finalizing -> completed, or failed,
# expired, cancelling -> cancelled.
ACTIVE = ("validating", "in_progress")
TIMESTAMPED = ("in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled")


def _to_text(content: bytes) -> str:
    return base64.b64encode(content).decode("ascii")


def new_id(prefix: str) -> str:
    """Ids that sort by creation time (the lists' order and cursors), then at random within a millisecond."""
    return f"{prefix}{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


def now_s() -> int:
    return int(time.time())


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclasses.dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    token_id: int
    purpose: str
    filename: str
    bytes: int
    created_at: int


@dataclasses.dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    token_id: int
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str
    metadata: dict | None
    errors: list[dict] | None
    output_file_id: str | None
    error_file_id: str | None
    total: int
    created_at: int
    expires_at: int
    times: dict[str, int | None]  # in_progress_at, ... cancelled_at
    completed: int = 0
    failed: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class LineInput:
    custom_id: str
    model: str
    body: bytes  # the line's `body`, JSON


@dataclasses.dataclass(frozen=True, slots=True)
class Line:
    batch_id: str
    line_no: int
    custom_id: str
    model: str
    body: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class LineResult:
    line_no: int
    custom_id: str
    status_code: int | None
    response: Any  # the JSON body
    error: dict | None
    request_id: str | None


def _file(row: sa.Row) -> FileRecord:
    return FileRecord(row.id, row.token_id, row.purpose, row.filename, row.bytes, row.created_at)


def _batch(row: sa.Row, counts: tuple[int, int] = (0, 0)) -> BatchRecord:
    return BatchRecord(
        id=row.id,
        token_id=row.token_id,
        endpoint=row.endpoint,
        input_file_id=row.input_file_id,
        completion_window=row.completion_window,
        status=row.status,
        metadata=json.loads(row.metadata) if row.metadata else None,
        errors=json.loads(row.errors) if row.errors else None,
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        total=row.total,
        created_at=row.created_at,
        expires_at=row.expires_at,
        times={f"{name}_at": getattr(row, f"{name}_at") for name in TIMESTAMPED},
        completed=counts[0],
        failed=counts[1],
    )


def _held(batch_id: str, line_no: int, runner: str) -> sa.Update:
    """An UPDATE of one line that only applies while `runner` holds its claim."""
    return batch_lines.update().where(
        batch_lines.c.batch_id == batch_id,
        batch_lines.c.line_no == line_no,
        batch_lines.c.claimed_by == runner,
        batch_lines.c.state == RUNNING,
    )


class BatchStore(Database):
    # -- files ---------------------------------------------------------------------------------
    async def create_file(self, token_id: int, purpose: str, filename: str, content: bytes) -> FileRecord:
        record = FileRecord(new_id("file-"), token_id, purpose, filename[:255], len(content), now_s())
        async with self._begin("store a file") as conn:
            await conn.execute(files.insert().values(**dataclasses.asdict(record), content=_to_text(content)))
        return record

    async def get_file(self, file_id: str, token_id: int) -> FileRecord | None:
        cols = [c for c in files.c if c.name != "content"]
        async with self._begin("read a file") as conn:
            row = (
                await conn.execute(sa.select(*cols).where(files.c.id == file_id, files.c.token_id == token_id))
            ).one_or_none()
        return None if row is None else _file(row)

    async def file_content(self, file_id: str, token_id: int) -> bytes | None:
        async with self._begin("read a file") as conn:
            text = (
                await conn.execute(
                    sa.select(files.c.content).where(files.c.id == file_id, files.c.token_id == token_id)
                )
            ).scalar_one_or_none()
        return None if text is None else base64.b64decode(text)

    async def list_files(
        self, token_id: int, *, after: str | None, limit: int, purpose: str | None = None
    ) -> tuple[list[FileRecord], bool]:
        cols = [c for c in files.c if c.name != "content"]
        q = sa.select(*cols).where(files.c.token_id == token_id)
        if purpose:
            q = q.where(files.c.purpose == purpose)
        q = await self._after(q, files, after, token_id)
        async with self._begin("list files") as conn:
            rows = (await conn.execute(q.order_by(files.c.created_at.desc(), files.c.id.desc()).limit(limit + 1))).all()
        return [_file(r) for r in rows[:limit]], len(rows) > limit

    async def delete_file(self, file_id: str, token_id: int) -> bool:
        async with self._begin("delete a file") as conn:
            result = await conn.execute(files.delete().where(files.c.id == file_id, files.c.token_id == token_id))
        return result.rowcount > 0

    async def _after(self, q, table: sa.Table, after: str | None, token_id: int):
        """Cursor pagination, newest first: the rows listed after `after` (an id of this token's)."""
        if not after:
            return q
        async with self._begin("read a cursor") as conn:
            seen = (
                await conn.execute(
                    sa.select(table.c.created_at).where(table.c.id == after, table.c.token_id == token_id)
                )
            ).scalar_one_or_none()
        if seen is None:
            return q.where(sa.false())
        return q.where(sa.or_(table.c.created_at < seen, sa.and_(table.c.created_at == seen, table.c.id < after)))

    # -- batches -------------------------------------------------------------------------------
    async def create_batch(
        self,
        token_id: int,
        endpoint: str,
        input_file_id: str,
        completion_window_s: int,
        completion_window: str,
        metadata: dict | None,
        lines: Sequence[LineInput],
        errors: list[dict] | None,
    ) -> BatchRecord:
        """A batch and its lines in one transaction: `failed` at once if `errors`, else `validating`."""
        created = now_s()
        batch_id = new_id("batch_")
        values: dict[str, Any] = dict(
            id=batch_id,
            token_id=token_id,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            status="failed" if errors else "validating",
            metadata=json.dumps(metadata) if metadata else None,
            errors=json.dumps(errors) if errors else None,
            total=0 if errors else len(lines),
            created_at=created,
            expires_at=created + completion_window_s,
            failed_at=created if errors else None,
        )
        async with self._begin("create a batch") as conn:
            await conn.execute(batches.insert().values(**values))
            if not errors and lines:
                for start in range(0, len(lines), 1000):
                    await conn.execute(
                        batch_lines.insert(),
                        [
                            dict(
                                batch_id=batch_id,
                                line_no=i,
                                custom_id=li.custom_id,
                                model=li.model,
                                body=li.body.decode(),
                                state=PENDING,
                            )
                            for i, li in enumerate(lines[start : start + 1000], start=start)
                        ],
                    )
            row = (await conn.execute(batches.select().where(batches.c.id == batch_id))).one()
        return _batch(row)

    async def get_batch(self, batch_id: str, token_id: int | None = None) -> BatchRecord | None:
        q = batches.select().where(batches.c.id == batch_id)
        if token_id is not None:
            q = q.where(batches.c.token_id == token_id)
        async with self._begin("read a batch") as conn:
            row = (await conn.execute(q)).one_or_none()
            if row is None:
                return None
            return _batch(row, await self._counts(conn, batch_id))

    async def list_batches(self, token_id: int, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        q = await self._after(batches.select().where(batches.c.token_id == token_id), batches, after, token_id)
        async with self._begin("list batches") as conn:
            rows = (
                await conn.execute(q.order_by(batches.c.created_at.desc(), batches.c.id.desc()).limit(limit + 1))
            ).all()
            out = [_batch(r, await self._counts(conn, r.id)) for r in rows[:limit]]
        return out, len(rows) > limit

    @staticmethod
    async def _counts(conn, batch_id: str) -> tuple[int, int]:
        """(completed, failed): lines done with a 2xx answer, and the other done lines."""
        ok = sa.and_(batch_lines.c.status_code >= 200, batch_lines.c.status_code < 300)
        row = (
            await conn.execute(
                sa.select(  # SUM(CASE), not COUNT FILTER: MariaDB has no FILTER
                    sa.func.sum(sa.case((ok, 1), else_=0)),
                    sa.func.count(),
                ).where(batch_lines.c.batch_id == batch_id, batch_lines.c.state == DONE)
            )
        ).one()
        completed, done = int(row[0] or 0), int(row[1] or 0)
        return completed, done - completed

    async def active_batches(self) -> list[BatchRecord]:
        """Batches someone must work on: validating, in progress, cancelling, or due to finalize."""
        async with self._begin("list active batches") as conn:
            rows = (
                await conn.execute(
                    batches.select()
                    .where(batches.c.status.in_((*ACTIVE, "cancelling", "finalizing")))
                    .order_by(batches.c.created_at)
                )
            ).all()
        return [_batch(r) for r in rows]

    async def move(self, batch_id: str, from_status: Sequence[str], to_status: str, **values: Any) -> bool:
        """Change a batch's status if it is still in one of `from_status` (atomic: one mover wins);
        stamps `<to_status>_at` unless given."""
        if to_status in TIMESTAMPED:
            values.setdefault(f"{to_status}_at", now_s())
        async with self._begin("update a batch") as conn:
            result = await conn.execute(
                batches.update()
                .where(batches.c.id == batch_id, batches.c.status.in_(tuple(from_status)))
                .values(status=to_status, **values)
            )
        return result.rowcount > 0

    # -- lines ---------------------------------------------------------------------------------
    async def claim_lines(
        self, batch_id: str, runner: str, n: int, claim_ms: int, models: Sequence[str] | None = None
    ) -> list[Line]:
        """Up to `n` lines nobody holds (pending, or running under an expired claim), now held by `runner`."""
        now = now_ms()
        free = sa.or_(
            batch_lines.c.state == PENDING, sa.and_(batch_lines.c.state == RUNNING, batch_lines.c.claim_until < now)
        )
        q = sa.select(batch_lines.c.line_no).where(batch_lines.c.batch_id == batch_id, free)
        if models is not None:
            q = q.where(batch_lines.c.model.in_(tuple(models)))
        claimed: list[Line] = []
        async with self._begin("claim batch lines") as conn:
            candidates = (await conn.execute(q.order_by(batch_lines.c.line_no).limit(n * 2))).scalars().all()
        for line_no in candidates:
            if len(claimed) >= n:
                break
            async with self._begin("claim a batch line") as conn:
                won = await conn.execute(
                    batch_lines.update()
                    .where(
                        batch_lines.c.batch_id == batch_id,
                        batch_lines.c.line_no == line_no,
                        free,
                    )
                    .values(state=RUNNING, claimed_by=runner, claim_until=now + claim_ms)
                )
                if won.rowcount:
                    row = (
                        await conn.execute(
                            sa.select(batch_lines.c.custom_id, batch_lines.c.model, batch_lines.c.body).where(
                                batch_lines.c.batch_id == batch_id, batch_lines.c.line_no == line_no
                            )
                        )
                    ).one()
                    claimed.append(Line(batch_id, line_no, row.custom_id, row.model, row.body.encode()))
        return claimed

    async def extend_claims(self, runner: str, keys: Sequence[tuple[str, int]], claim_ms: int) -> None:
        if not keys:
            return
        async with self._begin("extend batch line claims") as conn:
            for batch_id, line_no in keys:
                await conn.execute(_held(batch_id, line_no, runner).values(claim_until=now_ms() + claim_ms))

    async def finish_line(
        self,
        batch_id: str,
        line_no: int,
        runner: str,
        *,
        status_code: int | None,
        response: bytes | None,
        error: dict | None,
        request_id: str | None,
    ) -> bool:
        """Store a line's result, only if `runner` still holds it (else another runner has taken it over)."""
        async with self._begin("store a batch line") as conn:
            result = await conn.execute(
                _held(batch_id, line_no, runner).values(
                    state=DONE,
                    status_code=status_code,
                    response=None if response is None else response.decode(),
                    error=json.dumps(error) if error else None,
                    request_id=request_id,
                )
            )
        return result.rowcount > 0

    async def give_back(self, batch_id: str, line_no: int, runner: str) -> None:
        async with self._begin("give a batch line back") as conn:
            await conn.execute(
                _held(batch_id, line_no, runner).values(state=PENDING, claimed_by=None, claim_until=None)
            )

    async def end_unfinished(self, batch_id: str, error: dict | None) -> None:
        """Every line not done yet is done now: with `error` (expired), or dropped from the output (None)."""
        async with self._begin("end unfinished batch lines") as conn:
            await conn.execute(
                batch_lines.update()
                .where(
                    batch_lines.c.batch_id == batch_id,
                    batch_lines.c.state != DONE,
                )
                .values(
                    state=DONE,
                    status_code=None,
                    error=json.dumps(error) if error else None,
                    claimed_by=None,
                    claim_until=None,
                )
            )

    async def unfinished(self, batch_id: str) -> int:
        async with self._begin("count unfinished batch lines") as conn:
            return int(
                (
                    await conn.execute(
                        sa.select(sa.func.count()).where(
                            batch_lines.c.batch_id == batch_id, batch_lines.c.state != DONE
                        )
                    )
                ).scalar_one()
            )

    async def results(self, batch_id: str) -> list[LineResult]:
        async with self._begin("read batch results") as conn:
            rows = (
                await conn.execute(
                    sa.select(
                        batch_lines.c.line_no,
                        batch_lines.c.custom_id,
                        batch_lines.c.status_code,
                        batch_lines.c.response,
                        batch_lines.c.error,
                        batch_lines.c.request_id,
                    )
                    .where(batch_lines.c.batch_id == batch_id, batch_lines.c.state == DONE)
                    .order_by(batch_lines.c.line_no)
                )
            ).all()
        return [
            LineResult(
                r.line_no,
                r.custom_id,
                r.status_code,
                json.loads(r.response) if r.response else None,
                json.loads(r.error) if r.error else None,
                r.request_id,
            )
            for r in rows
        ]
