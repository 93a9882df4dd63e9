"""The private server of ``serve --demo``: one per data folder, never two on its append-only file, none left behind.

- The folder is locked (``serve.lock``) for the life of ``serve --demo``: a second one there stops at once.
- The pointer (``redis.url``) is written under the lock *before* the server starts and removed after it stopped,
  so it names the one server that may run on the folder whenever one may. A ``serve`` killed before it could stop
  its server leaves both behind; the next start finds the server through the pointer and stops it first. Stopped,
  not reused: one this process starts dies with it (``EmbeddedRedis``), a leftover would not.
- On Linux the kernel stops the server when its ``serve`` dies, SIGKILL included, so a leftover is met only
  elsewhere, or after a start killed in its first milliseconds.

``keys --demo`` and ``audit tail --demo`` find the server through the same pointer (``running_url``).
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

import redis

from authority.embedded import EmbeddedRedis
from authority.settings import SettingsError

LOCK_FILE = "serve.lock"  # held (flock) by the running `serve --demo`, and holds its pid
URL_FILE = "redis.url"  # the URL of the folder's server
SERVER_FOLDER = "valkey"  # the server's own files: its append-only file, its log
STOP_WAIT_S = 10.0  # how long a leftover server may take to stop


@contextmanager
def private_server(data_dir: Path, out: TextIO) -> Iterator[EmbeddedRedis]:
    """A server of this process's own on ``data_dir``, which it says on ``out``; it stops when the block ends."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with _locked(data_dir):
        folder, pointer = data_dir / SERVER_FOLDER, data_dir / URL_FILE
        _stop_leftover(pointer, folder, out)
        server = EmbeddedRedis(folder)
        pointer.write_text(server.url)
        try:
            with server:
                print(f"demo: private Redis-compatible server at {server.url}", file=out)
                yield server
        finally:
            pointer.unlink(missing_ok=True)


def running_url(data_dir: Path) -> str:
    """The URL of the server a running ``serve --demo`` keeps on ``data_dir``; a one-line error if none answers."""
    pointer = data_dir / URL_FILE
    if not pointer.exists():
        raise SettingsError(f"no demo server is running here ({pointer} is missing)")
    url = pointer.read_text().strip()
    try:  # a pointer left by a server that has stopped (killed, machine restarted) is no server
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1) as server:
            server.ping()
    except (redis.RedisError, ValueError):
        raise SettingsError(
            f"no demo server is running here (the one {pointer} names, {url}, does not answer)"
        ) from None
    return url


@contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Hold ``data_dir`` for this process, or refuse at once, naming the process that holds it. The kernel lets go
    of the lock when its holder ends, however it ends: a killed ``serve`` never leaves the folder locked."""
    with (data_dir / LOCK_FILE).open("a+") as lock:  # not "w": truncating would erase the holder's pid
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "?"  # "?" only in the instant between its lock and its write
            raise SettingsError(
                f"another `authority serve --demo` (pid {holder}) is using {data_dir}/: stop it, or set "
                "AUTHORITY_DATA_DIR to another folder"
            ) from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        yield


def _stop_leftover(pointer: Path, folder: Path, out: TextIO) -> None:
    """Stop the server the pointer names if it runs on ``folder``: it is a leftover, since this process holds the
    folder's lock. SHUTDOWN flushes its append-only file before it closes its port; the new server starts after."""
    url = pointer.read_text().strip() if pointer.exists() else ""
    pid = _server_on(url, folder)
    if pid is None:
        return
    print(f"demo: stopping a leftover private server (pid {pid}, {url}) whose `serve --demo` died", file=out)
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        with redis.Redis.from_url(url, socket_timeout=STOP_WAIT_S) as server:
            server.shutdown()
    except redis.RedisError as exc:
        raise SettingsError(f"the leftover server on {folder}/ (pid {pid}) did not stop ({exc}): stop it") from None
    while _server_on(url, folder) is not None:
        if time.monotonic() > deadline:
            raise SettingsError(f"the leftover server on {folder}/ (pid {pid}) did not stop: stop it")
        time.sleep(0.05)


def _server_on(url: str, folder: Path) -> int | None:
    """The pid of the server at ``url`` if it keeps its files in ``folder``; ``None`` if nothing there answers, or
    something else does (the port of a server long gone may be anybody's now)."""
    if not url:
        return None
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=STOP_WAIT_S) as server:
            if server.config_get("dir").get("dir") != str(folder.resolve()):
                return None
            pid: int = server.info("server")["process_id"]
            return pid
    except (redis.RedisError, ValueError):
        return None
