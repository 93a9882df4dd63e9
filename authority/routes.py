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
from litestar.openapi.spec import Example, OpenAPIMediaType, OpenAPIType, RequestBody, Schema
from litestar.params import JSONBody, PathParameter, QueryParameter, SkipValidation, URLEncodedBody
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_200_OK
from litestar.types import ControllerRouterHandler

from authority import policy, token_endpoint
from authority.authn import ID, Caller, credentials
from authority.dpop import DEFAULT_ALGORITHMS, UseDpopNonceChallenge, at_resource_server, published_path
from authority.impersonation import Authority, BulkRevocation, Introspection, Revocation, SessionEnd, SessionGrant
from authority.problems import PROBLEM_BASE, refusal_of
from authority.refusals import (
    BadSignature,
    BodyTooLarge,
    CoworkerNotFound,
    CustomerSession,
    Forbidden,
    HeadersTooLarge,
    ImpersonationDisabled,
    ImpersonationWithdrawn,
    InsufficientUserAuthentication,
    InvalidDpopProof,
    InvalidRequest,
    InvalidToken,
    MethodNotAllowed,
    NestedImpersonation,
    NotImpersonable,
    RateLimited,
    Refusal,
    SessionNotFound,
    TargetIsStaff,
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
from authority.sessions import Page
from authority.sessions import State as SessionState
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
TokenEndpointDep = NamedDependency[SkipValidation[token_endpoint.TokenEndpoint]]
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


def if_none_match(request: Request[Any, Any, State]) -> str | None:
    """The request's ``If-None-Match``, its repeated lines joined (RFC 9110 section 5.3), read off the raw scope
    headers: building the request's ``Headers`` for one field cost the JWKS route 6 % of its time."""
    values = [value for name, value in request.scope["headers"] if name == b"if-none-match"]
    return b", ".join(values).decode("latin-1") if values else None


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
    InsufficientUserAuthentication,
    Forbidden,
    NestedImpersonation,
    ImpersonationDisabled,
    NotImpersonable,
    TargetIsStaff,
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
    ImpersonationWithdrawn,
    UnsupportedMediaType,
    BodyTooLarge,
    Unavailable,
)
_SESSION_PROBLEMS = problems(InvalidRequest, Unauthenticated, NestedImpersonation, SessionNotFound, Unavailable)
_LIST_PROBLEMS = problems(InvalidRequest, Unauthenticated, CustomerSession, Forbidden, NestedImpersonation, Unavailable)
_REASON_DOC = "why (1 to 200 printable characters); required where the settings or the location say so"
_TICKET_DOC = "the ticket this is for (1 to 64 of A-Za-z0-9._:#/-); required where the settings or the location say so"
_CURSOR_DOC = "the next value of the previous page"
Limit = Annotated[int, QueryParameter(ge=1, le=100, description="items per page")]
_JWT_EXAMPLE = "eyJhbGciOiJFZERTQSIsImtpZCI6IlJ5THNxRTZy...In0.eyJpc3MiOi...fQ.7nn8QlUgSjg2..."


class MintResponse(msgspec.Struct, frozen=True):
    token: Annotated[
        str, msgspec.Meta(description="an imp+jwt, valid 60 s, exchangeable once", examples=[_JWT_EXAMPLE])
    ]


class BulkRevocationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Exactly one of: every live session of an impersonator (their ``sub``), or of a customer (coworker id)."""

    actor: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    subject: Annotated[str, msgspec.Meta(pattern=ID_PATTERN)] | None = None


async def minters_key(request: Request[Caller, None, State], authority: Authority) -> str | None:
    """The DPoP key the minter proves it holds, if any. The mint is called with a bearer, as a resource server is:
    a nonce is asked for with 401 and a challenge (RFC 9449 section 9), not the token endpoint's 400."""
    with at_resource_server():
        proofs = request.headers.getall("dpop", [])
        return await authority.proven_key(proofs, method="GET", path=published_path(request))


