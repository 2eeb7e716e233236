"""The OpenAI objects the Files and Batch APIs answer with, and the lines of output files. Pure."""

from __future__ import annotations

import orjson

from llm_dispatcher.db.batches import BatchRecord, FileRecord, LineResult


def file_object(f: FileRecord) -> dict:
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


def batch_object(b: BatchRecord) -> dict:
    return {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at,
        "expires_at": b.expires_at,
        **b.times,
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": b.metadata,
    }


def page(objects: list[dict], has_more: bool) -> dict:
    return {
        "object": "list",
        "data": objects,
        "first_id": objects[0]["id"] if objects else None,
        "last_id": objects[-1]["id"] if objects else None,
        "has_more": has_more,
    }


def output_line(r: LineResult) -> bytes:
    """One line of the output or error file, in OpenAI's format."""
    response = (
        None
        if r.status_code is None
        else {"status_code": r.status_code, "request_id": r.request_id, "body": r.response}
    )
    return (
        orjson.dumps(
            {
                "id": f"batch_req_{r.request_id or r.line_no}",
                "custom_id": r.custom_id,
                "response": response,
                "error": r.error,
            }
        )
        + b"\n"
    )


def succeeded(r: LineResult) -> bool:
    return r.status_code is not None and 200 <= r.status_code < 300


def output_files(results: list[LineResult]) -> tuple[bytes, bytes]:
    """(output, errors): answered 2xx lines in input order, and every other line."""
    ok = b"".join(output_line(r) for r in results if succeeded(r))
    bad = b"".join(output_line(r) for r in results if not succeeded(r))
    return ok, bad
