"""The token store and usage sink: one async engine, used by the sender and the `tokens`/`db` CLI.

Tokens are kept as the SHA-256 hex of their plaintext; the plaintext exists only in the return value
of `create_token` (and in what the operator chose to import).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from llm_dispatcher.db.errors import DatabaseUnavailableError, DuplicateTokenError, TokenNotFoundError
from llm_dispatcher.db.models import (
    MODEL_LEN,
    NAME_LEN,
    REPLICA_LEN,
    REQUEST_ID_LEN,
    TokenRecord,
    UsageRecord,
    from_db_time,
    to_db_time,
    tokens,
    usage,
    utcnow,
)

log = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "sk-llmd-"
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent.parent / "migrations"
NAME_RE: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@:+-]{{0,{NAME_LEN - 1}}}")
_LOCK_NAME: Final = "llm_dispatcher_migrate"
_PG_LOCK_KEY: Final = 0x6C6C6D64  # "llmd"


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def hash_token(plaintext: str) -> str:
    """What the database stores instead of the token: SHA-256 hex (tokens carry 256 random bits)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def alembic_config() -> Config:
    """Built in code so that nothing depends on the working directory or a shipped alembic.ini."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


@contextlib.contextmanager
def translate_errors(what: str):
    """Connection-level failures become DatabaseUnavailableError (503 at the HTTP edge)."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError, TimeoutError) as exc:
        raise DatabaseUnavailableError(f"database unavailable while trying to {what}: {exc}") from exc


# -- validation and conversion (pure) ------------------------------------------------------------


def validate_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ValueError(
            f"invalid token name {name!r}: 1-{NAME_LEN} characters, letters, digits and ._@:+- "
            "(starting with a letter or digit)"
        )
    return name


def validate_plaintext(token: str) -> str:
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise ValueError("a token must be a non-empty string without whitespace")
    return token


