"""Key changes pushed to every process at once: whoever writes key records announces it on a Redis channel; every
process re-reads its records when told and acknowledges, so a command knows its change is in effect everywhere
before it returns. The periodic re-read stays as the fallback for a missed message (a broken subscription).

Classic pub/sub, so it works alike on one server, under Sentinel and on Cluster (messages reach every node).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

logger = logging.getLogger("authority.keys")


class KeyNotices:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self.channel = f"{prefix}keys:changed"
        self._acks = f"{prefix}keys:applied"

    async def listening(self) -> int:
        """How many running service processes listen for key changes on this prefix (Cluster: on this node)."""
        counts = await self._redis.pubsub_numsub(self.channel)
        return sum(int(count) for _, count in counts)

    async def announce(self, wait_s: float = 0) -> tuple[int, int]:
        """Tell every process the records changed; with ``wait_s``, wait that long at most for each of them to
        say it has re-read them. Returns (processes that confirmed, processes that were listening)."""
        nonce = secrets.token_hex(8).encode()
        if not wait_s:
            return 0, int(await self._redis.publish(self.channel, nonce))
        loop = asyncio.get_running_loop()
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(self._acks)  # before publishing: no acknowledgement can come too early
            listening = int(await self._redis.publish(self.channel, nonce))
            confirmed, deadline = 0, loop.time() + wait_s
            while confirmed < listening and (left := deadline - loop.time()) > 0:
                message: dict[str, Any] | None = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if message is not None and message["data"] == nonce:
                    confirmed += 1
        return confirmed, listening

    async def listen(self, reread: Callable[[], Awaitable[object]], retry_s: float) -> None:
        """Background task: re-read on every announcement, then acknowledge it. A broken subscription is logged
        once, retried every ``retry_s``, and followed by a re-read (announcements may have been missed)."""
        failing = False
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    if failing:
                        logger.warning("key announcements received again")
                        failing = False
                        await reread()
                    async for message in pubsub.listen():
                        if message["type"] == "message":
                            await reread()
                            await self._redis.publish(self._acks, message["data"])
            except Exception as exc:  # a background task must outlive any failure; the poll covers the gap
                if not failing:
                    logger.warning(
                        "key announcements not received (%s); re-reading every %s s until they are",
                        type(exc).__name__,
                        retry_s,
                    )
                failing = True
            await asyncio.sleep(retry_s)
