"""Signing keys, one concern a module: ``generate`` (one generator per alg), ``jwk`` (RFC 7638 kids),
``sealing`` (encryption at rest), ``file_store`` / ``redis_store`` (where records live), ``lifecycle`` (pure state
rules), ``lock`` (one rotator at a time), ``notices`` (changes pushed to every process), ``keyring`` (the loaded
set and its JWKS), ``manager`` (runs it all)."""

from authority.keys.file_store import FileKeyStore
from authority.keys.keyring import Keyring, LoadedKey
from authority.keys.lifecycle import KeyRecord, Schedule
from authority.keys.lock import RotationLock
from authority.keys.manager import Effect, KeyManager, KeyStore
from authority.keys.notices import KeyNotices
from authority.keys.redis_store import RedisKeyStore
from authority.keys.sealing import KeyStoreError

__all__ = [
    "Effect",
    "FileKeyStore",
    "KeyManager",
    "KeyNotices",
    "KeyRecord",
    "KeyStore",
    "KeyStoreError",
    "Keyring",
    "LoadedKey",
    "RedisKeyStore",
    "RotationLock",
    "Schedule",
]
