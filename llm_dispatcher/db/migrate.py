"""Schema migrations: `alembic upgrade head` from code, serialised across processes.

The alembic scripts live in `llm_dispatcher/migrations`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from llm_dispatcher.db.engine import Database, translate_errors
from llm_dispatcher.db.errors import DatabaseUnavailableError

log = logging.getLogger(__name__)

MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
_LOCK_NAME: Final = "llm_dispatcher_migrate"
_PG_LOCK_KEY: Final = 0x6C6C6D64  # "llmd"


def alembic_config() -> Config:
    """Built in code so that nothing depends on the working directory or a shipped alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


class Migrations(Database):
    async def migrate(self) -> None:
        """`alembic upgrade head`. Idempotent; concurrent callers are serialised by a DB lock
        (PostgreSQL advisory lock, MySQL GET_LOCK); SQLite is a single-host file."""
        with translate_errors("run migrations"):
            async with self._sqlite_file_lock(), self.engine.connect() as conn:
                if self.dialect in ("mysql", "mariadb"):
                    got = await conn.scalar(sa.text("SELECT GET_LOCK(:n, 300)"), {"n": _LOCK_NAME})
                    await conn.commit()
                    if got != 1:
                        raise DatabaseUnavailableError("timed out waiting for the migration lock")
                try:
                    async with conn.begin():
                        if self.dialect == "postgresql":
                            await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
                        before = await conn.run_sync(_current_revision)
                        await conn.run_sync(_upgrade_head)
                        after = await conn.run_sync(_current_revision)
                finally:
                    if self.dialect in ("mysql", "mariadb"):
                        await conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": _LOCK_NAME})
                        await conn.commit()
        if before != after:
            log.info("migrated %s from %s to %s", self.safe_url, before, after)

    @contextlib.asynccontextmanager
    async def _sqlite_file_lock(self) -> AsyncIterator[None]:
        """SQLite has no named locks: serialise migrating processes on a lock file beside the DB."""
        database = self.url.database
        if self.dialect != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
            yield
            return
        fh = await asyncio.to_thread(open, f"{database}.migrate-lock", "a+b")
        try:
            await asyncio.to_thread(fcntl.flock, fh, fcntl.LOCK_EX)
            yield
        finally:
            fh.close()  # closing releases the lock

    async def current_revision(self) -> str | None:
        with translate_errors("read the schema revision"):
            async with self.engine.connect() as conn:
                return await conn.run_sync(_current_revision)


def _current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade_head(conn: sa.Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
