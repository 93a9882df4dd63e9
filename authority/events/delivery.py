"""Delivery: every event in the outbox reaches every receiver that wants it, at least once, and a session's events
in the order they were written (started before ended or revoked).

Each receiver is a consumer group on the outbox stream, named after it: its own position and its own pending
entries, so one receiver's outage holds nobody else back, and its backlog is its group's lag. One process at a time
delivers for a receiver (``lease``); every process of every replica runs a courier per receiver, and those without
the lease stand by. A new holder first claims what its predecessor held and had not acknowledged (``XAUTOCLAIM``,
oldest first), then reads on: an entry leaves the group's pending list only when its receiver has it (202) or it is
dead-lettered, so a process killed mid-delivery loses nothing; what it had sent but not acknowledged is sent again,
with the same ``jti``, and the receiver drops the duplicate.

Within a process, a courier keeps one queue per session (or key: ``Event.ordering_key``), delivered one after
another in stream order, up to ``PARALLEL`` POSTs at once across queues. A failed attempt is retried with
exponential backoff and jitter (at most ``AUTHORITY_EVENT_BACKOFF_MAX_S`` apart) until ``AUTHORITY_EVENT_MAX_AGE_S``
after the entry was written (its id, on Redis's clock), then dead-lettered; a refusal (RFC 8935 400) is
dead-lettered at once. Two bounds, so that one session's (or one event type's) failures never hold back the others:
new entries are read while fewer than ``HELD`` wait in healthy queues; a queue whose head failed counts against
``RETRYING`` instead, and when that is full it is *spilled*: forgotten here, left pending in the group, and every
later entry of its session is left there too, unsent, until a pass over the pending list (``XAUTOCLAIM``, oldest
first, every ``AUTHORITY_EVENT_BACKOFF_MAX_S``) takes them back in order as room frees (``RETRYING`` is at most
the backlog bound less ``HELD``). A receiver that is down fills that, then the pending list: what waits, pending
or unread, the holder keeps within ``AUTHORITY_EVENT_BACKLOG`` by dropping the oldest not held here (counted,
logged).

Times are Redis's: entry ids come from its clock, so deadlines, the lag and where a new receiver's group starts
are reckoned on it too (``_now``: the host clock plus the offset measured by ``TIME``), never mixed with a host
clock that may be off. SETs are signed when sent, with the key
that signs then: one signed at write time would be refused by every receiver once its key retires, and a key is
retired in an emergency precisely when it may have leaked. The ``jti`` does not change with the signature.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from authority import metrics
from authority.background import stop
from authority.connection import REDIS_ERRORS
from authority.events.dead_letters import DeadLetters
from authority.events.lease import RENEW_S, Lease, consumer_name
from authority.events.push import Delivered, Failed, Pusher, Refused, Verdict, unusable
from authority.events.set import SET_TYP, Event, SetClaims, set_claims, set_jti
from authority.keys import KeyManager
from authority.outages import OutageLog, redis_cause
from authority.settings import EventReceiver, SettingsError
from authority.tokens import sign

logger = logging.getLogger("authority.events")
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
HELD = 64  # entries in healthy queues (in flight or waiting their session's turn) below which new ones are read
RETRYING = 1024  # entries in queues whose head failed (waiting to retry, or behind that), at most; then they spill
PAGE = 100  # entries per XAUTOCLAIM of a pass over the pending list
PARALLEL = 16  # POSTs in flight to one receiver at once
IDLE_S = 0.2  # pause after a read that found nothing new
FIRST_RETRY_S = 0.5
CHECK_EVERY_S = 2.0  # how often the lag gauge is measured and the backlog bound enforced
_jitter = random.Random()  # noqa: S311 - spreads retries, guards no secret


@dataclass
class _Queue:
    """One session's (or key's) entries in this process, oldest first. ``retrying``: its head failed, so the
    queue counts against ``RETRYING``, not ``HELD``."""

    entries: deque[tuple[bytes, Event, bytes]] = field(default_factory=deque)
    retrying: bool = False


class LeaseLost(Exception):
    """Another process may deliver for this receiver now: stop."""


def backoff(attempt: int, most_s: float) -> float:
    """Exponential from ``FIRST_RETRY_S``, at most ``most_s``, times a random factor in [0.5, 1): receivers that
    come back are not met by every retry at once."""
    return float(min(most_s, FIRST_RETRY_S * 2 ** min(attempt, 30))) * _jitter.uniform(0.5, 1.0)


def signing_with(keys: KeyManager, clock: Callable[[], float]) -> Callable[[SetClaims], str | None]:
    """SETs signed with the key that signs when they are sent; None while no key signs (tried again later)."""

    def sign_set(claims: SetClaims) -> str | None:
        signer = keys.keyring.signer_at(int(clock()))
        return sign(claims, signer, SET_TYP) if signer is not None else None

    return sign_set


def entry_time(entry_id: bytes | str) -> float:
    """When an entry was written: its stream id's milliseconds."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.partition("-")[0]) / 1000


