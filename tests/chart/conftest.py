"""The chart, loaded once per module, for every chart test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

CHART = Path(__file__).resolve().parents[2] / "charts" / "llm-dispatcher"


@pytest.fixture(scope="module")
def chart() -> Iterator[Any]:
    with helm.Chart.load(CHART) as c:
        yield c
