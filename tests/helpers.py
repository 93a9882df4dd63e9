"""What more than one test module uses: the service's route paths, problem-details checks, minting, hand-built
JWS, the configured service (``Stack``), the running-app plumbing of the rotation tests, and the image's start
command run for real (``the_images_command``). Fixtures stay in ``conftest.py``; test modules import from here and
from nowhere else in ``tests``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import msgspec
import redis
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from litestar import Litestar
from litestar.testing import TestClient

from authority import demo
from authority.app import create_app
from authority.embedded import free_port
from authority.impersonation import Authority
from authority.keys.jwk import public_jwk
from authority.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
PASSPHRASE = "correct horse battery staple"

# --- the service's routes -------------------------------------------------------------------------------------

STAFF = "/api/sys/users/impersonate"
EXCHANGE = "/api/sys/users/exchange"
INTROSPECT = "/oauth2/introspect"
JWKS = "/.well-known/jwks.json"
DISCOVERY = "/.well-known/openid-configuration"
METADATA = "/.well-known/oauth-authorization-server"
SESSIONS = "/api/sys/sessions"
REVOKE_ALL = "/api/sys/sessions/revoke"
END_CURRENT = "/api/sys/sessions/current/end"
MY_IMPERSONATIONS = "/api/public/coworkers/me/impersonations"
TOKEN = "/oauth2/token"
HEALTHZ = "/healthz"
READYZ = "/readyz"
METRICS = "/metrics"
SCHEMA = "/schema/openapi.json"


def team(coworker_id: int | str) -> str:
    """The team admin's mint path for ``coworker_id`` (``"{coworkerId}"``: the path as the schema writes it)."""
    return f"/api/public/coworkers/{coworker_id}/impersonate"


def revoke(sid: str) -> str:
    """The revoke path of session ``sid`` (``"{sid}"``: the path as the schema writes it)."""
    return f"/api/sys/sessions/{sid}/revoke"


# --- a configured service -------------------------------------------------------------------------------------


@dataclass
class Stack:
    """One configured service: its settings, its keys folder, and a way to get caller bearers."""

    settings: Settings
    keys_dir: Path

    def bearer(
        self, role: str, sub: str, location: str = "1", claims: dict[str, Any] | None = None, ttl: int = 3600
    ) -> dict[str, str]:
        """A demo-issuer bearer; ``claims`` override or add claims (re-signed with the same key)."""
        token = demo.dev_token(self.keys_dir, role=role, sub=sub, location=location, ttl=ttl)
        if claims:
            token = sign_caller(self.keys_dir, {**decode_unverified(token), **claims})
        return {"Authorization": f"Bearer {token}"}

    def client(self, **overrides: Any) -> TestClient[Any]:
        settings = msgspec.structs.replace(self.settings, **overrides) if overrides else self.settings
        return TestClient(create_app(settings))


def direct_redis(stack: Stack) -> redis.Redis:
    """A connection of the test's own to the stack's server, to read or change what the service keeps there
    (every key under ``stack.settings.redis_prefix``)."""
    assert stack.settings.redis_url is not None
    return redis.Redis.from_url(stack.settings.redis_url)


def audit_events(stack: Stack, wanted: Callable[[dict[str, Any]], bool], at_least: int) -> list[dict[str, Any]]:
    """The stack's audit events that ``wanted`` keeps, once there are ``at_least`` of them: the service writes its
    stream off the request path, a moment after it answered (polled, 10 s at most)."""
    stream = f"{stack.settings.redis_prefix}audit"
    deadline = time.monotonic() + 10
    with direct_redis(stack) as direct:
        while True:
            entries = cast(list[tuple[bytes, dict[bytes, bytes]]], direct.xrange(stream))
            events = [e for e in (json.loads(fields[b"event"]) for _, fields in entries) if wanted(e)]
            if len(events) >= at_least or time.monotonic() > deadline:
                return events
            time.sleep(0.01)


def decode_unverified(token: str) -> dict[str, Any]:
    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def sign_caller(keys_dir: Path, claims: dict[str, Any], **headers: Any) -> str:
    """A caller token from the (test-trusted) demo issuer with whatever claims a test needs."""
    key = demo.demo_key(keys_dir)
    kid = public_jwk(key.public_key(), "EdDSA")["kid"]
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, **headers})


