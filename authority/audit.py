"""Audit events: each mint, refusal, exchange, replay, revocation and key event becomes one JSON line on the
audit log (stderr) and one entry on a capped Redis stream. Lines are written in batches by a background task, off
the request path (one write per batch instead of a logging call per event: measured in bench/). Stream entries
too, except those of a state change (a mint, an exchange, a replay, a revocation): its ``Entry`` is written by the
change itself, in the same Redis script or round trip (``events.outbox``), so no crash can keep the change and lose
its entry.

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
from dataclasses import dataclass
from typing import TextIO

import msgspec
from redis.asyncio import Redis

from authority import metrics
from authority.connection import REDIS_ERRORS
from authority.outages import OutageLog, redis_cause
from authority.refusals import Refusal

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
_encoder = msgspec.json.Encoder()
Field = str | int | None


@dataclass(frozen=True)
class Entry:
    """One audit event, not yet written: its JSON line, and what the counters need to know of it."""

    event: str
    outcome: str
    role: str | None
    line: bytes


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
        """Record an event that changes nothing in Redis: its stream entry is written by the next batch."""
        self.emit_entry(self.entry(event, outcome, **fields))

    def emit_entry(self, entry: Entry) -> None:
        self.recorded(entry)
        if self._redis is not None:
            self._pending.append(entry.line)
            self._wake.set()

    def entry(self, event: str, outcome: str, **fields: Field) -> Entry:
        """The event as a line, stamped now and with the request's id, for a state change to write itself."""
        record: dict[str, Field | float] = {"ts": round(time.time(), 3), "event": event, "outcome": outcome}
        record.update({k: v for k, v in fields.items() if v is not None})
        request_id = REQUEST_ID.get()
        if request_id and "request_id" not in record:
            record["request_id"] = request_id
        role = fields.get("role")
        return Entry(event, outcome, role if isinstance(role, str) else None, _encoder.encode(record))

    def refusal(self, refusal: Refusal, *, method: str, path: str | None, request_id: str | None = None) -> Entry:
        """A refusal's entry: one layout, whether the problem-details hook writes it or the state change that
        refused (a replay)."""
        return self.entry(
            "refusal", refusal.code, status=refusal.status, method=method, path=path, reason=refusal.detail,
            request_id=request_id, **refusal.audit,
        )  # fmt: skip

    def recorded(self, entry: Entry) -> None:
        """``entry`` is on the stream (or is about to be, in a batch): count it, and log its line."""
        metrics.count(entry.event, entry.outcome, entry.role)
        if self._log is not None:
            self._lines.append(entry.line)
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
