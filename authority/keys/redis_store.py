"""Key records in Redis: one hash ``<prefix>keys`` (kid -> record), shared by every replica.

Records hold private keys sealed with the passphrase, never in clear outside demo mode. This hash is the one key
the service writes without a TTL: losing it means new keys, and tokens signed by the old ones stop verifying.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from redis.asyncio import Redis

from authority.keys.lifecycle import KeyRecord
from authority.keys.sealing import KeyStoreError


class RedisKeyStore:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._key = f"{prefix}keys"

    def __str__(self) -> str:
        return f"redis hash {self._key}"

    async def load(self) -> list[KeyRecord]:
        raw = await self._redis.hgetall(self._key)
        try:
            return [msgspec.json.decode(value, type=KeyRecord) for value in raw.values()]
        except msgspec.DecodeError as exc:
            raise KeyStoreError(f"{self}: not a key record ({exc})") from None

    async def save(self, records: Sequence[KeyRecord]) -> None:
        """All in one MULTI: a successor and its predecessor's new end are seen together or not at all."""
        async with self._redis.pipeline(transaction=True) as pipe:
            for record in records:
                pipe.hset(self._key, record.kid, msgspec.json.encode(record))
            await pipe.execute()

    async def delete(self, kids: Sequence[str]) -> None:
        if kids:
            await self._redis.hdel(self._key, *kids)
