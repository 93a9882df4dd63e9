"""The single-use allowlist, and the sessions it turns into: one Redis key per impersonation token.

``<prefix>jti:<jti>`` goes *issued* (at mint) → *active* (at the one exchange; the session's id is this jti) →
*revoked* (on a replay, or by an operator). Every transition is one Lua script on that one key, so it is atomic on
the server and never spans Cluster slots: two racing exchanges, a retry, or a replay after a failover can only ever
see *issued* once. Anything not on the list (never issued, expired, or lost with Redis data) is refused, and a
session whose record is gone introspects as inactive: data loss fails closed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from authority.limits import MintLimiter
from authority.refusals import Unavailable
from authority.tokens import Actor

# KEYS[1] = the jti key; ARGV[1] = session record (JSON); ARGV[2] = its TTL in seconds; ARGV[3], ARGV[4] (with
# AUTHORITY_REDIS_MIN_REPLICAS only): how many replicas must be online, and heard from (REPLCONF ACK) within how many
# seconds, for a token to be spent here. They are counted in the same atomic step as the GET and SET: a primary that
# has fewer (just promoted, its replicas not yet attached) refuses with nothing written. An INFO format this does
# not read counts no replica: exchanges are refused with their tokens kept, never let through unconfirmed.
# {0} unknown; {1} consumed, now active; {2, 1} a replay that revoked the session just now; {2, 0} a replay of a
# token whose session was already revoked; {3, n} still issued, not spent: only n replicas to confirm it.
_CONSUME = """
local value = redis.call('GET', KEYS[1])
if not value then return {0} end
if value == 'issued' then
  local needed = tonumber(ARGV[3] or '0')
  if needed > 0 then
    local online = 0
    local info = redis.call('INFO', 'replication')
    for lag in string.gmatch(info, 'state=online,offset=%d+,lag=(%d+)') do
      if tonumber(lag) <= tonumber(ARGV[4]) then online = online + 1 end
    end
    if online < needed then return {3, online} end
  end
  redis.call('SET', KEYS[1], 'active:' .. ARGV[1], 'EX', ARGV[2])
  return {1}
end
if string.sub(value, 1, 7) == 'active:' then
  redis.call('SET', KEYS[1], 'revoked:' .. string.sub(value, 8), 'KEEPTTL')
  return {2, 1}
end
return {2, 0}
"""
# A replica counts for the check above while the primary heard from it this recently, in whole seconds (replicas
# acknowledge every second, and at once when a WAIT asks): a replica lost without a TCP reset (host or network
# down) stops counting after about this long, instead of after repl-timeout (60 s), so the exchanges that spend a
# token and then meet a short WAIT are bounded to that. Lower would refuse healthy replicas on a slow tick.
MAX_REPLICA_LAG_S = 2
_NOT_SPENT = 3

# KEYS[1] = the jti key. 1: revoked now; 2: was already revoked; 0: no such session (unknown, or not exchanged).
_REVOKE = """
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
if string.sub(value, 1, 7) == 'active:' then
  redis.call('SET', KEYS[1], 'revoked:' .. string.sub(value, 8), 'KEEPTTL')
  return 1
