"""DPoP (RFC 9449): the proof a client sends with a request to show it holds the private key a token is bound to.

``verify_proof`` is the pure rule (section 4.3), the clock and the request passed in; ``ProofReplay`` remembers
each proof's ``jti`` in Redis so it is used once; ``Nonces`` issues and checks the server nonces of section 8
without storing them; ``DpopGate`` is the service's use of them. ``published_path`` is where every proof's
``htu`` comes from: the route's path as the metadata publishes it.

The proof is read as strictly as our own tokens (``tokens``): one spelling of each segment, strict JSON, low-S
ECDSA. What differs is where the key comes from: a proof names its own public key (``jwk``), which is exactly what
``tokens.read_header`` refuses for a token, so the header is read here. Possession of that key is all a proof shows;
whose key it is, is the token's ``cnf.jkt`` (``expected_jkt``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal
from urllib.parse import urlsplit

import jwt
import msgspec
from litestar.connection import ASGIConnection
from redis.asyncio import Redis

from authority.keys.jwk import b64url, thumbprint
from authority.refusals import InvalidDpopProof, InvalidToken, UseDpopNonce
from authority.tokens import (
    ALGORITHMS,
    FORBIDDEN_HEADERS,
    jws_header,
    low_s_spelling,
    segment_bytes,
    strict_json,
    typ_matches,
    verify_signature,
)

DPOP_TYP = "dpop+jwt"
# An RSA-4096 proof with a long htu and a nonce is about 2,300 characters; the cap bounds the work an anonymous
# request can ask of us (parsing, one signature check) before anything else is known about it.
MAX_PROOF_LENGTH = 4096
MAX_JTI_LENGTH = 128  # a UUID is 36, base64url of 32 random bytes 43 (section 4.2 asks for 96 bits or more)
IAT_WINDOW_S = 60
DEFAULT_ALGORITHMS = frozenset({"ES256", "EdDSA", "RS256", "PS256"})
MIN_RSA_BITS = 2048  # RFC 7518 section 3.3
# Section 4.3 point 6: the key is the jwk and nothing else; another key named beside it, or an extension we would
# have to understand (crit), makes the proof ambiguous.
_FORBIDDEN_HEADERS = FORBIDDEN_HEADERS - {"jwk"}
# Members that only a private or symmetric JWK has (RFC 7518 sections 6.2.2, 6.3.2, 6.4; RFC 8037 section 2).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# The key each alg verifies with: (kty, crv); and the members of each kty, in RFC 7638 order.
_KEY_OF_ALG = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "EdDSA": ("OKP", "Ed25519"),
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
}
_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}
# RFC 3986 section 2: the characters a URI may hold, a '%' only as a percent-encoding. (urlsplit would silently
# drop a tab or newline inside, so one htu could be spelled many ways.)
_URI = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DpopProof(msgspec.Struct, frozen=True):
    """A verified proof: the RFC 7638 thumbprint of its key (what a token is bound to, ``cnf.jkt``), its id and
    when it was made."""

    jkt: str
    jti: str
    iat: int

    def replay_ttl(self, now: int, iat_window_s: int = IAT_WINDOW_S) -> int:
        """How long ``ProofReplay`` must remember this proof: until ``verify_proof`` would refuse it as stale."""
        return max(1, self.iat + iat_window_s - now + 1)


class _Claims(msgspec.Struct, frozen=True):
    """Section 4.2. Other claims are allowed and ignored; ``iat`` must be whole seconds (RFC 7519 would allow a
    fraction: refused here, one spelling of a time)."""

    jti: str
    htm: str
    htu: str
    iat: int
    ath: str | None = None
    nonce: str | None = None


class _Invalid(Exception):
    """A reason to refuse, raised inside this module and turned into ``InvalidDpopProof`` (with the algs of the
    challenge) in one place."""


class Nonces:
    """Server nonces (section 8) that need no storage: the nonce of a time bucket is an HMAC-SHA256 of the bucket
    under ``secret``, so every replica with the same secret hands out and accepts the same ones.

    A new nonce every ``period_s`` seconds; the current one and the one before are accepted, so a nonce handed out
    just before a rotation still works for one more period (each nonce lives between ``period_s`` and twice that).
    A nonce bounds how long a proof made in advance (section 11.1, a stolen key used later) stays usable, whatever
    ``iat`` it claims."""

    def __init__(self, secret: bytes, *, period_s: int = 300, clock: Callable[[], float] = time.time) -> None:
        if len(secret) < 32:
            raise ValueError("the DPoP nonce secret must be at least 32 bytes")
        if period_s < 1:
            raise ValueError("the DPoP nonce period must be at least one second")
        self._secret = secret
        self._period_s = period_s
        self._clock = clock

    def _of(self, bucket: int) -> bytes:
        mac = hmac.new(self._secret, b"dpop-nonce\x00" + bucket.to_bytes(8, "big", signed=True), hashlib.sha256)
        return b64url(mac.digest()).encode("ascii")

    def _bucket(self) -> int:
        return int(self._clock()) // self._period_s

    def current(self) -> str:
        """The nonce to hand out now (``DPoP-Nonce``)."""
        return self._of(self._bucket()).decode("ascii")

    def valid(self, nonce: str) -> bool:
        """Whether ``nonce`` is the current nonce or the one before it."""
        if not nonce.isascii():
            return False
        given, bucket = nonce.encode("ascii"), self._bucket()
        return any(hmac.compare_digest(given, self._of(b)) for b in (bucket, bucket - 1))


class ProofReplay:
    """Each proof's ``jti`` once per key, within its window (section 11.1): one ``SET NX EX`` on one key of its own,
    atomic on the server and never spanning Cluster slots.

    The key hashes ``jkt:jti`` (a thumbprint is base64url, so the first ':' ends it): the ids a client chooses are
    scoped to its own key and bounded in length, whatever they are. A Redis error propagates; the caller answers
    503, fail closed."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}dpop:"

    async def first_use(self, jti: str, jkt: str, ttl_s: int) -> bool:
        """True the first time (``jti``, ``jkt``) is seen within ``ttl_s`` seconds (``DpopProof.replay_ttl``)."""
        if ttl_s < 1:
            raise ValueError("a proof is remembered for at least one second")
        key = self._prefix + hashlib.sha256(f"{jkt}:{jti}".encode()).hexdigest()
        return bool(await self._redis.set(key, b"1", nx=True, ex=ttl_s))


