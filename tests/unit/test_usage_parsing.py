"""Finding vLLM's usage in relayed bytes, without buffering whole responses."""

from __future__ import annotations

from sender.usage import Tail, UsageEventFilter, usage_from_tail


def test_usage_from_a_json_body_tail():
    body = b'{"id":"x","choices":[{"text":"a"}],"usage":{"prompt_tokens":7,"total_tokens":10,"completion_tokens":3}}'
    assert usage_from_tail(body) == (7, 3)
    assert usage_from_tail(b'{"no":"usage"}') == (None, None)


def test_tail_keeps_only_the_end_of_a_long_stream():
    tail = Tail()
    for _ in range(10_000):
        tail.add(b"data: " + b"x" * 100 + b"\n\n")
    tail.add(b'data: {"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\ndata: [DONE]\n\n')
    assert len(tail._buf) <= 8192
    assert tail.usage() == (1, 2)


def test_filter_removes_only_the_usage_event_and_keeps_its_counts_across_chunk_splits():
    stream = (
        b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n'
        b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":1,"total_tokens":5}}\n\n'
        b"data: [DONE]\n\n"
    )
    f = UsageEventFilter()
    out = b"".join(f.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) + f.flush()
    assert out == b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: [DONE]\n\n'
    assert (f.prompt_tokens, f.completion_tokens) == (4, 1)
