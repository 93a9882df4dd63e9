"""The trail of impersonated sessions: who, whom, why, when, and how each ended — for staff lists, bulk
revocation and the customer's own view, kept for the retention period after the session itself has expired.

Per session, a hash ``<prefix>trail:<sid>`` (the summary and its ``state``). Three indexes point at it: the
location's, the actor's and the customer's, each a sorted set whose members are ``<started µs, 16 digits>:<sid>``
at score 0, so lexicographic order is time order and a cursor is a member: a page after a cursor is everything
strictly older, whatever is inserted meanwhile (new sessions are newer). Every command touches one key, so this
works on Cluster as on a single server; the writes of an exchange go in one pipeline (one round trip).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, cast

import msgspec
from redis.asyncio import Redis

from authority.tokens import Actor

State = Literal["active", "ended", "revoked", "replayed", "expired"]
ENDINGS = ("ended", "revoked", "replayed")  # how a session ends before it expires; "expired" is read off its time
SCAN_LIMIT = 1000  # index entries one listing request reads at most while filtering: a filter cannot cost more

# Lua functions for the scripts that write the trail. ``open_trail(k, a)``: the session's trail at KEYS[k] and its
# three indexes at KEYS[k+1..k+3] (location, actor, customer: the customer's last), from ARGV[a..a+4] (``Opening.args``:
# the summary, the index member, the oldest member kept, the retention in seconds, the customer's bound).
# ``end_trail(k, how, at)``: only a live session ends, and once: the first ending is the true one (a replay after
# a revoke stays "revoked"); 1 if it ended now.
TRAIL = """
local function open_trail(k, a)
  redis.call('HSET', KEYS[k], 'summary', ARGV[a], 'state', 'active')
  redis.call('EXPIRE', KEYS[k], ARGV[a + 3])
  for i = k + 1, k + 3 do
    redis.call('ZADD', KEYS[i], 0, ARGV[a + 1])
    redis.call('ZREMRANGEBYLEX', KEYS[i], '-', '(' .. ARGV[a + 2])
    redis.call('EXPIRE', KEYS[i], ARGV[a + 3])
  end
  redis.call('ZREMRANGEBYRANK', KEYS[k + 3], 0, -tonumber(ARGV[a + 4]) - 1)
end
local function end_trail(k, how, at)
  if redis.call('HGET', KEYS[k], 'state') ~= 'active' then return 0 end
  redis.call('HSET', KEYS[k], 'state', how, 'ended_at', at)
  return 1
end
"""
_END = TRAIL + "return end_trail(1, ARGV[1], ARGV[2])"  # KEYS[1] = a session's trail; ARGV: how, when


class Summary(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the trail keeps of a session: never a token."""

    session_id: str
    location: str
    subject: str  # the coworker impersonated
    actor: Actor
    started: int
    ends: int
    reason: str | None = None
    ticket: str | None = None


class Entry(msgspec.Struct, frozen=True, omit_defaults=True):
    """A session as listed: its summary, its state now, and when it ended if it ended early."""

    session_id: str
    location: str
    subject: str
    actor: Actor
    started: int
    ends: int
    state: State
    reason: str | None = None
    ticket: str | None = None
    ended_at: int | None = None


class Page(msgspec.Struct, frozen=True, omit_defaults=True):
    """One page, newest first; ``next`` is the cursor of the following page, absent on the last one."""

    items: list[Entry]
    next: str | None = None


def member(started: float, sid: str) -> str:
    """An index member: microseconds, so sessions opened one after the other sort as they were opened."""
    return f"{round(started * 1_000_000):016d}:{sid}"