def _validate_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def normalise_models(models: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """None means every model. A comma-separated string is accepted. An empty list is refused."""
    if models is None:
        return None
    if isinstance(models, str):
        models = models.split(",")
    out: list[str] = []
    for m in models:
        if not isinstance(m, str):
            raise ValueError(f"model names must be strings, got {m!r}")
        m = m.strip()
        if m and m not in out:
            if len(m) > MODEL_LEN:
                raise ValueError(f"model name longer than {MODEL_LEN} characters: {m!r}")
            out.append(m)
    if not out:
        raise ValueError("allowed models is empty: give at least one model, or none to allow every model")
    return tuple(out)


def parse_datetime(value: datetime | date | str | None) -> datetime | None:
    """ISO 8601 (a trailing Z is fine), a datetime or a date (midnight); naive values are taken as UTC."""
    if value is None or isinstance(value, datetime):
        return from_db_time(to_db_time(value))
    if isinstance(value, date):  # YAML turns `2030-01-01` into a date
        return datetime.combine(value, time(), tzinfo=UTC)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except (AttributeError, ValueError) as exc:
        raise ValueError(f"not an ISO 8601 date-time: {value!r}") from exc
    return from_db_time(to_db_time(parsed))


def _models_to_db(models: tuple[str, ...] | None) -> str | None:
    return None if models is None else json.dumps(list(models))


def _models_from_db(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(json.loads(value))


def _record(row: sa.Row) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        name=row.name,
        priority=row.priority,
        threshold=row.threshold,
        allowed_models=_models_from_db(row.allowed_models),
        expires_at=from_db_time(row.expires_at),
        enabled=bool(row.enabled),
    )


def _clip(value: str, length: int) -> str:
    return value if len(value) <= length else value[:length]


def usage_row(r: UsageRecord) -> dict[str, Any]:
    """Strings are clipped to the column sizes: strict-mode MySQL would reject the whole batch."""
    return {
        "created_at": to_db_time(r.created_at),
        "token_id": r.token_id,
        "token_name": _clip(r.token_name, NAME_LEN),
        "model": _clip(r.model, MODEL_LEN),
        "replica": _clip(r.replica, REPLICA_LEN),
        "priority": r.priority,
        "status": r.status,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "queue_wait_s": float(r.queue_wait_s),
        "ttfb_s": None if r.ttfb_s is None else float(r.ttfb_s),
        "total_s": float(r.total_s),
        "request_id": _clip(r.request_id, REQUEST_ID_LEN),
    }


# -- the store -----------------------------------------------------------------------------------


class Store:
    """Owns the async engine. Build it in main()/lifespan, `await migrate()`, `await dispose()`."""

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
        return f"Store({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def __aenter__(self) -> Store:
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

    # -- migrations ------------------------------------------------------------------------------

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

    # -- tokens ----------------------------------------------------------------------------------

    async def create_token(
        self,
        name: str,
        *,
        priority: int,
        threshold: int,
        allowed_models: Iterable[str] | str | None = None,
        expires_at: datetime | date | str | None = None,
        token: str | None = None,
    ) -> tuple[TokenRecord, str]:
        """Returns the record and the plaintext, which is not stored anywhere and cannot be shown
        again. `token=` registers a given plaintext instead of generating one."""
        validate_name(name)
        plaintext = generate_token() if token is None else validate_plaintext(token)
        now = to_db_time(utcnow())
        token_hash = hash_token(plaintext)
        values = {
            "name": name,
            "token_hash": token_hash,
            "priority": _validate_int(priority, "priority"),
            "threshold": _validate_int(threshold, "threshold"),
            "allowed_models": _models_to_db(normalise_models(allowed_models)),
            "expires_at": to_db_time(parse_datetime(expires_at)),
            "enabled": True,
            "created_at": now,
            "updated_at": now,
        }
        try:
            async with self._begin("create a token") as conn:
                await self._check_free(conn, name, token_hash)
                await conn.execute(tokens.insert().values(**values))
                row = (await conn.execute(tokens.select().where(tokens.c.name == name))).one()
        except sa.exc.IntegrityError as exc:  # lost a race against a concurrent create
            raise DuplicateTokenError(f"a token named {name!r} or with this value already exists") from exc
        log.info("created token %s (priority %s, threshold %s)", name, priority, threshold)
        return _record(row), plaintext

    @staticmethod
    async def _check_free(conn: AsyncConnection, name: str, token_hash: str) -> None:
        rows = (
            await conn.execute(
                sa.select(tokens.c.name, tokens.c.token_hash).where(
                    sa.or_(tokens.c.name == name, tokens.c.token_hash == token_hash)
                )
            )
        ).all()
        for row in rows:
            if row.name == name:
                raise DuplicateTokenError(f"a token named {name!r} already exists")
            raise DuplicateTokenError(f"this token value is already registered (as {row.name!r})")

    async def get_token_by_plaintext(self, plaintext: str) -> TokenRecord | None:
        """By hash. Disabled and expired tokens are returned too: the caller decides."""
        return await self.get_token_by_hash(hash_token(plaintext))

    async def get_token_by_hash(self, token_hash: str) -> TokenRecord | None:
        async with self._begin("look up a token") as conn:
            row = (await conn.execute(tokens.select().where(tokens.c.token_hash == token_hash))).one_or_none()
        return None if row is None else _record(row)

    async def get_token(self, name: str) -> TokenRecord:
        async with self._begin("read a token") as conn:
            row = (await conn.execute(tokens.select().where(tokens.c.name == name))).one_or_none()
        if row is None:
            raise TokenNotFoundError(f"no token named {name!r}")
        return _record(row)

    async def list_tokens(self) -> list[TokenRecord]:
        async with self._begin("list tokens") as conn:
            rows = (await conn.execute(tokens.select().order_by(tokens.c.name))).all()
        return [_record(r) for r in rows]

    async def update_token(
        self,
        name: str,
        *,
        priority: int | None = None,
        threshold: int | None = None,
        allowed_models: Iterable[str] | str | _Unset | None = UNSET,
        expires_at: datetime | str | _Unset | None = UNSET,
        enabled: bool | None = None,
    ) -> TokenRecord:
        """Only the given fields change. `allowed_models=None` allows every model, `expires_at=None`
        removes the expiry; leave them out to keep them."""
        values: dict[str, Any] = {"updated_at": to_db_time(utcnow())}
        if priority is not None:
            values["priority"] = _validate_int(priority, "priority")
        if threshold is not None:
            values["threshold"] = _validate_int(threshold, "threshold")
        if not isinstance(allowed_models, _Unset):
            values["allowed_models"] = _models_to_db(normalise_models(allowed_models))
        if not isinstance(expires_at, _Unset):
            values["expires_at"] = to_db_time(parse_datetime(expires_at))
        if enabled is not None:
            values["enabled"] = bool(enabled)
        async with self._begin("update a token") as conn:
            result = await conn.execute(tokens.update().where(tokens.c.name == name).values(**values))
            if result.rowcount == 0:
                raise TokenNotFoundError(f"no token named {name!r}")
            row = (await conn.execute(tokens.select().where(tokens.c.name == name))).one()
        log.info("updated token %s: %s", name, sorted(k for k in values if k != "updated_at"))
        return _record(row)

    async def revoke_token(self, name: str) -> None:
        await self.update_token(name, enabled=False)

    async def import_tokens(self, items: Sequence[Mapping[str, Any]]) -> int:
        """Upsert by name, in one transaction: `{name, token | token_hash, priority, threshold,
        allowed_models?, expires_at?, enabled?}`. A missing `enabled` keeps the stored flag (a token
        revoked by hand stays revoked when the same seed list is imported again at the next start).
        Returns how many tokens were created or changed; importing the same list again returns 0."""
        wanted = [_import_values(i, item) for i, item in enumerate(items)]
        names = [w["name"] for w in wanted]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate names in import: {', '.join(dupes)}")
        for attempt in (1, 2):
            try:
                return await self._import(wanted)
            except sa.exc.IntegrityError as exc:
                if attempt == 2:
                    raise DuplicateTokenError(f"import conflicts with existing tokens: {exc.orig}") from exc
                log.info("token import raced with another writer, retrying")
        raise AssertionError("unreachable")

    async def _import(self, wanted: list[dict[str, Any]]) -> int:
        changed = 0
        now = to_db_time(utcnow())
        async with self._begin("import tokens") as conn:
            existing = {
                r.name: r
                for r in (
                    await conn.execute(tokens.select().where(tokens.c.name.in_([w["name"] for w in wanted])))
                ).all()
            }
            owners = {
                r.token_hash: r.name
                for r in (
                    await conn.execute(
                        sa.select(tokens.c.name, tokens.c.token_hash).where(
                            tokens.c.token_hash.in_([w["token_hash"] for w in wanted])
                        )
                    )
                ).all()
            }
            for w in wanted:
                owner = owners.get(w["token_hash"])
                if owner is not None and owner != w["name"]:
                    raise DuplicateTokenError(f"the token of {w['name']!r} is already registered as {owner!r}")
                row = existing.get(w["name"])
                if row is None:
                    w.setdefault("enabled", True)
                    await conn.execute(tokens.insert().values(**w, created_at=now, updated_at=now))
                    changed += 1
                    continue
                diff = {k: v for k, v in w.items() if _stored(row, k) != v}
                if diff:
                    await conn.execute(tokens.update().where(tokens.c.id == row.id).values(**diff, updated_at=now))
                    changed += 1
        log.info("imported %d tokens, %d created or changed", len(wanted), changed)
        return changed

    # -- usage -----------------------------------------------------------------------------------

    async def insert_usage(self, records: Sequence[UsageRecord]) -> None:
        """One executemany. Errors are translated (connection) or raised as-is (data)."""
        if not records:
            return
        rows = [usage_row(r) for r in records]
        async with self._begin("write usage") as conn:
            await conn.execute(usage.insert(), rows)


def _stored(row: sa.Row, key: str) -> Any:
    value = getattr(row, key)
    if key == "enabled":
        return bool(value)
    if key == "expires_at" and value is not None and value.tzinfo is not None:
        return to_db_time(value)
    return value


def _import_values(index: int, item: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"import item {index}: expected a mapping, got {type(item).__name__}")
    known = {
        "name",
        "token",
        "token_hash",
        "priority",
        "threshold",
        "allowed_models",
        "expires_at",
        "enabled",
    }
    if unknown := sorted(set(item) - known):
        raise ValueError(f"import item {index}: unknown keys {unknown}")
    name = item.get("name")
    where = f"import item {index} ({name!r})"
    try:
        validate_name(name)  # type: ignore[arg-type]
        if ("token" in item) == ("token_hash" in item):
            raise ValueError("give exactly one of 'token' (plaintext) or 'token_hash' (sha256 hex)")
        if "token" in item:
            token_hash = hash_token(validate_plaintext(item["token"]))
        else:
            token_hash = str(item["token_hash"]).lower()
            if not re.fullmatch(r"[0-9a-f]{64}", token_hash):
                raise ValueError("token_hash must be 64 hex characters (sha256 of the token)")
        for required in ("priority", "threshold"):
            if required not in item:
                raise ValueError(f"missing {required!r}")
        values: dict[str, Any] = {
            "name": name,
            "token_hash": token_hash,
            "priority": _validate_int(item["priority"], "priority"),
            "threshold": _validate_int(item["threshold"], "threshold"),
            "allowed_models": _models_to_db(normalise_models(item.get("allowed_models"))),
            "expires_at": to_db_time(parse_datetime(item.get("expires_at"))),
        }
        if "enabled" in item:
            if not isinstance(item["enabled"], bool):
                raise ValueError("enabled must be true or false")
            values["enabled"] = item["enabled"]
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return values


def _sqlite_on_connect(dbapi_conn: Any, _conn_record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the usage writer
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _upgrade_head(conn: sa.Connection) -> None:
    cfg = alembic_config()
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")
