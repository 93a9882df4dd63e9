"""RFC 9457 problem details for every refusal, framework error and failure; and the audit line for each.

Every non-2xx answer goes through here, so no client ever sees a stack trace and every refusal is audited once.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import ProblemDetailsException
from litestar.types import ExceptionHandlersMap
from redis.exceptions import RedisClusterException, RedisError

from authority.audit import AuditLog
from authority.middleware import request_id
from authority.outages import redis_cause
from authority.refusals import Refusal

PROBLEM_BASE = "urn:authority:problem:"
_HTTP_CODES = {
    400: "invalid-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "body-too-large",
    415: "unsupported-media-type",
}
logger = logging.getLogger("authority")


def _respond(
    request: Request[Any, Any, Any], problem: ProblemDetailsException, code: str, **context: str | None
) -> Response[Any]:
    audit: AuditLog = request.app.state.audit
    audit.emit(
        "refusal",
        code,
        status=problem.status_code,
        method=request.method,
        path=request.url.path,
        reason=problem.detail,
        request_id=request_id(request.scope),
        **context,
    )
    return problem.to_response(request)


def on_refusal(request: Request[Any, Any, Any], exc: Refusal) -> Response[Any]:
    problem = ProblemDetailsException(
        detail=exc.detail,
        status_code=exc.status,
        headers=exc.headers or None,
        type_=PROBLEM_BASE + exc.code,
        title=exc.title,
    )
    return _respond(request, problem, exc.code, **exc.audit)


def on_validation(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    problem = ProblemDetailsException(
        detail=exc.detail,
        status_code=400,
        type_=PROBLEM_BASE + "invalid-request",
        title="The request is malformed",
        extra={"errors": exc.extra} if exc.extra else None,
    )
    return _respond(request, problem, "invalid-request")


def on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    code = _HTTP_CODES.get(exc.status_code, f"http-{exc.status_code}")
    problem = ProblemDetailsException(
        detail=exc.detail,
        status_code=exc.status_code,
        headers=exc.headers,
        type_=PROBLEM_BASE + code,
        title=exc.detail,
    )
    return _respond(request, problem, code)


def on_redis(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Redis unreachable or failing: fail closed with 503, whatever the request was.

    Logged as an outage (when it starts, a summary per interval, when it ends), not per request: a Redis outage
    fails every request. The start line carries this request's id, which leads to its audit event."""
    audit: AuditLog = request.app.state.audit
    audit.outages.failed(redis_cause("redis", exc))
    problem = ProblemDetailsException(
        detail=(
            "the token store did not answer; no token or session was handed out. An exchange may still have "
            "spent its token: mint a new one rather than retrying it"
        ),
        status_code=503,
        headers={"Retry-After": "1"},
        type_=PROBLEM_BASE + "unavailable",
        title="Service unavailable",
    )
    return _respond(request, problem, "unavailable")


def on_undecodable(request: Request[Any, Any, Any], exc: UnicodeDecodeError | RecursionError) -> Response[Any]:
    """What the body parser raises for bytes that are not UTF-8, or JSON nested past the decoder's depth."""
    problem = ProblemDetailsException(
        detail="the body is not UTF-8 JSON" if isinstance(exc, UnicodeDecodeError) else "the body is nested too deeply",
        status_code=400,
        type_=PROBLEM_BASE + "invalid-request",
        title="The request is malformed",
    )
    return _respond(request, problem, "invalid-request")


def on_crash(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    problem = ProblemDetailsException(
        detail="internal error", status_code=500, type_=PROBLEM_BASE + "internal", title="Internal error"
    )
    return problem.to_response(request)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    Refusal: on_refusal,
    ValidationException: on_validation,
    HTTPException: on_http,
    RedisError: on_redis,
    RedisClusterException: on_redis,
    UnicodeDecodeError: on_undecodable,
    RecursionError: on_undecodable,
    Exception: on_crash,
}
