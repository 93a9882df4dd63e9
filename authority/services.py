"""The composition root: every service built once, from the settings, in one place that the app, the command line
and the benchmark all call. Nothing else constructs a service; routes receive what they need by dependency
injection, background work is started and stopped here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import msgspec
from litestar.response.base import ASGIResponse
from litestar.status_codes import HTTP_304_NOT_MODIFIED
from redis.asyncio import Redis

from authority.audit import AuditLog
from authority.authn import Authenticator
from authority.background import stop
from authority.connection import REDIS_ERRORS, connect_redis, shown
from authority.directory import Directory
from authority.directory_file import DEMO_DIRECTORY, FileDirectory
from authority.directory_http import HttpDirectory
from authority.dpop import DpopGate, Nonces, ProofReplay
from authority.events.dead_letters import DeadLetters, dead_stream
from authority.events.delivery import Deliveries, signing_with
from authority.events.outbox import Outbox
from authority.impersonation import Authority
from authority.keys import (
    FileKeyStore,
    KeyManager,
    KeyNotices,
    Keyring,
    KeyStore,
    KeyStoreError,
    RedisKeyStore,
    RotationLock,
    Schedule,
)
from authority.keys.keyring import unseal_record
from authority.limits import MintLimiter
from authority.outages import redis_cause
from authority.refusals import Unavailable
from authority.replay import Allowlist
from authority.sessions import SessionTrail
from authority.settings import Settings, SettingsError, missing_to_serve
from authority.token_endpoint import TokenEndpoint

logger = logging.getLogger("authority")
# What an operator can fix (a setting, a key file, Redis): said in one line each, never as a traceback.
OPERATOR_ERRORS: tuple[type[Exception], ...] = (
    SettingsError, KeyStoreError, ValueError, TimeoutError, PermissionError, *REDIS_ERRORS,
)  # fmt: skip


Message = dict[str, Any]  # an ASGI scope or event
Send = Callable[[Message], Awaitable[None]]


def say(error: Exception, out: TextIO) -> None:
    for line in str(error).splitlines():  # one line per mistake, all of them
        print(f"authority: {line}", file=out)


def operator_errors(exc: BaseException) -> list[Exception] | None:
    """The operator errors ``exc`` is made of, if it is nothing else: itself, or every leaf of an exception group
    (Litestar's lifespan runs inside task groups, which wrap what the start raised); None if anything else is in."""
    if isinstance(exc, OPERATOR_ERRORS):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        errors: list[Exception] = []
        for inner in exc.exceptions:
            if (found := operator_errors(inner)) is None:
                return None
            errors += found
        return errors or None
    return None


class RefusedStart:
    """The app as an ASGI server runs it: an operator error raised while the app starts (a wrong passphrase for
    keys in Redis, no signing key after ``START_WAIT_S``, a setting only the start can check) is said in one line
    each, on stderr, and the start is reported failed to the server with no message; the server then exits
    non-zero (uvicorn with 3, a granian worker with 1 and granian itself once the crash loop shows) by its own
    rules, with no traceback.

    Without this, Litestar reports a failed start with ``lifespan.startup.failed`` carrying the whole traceback
    (``format_exc``, an exception group: Litestar's lifespan runs in task groups), which uvicorn and granian log as
    is, and then re-raises, which granian logs again. Any other failure is passed on untouched. In-process clients
    (the tests' TestClient) call the app itself and see the exception as raised."""

    def __init__(self, app: Callable[..., Awaitable[None]], out: TextIO = sys.stderr) -> None:
        self.app = app
        self.out = out
        self.refused = False  # whether a start was refused here (``authority serve`` then exits 2)

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]], send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def holding(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # Litestar raises right after: what it raised decides what is sent
            else:
                await send(message)

        try:
            await self.app(scope, receive, holding)
        except BaseException as exc:
            errors = operator_errors(exc) if held else None
            if errors is None:
                for message in held:
                    await send(message)
                raise
            for error in errors:
                say(error, self.out)
            self.out.flush()
            self.refused = True
            await send({"type": "lifespan.startup.failed", "message": ""})


START_WAIT_S = 65  # the rotation lock's lifetime and a margin: a sibling that died holding it has let go by then


@dataclass
class Services:
    settings: Settings
    clock: Callable[[], float]
    redis: Redis
    audit: AuditLog
    keys: KeyManager
    allowlist: Allowlist
    authority: Authority
    authenticator: Authenticator
    token_endpoint: TokenEndpoint
    directory: Directory
    outbox: Outbox
    deliveries: Deliveries | None = None  # with receivers configured
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    async def start(self) -> None:
        """Before the first request: the audit writer, this process's signer, the key schedule and announcements,
        and the delivery of security events."""
        self.audit.start()
        try:
            # Every record unsealed before the schedule may write one: with a wrong passphrase, a tick would seal
            # a new standby with it beside keys it cannot read, and the next start, with the right one, would fail
            # on that standby in turn. Then one round of the schedule whatever was read (a changed alg replaces
            # the standby), and more until this process holds a signer.
            await self.keys.refresh()
            await self.keys.tick()
            await self.keys.start(START_WAIT_S)
        except REDIS_ERRORS as exc:  # with Redis down, serve what local key files hold; readiness tells the rest
            logger.warning("key schedule not run at start (%s); retrying in the background", type(exc).__name__)
            with contextlib.suppress(*REDIS_ERRORS, KeyStoreError):
                await self.keys.refresh()
        except BaseException:
            await self.close()
            raise
        self._background = [
            asyncio.create_task(self.keys.run()),
            asyncio.create_task(self.keys.notices.listen(self.keys.refresh, self.keys.refresh_s)),
        ]
        if self.deliveries is not None:
            self._background.append(asyncio.create_task(self.deliveries.run(), name="security events"))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Started for an app's life and closed however it ends: the lifespan of every app these services serve."""
        await self.start()
        try:
            yield
        finally:
            await self.close()

    async def close(self) -> None:
        await stop(self._background)
        if self.deliveries is not None:
            await self.deliveries.close()
        await self.audit.close()
        await self.redis.aclose()
        if isinstance(self.directory, HttpDirectory):
            await self.directory.close()

    async def ready(self) -> None:
        """Readiness: Redis answers, a key signs now, the records were re-read lately; else 503 saying which."""
        try:
            await self.allowlist.ping()
        except REDIS_ERRORS as exc:
            # Counted as a request's Redis failure is (the probe itself is not audited): probes may be all the
            # outage log sees of an outage, which then lasts from the first failed check to the last.
            self.audit.outages.failed(redis_cause("redis", exc))
            url = shown(self.settings.redis_url)
            raise Unavailable(f"Redis at {url} does not answer ({type(exc).__name__})") from None
        now = int(self.clock())
        if self.keys.keyring.signer_at(now) is None:
            raise Unavailable(self.authority.no_signer())
        if not self.keys.fresh(now):
            raise Unavailable("key records have not been re-read lately (see the logs)")


@dataclass(frozen=True)
class Published:
    """What the public documents (JWKS, discovery) are made of: the live key set and the settings. One object, so
    those routes take one dependency: Litestar resolves two or more concurrently, in a task group, which cost the
    JWKS route 40 us a request (measured in-process: 52 us with one, 96 us with two)."""

    keys: KeyManager
    settings: Settings
    _answers: dict[str, tuple[ASGIResponse, ASGIResponse]] = field(default_factory=dict)

    @property
    def keyring(self) -> Keyring:
        return self.keys.keyring

    def jwks_answers(self) -> tuple[str, ASGIResponse, ASGIResponse]:
        """The JWKS answer and its 304, built once per key set and sent as they are: a ``Response`` made and
        encoded per request cost the route about as much as the whole bare request (bench/waterfall.py)."""
        keyring = self.keyring
        answers = self._answers.get(keyring.etag)
        if answers is None:
            headers = {"ETag": keyring.etag, "Cache-Control": f"public, max-age={self.settings.jwks_max_age_s}"}
            answers = (
                ASGIResponse(body=keyring.jwks, media_type="application/json", headers=headers),
                ASGIResponse(status_code=HTTP_304_NOT_MODIFIED, headers=headers),
            )
            self._answers.clear()  # only the current key set is ever answered
            self._answers[keyring.etag] = answers
        return keyring.etag, *answers


def audit_stream(settings: Settings) -> str:
    return f"{settings.redis_prefix}audit"


def outbox_maxlen(settings: Settings) -> int:
    """Twice a receiver's backlog: each receiver's own bound is enforced (and counted) by its deliverer; this cap
    is the safety net for a receiver no process delivers to."""
    return 2 * settings.event_backlog


def outbox(settings: Settings, redis: Redis, audit: AuditLog) -> Outbox:
    return Outbox(
        redis,
        audit,
        events=bool(settings.event_receivers),
        maxlen=outbox_maxlen(settings),
        audit_maxlen=settings.audit_stream_maxlen,
        min_replicas=settings.redis_min_replicas,
        replica_timeout_ms=settings.redis_replica_timeout_ms,
    )


def dead_letters(settings: Settings, redis: Redis) -> DeadLetters:
    return DeadLetters(redis, dead_stream(settings.redis_prefix), settings.event_backlog)


def key_store(settings: Settings, redis: Redis) -> KeyStore:
    if settings.key_store == "redis":
        return RedisKeyStore(redis, settings.redis_prefix)
    return FileKeyStore(settings.keys_path)


def check(settings: Settings) -> None:
    """Refuse, before listening, what would only fail later: missing production settings, unusable key files."""
    if missing := missing_to_serve(msgspec.structs.asdict(settings)):
        raise SettingsError("\n".join(missing))
    if settings.key_store == "file":
        store = FileKeyStore(settings.keys_path)
        for record in store.load_sync():
            unseal_record(record, settings.key_passphrase, demo=settings.demo, source=str(store))


def build(settings: Settings, clock: Callable[[], float] = time.time, *, log: TextIO | None = sys.stderr) -> Services:
    """Every service, wired: the one place where one is made."""
    redis = connect_redis(settings)
    audit = AuditLog(redis, audit_stream(settings), settings.audit_stream_maxlen, log=log)
    events = outbox(settings, redis, audit)
    keys = KeyManager(
        key_store(settings, redis),
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
        refresh_s=settings.key_refresh_s,
        clock=clock,
        audit=audit,
        outbox=events,
    )
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
    directory: Directory
    if settings.directory_url:
        directory = HttpDirectory.from_settings(settings)
    else:
        directory = FileDirectory(Path(settings.directory_file) if settings.directory_file else DEMO_DIRECTORY)
    trail = SessionTrail(
        redis, settings.redis_prefix, retention_s=settings.trail_retention_s, per_customer=settings.trail_per_customer
    )
    nonces = Nonces(settings.dpop_nonce_secret.encode(), clock=clock) if settings.dpop_nonce_secret else None
    dpop = DpopGate(settings.dpop, ProofReplay(redis, settings.redis_prefix), settings.public_issuer, nonces)
    authority = Authority(settings, keys, allowlist, limiter, directory, audit, trail, dpop, clock, outbox=events)
    authenticator = Authenticator(settings, keys, clock)
    return Services(
        settings=settings,
        clock=clock,
        redis=redis,
        audit=audit,
        keys=keys,
        allowlist=allowlist,
        authority=authority,
        authenticator=authenticator,
        token_endpoint=TokenEndpoint(settings, authority, authenticator, redis),
        directory=directory,
        outbox=events,
        deliveries=Deliveries(
            redis,
            settings.event_receivers,
            stream=events.stream,
            prefix=settings.redis_prefix,
            dead=dead_letters(settings, redis),
            sign=signing_with(keys, clock),
            issuer=settings.public_issuer,
            timeout_s=settings.event_timeout_s,
            max_age_s=settings.event_max_age_s,
            backoff_max_s=settings.event_backoff_max_s,
            backlog=settings.event_backlog,
            clock=clock,
        )
        if settings.event_receivers
        else None,
    )
