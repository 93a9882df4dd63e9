"""What happened, and the Security Event Token (RFC 8417) that tells a receiver: pure, no I/O, the clock passed in.

An ``Event`` is the fact as the outbox keeps it, written with the state change it reports; a SET is made from it
at delivery, once per receiver (its ``aud``), and signed then, with the key that signs at that moment (see
``delivery``). Its ``jti`` is derived from the event and the receiver, so every retry and every redrive of one
event to one receiver carries the same ``jti``: receivers drop duplicates by it (RFC 8935 section 2).

Event types: the OpenID CAEP ``session-revoked`` where one exists (a staff member, or the impersonator, ended the
session early; or a replay did), and URNs of ours for the rest, constant across deployments (like our problem
types), so a receiver's code does not depend on our issuer URL.

The subject is a ``sub_id`` (RFC 9493): for a session, format ``complex`` as CAEP uses it, with the ``session``
(``opaque``: the session id), the ``user`` impersonated (``iss_sub``: our issuer and the coworker id, as in the
access token) and the ``tenant`` (``opaque``: the location); for a key, ``opaque``, its kid. No ``sub``: RFC 8417
section 2.2 keeps SETs from reading as ID tokens; no ``exp``: a SET is a statement of fact, not a credential.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any, Literal

import msgspec

SET_TYP = "secevent+jwt"  # RFC 8417 section 2.3, the JOSE header's typ; the body's media type is application/...
SESSION_STARTED = "urn:authority:secevent:session-started"
SESSION_ENDED = "urn:authority:secevent:session-ended"  # the session ended itself ("stop impersonating")
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"
TOKEN_REPLAYED = "urn:authority:secevent:token-replayed"  # noqa: S105 - an event type
KEY_RETIRED = "urn:authority:secevent:key-retired"  # an emergency retire (a key may have leaked)
EVENT_TYPES = (SESSION_STARTED, SESSION_ENDED, SESSION_REVOKED, TOKEN_REPLAYED, KEY_RETIRED)
# CAEP initiating_entity: who caused a revocation (staff or the impersonator: admin; a replay: policy).
Initiator = Literal["admin", "user", "policy", "system"]


class Impersonator(msgspec.Struct, frozen=True, omit_defaults=True):
    """Who was behind the session: the ``act`` of its tokens, without the step-up details."""

    sub: str
    role: str
    iss: str


class Event(msgspec.Struct, frozen=True, omit_defaults=True, forbid_unknown_fields=True):
    """One security event as the outbox keeps it: identifiers only, never a token."""

    uid: str  # 128 random bits: each SET's jti is derived from it
    type: str  # one of EVENT_TYPES
    at: int  # when it happened (the SET's toe and iat)
    session: str | None = None
    subject: str | None = None  # the coworker impersonated
    location: str | None = None
    actor: Impersonator | None = None
    reason: str | None = None
    ticket: str | None = None
    ends: int | None = None  # a started session's exp
    initiator: Initiator | None = None
    revoked: bool | None = None  # a replay: whether it revoked the session just now
    because: str | None = None  # a revocation: why, where its initiator does not say it
    kid: str | None = None  # a retired key
    txn: str | None = None  # the request id: the SETs of one request, and its audit entries, share it

    @property
    def ordering_key(self) -> str:
        """Events with one key reach a receiver in the order they were written: a session's, a key's."""
        return self.session or self.kid or ""


class SetClaims(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 8417 section 2.2: ``iss``, ``iat``, ``jti`` required; ``aud`` the receiver; exactly one event (the
    OpenID Shared Signals profile asks for one per SET); ``toe`` when it happened; ``txn`` ties related SETs."""

    iss: str
    iat: int
    jti: str
    aud: str
    toe: int
    sub_id: dict[str, Any]
    events: dict[str, dict[str, Any]]
    txn: str | None = None


def new_uid() -> str:
    return secrets.token_urlsafe(16)


