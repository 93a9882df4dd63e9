"""One deliverer per receiver at a time, across every process of every replica: a lease in Redis.

Per session, events must reach a receiver in order (started before ended); two processes reading one consumer
group would each take some of a session's events and could send them out of order. So one process holds a
receiver's lease and delivers for it; the others stand by, and one of them takes over within ``LEASE_S`` of the
holder's death (and claims what it held: ``delivery``). A holder that cannot renew in time stops delivering.
"""

from __future__ import annotations

import os
import secrets
import socket

from redis.asyncio import Redis

LEASE_S = 10.0
RENEW_S = LEASE_S / 4  # renewed this often: three renewals may fail (a slow Redis) before it lapses

# Renew or release only a lease we still hold: never extend or end another process's after ours lapsed.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def consumer_name() -> str:
    """This process, as a consumer of the outbox and holder of leases: host and pid (for an operator reading
    ``XINFO CONSUMERS``), and a random part, since a restarted process may get the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Lease:
    def __init__(self, redis: Redis, key: str, holder: str) -> None:
        self._redis = redis
        self.key = key
        self.holder = holder
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self) -> bool:
        return bool(await self._redis.set(self.key, self.holder, nx=True, px=int(LEASE_S * 1000)))

    async def renew(self) -> bool:
        """False if the lease lapsed (another process may hold it now): stop delivering."""
        return bool(await self._renew(keys=[self.key], args=[self.holder, int(LEASE_S * 1000)]))

    async def release(self) -> None:
        await self._release(keys=[self.key], args=[self.holder])
