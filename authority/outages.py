"""Outage logging: a failure that repeats (Redis down, every request failing) is a few log lines, not one a request.

A 5 s Redis outage once logged 2,672 warnings, one per failed request, which buried everything else. Here each
cause ("redis: ConnectionError") is logged once when it starts, then at most once per interval with how many more
times it failed, and once when it ends, with its total and duration.

No background task: the summary is written by the first failure after the interval, and the end is noticed by the
next success, which the caller reports with ``recovered()`` (an attribute check while nothing fails, so cheap
enough for any success path). An outage ends only at a success that comes ``quiet_s`` after the cause last failed:
a partial outage (one Cluster shard down, a full connection pool) mixes failures and successes, and ending it at
every success would log a start and an end per failed request, the noise this is here to stop.

Not thread-safe, and need not be: its callers all run on the event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

# The structured fields of an outage line, which the JSON formatter copies into the line: ``outage`` is
# ``started``, ``continuing`` or ``recovered``; ``count`` the failures since this cause's previous line, ``total``
# since it started; ``duration_s`` from the first failure to the latest (so an end noticed late, at the first
# request after a quiet night, does not stretch it).
FIELDS = ("outage", "cause", "count", "total", "duration_s")
_MESSAGES = {
    "started": "%(cause)s: failing",
    "continuing": "%(cause)s: still failing, %(count)d more failures (%(total)d in %(duration_s).1f s)",
    "recovered": "%(cause)s: recovered after %(total)d failures over %(duration_s).1f s",
}


def redis_cause(operation: str, exc: BaseException) -> str:
    """The cause of a failure: what failed and how (``"redis: ConnectionError"``), not the message, which may
    differ per request (addresses, keys) and would split one outage into many."""
    return f"{operation}: {type(exc).__name__}"


@dataclass
class _Outage:
    started: float
    last_failure: float
    last_line: float
    count: int  # since the last line
    total: int


class OutageLog:
    """Failures by cause, logged when they start, every ``interval_s`` while they last, and when they end."""

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        quiet_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval_s = interval_s
        self.quiet_s = quiet_s
        self._clock = clock
        self._open: dict[str, _Outage] = {}

    def failed(self, cause: str) -> None:
        now = self._clock()
        outage = self._open.get(cause)
        if outage is None:
            self._open[cause] = _Outage(started=now, last_failure=now, last_line=now, count=0, total=1)
            self._log(logging.WARNING, "started", cause, count=1, total=1, duration_s=0.0)
            return
        outage.last_failure = now
        outage.count += 1
        outage.total += 1
        if now - outage.last_line >= self.interval_s:
            duration = now - outage.started
            self._log(logging.WARNING, "continuing", cause, count=outage.count, total=outage.total, duration_s=duration)
            outage.last_line, outage.count = now, 0

    def recovered(self) -> None:
        """A success: ends every outage whose cause has not failed for ``quiet_s``."""
        if not self._open:
            return
        now = self._clock()
        for cause, outage in list(self._open.items()):
            if now - outage.last_failure >= self.quiet_s:
                del self._open[cause]
                duration = outage.last_failure - outage.started
                self._log(logging.INFO, "recovered", cause, count=outage.count, total=outage.total, duration_s=duration)

    def _log(self, level: int, phase: str, cause: str, *, count: int, total: int, duration_s: float) -> None:
        fields = {"outage": phase, "cause": cause, "count": count, "total": total, "duration_s": round(duration_s, 3)}
        self._logger.log(level, _MESSAGES[phase], fields, extra=fields)
