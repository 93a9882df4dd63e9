"""Who is calling: bearer tokens from trusted issuers (the portal's sign-in) and our own access tokens, verified
strictly, and the middleware that puts the verified ``Caller`` on every request that needs one. What a caller may
do is ``policy``'s.

Our own access tokens are recognised too, so that an impersonated session presented back to us is told apart
(403, no nested impersonation) rather than merely failing to verify. One bound to a DPoP key (``cnf.jkt``) is
accepted only under the ``DPoP`` scheme (RFC 9449 section 7.1); the route that serves it checks the proof
(``DpopGate.prove``), as the mint and the exchange check theirs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeGuard

import anyio.to_thread
import jwt
import msgspec
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.types import ASGIApp

from authority.dpop import DEFAULT_ALGORITHMS
from authority.keys import KeyManager
from authority.refusals import InvalidToken, Unauthenticated, Unavailable
from authority.remembered import Remembered
from authority.settings import Settings, TrustedIssuer
from authority.tokens import (
    IMPERSONATION_TYP,
    OwnTokens,
    low_s_spelling,
    read_header,
    segment_bytes,
    strict_json,
    typ_matches,
)

REMEMBER_S = 60
ID = re.compile(r"[1-9][0-9]{0,17}")  # a coworker id, wherever it comes from: ASCII digits, no sign or zero
REMEMBER_MAX = 10_000


class Caller(msgspec.Struct, frozen=True):
    issuer: str
    subject: str
    role: str | None
    location: str | None
    coworker_id: int | None
    impersonated: bool
    expires_at: int  # the bearer's exp: how long this verification may be remembered
    # What the caller's own sign-in proved (OIDC auth_time, acr, amr), for step-up rules and the token's act.
    auth_time: int | None = None
    acr: str | None = None
    amr: tuple[str, ...] = ()
    session_id: str | None = None  # for one of our own access tokens: the session it belongs to
    jkt: str | None = None  # for one of our own DPoP-bound access tokens: the thumbprint of its key (cnf.jkt)


class _Unverified(msgspec.Struct):
    iss: str


def _unverified_issuer(token: str) -> str:
    """Only to choose which issuer's keys verify the token; nothing else is read before verification. The payload
    is read by the same strict rules as after verification (one spelling, UTF-8, no name twice): InvalidToken."""
    segments = token.split(".")
    if len(segments) != 3:
        raise Unauthenticated("bearer token is malformed")
    issuer: str = strict_json(segment_bytes(segments[1]), _Unverified).iss
    return issuer


Scheme = Literal["bearer", "dpop"]


class WrongDpopScheme(Unauthenticated):
    """RFC 9449 section 7.1: a DPoP-bound token presented as a bearer, or an unbound one under ``DPoP``; the
    challenge names the scheme and the algs a proof may use."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        algs = " ".join(sorted(DEFAULT_ALGORITHMS))
        self.headers["WWW-Authenticate"] = f'DPoP error="invalid_token", error_description="{detail}", algs="{algs}"'


def credentials(authorization: str | None) -> tuple[Scheme, str]:
    """The scheme (``Bearer``, or ``DPoP`` for a DPoP-bound token) and the token of an Authorization header."""
    if not authorization:
        raise Unauthenticated("Authorization: Bearer <token> is required")
    scheme, _, token = authorization.partition(" ")
    lowered = scheme.lower()
    if lowered not in ("bearer", "dpop") or not token.strip():
        raise Unauthenticated("Authorization must use the Bearer scheme (DPoP for a DPoP-bound session)")
    return ("dpop" if lowered == "dpop" else "bearer"), token.strip()


