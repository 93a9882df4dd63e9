"""``authority serve --demo`` and its private server as real processes: one server per data folder, never two on its
append-only file, and none left running once its service has ended, however it ended (SIGKILL, a closed terminal).

Every wait polls up to ``WAIT_S``: on a busy machine a step may be slow, so nothing here counts on how fast it is.
Whatever a test started is killed when it ends, passed or failed: its services, then any server in its folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import pytest
import redis

from authority.demo_server import SERVER_FOLDER, URL_FILE
from authority.embedded import EmbeddedRedis, free_port
from tests.helpers import HEALTHZ, READYZ

CLI = [str(Path(sys.executable).with_name("authority"))]
ENV = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}  # the defaults: `.authority/` here
WAIT_S = 30.0

T = TypeVar("T")


def eventually(check: Callable[[], T | None], what: str) -> T:
    """The first true value ``check`` returns, polled for up to ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while True:
        if value := check():
            return value
        assert time.monotonic() < deadline, f"{what}: not within {WAIT_S} s"
        time.sleep(0.05)


def servers_in(folder: Path) -> list[psutil.Process]:
    """The live processes working in ``folder``. A Valkey server works in its ``--dir``, and this is how to find
    one: its command line does not show ``--dir`` (the server rewrites its process title)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == folder.resolve():
                found.append(process)
        except psutil.Error:  # gone meanwhile, or not ours to look at
            pass
    return found


@dataclass
class Service:
    """One ``authority serve --demo`` process; its stderr goes to ``log``."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_until(self, check: Callable[[], T | None], what: str) -> T:
        """``eventually``, failing at once with the service's stderr if it exits first."""

        def alive_and(then: Callable[[], T | None]) -> T | None:
            if self.process.poll() is not None:
                raise AssertionError(f"serve --demo exited with {self.process.returncode}: {self.stderr()}")
            return then()

        return eventually(lambda: alive_and(check), what)

    def wait_until_ready(self) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}{READYZ}", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        self.wait_until(ready, f"{self.url}{READYZ} answering 200")


@dataclass
class Folder:
    """A working folder for ``serve --demo`` (it keeps ``.authority/`` and ``keys/`` there) and what ran in it."""

    path: Path
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.path / ".authority"

    def serve(self) -> Service:
        port, log = free_port(), self.path / f"serve-{len(self.started)}.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [*CLI, "serve", "--demo", "--port", str(port)],
                cwd=self.path,
                env=ENV,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        self.started.append(process)
        return Service(process, port, log)

    def servers(self) -> list[psutil.Process]:
        return servers_in(self.data / SERVER_FOLDER)

    def the_server_of(self, service: Service) -> psutil.Process:
        """The one server on this folder, which must be ``service``'s own."""
        servers = self.servers()
        assert [s.ppid() for s in servers] == [service.process.pid], servers
        return servers[0]

    def server_url(self) -> str:
        return (self.data / URL_FILE).read_text()

    def kill_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
                process.wait()
        servers = self.servers()
        for server in servers:
            server.kill()
        psutil.wait_procs(servers, timeout=WAIT_S)


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Folder]:
    work = Folder(tmp_path)
    try:
        yield work
    finally:
        work.kill_all()


@pytest.mark.skipif(sys.platform != "linux", reason="Linux is where the kernel stops a child when its parent dies")
def test_a_killed_service_takes_its_server_with_it(folder: Folder) -> None:
    first = folder.serve()
    first.wait_until_ready()
    folder.the_server_of(first)
    with redis.Redis.from_url(folder.server_url()) as server:
        server.set("kept", "yes")

    first.process.kill()  # SIGKILL: no handler runs, nothing of the service's own stops the server
    first.process.wait(WAIT_S)
    eventually(lambda: not folder.servers(), "the killed service's server stopping")

    second = folder.serve()  # the folder's lock went with the killed process
    second.wait_until_ready()
    folder.the_server_of(second)
    assert "leftover" not in second.stderr()
    with redis.Redis.from_url(folder.server_url()) as server:
        assert server.get("kept") == b"yes"  # stopped cleanly: its append-only file was flushed


def test_a_leftover_server_is_stopped_before_a_new_one_starts(folder: Folder) -> None:
    """Where the kernel does not stop it (another system; a service killed in its first milliseconds), a server
    outlives its service. The next start finds it through the pointer file, stops it, then starts its own."""
    leftover = EmbeddedRedis(folder.data / SERVER_FOLDER).start()  # what a killed service leaves, with the pointer
    assert leftover.process is not None
    try:
        (folder.data / URL_FILE).write_text(leftover.url)
        with redis.Redis.from_url(leftover.url) as server:
            server.set("kept", "yes")

        service = folder.serve()
        service.wait_until_ready()
        assert leftover.process.wait(WAIT_S) == 0  # shut down, not killed
        assert f"stopping a leftover private server (pid {leftover.process.pid}, {leftover.url})" in service.stderr()
        folder.the_server_of(service)
        with redis.Redis.from_url(folder.server_url()) as server:
            assert server.get("kept") == b"yes"
    finally:
        leftover.stop()


def test_a_hang_up_stops_the_service_and_its_server(folder: Folder) -> None:
    """A closed terminal sends SIGHUP: the service exits as on SIGTERM, and stops its server."""
    service = folder.serve()
    service.wait_until_ready()
    server = folder.the_server_of(service)

    service.process.send_signal(signal.SIGHUP)
    assert service.process.wait(WAIT_S) == 0
    assert not server.is_running()  # the service waited for it
    assert not folder.servers()
    assert "Traceback" not in service.stderr()
    done = subprocess.run(
        [*CLI, "keys", "--demo", "list"],
        cwd=folder.path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 2
    assert "no demo server is running here" in done.stderr


def test_a_second_service_on_the_folder_refuses_in_one_line(folder: Folder) -> None:
    first = folder.serve()
    first.wait_until_ready()

    second = folder.serve()
    assert second.process.wait(WAIT_S) == 2
    assert second.stderr().splitlines() == [
        f"authority: another `authority serve --demo` (pid {first.process.pid}) is using .authority/: stop it, or "
        "set AUTHORITY_DATA_DIR to another folder"
    ]
    assert httpx.get(f"{first.url}{READYZ}", timeout=WAIT_S).status_code == 200
    folder.the_server_of(first)


def test_the_service_says_where_it_listens_once_it_does(folder: Folder) -> None:
    service = folder.serve()
    said = service.wait_until(
        lambda: re.search(r"^authority: listening on (\S+) \(demo\)$", service.stderr(), re.MULTILINE),
        "the line saying where it listens",
    )
    assert said.group(1) == service.url
    assert httpx.get(f"{service.url}{HEALTHZ}", timeout=WAIT_S).status_code == 200  # said once it listens: no retry
