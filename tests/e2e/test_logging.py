"""Structured logs: JSON lines carrying the request id."""

from __future__ import annotations

import io
import logging

import httpx
import orjson

from llm_dispatcher.logs import JsonFormatter


def test_json_log_lines_carry_request_id_model_and_replica():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.structured")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        log.info("granted %s", "t1", extra={"request_id": "req-9", "model": "m", "replica": "r0"})
    finally:
        log.removeHandler(handler)
    line = orjson.loads(stream.getvalue())
    assert line["msg"] == "granted t1"
    assert (line["request_id"], line["model"], line["replica"], line["level"]) == ("req-9", "m", "r0", "info")


def test_the_sender_logs_one_line_per_request_with_its_request_id(stack_factory, caplog):
    s = stack_factory()
    sim = s.add_sim(model="m")
    s.add_consumer("m", sim)
    token = s.create_token("t", priority=5, threshold=10)
    s.wait_models({"m"}, token)
    with caplog.at_level(logging.INFO, logger="sender.access"):
        r = httpx.post(
            s.base_url + "/completions",
            json={"model": "m", "prompt": "x", "max_tokens": 1},
            headers={"authorization": f"Bearer {token}", "x-request-id": "trace-77"},
        )
    assert r.status_code == 200
    lines = [rec for rec in caplog.records if getattr(rec, "request_id", None) == "trace-77"]
    assert len(lines) == 1 and lines[0].status == 200 and lines[0].model == "m" and lines[0].replica
    s.wait_idle()
