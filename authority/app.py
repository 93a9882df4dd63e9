"""The Litestar application: configuration in, a wired app out.

Local key files and the directory are checked before the server listens, so a bad key file or passphrase stops
the start with a clear message instead of failing requests. Keys then rotate in a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from redis.asyncio import Redis

from authority import problems, routes
from authority.audit import AuditLog
from authority.background import stop
from authority.callers import Trust
from authority.connection import REDIS_ERRORS, connect_redis
from authority.directory import DEMO_DIRECTORY, FileDirectory
from authority.impersonation import Authority
from authority.keys import (
    FileKeyStore,
    KeyManager,
    KeyNotices,
    KeyStore,
    KeyStoreError,
    RedisKeyStore,
    RotationLock,
    Schedule,
)
from authority.keys.keyring import unseal_record
from authority.limits import MintLimiter
from authority.middleware import RequestGuard, echo_request_id
from authority.replay import Allowlist
from authority.settings import Settings, SettingsError

logger = logging.getLogger("authority")
START_WAIT_S = 65  # the rotation lock's lifetime and a margin: a sibling that died holding it has let go by then


def audit_log(settings: Settings, redis: Redis) -> AuditLog:
    return AuditLog(redis, f"{settings.redis_prefix}audit", settings.audit_stream_maxlen, log=sys.stderr)


def key_manager(settings: Settings, redis: Redis, clock: Callable[[], float], audit: AuditLog) -> KeyManager:
    store: KeyStore = (
        RedisKeyStore(redis, settings.redis_prefix)
        if settings.key_store == "redis"
        else FileKeyStore(settings.keys_path)
    )
    return KeyManager(
        store,
        RotationLock(redis, settings.redis_prefix),
        KeyNotices(redis, settings.redis_prefix),
        alg=settings.key_alg,
        passphrase=settings.key_passphrase,
        demo=settings.demo,
        schedule=Schedule(
            settings.key_rotation_s,
            settings.key_prepublish_s,
            settings.key_retention_s,
            # a record is served everywhere within one re-read, plus a second for the whole-second clock
            serve_lag_s=math.ceil(settings.key_refresh_s) + 1,
        ),
        clock=clock,
        audit=audit,
    )


def check_settings(settings: Settings) -> None:
    """Refuse, before listening, what would only fail later: missing production settings, unusable key files."""
    if not settings.demo:
        if not settings.trusted_issuers:
            raise SettingsError("AUTHORITY_TRUSTED_ISSUERS is empty: no caller could ever mint")
        if not settings.directory_file:
            raise SettingsError("AUTHORITY_DIRECTORY_FILE is required outside --demo")
        if not settings.key_passphrase:
            raise SettingsError("AUTHORITY_KEY_PASSPHRASE is required outside --demo: private keys are encrypted")
    connect_redis(settings)  # validates the URL now rather than at the first request
    if settings.key_store == "file":
        store = FileKeyStore(settings.keys_path)
        for record in store.load_sync():
            unseal_record(record, settings.key_passphrase, demo=settings.demo, source=str(store))


async def start_keys(keys: KeyManager) -> None:
    """First rounds of the schedule, until this process holds a signer. With Redis down, serve what local files
    hold; readiness tells the rest."""
    try:
        await keys.start(START_WAIT_S)
    except REDIS_ERRORS as exc:
        logger.warning("key schedule not run at start (%s); retrying in the background", type(exc).__name__)
        with contextlib.suppress(*REDIS_ERRORS, KeyStoreError):
            await keys.refresh()


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> Litestar:
    check_settings(settings)
    directory = FileDirectory(Path(settings.directory_file) if settings.directory_file else DEMO_DIRECTORY)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        redis = connect_redis(settings)
        audit = app.state.audit = audit_log(settings, redis)
        keys = key_manager(settings, redis, clock, audit)
        limiter = MintLimiter(
            redis,
            settings.redis_prefix,
            per_actor=settings.mint_rate_per_actor,
            per_location=settings.mint_rate_per_location,
            window_s=settings.mint_rate_window_s,
        )
        allowlist = Allowlist(
            redis,
            settings.redis_prefix,
            min_replicas=settings.redis_min_replicas,
            replica_timeout_ms=settings.redis_replica_timeout_ms,
        )
        app.state.authority = Authority(
            settings, keys=keys, allowlist=allowlist, limiter=limiter, directory=directory, audit=audit, clock=clock
        )
        audit.start()
        try:
            await start_keys(keys)
            background = [
                asyncio.create_task(keys.run(settings.key_refresh_s)),
                asyncio.create_task(keys.notices.listen(keys.refresh, settings.key_refresh_s)),
            ]
            try:
                yield
            finally:
                await stop(background)
        finally:
            await audit.close()
            await redis.aclose()

    prometheus = PrometheusConfig(app_name="authority", prefix="authority_http", group_path=True)
    app = Litestar(
        route_handlers=[*routes.ROUTES, PrometheusController],
        dependencies=routes.DEPENDENCIES,
        exception_handlers=problems.EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        middleware=[RequestGuard(settings.max_header_bytes), prometheus.middleware],
        before_send=[echo_request_id],
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,  # configured once per process by the entry point (logs.configure), not per app
        openapi_config=OpenAPIConfig(title="authority", version="0.1.0", path="/schema"),
    )
    app.state.trust = Trust(settings, lambda: app.state.authority.keys)
    return app
