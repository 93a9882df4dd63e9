"""HTTP surface: thin handlers that parse, authenticate (middleware), call the service and shape the answer."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Controller, HttpMethod, Request, Response, get, post, route
from litestar.datastructures import CacheControlHeader, State
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import JSONBody, PathParameter, QueryParameter, SkipValidation, URLEncodedBody
from litestar.status_codes import HTTP_200_OK, HTTP_304_NOT_MODIFIED
from litestar.types import ControllerRouterHandler

from authority import policy
from authority.authn import ID, Caller
from authority.impersonation import Authority, Introspection, Revocation, SessionGrant
from authority.problems import PROBLEM_BASE
from authority.refusals import (
    BadSignature,
    BodyTooLarge,
    CoworkerNotFound,
    CustomerSession,
    Forbidden,
    HeadersTooLarge,
    InvalidRequest,
    InvalidToken,
    MethodNotAllowed,
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
from authority.services import Published
from authority.tokens import MAX_TOKEN_LENGTH, check_unique_names

NO_STORE = CacheControlHeader(no_store=True)
# Decimal digits only: "1e3", "+5" or " 5" are not ids, however a lenient int parser would read them.
ID_PATTERN = f"^{ID.pattern}$"  # for the OpenAPI document; ``parse_id`` enforces ID itself
_ID_DOC = "the customer to impersonate (a positive integer)"
SID_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"
SID = re.compile(r"[A-Za-z0-9_-]{16,64}")
# Services injected from the composition root (app.create_app), named, never parsed from the request.
AuthorityDep = NamedDependency[SkipValidation[Authority]]
PublishedDep = NamedDependency[SkipValidation[Published]]
ReadyDep = NamedDependency[SkipValidation[Callable[[], Awaitable[None]]]]
# The OpenAPI security requirement of every route that needs a caller.
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
PUBLIC = {"exclude_from_auth": True}  # routes anyone may call: no bearer is read
# Public reads answer HEAD as well as GET (RFC 9110 §9.3.2: same headers, no body; middleware.bodiless_head).
READ = [HttpMethod.GET, HttpMethod.HEAD]
# Statuses whose answers carry Retry-After (an OpenAPI response spec here cannot list headers).
RETRY_AFTER = {429, 503}


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 section 13.1.2: ``If-None-Match`` compares weakly, may list several tags, or be ``*``."""
    if not if_none_match:
        return False
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or any(tag.removeprefix("W/") == etag for tag in tags)


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
    answers: tuple[type[Refusal], ...] = (*refusals, HeadersTooLarge, MethodNotAllowed)  # any route can give these
    for refusal in answers:
        by_status.setdefault(refusal.status, []).append(refusal)
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type="application/problem+json",
            description="; ".join(f"`{r.code}`: {r.title}" for r in group)
            + (" (a `Retry-After` header says when to try again)" if status in RETRY_AFTER else ""),
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
    BodyTooLarge,
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


class Discovery(msgspec.Struct, frozen=True):
    """Issuer metadata (an OpenID discovery subset); every URL built from the route table."""

    issuer: str
    jwks_uri: str
    impersonation_endpoint: str
    team_impersonation_endpoint: str
    exchange_endpoint: str
    introspection_endpoint: str
    revocation_endpoint_template: str
    token_signing_alg_values_supported: list[str]
    access_token_audience: str


class JwkSet(msgspec.Struct, frozen=True):
    """RFC 7517 section 5: the signer, the standby, retiring keys; each a public JWK with ``kid`` (its RFC 7638
    thumbprint), ``alg`` and ``use: sig``, and its type's members (``crv``/``x``/``y``, or ``n``/``e``)."""

    keys: list[dict[str, str]]


class MintController(Controller):
    """The two mint endpoints of the seed; both answer ``{"token": ...}`` and are never cached. The guards are the
    role gates; which coworker a caller may reach is the directory's, asked by the service."""

    cache_control = NO_STORE
    tags = ["impersonation"]
    security = BEARER

    @get(
        "/api/sys/users/impersonate",
        name="impersonate",
        guards=[policy.staff],
        summary="Impersonation token for an admin or operator",
        responses=_MINT_PROBLEMS,
    )
    async def staff(
        self,
        request: Request[Caller, None, State],
        authority: AuthorityDep,
        coworkerId: Annotated[str, QueryParameter(pattern=ID_PATTERN, description=_ID_DOC)],  # errors name it so
    ) -> MintResponse:
        if len(request.query_params.getall("coworkerId")) != 1:
            raise InvalidRequest("coworkerId must be given exactly once")
        return MintResponse(await authority.mint_for_staff(request.user, parse_id(coworkerId)))

    @get(
        "/api/public/coworkers/{coworkerId:str}/impersonate",
        name="team-impersonate",
        guards=[policy.member],
        summary="Impersonation token for a team admin",
        responses=_MINT_PROBLEMS,
    )
    async def team_admin(
        self,
        request: Request[Caller, None, State],
        authority: AuthorityDep,
        coworkerId: Annotated[str, PathParameter(pattern=ID_PATTERN, description=_ID_DOC)],  # as the seed names it
    ) -> MintResponse:
        return MintResponse(await authority.mint_for_team_admin(request.user, parse_id(coworkerId)))


