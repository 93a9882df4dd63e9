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
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from authority.refusals import Unavailable
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


async def on_key_primary(cluster: RedisCluster, key: str, *commands: tuple[Any, ...]) -> list[Any]:
    """Send ``commands`` down one connection to the primary that owns ``key``'s slot and read their replies.

    The Cluster client's pipeline may spread commands over connections, and a keyless ``WAIT`` would go to any
    node, so this takes one connection of that node itself. An error reply (a redirect when a slot moves,
    NOREPLICAS) comes back as a ``ResponseError`` in its place, for the caller to raise: 503.
    """
    node = cluster.get_node_from_key(key)
    if node is None:
        raise Unavailable("no Cluster node owns this key's slot right now")
    connection = node.acquire_connection()
    replies: list[Any] = []
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        for command in commands:
            try:
                replies.append(await node.parse_response(connection, str(command[0])))
            except ResponseError as error:  # an error reply (a redirect, NOREPLICAS): read on, stay in step
                replies.append(error)
    except BaseException:
        await connection.disconnect()  # a half-read connection must not go back to the pool
        raise
    finally:
        node.release(connection)
    return replies


async def confirmed(
    redis: Redis, key: str, command: tuple[Any, ...], replicas: int, timeout_ms: int
) -> tuple[Any, int]:
    """Run ``command`` (which writes ``key``) and, in the same round trip on the same connection, wait until
    ``replicas`` replicas have its effect (``WAIT`` counts the writes of its own connection only). Its reply, and
    how many replicas acknowledged; an error reply is raised."""
    wait = ("WAIT", replicas, timeout_ms)
    if isinstance(redis, RedisCluster):
        reply, acknowledged = await on_key_primary(redis, key, command, wait)
    else:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.execute_command(*command)
            pipe.wait(replicas, timeout_ms)
            reply, acknowledged = await pipe.execute(raise_on_error=False)
    for answer in (reply, acknowledged):
        if isinstance(answer, Exception):
            raise answer
    return reply, int(acknowledged)
