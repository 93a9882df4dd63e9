"""Introspection checks an access token's signature once per process and the session's state every time: a
repeated introspection is one Redis read, and still answers inactive at once for a revoked session, an expired
token, or a token whose signing key was retired in an emergency."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient

from authority.app import create_app
from tests.helpers import (
    EXCHANGE,
    INTROSPECT,
    Clock,
    Stack,
    authority_of,
    in_app,
    kid_of,
    mint_lasting,
    revoke,
    running,
)


def session(client: TestClient[Any], stack: Stack) -> str:
    grant = client.post(EXCHANGE, json={"token": mint_lasting(client, stack)}).json()
    token: str = grant["access_token"]
    return token


def active(client: TestClient[Any], stack: Stack, token: str) -> bool:
    answer = client.post(INTROSPECT, data={"token": token}, headers=stack.bearer("operator", "7", ttl=10**6))
    return bool(answer.json()["active"])


def test_a_repeated_introspection_still_sees_a_revocation(client: TestClient[Any], stack: Stack) -> None:
    token = session(client, stack)
    assert active(client, stack, token)
    assert token in authority_of(client)._introspected.tokens()  # remembered: the next one checks no signature
    assert active(client, stack, token)
    sid = client.post(INTROSPECT, data={"token": token}, headers=stack.bearer("operator", "7")).json()["sid"]
    assert client.post(revoke(sid), headers=stack.bearer("operator", "7")).status_code == 200
    assert not active(client, stack, token)


def test_a_remembered_token_is_inactive_once_it_expires(stack: Stack) -> None:
    clock = Clock()
    with running(create_app(stack.settings, clock)) as (client, _):
        token = session(client, stack)
        assert active(client, stack, token)
        clock.now += stack.settings.session_ttl_s + stack.settings.clock_skew_s + 1
        assert not active(client, stack, token)


def test_a_remembered_token_is_inactive_at_once_when_its_key_is_retired(stack: Stack) -> None:
    with running(create_app(stack.settings)) as (client, authority):
        token = session(client, stack)
        assert active(client, stack, token)
        in_app(client, lambda: authority.keys.retire(kid_of(token)))
        assert not active(client, stack, token)


def test_only_the_exact_token_is_remembered(client: TestClient[Any], stack: Stack) -> None:
    token = session(client, stack)
    assert active(client, stack, token)
    header, payload, signature = token.split(".")
    tampered = f"{header}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"
    assert not active(client, stack, tampered)
