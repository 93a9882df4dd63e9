"""Sessions after the exchange: a replay revokes the first session, operators revoke, services introspect."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from litestar.testing import TestClient

from authority.app import create_app
from tests.helpers import (
    EXCHANGE,
    INTROSPECT,
    STAFF,
    Stack,
    assert_problem,
    concurrently_served,
    direct_redis,
    mint,
    revoke,
    team,
)


def introspect(client: TestClient[Any], stack: Stack, token: str) -> dict[str, Any]:
    response = client.post(INTROSPECT, data={"token": token}, headers=stack.bearer("operator", "9"))
    assert response.status_code == 200, response.text
    assert "no-store" in response.headers["cache-control"]
    body: dict[str, Any] = response.json()
    return body


def session(client: TestClient[Any], stack: Stack, coworker: int = 42, team_admin: str | None = None) -> dict[str, Any]:
    """An exchanged session for ``coworker``, minted by operator 7, or by ``team_admin`` on the public path."""
    if team_admin:
        bearer = stack.bearer("team-admin", team_admin)
        token = client.get(team(coworker), headers=bearer).json()["token"]
    else:
        token = mint(client, stack, coworker)
    response = client.post(EXCHANGE, json={"token": token})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    body["impersonation_token"] = token
    return body


def test_introspection_of_a_live_session(client: TestClient[Any], stack: Stack) -> None:
    s = session(client, stack)
    info = introspect(client, stack, s["access_token"])
    assert info["active"] is True
    assert info["sub"] == "42"
    assert info["sid"] == s["session_id"]
    assert info["act"] == {"sub": "7", "role": "operator", "iss": "urn:authority:demo-issuer"}
    assert info["token_type"] == "Bearer"
    assert info["aud"] == "portal-api"


def test_a_replay_revokes_the_session_the_first_exchange_opened(client: TestClient[Any], stack: Stack) -> None:
    s = session(client, stack)
    replay = client.post(EXCHANGE, json={"token": s["impersonation_token"]})
    assert_problem(replay, 401, "token-replayed")
    assert introspect(client, stack, s["access_token"]) == {"active": False}
    # and it stays revoked: a third attempt changes nothing
    assert_problem(client.post(EXCHANGE, json={"token": s["impersonation_token"]}), 401, "token-replayed")
    assert introspect(client, stack, s["access_token"]) == {"active": False}


@pytest.mark.parametrize(
    "token",
    ["not-a-token", "a.b.c", "eyJhbGciOiJub25lIn0.e30."],
)
def test_introspection_of_garbage_is_inactive(client: TestClient[Any], stack: Stack, token: str) -> None:
    assert introspect(client, stack, token) == {"active": False}


def test_introspection_of_an_impersonation_token_is_inactive(client: TestClient[Any], stack: Stack) -> None:
    assert introspect(client, stack, mint(client, stack)) == {"active": False}


def test_a_session_lost_from_redis_introspects_inactive(client: TestClient[Any], stack: Stack) -> None:
    s = session(client, stack)
    with direct_redis(stack) as direct:
        direct.delete(f"{stack.settings.redis_prefix}jti:{s['session_id']}")
    assert introspect(client, stack, s["access_token"]) == {"active": False}


def test_introspection_needs_a_caller(client: TestClient[Any], stack: Stack) -> None:
    s = session(client, stack)
    assert_problem(client.post(INTROSPECT, data={"token": s["access_token"]}), 401, "unauthenticated")
    nested = {"Authorization": f"Bearer {s['access_token']}"}
    assert_problem(client.post(INTROSPECT, data={"token": s["access_token"]}, headers=nested), 403,
                   "nested-impersonation")  # fmt: skip


@pytest.mark.parametrize("body", [{"token": ""}, {"tokens": "x"}])
def test_introspection_400_for_a_malformed_form(client: TestClient[Any], stack: Stack, body: dict[str, str]) -> None:
    response = client.post(INTROSPECT, data=body, headers=stack.bearer("operator", "9"))
    assert_problem(response, 400, "invalid-request")


def test_introspection_without_a_form_is_415(client: TestClient[Any], stack: Stack) -> None:
    response = client.post(INTROSPECT, headers=stack.bearer("operator", "9"))  # no body, no content type
    assert_problem(response, 415, "unsupported-media-type")


def test_operator_of_the_location_revokes(client: TestClient[Any], stack: Stack) -> None:
    s = session(client, stack)
    response = client.post(revoke(s["session_id"]), headers=stack.bearer("admin", "3"))
    assert response.status_code == 200
    assert response.json() == {"session_id": s["session_id"], "revoked": True}
    assert introspect(client, stack, s["access_token"]) == {"active": False}
    again = client.post(revoke(s["session_id"]), headers=stack.bearer("admin", "3"))
    assert again.status_code == 200  # idempotent


def test_the_impersonator_revokes_their_own_session(client: TestClient[Any], stack: Stack) -> None:
    s = session(client, stack, 43, team_admin="5")
    assert client.post(revoke(s["session_id"]), headers=stack.bearer("team-admin", "5")).status_code == 200
    assert introspect(client, stack, s["access_token"]) == {"active": False}


@pytest.mark.parametrize(
    ("role", "sub", "location"),
    [("operator", "7", "2"), ("customer", "42", "1"), ("team-admin", "5", "1"), ("customer", "99", "1")],
)
def test_others_cannot_revoke_and_learn_nothing(
    client: TestClient[Any], stack: Stack, role: str, sub: str, location: str
) -> None:
    s = session(client, stack)  # minted by operator 7 in location 1
    response = client.post(revoke(s["session_id"]), headers=stack.bearer(role, sub, location))
    assert_problem(response, 404, "session-not-found")
    assert introspect(client, stack, s["access_token"])["active"] is True


def test_revoking_unknown_or_unexchanged_sessions_is_404(client: TestClient[Any], stack: Stack) -> None:
    operator = stack.bearer("operator", "7")
    assert_problem(client.post(revoke("A" * 22), headers=operator), 404, "session-not-found")
    token = mint(client, stack)
    import jwt  # noqa: PLC0415

    jti = jwt.decode(token, options={"verify_signature": False})["jti"]
    assert_problem(client.post(revoke(jti), headers=operator), 404, "session-not-found")
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200  # the token itself is untouched


@pytest.mark.parametrize("sid", ["short", "has space", "a" * 65, "..%2F..%2Fetc"])
def test_revoke_rejects_malformed_session_ids(client: TestClient[Any], stack: Stack, sid: str) -> None:
    response = client.post(revoke(sid), headers=stack.bearer("operator", "7"))
    assert 400 <= response.status_code < 500
    assert response.headers["content-type"].startswith("application/problem+json")


def test_an_impersonated_session_cannot_revoke(client: TestClient[Any], stack: Stack) -> None:
    s = session(client, stack)
    nested = {"Authorization": f"Bearer {s['access_token']}"}
    assert_problem(client.post(revoke(s["session_id"]), headers=nested), 403, "nested-impersonation")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_thousand_concurrent_exchanges_of_hundred_tokens(make_stack: Callable[..., Stack]) -> None:
    """1,000 concurrent exchanges, 10 of each of 100 tokens: exactly 100 sessions, and every one of them revoked
    by the replays of its own token."""
    # All 1,000 in flight at once on one event loop: each holds a connection (past the pool's size a request is
    # 503, connection.py) and waits its turn of the loop behind the others' signatures, far past the 0.5 s a
    # Redis reply is given in production.
    stack = make_stack(
        mint_rate_per_actor=1000, mint_rate_per_location=1000, redis_max_connections=2000, redis_timeout_s=30
    )
    operator = stack.bearer("operator", "7")
    async with concurrently_served(create_app(stack.settings)) as client:
        tokens = []
        for n in range(100):
            minted = await client.get(STAFF, params={"coworkerId": 42 + n % 2}, headers=operator)
            tokens.append(minted.json()["token"])
        attempts = [token for token in tokens for _ in range(10)]
        responses = await asyncio.gather(*(client.post(EXCHANGE, json={"token": t}) for t in attempts))
        won = [r.json() for r in responses if r.status_code == 200]
        assert len(won) == 100
        assert len({w["session_id"] for w in won}) == 100
        refused = {r.json()["type"] for r in responses if r.status_code != 200}
        assert refused == {"urn:authority:problem:token-replayed"}
        checks = await asyncio.gather(
            *(client.post(INTROSPECT, data={"token": w["access_token"]}, headers=operator) for w in won)
        )
        assert [c.json() for c in checks] == [{"active": False}] * 100