class Courier:
    """Delivers the outbox to one receiver while this process holds its lease; measures its lag either way."""

    def __init__(
        self,
        receiver: EventReceiver,
        redis: Redis,
        *,
        stream: str,
        prefix: str,
        dead: DeadLetters,
        pusher: Pusher,
        sign: Callable[[SetClaims], str | None],
        issuer: str,
        jwks_uri: str,
        max_age_s: int,
        backoff_max_s: float,
        backlog: int,
        consumer: str,
        started: float,
        clock: Callable[[], float],
    ) -> None:
        self.receiver = receiver
        self.name = receiver.label
        self._redis = redis
        self._stream = stream
        self._dead = dead
        self._pusher = pusher
        self._sign = sign
        self._issuer = issuer
        self._jwks_uri = jwks_uri
        self._max_age_s = max_age_s
        self._backoff_max_s = backoff_max_s
        self._backlog = backlog
        self._retry_room = max(1, min(RETRYING, backlog - HELD))  # what it holds stays within the backlog bound
        self._consumer = consumer
        self._started = started
        self._clock = clock
        self._offset = 0.0  # Redis's clock minus the host's
        self._lease = Lease(redis, f"{prefix}events:lease:{self.name}", consumer)
        self._outages = OutageLog(logger)
        self._parallel = asyncio.Semaphore(PARALLEL)
        self._freed = asyncio.Event()
        self._queues: dict[str, _Queue] = {}
        self._inside: set[bytes] = set()  # the ids of every entry in a queue
        self._fresh = 0  # entries in healthy queues
        self._retrying = 0  # entries in queues whose head failed
        self._spilled: set[str] = set()  # ordering keys with entries pending in the group but in no queue
        self._spilled_in_pass: set[str] = set()
        self._children: set[asyncio.Task[None]] = set()
        self._failed: asyncio.Future[None] | None = None  # while holding the lease: the first child's failure
        self._checked = 0.0
        self._passed = 0.0

    async def _sync_clock(self) -> None:
        """Measure Redis's clock against the host's (``TIME``); the earlier bound, so a new group starts early."""
        seconds, micros = await self._redis.time()
        self._offset = seconds + micros / 1e6 - self._clock()

    def _now(self) -> float:
        """Now on Redis's clock, the clock of entry ids."""
        return self._clock() + self._offset

    async def prepare(self) -> None:
        """The receiver's consumer group, made once for every process: it starts where the first process with this
        receiver configured started, on Redis's clock, so every event written since (by any process that has it) is
        delivered to it, and none from before: events on the outbox then were written for other receivers, and a
        new receiver sent a day of old sessions would see mostly expired facts (and dead-letter the rest). The
        process's start is translated with the offset measured now: a host clock ahead of Redis's would otherwise
        start the group in the future and skip what is written until then, forever."""
        await self._sync_clock()
        # the id before the start's millisecond: an entry written in that millisecond is after the group's start
        start_id = f"{max(0, int((self._started + self._offset) * 1000) - 1)}-0"
        try:
            await self._redis.xgroup_create(self._stream, self.name, id=start_id, mkstream=True)
        except ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    async def run(self) -> None:
        """Forever: deliver while holding the lease, else stand by; failures logged, never fatal."""
        while True:
            try:
                await self.prepare()
                if await self._lease.acquire():
                    await self._deliver_while_held()
                else:
                    await self._measure()
            except LeaseLost:
                logger.warning("events to %s: lease lost; another process delivers them now", self.name)
            except REDIS_ERRORS as exc:
                self._outages.failed(redis_cause(f"events to {self.name}", exc))
            except Exception:
                logger.exception("events to %s: delivery failed; starting again", self.name)
            await asyncio.sleep(RENEW_S)

    async def _deliver_while_held(self) -> None:
        """Deliver until the lease is lost or a child fails (raised here), or until stopped; the children are then
        stopped with ``background.stop`` (an ``asyncio.TaskGroup`` would wait forever for one that swallowed its
        cancellation: see there), and the lease given back for another process to take at once."""
        logger.info("events to %s: delivering from this process (%s)", self.name, self._consumer)
        failed = self._failed = asyncio.get_running_loop().create_future()
        try:
            self._spawn(self._keep_lease())
            self._spawn(self._pump())
            await failed
        finally:
            await stop(list(self._children))
            if failed.done() and not failed.cancelled():
                failed.exception()  # retrieved: raised above, or superseded by this task's stopping
            self._queues.clear()
            self._inside.clear()
            self._spilled.clear()  # the next holding's first pass finds them again
            self._fresh = self._retrying = 0
            with suppress(*REDIS_ERRORS):
                await self._lease.release()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(self._child(work))
        self._children.add(task)
        task.add_done_callback(self._children.discard)

    async def _child(self, work: Coroutine[Any, Any, None]) -> None:
        """A child's failure (Redis down, the lease lost) ends the holding: all children stop, ``run`` says why."""
        try:
            await work
        except Exception as exc:
            if self._failed is not None and not self._failed.done():
                self._failed.set_exception(exc)

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(RENEW_S)
            if not await self._lease.renew():
                raise LeaseLost

    async def _pump(self) -> None:
        """What is pending first (the previous holder's, oldest first, so each session stays in order), then new
        entries while the healthy queues have room, and the spilled ones again every backoff ceiling."""
        await self._sync_clock()
        await self._pass(first=True)
        while True:
            if self._clock() - self._checked >= CHECK_EVERY_S:  # also while the receiver is down: then above all
                await self._bound_backlog()
                await self._measure()
            if self._spilled and self._clock() - self._passed >= max(CHECK_EVERY_S, self._backoff_max_s):
                await self._pass()
            if self._fresh >= HELD:
                self._freed.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY_S):
                        await self._freed.wait()
                continue
            entries = await self._read(HELD - self._fresh)
            await self._take(entries)
            if not entries:
                await asyncio.sleep(IDLE_S)

    async def _read(self, count: int) -> _Entries:
        """The next ``count`` entries no consumer of the group has read, now this one's."""
        reply = await self._redis.xreadgroup(self.name, self._consumer, {self._stream: ">"}, count=count)
        return cast(list[tuple[bytes, _Entries]], reply)[0][1] if reply else []

    async def _pass(self, *, first: bool = False) -> None:
        """Over the group's whole pending list, oldest first (``XAUTOCLAIM``: each entry now this consumer's): take
        into their queues, while ``RETRYING`` has room, the entries in no queue — the previous holder's (``first``)
        or spilled ones. Once a session has an entry left behind, its later ones are left too (its order), and it
        stays spilled. On the first pass, consumers left with nothing pending (processes gone) are removed."""
        self._passed = self._clock()
        self._spilled_in_pass = set()
        left: set[str] = set()
        start: bytes | str = "0-0"
        while True:
            reply = await self._redis.xautoclaim(self._stream, self.name, self._consumer, 0, start, count=PAGE)
            next_start, entries = reply[0], cast(_Entries, reply[1])
            skipped = []
            for entry_id, fields in entries:
                if not fields or entry_id in self._inside:
                    continue  # trimmed from the stream (then gone from the list too), or in a queue already
                event = _event(fields, self.name)
                if event is None or not self.receiver.wants(event.type):
                    skipped.append(entry_id)
                elif event.ordering_key in left or self._retrying >= self._retry_room:
                    left.add(event.ordering_key)
                else:
                    self._enqueue(entry_id, event, fields[b"event"], retrying=True)
            if skipped:
                await self._redis.xack(self._stream, self.name, *skipped)
            if next_start in (b"0-0", "0-0"):
                break
            start = next_start
        self._spilled = left | self._spilled_in_pass  # and those spilled while this pass ran
        if first:
            for consumer in await self._redis.xinfo_consumers(self._stream, self.name):
                if consumer["name"].decode() != self._consumer and not consumer["pending"]:
                    await self._redis.xgroup_delconsumer(self._stream, self.name, consumer["name"])

    async def _take(self, entries: _Entries) -> None:
        """Queue what this receiver wants; acknowledge the rest (another receiver's, unreadable)."""
        skipped = []
        for entry_id, fields in entries:
            event = _event(fields, self.name)
            if event is None or not self.receiver.wants(event.type):
                skipped.append(entry_id)
            elif event.ordering_key in self._spilled:
                continue  # behind its session's spilled entries: left pending, taken by a pass in its turn
            else:
                self._enqueue(entry_id, event, fields[b"event"])
        if skipped:
            await self._redis.xack(self._stream, self.name, *skipped)

    def _count(self, queue: _Queue, entries: int) -> None:
        if queue.retrying:
            self._retrying += entries
        else:
            self._fresh += entries

    def _enqueue(self, entry_id: bytes, event: Event, raw: bytes, *, retrying: bool = False) -> None:
        """Onto its session's queue (a new queue, ``retrying`` if taken back from the pending list, gets a worker);
        spilled if that queue is retrying and ``RETRYING`` is full."""
        key = event.ordering_key
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(retrying=retrying)
            self._spawn(self._work(key, queue))
        elif queue.retrying and not retrying and self._retrying >= self._retry_room:
            self._spill(key)
            return
        queue.entries.append((entry_id, event, raw))
        self._inside.add(entry_id)
        self._count(queue, 1)

    def _spill(self, key: str) -> None:
        self._spilled.add(key)
        self._spilled_in_pass.add(key)

    async def _work(self, key: str, queue: _Queue) -> None:
        """A session's entries, one after another; the queue ends when empty, or spilled."""
        try:
            while queue.entries:
                entry_id, event, raw = queue.entries[0]
                if not await self._deliver(entry_id, event, raw, queue):
                    self._inside.difference_update(entry_id for entry_id, _, _ in queue.entries)
                    self._count(queue, -len(queue.entries))
                    queue.entries.clear()
                    self._spill(key)
                    return
                queue.entries.popleft()
                self._inside.discard(entry_id)
                self._count(queue, -1)
                if queue.retrying:  # the head that failed is done with: what follows is new again
                    self._count(queue, -len(queue.entries))
                    queue.retrying = False
                    self._count(queue, len(queue.entries))
                self._freed.set()
        finally:
            if self._queues.get(key) is queue:
                del self._queues[key]
            self._freed.set()

    async def _deliver(self, entry_id: bytes, event: Event, raw: bytes, queue: _Queue) -> bool:
        """Until the receiver has it, refuses it, or its retry window closes; then it leaves the pending list.
        False if, at its first failure, its queue did not fit in ``RETRYING``: spill it."""
        deadline = entry_time(entry_id) + self._max_age_s
        attempt = 0
        while True:
            async with self._parallel:
                verdict = await self._attempt(event)
            if isinstance(verdict, Delivered):
                self._outages.recovered()
                await self._redis.xack(self._stream, self.name, entry_id)
                metrics.event(self.name, "delivered")
                return True
            if isinstance(verdict, Refused):
                self._outages.recovered()
                detail = f"{verdict.err}: {verdict.description}"
                await self._bury(entry_id, event, raw, "refused", detail)
                return True
            self._outages.failed(f"events to {self.name}: {verdict.cause}")
            left = deadline - self._now()
            if left <= 0:
                await self._bury(entry_id, event, raw, "expired", f"last attempt: {verdict.cause}")
                return True
            metrics.event(self.name, "retried")
            if not queue.retrying:
                if self._retrying + len(queue.entries) > self._retry_room:
                    return False
                self._count(queue, -len(queue.entries))
                queue.retrying = True
                self._count(queue, len(queue.entries))
                self._freed.set()  # room among the healthy: read on
            await asyncio.sleep(min(backoff(attempt, self._backoff_max_s), left))
            attempt += 1

    async def _attempt(self, event: Event) -> Verdict:
        claims = set_claims(
            event, issuer=self._issuer, audience=self.receiver.audience, receiver=self.name, jwks_uri=self._jwks_uri
        )
        token = self._sign(claims)
        if token is None:
            return Failed("no signing key")
        return await self._pusher.push(self.receiver.url, token, self.receiver.bearer)

    async def _bury(self, entry_id: bytes, event: Event, raw: bytes, cause: str, detail: str) -> None:
        """Dead-letter, then acknowledge: a crash in between dead-letters it twice, never loses it."""
        await self._dead.add(receiver=self.name, event=raw, cause=cause, detail=detail)
        await self._redis.xack(self._stream, self.name, entry_id)
        metrics.event(self.name, cause)
        jti = set_jti(event, self.name)
        if cause == "refused":
            logger.warning("events to %s: SET %s (%s) refused, %s; dead-lettered", self.name, jti, event.type, detail)
        else:
            logger.warning(
                "events to %s: SET %s (%s) not delivered within AUTHORITY_EVENT_MAX_AGE_S=%d (%s); dead-lettered",
                self.name, jti, event.type, self._max_age_s, detail,
            )  # fmt: skip

    async def _group(self) -> dict[str, Any] | None:
        for group in await self._redis.xinfo_groups(self._stream):
            if group["name"].decode() == self.name:
                return group
        return None

    async def _bound_backlog(self) -> None:
        """More than the backlog waiting (pending in the group, or not yet read): drop the oldest of them (pending
        ones in no queue here — spilled —, then unread ones: acknowledged unsent). The unread count is the group's
        ``lag``, which Redis 7 and Valkey report; on Redis 6.2 only the stream's cap bounds that part."""
        group = await self._group()
        if group is None:
            return
        lag = group.get("lag")
        waiting = int(group["pending"]) + (lag if isinstance(lag, int) else 0)
        if waiting <= self._backlog:
            return
        excess, dropped = waiting - self._backlog, 0
        start = "-"
        while dropped < excess and int(group["pending"]) > len(self._inside):
            page = await self._redis.xpending_range(self._stream, self.name, min=start, max="+", count=PAGE)
            if not page:
                break
            spilled = [p["message_id"] for p in page if p["message_id"] not in self._inside][: excess - dropped]
            if spilled:
                dropped += await self._redis.xack(self._stream, self.name, *spilled)
            start = f"({cast(bytes, page[-1]['message_id']).decode()}"
        read = 0
        while dropped + read < excess and isinstance(lag, int):
            entries = await self._read(min(1000, excess - dropped - read))
            if not entries:
                break
            read += len(entries)
            events = [_event(fields, self.name) for _, fields in entries]
            dropped += sum(1 for event in events if event is not None and self.receiver.wants(event.type))
            await self._redis.xack(self._stream, self.name, *[entry_id for entry_id, _ in entries])
        if dropped:
            metrics.event(self.name, "dropped", dropped)
            logger.warning(
                "events to %s: %d waiting, over AUTHORITY_EVENT_BACKLOG=%d; dropped the %d oldest, never sent",
                self.name, waiting, self._backlog, dropped,
            )  # fmt: skip

    async def _measure(self) -> None:
        """The lag gauge: how old the oldest event not yet delivered is (pending, or not yet read), on Redis's
        clock."""
        self._checked = self._clock()
        await self._sync_clock()
        pending = await self._redis.xpending(self._stream, self.name)
        oldest = pending["min"] if pending["pending"] else None
        if oldest is None and (group := await self._group()) is not None:
            after = group["last-delivered-id"].decode()
            unread = cast(_Entries, await self._redis.xrange(self._stream, min=f"({after}", count=1))
            oldest = unread[0][0] if unread else None
        metrics.event_lag(self.name, max(0.0, self._now() - entry_time(oldest)) if oldest else 0.0)


