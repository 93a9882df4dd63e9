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
from urllib.parse import quote_plus

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from litestar.testing import TestClient

from authority.app import create_app
from authority.dpop import ath_of
from authority.keys.jwk import public_jwk
from authority.settings import TokenClient
from authority.token_endpoint import ACCESS_TOKEN_TYPE, COWORKER_TOKEN_TYPE, GRANT_TYPE, JWT_TOKEN_TYPE
from tests.helpers import (
    END_CURRENT,
    EXCHANGE,
    INTROSPECT,
    METADATA,
    STAFF,
    TOKEN,
    Stack,
    decode_unverified,
    forge,
    hs256,
    team,
    unsigned,
)

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

    def claims(self, method: str, path: str, *, url: str | None = None, **extra: Any) -> dict[str, Any]:
        """A fresh proof's claims for ``method`` to ``ISSUER + path`` (or to ``url``), with ``extra`` claims (``nonce``,
        ``ath``, another ``iat``; None: left out)."""
        claims = {"jti": secrets.token_urlsafe(16), "htm": method, "htu": url or ISSUER + path, "iat": int(time.time())}
        return {name: value for name, value in {**claims, **extra}.items() if value is not None}

    def proof(self, method: str, path: str, **claims: Any) -> str:
        return jwt.encode(self.claims(method, path, **claims), self.key, algorithm="ES256",
                          headers={"typ": "dpop+jwt", "jwk": self.jwk})  # fmt: skip


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
        assert introspected["token_type"] == "DPoP"  # RFC 9449 section 6.2: the scheme it is presented with
    unbound = redeem(client, minted(client, stack)).json()["access_token"]
    introspected = client.post(INTROSPECT, data={"token": unbound}, headers=stack.bearer("operator", "7")).json()
    assert (introspected["token_type"], "cnf" in introspected) == ("Bearer", False)


@pytest.mark.parametrize(
    "bad",
    ["another-path", "reused", "another-method", "not-a-jwt", "alg-none", "hs256-public-key", "stale-iat",
     "future-iat"],
)  # fmt: skip
def test_a_bad_proof_is_refused_and_spends_nothing(client: TestClient[Any], stack: Stack, bad: str) -> None:
    """The proof matrix of the issue through the service (another key and a proof for another token need a bound
    token: ``test_required_dpop_...`` and ``test_a_bound_session_...``)."""
    holder = Holder()
    token = minted(client, stack)
    good = holder.proof("POST", TOKEN)
    if bad == "reused":
        assert redeem(client, minted(client, stack), DPoP=good).status_code == 200
    header = {"typ": "dpop+jwt", "jwk": holder.jwk}
    pem = holder.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    proofs: dict[str, Callable[[], str]] = {
        "another-path": lambda: holder.proof("POST", EXCHANGE),
        "reused": lambda: good,
        "another-method": lambda: holder.proof("GET", TOKEN),
        "not-a-jwt": lambda: "nope",
        "alg-none": lambda: forge({**header, "alg": "none"}, holder.claims("POST", TOKEN), unsigned),
        "hs256-public-key": lambda: forge({**header, "alg": "HS256"}, holder.claims("POST", TOKEN), hs256(pem)),
        "stale-iat": lambda: holder.proof("POST", TOKEN, iat=int(time.time()) - 3600),
        "future-iat": lambda: holder.proof("POST", TOKEN, iat=int(time.time()) + 3600),
    }
    proof = proofs[bad]()
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


def test_a_token_minted_bound_needs_its_key_even_with_dpop_off(make_stack: Callable[..., Stack]) -> None:
    """A binding made while DPoP was required holds after it is switched off: no proof, or another key's, is
    refused and spends nothing; the minter's key redeems, and the session stays bound."""
    stack = make_stack(dpop="required")
    minter, thief = Holder(), Holder()
    with stack.client() as required:
        token = minted(required, stack, DPoP=minter.proof("GET", STAFF))
    with stack.client(dpop="off") as client:
        oauth_error(redeem(client, token), 400, "invalid_dpop_proof")
        oauth_error(redeem(client, token, DPoP=thief.proof("POST", TOKEN)), 400, "invalid_dpop_proof")
        stolen = client.post(EXCHANGE, json={"token": token})
        assert stolen.json()["type"] == "urn:authority:problem:invalid-dpop-proof"
        mine = redeem(client, token, DPoP=minter.proof("POST", TOKEN))
        assert mine.status_code == 200, mine.text
        assert mine.json()["token_type"] == "DPoP"
        access = mine.json()["access_token"]
        assert decode_unverified(access)["cnf"] == {"jkt": minter.jkt}
        refused = client.post(END_CURRENT, headers={"Authorization": f"DPoP {access}"})  # and used with a proof only
        assert refused.json()["type"] == "urn:authority:problem:invalid-dpop-proof"