def once(request: Request[Any, Any, Any], *names: str) -> None:
    """Each of these query parameters at most once: a request means one thing or is refused."""
    for name in names:
        if len(request.query_params.getall(name, [])) > 1:
            raise InvalidRequest(f"{name} must be given at most once")


class ExchangeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LENGTH)]


class IntrospectionRequest(msgspec.Struct, frozen=True):
    """RFC 7662 section 2.1 (form-encoded); ``token_type_hint`` is accepted and, with one token type, ignored."""

    token: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN_LENGTH)]
    token_type_hint: str | None = None


class Status(msgspec.Struct, frozen=True):
    status: str


# What the metadata promises, from the modules that enforce it: the document never promises what the server refuses.
# "none" (RFC 7591 section 2, a client without credentials): an impersonation token alone is redeemed so, the token
# being the credential; the one-step flow needs one of the others.
CLIENT_AUTH_METHODS = ("none", "client_secret_basic", "private_key_jwt")
_TEMPLATE = "an RFC 6570 URI template (level 1): fill in {%s}"


class ServerMetadata(msgspec.Struct, frozen=True):
    """RFC 8414 authorization server metadata: registered names for what they mean; ``authority_*`` for what no
    registered name means (the mint and exchange of impersonation tokens, session revocation), so our names never
    collide with one registered now or later. Every URL is the issuer followed by a path from the route table."""

    issuer: str
    token_endpoint: str
    jwks_uri: str
    # REQUIRED by section 2, but there is no authorization endpoint: "none" (the one registered response type that
    # hands out nothing) rather than an empty array, which section 3.2 forbids.
    response_types_supported: tuple[str, ...]
    grant_types_supported: tuple[str, ...]
    token_endpoint_auth_methods_supported: tuple[str, ...]
    token_endpoint_auth_signing_alg_values_supported: tuple[str, ...]
    introspection_endpoint: str
    # "Bearer" (RFC 6750) from the OAuth Access Token Types registry, which section 2 allows here: introspection
    # is authenticated by a trusted issuer's bearer token, not by client authentication.
    introspection_endpoint_auth_methods_supported: tuple[str, ...]
    dpop_signing_alg_values_supported: tuple[str, ...]  # RFC 9449 section 5.1
    authority_impersonation_endpoint: str
    authority_team_impersonation_endpoint_template: Annotated[str, msgspec.Meta(description=_TEMPLATE % "coworkerId")]
    authority_exchange_endpoint: str
    # Not ``revocation_endpoint``: RFC 7009's takes a token in a form body; ours ends a session named in the path.
    authority_session_revocation_endpoint_template: Annotated[str, msgspec.Meta(description=_TEMPLATE % "sid")]
    authority_access_token_audience: str
    authority_token_signing_alg_values_supported: tuple[str, ...]  # the algs of the published keys


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
        reason: Annotated[str | None, QueryParameter(description=_REASON_DOC)] = None,
        ticket: Annotated[str | None, QueryParameter(description=_TICKET_DOC)] = None,
    ) -> MintResponse:
        if len(request.query_params.getall("coworkerId")) != 1:
            raise InvalidRequest("coworkerId must be given exactly once")
        once(request, "reason", "ticket")
        why = policy.justification(reason, ticket)
        jkt = await minters_key(request, authority)
        return MintResponse(await authority.mint_for_staff(request.user, parse_id(coworkerId), why, jkt=jkt))

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
        reason: Annotated[str | None, QueryParameter(description=_REASON_DOC)] = None,
        ticket: Annotated[str | None, QueryParameter(description=_TICKET_DOC)] = None,
    ) -> MintResponse:
        once(request, "reason", "ticket")
        why = policy.justification(reason, ticket)
        jkt = await minters_key(request, authority)
        return MintResponse(await authority.mint_for_team_admin(request.user, parse_id(coworkerId), why, jkt=jkt))

    @get(
        "/api/public/coworkers/me/impersonations",
        name="my-impersonations",
        guards=[policy.customer],
        tags=["sessions"],
        summary="Who impersonated me, when, why, and how it ended",
        responses=_LIST_PROBLEMS,
    )
    async def mine(
        self,
        request: Request[Caller, None, State],
        authority: AuthorityDep,
        cursor: Annotated[str | None, QueryParameter(max_length=128, description=_CURSOR_DOC)] = None,
        limit: Limit = 50,
    ) -> Page:
        once(request, "cursor", "limit")
        return await authority.my_impersonations(request.user, cursor=cursor, limit=limit)


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
        "/api/sys/sessions/revoke",
        name="revoke-all",
        status_code=HTTP_200_OK,
        guards=[policy.staff, policy.body_of("application/json")],
        summary="Revoke every live session of an impersonator or of a customer, in the caller's location",
        responses=_LIST_PROBLEMS,
    )
    async def revoke_all(
        self, request: Request[Caller, None, State], authority: AuthorityDep, data: JSONBody[BulkRevocationRequest]
    ) -> BulkRevocation:
        try:
            check_unique_names(await request.body())
        except ValueError as exc:
            raise InvalidRequest(f"the body is ambiguous: {exc}") from None
        if (data.actor is None) == (data.subject is None):
            raise InvalidRequest('give exactly one of "actor" and "subject"')
        return await authority.revoke_all(request.user, actor=data.actor, subject=data.subject)

    @get(
        "/api/sys/sessions",
        name="sessions",
        guards=[policy.staff],
        summary="Live and recent impersonated sessions of the caller's location, newest first",
        responses=_LIST_PROBLEMS,
    )
    async def sessions(
        self,
        request: Request[Caller, None, State],
        authority: AuthorityDep,
        *,
        actor: Annotated[str | None, QueryParameter(max_length=256, description="the impersonator's sub")] = None,
        subject: Annotated[str | None, QueryParameter(pattern=ID_PATTERN, description="the customer")] = None,
        # "state" is a name Litestar keeps for the app state: the query parameter is read under another
        state_now: Annotated[
            SessionState | None, QueryParameter(name="state", description="the session's state now")
        ] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=128, description=_CURSOR_DOC)] = None,
        limit: Limit = 50,
    ) -> Page:
        once(request, "actor", "subject", "state", "cursor", "limit")
        return await authority.list_sessions(
            request.user, actor=actor, subject=subject, state=state_now, cursor=cursor, limit=limit
        )

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


