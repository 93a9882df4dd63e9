"""The service: mint a single-use impersonation token for an allowed caller; exchange it, once, for a session.

Routes stay thin and call this; this calls the pure rules (``callers``, ``tokens``) and the I/O (allowlist,
directory, keyring) in one obvious order.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import msgspec

from authority import audit
from authority.callers import Caller, require_member, require_staff
from authority.directory import Directory
from authority.keys import KeyManager, Keyring, LoadedKey
from authority.refusals import CoworkerNotFound, TokenNotIssued, TokenReplayed, Unavailable
from authority.replay import Allowlist, Outcome
from authority.settings import Settings
from authority.tokens import (
    ACCESS_TYP,
    IMPERSONATION_TYP,
    Actor,
    access_claims,
    impersonation_claims,
    sign,
    verify_impersonation,
)


class Session(msgspec.Struct, frozen=True):
    access_token: str
    expires_in: int
    session_id: str
    token_type: str = "Bearer"  # noqa: S105 - the OAuth token type, not a secret


def new_id() -> str:
    """128 random bits, base64url: unguessable ``jti`` and ``sid`` values."""
    return secrets.token_urlsafe(16)


class Authority:
    def __init__(
        self,
        settings: Settings,
        keys: KeyManager,
        allowlist: Allowlist,
        directory: Directory,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.allowlist = allowlist
        self.directory = directory
        self.clock = clock

    @property
    def keyring(self) -> Keyring:
        return self.keys.keyring

    def _signer(self) -> LoadedKey:
        signer = self.keyring.signer
        if signer is None:
            raise Unavailable("no active signing key")
        return signer

    async def mint_for_staff(self, caller: Caller, coworker_id: int) -> str:
        location = require_staff(caller)
        if not await self.directory.is_coworker(location, coworker_id):
            raise CoworkerNotFound(
                f"no coworker {coworker_id} in location {location}",
                actor=caller.subject,
                subject=str(coworker_id),
                location=location,
            )
        return await self._mint(caller, coworker_id, location, caller.role or "")

    async def mint_for_team_admin(self, caller: Caller, coworker_id: int) -> str:
        location, admin_id = require_member(caller)
        # One answer for "no such coworker" and "not in your teams": no existence oracle for team admins.
        if coworker_id == admin_id or not await self.directory.administers(location, admin_id, coworker_id):
            raise CoworkerNotFound(
                f"no coworker {coworker_id} in a team you administer",
                actor=caller.subject,
                subject=str(coworker_id),
                location=location,
            )
        return await self._mint(caller, coworker_id, location, "team-admin")

    async def _mint(self, caller: Caller, coworker_id: int, location: str, role: str) -> str:
        s = self.settings
        signer = self._signer()
        claims = impersonation_claims(
            issuer=s.public_issuer,
            audience=s.exchange_audience,
            coworker_id=coworker_id,
            location=location,
            actor=Actor(sub=caller.subject, role=role),
            jti=new_id(),
            now=int(self.clock()),
            ttl=s.impersonation_ttl_s,
        )
        token = sign(claims, signer, IMPERSONATION_TYP)
        await self.allowlist.issue(claims.jti, s.impersonation_ttl_s + s.clock_skew_s)
        audit.emit(
            "mint",
            "issued",
            actor=caller.subject,
            role=role,
            subject=claims.sub,
            location=location,
            jti=claims.jti,
            kid=signer.kid,
        )
        return token

    async def exchange(self, token: str) -> Session:
        s = self.settings
        now = int(self.clock())
        grant = verify_impersonation(
            token,
            self.keyring,
            issuer=s.public_issuer,
            audience=s.exchange_audience,
            now=now,
            leeway=s.clock_skew_s,
            max_life=s.impersonation_ttl_s,
        )
        signer = self._signer()
        sid = new_id()
        used = await self.allowlist.consume(grant.jti, sid)
        if used.outcome is Outcome.UNKNOWN:
            raise TokenNotIssued(
                "this token is not on the allowlist (never issued, expired, or lost)",
                actor=grant.act.sub,
                subject=grant.sub,
                jti=grant.jti,
            )
        if used.outcome is Outcome.REPLAYED:
            raise TokenReplayed(
                "this impersonation token was already exchanged",
                actor=grant.act.sub,
                subject=grant.sub,
                location=grant.loc,
                jti=grant.jti,
                sid=used.first_session,
            )
        claims = access_claims(
            grant,
            issuer=s.public_issuer,
            audience=s.session_audience,
            client_id=s.session_client_id,
            jti=new_id(),
            sid=sid,
            now=now,
            ttl=s.session_ttl_s,
        )
        audit.emit(
            "exchange",
            "session",
            actor=grant.act.sub,
            subject=grant.sub,
            location=grant.loc,
            jti=grant.jti,
            sid=sid,
            kid=signer.kid,
        )
        return Session(access_token=sign(claims, signer, ACCESS_TYP), expires_in=s.session_ttl_s, session_id=sid)
