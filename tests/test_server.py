"""The README's run command for real: ``authority serve --demo`` as a process on loopback, its own embedded
Redis, the CLI's dev tokens, and an unmodified PyJWT ``PyJWKClient`` reading the served JWKS."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import jwt
import pytest

from authority.embedded import free_port
from tests.helpers import DISCOVERY, EXCHANGE, JWKS, READYZ, STAFF, team, wait_until_ready

CLI = [str(Path(sys.executable).with_name("authority"))]


@dataclass
class Server:
    base: str
    cwd: Path
    env: dict[str, str]
    process: subprocess.Popen[str]

    def dev_token(self, *args: str) -> str:
        done = subprocess.run(
            [*CLI, "dev-token", *args],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return done.stdout.strip()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cwd = tmp_path_factory.mktemp("serve")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--demo", "--port", str(port)], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_ready(f"{base}{READYZ}", process)
    yield Server(base, cwd, env, process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_readme_walkthrough_on_a_real_server(server: Server) -> None:
    operator = {"Authorization": f"Bearer {server.dev_token('--role', 'operator', '--sub', '7', '--location', '1')}"}
    minted = httpx.get(f"{server.base}{STAFF}", params={"coworkerId": 42}, headers=operator)
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]

    session = httpx.post(f"{server.base}{EXCHANGE}", json={"token": token})
    assert session.status_code == 200, session.text
    replay = httpx.post(f"{server.base}{EXCHANGE}", json={"token": token})
    assert replay.status_code == 401
    assert replay.json()["type"] == "urn:authority:problem:token-replayed"

    access = session.json()["access_token"]
    signing_key = jwt.PyJWKClient(f"{server.base}{JWKS}").get_signing_key_from_jwt(access)
    claims = jwt.decode(access, signing_key, algorithms=["ES256"], audience="portal-api", issuer=server.base)
    assert claims["sub"] == "42"
    assert claims["act"] == {"sub": "7", "role": "operator", "iss": "urn:authority:demo-issuer"}
    assert claims["sid"] == session.json()["session_id"]

    discovery = httpx.get(f"{server.base}{DISCOVERY}").json()
    assert discovery["jwks_uri"] == f"{server.base}{JWKS}"


def test_well_known_head_on_a_real_server(server: Server) -> None:
    """The server itself (uvicorn here, granian in the image) sends HEAD answers without a body."""
    got, head = httpx.get(f"{server.base}{JWKS}"), httpx.head(f"{server.base}{JWKS}")
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))
    assert head.headers["etag"] == got.headers["etag"]


def test_team_admin_and_customer_on_a_real_server(server: Server) -> None:
    admin = {"Authorization": f"Bearer {server.dev_token('--role', 'team-admin', '--sub', '5', '--location', '1')}"}
    assert httpx.get(f"{server.base}{team(43)}", headers=admin).status_code == 200
    assert httpx.get(f"{server.base}{team(99)}", headers=admin).status_code == 404
    customer = {"Authorization": f"Bearer {server.dev_token('--role', 'customer', '--sub', '42', '--location', '1')}"}
    refused = httpx.get(f"{server.base}{STAFF}", params={"coworkerId": 43}, headers=customer)
    assert refused.status_code == 401


def test_concurrent_exchanges_over_http_yield_one_session(server: Server) -> None:
    operator = {"Authorization": f"Bearer {server.dev_token('--role', 'admin', '--sub', '1', '--location', '1')}"}
    token = httpx.get(f"{server.base}{STAFF}", params={"coworkerId": 99}, headers=operator).json()["token"]
    with ThreadPoolExecutor(max_workers=20) as pool:
        statuses = list(
            pool.map(
                lambda _: httpx.post(f"{server.base}{EXCHANGE}", json={"token": token}).status_code,
                range(20),
            )
        )
    assert sorted(statuses) == [200] + [401] * 19


def test_demo_keys_are_owner_only(server: Server) -> None:
    files = [p for p in (server.cwd / "keys").rglob("*") if p.is_file() and p.suffix in {".json", ".pem"}]
    private = [p for p in files if p.name != "jwks.json"]
    assert private
    assert all(p.stat().st_mode & 0o077 == 0 for p in private)


def test_stopping_the_server_stops_its_embedded_redis(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "serve", "--demo", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    line = process.stderr.readline()
    match = re.search(r"redis://127\.0\.0\.1:(\d+)", line)
    assert match, line
    redis_port = int(match.group(1))
    wait_until_ready(f"http://127.0.0.1:{port}{READYZ}", process)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", redis_port), timeout=1):
        pass
