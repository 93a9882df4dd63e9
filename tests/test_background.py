"""Background tasks stop at shutdown even when a library swallows the cancellation (the suite's old hang)."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest

from authority.background import stop


async def a_writer_that_loses_its_cancellation() -> tuple[asyncio.Task[None], asyncio.Event]:
    """A loop shaped like the audit writer: wait for work, then a write wrapped in ``asyncio.wait_for`` (as redis-py
    wraps socket writes). The cancellation lands in the iteration the write completes: CPython 3.11's ``wait_for``
    then returns the write's result and the cancellation is gone."""
    loop = asyncio.get_running_loop()
    work, written = asyncio.Event(), loop.create_future()

    async def writer() -> None:
        while True:
            await work.wait()
            work.clear()
            await asyncio.wait_for(written, timeout=5)

    task = asyncio.create_task(writer())
    work.set()
    await asyncio.sleep(0)  # the writer is now inside wait_for
    written.set_result(None)
    task.cancel()  # same iteration as the write's completion
    return task, work


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="CPython 3.12 rewrote wait_for; the cancellation holds")
def test_one_cancellation_is_lost_on_this_python() -> None:
    """The root cause, shown: after ``cancel()`` the writer is still alive, waiting for work that never comes."""

    async def scenario() -> bool:
        task, _ = await a_writer_that_loses_its_cancellation()
        await asyncio.wait([task], timeout=0.5)
        alive = not task.done()
        await stop([task])
        return alive

    assert asyncio.run(scenario())


def test_stop_ends_a_task_whose_cancellation_was_swallowed() -> None:
    async def scenario() -> bool:
        task, _ = await a_writer_that_loses_its_cancellation()
        await asyncio.wait_for(stop([task]), timeout=5)
        return task.cancelled()

    assert asyncio.run(scenario())


def test_stop_logs_a_task_that_had_failed(caplog: pytest.LogCaptureFixture) -> None:
    async def failing() -> None:
        raise RuntimeError("broken")

    async def scenario() -> None:
        task = asyncio.create_task(failing())
        await asyncio.sleep(0)
        await stop([task])

    with caplog.at_level(logging.ERROR, logger="authority"):
        asyncio.run(scenario())
    assert "had failed" in caplog.text
