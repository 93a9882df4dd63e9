"""The Litestar application: configuration in, a wired app out.

Every service comes from the composition root (``services.build``), once; routes receive what they need by
dependency injection; the lifespan starts and stops the background work. Local key files are checked before the
server listens, so a bad key file or passphrase stops the start with a clear message instead of failing requests.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from litestar import Litestar, Response, get
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.prometheus import PrometheusController

from authority import docs_ui, problems, routes
from authority.authn import BearerAuth
from authority.middleware import HttpMetrics, RequestGuard, bodiless_head, echo_request_id
from authority.services import Published, Services, build, check
from authority.settings import Settings


class Metrics(PrometheusController):
    """Litestar's Prometheus endpoint, documented for what it serves (the text exposition format)."""

    @get(
        media_type="text/plain; version=0.0.4; charset=utf-8",
        summary="Prometheus metrics",
        tags=["probes"],
        opt=routes.PUBLIC,
    )
    async def get(self) -> Response[Any]:
        response: Response[Any] = await PrometheusController.get.fn(self)
        return response


def request_pipeline(settings: Settings, services: Services) -> dict[str, Any]:
    """What every request passes through, whatever its route: the header cap and request id, the Prometheus HTTP
    counters, bearer authentication (skipped by routes marked ``PUBLIC``), problem details and their audit, and the
    response hooks. One place, so the benchmark's waterfall (``bench/waterfall.py``) serves exactly this stack."""
    # /metrics off: its HTTP counters are not kept either (nothing could read them); the service's own counters
    # (authority.metrics) cost one increment per event and stay.
    metrics = DefineMiddleware(HttpMetrics, app_name="authority", prefix="authority_http")
    return {
        "plugins": [problems.PLUGIN],
        "after_exception": [problems.auditor(services.audit)],
        "middleware": [
            RequestGuard(settings.max_header_bytes),
            *([metrics] if settings.public_metrics else []),
            DefineMiddleware(BearerAuth, authenticator=services.authenticator, exclude=["^/schema"]),
        ],
        "before_send": [echo_request_id, bodiless_head],
        "request_max_body_size": settings.max_body_bytes,
        "logging_config": None,  # configured once per process by the entry point (logs.configure), not per app
    }


def freeze_startup() -> None:
    """For a serving process, once its app is built: move every object made so far (the app's routes, signature
    models, OpenAPI, settings, keys) out of the cyclic garbage collector's generations. They live as long as the
    process, yet every full collection walked all of them again: 12 % of a mint's CPU in-process (346 -> 303 us
    per request, three alternating runs of 15,000). Not for tests, which build hundreds of apps in one process."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> Litestar:
    services = build(settings, clock)
    check(settings)
    published = Published(services.keys, settings)

    app = Litestar(
        route_handlers=[*routes.ROUTES, *([Metrics] if settings.public_metrics else [])],
        dependencies={
            "authority": Provide(lambda: services.authority, sync_to_thread=False),
            "published": Provide(lambda: published, sync_to_thread=False),
            "ready": Provide(lambda: services.ready, sync_to_thread=False),
            "endpoint": Provide(lambda: services.token_endpoint, sync_to_thread=False),
        },
        lifespan=[lambda _: services.running()],
        **request_pipeline(settings, services),
        openapi_config=OpenAPIConfig(
            title="authority",
            version="0.1.0",
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")}
            ),
            render_plugins=[docs_ui.SwaggerUI()],  # and the document at /schema/openapi.json, as Litestar does
            openapi_router=docs_ui.router(),
        )
        if settings.public_schema
        else None,
    )
    app.state.services = services  # for tests and tools that act on a running app's own services
    return app
