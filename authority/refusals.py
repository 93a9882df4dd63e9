"""Every way the authority says no, one class each, with a stable code and title: the one registry of them.

Clients and the audit log tell refusals apart by ``code`` (the problem-details ``type`` is built from it), so a
replayed token never looks like an expired one. Framework errors (an unknown path, a wrong method, a body too
large) are refusals too, by status (``BY_STATUS``). This module is pure: the HTTP mapping lives in ``problems``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class Refusal(Exception):
    status: ClassVar[int] = 400
    code: ClassVar[str] = "invalid-request"
    title: ClassVar[str] = "The request is malformed"

    def __init__(
        self,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        audit: Mapping[str, str] | None = None,
        recorded: bool = False,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.audit = dict(audit or {})  # identifiers for the audit line (actor, subject, jti, sid): never secrets
        # Already audited, with the state change it reports (a replay, which revokes a session): not again.
        self.recorded = recorded


class InvalidRequest(Refusal):
    pass


class UnsupportedMediaType(Refusal):
    status = 415
    code = "unsupported-media-type"
    title = "The body's media type is not accepted here"


class Unauthenticated(Refusal):
    status = 401
    code = "unauthenticated"
    title = "A valid bearer token is required"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})


class CustomerSession(Unauthenticated):
    code = "customer-session"
    title = "Customer sessions cannot impersonate"


class InsufficientUserAuthentication(Unauthenticated):
    """RFC 9470: the caller's own sign-in is too old or too weak for impersonating; the challenge says what would
    do (``max_age``, ``acr_values``), so the portal can send its user through a step-up sign-in and retry."""

    code = "insufficient-user-authentication"
    title = "A fresher or stronger sign-in is required"

    def __init__(self, detail: str, *, max_age: int | None = None, acr_values: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        described = detail.replace('"', "'").replace("\\", "/")
        challenge = f'Bearer error="insufficient_user_authentication", error_description="{described}"'
        if max_age is not None:
            challenge += f', max_age="{max_age}"'
        if acr_values:
            challenge += f', acr_values="{" ".join(acr_values)}"'
        self.headers["WWW-Authenticate"] = challenge


class InvalidToken(Refusal):
    status = 401
    code = "invalid-token"
    title = "The impersonation token is invalid"


class TokenExpired(InvalidToken):
    code = "token-expired"
    title = "The impersonation token has expired"


class TokenNotYetValid(InvalidToken):
    code = "token-not-yet-valid"
    title = "The impersonation token is not valid yet"


class WrongTokenType(InvalidToken):
    code = "wrong-token-type"
    title = "The token is not an impersonation token"


class WrongAudience(InvalidToken):
    code = "wrong-audience"
    title = "The token is meant for another audience"


class WrongIssuer(InvalidToken):
    code = "wrong-issuer"
    title = "The token comes from an issuer we do not trust"


class UnknownKey(InvalidToken):
    code = "unknown-key"
    title = "The token is signed by a key we do not know"

    def __init__(self, detail: str, *, kid: str) -> None:
        super().__init__(detail, audit={"kid": kid})
        self.kid = kid  # a key another process may have just made: worth one re-read before refusing


class BadSignature(InvalidToken):
    code = "bad-signature"
    title = "The token signature does not verify"


class TokenReplayed(InvalidToken):
    code = "token-replayed"
    title = "The impersonation token was already used"


class TokenNotIssued(InvalidToken):
    code = "token-not-issued"
    title = "The impersonation token is not on the allowlist"


class ImpersonationWithdrawn(InvalidToken):
    """The policy, asked again at exchange, no longer allows what the token was minted for; the token is spent."""

    code = "impersonation-withdrawn"
    title = "The impersonation is no longer allowed"


class Forbidden(Refusal):
    status = 403
    code = "forbidden"
    title = "The caller may not do this"


class ImpersonationDisabled(Forbidden):
    code = "impersonation-disabled"
    title = "Impersonation is switched off in this location"


class NotImpersonable(Forbidden):
    code = "coworker-not-impersonable"
    title = "This coworker may not be impersonated"


class TargetIsStaff(Forbidden):
    code = "coworker-is-staff"
    title = "Staff are never impersonated"


class NestedImpersonation(Forbidden):
    code = "nested-impersonation"
    title = "An impersonated session cannot impersonate"


class CoworkerNotFound(Refusal):
    status = 404
    code = "coworker-not-found"
    title = "No such coworker for this caller"


class RateLimited(Refusal):
    status = 429
    code = "rate-limited"
    title = "Too many impersonation requests"

    def __init__(self, detail: str, retry_after: str) -> None:
        super().__init__(detail, headers={"Retry-After": retry_after})


class SessionNotFound(Refusal):
    status = 404
    code = "session-not-found"
    title = "No such session for this caller"


class Unavailable(Refusal):
    status = 503
    code = "unavailable"
    title = "A backing service is unreachable; nothing was issued"

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "1"})


class NotFound(Refusal):
    status = 404
    code = "not-found"
    title = "No such resource"


class MethodNotAllowed(Refusal):
    status = 405
    code = "method-not-allowed"
    title = "The method is not allowed on this resource"


class BodyTooLarge(Refusal):
    status = 413
    code = "body-too-large"
    title = "The request body is too large"


class HeadersTooLarge(Refusal):
    status = 431
    code = "headers-too-large"
    title = "Request headers too large"


class Internal(Refusal):
    """Not a refusal: a fault of ours. The client learns nothing more; the log has the stack."""

    status = 500
    code = "internal"
    title = "Internal error"


class InvalidDpopProof(Refusal):
    """RFC 9449 section 4.3: the DPoP proof is malformed, not for this request, stale, replayed, or not by the key
    the token is bound to. The challenge (section 7.1) names the algs we verify, so a client can sign with one."""

    status = 401
    code = "invalid-dpop-proof"
    title = "The DPoP proof is invalid"

    def __init__(self, detail: str, *, algs: tuple[str, ...] = ()) -> None:
        super().__init__(detail)
        # RFC 6749 section 5.2: error_description is printable ASCII without '"' or '\'
        described = "".join(c if " " <= c <= "~" else "?" for c in detail.replace('"', "'").replace("\\", "/"))
        challenge = f'DPoP error="invalid_dpop_proof", error_description="{described}"'
        if algs:
            challenge += f', algs="{" ".join(algs)}"'
        self.headers["WWW-Authenticate"] = challenge


class UseDpopNonce(Refusal):
    """RFC 9449 section 8: an authorization server (the exchange, the token endpoint) wants the proof to carry the
    nonce it hands out: 400 ``use_dpop_nonce`` with the nonce to use in ``DPoP-Nonce``, and the client retries once.
    (A resource server would answer 401 with a ``WWW-Authenticate`` challenge instead, section 9.)"""

    status = 400
    code = "use-dpop-nonce"
    title = "The DPoP proof must carry the server's current nonce"

    def __init__(self, detail: str, *, nonce: str) -> None:
        super().__init__(detail, headers={"DPoP-Nonce": nonce})


# What the framework's own errors (by status) are, in the terms above.
BY_STATUS: dict[int, type[Refusal]] = {
    400: InvalidRequest,
    404: NotFound,
    405: MethodNotAllowed,
    413: BodyTooLarge,
    415: UnsupportedMediaType,
    431: HeadersTooLarge,
    503: Unavailable,
}
