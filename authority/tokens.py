"""Token claims and the rules that accept or refuse a JWT: pure functions, no I/O, the clock passed in.

We use PyJWT only to sign and to check a signature against a key chosen by us; everything else (header
parameters, ``typ``, ``iss``, ``aud``, time) is checked here, strictly, so every refusal has its own code.
"""

from __future__ import annotations

import base64
import codecs
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, TypeVar

import jwt
import msgspec
from jwt.utils import base64url_encode

from authority.keys import Keyring, LoadedKey
from authority.refusals import (
    BadSignature,
    InvalidToken,
    TokenExpired,
    TokenNotYetValid,
    UnknownKey,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from authority.settings import Settings

IMPERSONATION_TYP = "imp+jwt"
ACCESS_TYP = "at+jwt"
MAX_TOKEN_LENGTH = 4096
# Header parameters that would make a verifier fetch or trust key material named by the token itself
# (RFC 8725 section 3.10), or demand extensions we do not implement.
FORBIDDEN_HEADERS = frozenset({"jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit"})

# Only asymmetric algorithms exist here: HS* and none cannot even be looked up.
ALGORITHMS = {
    name: jwt.get_algorithm_by_name(name)
    for name in ("EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
}
# Strict alphabet: base64 decoders skip stray characters, which would let one token be written many ways.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
# Group orders n of the ECDSA curves (SEC 2 2.4.2, 2.5.1): (r, s) and (r, n - s) both verify, so only s <= n/2 counts.
CURVE_ORDERS = {
    "ES256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "ES384": 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
}
ClaimsT = TypeVar("ClaimsT", bound=msgspec.Struct)
OursT = TypeVar("OursT", "ImpersonationClaims", "AccessClaims")


class Actor(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """RFC 8693 ``act``: who is really behind an impersonated session. ``iss`` qualifies ``sub``: the issuer of
    the impersonator's own sign-in, so equal ids from two trusted issuers are never the same person.

    A team admin's own coworker id (``coworker_id``) lets the exchange ask the directory again whether they still
    administer the member; ``auth_time``, ``acr`` and ``amr`` say how recently and how strongly the impersonator
    signed in, so every service downstream can weigh the session."""

    sub: str
    role: str
    iss: str
    coworker_id: int | None = None
    auth_time: int | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()


class Confirmation(msgspec.Struct, frozen=True):
    """RFC 7800 ``cnf`` with an RFC 9449 ``jkt``: the token is good only with a DPoP proof by this key."""

    jkt: str


class ImpersonationClaims(msgspec.Struct, frozen=True, omit_defaults=True):
    """``reason`` and ``ticket`` say why (beside ``act``, which says who); ``actor_exp`` is when the impersonator's
    own sign-in ends, past which the session it opens may not last."""

    iss: str
    aud: str
    sub: str
    jti: str
    iat: int
    nbf: int
    exp: int
    loc: str
    act: Actor
    reason: str | None = None
    ticket: str | None = None
    actor_exp: int | None = None
    cnf: Confirmation | None = None  # with AUTHORITY_DPOP=required: only the minter's DPoP key may redeem it


class AccessClaims(msgspec.Struct, frozen=True, omit_defaults=True):
    """An RFC 9068 access token for the portal, marked by ``act`` as impersonated, with its ``reason`` and
    ``ticket`` if the impersonator gave them."""

    iss: str
    aud: str
    sub: str
    client_id: str
    jti: str
    sid: str
    iat: int
    nbf: int
    exp: int
    loc: str
    act: Actor
    reason: str | None = None
    ticket: str | None = None
    cnf: Confirmation | None = None  # a DPoP-bound session: its key's thumbprint


class Justification(msgspec.Struct, frozen=True, omit_defaults=True):
    """Why an impersonation happens: a free-text reason and a ticket reference, each optional unless required."""

    reason: str | None = None
    ticket: str | None = None


def impersonation_claims(
    *,
    issuer: str,
    audience: str,
    coworker_id: int,
    location: str,
    actor: Actor,
    jti: str,
    now: int,
    ttl: int,
    why: Justification = Justification(),  # noqa: B008 - frozen, shared safely
    actor_exp: int | None = None,
    jkt: str | None = None,
) -> ImpersonationClaims:
    return ImpersonationClaims(
        iss=issuer,
        aud=audience,
        sub=str(coworker_id),
        jti=jti,
        iat=now,
        nbf=now,
        exp=now + ttl,
        loc=location,
        act=actor,
        reason=why.reason,
        ticket=why.ticket,
        actor_exp=actor_exp,
        cnf=Confirmation(jkt) if jkt else None,
    )


def access_claims(
    grant: ImpersonationClaims,
    *,
    issuer: str,
    audience: str,
    client_id: str,
    jti: str,
    sid: str,
    now: int,
    ttl: int,
    jkt: str | None = None,
) -> AccessClaims:
    return AccessClaims(
        iss=issuer,
        aud=audience,
        sub=grant.sub,
        client_id=client_id,
        jti=jti,
        sid=sid,
        iat=now,
        nbf=now,
        exp=min(now + ttl, grant.actor_exp) if grant.actor_exp is not None else now + ttl,
        loc=grant.loc,
        act=grant.act,
        reason=grant.reason,
        ticket=grant.ticket,
        cnf=Confirmation(jkt) if jkt else None,
    )


@functools.lru_cache(maxsize=64)
def _header_segment(alg: str, kid: str, typ: str) -> bytes:
    """A key's JOSE header, encoded once: it is the same for every token that key signs."""
    return base64url_encode(msgspec.json.encode({"alg": alg, "kid": kid, "typ": typ}))


def low_s(alg: str, signature: bytes) -> bytes:
    """``signature`` (JWS ECDSA: r || s) with an s above n/2 replaced by n - s, BIP 62's low-S rule; other algs
    unchanged.

    ECDSA is malleable: whoever holds a token can turn (r, s) into (r, n - s), which verifies just as well, and
    so write a second token from the first. We accept only the low-S twin (``verify_signature``), so we must
    emit it too: OpenSSL, under cryptography and PyJWT, leaves s as it falls (random nonce or RFC 6979 alike),
    above n/2 for half of what it signs. Trusted issuers' libraries do the same, so their bearers are read in
    their low-S spelling (``low_s_spelling``) rather than refused."""
    order = CURVE_ORDERS.get(alg)
    half = len(signature) // 2
    if order is None or not half:
        return signature
    s = int.from_bytes(signature[half:], "big")
    if not order // 2 < s < order:  # low already, or no signature at all (s >= n never verifies)
        return signature
    return signature[:half] + (order - s).to_bytes(half, "big")


def low_s_spelling(token: str, alg: str) -> str:
    """``token`` with an ECDSA signature in its low-S form: the one spelling under which a caller's bearer is
    verified and remembered, whichever of the twins its issuer wrote."""
    signing_input, _, signature = token.rpartition(".")
    raw = segment_bytes(signature)
    normal = low_s(alg, raw)
    return token if normal == raw else f"{signing_input}.{base64url_encode(normal).decode('ascii')}"


def sign(claims: msgspec.Struct, key: LoadedKey, typ: str) -> str:
    """Compact JWS of ``claims``: PyJWT's algorithm objects for the signature (low-S for ECDSA), msgspec for the
    JSON, the header from a cache. (``PyJWS.encode`` re-encodes the header with ``json`` each time; measured in
    bench/.)"""
    signing_input = _header_segment(key.alg, key.kid, typ) + b"." + base64url_encode(msgspec.json.encode(claims))
    signature = low_s(key.alg, ALGORITHMS[key.alg].sign(signing_input, key.private))
    return (signing_input + b"." + base64url_encode(signature)).decode("ascii")


def segment_bytes(segment: str) -> bytes:
    """The bytes of one compact-JWS segment, written the one way RFC 7515 section 2 writes them: the URL-safe
    alphabet, no padding, and unused trailing bits zero. Decoders ignore those bits, so without this check a
    segment of n bytes (n mod 3 = 1 or 2) has 16 or 4 spellings that all decode alike; the signature binds the
    bytes, not the spelling, so each re-spelled token would verify. One token, one spelling."""
    if not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken("a JWS in compact form is three base64url segments")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=") != segment.encode("ascii"):
        raise InvalidToken("a JWS segment is not canonical base64url (its unused trailing bits are not zero)")
    return raw


def jws_header(token: str) -> dict[str, Any]:
    """The header of a compact JWS, read by the strict rules (each segment's one spelling, UTF-8 JSON, no name
    twice), or InvalidToken: for our tokens, callers' bearers and DPoP proofs alike."""
    segments = token.split(".")
    if len(segments) != 3:
        raise InvalidToken("a JWS in compact form is three base64url segments")
    header_bytes, _, _ = (segment_bytes(s) for s in segments)
    header = strict_json(header_bytes)
    if not isinstance(header, dict):
        raise InvalidToken("the header is not a JSON object")
    return header


def read_header(token: str) -> dict[str, Any]:
    """The unverified JOSE header, refused if it is malformed or asks us to trust keys it names itself. Every
    segment is checked for its spelling here, before any key is looked up or any signature checked."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken(f"token is longer than {MAX_TOKEN_LENGTH} characters")
    header = jws_header(token)
    refused = FORBIDDEN_HEADERS.intersection(header)
    if refused:
        raise InvalidToken(f"header parameter {sorted(refused)[0]!r} is not accepted")
    if not isinstance(header.get("alg"), str) or not isinstance(header.get("kid"), str):
        raise InvalidToken("header must name its alg and kid")
    return header


def typ_matches(header: dict[str, Any], expected: str) -> bool:
    """RFC 7515 ``typ`` comparison: case-insensitive, with or without the ``application/`` prefix."""
    typ = header.get("typ")
    return isinstance(typ, str) and typ.lower().removeprefix("application/") == expected


def verify_signature(token: str, key: Any, alg: str, header: dict[str, Any]) -> bytes:
    """The payload bytes, if ``token`` (already through ``read_header``) is signed by ``key`` with exactly
    ``alg``, the key's own alg. A high-S ECDSA signature is refused as not verifying (``low_s``): it is a
    signature, but not the one we accept, and random bytes in the signature get the same answer either way."""
    if header["alg"] != alg or alg not in ALGORITHMS:
        raise BadSignature(f"alg {header['alg']!r} is not the key's alg")
    head, body, signature = token.split(".")
    raw_signature = segment_bytes(signature)
    if low_s(alg, raw_signature) != raw_signature:
        raise BadSignature("ECDSA signature has a high S; only its low-S twin is accepted")
    try:
        verified = ALGORITHMS[alg].verify(f"{head}.{body}".encode("ascii"), key, raw_signature)
    except (TypeError, ValueError, AttributeError):  # a key of another type, or a signature of the wrong size
        verified = False
    if not verified:
        raise BadSignature("signature does not verify")
    return segment_bytes(body)


class _RepeatedName(ValueError):
    pass


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        raise _RepeatedName(Counter(name for name, _ in pairs).most_common(1)[0][0])
    return members


def check_unique_names(raw: bytes) -> None:
    """ValueError if an object anywhere in the JSON text ``raw`` names a member twice. RFC 8259 section 4 leaves
    what such an object means to each parser, and RFC 7515 section 5.2 / RFC 7519 section 4 let a JWT recipient
    refuse it or take the last: we refuse, since a reader that takes the first would see another request or token
    than the one we checked. msgspec keeps the last silently, so the stdlib parser, which hands over every pair,
    counts them (a few microseconds for a claims set); call it on text msgspec has already accepted."""
    try:
        json.loads(raw, object_pairs_hook=_members)
    except _RepeatedName as exc:
        raise ValueError(f"member name {exc.args[0]!r} appears twice in one object") from None


def strict_json(raw: bytes, kind: Any = None) -> Any:
    """JSON as RFC 8259 section 8.1 and RFC 8725 section 2.6 want it between systems: UTF-8, no byte order mark,
    no member name twice in one object. (``json.loads`` would also take UTF-16 and UTF-32, so two parsers could
    read one token two ways.)"""
    if raw.startswith(codecs.BOM_UTF8):
        raise InvalidToken("JSON must not start with a byte order mark")
    try:
        raw.decode("utf-8")
        value = msgspec.json.decode(raw, type=kind) if kind is not None else msgspec.json.decode(raw)
    except UnicodeDecodeError:
        raise InvalidToken("JSON must be UTF-8") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidToken(f"JSON is malformed: {exc}") from None
    try:
        check_unique_names(raw)
    except (ValueError, RecursionError) as exc:
        raise InvalidToken(f"JSON is ambiguous: {exc}") from None
    return value


def decode_claims(payload: bytes, kind: type[ClaimsT]) -> ClaimsT:
    claims: ClaimsT = strict_json(payload, kind)
    return claims


def check_times(*, iat: int, nbf: int | None, exp: int, now: int, leeway: int, max_life: int) -> None:
    """``exp``/``nbf``/``iat`` with ``leeway`` seconds of skew; a token claiming a longer life is refused too."""
    if exp <= now - leeway:
        raise TokenExpired("token has expired")
    if (nbf is not None and nbf > now + leeway) or iat > now + leeway:
        raise TokenNotYetValid("token is not valid yet")
    if exp - iat > max_life:
        raise InvalidToken("token lives longer than allowed")


def _verify(
    token: str,
    keyring: Keyring,
    kind: type[OursT],
    typ: str,
    *,
    issuer: str,
    audience: str,
    now: int,
    leeway: int,
    max_life: int,
) -> OursT:
    header = read_header(token)
    if not typ_matches(header, typ):
        raise WrongTokenType(f"typ must be {typ}")
    key = keyring.verifier(header["kid"], now, leeway)
    if key is None:
        raise UnknownKey("no published key has this kid", kid=header["kid"])
    claims = decode_claims(verify_signature(token, key.public, key.alg, header), kind)
    if claims.iss != issuer:
        raise WrongIssuer("iss is not this authority")
    if claims.aud != audience:
        raise WrongAudience(f"aud is not {audience}")
    check_times(iat=claims.iat, nbf=claims.nbf, exp=claims.exp, now=now, leeway=leeway, max_life=max_life)
    return claims


@dataclass(frozen=True)
class OwnTokens:
    """What our own tokens must say (issuer, audiences, lifetimes, skew), bound once from the settings, so every
    place that reads one of ours checks it the same way."""

    issuer: str
    exchange_audience: str
    session_audience: str
    leeway: int
    impersonation_life: int
    session_life: int

    @classmethod
    def of(cls, settings: Settings) -> OwnTokens:
        return cls(
            issuer=settings.public_issuer,
            exchange_audience=settings.exchange_audience,
            session_audience=settings.session_audience,
            leeway=settings.clock_skew_s,
            impersonation_life=settings.impersonation_ttl_s,
            session_life=settings.session_max_ttl_s,
        )

    def impersonation(self, token: str, keyring: Keyring, now: int) -> ImpersonationClaims:
        """Accept ``token`` as one of our impersonation tokens, or raise the precise refusal."""
        return _verify(
            token, keyring, ImpersonationClaims, IMPERSONATION_TYP, issuer=self.issuer,
            audience=self.exchange_audience, now=now, leeway=self.leeway, max_life=self.impersonation_life,
        )  # fmt: skip

    def access(self, token: str, keyring: Keyring, now: int) -> AccessClaims:
        """Accept ``token`` as one of our access tokens (signature, typ, iss, aud, time; not revocation)."""
        return _verify(
            token, keyring, AccessClaims, ACCESS_TYP, issuer=self.issuer, audience=self.session_audience, now=now,
            leeway=self.leeway, max_life=self.session_life,
        )  # fmt: skip
