"""Operational logs as JSON lines (the audit trail has its own writer): one object per record, with the request
id of the request that logged it, so a warning can be joined to its audit events and response."""

from __future__ import annotations

import logging

import msgspec
from litestar.logging.config import LoggingConfig

from authority.audit import REQUEST_ID

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
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


def logging_config() -> LoggingConfig:
    return LoggingConfig(
        formatters={"standard": {"()": JsonFormatter}},
        filters={"request_id": {"()": RequestIdFilter}},
        # Straight to stderr: these records are rare (warnings, errors); the audit trail, which is not, has its
        # own batched writer. No queue, so the filter sees the request's context.
        handlers={"console": {"class": "logging.StreamHandler", "formatter": "standard", "filters": ["request_id"]}},
        loggers={
            "litestar": {"level": "INFO", "handlers": ["console"], "propagate": False},
            "authority": {"level": "INFO", "handlers": ["console"], "propagate": False},
        },
    )
