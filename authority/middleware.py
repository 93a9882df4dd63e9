"""Request guards: an id for every request (the audit trail's thread), and a cap on header size (route
middleware: Litestar runs it for every request that matches a route, before anything of the request is parsed;
the refusal goes through the problem-details path like any other); and the Prometheus HTTP counters."""

from __future__ import annotations

import functools
import re
import secrets
import time
from dataclasses import dataclass

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Gauge, Histogram

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


@dataclass(frozen=True)
class _HttpSeries:
    requests: Counter
    duration: Histogram
    in_progress: Gauge
    errors: Counter


_LABELS = ("method", "path", "status_code", "app_name")


@functools.cache
def _http_series(prefix: str) -> _HttpSeries:
    """Registered once per process (the registry refuses a name twice; tests build many apps)."""
    return _HttpSeries(
        requests=Counter(f"{prefix}_requests_total", "Total requests", _LABELS),
        duration=Histogram(f"{prefix}_request_duration_seconds", "Request duration, in seconds", _LABELS),
        in_progress=Gauge(
            f"{prefix}_requests_in_progress",
            "Total requests currently in progress",
            _LABELS,
            multiprocess_mode="livesum",
        ),
        errors=Counter(f"{prefix}_requests_error_total", "Total errors in requests", _LABELS),
    )


class HttpMetrics:
    """Route middleware: per request, its count, its duration (until the last body message), the requests in
    progress, and the count of 5xx answers, labelled by method, route template, status and app. The series and
    labels of Litestar's ``PrometheusMiddleware`` with ``group_path=True`` (dashboards keep working), without its
    per-request cost: it resolved four labelled children with ``labels()`` and built a ``Request`` on every call
    (20 of the request pipeline's 26 us in-process, bench/waterfall.py); here each child is looked up once per
    route and status, and kept. Routes and statuses are few and fixed, so the cache stays small."""

    def __init__(self, app: ASGIApp, app_name: str, prefix: str) -> None:
        self.app = app
        self._app_name = app_name
        self._series = _http_series(prefix)
        self._in_progress: dict[tuple[str, str], Gauge] = {}
        self._done: dict[tuple[str, str, int], tuple[Counter, Histogram, Counter | None]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope.get("path_template", scope["path"])
        gauge = self._in_progress.get((method, path))
        if gauge is None:
            gauge = self._in_progress[method, path] = self._series.in_progress.labels(method, path, 200, self._app_name)
        start = time.perf_counter()
        status, duration = 200, 0.0

        async def measured(message: Message) -> None:
            nonlocal status, duration
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                duration = time.perf_counter() - start
            await send(message)

        gauge.inc()
        try:
            await self.app(scope, receive, measured)
        finally:
            gauge.dec()
            self._finished(method, path, status, duration)

    def _finished(self, method: str, path: str, status: int, duration: float) -> None:
        children = self._done.get((method, path, status))
        if children is None:
            series, labels = self._series, (method, path, status, self._app_name)
            errors = series.errors.labels(*labels) if status >= 500 else None
            children = self._done[method, path, status] = (
                series.requests.labels(*labels),
                series.duration.labels(*labels),
                errors,
            )
        requests, durations, errors = children
        if errors is not None:
            errors.inc()
        requests.inc()
        durations.observe(duration)
