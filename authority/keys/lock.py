"""The rotation lock: one replica at a time changes key records. It expires by itself, so a replica that dies
holding it delays rotation by seconds, never forever."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.asyncio import Redis

# Delete the lock only if we still hold it: never release another replica's lock after ours expired.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RotationLock:
    def __init__(self, redis: Redis, prefix: str, ttl_ms: int = 15_000) -> None:
        self._redis = redis
        self._key = f"{prefix}keys:lock"
        self._ttl_ms = ttl_ms
        self._release = redis.register_script(_RELEASE)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[bool]:
        """Yields whether we got the lock; whoever did not simply skips this round."""
        token = secrets.token_hex(16)
        acquired = bool(await self._redis.set(self._key, token, nx=True, px=self._ttl_ms))
        try:
            yield acquired
        finally:
            if acquired:
                await self._release(keys=[self._key], args=[token])
