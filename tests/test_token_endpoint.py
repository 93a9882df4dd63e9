"""RFC 8693 at /oauth2/token: the seed's exchange in standard form (the same code path), the one-step flow for
authenticated clients, RFC 6749 errors, and DPoP-bound sessions (RFC 9449) on both exchanges. Real app, real Redis."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from litestar.testing import TestClient

from authority.keys.jwk import public_jwk
from authority.settings import TokenClient
from authority.token_endpoint import ACCESS_TOKEN_TYPE, COWORKER_TOKEN_TYPE, GRANT_TYPE, JWT_TOKEN_TYPE
from tests.helpers import EXCHANGE, INTROSPECT, STAFF, TOKEN, Stack, decode_unverified

ISSUER = "http://authority.test"
SECRET = "s3cret-of-the-portal-backend"


def minted(client: TestClient[Any], stack: Stack, coworker: int = 42, **headers: str) -> str:
    response = client.get(STAFF, params={"coworkerId": coworker}, headers={**stack.bearer("operator", "7"), **headers})
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def redeem(client: TestClient[Any], token: str, **headers: str) -> Any:
    form = {"grant_type": GRANT_TYPE, "subject_token": token, "subject_token_type": JWT_TOKEN_TYPE}
    return client.post(TOKEN, data=form, headers=headers)


def oauth_error(response: Any, status: int, error: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error, body
    description: str = body["error_description"]
    return description


class Holder:
    """A DPoP key and the proofs it signs (RFC 9449 section 4.2)."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.jwk = {
            k: v for k, v in public_jwk(self.key.public_key(), "ES256").items() if k in ("kty", "crv", "x", "y")
        }
        self.jkt = public_jwk(self.key.public_key(), "ES256")["kid"]

    def proof(self, method: str, path: str, *, nonce: str | None = None) -> str:
        claims: dict[str, Any] = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": ISSUER + path,
                                  "iat": int(time.time())}  # fmt: skip
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.jwk})


# --- (a) the seed's exchange, in standard form ----------------------------------------------------------------


def test_an_impersonation_token_for_a_session_per_rfc_8693(client: TestClient[Any], stack: Stack) -> None:
    response = redeem(client, minted(client, stack))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert (body["issued_token_type"], body["token_type"]) == (ACCESS_TOKEN_TYPE, "Bearer")
    assert body["expires_in"] == stack.settings.session_ttl_s
    assert "refresh_token" not in body
    claims = decode_unverified(body["access_token"])
    assert (claims["sub"], claims["act"]["sub"], claims["sid"]) == ("42", "7", body["session_id"])


def test_one_token_one_session_whichever_door(client: TestClient[Any], stack: Stack) -> None:
    token = minted(client, stack)
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200
    assert "already exchanged" in oauth_error(redeem(client, token), 400, "invalid_grant")
    token = minted(client, stack)
    assert redeem(client, token).status_code == 200
    assert client.post(EXCHANGE, json={"token": token}).json()["type"] == "urn:authority:problem:token-replayed"


def test_fifty_racing_requests_for_one_token_yield_one_session(client: TestClient[Any], stack: Stack) -> None:
    token = minted(client, stack)
    statuses: list[int] = []
    lock = threading.Lock()

    def race() -> None:
        status = redeem(client, token).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=race) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(statuses) == [200] + [400] * 49


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({}, "invalid_request"),
        ({"grant_type": "client_credentials"}, "unsupported_grant_type"),
        ({"grant_type": GRANT_TYPE}, "invalid_request"),
        ({"grant_type": GRANT_TYPE, "subject_token": "x", "subject_token_type": "urn:x"}, "invalid_request"),
        ({"grant_type": GRANT_TYPE, "subject_token": "x.y.z", "subject_token_type": JWT_TOKEN_TYPE}, "invalid_grant"),
        ({"grant_type": GRANT_TYPE, "subject_token": "a", "subject_token_type": JWT_TOKEN_TYPE,
          "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"}, "invalid_request"),
    ],
    ids=["empty", "other-grant", "no-subject", "unknown-type", "garbage-token", "refresh-token-asked"],
)  # fmt: skip
def test_rfc_6749_errors(client: TestClient[Any], form: dict[str, str], error: str) -> None:
    oauth_error(client.post(TOKEN, data=form), 400, error)


