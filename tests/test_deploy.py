"""The container files, checked without a Docker engine (there is none here): hadolint on the Dockerfile, the
Compose Specification's JSON schema on docker-compose.yml, the properties production relies on, and the image's
own start command run for real against a real Redis."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from authority import demo
from authority.embedded import free_port
from authority.settings import load
from tests.conftest import wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
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
    assert "/healthz" in instruction("HEALTHCHECK")[0]
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


def test_the_images_start_command_serves_the_app(redis_url: str, tmp_path: Path) -> None:
    """The CMD of the Dockerfile, as is but for its port, with production settings and the env the image sets."""
    command = json.loads(instruction("CMD")[0])
    port = free_port()
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    issuer = demo.trusted_demo_issuer(tmp_path / "portal")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "AUTHORITY_KEYS_DIR": str(tmp_path / "keys"),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "AUTHORITY_REDIS_URL": redis_url,
        "AUTHORITY_REDIS_PREFIX": f"deploy{port}:",
        "AUTHORITY_KEY_STORE": "redis",
        "AUTHORITY_KEY_PASSPHRASE": "deploy test passphrase",
        "AUTHORITY_DIRECTORY_FILE": str(ROOT / "authority" / "demo_directory.json"),
        "AUTHORITY_TRUSTED_ISSUERS": json.dumps(
            [{"issuer": issuer.issuer, "audiences": issuer.audiences, "jwks_file": issuer.jwks_file}]
        ),
    }
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(f"{base}/readyz", process)
        bearer = demo.dev_token(tmp_path / "portal", role="operator", sub="7", location="1")
        minted = httpx.get(
            f"{base}/api/sys/users/impersonate",
            params={"coworkerId": 42},
            headers={"Authorization": f"Bearer {bearer}"},
        )
        assert minted.status_code == 200, minted.text
        exchanged = httpx.post(f"{base}/api/sys/users/exchange", json={"token": minted.json()["token"]})
        assert exchanged.status_code == 200
        healthcheck = json.loads(instruction("HEALTHCHECK")[0].split(" CMD ", 1)[1].replace("8000", str(port)))
        assert subprocess.run(healthcheck, env=env, check=False, timeout=10).returncode == 0
        metrics = httpx.get(f"{base}/metrics").text
        assert re.search(r'^authority_mints_total\{role="operator"\} 1\.0$', metrics, re.MULTILINE), metrics
    finally:
        process.terminate()
        process.wait(timeout=30)
