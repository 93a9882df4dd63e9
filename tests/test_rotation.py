"""Key rotation in the running service, on a clock the tests control, against a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jwt
import msgspec
import pytest
import uvicorn

from authority.app import create_app
from authority.embedded import free_port
from tests.helpers import (
    EXCHANGE,
    JWKS,
    PREPUBLISH,
    ROTATION,
    STAFF,
    Clock,
    Stack,
    in_app,
    jwks,
    kid_of,
    mint_lasting,
    running,
)

RETENTION = 3600 + 10 + 300  # session max life + skew + grace


@pytest.fixture
def rotating(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(
        key_rotation_s=ROTATION,
        key_prepublish_s=PREPUBLISH,
        key_refresh_s=60,
        mint_rate_per_actor=10_000,
        mint_rate_per_location=10_000,
    )


def test_a_whole_rotation_never_leaves_a_token_unverifiable(rotating: Stack) -> None:
    clock = Clock()
    t0 = clock.now
    with running(create_app(rotating.settings, clock)) as (client, authority):
        signer = authority.keyring.signer_at(int(clock.now))
        old_kid = signer.kid if signer else ""
        session_before = (client.post(EXCHANGE, json={"token": mint_lasting(client, rotating)})).json()
        signing, new_kid = (k["kid"] for k in jwks(client))  # the signer, then the standby published from the start
        assert (signing, kid_of(mint_lasting(client, rotating))) == (old_kid, old_kid)

        clock.now = t0 + ROTATION - 30
        signed_before = mint_lasting(client, rotating)
        clock.now = t0 + ROTATION
        in_app(client, authority.keys.tick)
        published = [k["kid"] for k in jwks(client)]
        assert (published[0], published[2]) == (new_kid, old_kid)  # active, a new standby, retiring
        assert kid_of(mint_lasting(client, rotating)) == new_kid

        exchanged = client.post(EXCHANGE, json={"token": signed_before})
        assert exchanged.status_code == 200, exchanged.text
        assert kid_of(exchanged.json()["access_token"]) == new_kid
        # a session signed by the old key still verifies against the published JWKS
        old_jwk = next(k for k in jwks(client) if k["kid"] == old_kid)
        at = session_before["access_token"]
        jwt.decode(
            at,
            jwt.PyJWK(old_jwk).key,
            algorithms=["ES256"],
            audience="portal-api",
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )

        clock.now = t0 + ROTATION + RETENTION
        in_app(client, authority.keys.tick)
        published_kids = [k["kid"] for k in jwks(client)]
        assert old_kid not in published_kids
        assert new_kid in published_kids
        assert old_kid not in {r.kid for r in in_app(client, authority.keys.store.load)}


def test_pending_key_is_published_at_least_prepublish_before_it_signs(rotating: Stack) -> None:
    clock = Clock()
    t0 = clock.now
    first_published: dict[str, float] = {}
    first_signed: dict[str, float] = {}
    with running(create_app(rotating.settings, clock)) as (client, authority):
        for step in range(0, 2 * ROTATION + 120, 60):
            clock.now = t0 + step
            in_app(client, authority.keys.tick)
            for key in jwks(client):
                first_published.setdefault(key["kid"], clock.now)
            first_signed.setdefault(kid_of(mint_lasting(client, rotating)), clock.now)
    assert len(first_signed) == 3  # the first key and two successors
    later = [kid for kid in first_signed if first_signed[kid] > t0]
    assert len(later) == 2
    for kid in later:
        assert first_signed[kid] - first_published[kid] >= PREPUBLISH


def test_two_replicas_share_one_key_set_and_only_one_rotates(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(key_store="redis", key_rotation_s=ROTATION, key_prepublish_s=PREPUBLISH, key_refresh_s=60)
    clock = Clock()
    one, two = create_app(stack.settings, clock), create_app(stack.settings, clock)
    with running(one) as (c1, a1), running(two) as (c2, a2):
        assert len(in_app(c1, a1.keys.store.load)) == 2  # both started; one first key and its standby
        in_app(c1, a1.keys.refresh)
        in_app(c2, a2.keys.refresh)
        assert (c1.get(JWKS)).content == (c2.get(JWKS)).content

        token = mint_lasting(c1, stack)
        assert (c2.post(EXCHANGE, json={"token": token})).status_code == 200
        assert (c1.post(EXCHANGE, json={"token": token})).status_code == 401

        clock.now += ROTATION  # the standby takes over: each replica sees no standby left
        with ThreadPoolExecutor(4) as pool:  # two replicas, each on its own loop, ticking at the same moment
            list(pool.map(lambda replica: in_app(*replica), [(c1, a1.keys.tick), (c2, a2.keys.tick)] * 2))
        assert len(in_app(c1, a1.keys.store.load)) == 3  # exactly one new standby, whoever made it
        in_app(c1, a1.keys.refresh)
        in_app(c2, a2.keys.refresh)
        assert (c1.get(JWKS)).content == (c2.get(JWKS)).content

        token = mint_lasting(c2, stack)
        assert (c1.post(EXCHANGE, json={"token": token})).status_code == 200


def test_emergency_retire_refuses_its_tokens_at_once(rotating: Stack) -> None:
    clock = Clock()
    with running(create_app(rotating.settings, clock)) as (client, authority):
        token = mint_lasting(client, rotating)
        compromised = kid_of(token)
        in_app(client, lambda: authority.keys.retire(compromised))
        assert compromised not in [k["kid"] for k in jwks(client)]
        refused = client.post(EXCHANGE, json={"token": token})
        assert refused.status_code == 401
        assert refused.json()["type"] == "urn:authority:problem:unknown-key"
        fresh = mint_lasting(client, rotating)
        assert kid_of(fresh) != compromised
        assert (client.post(EXCHANGE, json={"token": fresh})).status_code == 200


@pytest.mark.parametrize(("alg", "kty"), [("ES256", "EC"), ("RS256", "RSA")])
def test_other_algorithms_pass_the_core_flow(make_stack: Callable[..., Stack], alg: str, kty: str) -> None:
    stack = make_stack(key_alg=alg)
    with running(create_app(stack.settings)) as (client, _):
        key, standby = jwks(client)
        assert (key["kty"], key["alg"], key["use"]) == (kty, alg, "sig")
        assert (standby["kty"], standby["alg"]) == (kty, alg)
        token = mint_lasting(client, stack)
        assert jwt.get_unverified_header(token)["alg"] == alg
        session = client.post(EXCHANGE, json={"token": token})
        assert session.status_code == 200
        claims = jwt.decode(session.json()["access_token"], jwt.PyJWK(key).key, algorithms=[alg], audience="portal-api")
        assert claims["sub"] == "42"


def test_a_token_resigned_with_another_alg_under_the_same_kid_is_refused(
    make_stack: Callable[..., Stack],
) -> None:
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa  # noqa: PLC0415

    stack = make_stack(key_alg="ES256")
    with running(create_app(stack.settings)) as (client, _):
        token = mint_lasting(client, stack)
        claims = jwt.decode(token, options={"verify_signature": False})
        kid = kid_of(token)
        forgeries = [
            jwt.encode(
                claims, rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": kid, "typ": "imp+jwt"}
            ),
            jwt.encode(
                claims, ed25519.Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": kid, "typ": "imp+jwt"}
            ),
        ]
        for forged in forgeries:
            refused = client.post(EXCHANGE, json={"token": forged})
            assert refused.status_code == 401
            assert refused.json()["type"] == "urn:authority:problem:bad-signature"
        assert (client.post(EXCHANGE, json={"token": token})).status_code == 200


@pytest.fixture
def served(rotating: Stack) -> Iterator[tuple[str, Clock, Stack]]:
    """The app on a real loopback socket (uvicorn in a thread), its keys ticking every 50 ms on our clock."""
    clock = Clock()
    settings = msgspec.structs.replace(rotating.settings, key_refresh_s=0.05)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, clock), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}", clock, rotating
    server.should_exit = True
    thread.join(timeout=20)


def test_an_unmodified_pyjwkclient_verifies_across_a_rotation(served: tuple[str, Clock, Stack]) -> None:
    import httpx  # noqa: PLC0415

    base, clock, stack = served
    # Test time is compressed: the client's JWKS cache lives 1 s here, as max-age (<= pre-publish) does in production.
    client = jwt.PyJWKClient(f"{base}{JWKS}", lifespan=1)

    def session() -> str:
        bearer = stack.bearer("operator", "7", ttl=10 * ROTATION)
        token = httpx.get(f"{base}{STAFF}", params={"coworkerId": 42}, headers=bearer)
        access: str = httpx.post(f"{base}{EXCHANGE}", json={"token": token.json()["token"]}).json()["access_token"]
        return access

    def verify(access: str) -> dict[str, Any]:
        key = client.get_signing_key_from_jwt(access)
        claims: dict[str, Any] = jwt.decode(
            access,
            key,
            algorithms=["ES256"],
            audience="portal-api",
            options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
        )
        return claims

    before = session()
    assert verify(before)["sub"] == "42"  # the client fetched the JWKS: the signer and its standby
    first_kid = kid_of(before)
    assert len(httpx.get(f"{base}{JWKS}").json()["keys"]) == 2
    clock.now += ROTATION  # the standby signs now, and the background task publishes the next standby
    deadline = time.monotonic() + 10
    while (after := session()) and kid_of(after) == first_kid:
        assert time.monotonic() < deadline, "rotation did not happen"
        time.sleep(0.05)
    assert verify(after)["sub"] == "42"  # new kid, already in the client's cache
    time.sleep(1.1)  # the client's cache expires...
    assert verify(before)["sub"] == "42"  # ...and the retiring key is still published
