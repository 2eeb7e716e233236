"""Token store, migrations and the TTL-cached authenticator, against every database for real."""

from __future__ import annotations

import asyncio
import hashlib
import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from llm_dispatcher.db import (
    DatabaseUnavailableError,
    DuplicateTokenError,
    Store,
    TokenCache,
    TokenNotFoundError,
    TokenRecord,
    hash_token,
)
from llm_dispatcher.db.cache import (
    EXPIRED_MESSAGE,
    MALFORMED_MESSAGE,
    MISSING_MESSAGE,
    REVOKED_MESSAGE,
    UNKNOWN_MESSAGE,
)
from llm_dispatcher.db.migrate import head_revision
from llm_dispatcher.db.models import tokens
from llm_dispatcher.db.tokens import token_columns
from llm_dispatcher.errors import AuthenticationError

# -- migrations ------------------------------------------------------------------------------------


async def test_migrate_creates_schema_at_head_and_is_idempotent(database_url: str) -> None:
    async with Store(database_url) as store:
        assert await store.current_revision() is None
        await store.migrate()
        await store.migrate()
        assert await store.current_revision() == head_revision()
        async with store.engine.connect() as conn:
            names = await conn.run_sync(lambda c: set(sa.inspect(c).get_table_names()))
        assert {"tokens", "usage", "alembic_version"} <= names
    async with Store(database_url) as again:  # a second process starting later
        await again.migrate()
        assert await again.current_revision() == head_revision()


async def test_concurrent_migrations_from_two_stores_both_succeed(database_url: str) -> None:
    a, b = Store(database_url), Store(database_url)
    try:
        await asyncio.gather(a.migrate(), b.migrate())
        assert await a.current_revision() == head_revision()
        await a.create_token("after-race", priority=1, threshold=1)
    finally:
        await a.dispose()
        await b.dispose()


# -- store -----------------------------------------------------------------------------------------


async def test_tokens_are_stored_hashed_never_in_plaintext(store: Store) -> None:
    record, plaintext = await store.create_token("alice", priority=5, threshold=100)
    assert plaintext.startswith("sk-llmd-") and len(plaintext) > 40
    assert hash_token(plaintext) == hashlib.sha256(plaintext.encode()).hexdigest()
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(tokens))).all()
    assert len(rows) == 1
    assert rows[0].token_hash == hash_token(plaintext)
    assert not any(plaintext in str(v) for v in rows[0])
    assert record == await store.get_token_by_plaintext(plaintext)
    assert await store.get_token_by_plaintext(plaintext + "x") is None


