"""The waterfall: where a request's time goes, one layer at a time, each layer an ASGI app of its own.

Every layer is the one before it plus exactly one real component of the service, built by the composition root
(``services.build``) from the same ``AUTHORITY_*`` settings as the authority, with the same request pipeline
(``app.request_pipeline``: header cap and request id, Prometheus HTTP counters, bearer authentication, problem
details, response hooks). Served by granian exactly as ``bench/run.py`` serves the authority, and driven by wrk;
``python -m bench.run --waterfall`` runs it. The layers, per path:

- mint: bare (``bench.bare``) → ``get_stack`` (the pipeline; the route is public, so the bearer is not read) →
  ``mint_authn`` (+ the cached bearer) → ``mint_redis`` (+ the allowlist write and rate count: one pipelined round
  trip) → ``mint_sign`` (+ the claims and the signature) → ``mint_audit`` (the service's own ``_mint``: + the audit
  event) → the authority's mint route (+ routing of query parameters, guards, dependency injection, directory,
  step-up and justification rules, the response struct);
- exchange: bare → ``post_stack`` → ``exchange_body`` (+ the JSON body: media-type guard, msgspec decoding, the
  unique-names check) → ``exchange_verify`` (+ the impersonation token's verification) → ``exchange_redis`` (+ the
  consume script, which writes the session trail too: one round trip on one server) → ``exchange_sign`` (+ the
  access token's claims and signature) → the authority's exchange route (+ dependency injection, DPoP gate, the
  directory asked again, the audit event, the response struct);
- introspection (the same access token, again and again): bare → ``post_stack`` → ``introspect_authn`` (+ the
  cached bearer) → ``introspect_body`` (+ the form body) → ``introspect_verify`` (+ the remembered verification)
  → ``introspect_redis`` (+ the session's one GET) → the authority's introspection route (+ guards, dependency
  injection, the audit event, the response struct).

The layers before ``redis`` re-send one token (``post.lua``): verifying it costs the same each time, and only the
real exchange route must spend a fresh token per request (``exchange.lua``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from litestar import Litestar, Request, get, post
from litestar.datastructures import State
from litestar.handlers import BaseRouteHandler
from litestar.params import JSONBody, URLEncodedBody

from authority import policy
from authority.app import freeze_startup, request_pipeline
from authority.authn import Caller
from authority.impersonation import NO_REASON, new_id
from authority.replay import SessionRecord
from authority.routes import PUBLIC, ExchangeRequest, IntrospectionRequest
from authority.services import Services, build
from authority.sessions import Summary
from authority.settings import load
from authority.tokens import (
    ACCESS_TYP,
    IMPERSONATION_TYP,
    Actor,
    access_claims,
    check_unique_names,
    impersonation_claims,
    sign,
)

PATH = "/w"  # every layer serves one route, at this path
Answer = dict[str, str]


def _mint_layers(services: Services) -> dict[str, BaseRouteHandler]:
    authority, settings = services.authority, services.settings
    ttl = settings.impersonation_ttl_s + settings.clock_skew_s

    @get(PATH, opt=PUBLIC)
    async def get_stack() -> Answer:
        return {"token": "x"}

    @get(PATH)
    async def mint_authn(request: Request[Caller, None, State]) -> Answer:
        return {"token": request.user.subject}

    async def issue(caller: Caller) -> None:
        await services.allowlist.issue(
            new_id(),
            ttl,
            limiter=authority.limiter,
            issuer=caller.issuer,
            actor=caller.subject,
            location=caller.location or "",
        )

    @get(PATH)
    async def mint_redis(request: Request[Caller, None, State]) -> Answer:
        await issue(request.user)
        return {"token": request.user.subject}

    @get(PATH)
    async def mint_sign(request: Request[Caller, None, State]) -> Answer:
        caller, now = request.user, int(time.time())
        claims = impersonation_claims(
            issuer=settings.public_issuer,
            audience=settings.exchange_audience,
            coworker_id=42,
            location=caller.location or "",
            actor=Actor(sub=caller.subject, role=caller.role or "", iss=caller.issuer),
            jti=new_id(),
            now=now,
            ttl=settings.impersonation_ttl_s,
        )
        token = sign(claims, authority._signer(now), IMPERSONATION_TYP)
        await issue(caller)
        return {"token": token}

    @get(PATH)
    async def mint_audit(request: Request[Caller, None, State]) -> Answer:
        caller = request.user
        location = caller.location or ""
        return {"token": await authority._mint(caller, 42, location, caller.role or "", NO_REASON)}

    return {f.handler_name: f for f in (get_stack, mint_authn, mint_redis, mint_sign, mint_audit)}


def _exchange_layers(services: Services) -> dict[str, BaseRouteHandler]:
    authority, settings = services.authority, services.settings
    json_body = [policy.body_of("application/json")]

    @post(PATH, opt=PUBLIC, status_code=200)
    async def post_stack() -> Answer:
        return {"token": "x"}

    async def checked(request: Request[Any, Any, State]) -> None:
        check_unique_names(await request.body())  # as the route does

    @post(PATH, opt=PUBLIC, status_code=200, guards=json_body)
    async def exchange_body(request: Request[Any, Any, State], data: JSONBody[ExchangeRequest]) -> Answer:
        await checked(request)
        return {"token": data.token[:8]}

    async def verified(token: str, now: int) -> Any:
        return await services.keys.verified(lambda keyring: authority.own.impersonation(token, keyring, now))

    @post(PATH, opt=PUBLIC, status_code=200, guards=json_body)
    async def exchange_verify(request: Request[Any, Any, State], data: JSONBody[ExchangeRequest]) -> Answer:
        await checked(request)
        grant = await verified(data.token, int(time.time()))
        return {"token": grant.jti}

    async def spend(grant: Any, now: int) -> Any:
        claims = access_claims(
            grant,
            issuer=settings.public_issuer,
            audience=settings.session_audience,
            client_id=settings.session_client_id,
            jti=new_id(),
            sid=grant.jti,
            now=now,
            ttl=settings.session_ttl_s,
        )
        record = SessionRecord(sub=grant.sub, loc=grant.loc, act=grant.act, exp=claims.exp)
        summary = Summary(
            session_id=grant.jti,
            location=grant.loc,
            subject=grant.sub,
            actor=grant.act,
            started=now,
            ends=claims.exp,
        )
        opening = authority.trail.opening(summary, time.time())
        ttl = settings.session_ttl_s + settings.clock_skew_s
        await services.allowlist.consume(grant.jti, record, ttl, None, opening)
        return claims

    @post(PATH, opt=PUBLIC, status_code=200, guards=json_body)
    async def exchange_redis(request: Request[Any, Any, State], data: JSONBody[ExchangeRequest]) -> Answer:
        await checked(request)
        now = int(time.time())
        grant = await verified(data.token, now)
        await spend(grant, now)
        return {"token": grant.jti}

    @post(PATH, opt=PUBLIC, status_code=200, guards=json_body)
    async def exchange_sign(request: Request[Any, Any, State], data: JSONBody[ExchangeRequest]) -> Answer:
        await checked(request)
        now = int(time.time())
        grant = await verified(data.token, now)
        claims = await spend(grant, now)
        return {"token": sign(claims, authority._signer(now), ACCESS_TYP)}

    return {f.handler_name: f for f in (post_stack, exchange_body, exchange_verify, exchange_redis, exchange_sign)}


def _introspection_layers(services: Services) -> dict[str, BaseRouteHandler]:
    authority = services.authority
    form = [policy.body_of("application/x-www-form-urlencoded")]

    @post(PATH, status_code=200)
    async def introspect_authn(request: Request[Caller, None, State]) -> Answer:
        return {"sub": request.user.subject}

    @post(PATH, status_code=200, guards=form)
    async def introspect_body(
        request: Request[Caller, None, State], data: URLEncodedBody[IntrospectionRequest]
    ) -> Answer:
        return {"sub": request.user.subject, "token": data.token[:8]}

    @post(PATH, status_code=200, guards=form)
    async def introspect_verify(
        request: Request[Caller, None, State], data: URLEncodedBody[IntrospectionRequest]
    ) -> Answer:
        claims = await authority._verified_access(data.token, int(time.time()))
        return {"sub": request.user.subject, "sid": claims.sid}

    @post(PATH, status_code=200, guards=form)
    async def introspect_redis(
        request: Request[Caller, None, State], data: URLEncodedBody[IntrospectionRequest]
    ) -> Answer:
        claims = await authority._verified_access(data.token, int(time.time()))
        session = await services.allowlist.session(claims.sid)
        return {"sub": request.user.subject, "sid": claims.sid, "state": session.state if session else "none"}

    return {f.handler_name: f for f in (introspect_authn, introspect_body, introspect_verify, introspect_redis)}


BUILDERS: list[Callable[[Services], dict[str, BaseRouteHandler]]] = [
    _mint_layers,
    _exchange_layers,
    _introspection_layers,
]
LAYERS = frozenset(
    {
        "get_stack", "mint_authn", "mint_redis", "mint_sign", "mint_audit",
        "post_stack", "exchange_body", "exchange_verify", "exchange_redis", "exchange_sign",
        "introspect_authn", "introspect_body", "introspect_verify", "introspect_redis",
    }
)  # fmt: skip


def layer_app(name: str) -> Litestar:
    """The app of one layer: its one route, the service's request pipeline and lifespan, services from the same
    settings as the authority's."""
    settings = load()
    services = build(settings)
    handlers: dict[str, BaseRouteHandler] = {}
    for builder in BUILDERS:
        handlers |= builder(services)

    @get("/readyz", opt=PUBLIC, sync_to_thread=False)
    def ready() -> Answer:
        return {"status": "ready"}

    app = Litestar(
        route_handlers=[handlers[name], ready],
        lifespan=[lambda _: services.running()],
        openapi_config=None,
        **request_pipeline(settings, services),
    )
    freeze_startup()  # as the service's entry point does
    return app


def __getattr__(name: str) -> Litestar:
    """``granian bench.waterfall:mint_redis``: each worker builds only the layer it serves."""
    if name not in LAYERS:
        raise AttributeError(name)
    return layer_app(name)
