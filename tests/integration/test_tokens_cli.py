"""`llm-dispatcher tokens ...` and `db ...` end to end against a temporary SQLite file."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from llm_dispatcher.cli import main
from llm_dispatcher.db import Store, hash_token
from llm_dispatcher.db.migrate import head_revision
from llm_dispatcher.db.models import tokens
from llm_dispatcher.db.tokens_file import load_tokens_file, parse_tokens
from llm_dispatcher.tokens_cli import parse_duration


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file (in a directory not created yet) for the CLI's database."""
    return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'cli.db'}"


@pytest.fixture
def run_cli(sqlite_url: str, capsys: pytest.CaptureFixture[str]):
    """Runs `llm-dispatcher <args>` in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([args[0], "--database-url", sqlite_url, *args[1:]])
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def stored_rows(sqlite_url: str) -> list[sa.Row]:
    async def read() -> list[sa.Row]:
        async with Store(sqlite_url) as store, store.engine.connect() as conn:
            return list((await conn.execute(sa.select(tokens))).all())

    return asyncio.run(read())


def test_create_quiet_prints_only_the_token_and_stores_its_hash(run_cli, sqlite_url: str) -> None:
    code, out, err = run_cli("tokens", "create", "alice", "--priority", "5", "--threshold", "100", "--quiet")
    assert code == 0 and err == ""
    token = out.strip()
    assert out == token + "\n" and token.startswith("sk-llmd-")
    (row,) = stored_rows(sqlite_url)
    assert row.token_hash == hash_token(token)
    assert not any(token in str(v) for v in row)


def test_create_explains_that_the_token_is_shown_once(run_cli) -> None:
    code, out, _ = run_cli(
        "tokens", "create", "bob", "--priority", "1", "--threshold", "10", "--models", "m1, m2", "--expires-in", "30d"
    )
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[-1].startswith("sk-llmd-")
    assert "cannot be shown again" in out
    assert "m1, m2" in out and "expires 20" in out


def test_list_shows_settings_but_never_secrets(run_cli, sqlite_url: str) -> None:
    _, out, _ = run_cli("tokens", "create", "alice", "--priority", "5", "--threshold", "100", "-q")
    token = out.strip()
    run_cli("tokens", "create", "bob", "--priority", "1", "--threshold", "10", "--models", "m1", "-q")
    run_cli("tokens", "revoke", "bob")
    (row,) = [r for r in stored_rows(sqlite_url) if r.name == "alice"]

    code, table, _ = run_cli("tokens", "list")
    assert code == 0
    assert "alice" in table and "bob" in table and "revoked" in table and "active" in table
    code, as_json, _ = run_cli("tokens", "list", "--json")
    assert code == 0
    items = {i["name"]: i for i in json.loads(as_json)}
    assert items["bob"] == {
        "id": items["bob"]["id"],
        "name": "bob",
        "priority": 1,
        "threshold": 10,
        "batch_priority": None,
        "allowed_models": ["m1"],
        "expires_at": None,
        "enabled": False,
        "admin": False,
        "inference": True,
        "max_parallel": None,
        "rpm": None,
        "tpm": None,
        "user_max_parallel": None,
        "status": "revoked",
        "created_at": items["bob"]["created_at"],
    }
    for output in (table, as_json):
        assert token not in output and row.token_hash not in output and "sk-llmd-" not in output


def test_update_changes_settings_and_enable_undoes_revoke(run_cli) -> None:
    run_cli("tokens", "create", "u", "--priority", "1", "--threshold", "1", "--models", "a", "--expires-in", "1h", "-q")
    code, out, _ = run_cli("tokens", "update", "u", "--priority", "9", "--all-models", "--no-expiry")
    assert code == 0 and "priority 9" in out and "all models" in out and "no expiry" in out
    run_cli("tokens", "revoke", "u")
    code, out, _ = run_cli("tokens", "update", "u", "--enable", "--expires-at", "2031-01-02T03:04:05+01:00")
    assert code == 0 and "active" in out and "2031-01-02T02:04:05Z" in out
    (item,) = json.loads(run_cli("tokens", "list", "--json")[1])
    assert (item["priority"], item["allowed_models"], item["enabled"]) == (9, None, True)


def test_unknown_and_duplicate_names_exit_2_with_a_clear_message(run_cli) -> None:
    assert run_cli("tokens", "create", "dup", "--priority", "1", "--threshold", "1", "-q")[0] == 0
    code, out, err = run_cli("tokens", "create", "dup", "--priority", "1", "--threshold", "1", "-q")
    assert (code, out) == (2, "") and "a token named 'dup' already exists" in err
    code, _, err = run_cli("tokens", "revoke", "ghost")
    assert code == 2 and "no token named 'ghost'" in err
    code, _, err = run_cli("tokens", "update", "ghost", "--priority", "1")
    assert code == 2 and "no token named 'ghost'" in err
    code, _, err = run_cli("tokens", "update", "dup")
    assert code == 2 and "nothing to update" in err


def test_bad_arguments_are_refused_by_the_parser(run_cli) -> None:
    assert run_cli("tokens", "create", "x", "--priority", "-1", "--threshold", "1")[0] == 2
    assert run_cli("tokens", "create", "x", "--priority", "1", "--threshold", "1", "--expires-in", "soon")[0] == 2
    code, _, err = run_cli("tokens", "update", "x", "--models", "a", "--all-models")
    assert code == 2 and "not allowed with" in err


def test_import_yaml_and_json_is_idempotent(run_cli, tmp_path: Path) -> None:
    yaml_file = tmp_path / "seed.yaml"
    yaml_file.write_text(
        "tokens:\n"
        "  - name: svc\n"
        "    token: sk-svc-secret\n"
        "    priority: 3\n"
        "    threshold: 30\n"
        "    allowed_models: [m1]\n"
        "    expires_at: 2030-01-01\n"
    )
    code, out, _ = run_cli("tokens", "import", str(yaml_file))
    assert code == 0 and "1 created or changed" in out
    code, out, _ = run_cli("tokens", "import", str(yaml_file))
    assert code == 0 and "0 created or changed" in out

    json_file = tmp_path / "seed.json"
    json_file.write_text(json.dumps([{"name": "svc", "token": "sk-svc-secret", "priority": 4, "threshold": 30}]))
    code, out, _ = run_cli("tokens", "import", str(json_file))
    assert code == 0 and "1 created or changed" in out
    (item,) = json.loads(run_cli("tokens", "list", "--json")[1])
    assert (item["priority"], item["allowed_models"], item["expires_at"]) == (4, None, None)

    json_file.write_text(json.dumps([{"name": "bad", "priority": 1, "threshold": 1}]))
    code, _, err = run_cli("tokens", "import", str(json_file))
    assert code == 2 and "exactly one of 'token'" in err
    code, _, err = run_cli("tokens", "import", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in err


def test_db_upgrade_and_current(run_cli, sqlite_url: str) -> None:
    code, out, _ = run_cli("db", "current")
    assert (code, out) == (0, "none\n")
    code, out, _ = run_cli("db", "upgrade")
    assert code == 0 and f"to {head_revision()}" in out
    code, out, _ = run_cli("db", "upgrade")
    assert code == 0 and "already at revision" in out
    code, out, _ = run_cli("db", "current")
    assert (code, out) == (0, f"{head_revision()}\n")


def test_database_url_defaults_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("LLMD_DATABASE_URL", url)
    assert main(["tokens", "create", "envtok", "--priority", "1", "--threshold", "1", "-q"]) == 0
    assert [r.name for r in stored_rows(url)] == ["envtok"]


def test_unreachable_database_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tokens", "list", "--database-url", "postgresql+asyncpg://nobody@127.0.0.1:1/none"])
    assert code == 1
    assert "database unavailable" in capsys.readouterr().err


def test_console_script_in_a_subprocess_prints_only_the_token(sqlite_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "LLMD_DATABASE_URL": sqlite_url}
    args = [sys.executable, "-m", "llm_dispatcher", "tokens", "create", "sub", "--priority", "2", "--threshold", "3"]
    proc = subprocess.run([*args, "--quiet"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    assert proc.stdout == token + "\n" and token.startswith("sk-llmd-")


def test_parse_duration_accepts_units_and_combinations() -> None:
    assert parse_duration("30d") == timedelta(days=30)
    assert parse_duration("1w2d") == timedelta(days=9)
    assert parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("90m") == timedelta(minutes=90)
    for bad in ("", "10", "3x", "0d", "d"):
        with pytest.raises(Exception, match="duration"):
            parse_duration(bad)


def test_expires_in_is_relative_to_now(run_cli) -> None:
    before = datetime.now(UTC)
    run_cli("tokens", "create", "soon", "--priority", "1", "--threshold", "1", "--expires-in", "12h", "-q")
    (item,) = json.loads(run_cli("tokens", "list", "--json")[1])
    expires = datetime.fromisoformat(item["expires_at"])
    assert timedelta(hours=12) - timedelta(seconds=5) <= expires - before <= timedelta(hours=12, seconds=5)


def test_create_token_dash_reads_the_plaintext_from_stdin(
    run_cli, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("sk-from-stdin\n"))
    code, out, _ = run_cli("tokens", "create", "piped", "--priority", "1", "--threshold", "1", "--token", "-", "-q")
    assert (code, out) == (0, "sk-from-stdin\n")
    (row,) = stored_rows(sqlite_url)
    assert row.token_hash == hash_token("sk-from-stdin")


# -- the one loader of token files (tokens import and LLMD_TOKENS_FILE) ------------------------------

SEED = [{"name": "svc", "token": "sk-svc-secret", "priority": 3, "threshold": 30}]


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        ("json", json.dumps(SEED)),
        ("json", json.dumps({"tokens": SEED})),
        ("yaml", "- name: svc\n  token: sk-svc-secret\n  priority: 3\n  threshold: 30\n"),
        ("yaml", "tokens:\n  - {name: svc, token: sk-svc-secret, priority: 3, threshold: 30}\n"),
    ],
    ids=["json-list", "json-mapping", "yaml-list", "yaml-mapping"],
)
def test_a_token_file_is_a_json_or_yaml_list_or_a_mapping_with_a_tokens_list(
    tmp_path: Path, suffix: str, text: str
) -> None:
    path = tmp_path / f"seed.{suffix}"
    path.write_text(text)
    assert load_tokens_file(path) == SEED
    assert load_tokens_file(str(path)) == SEED
    assert parse_tokens(text) == SEED


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "svc"}', "expected a list of tokens (or a mapping with a 'tokens' list)"),
        ("tokens: 3\n", "expected a list of tokens"),
        ("", "expected a list of tokens"),
        ("just words", "expected a list of tokens"),
        ("[1, 2]", "token 0 is a int, expected a mapping"),
        ("- [a]\n", "token 0 is a list, expected a mapping"),
        ("key: [unclosed\n", "neither JSON nor YAML"),
    ],
)
def test_a_token_file_of_another_shape_is_refused_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "seed.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load_tokens_file(path)
    assert str(info.value).startswith(f"{path}: ")


def test_a_token_file_that_cannot_be_read_raises_os_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        load_tokens_file(tmp_path / "missing.json")


def test_import_reads_a_token_list_from_stdin(run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps({"tokens": SEED})))
    code, out, _ = run_cli("tokens", "import", "-")
    assert code == 0 and "Imported 1 tokens (1 created or changed)" in out
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"name": "svc"}'))
    code, _, err = run_cli("tokens", "import", "-")
    assert code == 2 and "<stdin>: expected a list of tokens" in err


def test_a_batch_priority_is_set_capped_by_the_priority_and_cleared(run_cli, sqlite_url):
    code, out, _ = run_cli(
        "tokens", "create", "nightly", "--priority", "5", "--threshold", "10", "--batch-priority", "1"
    )
    assert code == 0 and "batch priority 1" in out
    code, out, _ = run_cli("tokens", "update", "nightly", "--batch-priority", "9")
    assert code == 0 and "batch priority 5" in out  # never above the token's own priority
    code, out, _ = run_cli("tokens", "update", "nightly", "--no-batch-priority")
    assert code == 0 and "batch priority" not in out


def test_limits_are_set_shown_and_removed_by_the_cli(run_cli) -> None:
    code, out, _ = run_cli("tokens", "create", "lim", "--priority", "5", "--threshold", "9", "--rpm", "60", "-q")
    assert code == 0
    code, out, _ = run_cli("tokens", "update", "lim", "--tpm", "10000", "--max-parallel", "4")
    assert code == 0 and "max parallel 4, rpm 60, tpm 10000" in out
    code, out, _ = run_cli("tokens", "update", "lim", "--rpm", "none", "--user-max-parallel", "1")
    assert code == 0 and "rpm" not in out.replace("rpm 60", "") and "user max parallel 1" in out
    (item,) = [i for i in json.loads(run_cli("tokens", "list", "--json")[1]) if i["name"] == "lim"]
    assert (item["max_parallel"], item["rpm"], item["tpm"], item["user_max_parallel"]) == (4, None, 10000, 1)
    code, _, err = run_cli("tokens", "update", "lim", "--rpm", "0")
    assert code == 2 and "must be >= 1" in err
