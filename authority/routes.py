"""HTTP surface: thin handlers that parse, authenticate (middleware), call the service and shape the answer."""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import CacheControlHeader, State
from litestar.di import NamedDependency, Provide
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult, DefineMiddleware
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import JSONBody, PathParameter, QueryParameter, URLEncodedBody
from litestar.status_codes import HTTP_200_OK, HTTP_304_NOT_MODIFIED
from litestar.types import ControllerRouterHandler

from authority.callers import ID, Caller, Trust
from authority.impersonation import Authority, Revocation, Session
from authority.problems import PROBLEM_BASE
from authority.refusals import (
    BadSignature,
    CoworkerNotFound,
    CustomerSession,
    Forbidden,
    InvalidRequest,
    InvalidToken,
    NestedImpersonation,
    RateLimited,
    Refusal,
    SessionNotFound,
    TokenExpired,
    TokenNotIssued,
    TokenNotYetValid,
    TokenReplayed,
    Unauthenticated,
    Unavailable,
    UnknownKey,
    UnsupportedMediaType,
    WrongAudience,
    WrongIssuer,
    WrongTokenType,
)
from authority.tokens import MAX_TOKEN_LENGTH, check_unique_names

NO_STORE = CacheControlHeader(no_store=True)
# Decimal digits only: "1e3", "+5" or " 5" are not ids, however a lenient int parser would read them.
ID_PATTERN = f"^{ID.pattern}$"  # for the OpenAPI document; ``parse_id`` enforces ID itself
_ID_DOC = "the customer to impersonate (a positive integer)"
SID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
SID = re.compile(r"[A-Za-z0-9_-]{16,64}")
AuthorityDep = NamedDependency[Authority]


def parse_id(value: str) -> int:
    """The pattern documents the id; this enforces it (``$`` in the pattern also lets a trailing newline by)."""
    if not ID.fullmatch(value):
        raise InvalidRequest("coworkerId must be a positive integer in decimal digits")
    return int(value)


class Problem(msgspec.Struct, frozen=True):
    """RFC 9457 problem details: every non-2xx answer has this shape (``application/problem+json``)."""

    type: str
    title: str
    status: int
    detail: str


def problems(*refusals: type[Refusal]) -> dict[int, ResponseSpec]:
    """OpenAPI entries for the refusals a route can answer with, one example per refusal code."""
    by_status: dict[int, list[type[Refusal]]] = {}
    for refusal in refusals:
        by_status.setdefault(refusal.status, []).append(refusal)
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type="application/problem+json",
            description="; ".join(f"`{r.code}`: {r.title}" for r in group),
            generate_examples=False,
            examples=[
                Example(
                    summary=r.code,
                    value={"type": PROBLEM_BASE + r.code, "title": r.title, "status": r.status, "detail": "..."},
                )
                for r in group
            ],
        )
        for status, group in sorted(by_status.items())
    }


_MINT_PROBLEMS = problems(
    InvalidRequest,
    Unauthenticated,
    CustomerSession,
    Forbidden,
    NestedImpersonation,
    CoworkerNotFound,
    RateLimited,
    Unavailable,
)
_EXCHANGE_PROBLEMS = problems(
    InvalidRequest,
    InvalidToken,
    TokenExpired,
    TokenNotYetValid,
    WrongTokenType,
    WrongAudience,
    WrongIssuer,
    UnknownKey,
    BadSignature,
    TokenReplayed,
    TokenNotIssued,
    UnsupportedMediaType,
    Unavailable,
)
_SESSION_PROBLEMS = problems(InvalidRequest, Unauthenticated, NestedImpersonation, SessionNotFound, Unavailable)
_JWT_EXAMPLE = "eyJhbGciOiJFZERTQSIsImtpZCI6IlJ5THNxRTZy...In0.eyJpc3MiOi...fQ.7nn8QlUgSjg2..."


class MintResponse(msgspec.Struct, frozen=True):
    token: Annotated[
        str, msgspec.Meta(description="an imp+jwt, valid 60 s, exchangeable once", examples=[_JWT_EXAMPLE])
    ]


class ExchangeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LENGTH)]


class IntrospectionRequest(msgspec.Struct, frozen=True):
    """RFC 7662 section 2.1 (form-encoded); ``token_type_hint`` is accepted and, with one token type, ignored."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LENGTH)]
    token_type_hint: str | None = None


class Status(msgspec.Struct, frozen=True):
    status: str


class BearerAuth(AbstractAuthenticationMiddleware):
    """Verifies the caller's bearer before any parameter is read: an unauthenticated caller learns nothing."""

    async def authenticate_request(self, connection: ASGIConnection[Any, Any, Any, Any]) -> AuthenticationResult:
        state = connection.app.state
        trust: Trust = state.trust
        authority: Authority = state.authority
        caller = await trust.authenticate(connection.headers.get("authorization"), int(authority.clock()))
        return AuthenticationResult(user=caller, auth=None)


def provide_authority(state: State) -> Authority:
    authority: Authority = state.authority
    return authority


