"""The container files, checked without a Docker engine (there is none here): hadolint on the Dockerfile, the
Compose Specification's JSON schema on docker-compose.yml, the properties production relies on, and the image's
own start command run for real against a real Redis."""

from __future__ import annotations

import collections
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
import pytest
import redis
import yaml
from redis.backoff import NoBackoff
from redis.retry import Retry

from authority.embedded import free_port, server_binary
from authority.settings import load
from tests.helpers import (
    BIN,
    DOCKERFILE,
    EXCHANGE,
    HEALTHZ,
    METRICS,
    READYZ,
    ROOT,
    STAFF,
    Served,
    instruction,
    poll,
    the_images_cmd,
    the_images_command,
)


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


def replicas() -> dict[str, dict[str, Any]]:
    """The compose file's authority services (the ones built from this repository)."""
    return {name: service for name, service in compose()["services"].items() if service.get("build") == "."}


def test_compose_runs_two_replicas_sharing_keys_through_redis_with_aof() -> None:
    assert len(replicas()) == 2
    for service in replicas().values():
        assert service["environment"]["AUTHORITY_KEY_STORE"] == "redis"
        assert service["read_only"] is True
        assert "/tmp" in service["tmpfs"]  # noqa: S108 - the container's tmpfs, not a file of ours
        assert service["depends_on"]["valkey"]["condition"] == "service_healthy"
    valkey = compose()["services"]["valkey"]
    assert option(valkey["command"], "--appendonly") == "yes"
    assert option(valkey["command"], "--appendfsync") == "always"
    assert "healthcheck" in valkey


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


class Refused(Exception):
    """What compose does when a ``${NAME:?message}`` is unset or empty: it refuses to start, saying ``message``."""