def ath_of(access_token: str) -> str:
    """Section 4.2 ``ath``: base64url of the SHA-256 of the access token's ASCII (UTF-8 here, so that a token that
    is not ASCII, never ours, fails to match rather than raising)."""
    return b64url(hashlib.sha256(access_token.encode()).digest())


def normalised_url(url: str) -> str | None:
    """``url`` as section 4.3 compares it (point 9): without query and fragment, scheme and host in lower case,
    hex digits of percent-encodings in upper case (RFC 3986 section 6.2.2.1), the default port left out and an
    empty path written '/' (section 6.2.3). Nothing else is rewritten: a path spelled another way (dot segments, an
    unreserved character percent-encoded) is another URL. None if it is not an absolute http(s) URL, or names a
    user (RFC 9449 section 4.2: ``htu`` has none)."""
    if not _URI.fullmatch(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port out of range or not a number, a broken IPv6 literal
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or "@" in parts.netloc:
        return None
    authority = f"[{host}]" if ":" in host else host
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        authority += f":{port}"
    path = _PERCENT.sub(lambda m: m.group().upper(), parts.path) or "/"
    return f"{scheme}://{authority}{path}"


def _public_key(jwk: dict[str, Any], alg: str) -> tuple[Any, str]:
    """The public key of a proof's ``jwk`` header, checked to be one ``alg`` verifies with, and its thumbprint.

    Each member is read in its one spelling (``segment_bytes``; RSA integers without leading zero octets, RFC 7518
    section 6.3.1), so one key has one thumbprint and a token bound to it cannot be matched by a re-spelled twin."""
    kty, crv = _KEY_OF_ALG[alg]
    if _PRIVATE_MEMBERS.intersection(jwk):
        raise _Invalid("the jwk must be a public key: it has private or symmetric key members")
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise _Invalid(f"alg {alg} needs a jwk of kty {kty}" + (f" and crv {crv}" if crv else ""))
    if "alg" in jwk and jwk["alg"] != alg:
        raise _Invalid("the jwk is meant for another alg")
    members: dict[str, str] = {}
    for name in _MEMBERS[kty]:
        value = jwk.get(name)
        if not isinstance(value, str):
            raise _Invalid(f"the jwk has no {name}")
        members[name] = value
    octets = {name: segment_bytes(members[name]) for name in ("x", "y", "n", "e") if name in members}
    if kty == "RSA" and any(not raw or raw[0] == 0 for raw in (octets["n"], octets["e"])):
        raise _Invalid("the jwk's n and e must be written in their minimum number of octets")
    try:
        key = ALGORITHMS[alg].from_jwk(members)
    except (jwt.InvalidKeyError, ValueError, TypeError) as exc:  # a point off the curve, a coordinate's size
        raise _Invalid(f"the jwk is not a valid public key: {exc}") from None
    if kty == "RSA" and key.key_size < MIN_RSA_BITS:
        raise _Invalid(f"an RSA jwk must have at least {MIN_RSA_BITS} bits")
    return key, thumbprint(members)


def _signed(proof: str, algorithms: frozenset[str]) -> tuple[str, _Claims]:
    """Section 4.3 points 2 to 7: the thumbprint of the proof's own key, and the claims that key signed."""
    if len(proof) > MAX_PROOF_LENGTH:
        raise _Invalid(f"the proof is longer than {MAX_PROOF_LENGTH} characters")
    header = jws_header(proof)
    if not typ_matches(header, DPOP_TYP):
        raise _Invalid(f"typ must be {DPOP_TYP}")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in algorithms:
        raise _Invalid(f"alg must be one of {' '.join(sorted(algorithms))}")
    refused = _FORBIDDEN_HEADERS.intersection(header)
    if refused:
        raise _Invalid(f"header parameter {sorted(refused)[0]!r} is not accepted")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _Invalid("the header must carry the public key as a jwk object")
    key, jkt = _public_key(jwk, alg)
    # Either ECDSA twin verifies, as clients' libraries (WebCrypto among them) leave S as it falls; both are one
    # proof with one jti, so the replay check sees the second.
    claims: _Claims = strict_json(verify_signature(low_s_spelling(proof, alg), key, alg, header), _Claims)
    return jkt, claims


def _checked(
    proof: str,
    *,
    method: str,
    url: str,
    now: int,
    access_token: str | None,
    nonce: str | None,
    nonces: Nonces | None,
    algorithms: frozenset[str],
    iat_window_s: int,
    expected_jkt: str | None,
) -> DpopProof:
    jkt, claims = _signed(proof, algorithms)
    if expected_jkt is not None and jkt != expected_jkt:
        raise _Invalid("the proof is signed by another key than the one the token is bound to")
    if not 0 < len(claims.jti) <= MAX_JTI_LENGTH:
        raise _Invalid(f"jti must be 1 to {MAX_JTI_LENGTH} characters")
    if claims.htm != method:
        raise _Invalid("htm is not this request's method")
    if normalised_url(claims.htu) != normalised_url(url):
        raise _Invalid("htu is not this request's URL")
    if claims.iat < now - iat_window_s:
        raise _Invalid("the proof is too old (iat)")
    if claims.iat > now + iat_window_s:
        raise _Invalid("the proof is from the future (iat)")
    if access_token is not None and claims.ath != ath_of(access_token):
        raise _Invalid("ath is not the hash of the access token presented with it")
    # Last: a client told to use a nonce retries with a new proof, so it should only hear that for a proof that
    # was good otherwise.
    if nonce is not None and claims.nonce != nonce:
        raise UseDpopNonce("the proof must carry the nonce in DPoP-Nonce", nonce=nonce)
    if nonces is not None and (claims.nonce is None or not nonces.valid(claims.nonce)):
        raise UseDpopNonce("the proof must carry the current nonce in DPoP-Nonce", nonce=nonces.current())
    return DpopProof(jkt=jkt, jti=claims.jti, iat=claims.iat)


def verify_proof(
    proof: str,
    *,
    method: str,
    url: str,
    now: int,
    access_token: str | None = None,
    nonce: str | None = None,
    nonces: Nonces | None = None,
    algorithms: frozenset[str] = DEFAULT_ALGORITHMS,
    iat_window_s: int = IAT_WINDOW_S,
    expected_jkt: str | None = None,
) -> DpopProof:
    """Accept ``proof`` (the ``DPoP`` header's value) for a request of ``method`` to ``url``, or raise
    ``InvalidDpopProof`` (or ``UseDpopNonce``). Its ``jti`` is not checked for reuse here: ``ProofReplay`` does.

    ``url`` is the endpoint's public URL as this service is configured to be reached (issuer + path), not one
    built from the request's Host header, which the client writes. ``access_token``: the token presented with the
    proof, which ``ath`` must hash. ``nonce``: the one nonce this client was given; ``nonces``: any nonce those
    ``Nonces`` still accept. ``expected_jkt``: the thumbprint the presented token is bound to (``cnf.jkt``)."""
    if not algorithms or not algorithms <= ALGORITHMS.keys():
        raise ValueError(f"DPoP algorithms must be some of {sorted(ALGORITHMS)}: asymmetric, never none or HS*")
    if iat_window_s < 1:
        raise ValueError("the iat window must be at least one second")
    if normalised_url(url) is None:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
    try:
        return _checked(
            proof, method=method, url=url, now=now, access_token=access_token, nonce=nonce, nonces=nonces,
            algorithms=algorithms, iat_window_s=iat_window_s, expected_jkt=expected_jkt,
        )  # fmt: skip
    except (_Invalid, InvalidToken) as exc:  # InvalidToken: from the shared JWS rules in ``tokens``
        detail = exc.detail if isinstance(exc, InvalidToken) else str(exc)
        raise InvalidDpopProof(detail, algs=tuple(sorted(algorithms))) from None


def published_path(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    """The path of the route this request reached, as the metadata publishes it (``route_reverse`` of the route's
    name with its path parameters). The one source of every ``htu`` (the issuer followed by this path): not the
    request's URL, which holds the ASGI ``root_path`` a proxy put in front, or a spelling the router tolerated."""
    # Reversed once per app (kept in its state), route and parameters: every mint and exchange asks, with a proof
    # or without (it was 1 % of a mint's CPU, py-spy). Bounded: a team admin's route has one per coworker id.
    paths: dict[tuple[Any, ...], str] = connection.app.state.setdefault("authority_published_paths", {})
    name = connection.route_handler.name or ""
    key = (name, *sorted(connection.path_params.items()))
    path = paths.get(key)
    if path is None:
        if len(paths) >= 1024:
            paths.clear()
        path = paths[key] = connection.app.route_reverse(name, **connection.path_params)
    return path


class UseDpopNonceChallenge(UseDpopNonce):
    """Section 9: a resource server (the mint, a route called with one of our DPoP-bound sessions) asks for its
    nonce with 401 and a ``DPoP`` challenge; the token endpoint and the exchange keep section 8's 400."""

    status = 401

    def __init__(self, detail: str, *, nonce: str) -> None:
        super().__init__(detail, nonce=nonce)
        self.headers["WWW-Authenticate"] = f'DPoP error="use_dpop_nonce", error_description="{detail}"'


@contextmanager
def at_resource_server() -> Iterator[None]:
    """Inside: a nonce is asked for as a resource server does (``UseDpopNonceChallenge``)."""
    try:
        yield
    except UseDpopNonceChallenge:
        raise
    except UseDpopNonce as exc:
        raise UseDpopNonceChallenge(exc.detail, nonce=exc.headers["DPoP-Nonce"]) from None


Mode = Literal["off", "allowed", "required"]
_ALGS = tuple(sorted(DEFAULT_ALGORITHMS))


class DpopGate:
    """The service's use of DPoP on a request (the mint, the exchange, the token endpoint, our own bound sessions):
    ``off`` ignores the header (section 5: a server that does not do DPoP ignores it); ``allowed`` binds when a
    proof comes; ``required`` refuses a request without one. Whatever the mode, a token that carries a binding
    (``cnf.jkt``) is accepted only with a proof by that key. A proof's ``jti`` is spent here, once per key within
    its window. ``path``: ``published_path`` of the request, the issuer put before it here."""

    def __init__(self, mode: Mode, replay: ProofReplay, issuer: str, nonces: Nonces | None = None) -> None:
        self.mode = mode
        self._replay = replay
        self._issuer = issuer
        self._nonces = nonces

    async def bind(
        self, proofs: list[str], *, method: str, path: str, now: int, expected_jkt: str | None = None
    ) -> str | None:
        """The thumbprint of the key the request proves it holds, or None when it proves none and may go unbound.
        ``expected_jkt``: the key the presented token was bound to at mint; only a proof by it is accepted, even
        with DPoP off (a binding made while it was on still holds)."""
        if self.mode == "off" and expected_jkt is None:
            return None
        if not proofs and self.mode != "required" and expected_jkt is None:
            return None
        return await self._spent(proofs, method=method, path=path, now=now, expected_jkt=expected_jkt)

    async def prove(self, proofs: list[str], *, method: str, path: str, now: int, access_token: str, jkt: str) -> None:
        """A request made with one of our DPoP-bound access tokens (section 7.1): one proof by the bound key, for
        this request, whose ``ath`` hashes that token; whatever the mode. A nonce is asked for as section 9 says."""
        with at_resource_server():
            await self._spent(proofs, method=method, path=path, now=now, expected_jkt=jkt, access_token=access_token)

    async def _spent(
        self,
        proofs: list[str],
        *,
        method: str,
        path: str,
        now: int,
        expected_jkt: str | None,
        access_token: str | None = None,
    ) -> str:
        """The one proof of this request verified and its jti spent: the thumbprint of its key."""
        if not proofs:
            raise InvalidDpopProof("a DPoP proof is required here", algs=_ALGS)
        if len(proofs) > 1:
            raise InvalidDpopProof("one DPoP header, not several", algs=_ALGS)
        proof = verify_proof(
            proofs[0],
            method=method,
            url=self._issuer + path,
            now=now,
            access_token=access_token,
            nonces=self._nonces,
            expected_jkt=expected_jkt,
        )
        if not await self._replay.first_use(proof.jti, proof.jkt, proof.replay_ttl(now)):
            raise InvalidDpopProof("this DPoP proof was already used", algs=_ALGS)
        return proof.jkt