def encode_cursor(index_member: str) -> str:
    return base64.urlsafe_b64encode(index_member.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The index member a cursor names; ValueError if it was not made by ``encode_cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise ValueError("not a cursor of this listing") from None
    started, _, sid = raw.partition(":")
    if len(started) != 16 or not started.isdigit() or not sid or encode_cursor(raw) != cursor:
        raise ValueError("not a cursor of this listing")
    return raw


class SessionTrail:
    """The Redis side of the trail. ``retention_s`` bounds every key's life; ``per_customer`` bounds the customer's
    index, the one a busy actor could otherwise grow without end."""

    def __init__(self, redis: Redis, prefix: str, *, retention_s: int, per_customer: int) -> None:
        self.redis = redis
        self._prefix = prefix
        self._end = redis.register_script(_END)
        self.retention_s = retention_s
        self.per_customer = per_customer

    def _trail(self, sid: str) -> str:
        return f"{self._prefix}trail:{sid}"

    def location_index(self, location: str) -> str:
        return f"{self._prefix}trail-loc:{location}"

    def actor_index(self, location: str, actor: str) -> str:
        return f"{self._prefix}trail-actor:{location}:{actor}"

    def customer_index(self, location: str, coworker: str) -> str:
        return f"{self._prefix}trail-customer:{location}:{coworker}"

    def opening(self, summary: Summary, now: float) -> Opening:
        """What opening this session writes on the trail, for the consume script to write with the session itself
        (one server), or for ``Opening.write`` to follow it (Cluster)."""
        return Opening(
            trail=self,
            session_id=summary.session_id,
            keys=[
                self._trail(summary.session_id),
                self.location_index(summary.location),
                self.actor_index(summary.location, summary.actor.sub),
                self.customer_index(summary.location, summary.subject),
            ],
            summary=msgspec.json.encode(summary),
            entry=member(now, summary.session_id),
            oldest=member(max(0.0, now - self.retention_s), ""),
            at=int(now),
        )

    async def end(self, sid: str, how: Literal["ended", "revoked", "replayed"], now: int) -> bool:
        """Mark a live session as ended ``how``; False if it had ended already (or left the trail)."""
        return int(await self._end(keys=[self._trail(sid)], args=[how, now])) == 1

    async def live(self, index: str, since: int) -> list[str]:
        """The sessions in ``index`` started at or after ``since``, oldest first: every one that may still be live."""
        members = cast(list[bytes], await self.redis.zrangebylex(index, f"[{member(since, '')}", "+"))
        return [m.decode().partition(":")[2] for m in members]

    async def page(
        self, index: str, *, cursor: str | None, limit: int, now: int, keep: Callable[[Entry], bool] | None = None
    ) -> Page:
        """Newest first, after ``cursor``, none older than the retention at ``now`` (whether or not a later
        ``record`` has trimmed it yet); ``keep`` (an ``Entry`` predicate) filters, reading at most ``SCAN_LIMIT``
        index entries, so a page may come short with a ``next`` to go on from."""
        upper = f"({decode_cursor(cursor)}" if cursor else "+"
        lower = f"[{member(max(0, now - self.retention_s), '')}"
        scan = SCAN_LIMIT if keep else limit
        members = cast(list[bytes], await self.redis.zrevrangebylex(index, upper, lower, start=0, num=scan))
        names = [m.decode() for m in members]
        entries = await self._entries([n.partition(":")[2] for n in names], now)
        items: list[Entry] = []
        last = None
        for name, found in zip(names, entries, strict=True):
            last = name
            if found is not None and (keep is None or keep(found)):
                items.append(found)
                if len(items) == limit:
                    break
        more = len(items) == limit or len(names) == scan
        return Page(items, encode_cursor(last) if last and more else None)

    async def _entries(self, sids: Sequence[str], now: int) -> list[Entry | None]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(self._trail(sid))
            found = cast(list[dict[bytes, bytes]], await pipe.execute())
        return [_entry(fields, now) if fields else None for fields in found]


@dataclass(frozen=True)
class Opening:
    """A session's trail entry and its three index entries (``keys``: the trail, then the location's, the actor's
    and the customer's index), with ``summary`` as index ``entry``, trimming what is older than ``oldest``."""

    trail: SessionTrail
    session_id: str
    keys: list[str]
    summary: bytes
    entry: str
    oldest: str
    at: int  # when, in seconds: a replay's revocation ends the trail then

    @property
    def args(self) -> list[bytes | str | int]:
        """``TRAIL``'s ``open_trail`` arguments."""
        return [self.summary, self.entry, self.oldest, self.trail.retention_s, self.trail.per_customer]

    async def write(self) -> None:
        """On its own, in one round trip (Cluster: every command touches one key); old entries trimmed on the way."""
        trail, *indexes = self.keys
        retention = self.trail.retention_s
        async with self.trail.redis.pipeline(transaction=False) as pipe:
            pipe.hset(trail, mapping={"summary": self.summary, "state": "active"})
            pipe.expire(trail, retention)
            for index in indexes:
                pipe.zadd(index, {self.entry: 0})
                pipe.zremrangebylex(index, "-", f"({self.oldest}")
                pipe.expire(index, retention)
            pipe.zremrangebyrank(indexes[-1], 0, -self.trail.per_customer - 1)
            await pipe.execute()

    async def end(self, how: Literal["ended", "revoked", "replayed"]) -> bool:
        return await self.trail.end(self.session_id, how, self.at)


def _entry(fields: dict[bytes, bytes], now: int) -> Entry:
    summary = msgspec.json.decode(fields[b"summary"], type=Summary)
    stored = fields.get(b"state", b"active").decode()
    state: State = "expired" if stored == "active" and summary.ends <= now else cast(State, stored)
    ended = fields.get(b"ended_at")
    return Entry(**msgspec.structs.asdict(summary), state=state, ended_at=int(ended) if ended else None)
