"""Runs the key lifecycle in a live service: reads the records, lets one replica apply the schedule under the
rotation lock, and keeps this replica's keyring current, so keys rotate with no restart anywhere."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple, Protocol, TypeVar

import anyio.to_thread

from authority.audit import AuditLog
from authority.connection import REDIS_ERRORS
from authority.events.outbox import Outbox
from authority.events.set import key_retired
from authority.keys.jwk import PrivateKey, public_jwk
from authority.keys.keyring import Keyring, LoadedKey, new_record, unseal_record
from authority.keys.lifecycle import KeyRecord, Plan, Schedule, chain, plan, revoke, state
from authority.keys.lock import Lease, RotationLock
from authority.keys.notices import KeyNotices
from authority.keys.sealing import KeyStoreError
from authority.outages import redis_cause
from authority.refusals import UnknownKey
from authority.settings import SettingsError

logger = logging.getLogger("authority.keys")
T = TypeVar("T")
REREAD_EVERY_S = 1.0  # unknown kids re-read the records at most this often
LOCK_WAIT_S = 20  # how long a command waits for another replica's rotation round to let go of the lock


class Effect(NamedTuple):
    """Where a key command is in effect when it returns: processes that re-read the records, of those listening."""

    confirmed: int
    listening: int


class KeyStore(Protocol):
    async def load(self) -> list[KeyRecord]: ...
    async def save(self, records: Sequence[KeyRecord]) -> None: ...
    async def delete(self, kids: Sequence[str]) -> None: ...


class KeyManager:
    def __init__(
        self,
        store: KeyStore,
        lock: RotationLock,
        notices: KeyNotices,
        *,
        alg: str,
        passphrase: str | None,
        demo: bool,
        schedule: Schedule,
        refresh_s: float,
        clock: Callable[[], float],
        audit: AuditLog,
        outbox: Outbox | None = None,
    ) -> None:
        if not passphrase and not demo:
            # The one check of it: every key this process makes or reads goes through here.
            raise SettingsError("AUTHORITY_KEY_PASSPHRASE is required outside --demo: private keys are encrypted")
        self.store = store
        self.lock = lock
        self.notices = notices
        self.audit = audit
        self.outbox = outbox  # where a key retired in an emergency is announced to event receivers
        self._unpublished: list[str] = []  # the retires whose announcement failed, for ``retire`` to report
        self.alg = alg
        self.schedule = schedule
        self.refresh_s = refresh_s  # how often the records are re-read, and the schedule run
        self.clock = clock
        self._passphrase = passphrase
        self._demo = demo
        self._private: dict[str, PrivateKey] = {}  # unsealing is slow (KDF): once per key per process
        self.keyring = Keyring(())
        self.refreshed_at: int | None = None
        self._reread_lock = asyncio.Lock()
        self._next_reread = 0.0

    def _now(self) -> int:
        return int(self.clock())

    async def _loaded(self, record: KeyRecord, now: int) -> LoadedKey:
        private = self._private.get(record.kid)
        if private is None:
            # In a thread: a passphrase KDF (and RSA) takes long enough to stall every request on the loop.
            unseal = partial(unseal_record, record, self._passphrase, demo=self._demo, source=str(self.store))
            private = self._private[record.kid] = await anyio.to_thread.run_sync(unseal)
        public = private.public_key()
        return LoadedKey(record, private, public, public_jwk(public, record.alg), state(record, now))

    def fresh(self, now: int) -> bool:
        """Whether the records were read lately: a replica that cannot read them should not take traffic."""
        return self.refreshed_at is not None and now - self.refreshed_at <= max(10, 3 * self.refresh_s)

    async def _install(self, records: list[KeyRecord], now: int) -> None:
        published = [r for r in records if state(r, now) != "removed"]
        keys = Keyring(tuple([await self._loaded(r, now) for r in published]))
        if [(k.record, k.state) for k in keys.keys] != [(k.record, k.state) for k in self.keyring.keys]:
            self.keyring = keys
        self.refreshed_at = now
        live = {r.kid for r in published}
        self._private = {kid: key for kid, key in self._private.items() if kid in live}

    async def refresh(self) -> Keyring:
        """Re-read the records and re-derive states (a pending key may have become active since)."""
        await self._install(await self.store.load(), self._now())
        return self.keyring

    async def _apply(
        self, step: Plan, records: list[KeyRecord], now: int, reason: str, lease: Lease
    ) -> list[KeyRecord]:
        made = []
        for activates_at in step.new_keys:
            make = partial(new_record, self.alg, self._passphrase, now=now, activates_at=activates_at)
            made.append(await anyio.to_thread.run_sync(make))  # RSA generation takes up to a second
        created = chain(made, self.schedule)
        await lease.confirm()
        await self.store.save([*step.updates, *created])
        await self.store.delete(step.deletes)
        for record in created:
            self.audit.emit(
                "key", "created", kid=record.kid, alg=record.alg, activates_at=record.activates_at, reason=reason
            )
        for record in step.updates:
            outcome = "revoked" if record.revoked else "rescheduled"
            entry = self.audit.entry("key", outcome, kid=record.kid, retires_at=record.retires_at, reason=reason)
            if record.revoked and self.outbox is not None:  # an emergency: receivers are told (a SET) at once
                try:
                    await self.outbox.publish(entry, key_retired(kid=record.kid, at=now))
                except Exception as exc:  # the key is retired in the store: finish, then say what is missing
                    line = entry.line.decode()
                    logger.error("key %s retired, its audit entry and event not written: %s", record.kid, line)
                    self._unpublished.append(f"{record.kid} ({type(exc).__name__}: {exc})")
            else:
                self.audit.emit_entry(entry)
        for kid in step.deletes:
            self.audit.emit("key", "removed", kid=kid, reason=reason)
        changed = {r.kid: r for r in [*step.updates, *created]}
        kept = [changed.pop(r.kid, r) for r in records if r.kid not in step.deletes]
        return [*kept, *changed.values()]

    async def tick(self) -> Keyring:
        """One round of the schedule. Cheap when nothing is due: one read, no lock. A change is announced."""
        now = self._now()
        records = await self.store.load()
        if not plan(records, now, self.schedule, alg=self.alg).empty:
            async with self.lock.hold() as lease:
                if lease is not None:
                    records = await self.store.load()  # re-read under the lock: another replica may have acted
                    step = plan(records, now, self.schedule, alg=self.alg)
                    if not step.empty:
                        records = await self._apply(step, records, now, "schedule", lease)
                        await self.notices.announce()
        await self._install(records, now)
        return self.keyring

    async def start(self, wait_s: float) -> None:
        """The first rounds, until this process holds a signer: a process must not take requests, nor say it is
        ready, with an empty key set. On a first start another process may hold the rotation lock while it makes
        the keys; this one re-reads until they are there, for at most ``wait_s`` (the lock's lifetime: a holder
        that died lets go by then)."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + wait_s, 0.05
        while self.keyring.signer_at(self._now()) is None:
            if loop.time() > deadline:
                raise KeyStoreError(
                    f"no signing key after {wait_s:.0f} s: another process holds the rotation lock and wrote none"
                )
            await self.tick()
            if self.keyring.signer_at(self._now()) is None:
                await asyncio.sleep(pause)
                pause = min(2 * pause, 1.0)

    async def reread_for(self, kid: str) -> bool:
        """Whether ``kid``, unknown here, is known after re-reading the records: another process may have just
        written it (a first start, a retire) and this one not yet heard. At most one re-read per
        ``REREAD_EVERY_S`` whatever the requests ask, so made-up kids cost nothing; concurrent askers share it."""
        async with self._reread_lock:
            if any(k.kid == kid for k in self.keyring.keys):
                return True  # the re-read another request waited for found it
            loop = asyncio.get_running_loop()
            if loop.time() < self._next_reread:
                return False
            self._next_reread = loop.time() + REREAD_EVERY_S
            await self.refresh()
            return any(k.kid == kid for k in self.keyring.keys)

    async def verified(self, verify: Callable[[Keyring], T]) -> T:
        """``verify`` (a token check against a keyring) against this process's keys; if it names a kid unknown
        here, once more after re-reading the records (``reread_for``), so a token another process signed with a
        key it has just made is not refused as unknown (a client reads that 401 as final)."""
        try:
            return verify(self.keyring)
        except UnknownKey as exc:
            if not await self.reread_for(exc.kid):
                raise
            return verify(self.keyring)

    async def _locked(self, make: Callable[[list[KeyRecord], int], Plan], reason: str, wait_s: float) -> Effect:
        """Apply ``make``'s plan under the lock, then announce it and wait up to ``wait_s`` for every listening
        process to have re-read the records."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOCK_WAIT_S
        while True:
            async with self.lock.hold() as lease:
                if lease is not None:
                    now = self._now()
                    records = await self.store.load()
                    await self._install(await self._apply(make(records, now), records, now, reason, lease), now)
                    break
            if loop.time() > deadline:
                raise TimeoutError("another replica holds the rotation lock")
            await asyncio.sleep(0.1)
        return Effect(*await self.notices.announce(wait_s))

    async def rotate_now(self, wait_s: float = 0) -> Effect:
        """Bring the standby forward: it signs as soon as it has been published for the pre-publish time."""
        return await self._locked(
            lambda records, now: plan(records, now, self.schedule, alg=self.alg, rotate_now=True), "manual", wait_s
        )

    async def retire(self, kid: str, wait_s: float = 0) -> Effect:
        """Emergency: ``kid`` leaves the JWKS and stops verifying at once; the standby signs in its place. If its
        audit entry and event could not be written (the retire itself is done, and announced to every process),
        ``KeyStoreError`` says so: the operator must know the receivers were not told."""
        self._unpublished = []
        effect = await self._locked(
            lambda records, now: revoke(records, kid, now, self.schedule, alg=self.alg), "emergency", wait_s
        )
        if self._unpublished:
            raise KeyStoreError(
                f"key retired, in effect on {effect.confirmed} of {effect.listening} running service processes; but "
                f"its audit entry and key-retired event were not written: {', '.join(self._unpublished)}; the "
                "audit line is in the log above: tell the event receivers by hand"
            )
        return effect

    async def run(self) -> None:
        """Background loop: a round every ``refresh_s``; a failed round (Redis down) is logged once with its cause,
        retried every round, never fatal; readiness says the rest (``fresh``)."""
        failing = False
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.tick()
            except Exception as exc:
                if not failing:
                    self._failing(exc)
                failing = True
            else:
                if failing:
                    logger.warning("key rounds succeed again")
                failing = False

    def _failing(self, exc: Exception) -> None:
        """The first failed round, said in one line naming its cause as the outage log does (``redis:
        ConnectionError``), or with the key store's own message (a record sealed with another passphrase); only a
        fault of ours carries its traceback."""
        if isinstance(exc, REDIS_ERRORS):
            cause = redis_cause("redis", exc)
        elif isinstance(exc, KeyStoreError):
            cause = str(exc)
        else:
            logger.exception("key rounds failing; retrying every %s s until they succeed", self.refresh_s)
            return
        logger.warning("key rounds failing (%s); retrying every %s s until they succeed", cause, self.refresh_s)
