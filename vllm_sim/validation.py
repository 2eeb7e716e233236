"""vLLM's request checks for /v1/chat/completions and /v1/completions, turning a JSON body into a ``Job``.

Pure: every check raises the ``ApiError`` vLLM 0.32 would answer with, in vLLM's order (request schema
first, then the model, then vLLM's own parameter checks), so error bodies match the real server's.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import orjson

from vllm_sim.config import SimConfig
from vllm_sim.errors import ApiError, bad_request, param_error, validation_error
from vllm_sim.text import chat_prompt, count_text_tokens, natural_lengths

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's and vLLM's default for /v1/completions
MAX_N_SEQUENCES = 16384  # vLLM's VLLM_MAX_N_SEQUENCES default: the most choices (n) one request may ask for


@dataclass(slots=True)
class Job:
    """One validated generation request."""

    kind: str  # "chat" or "completion"
    request_id: str
    model: str
    prompt_text: str
    prompt_tokens: int
    outputs: list[int]  # output tokens of each choice (n = len(outputs))
    finishes: list[str]  # each choice's finish reason: "stop" (natural end) or "length"
    stream: bool
    include_usage: bool
    priority: int
    created: int

    @property
    def n(self) -> int:
        return len(self.outputs)


def decode_json(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object, or the schema error FastAPI (and so vLLM) gives."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        # FastAPI decodes with the json module: its message and position make vLLM's error.
        try:
            body = json.loads(raw)
        except ValueError as exc:
            pos = getattr(exc, "pos", 0)
            msg = getattr(exc, "msg", str(exc))
            raise validation_error("json_invalid", f"body.{pos}", "JSON decode error", {}, {"error": msg}) from None
    if not isinstance(body, dict):
        raise validation_error(
            "model_attributes_type",
            "body",
            "Input should be a valid dictionary or object to extract fields from",
            body,
        )
    return body


def check_model(config: SimConfig, body: dict[str, Any]) -> str:
    """The served name the request asks for (the first one when it names none)."""
    model = body.get("model")
    if model is None:
        return config.served_model_names[0]
    if not isinstance(model, str):
        raise validation_error("string_type", "body.model", "Input should be a valid string", model)
    names = config.served_model_names
    if model not in names:
        raise ApiError(
            404,
            f"The model `{model}` does not exist. Valid aliases: {', '.join(names)}.",
            param="model",
            err_type="NotFoundError",
        )
    return model


def _lax_int(body: dict[str, Any], key: str) -> int | None:
    """Pydantic's lax int: ints, integral floats and numeric strings pass; anything else is a schema error."""
    value = body.get(key)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    loc = f"body.{key}"
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise validation_error(
            "int_from_float", loc, "Input should be a valid integer, got a number with a fractional part", value
        )
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            raise validation_error(
                "int_parsing", loc, "Input should be a valid integer, unable to parse string as an integer", value
            ) from None
    raise validation_error("int_type", loc, "Input should be a valid integer", value)


def _opt_int(body: dict[str, Any], key: str, minimum: int | None = None) -> int | None:
    value = _lax_int(body, key)
    if value is not None and minimum is not None and value < minimum:
        raise param_error(f"{key} must be at least {minimum}, got {value}.", key, value)
    return value


def _opt_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is not None and not isinstance(value, bool):
        raise validation_error("bool_type", f"body.{key}", "Input should be a valid boolean", value)
    return value