def _oauth_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """The token endpoint answers every refusal as RFC 6749 section 5.2 says, not as problem details."""
    return token_endpoint.error_response(refusal_of(exc))


@post(
    token_endpoint.TOKEN_PATH,
    name="token",
    status_code=HTTP_200_OK,
    cache_control=NO_STORE,
    tags=["oauth"],
    summary="RFC 8693 token exchange: an impersonation token, or a coworker id and an actor token, for a session",
    description=token_endpoint.__doc__,
    guards=[policy.body_of("application/x-www-form-urlencoded")],
    exception_handlers={Exception: _oauth_error},
    opt=PUBLIC,  # the subject token, or the client's own authentication, is the credential
    request_body=RequestBody(
        content={"application/x-www-form-urlencoded": OpenAPIMediaType(schema=Schema(type=OpenAPIType.OBJECT))}
    ),
)
async def token(request: Request[Any, Any, State], endpoint: TokenEndpointDep) -> token_endpoint.TokenResponse:
    return await endpoint.exchange(request, await request.body())


@post(
    "/api/sys/sessions/current/end",
    name="end-current",
    status_code=HTTP_200_OK,
    cache_control=NO_STORE,
    tags=["sessions"],
    security=BEARER,
    guards=[policy.own_session],
    summary="End this impersonated session (the portal's stop-impersonating button)",
    responses=problems(
        Unauthenticated, InvalidDpopProof, UseDpopNonceChallenge, Forbidden, SessionNotFound, Unavailable
    ),
)
async def end_current(request: Request[Caller, None, State], authority: AuthorityDep) -> SessionEnd:
    """The one route an impersonated session's own bearer may call; a DPoP-bound one with a proof of its key."""
    if request.user.jkt is not None:
        _, access_token = credentials(request.headers.get("authorization"))
        await authority.dpop.prove(
            request.headers.getall("dpop", []),
            method=request.method,
            path=published_path(request),
            now=int(authority.clock()),
            access_token=access_token,
            jkt=request.user.jkt,
        )
    return await authority.end_current(request.user)


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
    return await authority.exchange(data.token, proofs=request.headers.getall("dpop", []), path=published_path(request))


