"""Structured logging for both services: JSON lines carrying request id, model and replica."""

from __future__ import annotations

import logging
import sys
import time

import orjson

_EXTRA_FIELDS = (
    "request_id",
    "model",
    "replica",
    "priority",
    "status",
    "reason",
    "lease_id",
    "ticket_id",
    "queue_depth",
    "admin",  # the admin token's name on an admin API call (sender.admin)
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _EXTRA_FIELDS:
            value = record.__dict__.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup_logging(level: str = "INFO", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiormq", "aio_pika"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class RepeatedFailureLog:
    """Logs a failure that repeats on every request once in full, then at most once per `every_s` as
    a one-line count, and says when it stopped: an outage at hundreds of requests per second stays
    a handful of log lines, not a traceback per request."""

    def __init__(self, logger: logging.Logger, what: str, every_s: float = 10.0, clock=time.monotonic):
        self._log, self._what, self._every_s, self._clock = logger, what, every_s, clock
        self._failing = False
        self._since_report = 0
        self._last_report = 0.0

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        if not self._failing:
            self._failing, self._since_report, self._last_report = True, 0, now
            self._log.error("%s failing: %r", self._what, exc, exc_info=exc)
            return
        self._since_report += 1
        if now - self._last_report >= self._every_s:
            self._log.error("%s still failing (%d more since the last report): %r", self._what, self._since_report, exc)
            self._since_report, self._last_report = 0, now

    def succeeded(self) -> None:
        if self._failing:
            self._failing = False
            self._log.warning(
                "%s working again (%d more failures since the last report)", self._what, self._since_report
            )