async def test_create_returns_a_fresh_plaintext_each_time_and_round_trips_fields(store: Store) -> None:
    expires = datetime(2031, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    a, pa = await store.create_token("a", priority=7, threshold=50, allowed_models=["m1", "m2"], expires_at=expires)
    b, pb = await store.create_token("b", priority=0, threshold=0)
    assert pa != pb
    assert a == TokenRecord(a.id, "a", 7, 50, ("m1", "m2"), expires, True)
    assert a.expires_at is not None and a.expires_at.tzinfo is not None
    assert b.allowed_models is None and b.expires_at is None
    assert a.allows("m1") and not a.allows("m3") and b.allows("anything")
    assert [t.name for t in await store.list_tokens()] == ["a", "b"]


async def test_create_imports_a_given_plaintext(store: Store) -> None:
    record, plaintext = await store.create_token("ci", priority=1, threshold=2, token="sk-given-secret")
    assert plaintext == "sk-given-secret"
    assert await store.get_token_by_plaintext("sk-given-secret") == record


async def test_create_refuses_a_duplicate_name_or_token_value(store: Store) -> None:
    await store.create_token("dup", priority=1, threshold=1, token="sk-one")
    with pytest.raises(DuplicateTokenError, match="named 'dup' already exists"):
        await store.create_token("dup", priority=1, threshold=1)
    with pytest.raises(DuplicateTokenError, match="already registered"):
        await store.create_token("other", priority=1, threshold=1, token="sk-one")
    assert len(await store.list_tokens()) == 1


async def test_create_validates_its_arguments(store: Store) -> None:
    with pytest.raises(ValueError, match="invalid token name"):
        await store.create_token("has space", priority=1, threshold=1)
    with pytest.raises(ValueError, match="priority"):
        await store.create_token("x", priority=-1, threshold=1)
    with pytest.raises(ValueError, match="allowed models is empty"):
        await store.create_token("x", priority=1, threshold=1, allowed_models=[])
    assert await store.list_tokens() == []


async def test_update_changes_only_given_fields_and_can_clear_models_and_expiry(store: Store) -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    await store.create_token("u", priority=1, threshold=10, allowed_models="m1", expires_at=expires)
    r = await store.update_token("u", priority=9)
    assert (r.priority, r.threshold, r.allowed_models, r.expires_at) == (9, 10, ("m1",), expires)
    r = await store.update_token("u", allowed_models=None, expires_at=None, threshold=3)
    assert (r.priority, r.threshold, r.allowed_models, r.expires_at) == (9, 3, None, None)
    r = await store.update_token("u", allowed_models=["a", "b"], expires_at="2032-05-01T00:00:00Z")
    assert r.allowed_models == ("a", "b")
    assert r.expires_at == datetime(2032, 5, 1, tzinfo=UTC)
    with pytest.raises(TokenNotFoundError, match="no token named 'nope'"):
        await store.update_token("nope", priority=1)


async def test_revoke_disables_and_enable_restores(store: Store) -> None:
    _, plaintext = await store.create_token("r", priority=1, threshold=1)
    await store.revoke_token("r")
    revoked = await store.get_token_by_plaintext(plaintext)
    assert revoked is not None and revoked.enabled is False  # disabled tokens are still found
    assert (await store.update_token("r", enabled=True)).enabled is True
    with pytest.raises(TokenNotFoundError):
        await store.revoke_token("ghost")


async def test_import_upserts_by_name_and_is_idempotent(store: Store) -> None:
    items = [
        {"name": "svc-a", "token": "sk-a-secret", "priority": 5, "threshold": 100},
        {
            "name": "svc-b",
            "token": "sk-b-secret",
            "priority": 1,
            "threshold": 10,
            "allowed_models": ["m"],
            "expires_at": "2030-01-01T00:00:00Z",
        },
    ]
    assert await store.import_tokens(items) == 2
    first = await store.list_tokens()
    assert await store.import_tokens(items) == 0
    assert await store.list_tokens() == first

    # changed fields and a rotated token are applied in place (same id)
    items[0] = {**items[0], "priority": 6, "token": "sk-a-rotated"}
    assert await store.import_tokens(items) == 1
    a = await store.get_token_by_plaintext("sk-a-rotated")
    assert a is not None and a.priority == 6 and a.id == first[0].id
    assert await store.get_token_by_plaintext("sk-a-secret") is None


async def test_import_keeps_a_manual_revocation_unless_enabled_is_given(store: Store) -> None:
    item = {"name": "seeded", "token": "sk-seeded", "priority": 1, "threshold": 1}
    await store.import_tokens([item])
    await store.revoke_token("seeded")
    assert await store.import_tokens([item]) == 0
    assert (await store.get_token("seeded")).enabled is False
    assert await store.import_tokens([{**item, "enabled": True}]) == 1
    assert (await store.get_token("seeded")).enabled is True


async def test_import_accepts_a_precomputed_hash(store: Store) -> None:
    await store.import_tokens([{"name": "h", "token_hash": hash_token("sk-hashed"), "priority": 2, "threshold": 3}])
    record = await store.get_token_by_plaintext("sk-hashed")
    assert record is not None and record.name == "h"


async def test_import_rejects_bad_items_without_writing_anything(store: Store) -> None:
    good = {"name": "ok", "token": "sk-ok", "priority": 1, "threshold": 1}
    with pytest.raises(ValueError, match="missing 'threshold'"):
        await store.import_tokens([good, {"name": "bad", "token": "sk-bad", "priority": 1}])
    with pytest.raises(ValueError, match="duplicate names"):
        await store.import_tokens([good, good])
    with pytest.raises(ValueError, match="unknown keys"):
        await store.import_tokens([{**good, "prio": 1}])
    await store.create_token("owner", priority=1, threshold=1, token="sk-taken")
    with pytest.raises(DuplicateTokenError, match="already registered as 'owner'"):
        await store.import_tokens([good, {**good, "name": "thief", "token": "sk-taken"}])
    assert [t.name for t in await store.list_tokens()] == ["owner"]


BAD_FIELDS = [
    ("name", "has space", "invalid token name 'has space'"),
    ("priority", -1, "priority must be a non-negative integer, got -1"),
    ("threshold", True, "threshold must be a non-negative integer, got True"),
    ("allowed_models", [], "allowed models is empty"),
    ("allowed_models", ["m", 3], "model names must be strings, got 3"),
    ("expires_at", "next tuesday", "not an ISO 8601 date-time: 'next tuesday'"),
    ("enabled", "yes", "enabled must be true or false"),
    ("token", "sk with space", "a token must be a non-empty string without whitespace"),
    ("token_hash", "abc", "token_hash must be 64 hex characters"),
    ("rpm", 0, "rpm must be a positive integer or null (no limit), got 0"),
    ("max_parallel", "4", "max_parallel must be a positive integer or null"),
]


@pytest.mark.parametrize(("field", "value", "message"), BAD_FIELDS, ids=[f"{f}={v!r}" for f, v, _ in BAD_FIELDS])
def test_one_validation_of_token_fields_for_whole_tokens_and_updates(field: str, value: object, message: str) -> None:
    whole = {"name": "x", "token": "sk-x", "priority": 1, "threshold": 1}
    if field == "token_hash":
        del whole["token"]
    with pytest.raises(ValueError, match=re.escape(message)):
        token_columns({**whole, field: value})
    if field not in ("name", "token", "token_hash"):  # what an update may change
        with pytest.raises(ValueError, match=re.escape(message)):
            token_columns({field: value}, partial=True)


def test_token_columns_turn_a_whole_token_into_its_column_values() -> None:
    assert token_columns({"name": "x", "token": "sk-x", "priority": 2, "threshold": 3}) == {
        "name": "x",
        "token_hash": hash_token("sk-x"),
        "priority": 2,
        "threshold": 3,
        "allowed_models": None,  # left out: every model
        "expires_at": None,  # left out: no expiry
        **dict.fromkeys(("max_parallel", "rpm", "tpm", "user_max_parallel")),  # left out: no limits
    }  # and no `enabled`: an import keeps the stored flag
    assert token_columns({"allowed_models": "a, b,a", "expires_at": "2030-01-01T01:00:00+01:00"}, partial=True) == {
        "allowed_models": '["a", "b"]',
        "expires_at": datetime(2030, 1, 1),  # naive UTC, as stored
    }
    for missing, message in (("priority", "missing 'priority'"), ("token", "exactly one of 'token'")):
        item = {"name": "x", "token": "sk-x", "priority": 2, "threshold": 3}
        del item[missing]
        with pytest.raises(ValueError, match=message):
            token_columns(item)
    with pytest.raises(ValueError, match="exactly one of 'token'"):
        token_columns({"name": "x", "token": "sk-x", "token_hash": hash_token("sk-x"), "priority": 2, "threshold": 3})


async def test_create_update_and_import_refuse_a_bad_field_with_the_same_message(store: Store) -> None:
    await store.create_token("ok", priority=1, threshold=1)
    message = "priority must be a non-negative integer, got -3"
    with pytest.raises(ValueError, match=re.escape(message)):
        await store.create_token("x", priority=-3, threshold=1)
    with pytest.raises(ValueError, match=re.escape(message)):
        await store.update_token("ok", priority=-3)
    with pytest.raises(ValueError, match=re.escape(f"import item 0 ('x'): {message}")):
        await store.import_tokens([{"name": "x", "token": "sk-x", "priority": -3, "threshold": 1}])
    with pytest.raises(ValueError, match="enabled must be true or false"):
        await store.update_token("ok", enabled="no")  # type: ignore[arg-type]
    assert [(t.name, t.priority, t.enabled) for t in await store.list_tokens()] == [("ok", 1, True)]


# -- authentication and the TTL cache ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.now = datetime.now(UTC)

    def monotonic(self) -> float:
        return self.t

    def utcnow(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def db_calls(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the cache's queries; each still goes to the real database."""
    calls: list[str] = []
    real = store.get_token_by_hash

    async def counting(token_hash: str) -> TokenRecord | None:
        calls.append(token_hash)
        return await real(token_hash)

    monkeypatch.setattr(store, "get_token_by_hash", counting)
    return calls


def cache_for(store: Store, clock: Clock, ttl_s: float = 10.0, **kw) -> TokenCache:
    return TokenCache(store, ttl_s=ttl_s, clock=clock.monotonic, now=clock.utcnow, **kw)


async def test_authenticate_returns_the_record_for_a_valid_bearer_token(store: Store, clock: Clock) -> None:
    record, plaintext = await store.create_token("ok", priority=3, threshold=5)
    cache = cache_for(store, clock)
    assert await cache.authenticate(f"Bearer {plaintext}") == record
    assert await cache.authenticate(f"bearer   {plaintext} ") == record


async def test_authenticate_gives_distinct_errors_for_each_failure(store: Store, clock: Clock) -> None:
    _, revoked = await store.create_token("revoked", priority=1, threshold=1)
    await store.revoke_token("revoked")
    _, expired = await store.create_token(
        "expired", priority=1, threshold=1, expires_at=clock.now - timedelta(minutes=1)
    )
    cache = cache_for(store, clock)
    cases = {
        "missing": (None, MISSING_MESSAGE),
        "empty": ("", MISSING_MESSAGE),
        "malformed-scheme": ("Basic dXNlcjpwYXNz", MALFORMED_MESSAGE),
        "malformed-no-token": ("Bearer", MALFORMED_MESSAGE),
        "malformed-extra": ("Bearer a b", MALFORMED_MESSAGE),
        "unknown": ("Bearer sk-llmd-nobody", UNKNOWN_MESSAGE),
        "revoked": (f"Bearer {revoked}", REVOKED_MESSAGE),
    }
    messages = {}
    for label, (header, expected) in cases.items():
        with pytest.raises(AuthenticationError) as info:
            await cache.authenticate(header)
        assert info.value.message == expected, label
        assert info.value.status == 401
        messages[label] = info.value.message
    with pytest.raises(AuthenticationError, match="expired at") as info:
        await cache.authenticate(f"Bearer {expired}")
    messages["expired"] = info.value.message
    assert EXPIRED_MESSAGE.split("{")[0] in messages["expired"]
    assert len({MISSING_MESSAGE, MALFORMED_MESSAGE, UNKNOWN_MESSAGE, REVOKED_MESSAGE, messages["expired"]}) == 5


async def test_second_lookup_within_ttl_does_not_hit_the_database(
    store: Store, clock: Clock, db_calls: list[str]
) -> None:
    _, plaintext = await store.create_token("hot", priority=1, threshold=1)
    cache = cache_for(store, clock)
    for _ in range(5):
        await cache.authenticate(f"Bearer {plaintext}")
    assert len(db_calls) == 1
    clock.advance(10.1)
    await cache.authenticate(f"Bearer {plaintext}")
    assert len(db_calls) == 2


async def test_unknown_tokens_are_cached_too_and_new_tokens_appear_after_ttl(
    store: Store, clock: Clock, db_calls: list[str]
) -> None:
    cache = cache_for(store, clock)
    for _ in range(3):
        with pytest.raises(AuthenticationError, match="Invalid API key"):
            await cache.authenticate("Bearer sk-later")
    assert len(db_calls) == 1
    await store.create_token("later", priority=1, threshold=1, token="sk-later")
    with pytest.raises(AuthenticationError):
        await cache.authenticate("Bearer sk-later")
    clock.advance(11)
    assert (await cache.authenticate("Bearer sk-later")).name == "later"


async def test_revocation_takes_effect_after_the_ttl(store: Store, clock: Clock) -> None:
    _, plaintext = await store.create_token("rv", priority=1, threshold=1)
    cache = cache_for(store, clock, ttl_s=5)
    await cache.authenticate(f"Bearer {plaintext}")
    await store.revoke_token("rv")
    await cache.authenticate(f"Bearer {plaintext}")  # still cached
    clock.advance(5)
    with pytest.raises(AuthenticationError, match="revoked"):
        await cache.authenticate(f"Bearer {plaintext}")


async def test_expiry_is_checked_on_every_call_even_when_cached(
    store: Store, clock: Clock, db_calls: list[str]
) -> None:
    _, plaintext = await store.create_token(
        "soon", priority=1, threshold=1, expires_at=clock.now + timedelta(seconds=2)
    )
    cache = cache_for(store, clock, ttl_s=3600)
    await cache.authenticate(f"Bearer {plaintext}")
    clock.now += timedelta(seconds=3)  # wall clock only: the cache entry is still fresh
    with pytest.raises(AuthenticationError, match="expired"):
        await cache.authenticate(f"Bearer {plaintext}")
    assert len(db_calls) == 1


async def test_concurrent_lookups_of_one_token_share_a_single_query(
    store: Store, clock: Clock, db_calls: list[str]
) -> None:
    record, plaintext = await store.create_token("burst", priority=1, threshold=1)
    cache = cache_for(store, clock)
    results = await asyncio.gather(*(cache.authenticate(f"Bearer {plaintext}") for _ in range(50)))
    assert results == [record] * 50
    assert len(db_calls) == 1


async def test_cache_size_is_bounded(store: Store, clock: Clock) -> None:
    cache = cache_for(store, clock, max_entries=3)
    for i in range(10):
        with pytest.raises(AuthenticationError):
            await cache.authenticate(f"Bearer sk-unknown-{i}")
    assert len(cache) == 3


async def test_stale_entry_is_served_when_the_database_fails(store: Store, clock: Clock) -> None:
    record, plaintext = await store.create_token("resilient", priority=1, threshold=1)
    cache = cache_for(store, clock, ttl_s=1)
    await cache.authenticate(f"Bearer {plaintext}")
    async with store.engine.begin() as conn:
        await conn.run_sync(tokens.drop)  # a real failure on the next query
    clock.advance(2)
    assert await cache.authenticate(f"Bearer {plaintext}") == record
    with pytest.raises(DatabaseUnavailableError) as info:  # never seen: nothing stale to fall back on
        await cache.authenticate("Bearer sk-never-seen")
    assert info.value.status == 503