class JwksSource:
    """An issuer's public keys: a JWKS file read once, or a URL fetched by PyJWKClient with its own cache."""

    def __init__(self, issuer: TrustedIssuer, timeout: int) -> None:
        self._client: jwt.PyJWKClient | None = None
        self._static: dict[str, jwt.PyJWK] = {}
        if issuer.jwks_file is not None:
            try:
                jwks = jwt.PyJWKSet.from_json(Path(issuer.jwks_file).read_text())
            except FileNotFoundError:
                raise ValueError(
                    f"trusted issuer {issuer.issuer}: jwks_file {issuer.jwks_file} does not exist (for a test issuer, "
                    f"`authority callers token --issuer {issuer.issuer} ...` makes it: run it once before the start)"
                ) from None
            except (OSError, jwt.PyJWTError) as exc:
                raise ValueError(f"trusted issuer {issuer.issuer}: jwks_file: {exc}") from None
            # Callers name their key by kid; a key without one (what PyJWT's to_jwk writes) could never be chosen,
            # and every bearer it signed would fail as "unknown key": refused at start instead.
            unnamed = [n for n, key in enumerate(jwks.keys) if not key.key_id]
            if unnamed:
                raise ValueError(
                    f"trusted issuer {issuer.issuer}: jwks_file {issuer.jwks_file}: key #{unnamed[0]} has no kid; "
                    "give every key the kid its issuer puts in its tokens' headers"
                )
            self._static = {k.key_id: k for k in jwks.keys if k.key_id}
        elif issuer.jwks_url is not None:
            self._client = jwt.PyJWKClient(issuer.jwks_url, cache_jwk_set=True, lifespan=300, timeout=timeout)

    async def get(self, kid: str) -> jwt.PyJWK | None:
        if self._client is None:
            return self._static.get(kid)
        client = self._client
        try:
            return await anyio.to_thread.run_sync(client.get_signing_key, kid)
        except jwt.PyJWKClientConnectionError:
            raise Unavailable("the caller's identity provider keys cannot be fetched") from None
        except jwt.PyJWKClientError:
            return None  # the set was fetched and holds no such kid
        except (jwt.PyJWTError, ValueError):
            raise Unavailable("the caller's identity provider serves an unusable key set") from None


