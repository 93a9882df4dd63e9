"""Request guards: an id for every request (the audit trail's thread), and a cap on header size (route
middleware: Litestar runs it for every request that matches a route, before anything of the request is parsed;
the refusal goes through the problem-details path like any other)."""

from __future__ import annotations

import re
import secrets

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from authority.audit import REQUEST_ID
from authority.refusals import HeadersTooLarge

_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class RequestGuard(ASGIMiddleware):
    """Tags each request with an id (the caller's ``X-Request-ID`` if it is sane, else a new one), and refuses
    requests whose headers exceed ``max_header_bytes`` with 431 before any of them is parsed further."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = scope["headers"]
        REQUEST_ID.set(request_id(scope))  # for the audit events of the handler itself
        if sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            raise HeadersTooLarge(f"request headers exceed {self.max_header_bytes} bytes")
        await next_app(scope, receive, send)


def request_id(scope: Scope) -> str:
    """The request's id: the caller's ``X-Request-ID`` if it is sane, else a new one; kept in the scope so the
    guard, the exception handlers (also for paths that match no route) and the response hook agree on it."""
    state = scope.setdefault("state", {})
    if "request_id" not in state:
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        state["request_id"] = given.decode() if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    value: str = state["request_id"]
    return value


async def echo_request_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: every response, error responses included, carries its request id."""
    if message["type"] == "http.response.start":
        message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id(scope).encode())]


async def bodiless_head(message: Message, scope: Scope) -> None:
    """``before_send`` hook: a HEAD answer carries the GET answer's headers (``Content-Length`` included) and no
    body (RFC 9110 §9.3.2); Litestar runs a GET-and-HEAD handler alike for both."""
    if message["type"] == "http.response.body" and scope.get("method") == "HEAD":
        message["body"] = b""
