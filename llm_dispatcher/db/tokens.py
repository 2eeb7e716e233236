"""API tokens: the one validation of a token's fields (pure) and the `tokens` table's operations.

Tokens are kept as the SHA-256 hex of their plaintext; the plaintext exists only in the return value
of `create_token` (and in what the operator chose to import).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from llm_dispatcher.db.engine import Database
from llm_dispatcher.db.errors import DuplicateTokenError, TokenNotFoundError
from llm_dispatcher.db.models import MODEL_LEN, NAME_LEN, TokenRecord, from_db_time, to_db_time, tokens, utcnow
from llm_dispatcher.timespec import parse_datetime

log = logging.getLogger(__name__)

TOKEN_PREFIX: Final = "sk-llmd-"
NAME_RE: Final = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@:+-]{{0,{NAME_LEN - 1}}}")
_HASH_RE: Final = re.compile(r"[0-9a-f]{64}")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


def hash_token(plaintext: str) -> str:
    """What the database stores instead of the token: SHA-256 hex (tokens carry 256 random bits)."""
    return hashlib.sha256(plaintext.encode("utf-8")).hexdigest()


def generate_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


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


def validate_hash(token_hash: Any) -> str:
    value = str(token_hash).lower()
    if not _HASH_RE.fullmatch(value):
        raise ValueError("token_hash must be 64 hex characters (sha256 of the token)")
    return value


def _validate_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _validate_bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false")
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


def _models_to_db(models: Iterable[str] | str | None) -> str | None:
    normalised = normalise_models(models)
    return None if normalised is None else json.dumps(list(normalised))


def _models_from_db(value: str | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(json.loads(value))


LIMIT_FIELDS: Final = ("max_parallel", "rpm", "tpm", "user_max_parallel")


def _validate_limit(value: Any, what: str) -> int | None:
    """A per-key limit: a positive integer, or None for no limit."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer or null (no limit), got {value!r}")
    return value


# Each field a token may be given with, and how it becomes its column value (`token` becomes `token_hash`).
_COLUMNS: Final[dict[str, Callable[[Any], Any]]] = {
    "name": validate_name,
    "token": lambda token: hash_token(validate_plaintext(token)),
    "token_hash": validate_hash,
    "priority": lambda value: _validate_int(value, "priority"),
    "threshold": lambda value: _validate_int(value, "threshold"),
    "allowed_models": _models_to_db,
    "expires_at": lambda value: to_db_time(parse_datetime(value)),
    "enabled": lambda value: _validate_bool(value, "enabled"),
    "batch_priority": lambda value: None if value is None else _validate_int(value, "batch_priority"),
    "admin": lambda value: _validate_bool(value, "admin"),
    "inference": lambda value: _validate_bool(value, "inference"),
    **{name: functools.partial(_validate_limit, what=name) for name in LIMIT_FIELDS},
}
TOKEN_FIELDS: Final = frozenset(_COLUMNS)
# What a whole token left out means (an import sets these, so removing them from a seed file clears them).
# `enabled`, `admin` and `inference` have none: left out, a new token is enabled, with inference and
# without admin rights (the columns' defaults), and a stored one keeps its flags.
_WHOLE_TOKEN_DEFAULTS: Final = {"allowed_models": None, "expires_at": None, **dict.fromkeys(LIMIT_FIELDS)}
_BOOL_COLUMNS: Final = ("enabled", "admin", "inference")


