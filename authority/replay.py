"""The single-use allowlist, and the sessions it turns into: one Redis key per impersonation token.

``<prefix>jti:<jti>`` goes *issued* (at mint) → *active* (at the one exchange; the session's id is this jti) →
*revoked* (on a replay, or by an operator). Every transition is one Lua script on that one key, so it is atomic on
the server and never spans Cluster slots: two racing exchanges, a retry, or a replay after a failover can only ever
see *issued* once. Anything not on the list (never issued, expired, or lost with Redis data) is refused, and a
session whose record is gone introspects as inactive: data loss fails closed.

Each transition writes its audit entry and security events with it (``events.outbox``): the script itself writes
them on one server, chosen by its outcome (the names below, ``ON_*``); on Cluster they follow it at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from authority.connection import REDIS_ERRORS, confirmed
from authority.events.outbox import RECORD, Records
from authority.limits import HIT, MintLimiter
from authority.refusals import Unavailable
from authority.sessions import TRAIL, Opening
from authority.tokens import Actor

# The outcomes a transition writes records for (``Records.on``).
ON_ISSUE = "issued"
ON_CONSUME = "consumed"
ON_REPLAY_REVOKING = "replay-revoking"  # a replay that revoked the session just now
ON_REPLAY = "replay"  # a replay of a token whose session was revoked already
ON_REVOKE = "revoked"
ON_REVOKED_ALREADY = "revoked-already"
ON_NO_SESSION = "no-session"

# KEYS[1], KEYS[2] = the actor's and the location's mint counters (``limits``); KEYS[3] = the jti key; ARGV[1] =
# the rate window in ms; ARGV[2], ARGV[3] = the actor's and the location's limits; ARGV[4] = the entry's TTL in
# seconds. Counts the attempt and writes the entry (NX: a duplicate jti never resets a used one), and its records
# (KEYS[4], KEYS[5]) if within both limits (over one, the token is never handed out and the entry simply expires).
# {actor count, ms left, location count, ms left, 1 if the entry was written}.
_ISSUE = (
    HIT
    + RECORD
    + """
local actor, location = hit(KEYS[1], ARGV[1]), hit(KEYS[2], ARGV[1])
local written = 0
if redis.call('SET', KEYS[3], 'issued', 'EX', ARGV[4], 'NX') then
  written = 1
  if actor[1] <= tonumber(ARGV[2]) and location[1] <= tonumber(ARGV[3]) then record('issued', 4) end
end
return {actor[1], actor[2], location[1], location[2], written}
"""
)

# KEYS[1] = the jti key; then (ARGV[5] = 4: one server) the session's trail and its indexes (``sessions.TRAIL``,
# from ARGV[6..10], ARGV[11] = now), written with the session, and the trail ended with a replay's revocation; then
# the streams of its records. ARGV[1] = session record (JSON); ARGV[2] = its TTL in
# seconds; ARGV[3], ARGV[4] (0 without AUTHORITY_REDIS_MIN_REPLICAS): how many replicas must be online, and heard
# from (REPLCONF ACK) within how many seconds, for a token to be spent here. They are counted in the same atomic
# step as the GET and SET: a primary that has fewer (just promoted, its replicas not yet attached) refuses with
# nothing written. An INFO format this does not read counts no replica: exchanges are refused with their tokens
# kept, never let through unconfirmed.
# {0} unknown; {1} consumed, now active; {2, 1} a replay that revoked the session just now; {2, 0} a replay of a
# token whose session was already revoked; {3, n} still issued, not spent: only n replicas to confirm it.
_CONSUME = (
    RECORD
    + TRAIL
    + """
local trail = tonumber(ARGV[5])
local value = redis.call('GET', KEYS[1])
if not value then return {0} end
if value == 'issued' then
  local needed = tonumber(ARGV[3])
  if needed > 0 then
    local online = 0
    local info = redis.call('INFO', 'replication')
    for lag in string.gmatch(info, 'state=online,offset=%d+,lag=(%d+)') do
      if tonumber(lag) <= tonumber(ARGV[4]) then online = online + 1 end
    end
    if online < needed then return {3, online} end
  end
  redis.call('SET', KEYS[1], 'active:' .. ARGV[1], 'EX', ARGV[2])
  if trail > 0 then open_trail(2, 6) end
  record('consumed', 2 + trail)
  return {1}
