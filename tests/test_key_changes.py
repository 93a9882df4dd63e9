"""Key changes as every process sees them: a first start with a sibling holding the rotation lock, a kid only a
sibling knows yet, an emergency retire from the command line, pre-publication counted from first serving, and a
change of signing alg. Real Redis, real apps (several sharing one key store), the real CLI."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from litestar import Litestar
from litestar.testing import TestClient

from authority.app import create_app
from authority.cli import main
from authority.keys.keyring import new_record
from tests.helpers import (
    EXCHANGE,
    PASSPHRASE,
    PREPUBLISH,
    READYZ,
    ROTATION,
    Clock,
    Stack,
    direct_redis,
    in_app,
    jwks,
    kid_of,
    mint_lasting,
    running,
)


def shared(make_stack: Callable[..., Stack], **overrides: Any) -> Stack:
    """Replicas sharing keys through Redis; the periodic re-read slow enough that it never helps by chance."""
    return make_stack(
        key_store="redis", key_refresh_s=60, mint_rate_per_actor=10_000, mint_rate_per_location=10_000, **overrides
    )


def test_a_first_start_waits_for_the_keys_a_sibling_is_making(make_stack: Callable[..., Stack]) -> None:
    """A sibling holds the rotation lock (it is making the first keys): this process takes no request and is not
    ready until a signer exists, rather than serving an empty key set."""
    stack = shared(make_stack)
    lock = f"{stack.settings.redis_prefix}keys:lock"
    with direct_redis(stack) as direct:
        direct.set(lock, "a sibling", px=60_000)
        client = TestClient(create_app(stack.settings))
        started = threading.Event()

        def start() -> None:
            client.__enter__()
            started.set()

        starting = threading.Thread(target=start, daemon=True)
        starting.start()
        assert not started.wait(1.5), "started with no signing key while a sibling held the lock"
        direct.delete(lock)  # the sibling is done (here: gone); this process makes the keys itself
        assert started.wait(20)
    try:
        assert client.get(READYZ).status_code == 200
        assert client.post(EXCHANGE, json={"token": mint_lasting(client, stack)}).status_code == 200
    finally:
        client.__exit__(None, None, None)


def a_sibling_switches_signer(client: TestClient[Litestar], stack: Stack) -> str:
    """What a sibling's rotation writes, without announcing it: a new key signing now, the old one retiring.
    Returns the new kid."""
    keys = client.app.state.services.authority.keys
    records = in_app(client, keys.store.load)
    now = int(time.time())
    signer = next(r for r in records if r.superseded_at is not None and r.activates_at <= now)
    fresh = new_record("ES256", PASSPHRASE, now=now, activates_at=now)
    retired = msgspec.structs.replace(signer, superseded_at=now, retires_at=now + 4000)
    in_app(client, lambda: keys.store.save([retired, fresh]))
    return fresh.kid


def test_a_token_signed_with_a_key_only_a_sibling_knows_yet_is_verified_after_one_re_read(
    make_stack: Callable[..., Stack],
) -> None:
    stack = shared(make_stack)
    with running(create_app(stack.settings)) as (old, _):
        kid = a_sibling_switches_signer(old, stack)
        assert kid not in {k["kid"] for k in jwks(old)}
        with running(create_app(stack.settings)) as (sibling, _):
            token = mint_lasting(sibling, stack)
            assert kid_of(token) == kid
            session = old.post(EXCHANGE, json={"token": token})
        assert session.status_code == 200, session.text
        assert kid in {k["kid"] for k in jwks(old)}


def test_unknown_kids_re_read_the_records_at_most_once_a_second(make_stack: Callable[..., Stack]) -> None:
    stack = shared(make_stack)
    with running(create_app(stack.settings)) as (client, authority):
        assert not in_app(client, lambda: authority.keys.reread_for("made-up"))  # re-read: not there
        kid = a_sibling_switches_signer(client, stack)
        assert not in_app(client, lambda: authority.keys.reread_for(kid))  # within the second: no re-read
        time.sleep(1.05)
        assert in_app(client, lambda: authority.keys.reread_for(kid))


def test_retire_is_in_effect_everywhere_when_the_command_returns(
    make_stack: Callable[..., Stack], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas; the operator retires the signer from the command line. When it returns, neither replica signs
    with it or publishes it, and a JWKS fetched before the retire verifies the first token signed after it."""
    stack = shared(make_stack)
    s = stack.settings
    assert s.redis_url is not None
    for name, value in {"REDIS_URL": s.redis_url, "REDIS_PREFIX": s.redis_prefix, "KEY_STORE": "redis",
                        "KEY_PASSPHRASE": PASSPHRASE, "KEYS_DIR": s.keys_dir}.items():  # fmt: skip
        monkeypatch.setenv(f"AUTHORITY_{name}", value)
    with running(create_app(s)) as (one, _), running(create_app(s)) as (two, _):
        before = jwks(one)
        retired = kid_of(mint_lasting(one, stack))
        assert main(["keys", "retire", retired]) == 0
        assert "in effect on 2 of 2 running service processes" in capsys.readouterr().err
        for replica in (one, two):
            assert retired not in {k["kid"] for k in jwks(replica)}
            tokens = [mint_lasting(replica, stack) for _ in range(10)]
            assert retired not in {kid_of(t) for t in tokens}
        access = two.post(EXCHANGE, json={"token": mint_lasting(one, stack)}).json()["access_token"]
        key = next(k for k in before if k["kid"] == kid_of(access))  # the standby, published before the retire
        claims = jwt.decode(access, jwt.PyJWK(key).key, algorithms=["ES256"], audience=s.session_audience)
        assert claims["sub"] == "42"


