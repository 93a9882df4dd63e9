"""Prometheus counters for what operators watch, derived from the audit events so the two never disagree.

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (the container does) so ``/metrics`` sums them:
each process then writes its counts to files of its own in that folder, and ``/metrics`` adds up every file there.
So the folder must hold one server's files and nothing else: a server sharing another's folder reports the other's
counts as its own, and files left by a previous run carry its counts into this one. A server therefore claims the
folder before it counts anything (``claim_folder``, called by ``authority.asgi``): the first process of a server
empties it, its other workers (and a worker respawned in place of a dead one) keep it, and a second server refuses
to start while the first runs.
"""

from __future__ import annotations

import fcntl
import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter, Gauge

from authority.settings import SettingsError

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
# In the folder besides prometheus_client's *.db files (the only ones /metrics reads): who owns it, and a lock that
# makes one claim at a time.
OWNER_FILE = "server.owner"
_CLAIM_LOCK = "server.lock"
_owner: list[int] = []  # the owner file, held open (and share-locked) as long as this process runs


def server_identity() -> str:
    """The server this process belongs to: its parent, the server's main process (granian's, uvicorn's or
    gunicorn's, which starts the workers; a respawned worker has the same), told apart from a later process with
    the same pid by its start time, and from another container's by the host name. The process group is part of
    it for servers of one process, whose parent is whatever started them: systemd and an interactive shell start
    each in a group of its own, so two of them under one parent still differ."""
    parent = os.getppid()
    return f"host {socket.gethostname()}, pid {parent} started {_start_time(parent)}, group {os.getpgid(0)}"


def _start_time(pid: int) -> str:
    """When process ``pid`` started, in clock ticks since boot (Linux); "?" where /proc does not say."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rpartition(")")[2].split()[19]  # field 22, counting from the pid; the name in () may hold spaces


def claim_folder() -> None:
    """Make ``PROMETHEUS_MULTIPROC_DIR`` this server's, before the first count; nothing to do when it is unset.

    Every process of the owning server holds a shared lock on the owner file while it runs, so "some process of
    the owner is alive" is a lock that cannot be taken, whatever the pids (reused, or in another pid namespace).
    A process of the owner keeps the folder. Anyone else finds it either held (a live server: SettingsError, one
    line naming the variable) or free (the owner is gone): then it empties the folder of counter files and writes
    itself in as the owner. Claims are made one at a time, under an exclusive lock of their own.
    """
    folder = os.environ.get(MULTIPROC_DIR)
    if not folder or _owner:
        return
    path = Path(folder)
    me = server_identity()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with (path / _CLAIM_LOCK).open("a") as claiming:
            fcntl.flock(claiming, fcntl.LOCK_EX)  # released when closed
            owner_file = os.open(path / OWNER_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            owner = os.read(owner_file, 4096).decode(errors="replace").strip()
            if owner != me:
                try:
                    fcntl.flock(owner_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(owner_file)
                    raise SettingsError(
                        f"{MULTIPROC_DIR}: {folder} is in use by another running server ({owner}): give each server"
                        " (each replica) a folder of its own"
                    ) from None
                for counts in path.glob("*.db"):  # a previous run's: its counts are not ours
                    counts.unlink(missing_ok=True)
                os.ftruncate(owner_file, 0)
                os.pwrite(owner_file, f"{me}\n".encode(), 0)
            fcntl.flock(owner_file, fcntl.LOCK_SH)
            _owner.append(owner_file)
    except OSError as exc:
        raise SettingsError(f"{MULTIPROC_DIR}: {folder}: {exc.strerror or exc}") from None
    _counters()  # the counters without labels are in /metrics, at 0, from the start


@dataclass(frozen=True)
class _Counters:
    mints: Counter
    exchanges: Counter
    replays: Counter
    denials: Counter
    revocations: Counter
    key_events: Counter
    events: Counter
    event_lag: Gauge


@functools.cache
def _counters() -> _Counters:
    """Made on first use, not at import: in multiprocess mode a counter writes a file in the folder, which must be
    claimed first (importing this module, as the command line does, writes nothing there)."""
    if folder := os.environ.get(MULTIPROC_DIR):  # prometheus_client writes there but makes no folder
        os.makedirs(folder, exist_ok=True)
    return _Counters(
        mints=Counter("authority_mints_total", "Impersonation tokens minted", ["role"]),
        exchanges=Counter("authority_exchanges_total", "Impersonation tokens exchanged for a session"),
        replays=Counter("authority_replays_total", "Second uses of an impersonation token (refused; session revoked)"),
        denials=Counter("authority_denials_total", "Refused requests, by refusal code", ["reason"]),
        revocations=Counter("authority_revocations_total", "Sessions revoked on request"),
        key_events=Counter(
            "authority_key_events_total", "Key lifecycle changes (created, rescheduled, revoked, removed)", ["event"]
        ),
        events=Counter(
            "authority_events_total",
            "Security events by receiver and outcome: delivered; refused (an RFC 8935 400, dead-lettered); expired "
            "(past AUTHORITY_EVENT_MAX_AGE_S, dead-lettered); retried (an attempt failed); dropped (over "
            "AUTHORITY_EVENT_BACKLOG)",
            ["receiver", "outcome"],
        ),
        # Every process measures it (the one delivering and those standing by): the most recent value is the truth.
        event_lag=Gauge(
            "authority_event_lag_seconds",
            "Age of the oldest security event not yet delivered to the receiver (0: none waiting)",
            ["receiver"],
            multiprocess_mode="mostrecent",
        ),
    )


def count(event: str, outcome: str, role: str | None) -> None:
    counters = _counters()
    if event == "mint":
        counters.mints.labels(role=role or "").inc()
    elif event == "exchange":
        counters.exchanges.inc()
    elif event == "refusal":
        counters.denials.labels(reason=outcome).inc()
        if outcome == "token-replayed":
            counters.replays.inc()
    elif event == "revocation":
        counters.revocations.inc()
    elif event == "key":
        counters.key_events.labels(event=outcome).inc()


def event(receiver: str, outcome: str, n: int = 1) -> None:
    _counters().events.labels(receiver=receiver, outcome=outcome).inc(n)


def event_lag(receiver: str, seconds: float) -> None:
    _counters().event_lag.labels(receiver=receiver).set(seconds)
