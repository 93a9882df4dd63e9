"""The demo issuer: a stand-in for the portal's sign-in, trusted only under ``--demo``.

Its Ed25519 key lives in ``keys/demo-issuer/`` and its public half is published to the service as an ordinary
JWKS file, so demo callers are verified by exactly the code that verifies production callers.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from authority.keys.file_store import read_private, write_private
from authority.keys.jwk import public_jwk
from authority.settings import TrustedIssuer

DEMO_ISSUER = "urn:authority:demo-issuer"
DEMO_AUDIENCE = "authority"
ROLES = ("admin", "operator", "customer", "team-admin")


def _folder(keys_dir: Path) -> Path:
    return keys_dir / "demo-issuer"


def demo_key(keys_dir: Path) -> ed25519.Ed25519PrivateKey:
    """Load the demo issuer key, creating it (and its JWKS file) on first use."""
    pem_path, jwks_path = _folder(keys_dir) / "key.pem", _folder(keys_dir) / "jwks.json"
    if pem_path.exists():
        key = serialization.load_pem_private_key(read_private(pem_path), None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{pem_path}: not an Ed25519 key")
    else:
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(pem_path, pem)
    if not jwks_path.exists():
        jwks_path.write_bytes(msgspec.json.encode({"keys": [public_jwk(key.public_key(), "EdDSA")]}))
    return key


def trusted_demo_issuer(keys_dir: Path) -> TrustedIssuer:
    demo_key(keys_dir)
    return TrustedIssuer(
        issuer=DEMO_ISSUER,
        audiences=[DEMO_AUDIENCE],
        jwks_file=str(_folder(keys_dir) / "jwks.json"),
        algorithms=["EdDSA"],
    )


def dev_token(keys_dir: Path, *, role: str, sub: str, location: str, ttl: int = 3600) -> str:
    """A caller bearer from the demo issuer. ``team-admin`` is a customer; the directory says whom they admin."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    key = demo_key(keys_dir)
    now = int(time.time())
    claims = {
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": sub,
        "loc": location,
        "role": "customer" if role == "team-admin" else role,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    kid = public_jwk(key.public_key(), "EdDSA")["kid"]
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, "typ": "at+jwt"})
