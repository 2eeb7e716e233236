"""The web console under /console/ (admin-role tokens only)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI


def add_console_routes(app: FastAPI, get_ctx: Callable) -> None:
    """Registers the console's pages and assets."""
