"""Public JWKs (RFC 7517) and their RFC 7638 thumbprints, which serve as our ``kid``s.

A thumbprint ``kid`` is derived from the key itself, so two replicas that load the same key always agree on it and
a consumer can recompute it to check a JWKS entry.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey
PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

# RFC 7638 section 3.2: the required members of each key type, in lexicographic order.
_REQUIRED = {"OKP": ("crv", "kty", "x"), "EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url(value.to_bytes(length, "big"))


def public_members(key: PublicKey) -> dict[str, str]:
    """The key-type members of a public JWK (no ``kid``/``alg``/``use``)."""
    if isinstance(key, ed25519.Ed25519PublicKey):
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url(key.public_bytes(Encoding.Raw, PublicFormat.Raw))}
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError(f"unsupported curve {key.curve.name}")
        numbers = key.public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _uint(numbers.x, 32), "y": _uint(numbers.y, 32)}
    numbers_rsa = key.public_numbers()
    return {"kty": "RSA", "n": _uint(numbers_rsa.n), "e": _uint(numbers_rsa.e)}


def thumbprint(members: dict[str, str]) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: the canonical JSON of the required members only."""
    required = {name: members[name] for name in _REQUIRED[members["kty"]]}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


def public_jwk(key: PublicKey, alg: str) -> dict[str, Any]:
    """A publishable JWK: key members plus ``kid`` (thumbprint), ``alg`` and ``use: sig``."""
    members = public_members(key)
    return {**members, "kid": thumbprint(members), "alg": alg, "use": "sig"}
