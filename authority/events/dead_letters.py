"""Dead letters: the events a receiver refused (an RFC 8935 400) or that no retry delivered within
``AUTHORITY_EVENT_MAX_AGE_S``, kept on the capped stream ``<prefix>events:dead`` with the receiver and the cause,
until an operator reads them (``authority events dead``) or puts them back (``authority events redrive``).

A redriven event goes back on the outbox addressed to its one receiver (``to``), with its own ``uid``: the SET it
makes carries the same ``jti`` as before, so a receiver that did get it after all drops the duplicate. It starts a
new retry window, and arrives after whatever that receiver was sent since: redrive gives up per-session order.

Past the cap the oldest are trimmed, and never silently: each trim is logged with how many it dropped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import cast

from redis.asyncio import Redis

logger = logging.getLogger("authority.events")
_Entries = list[tuple[bytes, dict[bytes, bytes]]]
PAGE = 500


@dataclass(frozen=True)
class DeadLetter:
    id: str  # its stream id: when it was dead-lettered
    receiver: str
    cause: str  # refused, expired
    detail: str
    event: bytes  # the outbox record (JSON)


def dead_stream(prefix: str) -> str:
    return f"{prefix}events:dead"


class DeadLetters:
    def __init__(self, redis: Redis, stream: str, maxlen: int) -> None:
        self._redis = redis
        self.stream = stream
        self._maxlen = maxlen

    async def add(self, *, receiver: str, event: bytes, cause: str, detail: str) -> None:
        """One more; the oldest trimmed past the cap (``XTRIM`` says how many: logged)."""
        fields = {"receiver": receiver, "cause": cause, "detail": detail, "event": event}
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.stream, fields)  # type: ignore[arg-type]
            pipe.xtrim(self.stream, maxlen=self._maxlen, approximate=True)
            _, trimmed = await pipe.execute()
        if trimmed:
            logger.warning("dead letters over their cap of %d: the %d oldest trimmed unread", self._maxlen, trimmed)

    async def read(self, count: int | None = None) -> list[DeadLetter]:
        """The oldest ``count`` (all when None), oldest first."""
        letters: list[DeadLetter] = []
        start = "-"
        while count is None or len(letters) < count:
            page = min(PAGE, count - len(letters)) if count is not None else PAGE
            entries = cast(_Entries, await self._redis.xrange(self.stream, min=start, count=page))
            letters += [_letter(entry_id, fields) for entry_id, fields in entries]
            if len(entries) < page:
                break
            start = f"({entries[-1][0].decode()}"
        return letters

    async def redrive(self, outbox: str, outbox_maxlen: int, receiver: str | None = None) -> int:
        """Put ``receiver``'s dead letters (every receiver's when None) back on ``outbox``, each for its receiver;
        how many. Each is re-queued before it leaves this stream: a crash in between redrives one twice (the
        receiver drops the duplicate by its jti), never loses one."""
        moved = 0
        for letter in await self.read():
            if receiver is not None and letter.receiver != receiver:
                continue
            fields = {"event": letter.event, "to": letter.receiver}
            await self._redis.xadd(outbox, fields, maxlen=outbox_maxlen, approximate=True)  # type: ignore[arg-type]
            await self._redis.xdel(self.stream, letter.id)
            moved += 1
        return moved


def _letter(entry_id: bytes, fields: dict[bytes, bytes]) -> DeadLetter:
    return DeadLetter(
        id=entry_id.decode(),
        receiver=fields.get(b"receiver", b"").decode(),
        cause=fields.get(b"cause", b"").decode(),
        detail=fields.get(b"detail", b"").decode(errors="replace"),
        event=fields.get(b"event", b""),
    )
