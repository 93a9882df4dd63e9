"""Caller bearers for trying a deployment before the portal is wired, and the caller contract made checkable.

A trusted issuer is whatever signs the portal's sign-in tokens; to exercise a deployment without it, an operator
gives a trusted issuer a ``jwks_file`` and lets ``authority callers token`` sign as that issuer with a key it keeps
beside the file (``<jwks_file>.key.pem``, owner-only). ``authority callers check`` reads any bearer (the portal's
own, once it is wired) the way the mint endpoints do and says which of them it may call, or why not.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any, NamedTuple

import jwt
import msgspec
from cryptography.hazmat.primitives import serialization

from authority import policy
from authority.authn import Caller
from authority.keys.file_store import read_private, write_private
from authority.keys.generate import GENERATORS, alg_fits, generate
from authority.keys.jwk import PrivateKey, public_jwk
from authority.refusals import Refusal
from authority.settings import Settings, SettingsError, TrustedIssuer

# The roles a caller token may carry; a team admin is a customer whom the directory names as a team's admin.
ROLES = ("admin", "operator", "customer", "team-admin")


def issuer_named(settings: Settings, issuer: str | None) -> TrustedIssuer:
    """The trusted issuer ``issuer`` names; with none given, the only one configured."""
    known = [i.issuer for i in settings.trusted_issuers]
    if issuer is None and len(known) == 1:
        return settings.trusted_issuers[0]
    match = next((i for i in settings.trusted_issuers if i.issuer == issuer), None)
    if match is None:
        configured = ", ".join(known) or "none"
        raise SettingsError(
            f"AUTHORITY_TRUSTED_ISSUERS: {'no issuer ' + repr(issuer) if issuer else 'say which issuer (--issuer)'}; "
            f"configured: {configured}"
        )
    return match


class SigningKey(NamedTuple):
    key: PrivateKey
    alg: str
    made: bool  # made now: a running service reads the jwks_file at start, so it must restart to trust it


def signing_key(issuer: TrustedIssuer) -> SigningKey:
    """The issuer's test key and its alg, made on first use: the private key beside the issuer's ``jwks_file``
    (owner-only), its public half added to that file under its RFC 7638 ``kid``. An issuer whose keys come from a
    URL is the portal's own: nothing here can sign for it."""
    if issuer.jwks_file is None:
        raise SettingsError(
            f"AUTHORITY_TRUSTED_ISSUERS: {issuer.issuer} takes its keys from jwks_url {issuer.jwks_url}; to try the "
            "deployment before the portal is wired, configure a test issuer with a jwks_file"
        )
    jwks_path = Path(issuer.jwks_file)
    pem_path = jwks_path.with_name(jwks_path.name + ".key.pem")
    alg = next((a for a in issuer.algorithms if a in GENERATORS), None)
    if alg is None:
        raise SettingsError(
            f"AUTHORITY_TRUSTED_ISSUERS: {issuer.issuer} accepts only {', '.join(issuer.algorithms)}; a test key is "
            f"made for one of {', '.join(GENERATORS)}"
        )
    made = not pem_path.exists()
    if not made:
        key = serialization.load_pem_private_key(read_private(pem_path), None)
        fitting = [a for a in issuer.algorithms if isinstance(key, PrivateKey) and alg_fits(a, key.public_key())]
        if not isinstance(key, PrivateKey) or not fitting:
            raise SettingsError(f"{pem_path}: its key fits none of {issuer.issuer}'s algorithms")
        alg = fitting[0]
    else:
        key = generate(alg)
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        write_private(pem_path, pem)
    _publish(jwks_path, public_jwk(key.public_key(), alg))
    return SigningKey(key, alg, made)


def _publish(jwks_path: Path, jwk: dict[str, Any]) -> None:
    """Add ``jwk`` to the JWKS file, keeping the keys already there (the file may be shared with a real issuer's)."""
    keys: list[dict[str, Any]] = msgspec.json.decode(jwks_path.read_bytes())["keys"] if jwks_path.exists() else []
    if any(k.get("kid") == jwk["kid"] for k in keys):
        return
    jwks_path.parent.mkdir(parents=True, exist_ok=True)
    jwks_path.write_bytes(msgspec.json.encode({"keys": [*keys, jwk]}))


def caller_token(
    key: PrivateKey, alg: str, issuer: TrustedIssuer, *, role: str, sub: str, location: str, ttl: int, now: int
) -> str:
    """A bearer that follows the caller contract, in the issuer's own claim names: ``kid`` in the header; ``iss``,
    its first audience, ``exp``/``iat``/``nbf``; the role; the location; the coworker id (digits) as subject."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    claims: dict[str, Any] = {
        "iss": issuer.issuer,
        "aud": issuer.audiences[0],
        "sub": sub,
        issuer.coworker_claim: sub,
        issuer.location_claim: location,
        issuer.role_claim: policy.CUSTOMER_ROLE if role == "team-admin" else role,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": secrets.token_urlsafe(16),
    }
    kid = public_jwk(key.public_key(), alg)["kid"]
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})


def what_it_may_call(caller: Caller) -> list[str]:
    """One line per mint endpoint: whether this caller may call it, and if not, the refusal the service gives."""
    lines = []
    for name, rule in (("staff mint", policy.require_staff), ("team-admin mint", policy.require_member)):
        try:
            rule(caller)
        except Refusal as refusal:
            lines.append(f"{name}: refused, {refusal.status} {refusal.code}: {refusal.detail}")
        else:
            lines.append(f"{name}: allowed" + ("" if name == "staff mint" else " (if the directory agrees)"))
    return lines
