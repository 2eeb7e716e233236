"""Shared test configuration. Real services come from environment variables with loopback defaults.

Tests are grouped by tier, one directory each (what each needs is in its ``__init__.py``): ``unit``,
``integration``, ``e2e``, ``sim``, ``real_vllm``, ``chart``. Every test gets its tier's marker from
its directory, so ``-m unit``, ``-m 'not real_vllm'`` and the like select by tier. In ``real_vllm/`` the
``real_vllm`` marker goes only to tests that need the real engine (the ``real_vllm`` fixture or marker);
the rest there are the simulator's side of the contract suite and are marked ``sim``. A test module
outside every tier directory is refused at collection.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.fixtures.broker",
    "tests.fixtures.db",
    "tests.fixtures.sim",
    "tests.fixtures.real_vllm",
    "tests.fixtures.stack",
]

TESTS = Path(__file__).resolve().parent
TIERS = ("unit", "integration", "e2e", "sim", "real_vllm", "chart", "browser")


def tier_of(path: Path) -> str | None:
    """The tier of a test file: the directory under tests/ it sits in (None when in no tier)."""
    try:
        top = path.resolve().relative_to(TESTS).parts[0]
    except (ValueError, IndexError):
        return None
    return top if top in TIERS else None


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m deselection reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    outside = sorted({str(item.path.relative_to(config.rootpath)) for item in items if tier_of(item.path) is None})
    if outside:
        raise pytest.UsageError(
            f"test modules in no tier: {', '.join(outside)}; move each under tests/<tier>/ "
            f"(tiers: {', '.join(TIERS)}; see tests/conftest.py)"
        )
    for item in items:
        tier = tier_of(item.path)
        if tier == "real_vllm":
            needs_engine = "real_vllm" in getattr(item, "fixturenames", ()) or item.get_closest_marker("real_vllm")
            tier = "real_vllm" if needs_engine else "sim"
        if item.get_closest_marker(tier) is None:
            item.add_marker(getattr(pytest.mark, tier))
