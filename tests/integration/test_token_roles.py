"""Token roles (admin, inference): store, import, migration of existing tokens, and the CLI."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from llm_dispatcher.cli import main
from llm_dispatcher.db import Store, hash_token
from llm_dispatcher.db.migrate import alembic_config
from llm_dispatcher.db.tokens import token_columns, token_json

# -- the store -------------------------------------------------------------------------------------


async def test_a_token_gets_inference_and_no_admin_rights_by_default(store: Store) -> None:
    record, _ = await store.create_token("plain", priority=1, threshold=5)
    assert (record.admin, record.inference) == (False, True)
    assert (await store.get_token("plain")).inference is True


async def test_an_admin_only_token_needs_no_priority_or_threshold(store: Store) -> None:
    record, plaintext = await store.create_token("ops", admin=True, inference=False)
    assert (record.admin, record.inference, record.priority, record.threshold) == (True, False, 0, 0)
    assert await store.get_token_by_plaintext(plaintext) == record


async def test_a_token_with_inference_rights_still_needs_priority_and_threshold(store: Store) -> None:
    with pytest.raises(ValueError, match="missing 'priority'"):
        await store.create_token("both", admin=True, threshold=3)
    with pytest.raises(ValueError, match="missing 'threshold'"):
        await store.create_token("plain", priority=3)
    record, _ = await store.create_token("both", admin=True, inference=True, priority=2, threshold=3)
    assert (record.admin, record.inference) == (True, True)


async def test_update_grants_and_withdraws_roles(store: Store) -> None:
    await store.create_token("t", priority=1, threshold=1)
    record = await store.update_token("t", admin=True, inference=False)
    assert (record.admin, record.inference) == (True, False)
    record = await store.update_token("t", priority=4)  # roles left out stay
    assert (record.admin, record.inference, record.priority) == (True, False, 4)
    record = await store.update_token("t", admin=False, inference=True)
    assert (record.admin, record.inference) == (False, True)


def test_roles_must_be_booleans() -> None:
    with pytest.raises(ValueError, match="admin must be true or false"):
        token_columns({"admin": "yes"}, partial=True)
    with pytest.raises(ValueError, match="inference must be true or false"):
        token_columns({"inference": 1}, partial=True)


async def test_import_sets_roles_keeps_them_when_left_out_and_withdraws_them_when_false(store: Store) -> None:
    seed = {"name": "ops", "token": "sk-ops", "admin": True, "inference": False}  # no priority: admin only
    assert await store.import_tokens([seed]) == 1
    ops = await store.get_token("ops")
    assert (ops.admin, ops.inference, ops.priority, ops.threshold) == (True, False, 0, 0)
    assert await store.import_tokens([seed]) == 0  # idempotent
    left_out = {"name": "ops", "token": "sk-ops", "priority": 0, "threshold": 0}
    assert await store.import_tokens([left_out]) == 0  # roles left out: kept
    assert (await store.get_token("ops")).admin is True
    assert await store.import_tokens([{**left_out, "admin": False, "inference": True}]) == 1
    ops = await store.get_token("ops")
    assert (ops.admin, ops.inference) == (False, True)


async def test_import_of_a_new_token_without_roles_gives_the_defaults(store: Store) -> None:
    await store.import_tokens([{"name": "n", "token_hash": hash_token("sk-n"), "priority": 1, "threshold": 2}])
    n = await store.get_token("n")
    assert (n.admin, n.inference) == (False, True)


async def test_list_tokens_pages_by_name(store: Store) -> None:
    for name in ("c", "a", "d", "b"):
        await store.create_token(name, priority=1, threshold=1)
    assert [t.name for t in await store.list_tokens(limit=2)] == ["a", "b"]
    assert [t.name for t in await store.list_tokens(after="b", limit=2)] == ["c", "d"]
    assert await store.list_tokens(after="d") == []


async def test_token_json_shows_roles_and_status_never_secrets(store: Store) -> None:
    record, plaintext = await store.create_token("ops", admin=True, inference=False)
    body = token_json(record)
    assert body["admin"] is True and body["inference"] is False and body["status"] == "active"
    assert body["created_at"].endswith("Z")
    assert plaintext not in json.dumps(body) and hash_token(plaintext) not in json.dumps(body)


# -- the migration ---------------------------------------------------------------------------------


async def test_migration_0003_keeps_what_existing_tokens_could_do(database_url: str) -> None:
    """A token written before the roles existed can still call /v1 and is no admin."""
    async with Store(database_url) as store:

        def upgrade_to_0002(conn: sa.Connection) -> None:
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0002")

        async with store.engine.begin() as conn:
            await conn.run_sync(upgrade_to_0002)
            now = datetime(2026, 1, 1)
            await conn.execute(
                sa.text(
                    "INSERT INTO tokens (name, token_hash, priority, threshold, enabled, created_at, updated_at)"
                    " VALUES ('old', :h, 3, 7, :t, :now, :now)"
                ),
                {"h": hash_token("sk-old"), "t": True, "now": now},
            )
        assert await store.current_revision() == "0002"
        await store.migrate()
        old = await store.get_token("old")
        assert (old.admin, old.inference, old.priority, old.threshold) == (False, True, 3, 7)
        assert old.created_at == datetime(2026, 1, 1, tzinfo=UTC)


# -- the CLI (SQLite) ------------------------------------------------------------------------------


@pytest.fixture
def run_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([args[0], "--database-url", url, *args[1:]])
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def listed(run_cli) -> dict[str, dict]:
    code, out, _ = run_cli("tokens", "list", "--json")
    assert code == 0
    return {t["name"]: t for t in json.loads(out)}


def test_cli_create_admin_makes_an_admin_only_token_without_priority(run_cli) -> None:
    code, out, _ = run_cli("tokens", "create", "ops", "--admin")
    assert code == 0 and "roles admin" in out and "priority 0" in out
    assert (listed(run_cli)["ops"]["admin"], listed(run_cli)["ops"]["inference"]) == (True, False)


def test_cli_create_admin_with_inference_needs_priority_and_threshold(run_cli) -> None:
    code, _, err = run_cli("tokens", "create", "both", "--admin", "--inference")
    assert code == 2 and "missing 'priority'" in err
    code, out, _ = run_cli("tokens", "create", "both", "--admin", "--inference", "--priority", "2", "--threshold", "9")
    assert code == 0 and "roles inference,admin" in out
    assert listed(run_cli)["both"]["inference"] is True


def test_cli_create_without_admin_still_requires_priority(run_cli) -> None:
    code, _, err = run_cli("tokens", "create", "plain", "--threshold", "9")
    assert code == 2 and "missing 'priority'" in err
    code, out, _ = run_cli("tokens", "create", "plain", "--priority", "1", "--threshold", "9")
    assert code == 0 and "roles inference," in out


def test_cli_update_switches_roles_and_list_shows_them(run_cli) -> None:
    run_cli("tokens", "create", "t", "--priority", "1", "--threshold", "1", "-q")
    code, out, _ = run_cli("tokens", "update", "t", "--admin", "--no-inference")
    assert code == 0 and "roles admin," in out
    code, table, _ = run_cli("tokens", "list")
    assert code == 0 and "ROLES" in table.splitlines()[0]
    assert table.splitlines()[1].split()[4] == "admin"
    run_cli("tokens", "update", "t", "--no-admin", "--inference")
    assert (listed(run_cli)["t"]["admin"], listed(run_cli)["t"]["inference"]) == (False, True)