# --- our own DPoP-bound sessions presented back to us (RFC 9449 section 7) -------------------------------------


def bound_session(client: TestClient[Any], stack: Stack, holder: Holder) -> str:
    response = redeem(client, minted(client, stack), DPoP=holder.proof("POST", TOKEN))
    assert response.status_code == 200, response.text
    access: str = response.json()["access_token"]
    return access


def session_active(client: TestClient[Any], stack: Stack, access: str) -> bool:
    answer = client.post(INTROSPECT, data={"token": access}, headers=stack.bearer("operator", "7"))
    return bool(answer.json()["active"])


def end_with(client: TestClient[Any], access: str, scheme: str = "DPoP", proof: str | None = None) -> Any:
    headers = {"Authorization": f"{scheme} {access}", **({"DPoP": proof} if proof else {})}
    return client.post(END_CURRENT, headers=headers)


def test_a_bound_session_is_refused_as_a_bearer(client: TestClient[Any], stack: Stack) -> None:
    holder = Holder()
    access = bound_session(client, stack, holder)
    proof = holder.proof("POST", END_CURRENT, ath=ath_of(access))
    for scheme in ("Bearer", "bearer"):
        response = end_with(client, access, scheme, proof)
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"].startswith('DPoP error="invalid_token"')
    assert session_active(client, stack, access)
    unbound = redeem(client, minted(client, stack)).json()["access_token"]
    response = end_with(client, unbound, "DPoP", holder.proof("POST", END_CURRENT, ath=ath_of(unbound)))
    assert response.status_code == 401  # and the DPoP scheme is for a bound token only
    assert response.headers["www-authenticate"].startswith('DPoP error="invalid_token"')
    assert session_active(client, stack, unbound)


def test_a_bound_session_with_its_proof_is_accepted_once_per_proof(client: TestClient[Any], stack: Stack) -> None:
    holder = Holder()
    access = bound_session(client, stack, holder)
    proof = holder.proof("POST", END_CURRENT, ath=ath_of(access))
    ended = end_with(client, access, "DPoP", proof)
    assert ended.status_code == 200, ended.text
    assert ended.json()["ended"] is True
    assert not session_active(client, stack, access)
    again = end_with(client, access, "DPoP", proof)
    assert again.status_code == 401
    assert "already used" in again.json()["detail"]


@pytest.mark.parametrize("bad", ["no-proof", "another-token", "no-ath", "another-key", "another-method"])
def test_a_bound_session_with_a_bad_proof_is_refused_and_ends_nothing(
    client: TestClient[Any], stack: Stack, bad: str
) -> None:
    holder, other = Holder(), Holder()
    access = bound_session(client, stack, holder)
    another = bound_session(client, stack, holder)  # the same key, another token: its proofs hash another ath
    proof = {
        "no-proof": None,
        "another-token": holder.proof("POST", END_CURRENT, ath=ath_of(another)),
        "no-ath": holder.proof("POST", END_CURRENT),
        "another-key": other.proof("POST", END_CURRENT, ath=ath_of(access)),
        "another-method": holder.proof("GET", END_CURRENT, ath=ath_of(access)),
    }[bad]
    response = end_with(client, access, "DPoP", proof)
    assert response.status_code == 401, response.text
    assert response.json()["type"] == "urn:authority:problem:invalid-dpop-proof"
    assert response.headers["www-authenticate"].startswith('DPoP error="invalid_dpop_proof"')
    assert session_active(client, stack, access)


# --- one htu per route: the URL the metadata publishes --------------------------------------------------------

PROXY = "/behind-a-proxy"  # an ASGI root_path, as a proxy mounting the service under a prefix sets it


