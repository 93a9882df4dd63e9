"""RFC 9457 problem details for every refusal, framework error and failure, through Litestar's
``ProblemDetailsPlugin``; and the one hook that audits each (or logs it, when it is a fault of ours).

Every exception becomes a ``Refusal`` of ``refusals`` first (``refusal_of``), so a code, its title and its status
are written in one place; no client ever sees a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsConfig, ProblemDetailsException, ProblemDetailsPlugin
from litestar.types import Scope
from redis.exceptions import RedisClusterException, RedisError

from authority.audit import AuditLog
from authority.middleware import request_id
from authority.outages import redis_cause
from authority.refusals import BY_STATUS, Internal, InvalidRequest, Refusal, Unavailable

PROBLEM_BASE = "urn:authority:problem:"
logger = logging.getLogger("authority")
_STORE_DOWN = (
    "the token store did not answer; no token or session was handed out. An exchange may still have spent its "
    "token: mint a new one rather than retrying it"
)


def refusal_of(exc: Exception) -> Refusal:
    """What ``exc`` means to a client, in the one registry of refusals."""
    if isinstance(exc, Refusal):
        return exc
    if isinstance(exc, RedisError | RedisClusterException):  # Redis unreachable or failing: fail closed
        return Unavailable(_STORE_DOWN)
    if isinstance(exc, ValidationException):
        return InvalidRequest(_what_failed(exc))
    if isinstance(exc, UnicodeDecodeError):  # what the body parser raises for bytes that are not UTF-8
        return InvalidRequest("the body is not UTF-8 JSON")
    if isinstance(exc, RecursionError):  # JSON nested past the decoder's depth
        return InvalidRequest("the body is nested too deeply")
    if isinstance(exc, HTTPException) and exc.status_code in BY_STATUS:
        return BY_STATUS[exc.status_code](exc.detail)
    return Internal("internal error")


def _what_failed(exc: ValidationException) -> str:
    """The detail of a validation error: each field as the caller named it, with what was wrong with it (Litestar's
    own detail only names the route)."""
    errors = exc.extra if isinstance(exc.extra, list) else []
    said = [f"{e['key']}: {e['message']}" for e in errors if isinstance(e, dict) and e.get("key") and e.get("message")]
    return "; ".join(said) or exc.detail


def problem(exc: Exception) -> ProblemDetailsException:
    refusal = refusal_of(exc)
    extra = exc.extra if isinstance(exc, ValidationException) and exc.extra else None
    return ProblemDetailsException(
        detail=refusal.detail,
        status_code=refusal.status,
        headers=refusal.headers or None,
        type_=PROBLEM_BASE + refusal.code,
        title=refusal.title,
        extra={"errors": extra} if extra else None,
    )


PLUGIN = ProblemDetailsPlugin(ProblemDetailsConfig(exception_to_problem_detail_map={Exception: problem}))
# The probes' routes (``routes.healthz``, ``routes.readyz``): a load balancer's checks, not a user's requests. Their
# refusals are not audited: during a Redis outage every check of every replica would be an audit entry, queued
# for a stream that is down. The outage itself is in the outage log, which counts the readiness failures too.
PROBES = frozenset({"healthz", "readyz"})


def probe(scope: Scope) -> bool:
    return getattr(scope.get("route_handler"), "name", None) in PROBES


def auditor(audit: AuditLog) -> Any:
    """The ``after_exception`` hook: every refusal audited once, with its request, but a probe's (``PROBES``); a
    fault of ours logged with its stack; a Redis failure counted into the outage log rather than logged per
    request."""

    async def record(exc: Exception, scope: Scope) -> None:
        refusal = refusal_of(exc)
        if isinstance(refusal, Internal):
            logger.error("unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc)
            return
        if isinstance(exc, RedisError | RedisClusterException):
            audit.outages.failed(redis_cause("redis", exc))
        if not refusal.recorded and not probe(scope):
            method = str(scope.get("method", ""))
            audit.emit_entry(audit.refusal(refusal, method=method, path=scope["path"], request_id=request_id(scope)))

    return record
