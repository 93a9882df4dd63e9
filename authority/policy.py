"""Who may do what: pure rules over a verified ``Caller``, and the Litestar guards that put them on the routes, so
the route table shows the policy. Checks that need data (the directory, a session's record) stay in the service
and call the rules here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from authority.authn import Caller
from authority.refusals import CustomerSession, Forbidden, InvalidRequest, NestedImpersonation, UnsupportedMediaType

STAFF_ROLES = frozenset({"admin", "operator"})
CUSTOMER_ROLE = "customer"


def require_unimpersonated(caller: Caller) -> None:
    if caller.impersonated:
        raise NestedImpersonation("an impersonated session cannot impersonate, revoke or introspect")


def require_staff(caller: Caller) -> str:
    """The location an admin or operator may impersonate in; customers get 401, as the portal documents."""
    require_unimpersonated(caller)
    if caller.role == CUSTOMER_ROLE:
        raise CustomerSession("customer sessions cannot use the staff impersonation endpoint")
    if caller.role not in STAFF_ROLES:
        raise Forbidden("admin or operator role required")
    if not caller.location or not caller.subject:
        raise Forbidden("the caller's token names no location or subject")
    return caller.location


def require_member(caller: Caller) -> tuple[str, int]:
    """Location and coworker id of a customer who may act as a team admin (the directory decides the rest)."""
    require_unimpersonated(caller)
    if caller.role != CUSTOMER_ROLE:
        raise Forbidden("team-admin impersonation is for members; staff use /api/sys/users/impersonate")
    if not caller.location or caller.coworker_id is None:
        raise Forbidden("the caller's token names no location or coworker id")
    return caller.location, caller.coworker_id


def may_revoke(caller: Caller, *, location: str, actor_issuer: str, actor_subject: str) -> bool:
    """Staff of the session's location, or the impersonator themself (in that location), may end a session."""
    in_location = caller.location == location
    return in_location and (
        caller.role in STAFF_ROLES or (caller.issuer, caller.subject) == (actor_issuer, actor_subject)
    )


# Guards are coroutines: Litestar runs a plain function guard in a worker thread (anyio.to_thread), which cost a
# mint about 170 us in-process (550 -> 370 us measured with the ASGI app called directly).
async def staff(connection: ASGIConnection[Any, Caller, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: an admin or operator of a location, signed in as themself."""
    require_staff(connection.user)


async def member(connection: ASGIConnection[Any, Caller, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a customer (whether they administer the team is the directory's to say)."""
    require_member(connection.user)


def body_of(media_type: str) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """Guard: the request's body is of ``media_type`` and not empty, said before the body is parsed, so a form sent
    to a JSON route gets 415 rather than a parser's complaint about its bytes."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        given = connection.headers.get("content-type", "").partition(";")[0].strip().lower()
        if given != media_type:
            raise UnsupportedMediaType(f"send the body as {media_type}" + (f", not {given}" if given else ""))
        if connection.headers.get("content-length") == "0":
            raise InvalidRequest(f"the body is empty: send the token as {media_type}")

    return guard


async def unimpersonated(connection: ASGIConnection[Any, Caller, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: anyone authenticated, except an impersonated session."""
    require_unimpersonated(connection.user)
