"""Shared fixtures: a real Redis-compatible server started by the suite, real keys, the real ASGI app.

``AUTHORITY_TEST_REDIS_URL`` points the suite at another server instead; every test writes under its own key
prefix, so tests never see each other's data and never flush a server they do not own.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from litestar.testing import TestClient

from authority import demo
from authority.app import create_app
from authority.embedded import EmbeddedRedis
from authority.settings import Settings

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("AUTHORITY_TEST_REDIS_URL")
    if external:
        yield external
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), persist=False) as server:
        yield server.url


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A server of this test's own, so stopping it disturbs no other test (no persistence: a restart loses data)."""
    with EmbeddedRedis(tmp_path / "redis", persist=False) as server:
        yield server


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


def decode_unverified(token: str) -> dict[str, Any]:
    import jwt  # noqa: PLC0415

    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def sign_caller(keys_dir: Path, claims: dict[str, Any], **headers: Any) -> str:
    """A caller token from the (test-trusted) demo issuer with whatever claims a test needs."""
    import jwt  # noqa: PLC0415

    from authority.keys.jwk import public_jwk  # noqa: PLC0415

    key = demo.demo_key(keys_dir)
    kid = public_jwk(key.public_key(), "EdDSA")["kid"]
    return jwt.encode(claims, key, algorithm="EdDSA", headers={"kid": kid, **headers})


@pytest.fixture
def make_stack(redis_url: str, tmp_path: Path) -> Callable[..., Stack]:
    """Production-shaped settings (encrypted keys, explicit trusted issuer, no --demo) on the suite's Redis."""

    def make(**overrides: Any) -> Stack:
        keys_dir = Path(overrides.pop("keys_dir", tmp_path / "keys"))
        base: dict[str, Any] = {
            "redis_url": redis_url,
            "redis_prefix": f"t{uuid.uuid4().hex[:12]}:",
            "keys_dir": str(keys_dir),
            "key_passphrase": PASSPHRASE,
            "issuer": "http://authority.test",
            "directory_file": str(Path(demo.__file__).with_name("demo_directory.json")),
            "trusted_issuers": [demo.trusted_demo_issuer(keys_dir)],
        }
        base.update(overrides)
        return Stack(msgspec.convert(base, Settings), keys_dir)

    return make


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack()


@pytest.fixture
def client(stack: Stack) -> Iterator[TestClient[Any]]:
    with stack.client() as test_client:
        yield test_client


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Threads left at the end: a leak (one per app built, say) shows here long before it hangs anything."""
    names = sorted(thread.name for thread in threading.enumerate())
    terminalreporter.write_line(f"threads alive at the end: {len(names)} ({', '.join(names)})")