def token_columns(fields: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """The one validation of a token's fields, shared by create, update and import: the column
    values of `{name, token | token_hash, priority, threshold, allowed_models?, expires_at?, enabled?,
    batch_priority?, admin?, inference?}`. A whole token needs the name, exactly one of `token`
    (plaintext) or `token_hash` (sha256 hex), and priority and threshold unless it has no inference
    rights (then they default to 0); left out, it means every model and no expiry. `partial` (an
    update) checks and returns only the fields given. ValueError otherwise."""
    if unknown := sorted(set(fields) - TOKEN_FIELDS):
        raise ValueError(f"unknown keys {unknown}")
    if not partial:
        validate_name(fields.get("name"))  # type: ignore[arg-type]
        if ("token" in fields) == ("token_hash" in fields):
            raise ValueError("give exactly one of 'token' (plaintext) or 'token_hash' (sha256 hex)")
        fields = {**_WHOLE_TOKEN_DEFAULTS, **fields}
        for required in ("priority", "threshold"):
            if required not in fields:
                if fields.get("inference", True) is not False:
                    raise ValueError(f"missing {required!r} (only a token without inference rights may leave it out)")
                fields[required] = 0
    return {("token_hash" if k == "token" else k): _COLUMNS[k](v) for k, v in fields.items()}


def _record(row: sa.Row) -> TokenRecord:
    return TokenRecord(
        id=row.id,
        name=row.name,
        priority=row.priority,
        threshold=row.threshold,
        allowed_models=_models_from_db(row.allowed_models),
        expires_at=from_db_time(row.expires_at),
        enabled=bool(row.enabled),
        batch_priority=row.batch_priority,
        admin=bool(row.admin),
        inference=bool(row.inference),
        max_parallel=row.max_parallel,
        rpm=row.rpm,
        tpm=row.tpm,
        user_max_parallel=row.user_max_parallel,
        created_at=from_db_time(row.created_at),
    )


def token_status(record: TokenRecord, now: datetime | None = None) -> str:
    """`revoked` (disabled), `expired` or `active`."""
    if not record.enabled:
        return "revoked"
    return "expired" if record.is_expired(now) else "active"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def token_json(record: TokenRecord, now: datetime | None = None) -> dict[str, Any]:
    """A token as the CLI's `--json` and the admin API show it (never its value or hash)."""
    return {
        "id": record.id,
        "name": record.name,
        "priority": record.priority,
        "threshold": record.threshold,
        "batch_priority": record.batch_priority,
        "allowed_models": None if record.allowed_models is None else list(record.allowed_models),
        "expires_at": _iso(record.expires_at),
        "enabled": record.enabled,
        "admin": record.admin,
        "inference": record.inference,
        **{name: getattr(record, name) for name in LIMIT_FIELDS},
        "status": token_status(record, now),
        "created_at": _iso(record.created_at),
    }


def _stored(row: sa.Row, key: str) -> Any:
    value = getattr(row, key)
    if key in _BOOL_COLUMNS:
        return bool(value)
    if key == "expires_at" and value is not None and value.tzinfo is not None:
        return to_db_time(value)
    return value


def _import_columns(index: int, item: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(item, Mapping):
        raise ValueError(f"import item {index}: expected a mapping, got {type(item).__name__}")
    try:
        return token_columns(item)
    except ValueError as exc:
        raise ValueError(f"import item {index} ({item.get('name')!r}): {exc}") from None


# -- the table -----------------------------------------------------------------------------------


class TokenStore(Database):
    async def create_token(
        self,
        name: str,
        *,
        priority: int | None = None,
        threshold: int | None = None,
        allowed_models: Iterable[str] | str | None = None,
        expires_at: datetime | date | str | None = None,
        token: str | None = None,
        batch_priority: int | None = None,
        admin: bool = False,
        inference: bool = True,
        **limits: int | None,
    ) -> tuple[TokenRecord, str]:
        """Returns the record and the plaintext, which is not stored anywhere and cannot be shown
        again. `token=` registers a given plaintext instead of generating one. Priority and
        threshold may be left out only for a token without inference rights (they are 0 then)."""
        plaintext = generate_token() if token is None else token
        fields: dict[str, Any] = {
            "name": name,
            "token": plaintext,
            "allowed_models": allowed_models,
            "expires_at": expires_at,
            "enabled": True,
            "batch_priority": batch_priority,
            "admin": admin,
            "inference": inference,
            **limits,
        }
        fields.update({k: v for k, v in (("priority", priority), ("threshold", threshold)) if v is not None})
        values = token_columns(fields)
        now = to_db_time(utcnow())
        try:
            async with self._begin("create a token") as conn:
                await self._check_free(conn, name, values["token_hash"])
                await conn.execute(tokens.insert().values(**values, created_at=now, updated_at=now))
                row = (await conn.execute(tokens.select().where(tokens.c.name == name))).one()
        except sa.exc.IntegrityError as exc:  # lost a race against a concurrent create
            raise DuplicateTokenError(f"a token named {name!r} or with this value already exists") from exc
        log.info(
            "created token %s (priority %s, threshold %s, admin %s, inference %s)",
            name,
            values["priority"],
            values["threshold"],
            admin,
            inference,
        )
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

    async def get_token_by_id(self, token_id: int) -> TokenRecord | None:
        async with self._begin("read a token") as conn:
            row = (await conn.execute(tokens.select().where(tokens.c.id == token_id))).one_or_none()
        return None if row is None else _record(row)

    async def get_token(self, name: str) -> TokenRecord:
        async with self._begin("read a token") as conn:
            row = (await conn.execute(tokens.select().where(tokens.c.name == name))).one_or_none()
        if row is None:
            raise TokenNotFoundError(f"no token named {name!r}")
        return _record(row)

    async def list_tokens(self, *, after: str | None = None, limit: int | None = None) -> list[TokenRecord]:
        """By name; `after` continues past that name, `limit` caps the page (ask for one more than
        you show to know whether there is a next page)."""
        query = tokens.select().order_by(tokens.c.name)
        if after is not None:
            query = query.where(tokens.c.name > after)
        if limit is not None:
            query = query.limit(_validate_int(limit, "limit"))
        async with self._begin("list tokens") as conn:
            rows = (await conn.execute(query)).all()
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
        batch_priority: int | _Unset | None = UNSET,
        admin: bool | None = None,
        inference: bool | None = None,
        **limits: int | None,
    ) -> TokenRecord:
        """Only the given fields change. `allowed_models=None` allows every model, `expires_at=None`
        removes the expiry, a limit (max_parallel, rpm, tpm, user_max_parallel) given as None removes
        it; leave them out to keep them."""
        given = (
            ("priority", priority),
            ("threshold", threshold),
            ("enabled", enabled),
            ("admin", admin),
            ("inference", inference),
        )
        changes: dict[str, Any] = {k: v for k, v in given if v is not None}
        for k, v in (
            ("allowed_models", allowed_models),
            ("expires_at", expires_at),
            ("batch_priority", batch_priority),
        ):
            if not isinstance(v, _Unset):
                changes[k] = v
        changes.update(limits)
        values = token_columns(changes, partial=True)
        async with self._begin("update a token") as conn:
            result = await conn.execute(
                tokens.update().where(tokens.c.name == name).values(**values, updated_at=to_db_time(utcnow()))
            )
            if result.rowcount == 0:
                raise TokenNotFoundError(f"no token named {name!r}")
            row = (await conn.execute(tokens.select().where(tokens.c.name == name))).one()
        log.info("updated token %s: %s", name, sorted(values))
        return _record(row)

    async def revoke_token(self, name: str) -> None:
        await self.update_token(name, enabled=False)

    async def import_tokens(self, items: Sequence[Mapping[str, Any]]) -> int:
        """Upsert by name, in one transaction: `{name, token | token_hash, priority, threshold,
        allowed_models?, expires_at?, enabled?, batch_priority?, admin?, inference?}`. A missing
        `enabled` keeps the stored flag (a token revoked by hand stays revoked when the same seed list
        is imported again at the next start); so do missing `admin` and `inference` (withdraw a role
        with an explicit false). Returns how many tokens were created or changed; importing the same
        list again returns 0."""
        wanted = [_import_columns(i, item) for i, item in enumerate(items)]
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
                    w = {"enabled": True, "admin": False, "inference": True, **w}
                    await conn.execute(tokens.insert().values(**w, created_at=now, updated_at=now))
                    changed += 1
                    continue
                diff = {k: v for k, v in w.items() if _stored(row, k) != v}
                if diff:
                    await conn.execute(tokens.update().where(tokens.c.id == row.id).values(**diff, updated_at=now))
                    changed += 1
        log.info("imported %d tokens, %d created or changed", len(wanted), changed)
        return changed
