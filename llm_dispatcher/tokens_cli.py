"""`llm-dispatcher tokens`: create, list, update, revoke and import API tokens.

Every action migrates the database first. The plaintext of a token is printed once, by `create`;
the database only holds its SHA-256.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from llm_dispatcher.db import (
    DatabaseUnavailableError,
    DuplicateTokenError,
    Store,
    TokenNotFoundError,
    TokenRecord,
)
from llm_dispatcher.db.tokens import token_json, token_status
from llm_dispatcher.db.tokens_file import load_tokens_file, parse_tokens
from llm_dispatcher.db_cli import EXIT_UNAVAILABLE, add_database_option, database_url, fail
from llm_dispatcher.timespec import parse_datetime
from llm_dispatcher.timespec import parse_duration as _parse_duration


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `1w2d`, `90m`, `45s` (llm_dispatcher.timespec), as an argparse type."""
    try:
        return _parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _iso(text: str) -> datetime:
    try:
        parsed = parse_datetime(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    assert parsed is not None
    return parsed


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _models(text: str) -> list[str]:
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("give at least one model name (or --all-models)")
    return models


_LIMIT_OPTIONS = {
    "max_parallel": "requests waiting or in flight at once",
    "rpm": "requests per minute",
    "tpm": "prompt + completion tokens per minute",
    "user_max_parallel": "requests at once per end user (the `user` field or OpenWebUI's user header)",
}


def _limit(text: str) -> int | None:
    """A per-key limit: a positive integer, or `none` (no limit)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a positive integer or 'none': {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1 (or 'none' for no limit)")
    return value


def _add_limits(parser: argparse.ArgumentParser) -> None:
    for name, what in _LIMIT_OPTIONS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=_limit, default=argparse.SUPPRESS, metavar="N|none", help=f"limit: {what}")


def _limits(args: argparse.Namespace) -> dict[str, int | None]:
    return {name: getattr(args, name) for name in _LIMIT_OPTIONS if hasattr(args, name)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_option(parser)
    sub = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_database_option(p, suppress_default=True)
        return p

    create = action("create", "create a token and print its value (shown only this once)")
    create.add_argument("name", help="unique name: letters, digits and ._@:+-")
    create.add_argument(
        "--priority", type=_non_negative, help="queue priority (higher first); required unless --admin alone"
    )
    create.add_argument(
        "--threshold",
        type=_non_negative,
        help="refuse (429) when the model queue holds this many; required unless --admin alone",
    )
    create.add_argument(
        "--admin",
        action="store_true",
        help="may use the admin API and the console; without --inference it cannot call /v1",
    )
    create.add_argument("--inference", action="store_true", help="with --admin: may call /v1 as well")
    create.add_argument(
        "--batch-priority", type=_non_negative, help="priority of its batch lines (default: --priority; never above it)"
    )
    _add_expiry(create)
    _add_limits(create)
    create.add_argument("--models", type=_models, help="comma-separated allowed models (default: all)")
    create.add_argument("--token", help="register this plaintext instead of generating one ('-' reads stdin)")
    create.add_argument("--quiet", "-q", action="store_true", help="print only the token")

    lst = action("list", "list tokens (never shows token values)")
    lst.add_argument("--json", action="store_true", help="machine-readable output")

    update = action("update", "change a token's settings")
    update.add_argument("name")
    update.add_argument("--priority", type=_non_negative)
    update.add_argument("--threshold", type=_non_negative)
    batch = update.add_mutually_exclusive_group()
    batch.add_argument("--batch-priority", type=_non_negative, help="priority of its batch lines")
    batch.add_argument("--no-batch-priority", action="store_true", help="batch lines run at --priority again")
    models = update.add_mutually_exclusive_group()
    models.add_argument("--models", type=_models, help="comma-separated allowed models")
    models.add_argument("--all-models", action="store_true", help="allow every model")
    expiry = _add_expiry(update)
    expiry.add_argument("--no-expiry", action="store_true", help="never expire")
    update.add_argument("--enable", action="store_true", help="re-enable a revoked token")
    _add_limits(update)
    update.add_argument(
        "--admin", action=argparse.BooleanOptionalAction, help="grant (--admin) or withdraw (--no-admin) admin rights"
    )
    update.add_argument(
        "--inference", action=argparse.BooleanOptionalAction, help="allow (--inference) or refuse /v1 calls"
    )

    revoke = action("revoke", "disable a token (takes effect within the auth cache TTL)")
    revoke.add_argument("name")

    imp = action("import", "create or update tokens from a JSON or YAML list (idempotent, by name)")
    imp.add_argument("file", help="path, or '-' for stdin")


def _add_expiry(parser: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--expires-at", type=_iso, metavar="ISO8601", help="e.g. 2026-01-31T00:00:00Z (UTC if no zone)")
    group.add_argument("--expires-in", type=parse_duration, metavar="DURATION", help="e.g. 30d, 12h, 1w")
    return group


def run(args: argparse.Namespace) -> int:
    try:
        if args.tokens_command == "import":  # read and check the file before touching the database
            args.items = parse_tokens(sys.stdin.read(), "<stdin>") if args.file == "-" else load_tokens_file(args.file)
        return asyncio.run(_run(args, database_url(args)))
    except (TokenNotFoundError, DuplicateTokenError, ValueError) as exc:
        return fail(str(exc))
    except OSError as exc:
        return fail(f"cannot read {args.file}: {exc.strerror or exc}")
    except DatabaseUnavailableError as exc:
        return fail(exc.message, EXIT_UNAVAILABLE)


async def _run(args: argparse.Namespace, url: str) -> int:
    handler = {
        "create": _create,
        "list": _list,
        "update": _update,
        "revoke": _revoke,
        "import": _import,
    }[args.tokens_command]
    async with Store(url) as store:
        await store.migrate()
        return await handler(store, args)


def _expiry(args: argparse.Namespace) -> datetime | None:
    if getattr(args, "expires_in", None) is not None:
        return datetime.now(UTC) + args.expires_in
    return getattr(args, "expires_at", None)


async def _create(store: Store, args: argparse.Namespace) -> int:
    token = args.token
    if token == "-":
        token = sys.stdin.readline().strip()
    record, plaintext = await store.create_token(
        args.name,
        priority=args.priority,
        threshold=args.threshold,
        allowed_models=args.models,
        expires_at=_expiry(args),
        token=token,
        batch_priority=args.batch_priority,
        admin=args.admin,
        inference=args.inference or not args.admin,
        **_limits(args),
    )
    if args.quiet:
        print(plaintext)
        return 0
    print(f"Created token {record.name!r}: {_describe(record)}.")
    print("Copy the token now: only its hash is stored, it cannot be shown again.")
    print()
    print(plaintext)
    return 0


async def _list(store: Store, args: argparse.Namespace) -> int:
    records = await store.list_tokens()
    if args.json:
        print(json.dumps([token_json(r) for r in records], indent=2))
        return 0
    if not records:
        print("no tokens", file=sys.stderr)
        return 0
    header = ("NAME", "PRIORITY", "THRESHOLD", "MODELS", "ROLES", "EXPIRES", "STATUS")
    table = [header] + [
        (
            r.name,
            str(r.priority),
            str(r.threshold),
            ",".join(r.allowed_models) if r.allowed_models is not None else "*",
            _roles(r),
            _time(r.expires_at) if r.expires_at else "never",
            token_status(r),
        )
        for r in records
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


async def _update(store: Store, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {}
    if args.priority is not None:
        changes["priority"] = args.priority
    if args.threshold is not None:
        changes["threshold"] = args.threshold
    if args.models is not None:
        changes["allowed_models"] = args.models
    elif args.all_models:
        changes["allowed_models"] = None
    if args.no_expiry:
        changes["expires_at"] = None
    elif (expires := _expiry(args)) is not None:
        changes["expires_at"] = expires
    if args.batch_priority is not None:
        changes["batch_priority"] = args.batch_priority
    elif args.no_batch_priority:
        changes["batch_priority"] = None
    if args.enable:
        changes["enabled"] = True
    for role in ("admin", "inference"):
        if getattr(args, role) is not None:
            changes[role] = getattr(args, role)
    changes.update(_limits(args))
    if not changes:
        return fail("nothing to update: give at least one option (see --help)")
    record = await store.update_token(args.name, **changes)
    print(f"Updated token {record.name!r}: {_describe(record)}.")
    return 0


async def _revoke(store: Store, args: argparse.Namespace) -> int:
    await store.revoke_token(args.name)
    print(f"Revoked token {args.name!r}.")
    return 0


async def _import(store: Store, args: argparse.Namespace) -> int:
    changed = await store.import_tokens(args.items)
    print(f"Imported {len(args.items)} tokens ({changed} created or changed).")
    return 0


def _time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _roles(r: TokenRecord) -> str:
    return ",".join(role for role, has in (("inference", r.inference), ("admin", r.admin)) if has) or "none"


def _describe(r: TokenRecord) -> str:
    models = ", ".join(r.allowed_models) if r.allowed_models is not None else "all models"
    expiry = f"expires {_time(r.expires_at)}" if r.expires_at else "no expiry"
    batch = "" if r.batch_priority is None else f", batch priority {r.effective_batch_priority}"
    roles = f"roles {_roles(r)}"
    limits = "".join(
        f", {name.replace('_', ' ')} {getattr(r, name)}" for name in _LIMIT_OPTIONS if getattr(r, name) is not None
    )
    return (
        f"priority {r.priority}{batch}, threshold {r.threshold}{limits}, {models}, {expiry}, {roles}, {token_status(r)}"
    )
