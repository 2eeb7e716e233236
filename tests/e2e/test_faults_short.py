"""The short fault suite (`.venv/bin/python bench/faults --short`): a few faults under an open-loop load
of real processes on a RabbitMQ node of the test's own. Every request ends OK or with a clear error
(0 unclear: no reset, no cut stream, no error without an OpenAI body or Retry-After, no hang), and
+5 s and +20 s after the last answer nothing is left: no request in flight or waiting at the sender,
no lease at any consumer, the model queue empty, every process alive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench.faults.run import SHORT_OPTIONS, run_scenario
from bench.faults.scenarios import SCENARIOS, SHORT
from devstack.broker import PrivateBroker
from devstack.broker import available as broker_available

pytestmark = pytest.mark.skipif(not broker_available(), reason="needs rabbitmq-server on this machine")

OPTIONS = SHORT_OPTIONS  # checks at +5 s and +20 s


@pytest.fixture(scope="module")
def broker() -> Iterator[PrivateBroker]:
    with PrivateBroker() as node:
        yield node


@pytest.mark.parametrize("name", SHORT)
def test_a_fault_under_load_leaves_no_unclear_failure_and_nothing_held(name, broker, tmp_path):
    if not broker.accepting():
        broker.start()
    result = asyncio.run(run_scenario(SCENARIOS[name], broker, OPTIONS, str(tmp_path)))
    s = result["summary"]
    unclear = [r for r in result["results"] if r["klass"] == "unclear"][:5]
    assert s["unclear_total"] == 0, (s, unclear)
    oks = [r["start"] for r in result["results"] if r["klass"] == "ok"]
    assert min(oks) < OPTIONS.fault_at < result["notes"]["fault_end"] < max(oks), s  # served before and after
    for when, check in result["checks"].items():
        assert check["ok"], (when, check)
    notes = result["notes"]
    if name == "disconnect-storm":
        # every storm client that reached vLLM was aborted there; none left running
        assert notes["vllm_aborts"] >= notes["storm_reached_vllm"] > 0, notes
