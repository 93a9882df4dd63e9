"""The service: mint a single-use impersonation token for an allowed caller; exchange it, once, for a session;
revoke and introspect sessions.

Routes stay thin and call this; this calls the pure rules (``callers``, ``tokens``) and the I/O (allowlist,
limiter, directory, keys, audit) in one obvious order.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Literal, NoReturn

import msgspec

from authority.audit import REQUEST_ID, AuditLog
from authority.authn import Caller
from authority.connection import shown
from authority.directory import CoworkerEntry, Directory, LocationEntry
from authority.dpop import DpopGate
from authority.events.outbox import Outbox, Records
from authority.events.set import (
    UNCONFIRMED,
    About,
    Impersonator,
    session_closed,
    session_started,
    token_replayed,
)
from authority.keys import KeyManager, Keyring, LoadedKey
from authority.limits import MintLimiter
from authority.policy import (
    RULES,
    Rule,
    broken_rule,
    may_revoke,
    require_customer,
    require_justification,
    require_member,
    require_staff,
    require_step_up,
    require_unimpersonated,
    staff_refusal,
    team_admin_refusal,
)
from authority.refusals import (
    ImpersonationWithdrawn,
    InvalidDpopProof,
    InvalidRequest,
    InvalidToken,
    Refusal,
    SessionNotFound,
    TokenNotIssued,
    TokenReplayed,
    Unavailable,
)
from authority.remembered import Remembered
from authority.replay import (
    ON_CONSUME,
    ON_ISSUE,
    ON_NO_SESSION,
    ON_REPLAY,
    ON_REPLAY_REVOKING,
    ON_REVOKE,
    ON_REVOKED_ALREADY,
    UNAVAILABLE,
    Allowlist,
    Outcome,
    SessionRecord,
    SpentUnconfirmed,
)
from authority.sessions import Entry, Page, SessionTrail, Summary
from authority.settings import Settings
from authority.tokens import (
    ACCESS_TYP,
    IMPERSONATION_TYP,
    AccessClaims,
    Actor,
    Confirmation,
    ImpersonationClaims,
    Justification,
    OwnTokens,
    access_claims,
    impersonation_claims,
    read_header,
    sign,
)


class SessionGrant(msgspec.Struct, frozen=True):
    """The exchange's answer: an impersonated session's access token."""

    access_token: Annotated[
        str,
        msgspec.Meta(description="an at+jwt (RFC 9068) whose act claim names the impersonator", examples=["eyJ..."]),
    ]
    expires_in: Annotated[int, msgspec.Meta(description="seconds", examples=[900])]
    session_id: Annotated[
        str, msgspec.Meta(description="for revocation; the sid claim", examples=["6XQDMFCnRYRSlb3gw9lUWw"])
    ]
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


class Introspection(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 7662 section 2.2: ``active``; for an active token also its claims (RFC 9068) and ``token_type``. An
    inactive token gets ``active`` alone: nothing about a token we do not vouch for."""

    active: bool
    token_type: str | None = None
    iss: str | None = None
    aud: str | None = None
    sub: str | None = None
    client_id: str | None = None
    jti: str | None = None
    sid: str | None = None
    iat: int | None = None
    nbf: int | None = None
    exp: int | None = None
    loc: str | None = None
    act: Actor | None = None
    reason: str | None = None
    ticket: str | None = None
    cnf: Confirmation | None = None


class SessionEnd(msgspec.Struct, frozen=True):
    """``POST /api/sys/sessions/current/end``: the session is over (now, or it was already)."""

    session_id: str
    ended: bool = True


class BulkRevocation(msgspec.Struct, frozen=True):
    """How many live sessions a bulk revocation ended."""

    revoked: int


class Revocation(msgspec.Struct, frozen=True):
    session_id: str
    revoked: bool = True


logger = logging.getLogger("authority")
NO_REASON = Justification()
INTROSPECTED_MAX = 10_000  # access tokens whose verification introspection remembers, per process