def completion_prompt(prompt: Any) -> tuple[str, int, bool]:
    """(text, tokens, exact): token-id prompts are counted exactly, text ones up to max_model_len + 1."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str) and prompt:
        return prompt, max(1, count_text_tokens(prompt)), False
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        return " ".join(map(str, prompt)), len(prompt), True
    if prompt is None or prompt == "" or prompt == []:
        raise param_error("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
    raise bad_request("prompt must be a string, a list of token ids, or a list of one of those.", "prompt")


def parse_job(config: SimConfig, kind: str, body: dict[str, Any], request_id: str) -> Job:
    """A chat (``kind="chat"``) or completion request checked as vLLM checks it, with its output lengths."""
    cfg = config
    max_len = cfg.max_model_len
    if kind == "chat":
        messages = body.get("messages")
        if messages is None:
            raise validation_error("missing", "body.messages", "Field required", body)
        if not isinstance(messages, list):
            raise validation_error("list_type", "body.messages", "Input should be a valid list", messages)
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise validation_error(
                    "model_type", f"body.messages.{i}", "Input should be a valid dictionary or object", m
                )
    model = check_model(cfg, body)
    if kind == "chat":
        if not messages:
            raise bad_request("Cannot apply chat template to an empty conversation. Provide at least one message.")
        try:
            prompt_text, prompt_tokens = chat_prompt(messages)
        except ValueError as exc:
            raise bad_request(str(exc), "messages") from exc
        exact_count = False  # text is tokenized with truncation at max_model_len + 1
        key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    else:
        prompt_text, prompt_tokens, exact_count = completion_prompt(body.get("prompt"))
        key = "max_tokens"
    max_tokens = _opt_int(body, key, 1)
    n = _lax_int(body, "n")
    n = 1 if n is None else n
    stream = bool(_opt_bool(body, "stream"))
    _opt_bool(body, "ignore_eos")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, int | float) or temperature < 0):
        raise bad_request("temperature must be non-negative.", "temperature")
    options = body.get("stream_options")
    include_usage = False
    if options is not None:
        if not isinstance(options, dict):
            raise validation_error("model_type", "body.stream_options", "Input should be a valid dictionary", options)
        if not stream:
            raise param_error("Stream options can only be defined when `stream=True`.", "stream_options")
        include_usage = bool(options.get("include_usage"))
    # vLLM 0.32 accepts a priority on any server; only --scheduling-policy priority orders by it.
    priority = _opt_int(body, "priority") or 0
    if max_tokens is not None and max_tokens > max_len:
        raise param_error(
            f"{key}={max_tokens} cannot be greater than max_model_len={max_len}. Please request fewer output tokens.",
            key,
            max_tokens,
        )
    if prompt_tokens > max_len:
        shown = prompt_tokens if exact_count else max_len + 1
        raise param_error(
            f"This model's maximum context length is {max_len} tokens. However, your prompt contains "
            f"{'' if exact_count else 'at least '}{shown} input tokens, which exceeds this limit even without any "
            "output tokens. Please reduce the length of the input prompt.",
            "input_tokens",
            shown,
        )
    room = max_len - prompt_tokens
    if max_tokens is not None:
        # prompt + max_tokens over the context is accepted: the output is capped by the context.
        output = min(max_tokens, room)
        if output < 1:
            raise param_error(f"max_tokens must be at least 1, got {output}.", "max_tokens", output)
    else:
        output = room if kind == "chat" else min(room, COMPLETIONS_DEFAULT_MAX_TOKENS)
        if output < 1:
            raise param_error(f"max_tokens must be at least 1, got {output}.", "max_tokens", output)
    # vLLM's SamplingParams checks (a VLLMValidationError without a parameter: no suffix).
    if n < 1:
        raise bad_request(f"n must be at least 1, got {n}.")
    if n > MAX_N_SEQUENCES:
        raise bad_request(
            f"n must be at most {MAX_N_SEQUENCES}, got {n}. "
            "To increase this limit, set the VLLM_MAX_N_SEQUENCES environment variable."
        )
    if max_tokens is not None or body.get("ignore_eos"):
        outputs, finishes = [output] * n, ["length"] * n
    else:  # each choice stops at its own seeded natural length, unless the cap comes first
        naturals = natural_lengths(cfg.seed, prompt_text, cfg.default_output_tokens, n)
        outputs = [min(k, output) for k in naturals]
        finishes = ["stop" if k <= output else "length" for k in naturals]
    prefix = "chatcmpl-" if kind == "chat" else "cmpl-"
    return Job(
        kind=kind,
        request_id=prefix + request_id,
        model=model,
        prompt_text=prompt_text,
        prompt_tokens=prompt_tokens,
        outputs=outputs,
        finishes=finishes,
        stream=stream,
        include_usage=include_usage,
        priority=priority,
        created=int(time.time()),
    )
