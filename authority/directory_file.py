"""The directory as a JSON file (the demo default; fine for a small portal), live: a changed file is read again.

Format (``authority/demo_directory.json``)::

    {"locations": {"1": {"impersonation": true,
                         "coworkers": [5, 42, {"id": 99, "impersonable": false}, {"id": 7, "staff": true}],
                         "teams": {"7": {"admins": [5], "members": [42, 43]}}}}}

A coworker is an id, or an object with the id and the flags that differ from the defaults (impersonable, not
staff); ``impersonation`` defaults to true; a coworker among a team's admins and its members is an admin of it. A
field we do not know, or a coworker listed twice with different flags, is refused: the operator writes this file,
and a typo (``"impersonable "``, ``"impersonaton"``) or a leftover line must not silently change who may be
impersonated. Errors say where, as a JSON path (``$.locations["1"].coworkers[2]``).

Live: the file is looked at again at most every ``CHECK_S`` on lookup; a changed file (its inode, size or mtime: an
atomically replaced one included) is read again, and ``reload()`` reads it now, changed or not. A new file that
does not parse keeps the last good data and says why once (once per cause, not once per check). At start a bad
file stops the start: there is no last good data yet. Under granian, SIGHUP restarts the workers, and each new
worker reads the file at its start, which is why a bad file then stops them (``python -m authority.directory_file
FILE`` checks one first).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from authority.directory import CoworkerEntry, LocationEntry, Membership

CHECK_S = 1.0  # how stale the data may be after the file changed
DEMO_DIRECTORY = Path(__file__).with_name("demo_directory.json")
logger = logging.getLogger("authority")
T = TypeVar("T")


class _Flags(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    id: int
    impersonable: bool = True
    staff: bool = False


class _Team(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    admins: frozenset[int]
    members: frozenset[int]


class _Location(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    coworkers: list[int | _Flags]
    teams: dict[str, msgspec.Raw] = {}  # each decoded on its own, so an error names its team
    impersonation: bool = True
    require_reason: bool = False
    require_ticket: bool = False


class _File(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    locations: dict[str, msgspec.Raw]  # each decoded on its own, so an error names its location (msgspec says `[...]`)


class Snapshot(msgspec.Struct, frozen=True):
    """The file's data as the two lookups read it."""

    locations: dict[str, LocationEntry]
    coworkers: dict[tuple[str, int], CoworkerEntry]


def _decode(data: bytes | msgspec.Raw, into: type[T], path: str) -> T:
    """``data`` as ``into``; ValueError with msgspec's reason and where in the file (``path`` is ``data``'s)."""
    try:
        return msgspec.json.decode(data, type=into)
    except msgspec.DecodeError as exc:
        reason = str(exc)
        if " - at `$" in reason:
            raise ValueError(reason.replace(" - at `$", f" - at `{path}", 1)) from None
        raise ValueError(reason if path == "$" else f"{reason} - at `{path}`") from None


def _key(name: str) -> str:
    return f"[{msgspec.json.encode(name).decode()}]"


def parse(data: bytes) -> Snapshot:
    """The file's bytes as lookups; ValueError naming what is wrong and where (a JSON path)."""
    parsed = _decode(data, _File, "$")
    locations: dict[str, LocationEntry] = {}
    coworkers: dict[tuple[str, int], CoworkerEntry] = {}
    for name, raw in parsed.locations.items():
        path = f"$.locations{_key(name)}"
        place = _decode(raw, _Location, path)
        teams = {team_id: _decode(team, _Team, f"{path}.teams{_key(team_id)}") for team_id, team in place.teams.items()}
        locations[name] = LocationEntry(
            id=name,
            impersonation=place.impersonation,
            require_reason=place.require_reason,
            require_ticket=place.require_ticket,
        )
        for given in place.coworkers:
            flags = given if isinstance(given, _Flags) else _Flags(id=given)
            memberships = tuple(
                Membership(id=team_id, role="admin" if flags.id in team.admins else "member")
                for team_id, team in sorted(teams.items())
                if flags.id in team.admins or flags.id in team.members
            )
            entry = CoworkerEntry(id=flags.id, impersonable=flags.impersonable, staff=flags.staff, teams=memberships)
            if coworkers.setdefault((name, flags.id), entry) != entry:  # the same twice is harmless (the first format)
                raise ValueError(f"coworker {flags.id} is listed twice, with different flags - at `{path}.coworkers`")
    return Snapshot(locations, coworkers)


class FileDirectory:
    """Lookups on the last good snapshot of ``path``; the file is read at start (a bad file stops the start)."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._seen = self._stamp()
        self._snapshot = self._read()
        self._checked_at = clock()
        self._refused: tuple[int, int, int] | None = None  # a changed file that did not parse
        self._complaint = ""  # why the file is not read: logged once per cause

    def _stamp(self) -> tuple[int, int, int]:
        try:
            stat = os.stat(self.path)
        except OSError as exc:
            raise ValueError(f"directory file {self.path}: {exc.strerror}") from None
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _read(self) -> Snapshot:
        try:
            return parse(self.path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"directory file {self.path}: {exc}") from None

    def reload(self) -> None:
        """Read the file now, changed or not (an operator asked); keep the last good data if it does not parse."""
        self._check(force=True)

    def _check(self, *, force: bool = False) -> None:
        """Read the file again if its stamp changed (or ``force``); keep the last good data if it does not parse."""
        self._checked_at = self._clock()
        try:
            stamp = self._stamp()
            if not force and stamp == self._seen:
                if self._complaint:  # back as it was read last (renamed away and back): that data is current
                    self._complaint = ""
                    logger.warning("directory file %s is back, unchanged", self.path)
                return
            if not force and stamp == self._refused:
                return
            self._refused = stamp  # until it parses: a bad file is read once, not at every check
            snapshot = self._read()
        except ValueError as exc:
            if str(exc) != self._complaint:
                logger.error("%s; still serving the directory read before", exc)
            self._complaint = str(exc)
            return
        self._snapshot, self._seen, self._refused, self._complaint = snapshot, stamp, None, ""
        logger.warning("directory file %s read again: %d locations", self.path, len(snapshot.locations))

    def _current(self) -> Snapshot:
        if self._clock() - self._checked_at >= CHECK_S:
            self._check()
        return self._snapshot

    async def location(self, location: str) -> LocationEntry | None:
        return self._current().locations.get(location)

    async def coworker(self, location: str, coworker_id: int) -> CoworkerEntry | None:
        return self._current().coworkers.get((location, coworker_id))


def main(argv: list[str]) -> int:
    """``python -m authority.directory_file FILE``: check a directory file as the service would read it, before
    putting it in place (a bad file is refused at a worker's start, and SIGHUP restarts granian's workers)."""
    if len(argv) != 1:
        print("usage: python -m authority.directory_file FILE", file=sys.stderr)
        return 2
    try:
        snapshot = parse(Path(argv[0]).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"directory file {argv[0]}: {exc.strerror if isinstance(exc, OSError) else exc}", file=sys.stderr)
        return 1
    print(f"directory file {argv[0]}: {len(snapshot.locations)} locations, {len(snapshot.coworkers)} coworkers")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
