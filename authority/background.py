"""Background tasks that stop when told, on every Python the service supports.

On CPython 3.11, ``asyncio.wait_for`` returns the inner result when a cancellation arrives in the same loop
iteration as the inner future completes, and the cancellation is lost (cpython gh-86296; 3.12 rewrote ``wait_for``
on ``asyncio.timeout``). redis-py wraps every socket write in ``wait_for``, so a background loop cancelled at
shutdown while it writes to Redis carries on, then waits forever for work that will never come, and the shutdown
that awaits it hangs with an idle event loop: the test suite's hang (a ``TestClient`` teardown) on busy machines,
where a write more often finishes in the iteration the cancellation lands in. ``stop`` therefore cancels again
until the task has ended, rather than trusting one request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

logger = logging.getLogger("authority")
REDELIVER_S = 0.1  # a swallowed cancellation is delivered again after this long


async def stop(tasks: Sequence[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again any that swallowed the request.

    A caller cancelled meanwhile (a background task stopping its own children, itself being stopped) still waits
    for them all, then is cancelled: children left running would outlive what they belong to. This is also why
    such a task keeps its children in a list and stops them with this, rather than in an ``asyncio.TaskGroup``:
    a group cancels each child once, and waits forever for one that swallowed it."""
    pending = [task for task in tasks if not task.done()]
    cancelled = False
    while pending:
        for task in pending:
            task.cancel()
        try:
            await asyncio.wait(pending, timeout=REDELIVER_S)
        except asyncio.CancelledError:
            cancelled = True
        pending = [task for task in pending if not task.done()]
    for task in tasks:
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("background task %s had failed", task.get_name(), exc_info=error)
    if cancelled:
        raise asyncio.CancelledError
