"""Mint rate limits per actor and per location, counted in Redis so they hold across replicas.

A fixed window per key, started by its first hit (``INCR`` + ``PEXPIRE`` in one script): simple, one round trip
for both keys, and at worst twice the rate across a window boundary, which is fine for a brake on a phished account.
"""

from __future__ import annotations

import hashlib
import math

from redis.asyncio import Redis

from authority.refusals import RateLimited

# KEYS[1] = counter; ARGV[1] = window in ms. Returns {count, ms left in the window}.
_HIT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""


def _bucket(value: str) -> str:
    """Key-safe and bounded, whatever a caller's token puts in its claims."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class MintLimiter:
    def __init__(self, redis: Redis, prefix: str, *, per_actor: int, per_location: int, window_s: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}rate:"
        self._per_actor = per_actor
        self._per_location = per_location
        self._window_ms = window_s * 1000
        self._hit = redis.register_script(_HIT)

    async def check(self, issuer: str, actor: str, location: str) -> None:
        """Count one mint attempt; refuse it (429, with Retry-After) once either limit is passed."""
        actor_key = f"{self._prefix}actor:{_bucket(f'{issuer}|{actor}')}"
        location_key = f"{self._prefix}loc:{_bucket(location)}"
        async with self._redis.pipeline(transaction=False) as pipe:
            await self._hit(keys=[actor_key], args=[self._window_ms], client=pipe)
            await self._hit(keys=[location_key], args=[self._window_ms], client=pipe)
            (actor_count, actor_ms), (location_count, location_ms) = await pipe.execute()
        for count, limit, left_ms, scope in (
            (actor_count, self._per_actor, actor_ms, "caller"),
            (location_count, self._per_location, location_ms, "location"),
        ):
            if int(count) > limit:
                retry = str(max(1, math.ceil(int(left_ms) / 1000)))
                raise RateLimited(f"mint rate for this {scope} exceeded ({limit} per window)", retry_after=retry)
