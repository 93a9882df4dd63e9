"""Audit events: each mint, refusal, exchange, replay, revocation and key event becomes one JSON line on the
audit log (stderr) and one entry on a capped Redis stream, both written in batches by a background task, off the
request path (one write and one pipeline per batch instead of a logging call per event: measured in bench/).

Fields are identifiers only (actor, subject, location, jti/sid, kid, outcome, reason, request id): never a token
or key. The log line is the record of last resort: if Redis is down, stream entries wait in a bounded queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from contextvars import ContextVar
from typing import TextIO

import msgspec
from redis.asyncio import Redis

from authority import metrics
from authority.connection import REDIS_ERRORS
from authority.outages import OutageLog, redis_cause

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_encoder = msgspec.json.Encoder()
Field = str | int | None


class AuditLog:
    def __init__(
        self, redis: Redis | None, stream: str, maxlen: int, backlog: int = 10_000, log: TextIO | None = None
    ) -> None:
        self._redis = redis
        self.stream = stream
        self._maxlen = maxlen
        self._log = log
        self._lines: deque[bytes] = deque(maxlen=backlog)  # for the log, written on the next flush
        self._pending: deque[bytes] = deque(maxlen=backlog)  # for the stream; oldest dropped if Redis stays down
        self._wake = asyncio.Event()
        self._closing = False
        self._writer: asyncio.Task[None] | None = None
        # Redis failures, logged per outage rather than per failure; here, where both the request path (the
        # problem-details hook) and this writer, whose successful writes end them, reach one per app.
        self.outages = OutageLog(logging.getLogger("authority.outages"))

    def emit(self, event: str, outcome: str, **fields: Field) -> None:
        record: dict[str, Field | float] = {"ts": round(time.time(), 3), "event": event, "outcome": outcome}
        record.update({k: v for k, v in fields.items() if v is not None})
        request_id = REQUEST_ID.get()
        if request_id and "request_id" not in record:
            record["request_id"] = request_id
        line = _encoder.encode(record)
        role = fields.get("role")
        metrics.count(event, outcome, role if isinstance(role, str) else None)
        if self._log is not None:
            self._lines.append(line)
        if self._redis is not None:
            self._pending.append(line)
        self._wake.set()

    def _write_log(self) -> None:
        if self._log is not None and self._lines:
            lines, self._lines = self._lines, deque(maxlen=self._lines.maxlen)
            self._log.write(b"\n".join(lines).decode() + "\n")
            self._log.flush()

    async def flush(self) -> None:
        """Write queued lines to the log, and queued events to the stream in one pipeline (MAXLEN ~ caps it)."""
        self._write_log()
        if self._redis is None or not self._pending:
            return
        batch = list(self._pending)
        self._pending.clear()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for line in batch:
                    pipe.xadd(self.stream, {"event": line}, maxlen=self._maxlen, approximate=True)
                await pipe.execute()
        except BaseException:
            # Back in front, in order, for the next try (also when cancelled at shutdown, for ``close``); past
            # the backlog, the oldest go first.
            self._pending = deque([*batch, *self._pending], maxlen=self._pending.maxlen)
            raise

    async def run(self, retry_s: float = 1.0) -> None:
        """Background writer: flush whenever events arrive; on a Redis error keep them and retry.

        A write to the stream is also the service's cheapest sign that Redis answers again: every request emits an
        event, so one follows every request, off the request path; it ends the outages the request path logged."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            to_stream = bool(self._pending)
            try:
                await self.flush()
            except Exception as exc:
                self.outages.failed(redis_cause("audit stream", exc))  # events kept; retried every retry_s
                await asyncio.sleep(retry_s)
                self._wake.set()
            else:
                if to_stream:
                    self.outages.recovered()

    def start(self) -> None:
        self._writer = asyncio.create_task(self.run())

    async def close(self) -> None:
        """Stop the writer between two writes, never in one (a write cancelled after Redis applied it would be
        queued again and written twice), then write what is left."""
        self._closing = True
        self._wake.set()
        if self._writer is not None:
            await self._writer
        with contextlib.suppress(*REDIS_ERRORS):
            await self.flush()
