"""The demo issuer: a stand-in for the portal's sign-in, trusted only under ``--demo``.

It is an ordinary trusted issuer with a ``jwks_file`` in ``keys/demo-issuer/``, signed for by ``callers`` like any
test issuer an operator configures, so demo callers are verified by exactly the code that verifies production ones.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519

from authority.callers import caller_token, signing_key
from authority.settings import TrustedIssuer

DEMO_ISSUER = "urn:authority:demo-issuer"
DEMO_AUDIENCE = "authority"


def trusted_demo_issuer(keys_dir: Path) -> TrustedIssuer:
    """The demo issuer, its key made on first use."""
    issuer = TrustedIssuer(
        issuer=DEMO_ISSUER,
        audiences=[DEMO_AUDIENCE],
        jwks_file=str(keys_dir / "demo-issuer" / "jwks.json"),
        algorithms=["EdDSA"],
    )
    signing_key(issuer)
    return issuer


def demo_key(keys_dir: Path) -> ed25519.Ed25519PrivateKey:
    """The demo issuer's private key (for tests that forge what it would sign)."""
    key = signing_key(trusted_demo_issuer(keys_dir))[0]
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise TypeError("the demo issuer signs with Ed25519")
    return key


def dev_token(keys_dir: Path, *, role: str, sub: str, location: str, ttl: int = 3600) -> str:
    """A caller bearer from the demo issuer."""
    issuer = trusted_demo_issuer(keys_dir)
    key, alg, _ = signing_key(issuer)
    return caller_token(key, alg, issuer, role=role, sub=sub, location=location, ttl=ttl, now=int(time.time()))