def test_a_repeated_parameter_or_a_json_body_is_an_invalid_request(client: TestClient[Any], stack: Stack) -> None:
    token = minted(client, stack)
    body = f"grant_type={GRANT_TYPE}&subject_token={token}&subject_token={token}&subject_token_type={JWT_TOKEN_TYPE}"
    headers = {"content-type": "application/x-www-form-urlencoded"}
    assert "subject_token" in oauth_error(client.post(TOKEN, content=body, headers=headers), 400, "invalid_request")
    as_json = client.post(TOKEN, json={"grant_type": GRANT_TYPE})
    oauth_error(as_json, 400, "invalid_request")
    assert redeem(client, token).status_code == 200  # refused requests spent nothing


# --- (b) one step: a coworker id and the actor's bearer, for an authenticated client --------------------------


@pytest.fixture
def assertion_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, str, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = public_jwk(key.public_key(), "ES256")
    path = tmp_path / "client-jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return key, jwk["kid"], path


@pytest.fixture
def portal(make_stack: Callable[..., Stack], assertion_key: tuple[Any, str, Path]) -> Stack:
    clients = [
        TokenClient(client_id="portal-backend", client_secret_sha256=hashlib.sha256(SECRET.encode()).hexdigest()),
        TokenClient(client_id="portal-jwt", jwks_file=str(assertion_key[2])),
    ]
    return make_stack(token_clients=clients)


def one_step(client: TestClient[Any], stack: Stack, *, actor: tuple[str, str] = ("operator", "7"), coworker: str = "42",
             auth: dict[str, str] | None = None, **extra: str) -> Any:  # fmt: skip
    form = {
        "grant_type": GRANT_TYPE,
        "subject_token": coworker,
        "subject_token_type": COWORKER_TOKEN_TYPE,
        "actor_token": stack.bearer(*actor)["Authorization"][7:],
        "actor_token_type": JWT_TOKEN_TYPE,
        **extra,
    }
    basic = base64.b64encode(f"portal-backend:{SECRET}".encode()).decode()
    return client.post(TOKEN, data=form, headers={"Authorization": f"Basic {basic}"} if auth is None else auth)


def test_one_step_with_client_secret_basic(portal: Stack) -> None:
    with portal.client() as client:
        response = one_step(client, portal, reason="customer on the phone")
        assert response.status_code == 200, response.text
        claims = decode_unverified(response.json()["access_token"])
        assert (claims["sub"], claims["act"]["sub"], claims["reason"]) == ("42", "7", "customer on the phone")
        team_admin = one_step(client, portal, actor=("team-admin", "5"), coworker="43")
        assert team_admin.status_code == 200, team_admin.text
        assert decode_unverified(team_admin.json()["access_token"])["act"]["role"] == "team-admin"


def test_one_step_applies_the_mint_policy(portal: Stack) -> None:
    with portal.client() as client:
        oauth_error(one_step(client, portal, coworker="200"), 400, "invalid_request")  # not in the location
        oauth_error(one_step(client, portal, actor=("team-admin", "5"), coworker="99"), 400, "invalid_request")
        oauth_error(one_step(client, portal, coworker="4x"), 400, "invalid_request")


@pytest.mark.parametrize(
    "auth",
    [{}, {"Authorization": "Basic " + base64.b64encode(b"portal-backend:wrong").decode()},
     {"Authorization": "Basic " + base64.b64encode(f"nobody:{SECRET}".encode()).decode()},
     {"Authorization": "Basic !!!"}],
    ids=["none", "wrong-secret", "unknown-client", "garbage"],
)  # fmt: skip
def test_one_step_needs_an_authenticated_client(portal: Stack, auth: dict[str, str]) -> None:
    with portal.client() as client:
        response = one_step(client, portal, auth=auth)
        oauth_error(response, 401, "invalid_client")
        assert response.headers["www-authenticate"].startswith("Basic")


def assertion(key: Any, kid: str, *, aud: str = ISSUER + TOKEN, jti: str | None = None, client: str = "portal-jwt"
              ) -> str:  # fmt: skip
    now = int(time.time())
    claims = {"iss": client, "sub": client, "aud": aud, "iat": now, "exp": now + 60, "jti": jti or secrets.token_hex(8)}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})


