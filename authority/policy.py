"""Who may do what: pure rules over a verified ``Caller``, and the Litestar guards that put them on the routes, so
the route table shows the policy. Checks that need data (the directory, a session's record) stay in the service
and call the rules here."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from authority.authn import Caller
from authority.directory import CoworkerEntry, LocationEntry
from authority.refusals import (
    CoworkerNotFound,
    CustomerSession,
    Forbidden,
    ImpersonationDisabled,
    InsufficientUserAuthentication,
    InvalidRequest,
    NestedImpersonation,
    NotImpersonable,
    Refusal,
    TargetIsStaff,
    UnsupportedMediaType,
)
from authority.settings import Settings, TrustedIssuer
from authority.tokens import Justification

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


# The rules a target of impersonation must meet, by name (the audit's ``rule``), in the order they are asked.
Rule = Literal[
    "location-unknown",
    "impersonation-disabled",
    "coworker-unknown",
    "self",
    "admin-unknown",
    "not-administered",
    "coworker-is-staff",
    "coworker-not-impersonable",
    "actor-signed-out",
]
RULES: dict[Rule, str] = {
    "location-unknown": "the location is not in the directory",
    "impersonation-disabled": "impersonation is switched off in the location",
    "coworker-unknown": "the coworker is not in the location",
    "self": "a team admin cannot impersonate themself",
    "admin-unknown": "the team admin is not in the location",
    "not-administered": "the coworker is not a member of a team the team admin administers",
    "coworker-is-staff": "the coworker is staff, and staff are never impersonated",
    "coworker-not-impersonable": "the coworker is marked not impersonable",
    "actor-signed-out": "the impersonator's own sign-in has expired",
}


def broken_rule(
    place: LocationEntry | None,
    target: CoworkerEntry | None,
    *,
    admin_id: int | None = None,
    admin: CoworkerEntry | None = None,
) -> Rule | None:
    """The first rule impersonating ``target`` in ``place`` breaks, or None: for staff (their location is their
    token's), or, given ``admin_id``, for that team admin. The same rules at mint and again at exchange."""
    if place is None:
        return "location-unknown"
    if not place.impersonation:
        return "impersonation-disabled"
    if target is None:
        return "coworker-unknown"
    if admin_id is not None:
        if target.id == admin_id:
            return "self"
        if admin is None:
            return "admin-unknown"
        if not admin.administers(target):  # also refuses another admin of the team: they are not its member
            return "not-administered"
    if target.staff:
        return "coworker-is-staff"
    if not target.impersonable:
        return "coworker-not-impersonable"
    return None


def staff_refusal(rule: Rule, coworker_id: int, location: str) -> Refusal:
    """What staff are told: they may know who exists in their own location, so each rule says its name."""
    if rule in ("location-unknown", "coworker-unknown"):
        return CoworkerNotFound(f"no coworker {coworker_id} in location {location}", audit={"rule": rule})
    refusal = {"impersonation-disabled": ImpersonationDisabled, "coworker-is-staff": TargetIsStaff}.get(
        rule, NotImpersonable
    )
    return refusal(f"{RULES[rule]} (coworker {coworker_id}, location {location})", audit={"rule": rule})


def team_admin_refusal(rule: Rule, coworker_id: int, location: str) -> Refusal:
    """What a team admin is told: one 404 for every rule that would say whether the coworker exists (the audit
    keeps the rule); a location switched off says so, which reveals nothing about anyone."""
    if rule == "impersonation-disabled":
        return ImpersonationDisabled(f"{RULES[rule]} {location}", audit={"rule": rule})
    return CoworkerNotFound(f"no coworker {coworker_id} in a team you administer", audit={"rule": rule})


def require_step_up(caller: Caller, issuer: TrustedIssuer, now: int) -> None:
    """RFC 9470: the issuer's optional requirements on the impersonator's own sign-in — an ``auth_time`` no older
    than ``max_auth_age_s``, an ``acr`` among ``acr_values``, an ``amr`` holding one of ``amr_values``."""
    max_age = issuer.max_auth_age_s
    acr_values = tuple(issuer.acr_values)
    if max_age is not None and (caller.auth_time is None or now - caller.auth_time > max_age):
        said = "no auth_time" if caller.auth_time is None else f"signed in {now - caller.auth_time} s ago"
        raise InsufficientUserAuthentication(
            f"impersonating needs a sign-in within {max_age} s ({said})", max_age=max_age, acr_values=acr_values
        )
    if acr_values and caller.acr not in acr_values:
        raise InsufficientUserAuthentication(
            f"impersonating needs acr {' or '.join(acr_values)}", max_age=max_age, acr_values=acr_values
        )
    if issuer.amr_values and not set(issuer.amr_values) & set(caller.amr):
        raise InsufficientUserAuthentication(
            f"impersonating needs a sign-in by {' or '.join(issuer.amr_values)} (amr)",
            max_age=max_age,
            acr_values=acr_values,
        )


TICKET = re.compile(r"[A-Za-z0-9._:#/-]{1,64}")
REASON_MAX = 200


def justification(reason: str | None, ticket: str | None) -> Justification:
    """A reason (1 to 200 printable characters: no control, format or line-breaking characters) and a ticket
    (1 to 64 of ``A-Za-z0-9._:#/-``), each optional here; ``require_justification`` says when one is required."""
    if reason is not None and not (0 < len(reason) <= REASON_MAX and reason.isprintable() and reason.strip()):
        raise InvalidRequest(f"reason must be 1 to {REASON_MAX} printable characters, not only spaces")
    if ticket is not None and not TICKET.fullmatch(ticket):
        raise InvalidRequest("ticket must be 1 to 64 of the characters A-Z a-z 0-9 . _ : # / -")
    return Justification(reason=reason, ticket=ticket)


def require_justification(
    why: Justification, *, kind: Literal["staff", "team-admin"], settings: Settings, place: LocationEntry | None
) -> None:
    """A reason or a ticket required of this kind of impersonator by the settings, or of everyone by the location."""
    if why.reason is None and (kind in settings.require_reason or (place is not None and place.require_reason)):
        raise InvalidRequest("a reason is required: say why, in the reason query parameter")
    if why.ticket is None and (kind in settings.require_ticket or (place is not None and place.require_ticket)):
        raise InvalidRequest("a ticket is required: give its reference in the ticket query parameter")


def require_customer(caller: Caller) -> tuple[str, int]:
    """The customer reading their own trail: signed in as themself (an impersonated session may not read it: the
    trail is the customer's check on impersonators, not theirs to read), with a location and coworker id."""
    require_unimpersonated(caller)
    if caller.role != CUSTOMER_ROLE or not caller.location or caller.coworker_id is None:
        raise Forbidden("only the customer, signed in as themself, may read who impersonated them")
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


async def own_session(connection: ASGIConnection[Any, Caller, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: an impersonated session of ours, acting on itself (the portal's "stop impersonating" button)."""
    if not connection.user.impersonated or connection.user.session_id is None:
        raise Forbidden("only an impersonated session may end itself")


async def customer(connection: ASGIConnection[Any, Caller, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: a customer signed in as themself."""
    require_customer(connection.user)


async def unimpersonated(connection: ASGIConnection[Any, Caller, Any, Any], _: BaseRouteHandler) -> None:
    """Guard: anyone authenticated, except an impersonated session."""
    require_unimpersonated(connection.user)
