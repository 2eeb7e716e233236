"""The async engine every part of the store shares, and the one place driver errors are translated.

`Database` owns the engine (per-backend settings: SQLite in WAL mode with its directory created,
MySQL/MariaDB in utf8mb4 with recycled connections); the pieces of the store (`migrate`, `tokens`,
`usage`) subclass it and open transactions through `_begin`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from llm_dispatcher.db.errors import DatabaseUnavailableError


@contextlib.contextmanager
def translate_errors(what: str) -> Iterator[None]:
    """Connection-level failures become DatabaseUnavailableError (503 at the HTTP edge)."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, TimeoutError) as exc:
        raise DatabaseUnavailableError(f"database unavailable while trying to {what}: {exc}") from exc


class Database:
    """Owns the async engine. Build it in main()/lifespan, `await dispose()` (or `async with`)."""

    def __init__(self, url: str | sa.URL, **engine_kwargs: Any):
        self.url = sa.make_url(url)
        backend = self.url.get_backend_name()
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if backend == "sqlite":
            database = self.url.database
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": 30}
        elif backend in ("mysql", "mariadb"):
            kwargs["pool_recycle"] = 3600
            if "charset" not in self.url.query:
                self.url = self.url.update_query_dict({"charset": "utf8mb4"})
        kwargs.update(engine_kwargs)
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        if backend == "sqlite":
            sa.event.listen(self.engine.sync_engine, "connect", _sqlite_on_connect)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.dispose()

    async def dispose(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _begin(self, what: str) -> AsyncIterator[AsyncConnection]:
        with translate_errors(what):
            async with self.engine.begin() as conn:
                yield conn


def _sqlite_on_connect(dbapi_conn: Any, _conn_record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the usage writer
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()
