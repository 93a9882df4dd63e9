"""Key lifecycle as pure functions of the stored records and the clock.

A key's state is never stored; it follows from its times, so every replica that reads the same records at the same
moment agrees on who signs, without talking to the others:

- **pending**  ``now < activates_at``: published, not signing;
- **active**   activated and not yet superseded: the one signer;
- **retiring** superseded, ``now < retires_at``: published, verifies only;
- **removed**  after ``retires_at``, or revoked: gone from the JWKS, verifies nothing.

Besides the signer, a published standby key always exists, so a rotation or an emergency retire only ever promotes a
key that JWKS consumers already hold. Only the replica holding the rotation lock changes records (``plan`` and
``revoke``); the others just read.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

State = Literal["pending", "active", "retiring", "removed"]


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One key at rest. Times are Unix seconds; ``superseded_at``/``retires_at`` are set when a successor is made."""

    kid: str
    alg: str
    created_at: int
    activates_at: int
    superseded_at: int | None = None
    retires_at: int | None = None
    revoked: bool = False
    encrypted: bool
    private_pem: str


@dataclass(frozen=True)
class Schedule:
    rotation_s: int  # how long a key signs
    prepublish_s: int  # how long every replica publishes a key before it signs (>= the JWKS cache lifetime)
    retention_s: int  # how long a superseded key still verifies (longest token life + skew + grace)
    serve_lag_s: int = 0  # how long after a record is written every replica serves it (refresh interval + rounding)

    @property
    def publish_s(self) -> int:
        """How long after a key is *written* it may sign: pre-publication counts from when replicas first serve
        it, not from when the record was stored."""
        return self.prepublish_s + self.serve_lag_s


def state(record: KeyRecord, now: int) -> State:
    if record.revoked:
        return "removed"
    if now < record.activates_at:
        return "pending"
    if record.superseded_at is None or now < record.superseded_at:
        return "active"
    if record.retires_at is not None and now < record.retires_at:
        return "retiring"
    return "removed"


def signer(records: Sequence[KeyRecord], now: int) -> KeyRecord | None:
    active = [r for r in records if state(r, now) == "active"]
    return max(active, key=lambda r: r.activates_at) if active else None


@dataclass(frozen=True)
class Plan:
    """What the lock holder must do now: records to write, keys to create (``new_keys``: their activation times,
    in order, each superseded by the next, see ``chain``) and records to delete."""

    updates: tuple[KeyRecord, ...] = ()
    new_keys: tuple[int, ...] = ()
    deletes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.updates and not self.new_keys and not self.deletes


def _supersede(record: KeyRecord, at: int, schedule: Schedule) -> KeyRecord:
    return msgspec.structs.replace(record, superseded_at=at, retires_at=at + schedule.retention_s)


def chain(created: Sequence[KeyRecord], schedule: Schedule) -> list[KeyRecord]:
    """New keys made together (a first signer and its standby): each is superseded when the next activates."""
    return [
        _supersede(record, following.activates_at, schedule) for record, following in itertools.pairwise(created)
    ] + list(created[-1:])


def plan(records: Sequence[KeyRecord], now: int, schedule: Schedule, *, alg: str, rotate_now: bool = False) -> Plan:
    """The next step of the schedule. The invariant it keeps: besides the signer, a **standby** key of the
    configured ``alg`` is always published, so that whatever happens next (the due rotation, an emergency retire)
    promotes a key every JWKS consumer already holds.

    - removed keys are deleted; a standby of another alg (the setting changed) too: it never signed, and a standby
      of the new alg replaces it through the same pre-publication;
    - with no signer (first start, every key revoked): the earliest standby signs now, or a new key does;
    - with no standby: one is made, signing when the signer is due but never before it has been served
      ``publish_s``;
    - ``rotate_now`` brings the standby forward, still no earlier than ``publish_s`` after it was written.
    """
    deletes = [r.kid for r in records if state(r, now) == "removed"]
    deletes += [r.kid for r in records if state(r, now) == "pending" and r.alg != alg]
    live = [r for r in records if r.kid not in deletes]
    current = signer(live, now)
    standby = sorted((r for r in live if state(r, now) == "pending"), key=lambda r: r.activates_at)
    if current is None:
        if not standby:
            return Plan(new_keys=(now, now + schedule.rotation_s), deletes=tuple(deletes))
        promoted = msgspec.structs.replace(standby[0], activates_at=now)
        if len(standby) > 1:
            return Plan(updates=(_supersede(promoted, standby[1].activates_at, schedule),), deletes=tuple(deletes))
        return Plan(
            updates=(_supersede(promoted, now + schedule.rotation_s, schedule),),
            new_keys=(now + schedule.rotation_s,),
            deletes=tuple(deletes),
        )
    # Two signers can only come from two rotators (a lock that expired mid-round): the older one retires now.
    extra = tuple(_supersede(r, now, schedule) for r in live if state(r, now) == "active" and r.kid != current.kid)
    if not standby:
        starts = max(current.activates_at + schedule.rotation_s, now + schedule.publish_s)
        return Plan(updates=(*extra, _supersede(current, starts, schedule)), new_keys=(starts,), deletes=tuple(deletes))
    if rotate_now:
        starts = max(now, standby[0].created_at + schedule.publish_s)
        if starts < standby[0].activates_at:
            brought = msgspec.structs.replace(standby[0], activates_at=starts)
            return Plan(updates=(*extra, _supersede(current, starts, schedule), brought), deletes=tuple(deletes))
    return Plan(updates=extra, deletes=tuple(deletes))


def revoke(records: Sequence[KeyRecord], kid: str, now: int, schedule: Schedule, *, alg: str) -> Plan:
    """Emergency retire: ``kid`` stops verifying at once. Revoking the signer promotes the standby, which every
    consumer already holds; in the same write a new standby is made (see ``plan``)."""
    target = next((r for r in records if r.kid == kid), None)
    if target is None:
        raise KeyError(kid)
    revoked = msgspec.structs.replace(target, revoked=True)
    after = plan([revoked if r.kid == kid else r for r in records], now, schedule, alg=alg)
    # The revoked record is written (and audited) as revoked; the next round deletes it.
    return Plan(
        updates=(revoked, *after.updates),
        new_keys=after.new_keys,
        deletes=tuple(d for d in after.deletes if d != kid),
    )