end
if string.sub(value, 1, 7) == 'active:' then
  redis.call('SET', KEYS[1], 'revoked:' .. string.sub(value, 8), 'KEEPTTL')
  if trail > 0 then end_trail(2, 'replayed', ARGV[11]) end
  record('replay-revoking', 2 + trail)
  return {2, 1}
end
record('replay', 2 + trail)
return {2, 0}
"""
)
# A replica counts for the check above while the primary heard from it this recently, in whole seconds (replicas
# acknowledge every second, and at once when a WAIT asks): a replica lost without a TCP reset (host or network
# down) stops counting after about this long, instead of after repl-timeout (60 s), so the exchanges that spend a
# token and then meet a short WAIT are bounded to that. Lower would refuse healthy replicas on a slow tick.
MAX_REPLICA_LAG_S = 2
_NOT_SPENT = 3
# What a write to a Redis that does not (or not fully) answer raises here: a 503 either way.
UNAVAILABLE: tuple[type[Exception], ...] = (Unavailable, *REDIS_ERRORS)

# KEYS[1] = the jti key (then the streams of its records). 1: revoked now; 2: was already revoked; 0: no such
# session (unknown, or not exchanged).
_REVOKE = (
    RECORD
    + """
local value = redis.call('GET', KEYS[1])
if value and string.sub(value, 1, 7) == 'active:' then
  redis.call('SET', KEYS[1], 'revoked:' .. string.sub(value, 8), 'KEEPTTL')
  record('revoked', 2)
  return 1
end
if value and string.sub(value, 1, 8) == 'revoked:' then
  record('revoked-already', 2)
  return 2
