"""Shared fixtures: a real Redis-compatible server started by the suite, real keys, the real ASGI app. Helpers that
are not fixtures are in ``helpers.py``.

``AUTHORITY_TEST_REDIS_URL`` points the suite at another server instead; every test writes under its own key
prefix, so tests never see each other's data and never flush a server they do not own.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from authority import demo
from authority.embedded import EmbeddedRedis
from authority.settings import Settings
from tests.helpers import PASSPHRASE, Stack


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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Threads left at the end: a leak (one per app built, say) shows here long before it hangs anything."""
    names = sorted(thread.name for thread in threading.enumerate())
    terminalreporter.write_line(f"threads alive at the end: {len(names)} ({', '.join(names)})")
