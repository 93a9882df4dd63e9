"""The loaded key set at one moment: who signs, who verifies, and the JWKS that publishes them.

A keyring is immutable; the manager builds a new one when records or states change and swaps it in, so a request
never sees a half-updated set. The JWKS body and its ETag are computed once per keyring, not per request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import msgspec

from authority.keys.generate import alg_fits, generate
from authority.keys.jwk import PrivateKey, PublicKey, public_jwk
from authority.keys.lifecycle import KeyRecord, State, state
from authority.keys.sealing import KeyStoreError, seal, unseal

# The signer first (a consumer that takes the first key gets the one that signs now), then the standby, then retiring.
_JWKS_ORDER: dict[State, int] = {"active": 0, "pending": 1, "retiring": 2}


@dataclass(frozen=True)
class LoadedKey:
    record: KeyRecord
    private: PrivateKey
    public: PublicKey
    jwk: dict[str, Any]
    state: State

    @property
    def kid(self) -> str:
        return self.record.kid

    @property
    def alg(self) -> str:
        return self.record.alg


@dataclass(frozen=True)
class Keyring:
    """Published keys only (pending, active, retiring), in JWKS order."""

    keys: tuple[LoadedKey, ...]
    jwks: bytes = field(init=False)
    etag: str = field(init=False)

    def __post_init__(self) -> None:
        ordered = tuple(sorted(self.keys, key=lambda k: (_JWKS_ORDER[k.state], -k.record.activates_at)))
        body = msgspec.json.encode({"keys": [k.jwk for k in ordered]})
        object.__setattr__(self, "keys", ordered)
        object.__setattr__(self, "jwks", body)
        object.__setattr__(self, "etag", f'"{hashlib.sha256(body).hexdigest()[:32]}"')

    def signer_at(self, now: int) -> LoadedKey | None:
        """The key that signs *now*, judged from its times: a replica whose refresh is late neither signs with a
        key past its term nor misses the activation of a key it already publishes."""
        active = [k for k in self.keys if state(k.record, now) == "active"]
        return max(active, key=lambda k: k.record.activates_at) if active else None

    def verifier(self, kid: str, now: int, leeway: int) -> LoadedKey | None:
        """The key that may verify tokens carrying ``kid``: active or retiring *now*, judged from its times rather
        than from when this keyring was built, so a replica that has not refreshed yet neither refuses a key another
        replica just activated (within ``leeway`` of clock skew) nor keeps honouring one past its retirement."""
        for key in self.keys:
            if key.kid == kid and state(key.record, now + leeway) != "pending" and state(key.record, now) != "removed":
                return key
        return None


def unseal_record(record: KeyRecord, passphrase: str | None, *, demo: bool, source: str) -> PrivateKey:
    """The record's private key, checked to be the key its ``kid`` and ``alg`` say it is."""
    private = unseal(record.private_pem, record.encrypted, passphrase, demo=demo, source=source)
    if not alg_fits(record.alg, private.public_key()):
        raise KeyStoreError(f"{source}: key {record.kid} does not fit its alg {record.alg}")
    if public_jwk(private.public_key(), record.alg)["kid"] != record.kid:
        raise KeyStoreError(f"{source}: kid {record.kid} is not the key's RFC 7638 thumbprint")
    return private


def new_record(alg: str, passphrase: str | None, *, now: int, activates_at: int) -> KeyRecord:
    private = generate(alg)
    pem, encrypted = seal(private, passphrase)
    kid = public_jwk(private.public_key(), alg)["kid"]
    return KeyRecord(kid=kid, alg=alg, created_at=now, activates_at=activates_at, encrypted=encrypted, private_pem=pem)