class SessionController(Controller):
    """Online checks for services that need them: revoke a session, introspect an access token. Never from an
    impersonated session."""

    cache_control = NO_STORE
    tags = ["sessions"]
    security = BEARER
    guards = [policy.unimpersonated]

    @post(
        "/api/sys/sessions/{sid:str}/revoke",
        name="revoke",
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
        name="introspect",
        status_code=HTTP_200_OK,
        guards=[policy.body_of("application/x-www-form-urlencoded")],
        summary="RFC 7662 token introspection",
        responses=problems(InvalidRequest, Unauthenticated, NestedImpersonation, UnsupportedMediaType, Unavailable),
    )
    async def introspect(
        self, request: Request[Caller, None, State], authority: AuthorityDep, data: URLEncodedBody[IntrospectionRequest]
    ) -> Introspection:
        return await authority.introspect(request.user, data.token)


@post(
    "/api/sys/users/exchange",
    name="exchange",
    status_code=HTTP_200_OK,
    cache_control=NO_STORE,
    tags=["impersonation"],
    summary="Exchange an impersonation token, once, for a bearer session",
    responses=_EXCHANGE_PROBLEMS,
    guards=[policy.body_of("application/json")],
    opt=PUBLIC,  # the impersonation token in the body is the credential
)
async def exchange(
    request: Request[Any, Any, State], data: JSONBody[ExchangeRequest], authority: AuthorityDep
) -> SessionGrant:
    try:  # msgspec read the body keeping the last of repeated names; a request means one thing or is refused
        check_unique_names(await request.body())
    except ValueError as exc:
        raise InvalidRequest(f"the body is ambiguous: {exc}") from None
    return await authority.exchange(data.token)


@route(
    "/.well-known/jwks.json",
    http_method=READ,
    name="jwks",
    tags=["discovery"],
    summary="Published public keys",
    opt=PUBLIC,
    responses={200: ResponseSpec(data_container=JwkSet, description="the signer, the standby, retiring keys")},
)
async def jwks(request: Request[Any, Any, State], published: PublishedDep) -> Response[bytes]:
    keyring = published.keyring
    headers = {"ETag": keyring.etag, "Cache-Control": f"public, max-age={published.settings.jwks_max_age_s}"}
    if etag_matches(request.headers.get("if-none-match"), keyring.etag):
        return Response(b"", status_code=HTTP_304_NOT_MODIFIED, headers=headers)
    return Response(keyring.jwks, media_type="application/json", headers=headers)


@route(
    "/.well-known/openid-configuration",
    http_method=READ,
    name="discovery",
    tags=["discovery"],
    summary="Issuer metadata",
    opt=PUBLIC,
)
async def discovery(request: Request[Any, Any, State], published: PublishedDep) -> Response[Discovery]:
    settings = published.settings

    def url(name: str, **params: str) -> str:
        return settings.public_issuer + request.app.route_reverse(name, **params)

    document = Discovery(
        issuer=settings.public_issuer,
        jwks_uri=url("jwks"),
        impersonation_endpoint=url("impersonate"),
        team_impersonation_endpoint=url("team-impersonate", coworkerId="{coworkerId}"),
        exchange_endpoint=url("exchange"),
        introspection_endpoint=url("introspect"),
        revocation_endpoint_template=url("revoke", sid="{sid}"),
        token_signing_alg_values_supported=sorted({k.alg for k in published.keyring.keys}),
        access_token_audience=settings.session_audience,
    )
    return Response(document, headers={"Cache-Control": f"public, max-age={settings.jwks_max_age_s}"})


@route("/healthz", http_method=READ, name="healthz", tags=["probes"], summary="Liveness", opt=PUBLIC)
async def healthz() -> Status:
    return Status("ok")


@route(
    "/readyz",
    http_method=READ,
    name="readyz",
    tags=["probes"],
    summary="Readiness: Redis answers and a signing key is loaded",
    responses=problems(Unavailable),
    opt=PUBLIC,
)
async def readyz(ready: ReadyDep) -> Status:
    await ready()
    return Status("ready")


ROUTES: list[ControllerRouterHandler] = [MintController, SessionController, exchange, jwks, discovery, healthz, readyz]
