"""Fixtures of the browser tier: one headless Chromium per session, a page per test, a stack with the
simulator and an admin token, and where the screenshots go."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("LLMD_TEST_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
MODEL = "sim-model"


@pytest.fixture(scope="session")
def browser() -> Iterator:
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
