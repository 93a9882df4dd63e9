"""Connection-level guards that run before routing: request ids for the audit trail, and a cap on header size."""

from __future__ import annotations

import re
import secrets

import msgspec
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPResponseBodyEvent, HTTPResponseStartEvent, Message, Receive, Scope, Send

from authority.audit import REQUEST_ID

_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._-]{1,64}$")


class RequestGuard(ASGIMiddleware):
    """Tags each request with an id (the caller's ``X-Request-ID`` if it is sane, else a new one), and refuses
    requests whose headers exceed ``max_header_bytes`` with 431 before any of them is parsed further."""

    scopes = (ScopeType.HTTP,)

    def __init__(self, max_header_bytes: int) -> None:
        self.max_header_bytes = max_header_bytes

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        headers = scope["headers"]
        given = next((v for k, v in headers if k == b"x-request-id"), b"")
        request_id = given.decode() if _REQUEST_ID.match(given) else secrets.token_hex(8)
        # In the scope for what runs after an exception has left this middleware (the outer exception handler,
        # the response hook); in a context variable for the audit events of the handler itself.
        scope.setdefault("state", {})["request_id"] = request_id
        REQUEST_ID.set(request_id)
        if sum(len(k) + len(v) for k, v in headers) > self.max_header_bytes:
            scope["app"].state.audit.emit("refusal", "headers-too-large", status=431, path=scope["path"])
            await _too_large(send, self.max_header_bytes)
            return
        await next_app(scope, receive, send)


async def echo_request_id(message: Message, scope: Scope) -> None:
    """``before_send`` hook: every response, error responses included, carries its request id."""
    if message["type"] == "http.response.start":
        request_id = scope.get("state", {}).get("request_id")
        if request_id:
            message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]


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
