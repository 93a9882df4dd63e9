"""A client nobody here wrote: panva's ``oauth4webapi`` (npm, pinned in ``tests/interop/oauth4webapi``) against a
real ``authority serve --demo`` process. Through its public API only, it reads our RFC 8414 metadata, redeems an
impersonation token at ``/oauth2/token`` (RFC 8693) with a DPoP proof (RFC 9449), retrying on ``use_dpop_nonce``
where the server wants nonces, validates the access token as an RFC 9068 resource server (signature from
``jwks_uri``, ``cnf.jkt`` against its key), and sees the same token redeemed again refused with ``invalid_grant``.

Needs ``node`` (20 or later) and ``npm``; without them the test is skipped, so a machine with only Python passes.
The client is installed with ``npm ci`` from the committed lock, once (kept while it is at the locked version)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from authority.embedded import free_port
from tests.helpers import READYZ, ROOT, STAFF, wait_until_ready

CLIENT = ROOT / "tests" / "interop" / "oauth4webapi"
PACKAGE = "oauth4webapi"
CLI = str(Path(sys.executable).with_name("authority"))
NODE, NPM = shutil.which("node"), shutil.which("npm")
NONCE_SECRET = "interop-dpop-nonce-secret-of-32-chars-and-more"

pytestmark = pytest.mark.skipif(
    NODE is None or NPM is None,
    reason="node and npm are not on PATH: the oauth4webapi interop check needs them (the rest of the suite does not)",
)


def locked_version() -> str:
    lock = json.loads((CLIENT / "package-lock.json").read_text())
    version: str = lock["packages"][f"node_modules/{PACKAGE}"]["version"]
    return version


def installed_version() -> str | None:
    try:
        version: str = json.loads((CLIENT / "node_modules" / PACKAGE / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version


@pytest.fixture(scope="module")
def node_client() -> Path:
    """``check.mjs`` ready to run: node recent enough, and the locked oauth4webapi in ``node_modules``."""
    assert NODE is not None
    assert NPM is not None
    version = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    if int(version.strip().lstrip("v").split(".")[0]) < 20:
        pytest.skip(f"node {version.strip()} is too old for oauth4webapi (fetch and WebCrypto need node 20 or later)")
    pinned = json.loads((CLIENT / "package.json").read_text())["dependencies"][PACKAGE]
    assert pinned == locked_version(), "package.json pins an exact version, the one package-lock.json locks"
    if installed_version() != pinned:
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"],
            cwd=CLIENT,
            capture_output=True,
            text=True,
            timeout=75,
            check=False,
        )
        assert done.returncode == 0, f"npm ci failed in {CLIENT}:\n{done.stdout}\n{done.stderr}"
        assert installed_version() == pinned
    return CLIENT / "check.mjs"


def demo_server(cwd: Path, **settings: str) -> tuple[str, dict[str, str], subprocess.Popen[str]]:
    """``authority serve --demo`` on a free loopback port, as the README runs it, with ``settings`` in its
    environment (and nothing else of ours)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")} | settings
    port = free_port()
    process = subprocess.Popen(
        [CLI, "serve", "--demo", "--port", str(port)], cwd=cwd, env=env, stderr=subprocess.PIPE, text=True
    )
    return f"http://127.0.0.1:{port}", env, process


@pytest.fixture(params=[None, NONCE_SECRET], ids=["dpop", "dpop-with-server-nonces"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, bool]]:
    """The issuer URL of a running demo server, an impersonation token it minted, and whether it wants nonces."""
    settings = {"AUTHORITY_DPOP_NONCE_SECRET": request.param} if request.param else {}
    base, env, process = demo_server(tmp_path, **settings)
    try:
        wait_until_ready(f"{base}{READYZ}", process)
        bearer = subprocess.run(
            [CLI, "dev-token", "--role", "operator", "--sub", "7", "--location", "1"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
        minted = httpx.get(
            f"{base}{STAFF}", params={"coworkerId": 42}, headers={"Authorization": f"Bearer {bearer}"}, timeout=10
        )
        assert minted.status_code == 200, minted.text
        yield base, minted.json()["token"], request.param is not None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        if process.stderr:
            process.stderr.close()


def test_oauth4webapi_exchanges_with_dpop_and_is_refused_a_replay(
    node_client: Path, served: tuple[str, str, bool]
) -> None:
    base, token, nonces = served
    assert NODE is not None
    done = subprocess.run(
        [NODE, str(node_client), base, token], cwd=CLIENT, capture_output=True, text=True, timeout=45, check=False
    )
    assert done.returncode == 0, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)

    assert (report["issuer"], report["token_endpoint"]) == (base, f"{base}/oauth2/token")
    exchange = report["exchange"]
    assert exchange["token_type"] == "dpop"  # oauth4webapi lowercases it (RFC 6749 section 5.1: case-insensitive)
    assert exchange["token_type_on_the_wire"] == "DPoP"
    assert exchange["issued_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    assert exchange["expires_in"] == 900
    assert exchange["refresh_token"] is None
    assert exchange["nonce_retries"] == (1 if nonces else 0)  # one use_dpop_nonce, then the nonce it was given

    access = report["access_token"]
    assert (access["sub"], access["act"]["sub"], access["aud"]) == ("42", "7", "portal-api")
    assert access["cnf_jkt"] == access["key_thumbprint"]
    assert access["bound_to_the_key"] is True

    replay = report["replay"]
    assert (replay["class"], replay["status"], replay["error"]) == ("ResponseBodyError", 400, "invalid_grant")
    assert replay["nonce_retries"] == 0  # the nonce the client kept still holds
    assert "problems" not in report