def test_one_step_with_private_key_jwt_each_assertion_once(portal: Stack, assertion_key: tuple[Any, str, Path]) -> None:
    key, kid, _ = assertion_key
    jwt_bearer = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    with portal.client() as client:
        signed = assertion(key, kid)
        good = one_step(client, portal, auth={}, client_assertion=signed, client_assertion_type=jwt_bearer)
        assert good.status_code == 200, good.text
        again = one_step(client, portal, auth={}, client_assertion=signed, client_assertion_type=jwt_bearer)
        assert "already used" in oauth_error(again, 401, "invalid_client")
        elsewhere = assertion(key, kid, aud="https://elsewhere.test/token")
        oauth_error(one_step(client, portal, auth={}, client_assertion=elsewhere, client_assertion_type=jwt_bearer),
                    401, "invalid_client")  # fmt: skip
        stranger = ec.generate_private_key(ec.SECP256R1())
        forged = assertion(stranger, kid)
        oauth_error(one_step(client, portal, auth={}, client_assertion=forged, client_assertion_type=jwt_bearer),
                    401, "invalid_client")  # fmt: skip


def test_an_impersonation_token_needs_no_client(portal: Stack) -> None:
    with portal.client() as client:
        assert redeem(client, minted(client, portal)).status_code == 200


# --- DPoP -----------------------------------------------------------------------------------------------------


def test_a_proof_binds_the_session_to_its_key(client: TestClient[Any], stack: Stack) -> None:
    holder = Holder()
    for door in (TOKEN, EXCHANGE):
        token = minted(client, stack)
        proof = {"DPoP": holder.proof("POST", door)}
        response = redeem(client, token, **proof) if door == TOKEN else client.post(EXCHANGE, json={"token": token},
                                                                                       headers=proof)  # fmt: skip
        assert response.status_code == 200, response.text
        assert response.json()["token_type"] == "DPoP"
        access = response.json()["access_token"]
        assert decode_unverified(access)["cnf"] == {"jkt": holder.jkt}
        introspected = client.post(INTROSPECT, data={"token": access}, headers=stack.bearer("operator", "7")).json()
        assert introspected["cnf"] == {"jkt": holder.jkt}


@pytest.mark.parametrize(
    "bad",
    ["another-path", "reused", "another-method", "not-a-jwt"],
)
def test_a_bad_proof_is_refused_and_spends_nothing(client: TestClient[Any], stack: Stack, bad: str) -> None:
    holder = Holder()
    token = minted(client, stack)
    good = holder.proof("POST", TOKEN)
    if bad == "reused":
        assert redeem(client, minted(client, stack), DPoP=good).status_code == 200
    proof = {"another-path": holder.proof("POST", EXCHANGE), "reused": good,
             "another-method": holder.proof("GET", TOKEN), "not-a-jwt": "nope"}[bad]  # fmt: skip
    oauth_error(redeem(client, token, DPoP=proof), 400, "invalid_dpop_proof")
    assert redeem(client, token).status_code == 200  # the token was not spent


def test_required_dpop_binds_the_impersonation_token_to_the_minters_key(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(dpop="required")
    minter, thief = Holder(), Holder()
    with stack.client() as client:
        refused = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
        token = minted(client, stack, DPoP=minter.proof("GET", STAFF))
        assert decode_unverified(token)["cnf"] == {"jkt": minter.jkt}
        stolen = client.post(EXCHANGE, json={"token": token}, headers={"DPoP": thief.proof("POST", EXCHANGE)})
        assert stolen.json()["type"] == "urn:authority:problem:invalid-dpop-proof"
        oauth_error(redeem(client, token), 400, "invalid_dpop_proof")  # no proof at all
        mine = redeem(client, token, DPoP=minter.proof("POST", TOKEN))
        assert mine.status_code == 200, mine.text
        assert decode_unverified(mine.json()["access_token"])["cnf"] == {"jkt": minter.jkt}


def test_server_nonces_are_asked_for_then_accepted(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(dpop_nonce_secret="n" * 40)
    holder = Holder()
    with stack.client() as client:
        token = minted(client, stack)
        first = redeem(client, token, DPoP=holder.proof("POST", TOKEN))
        oauth_error(first, 400, "use_dpop_nonce")
        nonce = first.headers["dpop-nonce"]
        second = redeem(client, token, DPoP=holder.proof("POST", TOKEN, nonce=nonce))
        assert second.status_code == 200, second.text