def set_jti(event: Event, receiver: str) -> str:
    """One jti per (event, receiver): the same on every retry and redrive, unrelated between receivers."""
    digest = hashlib.sha256(f"{event.uid}\0{receiver}".encode()).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class About(msgspec.Struct, frozen=True):
    """What every event about one session says: which session, whose, where, who was behind it, when, and the
    request that made it happen."""

    session: str
    subject: str
    location: str
    actor: Impersonator
    at: int
    txn: str | None = None


def _session_event(kind: str, about: About, **details: Any) -> Event:
    return Event(
        uid=new_uid(), type=kind, at=about.at, session=about.session, subject=about.subject,
        location=about.location, actor=about.actor, txn=about.txn, **details,
    )  # fmt: skip


def session_started(about: About, *, ends: int, reason: str | None, ticket: str | None) -> Event:
    return _session_event(SESSION_STARTED, about, ends=ends, reason=reason, ticket=ticket)


def session_closed(
    about: About, *, how: Literal["ended", "revoked"], initiator: Initiator, because: str | None = None
) -> Event:
    """The session ended itself (ours), or was revoked (CAEP), by ``initiator``; ``because`` says why, where the
    initiator alone does not (CAEP's ``reason_admin``)."""
    kind = SESSION_ENDED if how == "ended" else SESSION_REVOKED
    return _session_event(kind, about, initiator=initiator, because=because)


def token_replayed(about: About, *, revoked: bool) -> Event:
    return _session_event(TOKEN_REPLAYED, about, revoked=revoked)


def key_retired(*, kid: str, at: int) -> Event:
    return Event(uid=new_uid(), type=KEY_RETIRED, at=at, kid=kid)


_REVOKED_BECAUSE = {"admin": "revoked by staff or its impersonator", "policy": "its impersonation token was replayed"}
# A revocation by policy of a session whose exchange too few replicas confirmed: its client got a 503, no token.
UNCONFIRMED = "its exchange was not confirmed by Redis replicas in time: no access token was handed out"


def _body(event: Event, jwks_uri: str) -> dict[str, Any]:
    """The event's own claims: CAEP's for session-revoked; ours keep CAEP's ``event_timestamp`` name too."""
    body: dict[str, Any] = {"event_timestamp": event.at}
    if event.type == SESSION_REVOKED:
        initiator = event.initiator or "system"
        body["initiating_entity"] = initiator
        body["reason_admin"] = {"en": event.because or _REVOKED_BECAUSE.get(initiator, "revoked")}
        return body
    if event.actor is not None:
        body["act"] = msgspec.to_builtins(event.actor)
    if event.type == SESSION_STARTED:
        body["expires_at"] = event.ends
    if event.type == TOKEN_REPLAYED:
        body["session_revoked"] = bool(event.revoked)
    if event.type == KEY_RETIRED:
        body |= {"kid": event.kid, "jwks_uri": jwks_uri}
    body |= {name: value for name, value in (("reason", event.reason), ("ticket", event.ticket)) if value}
    return body


def subject_of(event: Event, issuer: str) -> dict[str, Any]:
    """RFC 9493 ``sub_id``: a session as CAEP names one (``complex``), or a key (``opaque``)."""
    if event.session is None:
        return {"format": "opaque", "id": event.kid or ""}
    subject: dict[str, Any] = {"format": "complex", "session": {"format": "opaque", "id": event.session}}
    if event.subject is not None:
        subject["user"] = {"format": "iss_sub", "iss": issuer, "sub": event.subject}
    if event.location is not None:
        subject["tenant"] = {"format": "opaque", "id": event.location}
    return subject


def set_claims(event: Event, *, issuer: str, audience: str, receiver: str, jwks_uri: str) -> SetClaims:
    """The SET telling ``receiver`` (whose ``aud`` is ``audience``) about ``event``. ``iat`` is the event's own
    time, not the signing time: a retry re-signs the same statement, it does not issue a new one."""
    return SetClaims(
        iss=issuer,
        iat=event.at,
        jti=set_jti(event, receiver),
        aud=audience,
        toe=event.at,
        sub_id=subject_of(event, issuer),
        events={event.type: _body(event, jwks_uri)},
        txn=event.txn,
    )
