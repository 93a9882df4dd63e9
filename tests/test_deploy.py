"""The container files, checked without a Docker engine (there is none here): hadolint on the Dockerfile, the
Compose Specification's JSON schema on docker-compose.yml, the properties production relies on, and the image's
own start command run for real against a real Redis."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from authority import demo
from authority.embedded import free_port
from authority.settings import load
from tests.helpers import EXCHANGE, HEALTHZ, METRICS, READYZ, ROOT, STAFF, wait_until_ready

DOCKERFILE = (ROOT / "Dockerfile").read_text()
BIN = Path(sys.executable).parent


def instruction(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(f"{name} ")]


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_hadolint_finds_nothing() -> None:
    done = subprocess.run([str(BIN / "hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    command = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_image_runs_unprivileged_with_a_health_check_and_a_keys_volume() -> None:
    assert instruction("FROM")[0].startswith("python:3.11-slim")
    assert instruction("FROM")[0].endswith(" AS build")
    assert len(instruction("FROM")) == 2  # multi-stage: the build tools stay behind
    assert instruction("USER") == ["10001:10001"]  # numeric: a runtime can check it is not root
    assert instruction("VOLUME") == ['["/keys"]']
    assert HEALTHZ in instruction("HEALTHCHECK")[0]
    assert "AUTHORITY_KEYS_DIR=/keys" in DOCKERFILE
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/" in DOCKERFILE  # the only writes besides /keys go to the tmpfs


def test_compose_runs_two_replicas_sharing_keys_through_redis_with_aof() -> None:
    services = compose()["services"]
    replicas = [name for name, service in services.items() if service.get("build") == "."]
    assert len(replicas) == 2
    for name in replicas:
        service = services[name]
        assert service["environment"]["AUTHORITY_KEY_STORE"] == "redis"
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]  # noqa: S108 - the container's tmpfs, not a file of ours
        assert service["depends_on"]["valkey"]["condition"] == "service_healthy"
    valkey = services["valkey"]
    assert valkey["command"][valkey["command"].index("--appendonly") + 1] == "yes"
    assert valkey["command"][valkey["command"].index("--appendfsync") + 1] == "always"
    assert "healthcheck" in valkey


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()]
    return {k: v for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}


def test_env_example_is_a_valid_configuration() -> None:
    environment = {**env_example(), **compose()["x-authority"]["environment"]}
    settings = load(environment)
    assert settings.key_store == "redis"
    assert settings.trusted_issuers


@dataclass
class Served:
    """The image's start command, running: its granian process, where it listens, its output (stdout + stderr)."""

    process: subprocess.Popen[bytes]
    port: int
    env: dict[str, str]
    portal: Path
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def bearer(self, sub: str) -> dict[str, str]:
        token = demo.dev_token(self.portal, role="operator", sub=sub, location="1")
        return {"Authorization": f"Bearer {token}"}

    def output(self) -> str:
        """granian's and the app's log lines, without the audit trail."""
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines if '"event":' not in line)[-4000:]


