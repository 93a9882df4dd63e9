"""Private keys at rest: PKCS#8 PEM encrypted with the operator's passphrase (cryptography's best available).

Plain PEM is written and accepted only in demo mode, so a production key never touches a disk or Redis in clear.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization

from authority.keys.jwk import PrivateKey


class KeyStoreError(RuntimeError):
    """A key record cannot be used; the message says which one and what to do."""


def seal(key: PrivateKey, passphrase: str | None) -> tuple[str, bool]:
    """PEM of ``key``, encrypted when a passphrase is given (always, outside demo mode), and whether it is."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase.encode()) if passphrase else serialization.NoEncryption()
    )
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    return pem.decode("ascii"), bool(passphrase)


def unseal(pem: str, encrypted: bool, passphrase: str | None, *, demo: bool, source: str) -> PrivateKey:
    """The private key in ``pem``, refusing plain keys outside demo mode and wrong passphrases."""
    if not encrypted and not demo:
        raise KeyStoreError(f"{source}: private key is not encrypted; only --demo accepts plain keys")
    if encrypted and not passphrase:
        raise KeyStoreError(f"{source}: private key is encrypted; set AUTHORITY_KEY_PASSPHRASE")
    try:
        key = serialization.load_pem_private_key(
            pem.encode("ascii"), passphrase.encode() if encrypted and passphrase else None
        )
    except (ValueError, TypeError) as exc:
        raise KeyStoreError(f"{source}: cannot decrypt private key (wrong AUTHORITY_KEY_PASSPHRASE?)") from exc
    if not isinstance(key, PrivateKey):
        raise KeyStoreError(f"{source}: unsupported key type {type(key).__name__}")
    return key
