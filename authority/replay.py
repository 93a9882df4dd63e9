"""The single-use allowlist: a token's ``jti`` is *issued* at mint and turned *used* by exactly one exchange.

Consumption is one Lua script, so it is atomic on the server: two racing exchanges, a retry, or a replay after a
failover can only ever see *issued* once. Anything not on the list (never issued, expired, or lost with Redis
data) is refused, so data loss fails closed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS[1] = jti key; ARGV[1] = the session id this exchange creates.
# Returns {0} unknown, {1} consumed, {2, sid} already used (sid = the session the first use produced).
_CONSUME = """
local value = redis.call('GET', KEYS[1])
if not value then return {0} end
if value == 'issued' then
  redis.call('SET', KEYS[1], 'used:' .. ARGV[1], 'KEEPTTL')
  return {1}
end
return {2, string.sub(value, 6)}
"""


class Outcome(enum.Enum):
    CONSUMED = 1
    UNKNOWN = 0
    REPLAYED = 2


@dataclass(frozen=True)
class Consumption:
    outcome: Outcome
    first_session: str | None = None


class Allowlist:
    """``<prefix>jti:<jti>`` keys, one per token, each expiring with its token (plus skew)."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}jti:"
        self._consume = redis.register_script(_CONSUME)

    async def issue(self, jti: str, ttl: int) -> None:
        """Record ``jti`` as issued; ``NX`` so a (vanishingly unlikely) duplicate jti never resets a used one."""
        created = await self._redis.set(self._prefix + jti, "issued", ex=ttl, nx=True)
        if not created:
            raise RuntimeError("jti collision: refusing to issue a token twice")

    async def consume(self, jti: str, session_id: str) -> Consumption:
        reply = await self._consume(keys=[self._prefix + jti], args=[session_id])
        outcome = Outcome(int(reply[0]))
        first = reply[1].decode() if outcome is Outcome.REPLAYED else None
        return Consumption(outcome, first)

    async def ping(self) -> None:
        await self._redis.ping()
