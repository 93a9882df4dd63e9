"""Where the adapter's answers come from: the authority's directory file, or a SQLite database.

Both answer the two lookups in the terms of ``authority.directory`` (``LocationEntry``, ``CoworkerEntry``), so the
JSON the adapter serves is those structs encoded: the contract and the authority's decoder are one definition.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Protocol

from authority.directory import CoworkerEntry, LocationEntry, Membership
from authority.directory_file import Snapshot, parse

logger = logging.getLogger("portal_adapter")


class Source(Protocol):
    """The two lookups, synchronous (the app runs them in a worker thread); None is "not found"."""

    def location(self, location: str) -> LocationEntry | None: ...

    def coworker(self, location: str, coworker_id: int) -> CoworkerEntry | None: ...


class FileSource:
    """The authority's directory file (``authority/directory_file.py``, one format for both), read again as soon
    as it changes: its inode, size and mtime are looked at on every lookup. A changed file that does not parse
    keeps the last good data, and is complained about once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self._snapshot = parse(path.read_bytes())  # a bad file at start stops the start
        self._refused: tuple[int, int, int] | None = None  # a changed file that did not parse
        self._complaint = ""  # why the file is not read: logged once per cause

    def _stat(self) -> tuple[int, int, int]:
        stat = os.stat(self.path)
        return stat.st_ino, stat.st_size, stat.st_mtime_ns

    def _current(self) -> Snapshot:
        with self._lock:
            try:
                stamp = self._stat()
                if stamp in (self._stamp, self._refused):
                    return self._snapshot
                self._refused = stamp  # until it parses: a bad file is read once, not at every lookup
                snapshot = parse(self.path.read_bytes())
            except (OSError, ValueError) as exc:
                if str(exc) != self._complaint:
                    logger.error("%s: %s; still serving the data read before", self.path, exc)
                self._complaint = str(exc)
                return self._snapshot
            self._snapshot, self._stamp, self._refused, self._complaint = snapshot, stamp, None, ""
            logger.warning("%s read again: %d locations", self.path, len(snapshot.locations))
            return snapshot

    def location(self, location: str) -> LocationEntry | None:
        return self._current().locations.get(location)

    def coworker(self, location: str, coworker_id: int) -> CoworkerEntry | None:
        return self._current().coworkers.get((location, coworker_id))


SCHEMA = """\
CREATE TABLE locations   (id TEXT PRIMARY KEY, impersonation INTEGER NOT NULL DEFAULT 1);
CREATE TABLE coworkers   (location_id TEXT NOT NULL REFERENCES locations (id), id INTEGER NOT NULL,
                          impersonable INTEGER NOT NULL DEFAULT 1, staff INTEGER NOT NULL DEFAULT 0,
                          PRIMARY KEY (location_id, id));
CREATE TABLE memberships (location_id TEXT NOT NULL, team_id TEXT NOT NULL, coworker_id INTEGER NOT NULL,
                          role TEXT NOT NULL CHECK (role IN ('member', 'admin')),
                          PRIMARY KEY (location_id, team_id, coworker_id));
"""  # the README shows it as is (a test checks)


class SqliteSource:
    """A SQLite database with ``SCHEMA`` (the README shows it filled in), opened read-only per lookup: what the
    database holds when asked is the answer, so there is nothing to re-read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with closing(self._connect()) as db:  # a missing file or table stops the start, not the first lookup
            db.execute("SELECT 1 FROM locations, coworkers, memberships LIMIT 1").fetchall()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True)

    def location(self, location: str) -> LocationEntry | None:
        with closing(self._connect()) as db:
            row = db.execute("SELECT impersonation FROM locations WHERE id = ?", (location,)).fetchone()
        return None if row is None else LocationEntry(id=location, impersonation=bool(row[0]))

    def coworker(self, location: str, coworker_id: int) -> CoworkerEntry | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT impersonable, staff FROM coworkers WHERE location_id = ? AND id = ?", (location, coworker_id)
            ).fetchone()
            teams = db.execute(
                "SELECT team_id, role FROM memberships WHERE location_id = ? AND coworker_id = ? ORDER BY team_id",
                (location, coworker_id),
            ).fetchall()
        if row is None:
            return None
        return CoworkerEntry(
            id=coworker_id,
            impersonable=bool(row[0]),
            staff=bool(row[1]),
            teams=tuple(Membership(id=team, role=role) for team, role in teams),
        )
