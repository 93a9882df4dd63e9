"""One generator per signing algorithm we offer; adding an algorithm means adding one entry here."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from authority.keys.jwk import PrivateKey, PublicKey

RSA_BITS = 3072


def _ed25519() -> PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _es256() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _rs256() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)


GENERATORS: dict[str, Callable[[], PrivateKey]] = {"EdDSA": _ed25519, "ES256": _es256, "RS256": _rs256}


def generate(alg: str) -> PrivateKey:
    """A fresh private key for ``alg``; KeyError for an algorithm we do not sign with."""
    return GENERATORS[alg]()


def alg_fits(alg: str, key: PublicKey) -> bool:
    """Whether a key may be used with ``alg``: a key is only ever used with the one alg it was made for."""
    if alg == "EdDSA":
        return isinstance(key, ed25519.Ed25519PublicKey)
    if alg == "ES256":
        return isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)
    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    return False
