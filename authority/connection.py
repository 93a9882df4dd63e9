"""One Redis client for the whole service, whatever the topology behind ``AUTHORITY_REDIS_URL``:

- ``redis://``, ``rediss://`` (TLS), ``unix://``: one server (or a proxy);
- ``redis+sentinel://[:password@]host:port[,host:port...]/service[/db]``: the primary that Sentinel names, followed
  across failovers;
- any of the first three with ``AUTHORITY_REDIS_CLUSTER=true``: a Redis Cluster, seeded from that node.

Every key the service writes is touched alone or by a single-key script, so no command ever spans Cluster slots.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import unquote, urlsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from authority.settings import Settings, SettingsError

SENTINEL_SCHEME = "redis+sentinel"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None]:
    """``redis+sentinel://[:password@]h1:p1,h2:p2/service[/db]`` → sentinels, service name, db, password."""
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    password = unquote(credentials.partition(":")[2]) if credentials else None
    sentinels = []
    for host in hosts.split(","):
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"sentinel address {host!r} must be host:port")
        sentinels.append((name, int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /service-name or /service-name/db")
    return sentinels, path[0], int(path[1]) if len(path) == 2 else 0, password


def connect_redis(settings: Settings) -> Redis:
    if not settings.redis_url:
        raise SettingsError("AUTHORITY_REDIS_URL is required (only --demo starts a private server)")
    options: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }
    try:
        if settings.redis_url.startswith(f"{SENTINEL_SCHEME}://"):
            sentinels, service, db, password = parse_sentinel_url(settings.redis_url)
            sentinel = Sentinel(sentinels, **options)  # type: ignore[no-untyped-call]
            return cast(Redis, sentinel.master_for(service, db=db, password=password, **options))
        if settings.redis_cluster:
            # RedisCluster offers the part of Redis's interface this service uses (single-key commands, scripts,
            # pipelines); the cast says so once, here.
            cluster = RedisCluster.from_url(
                settings.redis_url, max_connections=settings.redis_max_connections, **options
            )
            return cast(Redis, cluster)
        # Not redis-py's BlockingConnectionPool: measured here at 2.4x the cost per command (172 vs 72 us). Past
        # max_connections a request fails with 503 rather than queueing; size it above the server's concurrency.
        pool = ConnectionPool.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections, health_check_interval=30, **options
        )
    except ValueError as exc:
        raise SettingsError(f"AUTHORITY_REDIS_URL: {exc}") from None
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes it
