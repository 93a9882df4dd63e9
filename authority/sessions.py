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
from typing import Literal, cast

import msgspec
from redis.asyncio import Redis

from authority.tokens import Actor

State = Literal["active", "ended", "revoked", "replayed", "expired"]
ENDINGS = ("ended", "revoked", "replayed")  # how a session ends before it expires; "expired" is read off its time
SCAN_LIMIT = 1000  # index entries one listing request reads at most while filtering: a filter cannot cost more

# KEYS[1] = a session's trail; ARGV[1] = how it ended; ARGV[2] = when. Only a live session ends, and once: the
# first ending is the true one (a replay after a revoke stays "revoked").
_END = """
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'ended_at', ARGV[2])
return 1
"""


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
        self._redis = redis
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

    async def record(self, summary: Summary, now: float) -> None:
        """The session's trail and its three index entries, in one round trip; old entries trimmed on the way."""
        entry = member(now, summary.session_id)
        oldest = member(max(0.0, now - self.retention_s), "")
        trail = self._trail(summary.session_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(trail, mapping={"summary": msgspec.json.encode(summary), "state": "active"})
            pipe.expire(trail, self.retention_s)
            for index in (
                self.location_index(summary.location),
                self.actor_index(summary.location, summary.actor.sub),
                self.customer_index(summary.location, summary.subject),
            ):
                pipe.zadd(index, {entry: 0})
                pipe.zremrangebylex(index, "-", f"({oldest}")
                pipe.expire(index, self.retention_s)
            pipe.zremrangebyrank(self.customer_index(summary.location, summary.subject), 0, -self.per_customer - 1)
            await pipe.execute()

    async def end(self, sid: str, how: Literal["ended", "revoked", "replayed"], now: int) -> bool:
        """Mark a live session as ended ``how``; False if it had ended already (or left the trail)."""
        return int(await self._end(keys=[self._trail(sid)], args=[how, now])) == 1

    async def live(self, index: str, since: int) -> list[str]:
        """The sessions in ``index`` started at or after ``since``, oldest first: every one that may still be live."""
        members = cast(list[bytes], await self._redis.zrangebylex(index, f"[{member(since, '')}", "+"))
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
        members = cast(list[bytes], await self._redis.zrevrangebylex(index, upper, lower, start=0, num=scan))
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
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in sids:
                pipe.hgetall(self._trail(sid))
            found = cast(list[dict[bytes, bytes]], await pipe.execute())
        return [_entry(fields, now) if fields else None for fields in found]


def _entry(fields: dict[bytes, bytes], now: int) -> Entry:
    summary = msgspec.json.decode(fields[b"summary"], type=Summary)
    stored = fields.get(b"state", b"active").decode()
    state: State = "expired" if stored == "active" and summary.ends <= now else cast(State, stored)
    ended = fields.get(b"ended_at")
    return Entry(**msgspec.structs.asdict(summary), state=state, ended_at=int(ended) if ended else None)