class Authenticator:
    """Verifies bearer tokens from the configured issuers and from ourselves."""

    def __init__(self, settings: Settings, keys: KeyManager, clock: Callable[[], float]) -> None:
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._own = OwnTokens.of(settings)
        self._issuers = {i.issuer: (i, JwksSource(i, settings.jwks_fetch_timeout_s)) for i in settings.trusted_issuers}
        self._verified: Remembered[Caller] = Remembered(REMEMBER_MAX)

    def now(self) -> int:
        return int(self._clock())

    def remembered(self) -> frozenset[str]:
        """The bearers whose verification is remembered, as spelled when stored: one entry per token."""
        return self._verified.tokens()

    async def authenticate(self, authorization: str | None, now: int) -> Caller:
        """The verified caller. A successful verification is remembered for the exact token string, until its
        ``exp`` and at most ``REMEMBER_S``: a portal client calls with the same bearer many times, and a signature
        check costs more than the rest of a mint (measured in bench/). The price: a bearer whose issuer key is
        withdrawn keeps working for up to ``REMEMBER_S``. One entry per token, however it is spelled: segments
        must be canonical base64url, and an ECDSA signature counts as its low-S twin.

        A DPoP-bound token is refused as a bearer, and the ``DPoP`` scheme refused for any other: checked on every
        request, remembered or not."""
        scheme, token = credentials(authorization)
        caller = await self._caller(token, now)
        if caller.jkt is not None and scheme != "dpop":
            raise WrongDpopScheme("this session is bound to a DPoP key: Authorization: DPoP <token>, with a proof")
        if caller.jkt is None and scheme == "dpop":
            raise WrongDpopScheme("this token is not bound to a DPoP key: Authorization: Bearer <token>")
        return caller

    async def _caller(self, token: str, now: int) -> Caller:
        if (remembered := self._verified.get(token, now)) is not None:
            return remembered
        try:
            header = read_header(token)
            issuer = _unverified_issuer(token)
            if issuer == self._settings.public_issuer:
                caller = await self._own_session(token, now)  # ours are only ever low-S: a high-S one is refused
            else:
                token = low_s_spelling(token, header["alg"])
                if (remembered := self._verified.get(token, now)) is not None:
                    return remembered
                caller = await self._trusted(token, header, issuer, now)
        except InvalidToken as exc:
            raise Unauthenticated(f"bearer token refused: {exc.detail}") from None
        self._verified.put(token, caller, min(caller.expires_at, now + REMEMBER_S))
        return caller

    async def _own_session(self, token: str, now: int) -> Caller:
        """One of our own access tokens: always an impersonated session (it carries ``act``)."""
        claims = await self._keys.verified(lambda keyring: self._own.access(token, keyring, now))
        return Caller(
            claims.iss,
            claims.sub,
            None,
            claims.loc,
            None,
            impersonated=True,
            expires_at=claims.exp,
            session_id=claims.sid,
            jkt=claims.cnf.jkt if claims.cnf else None,
        )

    async def _trusted(self, token: str, header: dict[str, Any], issuer: str, now: int) -> Caller:
        entry = self._issuers.get(issuer)
        if entry is None:
            raise Unauthenticated("bearer token comes from an issuer we do not trust")
        config, source = entry
        if typ_matches(header, IMPERSONATION_TYP):
            raise Unauthenticated("an impersonation token is not a bearer token")
        jwk = await source.get(header["kid"])
        if jwk is None:
            raise Unauthenticated("bearer token is signed by an unknown key")
        # A key is used with one alg only: the JWK's own, or the one PyJWT infers from its key type.
        alg = jwk.algorithm_name
        if alg not in config.algorithms:
            raise Unauthenticated(f"alg {alg!r} is not accepted from this issuer")
        # The strict pre-checks are done (one spelling, no repeated name, UTF-8): PyJWT checks the rest.
        strict_json(segment_bytes(token.split(".")[1]))
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                jwk.key,
                algorithms=[alg],
                audience=config.audiences,
                issuer=config.issuer,
                leeway=self._settings.clock_skew_s,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"bearer token refused: {exc}") from None
        # PyJWT reads a numeric string as a date; RFC 7519 section 2 does not.
        if not all(_is_number(claims[name]) for name in ("exp", "nbf", "iat") if name in claims):
            raise Unauthenticated("bearer token refused: exp, nbf and iat must be NumericDates")
        return caller_of(claims, config)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _int_claim(claims: Mapping[str, Any], name: str) -> int | None:
    """A positive id from a claim: an integer, or a string of ASCII digits (str.isdigit also takes "\\u0665")."""
    value = claims.get(name)
    if _is_int(value):
        return value if value > 0 else None
    if isinstance(value, str) and ID.fullmatch(value):
        return int(value)
    return None


def caller_of(claims: Mapping[str, Any], config: TrustedIssuer) -> Caller:
    """The caller a verified, validated trusted-issuer payload names, by the issuer's claim names."""
    subject = claims.get("sub")
    role, location = claims.get(config.role_claim), claims.get(config.location_claim)
    auth_time, acr, amr = claims.get("auth_time"), claims.get("acr"), claims.get("amr")
    return Caller(
        issuer=config.issuer,
        subject=subject if isinstance(subject, str) else str(subject) if _is_int(subject) else "",
        role=role if isinstance(role, str) else None,
        location=str(location) if isinstance(location, str | int) and not isinstance(location, bool) else None,
        coworker_id=_int_claim(claims, config.coworker_claim),
        impersonated="act" in claims,
        expires_at=math.floor(claims["exp"]),
        auth_time=math.floor(claims["auth_time"]) if _is_number(auth_time) else None,
        acr=acr if isinstance(acr, str) else None,
        amr=tuple(m for m in amr if isinstance(m, str)) if isinstance(amr, list) else (),
    )


class BearerAuth(AbstractAuthenticationMiddleware):
    """Verifies the caller's bearer before any parameter is read: an unauthenticated caller learns nothing. Every
    route needs one but those marked ``exclude_from_auth`` (public documents, probes) and the framework's own."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, exclude: list[str]) -> None:
        super().__init__(app, exclude=exclude)
        self.authenticator = authenticator

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        authorization = connection.headers.get("authorization")
        caller = await self.authenticator.authenticate(authorization, self.authenticator.now())
        return AuthenticationResult(user=caller, auth=None)
