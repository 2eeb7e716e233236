"""The side-by-side benchmark's pure helpers: py-spy's collapsed stacks into shares by library."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"

COLLAPSED = "\n".join(
    [
        # 6 samples: the sender's code publishing through aiormq, down into asyncio's stream write
        "run (sender/main.py:29);Runner.run (asyncio/runners.py:118);relay (sender/steps.py:280);"
        "publish (llm_dispatcher/amqp.py:207);Channel.basic_publish (aiormq/channel.py:968);"
        "StreamWriter.write (asyncio/streams.py:340) 6",
        # 3 samples: the upstream client
        "run (sender/main.py:29);relay (sender/steps.py:280);ClientRequest.send (aiohttp/client_reqrep.py:700) 3",
        # 1 sample: the event loop itself
        "run (sender/main.py:29);Runner.run (asyncio/runners.py:118) 1",
        "not a sample line",
    ]
)


@pytest.fixture
def compare(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))  # compare.py imports its sibling overhead.py
    return importlib.import_module("compare")


def test_bucket_of_names_the_library_before_own_code(compare) -> None:
    assert compare.bucket_of("Channel.basic_publish (aiormq/channel.py:968)").startswith("AMQP")
    assert compare.bucket_of("relay (sender/steps.py:280)") == "own code (sender)"
    assert compare.bucket_of("uuid4 (uuid.py:723)") == "other"


def test_profile_shares_attributes_a_sample_to_its_innermost_library(compare) -> None:
    shares = compare.profile_shares(COLLAPSED)
    amqp = shares["AMQP (aio-pika/aiormq/pamqp)"]
    assert amqp["attributed"] == pytest.approx(60.0)  # asyncio's write under aiormq counts as AMQP
    assert amqp["self"] == 0.0
    assert shares["event loop (asyncio/uvloop)"]["self"] == pytest.approx(70.0)
    assert shares["upstream HTTP client (aiohttp)"]["attributed"] == pytest.approx(30.0)
    assert shares["own code (sender)"]["inclusive"] == pytest.approx(100.0)
    # the loop-only sample goes to the innermost frame that is not the loop: the sender's main
    assert shares["own code (sender)"]["attributed"] == pytest.approx(10.0)
    assert "event loop (asyncio/uvloop)" not in {b for b, s in shares.items() if s["attributed"]}
    assert sum(s["attributed"] for s in shares.values()) == pytest.approx(100.0)
    assert compare.profile_shares("") == {}


def test_top_functions_drop_line_numbers(compare) -> None:
    top = compare.top_functions(COLLAPSED + "\nx (sender/main.py:1);StreamWriter.write (asyncio/streams.py:341) 2")
    assert top[0] == ("StreamWriter.write (asyncio/streams.py)", pytest.approx(100 * 8 / 12))