def _event(fields: dict[bytes, bytes], receiver: str) -> Event | None:
    """The event of an outbox entry for ``receiver``: None if it is addressed to another (a redrive) or unreadable
    (logged: written by a version that wrote something else)."""
    to = fields.get(b"to")
    if to is not None and to.decode() != receiver:
        return None
    try:
        return msgspec.json.decode(fields[b"event"], type=Event)
    except (KeyError, msgspec.DecodeError) as exc:
        logger.error("events to %s: an outbox entry is not an event (%s); skipped", receiver, exc)
        return None


class Deliveries:
    """Every receiver's courier, in this process. A receiver URL the HTTP client cannot use is refused here, at
    start, rather than failing every attempt for a day."""

    def __init__(
        self,
        redis: Redis,
        receivers: list[EventReceiver],
        *,
        stream: str,
        prefix: str,
        dead: DeadLetters,
        sign: Callable[[SetClaims], str | None],
        issuer: str,
        timeout_s: float,
        max_age_s: int,
        backoff_max_s: float,
        backlog: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        broken = [
            f"AUTHORITY_EVENT_RECEIVERS: url {receiver.url!r} of receiver {receiver.label!r} cannot be used: {why}"
            for receiver in receivers
            if (why := unusable(receiver.url)) is not None
        ]
        if broken:
            raise SettingsError("\n".join(broken))
        self._pusher = Pusher(timeout_s)
        consumer = consumer_name()
        common: dict[str, Any] = {
            "stream": stream, "prefix": prefix, "dead": dead, "pusher": self._pusher, "sign": sign, "issuer": issuer,
            "jwks_uri": f"{issuer}/.well-known/jwks.json", "max_age_s": max_age_s, "backoff_max_s": backoff_max_s,
            "backlog": backlog, "consumer": consumer, "started": clock(), "clock": clock,
        }  # fmt: skip
        self.couriers = [Courier(receiver, redis, **common) for receiver in receivers]

    async def run(self) -> None:
        couriers = [asyncio.create_task(c.run(), name=f"events to {c.name}") for c in self.couriers]
        try:
            await asyncio.gather(*couriers)
        finally:
            await stop(couriers)

    async def close(self) -> None:
        await self._pusher.close()