def new_id() -> str:
    """128 random bits, base64url: unguessable ``jti`` values."""
    return secrets.token_urlsafe(16)


@dataclass
class Authority:
    settings: Settings
    keys: KeyManager
    allowlist: Allowlist
    limiter: MintLimiter
    directory: Directory
    audit: AuditLog
    trail: SessionTrail
    dpop: DpopGate
    clock: Callable[[], float] = time.time
    outbox: Outbox = field(kw_only=True)  # the audit entries and security events of each state change
    own: OwnTokens = field(init=False)

    def __post_init__(self) -> None:
        self.own = OwnTokens.of(self.settings)
        self._issuers = {i.issuer: i for i in self.settings.trusted_issuers}
        self._introspected: Remembered[tuple[AccessClaims, str]] = Remembered(INTROSPECTED_MAX)

    @property
    def keyring(self) -> Keyring:
        return self.keys.keyring

    def _signer(self, now: int) -> LoadedKey:
        signer = self.keyring.signer_at(now)
        if signer is None:
            raise Unavailable(self.no_signer())
        return signer

    def no_signer(self) -> str:
        """Why nothing signs: a process that never read its key records says where it could not read them."""
        if self.keys.refreshed_at is None:
            return f"no active signing key: the key records ({self.keys.store}) have not been read; is Redis at " + (
                f"{shown(self.settings.redis_url)} reachable?"
            )
        return "no active signing key"

    async def mint_for_staff(
        self, caller: Caller, coworker_id: int, why: Justification = NO_REASON, *, jkt: str | None = None
    ) -> str:
        location = require_staff(caller)
        self._require_step_up(caller)
        place, target = await self._look_up(location, coworker_id)
        if rule := broken_rule(place, target):
            await self._refuse(caller, coworker_id, location, staff_refusal(rule, coworker_id, location))
        require_justification(why, kind="staff", settings=self.settings, place=place)
        return await self._mint(caller, coworker_id, location, caller.role or "", why, jkt=jkt)

    async def mint_for_team_admin(
        self, caller: Caller, coworker_id: int, why: Justification = NO_REASON, *, jkt: str | None = None
    ) -> str:
        location, admin_id = require_member(caller)
        self._require_step_up(caller)
        place, target = await self._look_up(location, coworker_id)
        admin = await self.directory.coworker(location, admin_id) if place and target else None
        if rule := broken_rule(place, target, admin_id=admin_id, admin=admin):
            await self._refuse(caller, coworker_id, location, team_admin_refusal(rule, coworker_id, location))
        require_justification(why, kind="team-admin", settings=self.settings, place=place)
        return await self._mint(caller, coworker_id, location, "team-admin", why, admin_id=admin_id, jkt=jkt)

    async def proven_key(self, proofs: Sequence[str], *, method: str, path: str) -> str | None:
        """The DPoP key a request proves it holds (its thumbprint), or None; a proof's jti is spent here."""
        return await self.dpop.bind(list(proofs), method=method, path=path, now=int(self.clock()))

    def _require_step_up(self, caller: Caller) -> None:
        require_step_up(caller, self._issuers[caller.issuer], int(self.clock()))

    async def _look_up(
        self, location: str, coworker_id: int, *, fresh: bool = False
    ) -> tuple[LocationEntry | None, CoworkerEntry | None]:
        """The location, and the coworker in it unless the location is unknown or switched off."""
        place = await self.directory.location(location, fresh=fresh)
        target = (
            await self.directory.coworker(location, coworker_id, fresh=fresh) if place and place.impersonation else None
        )
        return place, target

    async def _refuse(self, caller: Caller, coworker_id: int, location: str, refusal: Refusal) -> NoReturn:
        """Refuse after counting the attempt against the rate limits: probing for ids is slowed like minting."""
        await self.limiter.check(caller.issuer, caller.subject, location)
        refusal.audit.update(actor=caller.subject, subject=str(coworker_id), location=location)
        raise refusal

    async def _mint(
        self,
        caller: Caller,
        coworker_id: int,
        location: str,
        role: str,
        why: Justification,
        *,
        admin_id: int | None = None,
        jkt: str | None = None,
    ) -> str:
        s = self.settings
        capped = self._issuers[caller.issuer].cap_session_to_bearer
        now = int(self.clock())
        signer = self._signer(now)
        claims = impersonation_claims(
            issuer=s.public_issuer,
            audience=s.exchange_audience,
            coworker_id=coworker_id,
            location=location,
            actor=Actor(
                sub=caller.subject,
                role=role,
                iss=caller.issuer,
                coworker_id=admin_id,
                auth_time=caller.auth_time,
                acr=caller.acr,
                amr=caller.amr,
            ),
            jti=new_id(),
            now=now,
            ttl=s.impersonation_ttl_s,
            why=why,
            actor_exp=caller.expires_at if capped else None,
            jkt=jkt,
        )
        token = sign(claims, signer, IMPERSONATION_TYP)
        minted = self.audit.entry(
            "mint",
            "issued",
            actor=caller.subject,
            role=role,
            subject=claims.sub,
            location=location,
            jti=claims.jti,
            kid=signer.kid,
            why=why.reason,
            ticket=why.ticket,
        )
        await self.allowlist.issue(
            claims.jti,
            s.impersonation_ttl_s + s.clock_skew_s,
            limiter=self.limiter,
            issuer=caller.issuer,
            actor=caller.subject,
            location=location,
            records=self.outbox.records().on(ON_ISSUE, minted),
        )
        return token

    async def exchange(
        self, token: str, *, proofs: Sequence[str] = (), path: str = "", bound: str | None = None
    ) -> SessionGrant:
        """Verify, then consume the jti atomically. A replay is refused and revokes the session the first use
        opened (the refresh-token reuse rule): whoever holds a leaked token cannot keep a session alive with it.

        The one redemption of the seed's exchange and of the token endpoint. DPoP: ``proofs`` (the request's
        ``DPoP`` headers, for ``path``) bind the session to their key, or ``bound``, a key this request already
        proved; a token minted bound (``cnf``) is redeemed only with a proof by that key."""
        s = self.settings
        now = int(self.clock())
        grant = await self.keys.verified(lambda keyring: self.own.impersonation(token, keyring, now))
        signer = self._signer(now)
        expected = grant.cnf.jkt if grant.cnf else None
        if bound is None:
            jkt = await self.dpop.bind(list(proofs), method="POST", path=path, now=now, expected_jkt=expected)
        elif expected not in (None, bound):
            raise InvalidDpopProof("the DPoP key is not the one the token was minted for")
        else:
            jkt = bound
        # Asked before anything is spent: a directory that cannot answer (503) spends nothing.
        withdrawn: Rule | None = "actor-signed-out" if grant.actor_exp is not None and grant.actor_exp <= now else None
        withdrawn = withdrawn or await self._still_allowed(grant)
        sid = grant.jti  # one key per impersonation: the allowlist entry becomes the session record
        claims = access_claims(
            grant,
            issuer=s.public_issuer,
            audience=s.session_audience,
            client_id=s.session_client_id,
            jti=new_id(),
            sid=sid,
            now=now,
            ttl=s.session_ttl_s,
            jkt=jkt,
        )
        record = SessionRecord(
            sub=grant.sub, loc=grant.loc, act=grant.act, exp=claims.exp, reason=grant.reason, ticket=grant.ticket
        )
        who = {"actor": grant.act.sub, "subject": grant.sub, "location": grant.loc, "jti": grant.jti}
        who |= {name: value for name, value in (("why", grant.reason), ("ticket", grant.ticket)) if value}
        records = self._exchange_records(grant, who, kid=signer.kid, ends=claims.exp, now=now, opened=not withdrawn)
        summary = Summary(
            session_id=sid,
            location=grant.loc,
            subject=grant.sub,
            actor=grant.act,
            started=now,
            ends=claims.exp,
            reason=grant.reason,
            ticket=grant.ticket,
        )
        # On the trail with the session (one server) or before the answer (Cluster): a bulk revocation asked after
        # this exchange succeeded always finds it.
        opening = None if withdrawn else self.trail.opening(summary, self.clock())
        try:
            used = await self.allowlist.consume(grant.jti, record, s.session_ttl_s + s.clock_skew_s, records, opening)
        except SpentUnconfirmed:
            await self._close_unconfirmed(grant, who, now, announce=not withdrawn)
            raise
        if withdrawn and used.outcome is Outcome.CONSUMED:  # spent, and the session it would have opened is closed
            await self.allowlist.revoke(sid)
            raise ImpersonationWithdrawn(
                f"the impersonation is no longer allowed: {RULES[withdrawn]}; the token is spent",
                audit={**who, "rule": withdrawn},
            )
        if used.outcome is Outcome.UNKNOWN:
            raise TokenNotIssued("this token is not on the allowlist (never issued, expired, or lost)", audit=who)
        if used.outcome is Outcome.REPLAYED:
            raise _replayed(who, sid, revoked_now=used.revoked_now)
        return SessionGrant(
            access_token=sign(claims, signer, ACCESS_TYP),
            expires_in=claims.exp - now,
            session_id=sid,
            token_type="DPoP" if jkt else "Bearer",
        )

    async def _still_allowed(self, grant: ImpersonationClaims) -> Rule | None:
        """The policy asked again at redemption, on the directory as it is now: the rule the impersonation now
        breaks, or None. A team admin's token names the admin's coworker id, so their team is checked again too.
        Fresh answers, never the cache the mint filled: the exchange is the last chance to refuse."""
        try:
            coworker_id = int(grant.sub)
        except ValueError:
            return "coworker-unknown"
        place, target = await self._look_up(grant.loc, coworker_id, fresh=True)
        admin_id = grant.act.coworker_id if grant.act.role == "team-admin" else None
        if admin_id is None:
            return broken_rule(place, target)
        admin = await self.directory.coworker(grant.loc, admin_id, fresh=True) if place and target else None
        return broken_rule(place, target, admin_id=admin_id, admin=admin)

    async def _close_unconfirmed(
        self, grant: ImpersonationClaims, who: dict[str, str], now: int, *, announce: bool
    ) -> None:
        """A session opened in Redis whose exchange was not confirmed by replicas, so nobody received its access
        token: revoked at once, audited, and (``announce``: its start was) announced as a CAEP session-revoked by
        policy, so a receiver never believes in a session nobody holds. Best effort, on a Redis that just failed
        to confirm: whatever goes wrong here is logged, and the caller's 503 is what the client gets."""
        sid = grant.jti
        about = self._about(grant.jti, grant.sub, grant.loc, grant.act, now)
        closed = session_closed(about, how="revoked", initiator="policy", because=UNCONFIRMED)
        revoked = self.audit.entry("revocation", "unconfirmed", sid=sid, **who)
        records = self.outbox.records().on(ON_REVOKE, revoked, *((closed,) if announce else ()))
        steps: tuple[Callable[[], Awaitable[bool]], ...] = (
            lambda: self.allowlist.revoke(sid, records),
            lambda: self.trail.end(sid, "revoked", now),
        )
        for step in steps:  # each on its own: the revocation's own confirmation failing must not skip the trail
            try:
                await step()
            except UNAVAILABLE as exc:
                logger.warning("session %s, whose exchange was not confirmed: not closed yet: %s", sid, exc)

    @staticmethod
    def _about(sid: str, subject: str, location: str, act: Actor, now: int) -> About:
        """What every event of session ``sid`` says about it, now, in this request."""
        actor = Impersonator(sub=act.sub, role=act.role, iss=act.iss)
        return About(session=sid, subject=subject, location=location, actor=actor, at=now, txn=REQUEST_ID.get())

    def _exchange_records(
        self, grant: ImpersonationClaims, who: dict[str, str], *, kid: str, ends: int, now: int, opened: bool
    ) -> Records:
        """What an exchange writes with its outcome: the session started (unless the policy withdrew it: that
        refusal is audited as refusals are), or a replay, which revokes the session it finds open."""
        sid, about = grant.jti, self._about(grant.jti, grant.sub, grant.loc, grant.act, now)
        records = self.outbox.records()
        if opened:
            started = session_started(about, ends=ends, reason=grant.reason, ticket=grant.ticket)
            records.on(ON_CONSUME, self.audit.entry("exchange", "session", sid=sid, kid=kid, **who), started)
        for revoking, outcome in ((True, ON_REPLAY_REVOKING), (False, ON_REPLAY)):
            refusal = _replayed(who, sid, revoked_now=revoking)
            refused = self.audit.refusal(refusal, method="POST", path=None, request_id=about.txn)
            replay = token_replayed(about, revoked=revoking)
            revoked = session_closed(about, how="revoked", initiator="policy")
            records.on(outcome, refused, *((replay, revoked) if revoking else (replay,)))
        return records

    async def revoke(self, caller: Caller, sid: str) -> Revocation:
        """Staff of the session's location, or the impersonator themself, may end a session early. Anyone else
        is told there is no such session, so revocation is no oracle either."""
        require_unimpersonated(caller)
        session = await self.allowlist.session(sid)
        allowed = session is not None and may_revoke(
            caller,
            location=session.record.loc,
            actor_issuer=session.record.act.iss,
            actor_subject=session.record.act.sub,
        )
        if session is None or not allowed:
            raise SessionNotFound(f"no session {sid} you may revoke", audit={"actor": caller.subject, "sid": sid})
        await self._end(session.record, sid, "revoked", caller)
        return Revocation(session_id=sid)

    async def _end(self, record: SessionRecord, sid: str, how: Literal["ended", "revoked"], caller: Caller) -> bool:
        """Revoke the session and mark its trail; audited, and announced if it was live. False if it had ended
        already."""
        now = int(self.clock())
        audited = self.audit.entry(
            "revocation",
            how,
            actor=caller.subject,
            role=caller.role,
            subject=record.sub,
            location=record.loc,
            sid=sid,
            why=record.reason,
            ticket=record.ticket,
        )
        about = self._about(sid, record.sub, record.loc, record.act, now)
        closed = session_closed(about, how=how, initiator="user" if how == "ended" else "admin")
        records = self.outbox.records().on(ON_REVOKE, audited, closed)
        ended = await self.allowlist.revoke(sid, records.on(ON_REVOKED_ALREADY, audited).on(ON_NO_SESSION, audited))
        first = await self.trail.end(sid, how, now)
        return ended and first

    async def end_current(self, caller: Caller) -> SessionEnd:
        """The impersonated session ends itself ("stop impersonating"); ending an ended session is not an error."""
        sid = caller.session_id
        session = await self.allowlist.session(sid) if sid else None
        if sid is None or session is None:
            raise SessionNotFound("this session is not on record (expired or lost)", audit={"sid": sid or ""})
        if session.state == "active":
            await self._end(session.record, sid, "ended", caller)
        return SessionEnd(session_id=sid)

    async def revoke_all(self, caller: Caller, *, actor: str | None, subject: str | None) -> BulkRevocation:
        """Every live session of an actor, or of a customer, in the caller's location. A session whose exchange
        answered before this was asked is on the trail already (the exchange writes it before answering)."""
        location = require_staff(caller)
        now = int(self.clock())
        index = (
            self.trail.actor_index(location, actor)
            if actor is not None
            else self.trail.customer_index(location, subject or "")
        )
        revoked = 0
        for sid in await self.trail.live(index, since=now - self.settings.session_ttl_s - self.settings.clock_skew_s):
            session = await self.allowlist.session(sid)
            if session is not None and session.state == "active" and session.record.loc == location:
                revoked += await self._end(session.record, sid, "revoked", caller)
        return BulkRevocation(revoked=revoked)

    async def list_sessions(
        self,
        caller: Caller,
        *,
        actor: str | None,
        subject: str | None,
        state: str | None,
        cursor: str | None,
        limit: int,
    ) -> Page:
        """The location's sessions, newest first, filtered by actor, customer and state."""
        location = require_staff(caller)
        if actor is not None:
            index = self.trail.actor_index(location, actor)
        elif subject is not None:
            index = self.trail.customer_index(location, subject)
        else:
            index = self.trail.location_index(location)

        def keep(entry: Entry) -> bool:
            return (subject is None or entry.subject == subject) and (state is None or entry.state == state)

        filtered = (subject is not None and actor is not None) or state is not None
        return await self._page(index, cursor, limit, keep if filtered else None)

    async def my_impersonations(self, caller: Caller, *, cursor: str | None, limit: int) -> Page:
        """Who impersonated this customer, when, why and how it ended, newest first."""
        location, coworker_id = require_customer(caller)
        return await self._page(self.trail.customer_index(location, str(coworker_id)), cursor, limit, None)

    async def _page(self, index: str, cursor: str | None, limit: int, keep: Callable[[Entry], bool] | None) -> Page:
        try:
            return await self.trail.page(index, cursor=cursor, limit=limit, now=int(self.clock()), keep=keep)
        except ValueError as exc:
            raise InvalidRequest(f"cursor: {exc}") from None

    async def _verified_access(self, token: str, now: int) -> AccessClaims:
        """An access token of ours, its signature checked once per process: resource servers introspect the same
        token on every request of a session. Remembered by the exact string until its ``exp``, and only while the
        key that signed it still verifies (an emergency retire counts at once)."""
        leeway = self.settings.clock_skew_s
        remembered = self._introspected.get(token, now - leeway)
        if remembered is not None and self.keyring.verifier(remembered[1], now, leeway) is not None:
            return remembered[0]
        claims = await self.keys.verified(lambda keyring: self.own.access(token, keyring, now))
        self._introspected.put(token, (claims, read_header(token)["kid"]), claims.exp)
        return claims

    async def introspect(self, caller: Caller, token: str) -> Introspection:
        """RFC 7662: active only for a valid access token of ours whose session is on record and not revoked."""
        require_unimpersonated(caller)
        now = int(self.clock())
        try:
            claims = await self._verified_access(token, now)
        except InvalidToken as exc:
            self.audit.emit("introspection", "inactive", actor=caller.subject, reason=exc.code)
            return Introspection(active=False)
        session = await self.allowlist.session(claims.sid)
        active = session is not None and session.state == "active"
        self.audit.emit(
            "introspection",
            "active" if active else "inactive",
            actor=caller.subject,
            sid=claims.sid,
            reason=None if active else (session.state if session else "no-session"),
            why=claims.reason,  # the session's reason and ticket, as in its every audit event
            ticket=claims.ticket,
        )
        if not active:
            return Introspection(active=False)
        token_type = "DPoP" if claims.cnf else "Bearer"  # RFC 9449 section 6.2: the scheme to present it with
        return Introspection(active=True, token_type=token_type, **msgspec.structs.asdict(claims))


def _replayed(who: dict[str, str], sid: str, *, revoked_now: bool) -> TokenReplayed:
    """The refusal of a replay; audited with the revocation it makes (``recorded``), not by the refusal hook."""
    return TokenReplayed(
        "this impersonation token was already exchanged; its session is revoked",
        audit={**who, "sid": sid, "revoked": "now" if revoked_now else "already"},
        recorded=True,
    )
