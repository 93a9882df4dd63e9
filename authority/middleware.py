"""Request guards: an id for every request (the audit trail's thread), and a cap on header size (route
middleware: Litestar runs it for every request that matches a route, before anything of the request is parsed)."""

from __future__ import annotations

import re
import secrets

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from authority.audit import REQUEST_ID

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
            scope["app"].state.audit.emit("refusal", "headers-too-large", status=431, path=scope["path"])
            await _too_large(send, self.max_header_bytes)
            return
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


async def _too_large(send: Send, limit: int) -> None:
    body = msgspec.json.encode(
        {
            "type": "urn:authority:problem:headers-too-large",
            "title": "Request headers too large",
            "status": 431,
            "detail": f"request headers exceed {limit} bytes",
        }
    )
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 431,
        "headers": [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