class _Collector(logging.Handler):
    """Keeps the records a logger handles (the logging API itself, not a stand-in)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def collected(name: str) -> Iterator[list[logging.LogRecord]]:
    """The records of level INFO and above reaching logger ``name``, as the entry point's ``logs.configure`` sets
    it; attached to the logger itself, since that configuration stops "authority" from propagating to the root,
    where caplog listens."""
    collector = _Collector()
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.INFO)
    try:
        yield collector.records
    finally:
        logger.setLevel(level)
        logger.removeHandler(collector)


def wait_until_ready(url: str, process: subprocess.Popen[Any], seconds: float = 60) -> None:
    """Poll ``url`` until it answers 200; fail with the process's stderr if it dies first."""
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            output = process.stderr.read() if process.stderr else ""
            raise AssertionError(f"the server exited with {process.returncode}: {output!r}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer 200 within {seconds} s"
        time.sleep(0.1)


# --- answers and tokens ---------------------------------------------------------------------------------------


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:authority:problem:{code}"
    assert body["title"]
    assert "detail" in body
    assert "Traceback" not in response.text
    return body


def mint(
    client: TestClient[Any], stack: Stack, coworker: int = 42, role: str = "operator", bearer_ttl: int = 3600
) -> str:
    """An impersonation token for ``coworker``, minted on the staff path by caller 7 with ``role``."""
    response = client.get(STAFF, params={"coworkerId": coworker}, headers=stack.bearer(role, "7", ttl=bearer_ttl))
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def authority_of(client: TestClient[Any]) -> Authority:
    authority: Authority = client.app.state.services.authority
    return authority


# --- hand-built JWS -------------------------------------------------------------------------------------------

Signer = Callable[[bytes], bytes]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    header, payload, signature = token.split(".")
    return json.loads(unb64(header)), json.loads(unb64(payload)), unb64(signature)


def forge(header: dict[str, Any], claims: dict[str, Any], signer: Signer) -> str:
    """A compact JWS built by hand, so nothing (PyJWT included) second-guesses what an attacker may send."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64(signer(signing_input.encode()))}"


def hs256(secret: bytes) -> Signer:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def unsigned(_: bytes) -> bytes:
    return b""


def kid_of_key(key: ed25519.Ed25519PrivateKey) -> str:
    """The kid of an Ed25519 key (as a JWKS would name it); ``kid_of`` reads the kid a token names."""
    kid: str = public_jwk(key.public_key(), "EdDSA")["kid"]
    return kid


def real_signing_key(client: TestClient[Any]) -> ed25519.Ed25519PrivateKey:
    """The authority's own active key, the one that signed what it minted."""
    signer = authority_of(client).keyring.signer_at(int(time.time()))
    assert signer is not None
    assert isinstance(signer.private, ed25519.Ed25519PrivateKey)
    return signer.private


def public_key_forms(key: ed25519.Ed25519PublicKey) -> dict[str, bytes]:
    return {
        "pem": key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "raw": key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw),
    }


def caller_claims(stack: Stack, **changes: Any) -> dict[str, Any]:
    """A genuine operator bearer's claims from the demo issuer, with changes (``None``: the claim left out)."""
    claims = decode_unverified(demo.dev_token(stack.keys_dir, role="operator", sub="7", location="1"))
    return {k: v for k, v in {**claims, **changes}.items() if v is not None}


def demo_header(stack: Stack, **changes: Any) -> dict[str, Any]:
    header = {"alg": "EdDSA", "typ": "at+jwt", "kid": kid_of_key(demo.demo_key(stack.keys_dir))}
    return {**header, **changes}


# --- key rotation on a clock the test controls ----------------------------------------------------------------

ROTATION, PREPUBLISH = 3600, 600


class Clock:
    """A clock the test sets; it starts at ``now``, by default the current whole second."""

    def __init__(self, now: float | None = None) -> None:
        self.now = float(int(time.time())) if now is None else now

    def __call__(self) -> float:
        return self.now


@contextmanager
def running(app: Litestar) -> Iterator[tuple[TestClient[Litestar], Authority]]:
    with TestClient(app) as client:
        yield client, app.state.services.authority


def in_app(client: TestClient[Litestar], step: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``step`` on the app's own event loop (its Redis connections live there)."""
    return client.blocking_portal.call(step)


def kid_of(token: str) -> str:
    """The kid a token's header names; ``kid_of_key`` computes a key's."""
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def mint_lasting(client: TestClient[Any], stack: Stack, coworker: int = 42) -> str:
    """``mint`` with an operator bearer that lasts through the test clock's jumps (ten rotations)."""
    return mint(client, stack, coworker, bearer_ttl=10 * ROTATION)


def jwks(client: TestClient[Any]) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = client.get(JWKS).json()["keys"]
    return keys


# --- the image's start command, running (the Dockerfile's CMD: granian) ---------------------------------------

DOCKERFILE = (ROOT / "Dockerfile").read_text()
BIN = Path(sys.executable).parent


def instruction(name: str) -> list[str]:
    """The arguments of every ``name`` instruction (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(f"{name} ")]


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


def the_images_cmd(port: int) -> list[str]:
    """The Dockerfile's CMD, as is but for where it listens: 127.0.0.1:``port``."""
    command: list[str] = json.loads(instruction("CMD")[0])
    command[command.index("--port") + 1] = str(port)
    command[command.index("--host") + 1] = "127.0.0.1"
    return command


@contextmanager
def the_images_command(redis_url: str, tmp_path: Path, **settings: str) -> Iterator[Served]:
    """The CMD of the Dockerfile, as is but for its port, with production settings and the env the image sets
    (``settings``: more ``AUTHORITY_*`` variables), served until /readyz answers; stopped on exit."""
    port = free_port()
    command = the_images_cmd(port)
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


@asynccontextmanager
async def concurrently_served(app: Litestar) -> AsyncIterator[httpx.AsyncClient]:
    """The app on this event loop, its lifespan run, and a client whose requests really run concurrently: each
    request is the app called in the requesting task. (Litestar's ``AsyncTestClient`` hands each request to a
    portal thread and blocks the loop until it is answered: its "concurrent" requests run one at a time.)"""
    transport = httpx.ASGITransport(app=cast(Any, app))  # httpx types an ASGI app more narrowly than Litestar
    async with app.lifespan(), httpx.AsyncClient(transport=transport, base_url="http://testserver.local") as client:
        yield client


@contextmanager
def serving(app: Litestar) -> Iterator[str]:
    """``app`` under uvicorn on a loopback socket of its own, in a thread; stopped however the test ends."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="portal-adapter", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive(), "the adapter stopped"
            assert time.monotonic() < deadline, "the adapter did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
