"""`llm-dispatcher db`: schema migrations (`upgrade`, `current`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from llm_dispatcher.db import DatabaseUnavailableError, Store
from llm_dispatcher.db.migrate import head_revision
from llm_dispatcher.settings import DEFAULT_DATABASE_URL

EXIT_USAGE = 2
EXIT_UNAVAILABLE = 1


def add_database_option(parser: argparse.ArgumentParser, *, suppress_default: bool = False) -> None:
    """`--database-url`; on sub-subcommands `suppress_default` lets it also follow the action name."""
    parser.add_argument(
        "--database-url",
        default=argparse.SUPPRESS if suppress_default else None,
        metavar="URL",
        help=f"SQLAlchemy async URL (default: $LLMD_DATABASE_URL, else {DEFAULT_DATABASE_URL})",
    )


def database_url(args: argparse.Namespace) -> str:
    return getattr(args, "database_url", None) or os.environ.get("LLMD_DATABASE_URL") or DEFAULT_DATABASE_URL


def fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_database_option(parser)
    sub = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("upgrade", "apply every pending migration (idempotent)"),
        ("current", "print the schema revision of the database"),
    ):
        add_database_option(sub.add_parser(name, help=help_text, description=help_text), suppress_default=True)


def run(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_run(args, database_url(args)))
    except DatabaseUnavailableError as exc:
        return fail(exc.message, EXIT_UNAVAILABLE)


async def _run(args: argparse.Namespace, url: str) -> int:
    async with Store(url) as store:
        before = await store.current_revision()
        if args.db_command == "upgrade":
            await store.migrate()
            after = await store.current_revision()
            if before == after:
                print(f"{store.safe_url}: already at revision {after}")
            else:
                print(f"{store.safe_url}: upgraded from {before or 'empty'} to {after}")
            return 0
        print(before or "none")
        if before != head_revision():
            print(f"not at head ({head_revision()}): run `llm-dispatcher db upgrade`", file=sys.stderr)
        return 0
