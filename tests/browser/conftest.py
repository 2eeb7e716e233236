"""Fixtures of the browser tier: one headless Chromium per session, a page per test, a stack with the
simulator and an admin token, and where the screenshots go."""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.fixtures.db import SERVER_URLS, _admin_engine

CHROMIUM = os.environ.get("LLMD_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MODEL = "sim-model"


@pytest.fixture(scope="module")  # not longer: Playwright's sync API keeps an event loop running in this thread,
def browser() -> Iterator:  # and the async tests of the modules after this one need it gone
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}: run `bash scripts/ensure-chromium.sh` (or set LLMD_TEST_CHROMIUM)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield browser
        browser.close()


class PageProblems(list):
    """What the browser complained about while a test ran: script errors, failed console calls, CSP violations."""


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:
    context = browser.new_context(viewport={"width": 1360, "height": 860}, device_scale_factor=1)
    page = context.new_page()
    page.set_default_timeout(15_000)
    problems = PageProblems()
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    page.problems = problems  # type: ignore[attr-defined]
    yield page
    context.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest):
    """shots(page, "models"): a full-page PNG under tests/browser/artifacts/<test>/."""
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    folder.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def console_stack(stack_factory):
    """A sender with one simulator behind one consumer; `admin` (admin role only) and `alice` (inference)."""
    s = stack_factory(usage_flush_interval_s=0.1)
    s.upstream = s.add_sim(model=MODEL, served_model_names=[MODEL], default_output_tokens=24, itl_base=0.02)
    s.add_consumer(MODEL, s.upstream)
    s.admin = s.create_token("admin", admin=True, inference=False)
    s.alice = s.create_token("alice", priority=5, threshold=100)
    s.wait_models({MODEL}, s.alice)
    yield s
    s.wait_idle()


def _in_a_thread(coro_fn):
    """Runs a coroutine to its end in a thread of its own (Playwright's sync API keeps a loop running here)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro_fn()).result()


@pytest.fixture
def browser_database_url(db_backend: str, tmp_path: Path) -> Iterator[str]:
    """tests.fixtures.db's `database_url` for the browser tier's sync tests: an empty database of its own."""
    if db_backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'llmd.db'}"
        return
    name = f"llmd_t_{uuid.uuid4().hex[:12]}"

    async def run(sql: str) -> None:
        engine = _admin_engine(db_backend)
        try:
            async with engine.connect() as conn:
                await conn.execute(sa.text(sql))
        finally:
            await engine.dispose()

    try:
        _in_a_thread(lambda: run(f"CREATE DATABASE {name}"))
    except (OSError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
        pytest.skip(f"{db_backend} unavailable at {SERVER_URLS[db_backend]}: {exc}")
    try:
        yield sa.make_url(SERVER_URLS[db_backend]).set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if db_backend == "postgresql" else ""
        _in_a_thread(lambda: run(f"DROP DATABASE IF EXISTS {name}{force}"))