@contextmanager
def the_images_command(redis_url: str, tmp_path: Path, **settings: str) -> Iterator[Served]:
    """The CMD of the Dockerfile, as is but for its port, with production settings and the env the image sets
    (``settings``: more ``AUTHORITY_*`` variables), served until /readyz answers; stopped on exit."""
    command: list[str] = json.loads(instruction("CMD")[0])
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    portal = tmp_path / "portal"
    issuer = demo.trusted_demo_issuer(portal)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AUTHORITY_KEYS_DIR": str(tmp_path / "keys"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "AUTHORITY_REDIS_URL": redis_url,
        "AUTHORITY_REDIS_PREFIX": f"deploy{port}:",
        "AUTHORITY_ISSUER": f"http://127.0.0.1:{port}",
        "AUTHORITY_KEY_STORE": "redis",
        "AUTHORITY_KEY_PASSPHRASE": "deploy test passphrase",
        "AUTHORITY_DIRECTORY_FILE": str(ROOT / "authority" / "demo_directory.json"),
        "AUTHORITY_TRUSTED_ISSUERS": json.dumps(
            [{"issuer": issuer.issuer, "audiences": issuer.audiences, "jwks_file": issuer.jwks_file}]
        ),
        **{f"AUTHORITY_{name.upper()}": value for name, value in settings.items()},
    }
    # To a file, not a pipe: the audit trail goes to stderr, and a full pipe would stall the workers. granian logs
    # to stdout (a worker's traceback too).
    log = tmp_path / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT)
    served = Served(process, port, env, portal, log)
    try:
        try:
            wait_until_ready(f"{served.base}{READYZ}", process)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{served.output()}") from None
        yield served
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_the_images_start_command_serves_the_app(redis_url: str, tmp_path: Path) -> None:
    """The CMD of the Dockerfile serves: mint, exchange, the HEALTHCHECK command, /metrics summed over workers."""
    with the_images_command(redis_url, tmp_path) as served:
        minted = httpx.get(f"{served.base}{STAFF}", params={"coworkerId": 42}, headers=served.bearer("7"))
        assert minted.status_code == 200, minted.text
        exchanged = httpx.post(f"{served.base}{EXCHANGE}", json={"token": minted.json()["token"]})
        assert exchanged.status_code == 200
        healthcheck = json.loads(instruction("HEALTHCHECK")[0].split(" CMD ", 1)[1].replace("8000", str(served.port)))
        assert subprocess.run(healthcheck, env=served.env, check=False, timeout=10).returncode == 0
        metrics = httpx.get(f"{served.base}{METRICS}").text
        assert re.search(r'^authority_mints_total\{role="operator"\} 1\.0$', metrics, re.MULTILINE), metrics


@dataclass
class Call:
    """One request of the load: when it was sent and ended, and its HTTP status (None: no HTTP answer)."""

    kind: str
    token: str
    started: float
    ended: float
    status: int | None
    error: str = ""
    port: int = 0  # the client's end of the connection that carried it (when answered)


def timed(kind: str, token: str, send: Callable[[], httpx.Response]) -> tuple[Call, httpx.Response | None]:
    started = time.monotonic()
    try:
        response = send()
    except httpx.TransportError as exc:
        return Call(kind, token, started, time.monotonic(), None, repr(exc)), None
    try:
        port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
    except OSError:  # the connection is already closed: which one it was does not matter then
        port = 0
    return Call(kind, token, started, time.monotonic(), response.status_code, port=port), response


def mint_and_exchange(served: Served, sub: str, calls: list[Call], stop: threading.Event, until: float) -> None:
    """One client of the load, on one keep-alive connection as a gateway would: mint, then exchange the token,
    again if that got no HTTP answer (the token may or may not have been consumed: at most one 200 is allowed)."""
    headers = served.bearer(sub)
    with httpx.Client(base_url=served.base, timeout=5) as client:
        while not stop.is_set() and time.monotonic() < until and len(calls) < 5000:
            call, minted = timed("mint", "", lambda: client.get(STAFF, params={"coworkerId": 42}, headers=headers))
            calls.append(call)
            if minted is None or minted.status_code != 200:
                stop.wait(0.01)  # no busy loop on a refused connection
                continue
            token = minted.json()["token"]
            calls[-1].token = token
            for _ in range(3):
                call, _ = timed("exchange", token, partial(client.post, EXCHANGE, json={"token": token}))
                calls.append(call)
                if call.status is not None:
                    break
                time.sleep(0.01)


def poll(what: str, check: Callable[[], Any], seconds: float, served: Served) -> Any:
    """``check()`` until it returns something truthy; fail after ``seconds``, or as soon as granian exits."""
    deadline = time.monotonic() + seconds
    while True:
        if served.process.poll() is not None:
            raise AssertionError(f"granian exited ({served.process.returncode}) waiting for {what}\n{served.output()}")
        if result := check():
            return result
        assert time.monotonic() < deadline, f"no {what} within {seconds} s\n{served.output()}"
        time.sleep(0.005)


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def listens(worker: psutil.Process, port: int) -> bool:
    """Each granian worker binds its own listener (SO_REUSEPORT) once its app is loaded: then it takes connections."""
    return any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in worker.net_connections("tcp"))


