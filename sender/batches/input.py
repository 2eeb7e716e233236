"""A batch input file checked line by line, as OpenAI does: JSONL, each line
`{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body": {"model", ...}}`. Pure."""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from llm_dispatcher.db.batches import LineInput

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
COMPLETION_WINDOWS = {"24h": 24 * 3600}
MAX_ERRORS = 100  # errors reported per file (OpenAI lists the first ones too)


@dataclass(frozen=True, slots=True)
class Checked:
    lines: list[LineInput]
    errors: list[dict]


def _error(code: str, message: str, line: int | None, param: str | None = None) -> dict:
    return {"code": code, "message": message, "param": param, "line": line}


def check_input(content: bytes, endpoint: str, max_lines: int) -> Checked:
    lines: list[LineInput] = []
    errors: list[dict] = []
    seen: set[str] = set()
    raw_lines = [raw for raw in content.splitlines() if raw.strip()]
    if not raw_lines:
        return Checked([], [_error("empty_file", "the input file has no requests", None)])
    if len(raw_lines) > max_lines:
        return Checked(
            [],
            [
                _error(
                    "too_many_requests",
                    f"the input file has {len(raw_lines)} requests; at most {max_lines} are accepted per batch",
                    None,
                )
            ],
        )
    for n, raw in enumerate(raw_lines, start=1):
        problem = _check_line(raw, n, endpoint, seen, lines)
        if problem is not None and len(errors) < MAX_ERRORS:
            errors.append(problem)
    return Checked([] if errors else lines, errors)


def _check_line(raw: bytes, n: int, endpoint: str, seen: set[str], lines: list[LineInput]) -> dict | None:
    try:
        item = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _error("invalid_json_line", "this line is not valid JSON", n)
    if not isinstance(item, dict):
        return _error("invalid_json_line", "this line is not a JSON object", n)
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return _error("missing_required_parameter", "custom_id must be a non-empty string", n, "custom_id")
    if len(custom_id) > 512:
        return _error("invalid_value", "custom_id is longer than 512 characters", n, "custom_id")
    if custom_id in seen:
        return _error("duplicate_custom_id", f"custom_id {custom_id[:64]!r} is used by another line", n, "custom_id")
    if item.get("method") != "POST":
        return _error("invalid_value", "method must be POST", n, "method")
    if item.get("url") != endpoint:
        return _error("invalid_url", f"url must be the batch's endpoint {endpoint}", n, "url")
    body = item.get("body")
    if not isinstance(body, dict):
        return _error("missing_required_parameter", "body must be a JSON object", n, "body")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return _error("missing_required_parameter", "body.model must be a non-empty string", n, "body.model")
    if body.get("stream") is True:
        return _error("invalid_value", "streaming is not supported in batches", n, "body.stream")
    seen.add(custom_id)
    lines.append(LineInput(custom_id=custom_id, model=model, body=orjson.dumps(body)))
    return None
