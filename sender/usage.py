"""Pure helpers that find token usage in what vLLM sends back, without buffering whole responses."""

from __future__ import annotations

import re

import orjson

_USAGE = re.compile(rb'"usage"\s*:\s*(\{[^{}]*\})')
TAIL_BYTES = 8192  # the usage object is at the end of a JSON body and in the last event of a stream


def usage_from_tail(tail: bytes) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from the last `"usage": {...}` object in `tail`."""
    found = None
    for found in _USAGE.finditer(tail):  # noqa: B007 - the last match is the one wanted
        pass
    if found is None:
        return None, None
    try:
        usage = orjson.loads(found.group(1))
    except orjson.JSONDecodeError:
        return None, None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


class Tail:
    """The last TAIL_BYTES bytes of a stream, for usage_from_tail at its end."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = b""

    def add(self, chunk: bytes) -> None:
        buf = self._buf + chunk if len(chunk) < TAIL_BYTES else chunk
        self._buf = buf[-TAIL_BYTES:]

    def usage(self) -> tuple[int | None, int | None]:
        return usage_from_tail(self._buf)


class UsageEventFilter:
    """Relays an SSE stream event by event, removing the usage-only event (`"choices":[]`) that the
    sender asked vLLM for on the client's behalf, and remembering its counts."""

    def __init__(self) -> None:
        self._pending = b""
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None

    def usage(self) -> tuple[int | None, int | None]:
        """Prompt and completion tokens from the usage event taken out (None until it came)."""
        return self.prompt_tokens, self.completion_tokens

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        cut = data.rfind(b"\n\n")
        if cut < 0:
            self._pending = data
            return b""
        complete, self._pending = data[: cut + 2], data[cut + 2 :]
        if b'"usage"' not in complete:
            return complete
        out = []
        for event in complete.split(b"\n\n"):
            if not event:
                continue
            if event.startswith(b"data: {") and b'"choices":[]' in event and b'"usage"' in event:
                self.prompt_tokens, self.completion_tokens = usage_from_tail(event)
                continue
            out.append(event + b"\n\n")
        return b"".join(out)

    def flush(self) -> bytes:
        rest, self._pending = self._pending, b""
        return rest
