"""RFC 8693 token exchange at ``POST /oauth2/token``: the seed's exchange in standard form, and a one-step flow.

(a) ``subject_token`` = an impersonation token (``subject_token_type`` ``urn:ietf:params:oauth:token-type:jwt``):
    the seed's exchange through the same ``Authority.exchange`` (single use, replay refused and revoking, the policy
    asked again). The token is the credential, as on the seed's exchange: no client authentication.
(b) ``subject_token`` = a coworker id (``subject_token_type`` ``urn:authority:token-type:coworker-id``) and
    ``actor_token`` = the impersonator's own bearer from a trusted issuer: the mint (its policy, step-up, reason,
    rate limits) and the exchange in one call. Only for a client of ``AUTHORITY_TOKEN_CLIENTS``, authenticated by
    ``client_secret_basic`` or ``private_key_jwt`` (RFC 7523), since whoever holds a staff bearer could otherwise
    open sessions without the portal.

Answers per RFC 8693 section 2.2.1; errors per RFC 6749 section 5.2 (``oauth_error``). No refresh token, ever.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus

import jwt
import msgspec
from litestar import Request, Response
from redis.asyncio import Redis

from authority import policy
from authority.authn import ID, Authenticator
from authority.dpop import published_path
from authority.impersonation import Authority, SessionGrant
from authority.refusals import (
    InvalidDpopProof,
    InvalidRequest,
    InvalidToken,
    RateLimited,
    Refusal,
    Unauthenticated,
    Unavailable,
    UseDpopNonce,
)
from authority.settings import Settings, TokenClient

TOKEN_PATH = "/oauth2/token"  # noqa: S105 - a name, not a secret
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
JWT_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105 - a name, not a secret
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105 - a name, not a secret
COWORKER_TOKEN_TYPE = "urn:authority:token-type:coworker-id"  # noqa: S105 - (b): the customer, by coworker id
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ACTOR_TOKEN_TYPES = frozenset({JWT_TOKEN_TYPE, ACCESS_TOKEN_TYPE})
ASSERTION_ALGS = ["ES256", "EdDSA", "RS256", "PS256"]
ASSERTION_MAX_LIFE_S = 300  # a client assertion is short-lived; its jti is remembered this long


class TokenRequest(msgspec.Struct, frozen=True):
    """The form's parameters this endpoint reads; others are ignored (RFC 6749 section 3.2)."""

    grant_type: str
    subject_token: str | None = None
    subject_token_type: str | None = None
    actor_token: str | None = None
    actor_token_type: str | None = None
    requested_token_type: str | None = None
    client_id: str | None = None
    client_assertion: str | None = None
    client_assertion_type: str | None = None
    reason: str | None = None
    ticket: str | None = None


class TokenResponse(msgspec.Struct, frozen=True):
    """RFC 8693 section 2.2.1 (``session_id`` is ours: the sid to revoke or end the session by)."""

    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int
    session_id: str


class ClientAuthFailed(Unauthenticated):
    code = "invalid-client"
    title = "Client authentication failed"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers["WWW-Authenticate"] = 'Basic realm="authority"'


class UnsupportedGrantType(Refusal):
    code = "unsupported-grant-type"
    title = "The grant type is not supported"


def parse(body: bytes) -> TokenRequest:
    """The form, strictly: UTF-8, each parameter at most once (RFC 6749 section 3.2), the grant ours."""
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=bool(body))
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("the body is not a form (application/x-www-form-urlencoded, UTF-8)") from None
    names = [name for name, _ in pairs]
    if repeated := sorted({n for n in names if names.count(n) > 1}):
        raise InvalidRequest(f"{', '.join(repeated)} given more than once")
    form = {name: value for name, value in pairs if value != ""}  # an empty parameter is an absent one
    if "grant_type" not in form:
        raise InvalidRequest("grant_type is required")
    if form["grant_type"] != GRANT_TYPE:
        raise UnsupportedGrantType(f"only {GRANT_TYPE} is supported here")
    known = {k: v for k, v in form.items() if k in TokenRequest.__struct_fields__}
    return msgspec.convert(known, TokenRequest)


