"""Who exists where, and which team admin administers whom: the portal's data, read through one interface.

Backends answer two questions only, so an HTTP backend asking the portal can replace the file without the
service noticing. A backend that cannot answer raises ``Unavailable`` (503); it never guesses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import msgspec


class Directory(Protocol):
    async def is_coworker(self, location: str, coworker_id: int) -> bool:
        """Whether ``coworker_id`` is a customer of ``location``."""

    async def administers(self, location: str, admin_id: int, member_id: int) -> bool:
        """Whether ``admin_id`` administers a team in ``location`` of which ``member_id`` is a member."""


class Team(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    admins: frozenset[int]
    members: frozenset[int]


class Location(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    coworkers: frozenset[int]
    teams: dict[str, Team] = {}


class DirectoryData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    locations: dict[str, Location]


DEMO_DIRECTORY = Path(__file__).with_name("demo_directory.json")


class FileDirectory:
    """A JSON file loaded once at start (the demo default, and fine for a small, static portal)."""

    def __init__(self, path: Path) -> None:
        try:
            self._data = msgspec.json.decode(path.read_bytes(), type=DirectoryData)
        except (OSError, msgspec.DecodeError) as exc:
            raise ValueError(f"directory file {path}: {exc}") from None

    async def is_coworker(self, location: str, coworker_id: int) -> bool:
        place = self._data.locations.get(location)
        return place is not None and coworker_id in place.coworkers

    async def administers(self, location: str, admin_id: int, member_id: int) -> bool:
        place = self._data.locations.get(location)
        if place is None or member_id not in place.coworkers:
            return False
        return any(admin_id in t.admins and member_id in t.members for t in place.teams.values())