class MintController(Controller):
    """The two mint endpoints of the seed; both answer ``{"token": ...}`` and are never cached."""

    middleware = [DefineMiddleware(BearerAuth)]
    cache_control = NO_STORE
    tags = ["impersonation"]

    @get("/api/sys/users/impersonate", summary="Impersonation token for an admin or operator", responses=_MINT_PROBLEMS)
    async def staff(
        self,
        request: Request[Caller, None, State],
        authority: AuthorityDep,
        coworker_id: Annotated[str, QueryParameter(name="coworkerId", pattern=ID_PATTERN, description=_ID_DOC)],
    ) -> MintResponse:
        if len(request.query_params.getall("coworkerId")) != 1:
            raise InvalidRequest("coworkerId must be given exactly once")
        return MintResponse(await authority.mint_for_staff(request.user, parse_id(coworker_id)))

    @get(
        "/api/public/coworkers/{coworker_id:str}/impersonate",
        summary="Impersonation token for a team admin",
        responses=_MINT_PROBLEMS,
    )
    async def team_admin(
        self,
        request: Request[Caller, None, State],
        authority: AuthorityDep,
        coworker_id: Annotated[str, PathParameter(pattern=ID_PATTERN, description=_ID_DOC)],
    ) -> MintResponse:
        return MintResponse(await authority.mint_for_team_admin(request.user, parse_id(coworker_id)))


class SessionController(Controller):
    """Online checks for services that need them: revoke a session, introspect an access token."""

    middleware = [DefineMiddleware(BearerAuth)]
    cache_control = NO_STORE
    tags = ["sessions"]

    @post(
        "/api/sys/sessions/{sid:str}/revoke",
        status_code=HTTP_200_OK,
        summary="Revoke an impersonated session",
        responses=_SESSION_PROBLEMS,
    )
    async def revoke(
        self,
        request: Request[Caller, None, State],
        authority: AuthorityDep,
        sid: Annotated[str, PathParameter(pattern=SID_PATTERN, description="the session_id from the exchange")],
    ) -> Revocation:
        if not SID.fullmatch(sid):
            raise InvalidRequest("not a session id")
        return await authority.revoke(request.user, sid)

    @post(
        "/oauth2/introspect",
        status_code=HTTP_200_OK,
        summary="RFC 7662 token introspection",
        responses=problems(InvalidRequest, Unauthenticated, NestedImpersonation, Unavailable),
    )
    async def introspect(
        self, request: Request[Caller, None, State], authority: AuthorityDep, data: URLEncodedBody[IntrospectionRequest]
    ) -> dict[str, Any]:
        return await authority.introspect(request.user, data.token)


@post(
    "/api/sys/users/exchange",
    status_code=HTTP_200_OK,
    cache_control=NO_STORE,
    tags=["impersonation"],
    summary="Exchange an impersonation token, once, for a bearer session",
    responses=_EXCHANGE_PROBLEMS,
)
async def exchange(
    request: Request[Any, Any, State], data: JSONBody[ExchangeRequest], authority: AuthorityDep
) -> Session:
    if request.content_type[0] != "application/json":
        raise UnsupportedMediaType("send the token as application/json")
    try:  # msgspec read the body keeping the last of repeated names; a request means one thing or is refused
        check_unique_names(await request.body())
    except ValueError as exc:
        raise InvalidRequest(f"the body is ambiguous: {exc}") from None
    return await authority.exchange(data.token)


@get("/.well-known/jwks.json", tags=["discovery"], summary="Published public keys")
async def jwks(request: Request[Any, Any, State], authority: AuthorityDep) -> Response[bytes]:
    keyring = authority.keyring
    headers = {
        "ETag": keyring.etag,
        "Cache-Control": f"public, max-age={authority.settings.jwks_max_age_s}",
    }
    if request.headers.get("if-none-match") == keyring.etag:
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(keyring.jwks, media_type="application/json", headers=headers)


@get("/.well-known/openid-configuration", tags=["discovery"], summary="Issuer metadata")
async def discovery(authority: AuthorityDep) -> dict[str, Any]:
    s = authority.settings
    base = s.public_issuer
    return {
        "issuer": base,
        "jwks_uri": f"{base}/.well-known/jwks.json",
        "impersonation_endpoint": f"{base}/api/sys/users/impersonate",
        "team_impersonation_endpoint": f"{base}/api/public/coworkers/{{coworkerId}}/impersonate",
        "exchange_endpoint": s.exchange_audience,
        "introspection_endpoint": f"{base}/oauth2/introspect",
        "revocation_endpoint_template": f"{base}/api/sys/sessions/{{sid}}/revoke",
        "token_signing_alg_values_supported": sorted({k.alg for k in authority.keyring.keys}),
        "access_token_audience": s.session_audience,
    }


@get("/healthz", tags=["probes"], summary="Liveness")
async def healthz() -> Status:
    return Status("ok")


@get(
    "/readyz",
    tags=["probes"],
    summary="Readiness: Redis answers and a signing key is loaded",
    responses=problems(Unavailable),
)
async def readyz(authority: AuthorityDep) -> Status:
    now = int(authority.clock())
    if authority.keyring.signer_at(now) is None:
        raise Unavailable("no active signing key")
    if not authority.keys.fresh(now):
        raise Unavailable("key records have not been re-read lately (see the logs)")
    await authority.allowlist.ping()
    return Status("ready")


ROUTES: list[ControllerRouterHandler] = [MintController, SessionController, exchange, jwks, discovery, healthz, readyz]
DEPENDENCIES = {"authority": Provide(provide_authority, sync_to_thread=False)}