end
record('no-session', 2)
return 0
"""
)
_REVOKE_OUTCOMES = {1: ON_REVOKE, 2: ON_REVOKED_ALREADY, 0: ON_NO_SESSION}


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


class SpentUnconfirmed(Unavailable):
    """An exchange spent its token, but too few replicas confirmed it: no session is handed out (503), and the one
    opened in Redis is to be closed, so no receiver is told of a session that nobody holds."""


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
        self._cluster = isinstance(redis, RedisCluster)
        self._scripts = {script: redis.register_script(script) for script in (_ISSUE, _CONSUME, _REVOKE)}
        self._min_replicas = min_replicas
        self._replica_timeout_ms = replica_timeout_ms

    async def _change(
        self, script: str, keys: list[str], args: list[Any], records: Records | None, *, confirm: bool = False
    ) -> tuple[Any, int]:
        """Run a transition's ``script``: on one server with the streams of its ``records`` as further keys (it
        writes those of its outcome itself), on Cluster on its own keys (the caller then has ``_recorded`` write
        them). With ``confirm`` and ``min_replicas``, wait in the same round trip, on the same connection, for
        that many replicas to have it all (``WAIT``). The reply, and how many replicas acknowledged."""
        if records is not None and not self._cluster:
            keys, args = [*keys, *records.keys], [*args, records.arg()]
        if confirm and self._min_replicas:
            command = ("EVAL", script, len(keys), *keys, *args)
            return await confirmed(self._redis, keys[0], command, self._min_replicas, self._replica_timeout_ms)
        return await self._scripts[script](keys=keys, args=args), 0

    async def _recorded(self, records: Records | None, outcome: str, *, confirm: bool = False) -> None:
        """The records of ``outcome`` are written: by the script (one server), or now (Cluster)."""
        if records is not None:
            if self._cluster:
                await records.follow(outcome, confirm=confirm)
            records.written(outcome)

    def _unconfirmed(self, acknowledged: int, what: str, kind: type[Unavailable] = Unavailable) -> Unavailable:
        return kind(f"only {acknowledged} of {self._min_replicas} replicas confirmed in time; {what}")

    async def issue(
        self,
        jti: str,
        ttl: int,
        *,
        limiter: MintLimiter,
        issuer: str,
        actor: str,
        location: str,
        records: Records | None = None,
    ) -> None:
        """Record ``jti`` as issued for ``ttl`` seconds, counting the mint attempt of ``actor`` (from ``issuer``) at
        ``location`` against ``limiter`` in the same round trip; raise ``RateLimited`` (429) if the attempt is over
        a limit, ``Unavailable`` (503) on a jti collision. ``limiter`` counts in this allowlist's Redis. The
        ``records`` of ``ON_ISSUE`` are written with the entry.

        One server: one script counts, writes, and records within the limits. Cluster: the counters and the entry
        are on different slots, so one non-transactional pipeline (split by slot by the client) counts and writes.
        Over the limit, the entry is written all the same, the token is never handed out, and the entry simply
        expires. ``NX``: a (vanishingly unlikely) duplicate jti never resets a used one.
        """
        key = self._prefix + jti
        if self._cluster:
            async with self._redis.pipeline(transaction=False) as pipe:
                limiter.count(pipe, issuer, actor, location)
                pipe.set(key, "issued", ex=ttl, nx=True)
                *counts, created = await pipe.execute()
        else:
            counters = limiter.counters(issuer, actor, location)
            args = [limiter.window_ms, *limiter.limits, ttl]
            reply, _ = await self._change(_ISSUE, [*counters, key], args, records)
            counts, created = [reply[0:2], reply[2:4]], reply[4]
        limiter.judge(counts)
        if not created:
            raise Unavailable("jti collision: refusing to issue the same token id twice; try again")
        await self._recorded(records, ON_ISSUE)

    async def consume(
        self, jti: str, record: SessionRecord, ttl: int, records: Records | None = None, opening: Opening | None = None
    ) -> Consumption:
        """Issued → active, once; a second call revokes the session the first one opened. ``records`` of
        ``ON_CONSUME``, ``ON_REPLAY_REVOKING`` and ``ON_REPLAY`` are written with it, and so is the session's trail
        (``opening``), ended by a replay's revocation: on one server in the same script, so a bulk revocation
        that reads the trail can never miss a session that exists; on Cluster in the round trips that follow."""
        key, body = self._prefix + jti, _record_encoder.encode(record)
        replicas = (self._min_replicas, MAX_REPLICA_LAG_S) if self._min_replicas else (0, 0)
        keys, args = [key], [body, ttl, *replicas, 0]
        if opening is not None and not self._cluster:
            keys, args = [key, *opening.keys], [body, ttl, *replicas, len(opening.keys), *opening.args, opening.at]
        try:
            reply, acknowledged = await self._change(_CONSUME, keys, args, records, confirm=True)
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
        revoked_now = outcome is Outcome.REPLAYED and int(reply[1]) == 1
        spent = "no session was handed out, and the token may be spent: mint a new one"
        try:
            if outcome is not Outcome.UNKNOWN:
                chosen = ON_CONSUME if outcome is Outcome.CONSUMED else ON_REPLAY_REVOKING if revoked_now else ON_REPLAY
                await self._recorded(records, chosen, confirm=True)
            if opening is not None and self._cluster:
                if outcome is Outcome.CONSUMED:
                    await opening.write()
                elif revoked_now:
                    await opening.end("replayed")
        except UNAVAILABLE as exc:  # Cluster's follow-ups failed: the session exists, unannounced
            if outcome is Outcome.CONSUMED:
                raise SpentUnconfirmed(f"the session's records were not written ({exc}); {spent}") from exc
            raise
        if acknowledged < self._min_replicas:
            if outcome is Outcome.CONSUMED:
                raise self._unconfirmed(acknowledged, spent, SpentUnconfirmed)
            raise self._unconfirmed(acknowledged, "nothing was handed out")
        return Consumption(outcome, revoked_now=revoked_now)

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

    async def revoke(self, sid: str, records: Records | None = None) -> bool:
        """Revoke session ``sid``; False if there is no such session. Revoking twice is not an error. ``records``
        of ``ON_REVOKE``, ``ON_REVOKED_ALREADY`` and ``ON_NO_SESSION`` are written with it.

        No replica check before writing, unlike consume: a revocation only ever takes access away, so applying it
        on the primary now is never worse than refusing it; the 503 asks for a retry until it is confirmed."""
        reply, acknowledged = await self._change(_REVOKE, [self._prefix + sid], [], records, confirm=True)
        await self._recorded(records, _REVOKE_OUTCOMES[int(reply)], confirm=True)
        if acknowledged < self._min_replicas:
            raise self._unconfirmed(acknowledged, "the session is revoked on the primary only: retry to confirm it")
        return int(reply) != 0

    async def ping(self) -> None:
        await self._redis.ping()
