"""Operational logs as JSON lines (the audit trail has its own writer): one object per record, with the request
id of the request that logged it, so a warning can be joined to its audit events and response."""

from __future__ import annotations

import logging
import logging.config

import msgspec

from authority.audit import REQUEST_ID
from authority.outages import FIELDS as OUTAGE_FIELDS

_encoder = msgspec.json.Encoder()


class RequestIdFilter(logging.Filter):
    """Runs in the logging thread of the request (before any queue), where the request id is known."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if request_id := getattr(record, "request_id", None):
            entry["request_id"] = request_id
        for field in OUTAGE_FIELDS:  # structured, so an outage's lines can be counted and joined without parsing
            if (value := getattr(record, field, None)) is not None:
                entry[field] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def configure() -> None:
    """Operational logging for this process, set once by the entry point (``asgi``, ``authority serve``), never by
    building an app: an app is built per worker and per test, and Litestar's ``LoggingConfig`` starts a queue
    listener thread each time that nothing stops. Straight to stderr: these records are rare (warnings, errors);
    the audit trail, which is not, has its own batched writer. No queue, so the filter sees the request's context.
    """
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}},
            "filters": {"request_id": {"()": RequestIdFilter}},
            "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]}},
            "loggers": {
                **{
                    name: {"level": "INFO", "handlers": ["stderr"], "propagate": False}
                    for name in ("litestar", "authority")
                },
                # httpx says every request it makes at INFO (the directory's, the security events'): not ours to log
                "httpx": {"level": "WARNING"},
            },
        }
    )
