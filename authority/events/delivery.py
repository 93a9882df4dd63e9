"""Delivery: every event in the outbox reaches every receiver that wants it, at least once, and a session's events
in the order they were written (started before ended or revoked).

Each receiver is a consumer group on the outbox stream, named after it: its own position and its own pending
entries, so one receiver's outage holds nobody else back, and its backlog is its group's lag. One process at a time
delivers for a receiver (``lease``); every process of every replica runs a courier per receiver, and those without
the lease stand by. A new holder first claims what its predecessor held and had not acknowledged (``XAUTOCLAIM``,
oldest first), then reads on: an entry leaves the group's pending list only when its receiver has it (202) or it is
dead-lettered, so a process killed mid-delivery loses nothing; what it had sent but not acknowledged is sent again,
with the same ``jti``, and the receiver drops the duplicate.

Within a process, a courier holds at most ``HELD`` entries: up to ``PARALLEL`` POSTs at once, each session's
entries one after another in stream order. A failed attempt is retried with exponential backoff and jitter (at
most ``AUTHORITY_EVENT_BACKOFF_MAX_S`` apart) until ``AUTHORITY_EVENT_MAX_AGE_S`` after the event was written, then
dead-lettered; a refusal (RFC 8935 400) is dead-lettered at once. While a receiver is down its held entries wait
to retry and nothing more is read: the backlog stays in Redis, where the holder keeps it within
``AUTHORITY_EVENT_BACKLOG`` by dropping the oldest (counted, logged). SETs are signed when sent, with the key
that signs then: one signed at write time would be refused by every receiver once its key retires, and a key is
retired in an emergency precisely when it may have leaked. The ``jti`` does not change with the signature.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from typing import Any, cast

import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from authority import metrics
from authority.background import stop
from authority.connection import REDIS_ERRORS
from authority.events.dead_letters import DeadLetters
from authority.events.lease import RENEW_S, Lease, consumer_name
from authority.events.push import Delivered, Failed, Pusher, Refused, Verdict
from authority.events.set import SET_TYP, Event, SetClaims, set_claims, set_jti
from authority.keys import KeyManager
from authority.outages import OutageLog, redis_cause
from authority.settings import EventReceiver
from authority.tokens import sign

logger = logging.getLogger("authority.events")
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
HELD = 64  # entries a courier holds at once: in flight, waiting for their session's turn, or waiting to retry
PARALLEL = 16  # POSTs in flight to one receiver at once
IDLE_S = 0.2  # pause after a read that found nothing new
FIRST_RETRY_S = 0.5
CHECK_EVERY_S = 2.0  # how often the lag gauge is measured and the backlog bound enforced
_jitter = random.Random()  # noqa: S311 - spreads retries, guards no secret


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
        start_id: str,
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
        self._consumer = consumer
        self._start_id = start_id
        self._clock = clock
        self._lease = Lease(redis, f"{prefix}events:lease:{self.name}", consumer)
        self._outages = OutageLog(logger)
        self._parallel = asyncio.Semaphore(PARALLEL)
        self._freed = asyncio.Event()
        self._held = 0
        self._tails: dict[str, asyncio.Future[None]] = {}
        self._children: set[asyncio.Task[None]] = set()
        self._failed: asyncio.Future[None] | None = None  # while holding the lease: the first child's failure
        self._checked = 0.0

    async def prepare(self) -> None:
        """The receiver's consumer group, made once for every process: it starts at the first start of a process
        with this receiver configured, so every event written since is delivered to it, none from before."""
        try:
            await self._redis.xgroup_create(self._stream, self.name, id=self._start_id, mkstream=True)
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
            self._tails.clear()
            self._held = 0
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
        """What the previous holder held first (oldest first, so each session stays in order), then new entries."""
        await self._take(await self._claim())
        while True:
            if self._clock() - self._checked >= CHECK_EVERY_S:  # also while the receiver is down: then above all
                await self._bound_backlog()
                await self._measure()
            if self._held >= HELD:
                self._freed.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_EVERY_S):
                        await self._freed.wait()
                continue
            entries = await self._read(HELD - self._held)
            await self._take(entries)
            if not entries:
                await asyncio.sleep(IDLE_S)

    async def _read(self, count: int) -> _Entries:
        """The next ``count`` entries no consumer of the group has read, now this one's."""
        reply = await self._redis.xreadgroup(self.name, self._consumer, {self._stream: ">"}, count=count)
        return cast(list[tuple[bytes, _Entries]], reply)[0][1] if reply else []

    async def _claim(self) -> _Entries:
        """Every pending entry of the group, now this consumer's: the previous holder's unfinished deliveries.
        Consumers left with nothing pending (processes gone) are removed from the group on the way."""
        claimed: _Entries = []
        start: bytes | str = "0-0"
        while True:
            reply = await self._redis.xautoclaim(self._stream, self.name, self._consumer, 0, start, count=HELD)
            next_start, entries = reply[0], cast(_Entries, reply[1])
            claimed += [(entry_id, fields) for entry_id, fields in entries if fields]
            if next_start in (b"0-0", "0-0"):
                break
            start = next_start
        for consumer in await self._redis.xinfo_consumers(self._stream, self.name):
            if consumer["name"].decode() != self._consumer and not consumer["pending"]:
                await self._redis.xgroup_delconsumer(self._stream, self.name, consumer["name"])
        return claimed

    async def _take(self, entries: _Entries) -> None:
        """Start delivering what this receiver wants; acknowledge the rest (another receiver's, unreadable)."""
        skipped = []
        for entry_id, fields in entries:
            event = _event(fields, self.name)
            if event is None or not self.receiver.wants(event.type):
                skipped.append(entry_id)
                continue
            self._held += 1
            self._spawn(self._in_order(entry_id, event, fields[b"event"]))
        if skipped:
            await self._redis.xack(self._stream, self.name, *skipped)

    async def _in_order(self, entry_id: bytes, event: Event, raw: bytes) -> None:
        """Deliver after the entry before it of the same session (or key) is done with."""
        key = event.ordering_key
        before = self._tails.get(key)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tails[key] = mine
        try:
            if before is not None:
                await asyncio.shield(before)  # shielded: stopping this task must not cancel its predecessor's
            await self._deliver(entry_id, event, raw)
        finally:
            mine.set_result(None)
            if self._tails.get(key) is mine:
                del self._tails[key]
            self._held -= 1
            self._freed.set()

    async def _deliver(self, entry_id: bytes, event: Event, raw: bytes) -> None:
        """Until the receiver has it, refuses it, or its retry window closes; then it leaves the pending list."""
        deadline = entry_time(entry_id) + self._max_age_s
        attempt = 0
        while True:
            async with self._parallel:
                verdict = await self._attempt(event)
            if isinstance(verdict, Delivered):
                self._outages.recovered()
                await self._redis.xack(self._stream, self.name, entry_id)
                metrics.event(self.name, "delivered")
                return
            if isinstance(verdict, Refused):
                self._outages.recovered()
                detail = f"{verdict.err}: {verdict.description}"
                await self._bury(entry_id, event, raw, "refused", detail)
                return
            self._outages.failed(f"events to {self.name}: {verdict.cause}")
            left = deadline - self._clock()
            if left <= 0:
                await self._bury(entry_id, event, raw, "expired", f"last attempt: {verdict.cause}")
                return
            metrics.event(self.name, "retried")
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
        """More than the backlog waiting to be read: drop the oldest of them (read and acknowledged unsent). The
        count is the group's ``lag``, which Redis 7 and Valkey report; on Redis 6.2 only the stream's cap bounds it."""
        group = await self._group()
        lag = group.get("lag") if group else None
        if not isinstance(lag, int) or lag <= self._backlog:
            return
        excess, dropped, read = lag - self._backlog, 0, 0
        while read < excess:
            entries = await self._read(min(1000, excess - read))
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
                self.name, lag, self._backlog, dropped,
            )  # fmt: skip

    async def _measure(self) -> None:
        """The lag gauge: how old the oldest event not yet delivered is (pending, or not yet read)."""
        self._checked = self._clock()
        pending = await self._redis.xpending(self._stream, self.name)
        oldest = pending["min"] if pending["pending"] else None
        if oldest is None and (group := await self._group()) is not None:
            after = group["last-delivered-id"].decode()
            unread = cast(_Entries, await self._redis.xrange(self._stream, min=f"({after}", count=1))
            oldest = unread[0][0] if unread else None
        metrics.event_lag(self.name, max(0.0, self._clock() - entry_time(oldest)) if oldest else 0.0)


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
    """Every receiver's courier, in this process."""

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
        self._pusher = Pusher(timeout_s)
        consumer = consumer_name()
        start_id = f"{int(clock() * 1000)}-0"
        common: dict[str, Any] = {
            "stream": stream, "prefix": prefix, "dead": dead, "pusher": self._pusher, "sign": sign, "issuer": issuer,
            "jwks_uri": f"{issuer}/.well-known/jwks.json", "max_age_s": max_age_s, "backoff_max_s": backoff_max_s,
            "backlog": backlog, "consumer": consumer, "start_id": start_id, "clock": clock,
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
