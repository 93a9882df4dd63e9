"""Who exists where, and who administers whom: the portal's data, read through one interface.

Backends answer two lookups only, exactly the two the portal serves (``docs/directory-api.yaml``): a location, and
a coworker in a location. What may be done with the answers is ``policy``'s to say. A backend that cannot answer
raises ``Unavailable`` (503); it never guesses, and "not found" (``None``) is an answer, not a failure.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec


class LocationEntry(msgspec.Struct, frozen=True):
    """``GET {base}/locations/{location}``. ``impersonation: false`` is the portal's kill switch for the location.
    Fields are required; fields we do not know are ignored (the portal may say more than we read)."""

    id: str
    impersonation: bool
    # Optional: the location asks every impersonator for a reason and/or a ticket (beside the global settings).
    require_reason: bool = False
    require_ticket: bool = False


class Membership(msgspec.Struct, frozen=True):
    id: str
    role: Literal["member", "admin"]


class CoworkerEntry(msgspec.Struct, frozen=True):
    """``GET {base}/locations/{location}/coworkers/{id}``: a coworker of that location."""

    id: int
    impersonable: bool
    staff: bool
    teams: tuple[Membership, ...]

    def administers(self, member: CoworkerEntry) -> bool:
        """Whether this coworker is an admin of a team of which ``member`` is a (plain) member."""
        mine = {t.id for t in self.teams if t.role == "admin"}
        return any(t.role == "member" and t.id in mine for t in member.teams)


class Directory(Protocol):
    """``fresh``: the answer as the portal gives it now, not one remembered from an earlier lookup (the exchange's
    re-check: the last chance to refuse a token minted on an answer that has changed since)."""

    async def location(self, location: str, *, fresh: bool = False) -> LocationEntry | None:
        """The location, or None if the portal has no such location."""

    async def coworker(self, location: str, coworker_id: int, *, fresh: bool = False) -> CoworkerEntry | None:
        """The coworker as a member of ``location``, or None if they are not in it."""
