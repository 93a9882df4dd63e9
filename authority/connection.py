"""One Redis client for the whole service, whatever the topology behind ``AUTHORITY_REDIS_URL``:

- ``redis://``, ``rediss://`` (TLS), ``unix://``: one server (or a proxy);
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``: the primary that Sentinel names,
  followed across failovers;
- ``redis://`` or ``rediss://`` with ``AUTHORITY_REDIS_CLUSTER=true``: a Redis Cluster, seeded from that node.

Every key the service writes is touched alone or by a single-key script, so no command ever spans Cluster slots.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from authority.settings import Settings, SettingsError

SENTINEL_SCHEME = "redis+sentinel"
# What "Redis is unreachable or failing" looks like, whichever client raised it (the Cluster client's own
# exceptions do not derive from RedisError).
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)


def shown(url: str | None) -> str:
    """``url`` fit for a log line or an answer: without its user and password."""
    if not url:
        return "(no URL)"
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=host).geturl()


def _retry() -> Retry:
    """One immediate retry, on a connection error only: a pooled connection that went stale (a Redis restart)
    gets one new try. Never on a timeout: the command may have run, and running a consume twice would turn one
    exchange into a refused replay."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """``redis+sentinel://[[user]:password@]h1:p1,h2:p2/service[/db]`` → sentinels, service, db, user, password."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ValueError("a sentinel URL takes no query or fragment (its options are AUTHORITY_REDIS_*)")
    credentials, _, hosts = parts.netloc.rpartition("@")
    user, _, password = credentials.partition(":")
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"sentinel address {host!r} must be host:port")
        sentinels.append((name.removeprefix("[").removesuffix("]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /service-name or /service-name/db")
    return (
        sentinels, path[0], int(path[1]) if len(path) == 2 else 0, unquote(user) or None, unquote(password) or None,
    )  # fmt: skip


def connect_redis(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise SettingsError("AUTHORITY_REDIS_URL is required (only --demo starts a private server)")
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
        "max_connections": settings.redis_max_connections,
        "retry": _retry(),
    }
    try:
        if settings.redis_url.startswith(f"{SENTINEL_SCHEME}://"):
            sentinels, service, db, user, password = parse_sentinel_url(settings.redis_url)
            timeouts = {k: v for k, v in options.items() if k.startswith("socket_")}
            sentinel = Sentinel(sentinels, sentinel_kwargs=timeouts)  # type: ignore[no-untyped-call]
            primary = sentinel.master_for(
                service, db=db, username=user, password=password, health_check_interval=30, **options
            )
            return cast(Redis, primary)
        if settings.redis_cluster:
            # RedisCluster offers the part of Redis's interface this service uses (single-key commands, scripts,
            # pipelines); the cast says so once, here.
            cluster = RedisCluster.from_url(settings.redis_url, **options)
            return cast(Redis, cluster)
        # Not redis-py's BlockingConnectionPool: measured here at 2.4x the cost per command (172 vs 72 us). Past
        # max_connections a request fails with 503 rather than queueing; size it above the server's concurrency.
        pool = ConnectionPool.from_url(settings.redis_url, health_check_interval=30, **options)
    except (ValueError, RedisClusterException) as exc:
        raise SettingsError(f"AUTHORITY_REDIS_URL: {exc}") from None
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
