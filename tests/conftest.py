"""Shared test configuration. Real services come from environment variables with loopback defaults."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.db",
    "tests.fixtures.sim",
    "tests.fixtures.real_vllm",
    "tests.fixtures.stack",
]
