"""Audit events: one JSON line per mint, refusal and exchange, on the ``authority.audit`` logger.

Fields are identifiers only (actor, subject, location, jti, sid, outcome, reason); never a token or key.
"""

from __future__ import annotations

import logging
import time

import msgspec

logger = logging.getLogger("authority.audit")
_encoder = msgspec.json.Encoder()


def emit(event: str, outcome: str, **fields: str | int | None) -> None:
    record = {"ts": round(time.time(), 3), "event": event, "outcome": outcome}
    record.update({k: v for k, v in fields.items() if v is not None})
    logger.info(_encoder.encode(record).decode())