class TokenEndpoint:
    """Validates a token request, authenticates its client where the flow needs one, and calls the service."""

    def __init__(self, settings: Settings, authority: Authority, authenticator: Authenticator, redis: Redis) -> None:
        self._settings = settings
        self._authority = authority
        self._authenticator = authenticator
        self._redis = redis
        self._clients = {c.client_id: c for c in settings.token_clients}
        self._client_keys = {c.client_id: _client_keys(c) for c in settings.token_clients if c.jwks_file}

    async def exchange(self, request: Request[Any, Any, Any], body: bytes) -> TokenResponse:
        form = parse(body)
        if form.requested_token_type not in (None, ACCESS_TOKEN_TYPE):
            raise InvalidRequest(f"requested_token_type: only {ACCESS_TOKEN_TYPE} is issued here")
        if not form.subject_token or not form.subject_token_type:
            raise InvalidRequest("subject_token and subject_token_type are required")
        proofs = request.headers.getall("dpop", [])
        if form.subject_token_type == JWT_TOKEN_TYPE:
            if form.actor_token:
                raise InvalidRequest("an impersonation token is redeemed alone: no actor_token with it")
            grant = await self._authority.exchange(form.subject_token, proofs=proofs, path=published_path(request))
        elif form.subject_token_type == COWORKER_TOKEN_TYPE:
            await self._authenticate_client(request, form)
            grant = await self._one_step(form, proofs, published_path(request))
        else:
            raise InvalidRequest(f"subject_token_type: {JWT_TOKEN_TYPE} or {COWORKER_TOKEN_TYPE}")
        return TokenResponse(
            access_token=grant.access_token,
            issued_token_type=ACCESS_TOKEN_TYPE,
            token_type=grant.token_type,
            expires_in=grant.expires_in,
            session_id=grant.session_id,
        )

    async def _one_step(self, form: TokenRequest, proofs: list[str], path: str) -> SessionGrant:
        """Mint as the actor (its bearer verified like any caller's), then redeem at once, with one DPoP key."""
        if not form.actor_token or form.actor_token_type not in ACTOR_TOKEN_TYPES:
            raise InvalidRequest(f"actor_token with actor_token_type {JWT_TOKEN_TYPE} is required")
        if not ID.fullmatch(form.subject_token or ""):
            raise InvalidRequest("subject_token must be a coworker id (a positive integer)")
        caller = await self._authenticator.authenticate(f"Bearer {form.actor_token}", self._authenticator.now())
        why = policy.justification(form.reason, form.ticket)
        jkt = await self._authority.proven_key(proofs, method="POST", path=path)
        coworker_id = int(form.subject_token or "0")
        if caller.role in policy.STAFF_ROLES:
            token = await self._authority.mint_for_staff(caller, coworker_id, why, jkt=jkt)
        else:
            token = await self._authority.mint_for_team_admin(caller, coworker_id, why, jkt=jkt)
        return await self._authority.exchange(token, bound=jkt)

    async def _authenticate_client(self, request: Request[Any, Any, Any], form: TokenRequest) -> TokenClient:
        """``client_secret_basic`` or ``private_key_jwt``, exactly one (RFC 6749 section 2.3)."""
        basic = request.headers.get("authorization", "")
        if basic and form.client_assertion:
            raise InvalidRequest("one client authentication method, not two")
        if basic:
            return self._basic(basic)
        if form.client_assertion:
            return await self._assertion(form)
        raise ClientAuthFailed("this flow needs client authentication (client_secret_basic or private_key_jwt)")

    def _basic(self, header: str) -> TokenClient:
        """RFC 6749 section 2.3.1: the id and the secret are each form-encoded before they are joined by ':', so a
        '+' in either is a space and '%2B' a plus."""
        scheme, _, encoded = header.partition(" ")
        try:
            client_id, _, secret = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise ClientAuthFailed("Authorization: Basic with client_id:client_secret") from None
        client = self._clients.get(unquote_plus(client_id))
        given = hashlib.sha256(unquote_plus(secret).encode()).hexdigest()
        if scheme.lower() != "basic" or client is None or client.client_secret_sha256 is None:
            raise ClientAuthFailed("unknown client, or not one that authenticates with a secret")
        if not hmac.compare_digest(given, client.client_secret_sha256):
            raise ClientAuthFailed("the client secret does not match")
        return client

    async def _assertion(self, form: TokenRequest) -> TokenClient:
        """RFC 7523 section 3: iss = sub = the client, aud = this endpoint (or the issuer), exp, a jti used once."""
        if form.client_assertion_type != ASSERTION_TYPE:
            raise ClientAuthFailed(f"client_assertion_type must be {ASSERTION_TYPE}")
        assertion = form.client_assertion or ""
        try:
            client_id = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            raise ClientAuthFailed("client_assertion is not a JWT") from None
        keys = self._client_keys.get(client_id) if isinstance(client_id, str) else None
        key = keys.get(header.get("kid", "")) if keys else None
        if key is None or form.client_id not in (None, client_id):
            raise ClientAuthFailed("unknown client, or a key it did not register")
        issuer = self._settings.public_issuer
        try:
            claims = jwt.decode(
                assertion,
                key.key,
                algorithms=[a for a in ASSERTION_ALGS if a == key.algorithm_name],
                audience=[issuer + TOKEN_PATH, issuer],
                issuer=client_id,
                leeway=self._settings.clock_skew_s,
                options={"require": ["exp", "iss", "sub", "aud", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise ClientAuthFailed(f"client_assertion refused: {exc}") from None
        now = int(time.time())
        if claims["sub"] != client_id or claims["exp"] - now > ASSERTION_MAX_LIFE_S:
            raise ClientAuthFailed(f"client_assertion: sub must be the client, exp within {ASSERTION_MAX_LIFE_S} s")
        once = (
            f"{self._settings.redis_prefix}client-assertion:{hashlib.sha256(str(claims['jti']).encode()).hexdigest()}"
        )
        if not await self._redis.set(once, b"1", nx=True, ex=ASSERTION_MAX_LIFE_S + self._settings.clock_skew_s):
            raise ClientAuthFailed("this client_assertion was already used")
        return self._clients[client_id]


def _client_keys(client: TokenClient) -> dict[str, jwt.PyJWK]:
    try:
        jwks = jwt.PyJWKSet.from_json(Path(client.jwks_file or "").read_text())
    except (OSError, jwt.PyJWTError) as exc:
        raise ValueError(f"token client {client.client_id}: jwks_file: {exc}") from None
    if any(not key.key_id for key in jwks.keys):
        raise ValueError(f"token client {client.client_id}: every key of its jwks_file needs a kid")
    return {key.key_id: key for key in jwks.keys if key.key_id}


OAuthError = Literal[
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unsupported_grant_type",
    "invalid_dpop_proof",
    "use_dpop_nonce",
    "temporarily_unavailable",
    "server_error",
]


def oauth_error(refusal: Refusal) -> tuple[OAuthError, int]:
    """What a refusal is at a token endpoint (RFC 6749 section 5.2, RFC 9449 sections 5 and 8): the error and its
    status. A subject token that is invalid, expired, spent or withdrawn is ``invalid_grant`` (a client mints
    again); everything else about the request, the actor and the policy is ``invalid_request`` (RFC 8693 2.2.2)."""
    if isinstance(refusal, ClientAuthFailed):
        return "invalid_client", 401
    if isinstance(refusal, UnsupportedGrantType):
        return "unsupported_grant_type", 400
    if isinstance(refusal, InvalidDpopProof):
        return "invalid_dpop_proof", 400
    if isinstance(refusal, UseDpopNonce):
        return "use_dpop_nonce", 400
    if isinstance(refusal, InvalidToken):
        return "invalid_grant", 400
    if isinstance(refusal, Unavailable | RateLimited):
        return "temporarily_unavailable", refusal.status
    if refusal.status >= 500:
        return "server_error", 500
    return "invalid_request", 400


def error_response(refusal: Refusal) -> Response[dict[str, str]]:
    error, status = oauth_error(refusal)
    headers = {k: v for k, v in refusal.headers.items() if k in ("Retry-After", "DPoP-Nonce", "WWW-Authenticate")}
    if error != "invalid_client":
        headers.pop("WWW-Authenticate", None)  # a challenge belongs to 401 only
    described = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in refusal.detail)
    return Response(
        {"error": error, "error_description": described},
        status_code=status,
        headers={**headers, "Cache-Control": "no-store"},
        media_type="application/json",
    )