end
if string.sub(value, 1, 8) == 'revoked:' then return 2 end
return 0
"""


async def _on_key_primary(cluster: RedisCluster, key: str, *commands: tuple[Any, ...]) -> list[Any]:
    """Send ``commands`` down one connection to the primary that owns ``key``'s slot and read their replies.

    The Cluster client's pipeline may spread commands over connections, and a keyless ``WAIT`` would go to any
    node, so this takes one connection of that node itself. An error reply (a redirect when a slot moves,
    NOREPLICAS) comes back as a ``ResponseError`` in its place, for the caller to raise: 503.
    """
    node = cluster.get_node_from_key(key)
    if node is None:
        raise Unavailable("no Cluster node owns this key's slot right now")
    connection = node.acquire_connection()
    replies: list[Any] = []
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        for command in commands:
            try:
                replies.append(await node.parse_response(connection, str(command[0])))
            except ResponseError as error:  # an error reply (a redirect, NOREPLICAS): read on, stay in step
                replies.append(error)
    except BaseException:
        await connection.disconnect()  # a half-read connection must not go back to the pool
        raise
    finally:
        node.release(connection)
    return replies


class SessionRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """What an exchange records: enough to authorise a revocation and to answer introspection."""

    sub: str
    loc: str
    act: Actor
    exp: int
    reason: str | None = None
    ticket: str | None = None


class Outcome(enum.Enum):
    CONSUMED = 1
    UNKNOWN = 0
    REPLAYED = 2


@dataclass(frozen=True)
class Consumption:
    outcome: Outcome
    revoked_now: bool = False


@dataclass(frozen=True)
class StoredSession:
    state: Literal["active", "revoked"]
    record: SessionRecord


_record_encoder = msgspec.json.Encoder()


class Allowlist:
    """``min_replicas`` > 0 makes every state change that must survive a failover (consume, revoke) wait until
    that many replicas have it (``WAIT``); if they do not within ``replica_timeout_ms``, the request fails with 503
    and hands nothing out. Replication is asynchronous otherwise: a primary lost before its replica saw an
    exchange would let the promoted replica accept the same token once more.

    A token is only spent where that confirmation can come: the consume script itself refuses, writing nothing,
    when the primary has fewer than ``min_replicas`` replicas online (a primary just promoted by a failover has
    none until one attaches), and so does the server's own ``min-replicas-to-write`` if it is set (NOREPLICAS).
    Either is a 503 that says the token is still good. What remains is a replica counted as online that then fails
    to acknowledge in time (the primary dying mid-request, a replica lost silently within ``MAX_REPLICA_LAG_S``):
    that 503 says the token may be spent."""

    def __init__(self, redis: Redis, prefix: str, *, min_replicas: int = 0, replica_timeout_ms: int = 200) -> None:
        self._redis = redis
        self._prefix = f"{prefix}jti:"
        self._consume = redis.register_script(_CONSUME)
        self._revoke = redis.register_script(_REVOKE)
        self._min_replicas = min_replicas
        self._replica_timeout_ms = replica_timeout_ms

    async def _replicated(self, script: str, key: str, *args: bytes | int) -> tuple[Any, int]:
        """Run ``script`` and, in the same round trip on the same connection, wait for ``min_replicas`` to have
        its effect (``WAIT`` counts the writes of its own connection only). The script's reply, and how many
        replicas acknowledged; an error reply is raised."""
        wait = ("WAIT", self._min_replicas, self._replica_timeout_ms)
        if isinstance(self._redis, RedisCluster):
            reply, acknowledged = await _on_key_primary(self._redis, key, ("EVAL", script, 1, key, *args), wait)
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.eval(script, 1, key, *args)
                pipe.wait(self._min_replicas, self._replica_timeout_ms)
                reply, acknowledged = await pipe.execute(raise_on_error=False)
        for answer in (reply, acknowledged):
            if isinstance(answer, Exception):
                raise answer
        return reply, int(acknowledged)

    def _unconfirmed(self, acknowledged: int, what: str) -> Unavailable:
        return Unavailable(f"only {acknowledged} of {self._min_replicas} replicas confirmed in time; {what}")

    async def issue(self, jti: str, ttl: int, *, limiter: MintLimiter, issuer: str, actor: str, location: str) -> None:
        """Record ``jti`` as issued for ``ttl`` seconds, counting the mint attempt of ``actor`` (from ``issuer``) at
        ``location`` against ``limiter`` in the same round trip; raise ``RateLimited`` (429) if the attempt is over
        a limit, ``Unavailable`` (503) on a jti collision. ``limiter`` counts in this allowlist's Redis.

        One non-transactional pipeline: each command touches one key, so on Cluster the client splits it by slot
        and no command spans two. Over the limit, the entry is written all the same, the token is never handed
        out, and the entry simply expires. ``NX``: a (vanishingly unlikely) duplicate jti never resets a used one.
        """
        async with self._redis.pipeline(transaction=False) as pipe:
            limiter.count(pipe, issuer, actor, location)
            pipe.set(self._prefix + jti, "issued", ex=ttl, nx=True)
            *counts, created = await pipe.execute()
        limiter.judge(counts)
        if not created:
            raise Unavailable("jti collision: refusing to issue the same token id twice; try again")

    async def consume(self, jti: str, record: SessionRecord, ttl: int) -> Consumption:
        """Issued → active, once; a second call revokes the session the first one opened."""
        key, body = self._prefix + jti, _record_encoder.encode(record)
        try:
            if self._min_replicas:
                args = (body, ttl, self._min_replicas, MAX_REPLICA_LAG_S)
                reply, acknowledged = await self._replicated(_CONSUME, key, *args)
            else:
                reply, acknowledged = await self._consume(keys=[key], args=[body, ttl]), 0
        except ResponseError as error:
            if "NOREPLICAS" not in str(error):
                raise
            # the server's min-replicas-to-write refused the script's first write: the GET ran, nothing was written
            raise Unavailable(
                "Redis has too few replicas to accept writes (min-replicas-to-write); the token was not spent: retry it"
            ) from None
        if int(reply[0]) == _NOT_SPENT:
            raise Unavailable(
                f"only {reply[1]} of {self._min_replicas} replicas are attached to confirm an exchange (a failover "
                "in progress?); the token was not spent: retry it"
            )
        outcome = Outcome(int(reply[0]))
        if acknowledged < self._min_replicas:
            if outcome is Outcome.CONSUMED:
                raise self._unconfirmed(
                    acknowledged, "no session was handed out, and the token may be spent: mint a new one"
                )
            raise self._unconfirmed(acknowledged, "nothing was handed out")
        return Consumption(outcome, revoked_now=outcome is Outcome.REPLAYED and int(reply[1]) == 1)

    async def session(self, sid: str) -> StoredSession | None:
        """The session opened by the exchange of token ``sid``; None if unknown, expired, lost or not exchanged."""
        value = await self._redis.get(self._prefix + sid)
        if value is None:
            return None
        state, _, body = (value if isinstance(value, bytes) else value.encode()).partition(b":")
        if state not in (b"active", b"revoked"):
            return None
        return StoredSession(
            "active" if state == b"active" else "revoked", msgspec.json.decode(body, type=SessionRecord)
        )

    async def revoke(self, sid: str) -> bool:
        """Revoke session ``sid``; False if there is no such session. Revoking twice is not an error."""
        if not self._min_replicas:
            return int(await self._revoke(keys=[self._prefix + sid])) != 0
        # No replica check before writing, unlike consume: a revocation only ever takes access away, so applying
        # it on the primary now is never worse than refusing it; the 503 asks for a retry until it is confirmed.
        reply, acknowledged = await self._replicated(_REVOKE, self._prefix + sid)
        if acknowledged < self._min_replicas:
            raise self._unconfirmed(acknowledged, "the session is revoked on the primary only: retry to confirm it")
        return int(reply) != 0

    async def ping(self) -> None:
        await self._redis.ping()
