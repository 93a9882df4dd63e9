"""Key records at rest: one JSON file per key in ``keys/``, private half encrypted with a passphrase.

Plain (unencrypted) PEM is written and accepted only in demo mode; a key file that group or others can read is
refused, because a readable private key is a key someone else may already have.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import Literal

import msgspec
from cryptography.hazmat.primitives import serialization

from authority.keys.jwk import PrivateKey

KeyState = Literal["pending", "active", "retiring"]


class KeyStoreError(RuntimeError):
    """A key file cannot be used; the message says which file and what to do."""


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a key file holds. Times are Unix seconds."""

    kid: str
    alg: str
    state: KeyState
    created_at: int
    activates_at: int
    retires_at: int | None = None
    encrypted: bool
    private_pem: str


def seal(key: PrivateKey, passphrase: str | None) -> tuple[str, bool]:
    """PEM of ``key``: encrypted when a passphrase is given (the only choice outside demo mode)."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return pem.decode("ascii"), bool(passphrase)


def unseal(record: KeyRecord, passphrase: str | None, *, demo: bool, source: str) -> PrivateKey:
    """The private key of ``record``, refusing plain keys outside demo mode and wrong passphrases."""
    if not record.encrypted and not demo:
        raise KeyStoreError(f"{source}: private key is not encrypted; only --demo accepts plain keys")
    if record.encrypted and not passphrase:
        raise KeyStoreError(f"{source}: private key is encrypted; set AUTHORITY_KEY_PASSPHRASE")
    try:
        key = serialization.load_pem_private_key(
            record.private_pem.encode("ascii"),
            passphrase.encode() if record.encrypted and passphrase else None,
        )
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{source}: cannot decrypt private key (wrong AUTHORITY_KEY_PASSPHRASE?)") from exc
    if not isinstance(key, PrivateKey):
        raise KeyStoreError(f"{source}: unsupported key type {type(key).__name__}")
    return key


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` readable by the owner only, atomically, so a crash never leaves a half-written key."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
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
    """Key records as ``<dir>/<kid>.json``; the folder may be a volume shared by replicas."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def records(self) -> list[tuple[KeyRecord, str]]:
        """Every stored record with the file it came from, oldest first."""
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = msgspec.json.decode(read_private(path), type=KeyRecord)
            except msgspec.DecodeError as exc:
                raise KeyStoreError(f"{path}: not a key record ({exc})") from None
            found.append((record, str(path)))
        return sorted(found, key=lambda item: item[0].created_at)

    def save(self, record: KeyRecord) -> None:
        write_private(self.directory / f"{record.kid}.json", msgspec.json.encode(record))