def test_pre_publication_counts_from_when_a_late_replica_first_serves_the_key(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """Replica B shares A's key files but hears no announcement (another Redis prefix): it learns of a new key only
    by re-reading every ``key_refresh_s``. A standby A writes and brings forward at once must still be served by B
    for ``PREPUBLISH`` before it signs."""
    refresh = 30
    common = {"keys_dir": str(tmp_path / "shared-keys"), "key_rotation_s": ROTATION, "key_prepublish_s": PREPUBLISH,
              "key_refresh_s": refresh, "mint_rate_per_actor": 10_000, "mint_rate_per_location": 10_000}  # fmt: skip
    stack_a, stack_b = make_stack(**common), make_stack(**common)
    clock = Clock()
    with (
        running(create_app(stack_a.settings, clock)) as (a, on_a),
        running(create_app(stack_b.settings, clock)) as (
            b,
            on_b,
        ),
    ):
        in_app(a, on_a.keys.rotate_now)  # the first standby now signs once published in full...
        standby = next(k["kid"] for k in jwks(a) if k["kid"] != kid_of(mint_lasting(a, stack_a)))
        while kid_of(mint_lasting(a, stack_a)) != standby:
            clock.now += 1
        in_app(a, on_a.keys.tick)  # ...and A writes the next standby
        written = clock.now
        in_app(a, on_a.keys.rotate_now)  # and brings it forward at once
        (successor,) = {k["kid"] for k in jwks(a)} - {k["kid"] for k in jwks(b)}
        served_on_b = None
        while (signer := kid_of(mint_lasting(b, stack_b))) != successor:
            clock.now += 1
            if (clock.now - written) % refresh == refresh - 1:
                in_app(b, on_b.keys.refresh)  # B's re-read, as late as it may come
                if served_on_b is None and successor in {k["kid"] for k in jwks(b)}:
                    served_on_b = clock.now
            assert clock.now - written < 2 * ROTATION, "the successor never signed"
        assert signer == successor
        assert served_on_b is not None
        assert clock.now - served_on_b >= PREPUBLISH, (clock.now - written, served_on_b - written)


def test_a_changed_alg_signs_from_the_next_rotation_on_with_no_token_failing(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(key_alg="EdDSA", key_rotation_s=ROTATION, key_prepublish_s=PREPUBLISH, key_refresh_s=60)
    clock = Clock()
    t0 = clock.now
    with running(create_app(stack.settings, clock)) as (client, _):
        old_token = mint_lasting(client, stack)
    assert jwt.get_unverified_header(old_token)["alg"] == "EdDSA"
    moved = msgspec.structs.replace(stack.settings, key_alg="ES256", redis_prefix=stack.settings.redis_prefix)
    with running(create_app(moved, clock)) as (client, authority):
        published = jwks(client)
        assert sorted(k["alg"] for k in published) == ["ES256", "EdDSA"]  # the EdDSA signer, an ES256 standby
        assert jwt.get_unverified_header(mint_lasting(client, stack))["alg"] == "EdDSA"  # until the signer's term ends
        assert client.post(EXCHANGE, json={"token": old_token}).status_code == 200
        clock.now = t0 + ROTATION  # the ES256 standby, published since the switch, signs
        in_app(client, authority.keys.tick)
        new = client.post(EXCHANGE, json={"token": mint_lasting(client, stack)}).json()["access_token"]
        header = jwt.get_unverified_header(new)
        assert header["alg"] == "ES256"
        key = next(k for k in published if k["kid"] == header["kid"])  # in the JWKS fetched at the switch
        claims = jwt.decode(new, jwt.PyJWK(key).key, algorithms=["ES256"], audience="portal-api",
                            options={"verify_iat": False, "verify_nbf": False, "verify_exp": False})  # fmt: skip
        assert claims["sub"] == "42"  # (times are the test clock's, an hour ahead)
