"""Mint rate limits per actor and per location, counted in Redis so they hold across replicas.

A fixed window per key, started by its first hit (``INCR`` + ``PEXPIRE`` in one script): simple, one round trip
for both keys, and at worst twice the rate across a window boundary, which is fine for a brake on a phished account.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from authority.refusals import RateLimited

# A Lua function: count a hit on counter ``key`` whose window is ``window_ms``; {count, ms left in the window}.
# Also the first step of the allowlist's issue script (``replay``), which counts and issues in one.
HIT = """
local function hit(key, window_ms)
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('PEXPIRE', key, window_ms) end
  return {count, redis.call('PTTL', key)}
end
"""
_HIT = HIT + "return hit(KEYS[1], ARGV[1])"  # KEYS[1] = counter; ARGV[1] = window in ms


def _bucket(value: str) -> str:
    """Key-safe and bounded, whatever a caller's token puts in its claims."""
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class MintLimiter:
    def __init__(self, redis: Redis, prefix: str, *, per_actor: int, per_location: int, window_s: int) -> None:
        self._redis = redis
        self._prefix = f"{prefix}rate:"
        self._per_actor = per_actor
        self._per_location = per_location
        self.window_ms = window_s * 1000

    def count(self, pipe: Pipeline, issuer: str, actor: str, location: str) -> None:
        """Queue the counting of one mint attempt on ``pipe``, a pipeline of this limiter's Redis (two replies, in
        order: pass them to ``judge``). ``check`` sends it alone; ``Allowlist.issue`` with its own write, in one
        round trip."""
        # EVAL, not EVALSHA: a pipeline holding registered scripts first asks SCRIPT EXISTS, a second round trip.
        # The server caches the compiled script by its hash either way.
        for counter in self.counters(issuer, actor, location):
            pipe.eval(_HIT, 1, counter, self.window_ms)

    def counters(self, issuer: str, actor: str, location: str) -> tuple[str, str]:
        """The keys counting ``actor``'s attempts and ``location``'s."""
        return f"{self._prefix}actor:{_bucket(f'{issuer}|{actor}')}", f"{self._prefix}loc:{_bucket(location)}"

    @property
    def limits(self) -> tuple[int, int]:
        """Attempts per window allowed to an actor, to a location."""
        return self._per_actor, self._per_location

    async def check(self, issuer: str, actor: str, location: str) -> None:
        """Count one mint attempt on its own round trip, and judge it."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self.count(pipe, issuer, actor, location)
            self.judge(await pipe.execute())

    def judge(self, replies: Sequence[Any]) -> None:
        """Refuse the attempt (429, with Retry-After) if either count passed its limit."""
        (actor_count, actor_ms), (location_count, location_ms) = replies
        for count, limit, left_ms, scope in (
            (actor_count, self._per_actor, actor_ms, "caller"),
            (location_count, self._per_location, location_ms, "location"),
        ):
            if int(count) > limit:
                retry = str(max(1, math.ceil(int(left_ms) / 1000)))
                raise RateLimited(f"mint rate for this {scope} exceeded ({limit} per window)", retry_after=retry)
