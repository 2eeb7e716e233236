"""``POST /v1/embeddings``: the request checks, token count and response body (pure; the app sends it)."""

from __future__ import annotations

import base64
import struct
import time
from dataclasses import dataclass
from typing import Any

import orjson

from vllm_sim.config import SimConfig
from vllm_sim.errors import bad_request
from vllm_sim.text import count_text_tokens, embedding


@dataclass(slots=True)
class EmbeddingRequest:
    texts: list[str]  # each input as text (token-id inputs joined by spaces)
    tokens: int  # prompt tokens of all inputs
    encoding_format: str  # "float" or "base64"


def parse_embedding_request(body: dict[str, Any]) -> EmbeddingRequest:
    """``input`` (a string, a list of strings, token ids or lists of them) and ``encoding_format``."""
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and all(isinstance(t, int) for t in inputs)):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str | list) for x in inputs):
        raise bad_request("input: Field required (a string, a list of strings or token ids)", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad_request(f"encoding_format must be 'float' or 'base64', not {fmt!r}", "encoding_format")
    texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in inputs]
    tokens = sum(
        max(1, count_text_tokens(t)) if isinstance(x, str) else len(x) for t, x in zip(texts, inputs, strict=True)
    )
    return EmbeddingRequest(texts, tokens, fmt)


def _base64_floats(vector: list[float]) -> str:
    """vLLM's base64 encoding: little-endian float32 bytes."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def embeddings_body(config: SimConfig, request_id: str, model: str, request: EmbeddingRequest) -> bytes:
    """The response: one seeded vector per input, in the requested encoding."""
    fmt = request.encoding_format
    vectors = [embedding(config.seed, t, config.embedding_dim) for t in request.texts]
    data = [
        {"index": i, "object": "embedding", "embedding": v if fmt == "float" else _base64_floats(v)}
        for i, v in enumerate(vectors)
    ]
    out = {
        "id": f"embd-{request_id}",
        "object": "list",
        "created": int(time.time()),
        "model": model,
        "data": data,
        "usage": {
            "prompt_tokens": request.tokens,
            "total_tokens": request.tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }
    return orjson.dumps(out)
