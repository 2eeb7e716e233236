"""Deterministic token counting and text generation (pure functions; no tokenizer needed)."""

from __future__ import annotations

import math
import random
import struct
import zlib
from collections.abc import Sequence
from typing import Any

CHAT_TOKENS_PER_MESSAGE = 3  # role markers of a chat template

_WORDS = (
    "the of and to in is that it for as with was on be by this are at from or an have not which "
    "but they one all were we can there more when will their so if has about some would what up "
    "out into time only other new could these two may then first any like now such our over also "
    "model token batch cache engine queue stream reply answer light river stone cloud garden"
).split()


def count_text_tokens(text: str) -> int:
    """About four characters a token, at least one for non-empty text."""
    return (len(text) + 3) // 4


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise ValueError("message content must be a string or a list of content parts")


def chat_prompt(messages: Sequence[dict[str, Any]]) -> tuple[str, int]:
    """Return (prompt text, prompt tokens) of a chat request."""
    texts = [_content_text(m.get("content")) for m in messages]
    tokens = sum(count_text_tokens(t) for t in texts) + CHAT_TOKENS_PER_MESSAGE * len(messages)
    return "\n".join(texts), tokens


def prompt_hash(seed: int, text: str) -> int:
    return zlib.crc32(text.encode("utf-8", "surrogatepass"), seed & 0xFFFFFFFF)


def choice_hash(base: int, index: int) -> int:
    """Choice ``index``'s own hash from a prompt's: choice 0 keeps the prompt's, others are mixed."""
    return base if index == 0 else zlib.crc32(index.to_bytes(4, "little"), base)


def natural_length(seed: int, text: str, default_output_tokens: int) -> int:
    """Seeded output length for a request without max_tokens: within [n // 2, n], at least 1."""
    return natural_lengths(seed, text, default_output_tokens, 1)[0]


def natural_lengths(seed: int, text: str, default_output_tokens: int, n: int) -> list[int]:
    """The seeded natural lengths of choices 0..n-1 (choice 0's is ``natural_length``)."""
    lo = max(1, default_output_tokens // 2)
    span = default_output_tokens - lo + 1
    base = prompt_hash(seed ^ 0x5EED, text)
    return [lo + choice_hash(base, i) % span for i in range(n)]


class TokenSource:
    """A fixed seeded stream of word tokens; a request reads a window starting at its prompt's hash."""

    SIZE = 8192

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        words = rng.choices(_WORDS, k=self.SIZE)
        self.tokens = [" " + w for w in words]

    def start(self, seed: int, text: str) -> int:
        return prompt_hash(seed, text) % self.SIZE

    def starts(self, seed: int, text: str, n: int) -> list[int]:
        """Window starts of choices 0..n-1: each choice reads its own seeded window (choice 0: ``start``)."""
        base = prompt_hash(seed, text)
        if n == 1:
            return [base % self.SIZE]
        return [choice_hash(base, i) % self.SIZE for i in range(n)]

    def text(self, start: int, begin: int, end: int) -> str:
        """Tokens [begin, end) of the window at ``start`` joined into text."""
        n, toks = self.SIZE, self.tokens
        a, count = (start + begin) % n, end - begin
        parts = []
        while count > 0:
            take = min(count, n - a)
            parts.append("".join(toks[a : a + take]))
            count -= take
            a = 0
        return "".join(parts)


def embedding(seed: int, text: str, dim: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    rng = random.Random(prompt_hash(seed, text))
    vec = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    # round-trip through float32 like a real model's output
    return list(struct.unpack(f"{dim}f", struct.pack(f"{dim}f", *(v / norm for v in vec))))
