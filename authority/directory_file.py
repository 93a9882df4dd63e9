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
atomically replaced one included) is read again, and ``reload()`` reads it now, changed or not (``reread`` is the
SIGHUP handler of ``authority serve``). A new file that does not parse keeps the last good data and says why once
(once per cause, not once per check).

Kept on disk: every good read is also written, validated, to ``LastGood`` (``$TMPDIR/authority-<uid>/``, one file
per directory file's absolute path, owner-only), because a process can start on a bad file too: granian's SIGHUP
restarts every worker, and a new worker has no last good data in memory. A worker starting on a bad file starts on
that copy and says so in one line; with no copy (the first start ever on this host) a bad file stops the start.
``python -m authority.directory_file FILE`` checks a file before it is put in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import stat
import sys
import tempfile
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
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


class _Kept(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A ``LastGood`` file: the data as read, which file it was, and when (Unix time)."""

    source: str
    read_at: float
    data: msgspec.Raw


def runtime_folder() -> Path:
    """Where ``LastGood`` copies go: this user's folder in the temporary directory (``TMPDIR``), local to the host
    or container, which is all a restarted worker needs."""
    return Path(tempfile.gettempdir()) / f"authority-{os.geteuid()}"


class LastGood:
    """The last good read of the directory file ``source``, kept in ``folder`` for a process that starts on a bad
    file. The folder is made owner-only and used only if it is ours and nobody else may write in it: a planted copy
    would say who may be impersonated. A folder that cannot be used is said once, and the service goes on."""

    def __init__(self, source: Path, folder: Path) -> None:
        self.source = str(source.absolute())  # not resolved: a ConfigMap's symlinks change at each update
        self.folder = folder
        self.path = folder / f"{hashlib.sha256(self.source.encode()).hexdigest()[:32]}.json"
        self._said = False

    def _checked_folder(self) -> None:
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.folder, 0o700)
        found = os.lstat(self.folder)
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.geteuid() or found.st_mode & 0o077:
            raise PermissionError(f"{self.folder} is not a folder of this user's alone")

    def save(self, data: bytes) -> None:
        """Keep ``data`` (already parsed), atomically: a worker reading it meanwhile sees the old copy or the new."""
        staged = None
        try:
            self._checked_folder()
            fd, staged = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".new")  # mode 0600
            with os.fdopen(fd, "wb") as file:
                file.write(msgspec.json.encode(_Kept(self.source, time.time(), msgspec.Raw(data))))
            os.replace(staged, self.path)
        except OSError as exc:
            if staged is not None:
                Path(staged).unlink(missing_ok=True)
            if not self._said:
                self._said = True
                logger.warning(
                    "directory file %s: no copy of it can be kept in %s (%s); a worker that starts on a bad file "
                    "will stop instead of serving the last good data",
                    self.source,
                    self.folder,
                    exc.strerror or exc,
                )

    def load(self) -> tuple[Snapshot, float] | None:
        """The kept data and when it was read, or None if there is none that reads (as ``parse`` would)."""
        try:
            self._checked_folder()
            kept = msgspec.json.decode(self.path.read_bytes(), type=_Kept)
            if kept.source != self.source:
                return None
            return parse(bytes(kept.data)), kept.read_at
        except (OSError, ValueError):  # msgspec.DecodeError is a ValueError
            return None


_LIVE: weakref.WeakSet[FileDirectory] = weakref.WeakSet()  # every FileDirectory of the process, for ``reread``


def reread(signum: int, frame: object) -> None:
    """SIGHUP handler (``authority serve`` without ``--demo``): every directory file of this process read now, a bad
    one keeping the last good data. On the running event loop when there is one, so it runs between lookups."""
    del signum, frame
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    for directory in list(_LIVE):
        if loop is None:
            directory.reload()
        else:
            loop.call_soon_threadsafe(directory.reload)


class FileDirectory:
    """Lookups on the last good snapshot of ``path``; at start, a bad file falls back to the copy kept in
    ``keep_in`` (``runtime_folder()`` by default), and stops the start when there is none."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic, *, keep_in: Path | None = None) -> None:
        self.path = path
        self._clock = clock
        self._last_good = LastGood(path, runtime_folder() if keep_in is None else keep_in)
        self._seen: tuple[int, int, int] | None = None  # the stamp of the file last read
        self._refused: tuple[int, int, int] | None = None  # a changed file that did not parse
        self._complaint = ""  # why the file is not read: logged once per cause
        try:
            self._seen = self._stamp()
            self._snapshot = self._read()
        except ValueError as exc:
            kept = self._last_good.load()
            if kept is None:
                raise
            self._snapshot, read_at = kept
            self._refused, self._complaint = self._seen, str(exc)
            self._seen = None
            logger.error(
                "%s; still serving the last good directory, read at %s (kept in %s)",
                exc,
                datetime.fromtimestamp(read_at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
                self._last_good.path,
            )
        self._checked_at = clock()
        _LIVE.add(self)

    def _stamp(self) -> tuple[int, int, int]:
        try:
            found = os.stat(self.path)
        except OSError as exc:
            raise ValueError(f"directory file {self.path}: {exc.strerror}") from None
        return found.st_ino, found.st_size, found.st_mtime_ns

    def _read(self) -> Snapshot:
        """The file parsed; kept on disk too, for a worker that starts while a bad file is in place."""
        try:
            data = self.path.read_bytes()
            snapshot = parse(data)
        except (OSError, ValueError) as exc:
            raise ValueError(f"directory file {self.path}: {exc}") from None
        self._last_good.save(data)
        return snapshot

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

    def _current(self, fresh: bool) -> Snapshot:
        if fresh or self._clock() - self._checked_at >= CHECK_S:
            self._check()
        return self._snapshot

    async def location(self, location: str, *, fresh: bool = False) -> LocationEntry | None:
        return self._current(fresh).locations.get(location)

    async def coworker(self, location: str, coworker_id: int, *, fresh: bool = False) -> CoworkerEntry | None:
        return self._current(fresh).coworkers.get((location, coworker_id))


def main(argv: list[str]) -> int:
    """``python -m authority.directory_file FILE``: check a directory file as the service would read it, before
    putting it in place (a bad file is refused, and the last good data served meanwhile)."""
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