@pytest.mark.parametrize("route", ["impersonate", "team-impersonate", "exchange", "token", "end-current"])
def test_a_proofs_htu_is_the_published_url_on_every_route(stack: Stack, route: str) -> None:
    """Whatever the ASGI root_path, each route takes a proof for the URL the metadata publishes for it (the
    issuer and the route's path) and refuses one for the URL with the root_path in it."""
    holder = Holder()
    with TestClient(create_app(stack.settings), root_path=PROXY) as client:
        meta = client.get(METADATA).json()
        published = {
            "impersonate": meta["authority_impersonation_endpoint"],
            "team-impersonate": meta["authority_team_impersonation_endpoint_template"].replace("{coworkerId}", "43"),
            "exchange": meta["authority_exchange_endpoint"],
            "token": meta["token_endpoint"],
            "end-current": ISSUER + END_CURRENT,
        }[route]
        assert published.startswith(ISSUER + "/")
        assert PROXY not in published

        def attempt(url: str) -> Any:
            if route == "impersonate":
                dpop = holder.proof("GET", "", url=url)
                return client.get(STAFF, params={"coworkerId": 42}, headers={**stack.bearer("operator", "7"),
                                                                              "DPoP": dpop})  # fmt: skip
            if route == "team-impersonate":
                return client.get(team(43), headers={**stack.bearer("team-admin", "5"),
                                                     "DPoP": holder.proof("GET", "", url=url)})  # fmt: skip
            if route == "exchange":
                token = minted(client, stack)
                return client.post(EXCHANGE, json={"token": token}, headers={"DPoP": holder.proof("POST", "", url=url)})
            if route == "token":
                return redeem(client, minted(client, stack), DPoP=holder.proof("POST", "", url=url))
            access = redeem(client, minted(client, stack), DPoP=holder.proof("POST", "", url=meta["token_endpoint"]))
            access_token = access.json()["access_token"]
            return end_with(client, access_token, "DPoP", holder.proof("POST", "", url=url, ath=ath_of(access_token)))

        proxied = attempt(ISSUER + PROXY + published.removeprefix(ISSUER))
        assert proxied.status_code in (400, 401), proxied.text
        assert "htu" in proxied.text
        accepted = attempt(published)
        assert accepted.status_code == 200, accepted.text


# --- nonces where the mint asks for them: a resource server's answer ------------------------------------------


def test_the_mint_asks_for_a_nonce_with_a_401_challenge(make_stack: Callable[..., Stack]) -> None:
    """RFC 9449 section 9: 401, ``WWW-Authenticate: DPoP error="use_dpop_nonce"`` and the nonce in DPoP-Nonce (the
    token endpoint answers section 8's 400: ``test_server_nonces_are_asked_for_then_accepted``)."""
    stack = make_stack(dpop_nonce_secret="n" * 40)
    holder = Holder()
    with stack.client() as client:
        first = client.get(STAFF, params={"coworkerId": 42},
                           headers={**stack.bearer("operator", "7"), "DPoP": holder.proof("GET", STAFF)})  # fmt: skip
        assert first.status_code == 401, first.text
        assert first.headers["www-authenticate"].startswith('DPoP error="use_dpop_nonce"')
        assert first.json()["type"] == "urn:authority:problem:use-dpop-nonce"
        nonce = first.headers["dpop-nonce"]
        token = minted(client, stack, DPoP=holder.proof("GET", STAFF, nonce=nonce))
        assert decode_unverified(token)["cnf"] == {"jkt": holder.jkt}
        access = redeem(client, token, DPoP=holder.proof("POST", TOKEN, nonce=nonce)).json()["access_token"]
        ending = end_with(client, access, "DPoP", holder.proof("POST", END_CURRENT, ath=ath_of(access)))
        assert ending.status_code == 401  # a bound session's route asks the same way
        assert ending.headers["www-authenticate"].startswith('DPoP error="use_dpop_nonce"')
        assert ending.headers["dpop-nonce"] == nonce
        proof = holder.proof("POST", END_CURRENT, ath=ath_of(access), nonce=nonce)
        assert end_with(client, access, "DPoP", proof).status_code == 200


# --- client_secret_basic is form-encoded --------------------------------------------------------------------


def test_client_secret_basic_decodes_the_form_encoding(make_stack: Callable[..., Stack]) -> None:
    """RFC 6749 section 2.3.1: id and secret are form-encoded before base64, so '+' is a space and '%2B' a plus."""
    client_id, secret = "portal backend+1", "a secret with space+plus"
    stack = make_stack(token_clients=[
        TokenClient(client_id=client_id, client_secret_sha256=hashlib.sha256(secret.encode()).hexdigest())
    ])  # fmt: skip
    encoded = f"{quote_plus(client_id)}:{quote_plus(secret)}"
    assert "+" in encoded
    assert "%2B" in encoded
    basic = {"Authorization": "Basic " + base64.b64encode(encoded.encode()).decode()}
    with stack.client() as client:
        response = one_step(client, stack, auth=basic)
        assert response.status_code == 200, response.text
        literal = {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}
        oauth_error(one_step(client, stack, auth=literal), 401, "invalid_client")  # '+' read as a space
