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


class LockLost(RuntimeError):
    """The lock expired while we held it: another replica may be rotating; write nothing."""


class Lease:
    """One holding of the lock, by one round. Its own token, so two rounds of one process (the schedule and a
    command, or two ticks) never confirm or release each other's holding."""

    def __init__(self, redis: Redis, key: str, token: str) -> None:
        self._redis = redis
        self._key = key
        self.token = token

    async def confirm(self) -> None:
        """Just before writing: raise ``LockLost`` unless the lock is still ours (it may have expired meanwhile)."""
        if await self._redis.get(self._key) != self.token.encode():
            raise LockLost("the rotation lock expired before the round could write")


class RotationLock:
    def __init__(self, redis: Redis, prefix: str, ttl_ms: int = 60_000) -> None:
        self._redis = redis
        self._key = f"{prefix}keys:lock"
        self._ttl_ms = ttl_ms
        self._release = redis.register_script(_RELEASE)

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[Lease | None]:
        """Yields the lease if we got the lock; whoever did not simply skips this round."""
        token = secrets.token_hex(16)
        acquired = bool(await self._redis.set(self._key, token, nx=True, px=self._ttl_ms))
        try:
            yield Lease(self._redis, self._key, token) if acquired else None
        finally:
            if acquired:
                await self._release(keys=[self._key], args=[token])
