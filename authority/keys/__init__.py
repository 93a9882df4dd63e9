"""Signing keys: generation per algorithm, JWK thumbprints, encrypted storage, and the loaded keyring."""

from authority.keys.keyring import Keyring, LoadedKey, open_keyring
from authority.keys.store import FileKeyStore, KeyRecord, KeyStoreError

__all__ = ["FileKeyStore", "KeyRecord", "KeyStoreError", "Keyring", "LoadedKey", "open_keyring"]
