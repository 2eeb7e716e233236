"""vLLM 0.32's response bodies, byte for byte: streamed (SSE) events, full responses, the model list.

Streamed events are assembled from bytes (no per-token JSON serialisation of the whole object), field
for field in vLLM's order, because the proxy tests compare the dispatcher's relay with them exactly.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

from vllm_sim.config import SimConfig
from vllm_sim.errors import ApiError
from vllm_sim.validation import Job

DONE = b"data: [DONE]\n\n"


def heads(n: int) -> list[bytes]:
    """The opening of each choice's streamed object: ``{"index":i,``."""
    return [b'{"index":%d,' % i for i in range(n)]


def usage(job: Job, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": job.prompt_tokens,
        "total_tokens": job.prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def error_event(err: ApiError) -> bytes:
    """The last bytes of a stream whose engine failed: the error as an event, then [DONE]."""
    return b"data: " + err.body() + b"\n\n" + DONE


def models_body(config: SimConfig, created: int) -> bytes:
    """``GET /v1/models``: one entry per served name, with vLLM's permission object."""
    cfg = config
    data = [
        {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "vllm",
            "root": cfg.model,
            "parent": None,
            "max_model_len": cfg.max_model_len,
            "permission": [
                {
                    "id": f"modelperm-{random.Random(cfg.seed + i).getrandbits(64):016x}",
                    "object": "model_permission",
                    "created": created,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": False,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
        for i, name in enumerate(cfg.served_model_names)
    ]
    return orjson.dumps({"object": "list", "data": data})


class Renderer:
    """The generation responses of one replica (they carry its ``system_fingerprint``)."""

    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self._fingerprint_json = orjson.dumps(fingerprint)

    @staticmethod
    def chunk_prefix(job: Job) -> bytes:
        obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
        return (
            b'data: {"id":'
            + orjson.dumps(job.request_id)
            + b',"object":"'
            + obj.encode()
            + b'","created":'
            + str(job.created).encode()
            + b',"model":'
            + orjson.dumps(job.model)
            + b',"choices":['
        )

    def chunk(
        self, job: Job, prefix: bytes, text: str, finish: str | None, first: bool, head: bytes = b'{"index":0,'
    ) -> bytes:
        """One streamed event, field for field as vLLM 0.32 writes it; ``head`` opens the choice with its index."""
        end = (
            b'"finish_reason":null'
            if finish is None
            else b'"finish_reason":"' + finish.encode() + b'","stop_reason":null'
        )
        if job.kind == "chat":
            if first:  # the role event: no token_ids, and the prompt fields after the choices
                return (
                    prefix
                    + head
                    + b'"delta":{"role":"assistant","content":'
                    + orjson.dumps(text)
                    + b'},"logprobs":null,"finish_reason":null}],"prompt_token_ids":null,"prompt_text":null}\n\n'
                )
            return (
                prefix
                + head
                + b'"delta":{"content":'
                + orjson.dumps(text)
                + b'},"logprobs":null,'
                + end
                + b',"token_ids":null}]'
                + self._stream_tail(job, finish)
            )
        if finish is None:
            end += b',"stop_reason":null'
        return (
            prefix
            + head
            + b'"text":'
            + orjson.dumps(text)
            + b',"logprobs":null,'
            + end
            + b',"prompt_token_ids":null,"token_ids":null}]'
            + self._stream_tail(job, finish)
        )

    def _stream_tail(self, job: Job, finish: str | None) -> bytes:
        """The finish event carries the fingerprint, unless a usage event follows (then that one does)."""
        if finish is not None and not job.include_usage:
            return b',"system_fingerprint":' + self._fingerprint_json + b"}\n\n"
        return b"}\n\n"

    def usage_chunk(self, job: Job, prefix: bytes, completion_tokens: int) -> bytes:
        counts = b'{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}' % (
            job.prompt_tokens,
            job.prompt_tokens + completion_tokens,
            completion_tokens,
        )
        return prefix + b'],"usage":' + counts + b',"system_fingerprint":' + self._fingerprint_json + b"}\n\n"

    def full_response(self, job: Job, texts: list[str], finishes: list[str], completion_tokens: int) -> bytes:
        """The non-streamed body: one choice per text (usage: the prompt once, every choice's tokens)."""
        if job.kind == "chat":
            choices: list[dict[str, Any]] = [
                {
                    "index": i,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "annotations": None,
                        "audio": None,
                        "function_call": None,
                        "reasoning": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                    "token_ids": None,
                    "routed_experts": None,
                }
                for i, (text, finish) in enumerate(zip(texts, finishes, strict=True))
            ]
            body: dict[str, Any] = {
                "id": job.request_id,
                "object": "chat.completion",
                "created": job.created,
                "model": job.model,
                "choices": choices,
                "service_tier": None,
                "system_fingerprint": self.fingerprint,
                "usage": usage(job, completion_tokens),
                "prompt_logprobs": None,
                "prompt_token_ids": None,
                "prompt_text": None,
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        else:
            body = {
                "id": job.request_id,
                "object": "text_completion",
                "created": job.created,
                "model": job.model,
                "choices": [
                    {
                        "index": i,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": finish,
                        "stop_reason": None,
                        "token_ids": None,
                        "prompt_logprobs": None,
                        "prompt_token_ids": None,
                        "routed_experts": None,
                    }
                    for i, (text, finish) in enumerate(zip(texts, finishes, strict=True))
                ],
                "service_tier": None,
                "system_fingerprint": self.fingerprint,
                "usage": usage(job, completion_tokens),
                "kv_transfer_params": None,
                "ec_transfer_params": None,
                "metrics": None,
            }
        return orjson.dumps(body)