@route(
    "/.well-known/jwks.json",
    http_method=READ,
    name="jwks",
    tags=["discovery"],
    summary="Published public keys",
    opt=PUBLIC,
    responses={200: ResponseSpec(data_container=JwkSet, description="the signer, the standby, retiring keys")},
)
async def jwks(request: Request[Any, Any, State], published: PublishedDep) -> ASGIResponse:
    etag, full, not_modified = published.jwks_answers()
    return not_modified if etag_matches(if_none_match(request), etag) else full


def server_metadata(request: Request[Any, Any, State], published: Published) -> Response[ServerMetadata]:
    """The one metadata document, for both paths it is served at; cached as long as the JWKS."""
    settings = published.settings

    def url(name: str, **params: str) -> str:
        return settings.public_issuer + request.app.route_reverse(name, **params)

    document = ServerMetadata(
        issuer=settings.public_issuer,
        token_endpoint=url("token"),
        jwks_uri=url("jwks"),
        response_types_supported=("none",),
        grant_types_supported=(token_endpoint.GRANT_TYPE,),
        token_endpoint_auth_methods_supported=CLIENT_AUTH_METHODS,
        token_endpoint_auth_signing_alg_values_supported=tuple(sorted(token_endpoint.ASSERTION_ALGS)),
        introspection_endpoint=url("introspect"),
        introspection_endpoint_auth_methods_supported=("Bearer",),
        dpop_signing_alg_values_supported=tuple(sorted(DEFAULT_ALGORITHMS)),
        authority_impersonation_endpoint=url("impersonate"),
        authority_team_impersonation_endpoint_template=url("team-impersonate", coworkerId="{coworkerId}"),
        authority_exchange_endpoint=url("exchange"),
        authority_session_revocation_endpoint_template=url("revoke", sid="{sid}"),
        authority_access_token_audience=settings.session_audience,
        authority_token_signing_alg_values_supported=tuple(sorted({k.alg for k in published.keyring.keys})),
    )
    return Response(document, headers={"Cache-Control": f"public, max-age={settings.jwks_max_age_s}"})


@route(
    "/.well-known/oauth-authorization-server",
    http_method=READ,
    name="metadata",
    tags=["discovery"],
    summary="Authorization server metadata (RFC 8414)",
    opt=PUBLIC,
)
async def metadata(request: Request[Any, Any, State], published: PublishedDep) -> Response[ServerMetadata]:
    """RFC 8414 section 3.1 puts this path between the issuer's host and its path: for an issuer with a path
    (``https://example.com/authority``) a proxy must route ``/.well-known/oauth-authorization-server/authority``
    here."""
    return server_metadata(request, published)


@route(
    "/.well-known/openid-configuration",
    http_method=READ,
    name="discovery",
    tags=["discovery"],
    summary="The same metadata at the OpenID Connect Discovery path",
    opt=PUBLIC,
)
async def discovery(request: Request[Any, Any, State], published: PublishedDep) -> Response[ServerMetadata]:
    """The RFC 8414 document, unchanged: RFC 8414 sections 3 and 5 use "openid-configuration" for OAuth metadata
    in general, and consumers that look for ``jwks_uri`` there keep finding it. We are not an OpenID Provider (no
    ID tokens, no authorization or userinfo endpoint), so the OpenID-only members (``subject_types_supported``,
    ``id_token_signing_alg_values_supported``) are left out rather than promising ID tokens no one gets: an
    OpenID Connect validator refuses this document, by design."""
    return server_metadata(request, published)


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


ROUTES: list[ControllerRouterHandler] = [
    MintController,
    SessionController,
    token,
    end_current,
    exchange,
    jwks,
    metadata,
    discovery,
    healthz,
    readyz,
]
