"""Key lifecycle as pure functions of the stored records and the clock.

A key's state is never stored; it follows from its times, so every replica that reads the same records at the same
moment agrees on who signs, without talking to the others:

- **pending**  ``now < activates_at``: published, not signing;
- **active**   activated and not yet superseded: the one signer;
- **retiring** superseded, ``now < retires_at``: published, verifies only;
- **removed**  after ``retires_at``, or revoked: gone from the JWKS, verifies nothing.

Only the replica holding the rotation lock changes records (``plan`` and ``revoke``); the others just read.
"""

from __future__ import annotations

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
    prepublish_s: int  # how long a key is published before it signs (>= the JWKS cache lifetime)
    retention_s: int  # how long a superseded key still verifies (longest token life + skew + grace)


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
    """What the lock holder must do now: records to write (changed or new: ``new_key_at`` asks for a key that
    activates then, its predecessor already updated in ``updates``) and records to delete."""

    updates: tuple[KeyRecord, ...] = ()
    new_key_at: int | None = None
    deletes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.updates and self.new_key_at is None and not self.deletes


def _supersede(record: KeyRecord, at: int, schedule: Schedule) -> KeyRecord:
    return msgspec.structs.replace(record, superseded_at=at, retires_at=at + schedule.retention_s)


def plan(records: Sequence[KeyRecord], now: int, schedule: Schedule, *, rotate_now: bool = False) -> Plan:
    """The next step of the schedule: drop removed keys; with no signer, make one at once (first start, or after
    an emergency revoke); when the signer is due, publish its successor ``prepublish_s`` before it takes over.

    ``rotate_now`` starts a rotation early (still pre-published, so no verifier is caught out).
    """
    deletes = tuple(r.kid for r in records if state(r, now) == "removed")
    live = [r for r in records if r.kid not in deletes]
    current = signer(live, now)
    pending = sorted((r for r in live if state(r, now) == "pending"), key=lambda r: r.activates_at)
    if current is None:
        # Nobody signs (first start, or every key gone): the earliest pending key, or a new one, signs now.
        if pending:
            return Plan(updates=(msgspec.structs.replace(pending[0], activates_at=now),), deletes=deletes)
        return Plan(new_key_at=now, deletes=deletes)
    # Two signers can only come from two rotators (a lock that expired mid-round): the older one retires now.
    extra = tuple(_supersede(r, now, schedule) for r in live if state(r, now) == "active" and r.kid != current.kid)
    due = current.activates_at + schedule.rotation_s
    if pending or (not rotate_now and now < due - schedule.prepublish_s):
        return Plan(updates=extra, deletes=deletes)
    starts = now + schedule.prepublish_s if rotate_now else max(now + schedule.prepublish_s, due)
    return Plan(updates=(*extra, _supersede(current, starts, schedule)), new_key_at=starts, deletes=deletes)


def revoke(records: Sequence[KeyRecord], kid: str, now: int, schedule: Schedule) -> Plan:
    """Emergency retire: ``kid`` stops verifying at once. Revoking the signer promotes the pending key (or asks
    for a new one) immediately; revoking a pending key gives the signer back its unlimited term."""
    target = next((r for r in records if r.kid == kid), None)
    if target is None:
        raise KeyError(kid)
    revoked = msgspec.structs.replace(target, revoked=True)
    was = state(target, now)
    updates: list[KeyRecord] = [revoked]
    if was == "pending":
        current = signer(records, now)
        if current is not None and current.superseded_at == target.activates_at:
            updates.append(msgspec.structs.replace(current, superseded_at=None, retires_at=None))
        return Plan(updates=tuple(updates))
    if was != "active":
        return Plan(updates=tuple(updates))
    pending = [r for r in records if state(r, now) == "pending"]
    if pending:
        successor = min(pending, key=lambda r: r.activates_at)
        updates.append(msgspec.structs.replace(successor, activates_at=now))
        return Plan(updates=tuple(updates))
    return Plan(updates=tuple(updates), new_key_at=now)
