"""The Litestar application: configuration in, a wired app out. Keys and directory load before the server
listens, so a bad key file or passphrase stops the start with a clear message instead of failing requests."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from redis.asyncio import Redis

from authority import problems, routes
from authority.callers import Trust
from authority.directory import DEMO_DIRECTORY, FileDirectory
from authority.impersonation import Authority
from authority.keys import FileKeyStore, open_keyring
from authority.replay import Allowlist
from authority.settings import Settings, SettingsError


def connect_redis(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise SettingsError("AUTHORITY_REDIS_URL is required (only --demo starts a private server)")
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> Litestar:
    if not settings.demo:
        if not settings.trusted_issuers:
            raise SettingsError("AUTHORITY_TRUSTED_ISSUERS is empty: no caller could ever mint")
        if not settings.directory_file:
            raise SettingsError("AUTHORITY_DIRECTORY_FILE is required outside --demo")
    connect_redis(settings)  # validates the URL now rather than at the first request
    keyring = open_keyring(
        FileKeyStore(settings.keys_path), settings.key_alg, settings.key_passphrase, demo=settings.demo
    )
    directory = FileDirectory(Path(settings.directory_file) if settings.directory_file else DEMO_DIRECTORY)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = connect_redis(settings)
        authority = Authority(settings, keyring, Allowlist(redis, settings.redis_prefix), directory, clock)
        app.state.authority = authority
        try:
            yield
        finally:
            await redis.aclose()

    app = Litestar(
        route_handlers=routes.ROUTES,
        dependencies=routes.DEPENDENCIES,
        exception_handlers=problems.EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(title="authority", version="0.1.0", path="/schema"),
    )
    app.state.trust = Trust(settings, lambda: app.state.authority.keyring)
    return app
