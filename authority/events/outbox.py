"""The outbox: what a state change writes with itself — its audit entry and its security events — chosen by the
change's own outcome, in the same Redis step as the change.

**One server** (plain, TLS, unix socket, Sentinel's primary): the state-change script (``replay``: issue, consume,
revoke) writes them itself (``RECORD``, below). The change, its audit entry and its events are one atomic script,
replicated as one unit, so the ``WAIT`` that follows it on its connection (``AUTHORITY_REDIS_MIN_REPLICAS``)
covers all three; a process killed at any moment leaves all of them or none, and the answer is sent only after.

**Cluster**: a script touches one slot, and a token's key and the streams live in others. There the script makes
the change and returns its outcome, and the records follow in a second round trip, before anything is answered:
one small script on the streams' slot (the outbox is hash-tagged onto the audit stream's slot: the audit entry and
the events are written together, all or none, there too), confirmed by its own ``WAIT`` when the change is (an
exchange, a revocation). What Cluster gives up: a process killed between the two round trips (a fraction of a
millisecond) leaves the change without its records. Nothing was handed out then (no access token, no answer), but
a replay's revocation would go unannounced; the JSON log line is lost with the process too. And a replay racing
its own exchange may put the revocation on the outbox before the start. One server has neither.

Events are written only when receivers are configured: an outbox nobody reads would only fill.
"""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from authority.audit import AuditLog, Entry
from authority.connection import confirmed
from authority.events.set import Event
from authority.refusals import Unavailable

# A Lua function for the state-change scripts: write the records of ``outcome`` (an audit line and events, from the
# last ARGV, JSON: {"maxlen": [audit, outbox], "by": {outcome: [line, event...]}}) to KEYS[at] (the audit stream)
# and KEYS[at + 1] (the outbox). With fewer keys (Cluster: the caller writes them after), it writes nothing.
RECORD = """
local function record(outcome, at)
  if #KEYS < at then return end
  local records = cjson.decode(ARGV[#ARGV])
  local chosen = records.by[outcome]
  if not chosen then return end
  for i, body in ipairs(chosen) do
    if i == 1 then
      if body ~= '' then redis.call('XADD', KEYS[at], 'MAXLEN', '~', records.maxlen[1], '*', 'event', body) end
    elseif KEYS[at + 1] then
      redis.call('XADD', KEYS[at + 1], 'MAXLEN', '~', records.maxlen[2], '*', 'event', body)
    end
  end
end
"""
# The records alone: a key retirement (its state is the key store), or a Cluster change's second round trip.
_WRITE = RECORD + "record(ARGV[1], 1)\nreturn 1"
_event_encoder = msgspec.json.Encoder()


def outbox_stream(audit_stream: str) -> str:
    """``<prefix>events{<prefix>audit}``: the braces are a Cluster hash tag putting it on the audit stream's slot."""
    return f"{audit_stream.removesuffix('audit')}events{{{audit_stream}}}"


class Records:
    """The records of one state change, by outcome: which audit entry and which events each outcome writes."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._by: dict[str, tuple[Entry | None, tuple[Event, ...]]] = {}

    def on(self, outcome: str, entry: Entry | None, *events: Event) -> Records:
        self._by[outcome] = (entry, events if self._outbox.events else ())
        return self

    @property
    def keys(self) -> list[str]:
        """The streams a script writes them to, after its own keys: the audit stream, and the outbox if used."""
        return self._outbox.streams

    def arg(self) -> bytes:
        """The last ARGV of a script that writes them (``RECORD``)."""
        by = {
            outcome: [entry.line.decode() if entry else "", *(_event_encoder.encode(e).decode() for e in events)]
            for outcome, (entry, events) in self._by.items()
        }
        return msgspec.json.encode({"maxlen": [self._outbox.audit_maxlen, self._outbox.maxlen], "by": by})

    async def follow(self, outcome: str, *, confirm: bool) -> None:
        """Cluster: write the records of ``outcome`` now, after the script that made the change (confirmed by
        replicas as the change was, if it was)."""
        if outcome in self._by:
            await self._outbox.write(self, outcome, confirm=confirm)

    def written(self, outcome: str) -> None:
        """The records of ``outcome`` are on their streams: count and log the audit entry (the service's JSON line
        of last resort), and take the write as a sign that Redis answers."""
        entry, _ = self._by.get(outcome, (None, ()))
        if entry is not None:
            self._outbox.audit.recorded(entry)
        self._outbox.audit.outages.recovered()


class Outbox:
    """``events``: whether receivers are configured (else no event is written). ``maxlen``: the outbox stream's cap,
    a safety net above every receiver's own backlog bound, which the deliverer enforces and counts. With
    ``min_replicas``, records written on their own round trip wait for that many replicas too."""

    def __init__(
        self,
        redis: Redis,
        audit: AuditLog,
        *,
        events: bool,
        maxlen: int,
        audit_maxlen: int,
        min_replicas: int = 0,
        replica_timeout_ms: int = 200,
    ) -> None:
        self._redis = redis
        self._write = redis.register_script(_WRITE)
        self.audit = audit
        self.events = events
        self.stream = outbox_stream(audit.stream)
        self.maxlen = maxlen
        self.audit_maxlen = audit_maxlen
        self.streams = [audit.stream, self.stream] if events else [audit.stream]
        self._min_replicas = min_replicas
        self._replica_timeout_ms = replica_timeout_ms

    def records(self) -> Records:
        return Records(self)

    async def write(self, records: Records, outcome: str, *, confirm: bool = False) -> None:
        """The records of ``outcome``, on their own: one script on the streams' slot; with ``confirm``, and
        ``min_replicas``, confirmed by that many replicas."""
        if not (confirm and self._min_replicas):
            await self._write(keys=self.streams, args=[outcome, records.arg()])
            return
        command = ("EVAL", _WRITE, len(self.streams), *self.streams, outcome, records.arg())
        _, acknowledged = await confirmed(
            self._redis, self.audit.stream, command, self._min_replicas, self._replica_timeout_ms
        )
        if acknowledged < self._min_replicas:
            raise Unavailable(
                f"only {acknowledged} of {self._min_replicas} replicas confirmed the audit entry in time; "
                "nothing was handed out"
            )

    async def publish(self, entry: Entry, *events: Event) -> None:
        """Record what changed outside Redis (a key retired in the key store): its entry and events, together. The
        change is made already, so its JSON log line is written first: if the streams cannot be written, the
        record of last resort still is (and the caller says so)."""
        self.audit.recorded(entry)
        await self.write(self.records().on("published", entry, *events), "published")
        self.audit.outages.recovered()