def mint_and_exchange_on_a_new_connection(served: Served, worker: psutil.Process, tokens: list[str]) -> bool:
    """Mint and exchange (both must succeed) on a new connection; whether ``worker`` is the one holding it."""
    with httpx.Client(base_url=served.base, timeout=5) as client:
        minted = client.get(STAFF, params={"coworkerId": 42}, headers=served.bearer("2"))
        assert minted.status_code == 200, minted.text
        tokens.append(minted.json()["token"])
        exchanged = client.post(EXCHANGE, json={"token": tokens[-1]})
        assert exchanged.status_code == 200, exchanged.text
        port = exchanged.extensions["network_stream"].get_extra_info("client_addr")[1]
        return any(c.raddr and c.raddr.port == port for c in worker.net_connections("tcp"))


def test_a_killed_worker_is_replaced_while_the_other_keeps_serving(redis_url: str, tmp_path: Path) -> None:
    """kill -9 of one of the image's two workers under mint + exchange load: every request sent after the kill is
    answered (by the other worker alone, then by both), granian starts a replacement that serves, and no token is
    exchanged twice."""
    no_limits = {"mint_rate_per_actor": "1000000", "mint_rate_per_location": "1000000"}
    with the_images_command(redis_url, tmp_path, **no_limits) as served:
        granian = psutil.Process(served.process.pid)

        def two_listening_workers() -> list[psutil.Process]:
            children = granian.children()
            return children if len(children) == 2 and all(listens(c, served.port) for c in children) else []

        workers = poll("2 listening workers", two_listening_workers, 30, served)
        warmup: list[int] = []

        def mint_succeeds() -> bool:
            headers = served.bearer("1")
            warmup.append(httpx.get(f"{served.base}{STAFF}", params={"coworkerId": 42}, headers=headers).status_code)
            return warmup[-1] == 200

        # Before the kill only: a just-started worker can answer 503 "no active signing key" for a moment.
        poll("a first 200 from mint", mint_succeeds, 15, served)

        clients: list[list[Call]] = [[] for _ in range(4)]
        stop = threading.Event()
        until = time.monotonic() + 25
        crashes: list[BaseException] = []

        def run_client(sub: str, calls: list[Call]) -> None:
            try:
                mint_and_exchange(served, sub, calls, stop, until)
            except BaseException as exc:
                crashes.append(exc)
                raise

        def answered(since: float, count: int) -> bool:
            assert not crashes, crashes
            return all(sum(c.status is not None and c.started >= since for c in calls) >= count for calls in clients)

        threads = [threading.Thread(target=run_client, args=(str(100 + n), calls)) for n, calls in enumerate(clients)]
        for thread in threads:
            thread.start()
        probes: list[str] = []
        try:
            poll("load", lambda: answered(0, 40), 15, served)
            # The victim: the worker holding the most client connections (each client keeps one, as a gateway).
            held = {
                worker.pid: {
                    c.raddr.port
                    for c in worker.net_connections("tcp")
                    if c.status == psutil.CONN_ESTABLISHED and c.laddr.port == served.port
                }
                for worker in workers
            }
            victim, survivor = sorted(workers, key=lambda worker: len(held[worker.pid]), reverse=True)
            killed = time.monotonic()
            victim.kill()  # SIGKILL
            poll("death of the killed worker", lambda: gone(victim), 5, served)
            dead = time.monotonic()
            old = {worker.pid for worker in workers}
            replacement = poll(
                "replacement worker", lambda: [c for c in granian.children() if c.pid not in old], 15, served
            )[0]
            respawned = time.monotonic()
            poll("replacement listening", lambda: listens(replacement, served.port), 15, served)
            listening = time.monotonic()
            poll(
                "mint + exchange served by the replacement",
                lambda: mint_and_exchange_on_a_new_connection(served, replacement, probes),
                10,
                served,
            )
            poll("load after the respawn", lambda: answered(listening, 20), 15, served)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        assert not any(thread.is_alive() for thread in threads)
        assert not crashes, crashes
        assert served.process.poll() is None, served.output()
        assert {c.pid for c in granian.children()} == {survivor.pid, replacement.pid}

        calls = sorted((c for cs in clients for c in cs), key=lambda c: c.started)
        unanswered = [c for c in calls if c.status is None]
        # SIGKILL loses the requests in the killed worker's hands (no process is left to answer them), nothing else:
        # no failure before the kill, and at most one per client connection the killed worker held, no other.
        assert all(c.ended >= killed for c in unanswered), unanswered
        for calls_of_one_client in clients:
            its_connections = {c.port for c in calls_of_one_client if c.status is not None and c.ended < killed}
            on_the_victim = bool(its_connections & held[victim.pid])
            assert sum(c.status is None for c in calls_of_one_client) <= on_the_victim, calls_of_one_client
        lost = {c.token for c in unanswered if c.kind == "exchange"}
        # Every answer to a request sent after the kill is a success (but a retried exchange of a token whose
        # first exchange got no answer: refused if the dead worker had consumed it).
        after = [c for c in calls if c.started >= dead]
        refused_after = [c for c in after if c.status not in (200, None) and c.token not in lost]
        assert not refused_after, refused_after[:5]

        # Single use held through the crash: every minted token exchanged exactly once (at most once if its first
        # exchange got no answer: the dead worker may have consumed it), and none is exchangeable again now.
        minted = [c.token for c in calls if c.kind == "mint" and c.status == 200]
        exchanges = collections.Counter(c.token for c in calls if c.kind == "exchange" and c.status == 200)
        assert all(exchanges[token] == 1 for token in minted if token not in lost)
        assert all(exchanges[token] <= 1 for token in lost)
        with httpx.Client(base_url=served.base, timeout=5) as client:
            replays = collections.Counter(
                client.post(EXCHANGE, json={"token": token}).status_code for token in minted + probes
            )
        assert set(replays) <= set(range(400, 500)), replays

        # Between the death and the replacement's listener, the other worker alone answered.
        alone = [c for c in after if c.status is not None and c.ended <= listening]
        assert alone
        moments = {"dead": dead, "respawned": respawned, "listening": listening}
        timeline = {name: round((moment - killed) * 1000) for name, moment in moments.items()}
        failures = [(c.kind, round((c.started - killed) * 1000), round((c.ended - killed) * 1000)) for c in unanswered]
        print(  # the figures, with pytest -s
            f"\nwarm-up mint statuses {warmup}; {len(calls)} requests, {len(minted)} tokens; {len(after)} requests sent"
            f" after the kill, {len(alone)} answered by the other worker alone; ms after the kill: {timeline}; "
            f"unanswered (kind, sent, failed, ms): {failures} {[c.error for c in unanswered]}, their tokens then "
            f"exchanged {sum(exchanges[t] for t in lost)} times; client connections on the killed worker "
            f"{len(held[victim.pid])}, on the other {len(held[survivor.pid])}; {len(probes)} new connection(s) to "
            f"reach the replacement; replay of every token: {dict(replays)}"
        )


def test_a_bad_configuration_stops_the_images_command_with_one_line_per_mistake(tmp_path: Path) -> None:
    """Under the image's exact command (granian, 2 workers): every worker says what is wrong in one line, with no
    traceback, and the server exits non-zero rather than serving, or restarting workers for ever."""
    command = json.loads(instruction("CMD")[0])
    command[command.index("--port") + 1] = str(free_port())
    command[command.index("--host") + 1] = "127.0.0.1"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AUTHORITY_PORT": "eighty",
        "AUTHORITY_KEY_ALG": "HS256",
    }
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output
    assert "authority: AUTHORITY_PORT: Expected `int`, got `str`" in output
    assert "authority: AUTHORITY_KEY_ALG: Invalid enum value 'HS256' (one of EdDSA, ES256, RS256)" in output, output
