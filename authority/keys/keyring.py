"""The loaded key set: who signs, who verifies, and the JWKS that publishes them.

A keyring is immutable; changing keys means building a new one and swapping it in, so a request never sees a
half-updated set. The JWKS body and its ETag are computed once per keyring, not per request.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from authority.keys.generate import alg_fits, generate
from authority.keys.jwk import PrivateKey, PublicKey, public_jwk
from authority.keys.store import FileKeyStore, KeyRecord, KeyStoreError, seal, unseal

_JWKS_ORDER = {"pending": 0, "active": 1, "retiring": 2}


@dataclass(frozen=True)
class LoadedKey:
    record: KeyRecord
    private: PrivateKey
    public: PublicKey
    jwk: dict[str, Any]

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg


@dataclass(frozen=True)
class Keyring:
    keys: tuple[LoadedKey, ...]
    jwks: bytes = field(init=False)
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        published = sorted(self.keys, key=lambda k: (_JWKS_ORDER[k.record.state], -k.record.created_at))
        body = msgspec.json.encode({"keys": [k.jwk for k in published]})
        object.__setattr__(self, "jwks", body)
        object.__setattr__(self, "etag", f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    @property
    def signer(self) -> LoadedKey | None:
        """The one active key (the newest, should a shared volume briefly hold two)."""
        active = [k for k in self.keys if k.record.state == "active"]
        return max(active, key=lambda k: k.record.activates_at) if active else None

    def verifier(self, kid: str) -> LoadedKey | None:
        """The key that may verify tokens carrying ``kid``: active or retiring, never a pending one."""
        for key in self.keys:
            if key.kid == kid and key.record.state != "pending":
                return key
        return None


def load_key(record: KeyRecord, passphrase: str | None, *, demo: bool, source: str) -> LoadedKey:
    private = unseal(record, passphrase, demo=demo, source=source)
    public = private.public_key()
    if not alg_fits(record.alg, public):
        raise KeyStoreError(f"{source}: key does not fit its alg {record.alg}")
    jwk = public_jwk(public, record.alg)
    if jwk["kid"] != record.kid:
        raise KeyStoreError(f"{source}: kid {record.kid} is not the key's RFC 7638 thumbprint")
    return LoadedKey(record, private, public, jwk)


def new_record(alg: str, passphrase: str | None, *, state: str, now: int, activates_at: int) -> KeyRecord:
    private = generate(alg)
    pem, encrypted = seal(private, passphrase)
    kid = public_jwk(private.public_key(), alg)["kid"]
    return msgspec.convert(
        {
            "kid": kid,
            "alg": alg,
            "state": state,
            "created_at": now,
            "activates_at": activates_at,
            "encrypted": encrypted,
            "private_pem": pem,
        },
        KeyRecord,
    )


def open_keyring(store: FileKeyStore, alg: str, passphrase: str | None, *, demo: bool) -> Keyring:
    """Load every stored key; on a first start (no active key yet) create the first signer.

    Outside demo mode a passphrase is required, so no plain private key is ever written there.
    """
    if not demo and not passphrase:
        raise KeyStoreError("AUTHORITY_KEY_PASSPHRASE is required outside --demo: private keys are encrypted")
    loaded = [load_key(r, passphrase, demo=demo, source=src) for r, src in store.records()]
    if not any(k.record.state == "active" for k in loaded):
        now = int(time.time())
        record = new_record(alg, passphrase, state="active", now=now, activates_at=now)
        store.save(record)
        loaded.append(load_key(record, passphrase, demo=demo, source=str(store.directory)))
    return Keyring(tuple(loaded))
