"""Key records as files: ``<dir>/<kid>.json``, owner-only. Fits one instance, or replicas sharing a volume.

A key file that group or others can read is refused: a readable private key is one someone else may have.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Sequence
from pathlib import Path

import msgspec

from authority.keys.lifecycle import KeyRecord
from authority.keys.sealing import KeyStoreError


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, atomically, so a crash never leaves a half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # and so is the rename
        finally:
            os.close(directory)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_private(path: Path) -> bytes:
    """Read a key file, refusing one that anyone but its owner can read or write."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyStoreError(f"{path}: permissions {stat.filemode(mode)} are too open; run chmod 600 {path}")
    return path.read_bytes()


class FileKeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __str__(self) -> str:
        return str(self.directory.absolute())  # an operator reads where, whatever folder the command ran in

    def load_sync(self) -> list[KeyRecord]:
        records = []
        for path in sorted(self.directory.glob("[!.]*.json")):  # not a writer's ".tmp-*" left by a crash
            try:
                records.append(msgspec.json.decode(read_private(path), type=KeyRecord))
            except msgspec.DecodeError as exc:
                raise KeyStoreError(f"{path}: not a key record ({exc})") from None
        return records

    async def load(self) -> list[KeyRecord]:
        return self.load_sync()

    async def save(self, records: Sequence[KeyRecord]) -> None:
        for record in records:
            write_private(self.directory / f"{record.kid}.json", msgspec.json.encode(record))

    async def delete(self, kids: Sequence[str]) -> None:
        for kid in kids:
            (self.directory / f"{kid}.json").unlink(missing_ok=True)