def interpolated(value: Any, env: dict[str, str]) -> Any:
    """``value`` (the compose file or a part of it) with ``${NAME}``, ``${NAME:-default}`` and ``${NAME:?message}``
    filled in from ``env``, as compose fills them in from .env."""
    if isinstance(value, dict):
        return {key: interpolated(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolated(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if env.get(name):
            return env[name]
        if operator == ":?":
            raise Refused(argument)
        return argument if operator == ":-" else ""

    return re.sub(r"\$\{(\w+)(?:(:[-?])([^}]*))?\}", one, value)


def test_compose_mounts_the_operators_configuration_folder_not_the_demo_directory() -> None:
    """Production data comes from a folder the operator provides, read-only; the demo directory is nowhere."""
    assert "demo_directory" not in (ROOT / "docker-compose.yml").read_text()
    for service in replicas().values():
        (mount,) = service["volumes"]
        assert mount["type"] == "bind"
        assert mount["source"] == "./config"
        assert mount["read_only"] is True
        assert mount["bind"]["create_host_path"] is False  # a missing folder stops `up`: no start on an empty one
        assert service["environment"]["AUTHORITY_DIRECTORY_URL"] == "http://portal-adapter:8100"
        assert "AUTHORITY_DIRECTORY_FILE" not in service["environment"]
        assert service["depends_on"]["portal-adapter"] == {"condition": "service_healthy"}
    adapter = compose()["services"]["portal-adapter"]
    assert adapter["volumes"] == [mount]  # the same folder: config/directory.json
    assert "ports" not in adapter  # asked by the replicas only
    assert adapter["build"]["dockerfile"] == "examples/portal_adapter/Dockerfile"


def test_the_adapters_image_is_lint_clean_and_runs_what_the_readme_says() -> None:
    dockerfile = "examples/portal_adapter/Dockerfile"
    done = subprocess.run([str(BIN / "hadolint"), dockerfile], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    text = (ROOT / dockerfile).read_text()
    assert "--require-hashes" in text
    assert '"-m", "examples.portal_adapter", "--file", "/etc/authority/directory.json"' in text
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!examples/" in ignored  # the build context carries the adapter


def test_compose_valkey_requires_a_password_and_never_evicts() -> None:
    """No start without VALKEY_PASSWORD; with it, Valkey requires it, every replica's URL carries it, the health
    check uses it; and a full Valkey refuses writes rather than evicting (the service then answers 503)."""
    without = {k: v for k, v in env_example().items() if k != "VALKEY_PASSWORD"}
    with pytest.raises(Refused, match="VALKEY_PASSWORD"):
        interpolated(compose(), without)
    password = "pw-" + "x" * 40
    services = interpolated(compose(), {**env_example(), "VALKEY_PASSWORD": password})["services"]
    valkey = services["valkey"]
    assert option(valkey["command"], "--requirepass") == password
    assert option(valkey["command"], "--maxmemory-policy") == "noeviction"
    assert re.fullmatch(r"[0-9]+[kmg]b", option(valkey["command"], "--maxmemory"))
    assert valkey["environment"]["REDISCLI_AUTH"] == password
    assert "PONG" in valkey["healthcheck"]["test"][-1]  # a NOAUTH reply (wrong password) is unhealthy
    for name in replicas():
        url = urlsplit(services[name]["environment"]["AUTHORITY_REDIS_URL"])
        assert (url.hostname, url.password) == ("valkey", password)


def test_compose_health_check_is_liveness_and_readiness_is_left_to_the_load_balancer() -> None:
    """The replicas keep the image's HEALTHCHECK, on /healthz: a Redis outage makes every replica unready at once,
    and an orchestrator restarting unhealthy containers must not restart them all for it."""
    for service in replicas().values():
        assert "healthcheck" not in service
    healthcheck = instruction("HEALTHCHECK")[0]
    assert HEALTHZ in healthcheck
    assert READYZ not in healthcheck


def test_the_compose_valkey_command_requires_its_password_and_its_health_check_uses_it(tmp_path: Path) -> None:
    """Valkey's command from the compose file, run by the Valkey binary the suite uses (on another port): a client
    without the password is refused, the service's URL connects, and the health check passes only with it."""
    password = "pw-" + "y" * 40
    env = {**env_example(), "VALKEY_PASSWORD": password}
    services = interpolated(compose(), env)["services"]
    command = services["valkey"]["command"]
    port = free_port()
    server = subprocess.Popen(
        [server_binary(), *command[1:], "--port", str(port), "--bind", "127.0.0.1", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = services["authority-1"]["environment"]["AUTHORITY_REDIS_URL"].replace("valkey:6379", f"127.0.0.1:{port}")
    cli = Path(server_binary()).with_name("valkey-cli")
    assert cli.exists(), cli
    healthcheck = services["valkey"]["healthcheck"]["test"][1].replace("valkey-cli", f"{cli} -p {port}")

    def health(auth: str | None) -> int:
        check_env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
        if auth is not None:
            check_env["REDISCLI_AUTH"] = auth
        return subprocess.run(["/bin/sh", "-c", healthcheck], env=check_env, check=False, timeout=10).returncode

    try:
        with redis.Redis.from_url(url, socket_timeout=2) as client:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert server.poll() is None, "valkey-server exited"
                    assert time.monotonic() < deadline, "valkey-server did not answer"
                    time.sleep(0.05)
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            assert int(client.config_get("maxmemory")["maxmemory"]) > 0
        no_retry = Retry(NoBackoff(), 0)  # redis-py retries a refused AUTH with backoff otherwise: seconds
        with redis.Redis(port=port, retry=no_retry) as stranger, pytest.raises(redis.AuthenticationError):
            stranger.ping()
        assert health(password) == 0
        assert health(None) != 0
        assert health("wrong") != 0
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_the_systemd_recipe_runs_the_images_command_with_a_metrics_folder_per_instance() -> None:
    """docs/operations.md's unit runs what the image runs (the instance name is the port), and gives each instance
    its own PROMETHEUS_MULTIPROC_DIR in a runtime directory of its own, which systemd empties at each start."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    unit = guide.split("`/etc/systemd/system/authority@.service`:\n```ini\n", 1)[1].split("```", 1)[0]
    settings = [line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")]
    (exec_start,) = [value for key, value in settings if key == "ExecStart"]
    command = exec_start.split()
    image: list[str] = json.loads(instruction("CMD")[0])
    image[image.index("--host") + 1], image[image.index("--port") + 1] = "127.0.0.1", "%i"
    assert command[0] == f"/opt/authority/venv/bin/{image[0]}"
    assert command[1:] == image[1:]
    assert ["RuntimeDirectory", "authority-%i"] in settings
    assert ["Environment", "PROMETHEUS_MULTIPROC_DIR=%t/authority-%i/prometheus"] in settings
    assert ["ProtectSystem", "strict"] in settings


def test_the_systemd_recipes_environment_file_is_a_complete_configuration() -> None:
    """docs/operations.md's authority.env, with the unit's AUTHORITY_KEYS_DIR, is what a service starts with."""
    guide = (ROOT / "docs" / "operations.md").read_text()
    block = guide.split("`/etc/authority/authority.env`, complete for this recipe", 1)[1].split("```sh\n", 1)[1]
    lines = block.split("```", 1)[0].splitlines()
    environ = dict(line.split("=", 1) for line in lines)
    settings = load({**environ, "AUTHORITY_KEYS_DIR": "/var/lib/authority/keys"}, serving=True)
    assert (settings.key_store, settings.directory_file) == ("redis", "/etc/authority/directory.json")
    assert settings.issuer == "https://authority.example.com"
    assert settings.trusted_issuers


def test_the_errors_the_guide_quotes_are_the_ones_the_code_says() -> None:
    """A quoted message the code no longer says sends an operator searching for the wrong thing."""
    guide = re.sub(r"\s+", " ", (ROOT / "docs" / "operations.md").read_text())
    code = "".join(path.read_text() for path in (ROOT / "authority").rglob("*.py"))
    for fragment in [
        "does not exist (for a test issuer, ",
        "cannot decrypt private key (wrong AUTHORITY_KEY_PASSPHRASE?)",
        "warning: both key stores hold keys: ",
        "must be https: plain http only on a loopback address",
        "is required outside --demo: ",
        "key schedule not run at start (",
        "key store: {store} (AUTHORITY_KEY_STORE={config.key_store})",
        'f"redis hash {self._key}"',
    ]:
        assert fragment in code, fragment
    (granian,) = (BIN.parent / "lib").glob("python3*/site-packages/granian/server/common.py")
    assert "Worker crash loop detected, exiting" in granian.read_text()
    assert "key store: redis hash authority:keys (AUTHORITY_KEY_STORE=redis)" in guide  # the recipe's store
    assert "`authority: AUTHORITY_X: ...`" not in guide
    assert "jwks_file: [Errno 2]" not in guide
    assert "jwks_file /etc/authority/test-issuer.jwks.json does not exist (for a test issuer, ...)" in guide


def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (ROOT / ".env.example").read_text().splitlines()]
    return {k: v for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}


def test_env_example_is_a_valid_configuration() -> None:
    """.env.example, with the compose file's environment filled in from it as compose does, is accepted."""
    environment = {**env_example(), **interpolated(compose()["x-authority"]["environment"], env_example())}
    settings = load(environment)
    assert settings.key_store == "redis"
    assert settings.trusted_issuers
    assert settings.redis_url == f"redis://:{env_example()['VALKEY_PASSWORD']}@valkey:6379/0"


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


def metric(served: Served, sample: str) -> float | None:
    """The value /metrics gives ``sample`` (a name and its labels, as written there); None if it has none."""
    text = httpx.get(f"{served.base}{METRICS}").text
    found = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else None


def every_worker_listening(served: Served) -> None:
    """Wait until all of the image's workers listen. /readyz answers from the first one ready; a stop signal reaching
    a granian worker still in its ASGI lifespan start can be missed (seen here: the worker then serves on, and granian
    waits for it for ever), so a test that stops the server soon after it is ready waits for this first."""
    command = the_images_cmd(served.port)
    workers = int(command[command.index("--workers") + 1])

    def all_listen() -> bool:
        try:
            children = psutil.Process(served.process.pid).children()
            return len(children) == workers and all(listens(child, served.port) for child in children)
        except psutil.NoSuchProcess:  # a worker that ended meanwhile: granian replaces it, or exits (poll says so)
            return False

    poll(f"{workers} listening workers", all_listen, 30, served)


def test_a_second_server_on_a_running_servers_metrics_folder_stops_and_a_restart_counts_from_zero(
    redis_url: str, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR is one server's: the image's command started on the folder of one that runs stops
    with one line naming the variable (it would report the other's counts as its own), and the running one keeps
    its counts; a server started on that folder once the first has stopped counts from 0."""
    minted_sample = 'authority_mints_total{role="operator"}'
    with the_images_command(redis_url, tmp_path) as first:
        every_worker_listening(first)
        folder = first.env["PROMETHEUS_MULTIPROC_DIR"]
        minted = httpx.get(f"{first.base}{STAFF}", params={"coworkerId": 42}, headers=first.bearer("7"))
        assert minted.status_code == 200, minted.text
        assert httpx.post(f"{first.base}{EXCHANGE}", json={"token": minted.json()["token"]}).status_code == 200
        port = free_port()
        env = {**first.env, "AUTHORITY_ISSUER": f"http://127.0.0.1:{port}"}
        command = the_images_cmd(port)
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
        output = done.stdout + done.stderr
        assert done.returncode != 0, output
        assert "Traceback" not in output
        assert f"authority: PROMETHEUS_MULTIPROC_DIR: {folder} is in use by another running server (" in output
        assert first.process.poll() is None
        assert metric(first, minted_sample) == 1
        assert metric(first, "authority_exchanges_total") == 1
    with the_images_command(redis_url, tmp_path) as restarted:
        every_worker_listening(restarted)
        assert restarted.env["PROMETHEUS_MULTIPROC_DIR"] == folder
        assert metric(restarted, minted_sample) is None
        assert metric(restarted, "authority_exchanges_total") == 0


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
        # The replacement kept the metrics folder (same server): the dead worker's counts are still in /metrics.
        served_mints = warmup.count(200) + len(minted) + len(probes)
        assert (metric(served, 'authority_mints_total{role="operator"}') or 0) >= served_mints

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
    command = the_images_cmd(free_port())
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
