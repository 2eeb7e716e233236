"""The admin API under /admin/v1/ (admin-role tokens only)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI


def add_admin_routes(app: FastAPI, get_ctx: Callable) -> None:
    """Registers the admin API's routes."""
