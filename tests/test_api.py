"""The HTTP contract through the real ASGI app and a real Redis: every status code, problem-details bodies."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from litestar.testing import TestClient

from tests.helpers import (
    DISCOVERY,
    EXCHANGE,
    HEALTHZ,
    INTROSPECT,
    JWKS,
    READYZ,
    SCHEMA,
    STAFF,
    Stack,
    assert_problem,
    mint,
    team,
)


def public_key_of(client: TestClient[Any], token: str) -> Any:
    kid = jwt.get_unverified_header(token)["kid"]
    jwks = client.get(JWKS).json()
    return jwt.PyJWK({k: v for k, v in next(k for k in jwks["keys"] if k["kid"] == kid).items()}).key


def test_staff_mint_then_exchange_once(client: TestClient[Any], stack: Stack) -> None:
    response = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
    assert response.status_code == 200
    assert response.json().keys() == {"token"}
    assert "no-store" in response.headers["cache-control"]
    token = response.json()["token"]

    header = jwt.get_unverified_header(token)
    assert header["typ"] == "imp+jwt"
    assert header["alg"] == "ES256"  # the default
    claims = jwt.decode(
        token,
        public_key_of(client, token),
        algorithms=["ES256"],
        audience=f"http://authority.test{EXCHANGE}",
        issuer="http://authority.test",
    )
    assert claims["sub"] == "42"
    assert claims["loc"] == "1"
    assert claims["act"] == {"sub": "7", "role": "operator", "iss": "urn:authority:demo-issuer"}
    assert claims["exp"] - claims["iat"] == 60
    assert len(claims["jti"]) >= 22  # 128 bits, base64url

    exchanged = client.post(EXCHANGE, json={"token": token})
    assert exchanged.status_code == 200, exchanged.text
    assert "no-store" in exchanged.headers["cache-control"]
    session = exchanged.json()
    assert session.keys() == {"access_token", "token_type", "expires_in", "session_id"}
    assert session["token_type"] == "Bearer"
    assert session["expires_in"] == 900
    access = session["access_token"]
    assert jwt.get_unverified_header(access)["typ"] == "at+jwt"
    at = jwt.decode(
        access,
        public_key_of(client, access),
        algorithms=["ES256"],
        audience="portal-api",
        issuer="http://authority.test",
    )
    assert at["sub"] == "42"
    assert at["sid"] == session["session_id"]
    assert at["act"] == {"sub": "7", "role": "operator", "iss": "urn:authority:demo-issuer"}
    assert at["client_id"] == "portal"
    assert at["exp"] - at["iat"] == 900
    assert at["jti"] != claims["jti"]

    replay = client.post(EXCHANGE, json={"token": token})
    assert_problem(replay, 401, "token-replayed")


def test_admin_may_mint_too(client: TestClient[Any], stack: Stack) -> None:
    token = mint(client, stack, coworker=99, role="admin")
    assert jwt.decode(token, options={"verify_signature": False})["act"]["role"] == "admin"


def test_team_admin_mints_for_own_team_member(client: TestClient[Any], stack: Stack) -> None:
    response = client.get(team(43), headers=stack.bearer("team-admin", "5"))
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["token"], options={"verify_signature": False})
    assert claims["sub"] == "43"
    # the team admin's own coworker id travels in act, so the exchange can ask whether they still administer 43
    assert claims["act"] == {"sub": "5", "role": "team-admin", "iss": "urn:authority:demo-issuer", "coworker_id": 5}
    assert client.post(EXCHANGE, json={"token": response.json()["token"]}).status_code == 200


@pytest.mark.parametrize(
    ("coworker", "why"),
    [
        (99, "in location, not in the team"),
        (200, "other location"),
        (5, "the team admin themself"),
        (12345, "nobody"),
    ],
)
def test_team_admin_gets_404_outside_own_teams(client: TestClient[Any], stack: Stack, coworker: int, why: str) -> None:
    body = assert_problem(
        client.get(team(coworker), headers=stack.bearer("team-admin", "5")), 404, "coworker-not-found"
    )
    assert str(coworker) in body["detail"], why


def test_member_who_administers_nothing_gets_the_same_404(client: TestClient[Any], stack: Stack) -> None:
    assert_problem(client.get(team(43), headers=stack.bearer("customer", "42")), 404, "coworker-not-found")


def test_staff_on_the_public_path_is_forbidden(client: TestClient[Any], stack: Stack) -> None:
    assert_problem(client.get(team(42), headers=stack.bearer("operator", "7")), 403, "forbidden")


@pytest.mark.parametrize("coworker", [200, 100000, 10**18 - 1])
def test_staff_404_for_coworker_outside_location(client: TestClient[Any], stack: Stack, coworker: int) -> None:
    response = client.get(STAFF, params={"coworkerId": coworker}, headers=stack.bearer("operator", "7"))
    assert_problem(response, 404, "coworker-not-found")


def test_location_is_the_callers(client: TestClient[Any], stack: Stack) -> None:
    response = client.get(STAFF, params={"coworkerId": 200}, headers=stack.bearer("operator", "7", location="2"))
    assert response.status_code == 200
    assert jwt.decode(response.json()["token"], options={"verify_signature": False})["loc"] == "2"


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"coworkerId": ""},
        {"coworkerId": "abc"},
        {"coworkerId": "0"},
        {"coworkerId": "-4"},
        {"coworkerId": "4.5"},
        {"coworkerId": "1e3"},
        {"coworkerId": "+5"},
        {"coworkerId": " 5"},
        {"coworkerId": "05"},
        {"coworkerId": str(10**18)},
    ],
)
def test_staff_400_for_bad_coworker_id(client: TestClient[Any], stack: Stack, query: dict[str, str]) -> None:
    assert_problem(client.get(STAFF, params=query, headers=stack.bearer("operator", "7")), 400, "invalid-request")


@pytest.mark.parametrize("coworker", ["abc", "0", "-1", "1.5", "1e3", "%2B5", "0042"])
def test_public_path_rejects_bad_ids(client: TestClient[Any], stack: Stack, coworker: str) -> None:
    assert_problem(client.get(team(coworker), headers=stack.bearer("team-admin", "5")), 400, "invalid-request")


def test_customer_session_gets_401_on_staff_endpoint(client: TestClient[Any], stack: Stack) -> None:
    response = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("customer", "43"))
    assert_problem(response, 401, "customer-session")


@pytest.mark.parametrize("role", ["guest", "superuser", ""])
def test_unknown_role_is_forbidden(client: TestClient[Any], stack: Stack, role: str) -> None:
    response = client.get(
        STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7", claims={"role": role})
    )
    assert_problem(response, 403, "forbidden")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer not-a-jwt",
        "Bearer a.b.c",
        "Bearer " + "x" * 5000,
    ],
)
def test_401_without_a_valid_bearer(client: TestClient[Any], authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.get(STAFF, params={"coworkerId": 42}, headers=headers)
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_unauthenticated_caller_learns_nothing_about_parameters(client: TestClient[Any]) -> None:
    assert_problem(client.get(STAFF, params={"coworkerId": "abc"}), 401, "unauthenticated")


def test_impersonated_session_cannot_impersonate(client: TestClient[Any], stack: Stack) -> None:
    session = client.post(EXCHANGE, json={"token": mint(client, stack)}).json()
    bearer = {"Authorization": f"Bearer {session['access_token']}"}
    assert_problem(client.get(STAFF, params={"coworkerId": 43}, headers=bearer), 403, "nested-impersonation")
    assert_problem(client.get(team(43), headers=bearer), 403, "nested-impersonation")


def test_caller_token_with_act_is_nested(client: TestClient[Any], stack: Stack) -> None:
    headers = stack.bearer("operator", "7", claims={"act": {"sub": "1"}})
    assert_problem(client.get(STAFF, params={"coworkerId": 42}, headers=headers), 403, "nested-impersonation")


def test_impersonation_token_is_not_a_bearer(client: TestClient[Any], stack: Stack) -> None:
    bearer = {"Authorization": f"Bearer {mint(client, stack)}"}
    assert_problem(client.get(STAFF, params={"coworkerId": 43}, headers=bearer), 401, "unauthenticated")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"token"',
        b"{}",
        b'{"token": 5}',
        b'{"token": ""}',
        b'{"token": null}',
        b'{"token": "a", "extra": 1}',
        b"{not json",
        b'{"token": "' + b"a" * 5000 + b'"}',
    ],
)
def test_exchange_400_for_malformed_body(client: TestClient[Any], body: bytes) -> None:
    response = client.post(EXCHANGE, content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "invalid-request")


def test_exchange_refuses_oversized_body(client: TestClient[Any]) -> None:
    response = client.post(
        EXCHANGE, content=b'{"token": "' + b"a" * 20000 + b'"}', headers={"content-type": "application/json"}
    )
    assert_problem(response, 413, "body-too-large")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "a.b", "...", "eyJhbGciOiJub25lIn0.e30."])
def test_exchange_401_for_garbage_tokens(client: TestClient[Any], token: str) -> None:
    assert_problem(client.post(EXCHANGE, json={"token": token}), 401, "invalid-token")


def test_jwks_and_discovery(client: TestClient[Any]) -> None:
    response = client.get(JWKS)
    assert response.status_code == 200
    assert "max-age=300" in response.headers["cache-control"]
    keys = response.json()["keys"]
    assert len(keys) == 2  # the signer and its published standby
    for key in keys:
        assert (key["kty"], key["crv"], key["alg"], key["use"]) == ("EC", "P-256", "ES256", "sig")
        assert "d" not in key
    not_modified = client.get(JWKS, headers={"If-None-Match": response.headers["etag"]})
    assert not_modified.status_code == 304

    discovered = client.get(DISCOVERY)
    assert "max-age=300" in discovered.headers["cache-control"]
    meta = discovered.json()
    assert meta["issuer"] == "http://authority.test"
    assert meta["jwks_uri"] == f"http://authority.test{JWKS}"
    assert meta["authority_exchange_endpoint"] == f"http://authority.test{EXCHANGE}"  # ours: prefixed (RFC 8414)
    assert meta["introspection_endpoint"] == f"http://authority.test{INTROSPECT}"
    assert "exchange_endpoint" not in meta  # the unprefixed names of before are gone


@pytest.mark.parametrize(
    "given", ["W/{etag}", '"stale", {etag}', '{etag}, W/"stale"', "*"], ids=["weak", "list", "list-weak", "any"]
)
def test_jwks_answers_304_to_every_form_of_if_none_match_rfc_9110_allows(client: TestClient[Any], given: str) -> None:
    etag = client.get(JWKS).headers["etag"]
    assert client.get(JWKS, headers={"If-None-Match": given.format(etag=etag)}).status_code == 304
    assert client.get(JWKS, headers={"If-None-Match": '"stale", W/"older"'}).status_code == 200


@pytest.mark.parametrize("path", [JWKS, DISCOVERY, HEALTHZ, READYZ])
def test_public_reads_answer_head_with_the_get_headers_and_no_body(client: TestClient[Any], path: str) -> None:
    got, head = client.get(path), client.head(path)
    assert (head.status_code, head.content) == (200, b"")
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers.get(name) == got.headers.get(name), name
    if "etag" in got.headers:  # a conditional HEAD is answered like a conditional GET
        assert client.head(path, headers={"If-None-Match": got.headers["etag"]}).status_code == 304


def test_head_is_not_a_way_to_mint(client: TestClient[Any], stack: Stack) -> None:
    """HEAD is answered only where GET is safe: a mint is a GET with an effect, so HEAD there is 405."""
    response = client.head(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
    assert response.status_code == 405


def test_probes_and_schema(client: TestClient[Any]) -> None:
    assert client.get(HEALTHZ).json() == {"status": "ok"}
    assert client.get(READYZ).json() == {"status": "ready"}
    paths = client.get(SCHEMA).json()["paths"]
    assert {STAFF, EXCHANGE, JWKS} <= paths.keys()


def test_unknown_path_is_a_problem(client: TestClient[Any]) -> None:
    assert_problem(client.get("/nope"), 404, "not-found")
    assert_problem(client.delete(EXCHANGE), 405, "method-not-allowed")


def test_openapi_documents_every_refusal_with_an_example(client: TestClient[Any]) -> None:
    paths = client.get(SCHEMA).json()["paths"]
    staff = paths[STAFF]["get"]["responses"]
    assert {"200", "400", "401", "403", "404", "429", "503"} <= staff.keys()
    unauthorized = staff["401"]["content"]["application/problem+json"]
    assert {e["value"]["type"] for e in unauthorized["examples"].values()} == {
        "urn:authority:problem:unauthenticated",
        "urn:authority:problem:customer-session",
        "urn:authority:problem:insufficient-user-authentication",
    }
    exchange = paths[EXCHANGE]["post"]["responses"]
    replay = exchange["401"]["content"]["application/problem+json"]["examples"]
    assert any(e["value"]["type"] == "urn:authority:problem:token-replayed" for e in replay.values())
    assert {"200", "400", "401", "415", "503"} <= exchange.keys()


def test_body_errors_say_what_is_wrong(client: TestClient[Any], stack: Stack) -> None:
    """A form sent where JSON is wanted (and the reverse) is a 415 naming both media types; an empty body says so;
    a parameter error names the parameter as the caller wrote it."""
    form = client.post(EXCHANGE, data={"token": "x"})
    assert_problem(form, 415, "unsupported-media-type")
    assert "application/json" in form.json()["detail"]
    empty = client.post(EXCHANGE, content=b"", headers={"content-type": "application/json"})
    assert_problem(empty, 400, "invalid-request")
    assert "empty" in empty.json()["detail"]
    operator = stack.bearer("operator", "7")
    as_json = client.post(INTROSPECT, json={"token": "x"}, headers=operator)
    assert_problem(as_json, 415, "unsupported-media-type")
    assert "application/x-www-form-urlencoded" in as_json.json()["detail"]
    bad_id = client.get(STAFF, params={"coworkerId": "x"}, headers=operator)
    assert_problem(bad_id, 400, "invalid-request")
    assert [error["key"] for error in bad_id.json()["errors"]] == ["coworkerId"]
    assert bad_id.json()["detail"].startswith("coworkerId: ")  # the detail says what failed, not just the route
    wrong_type = client.post(EXCHANGE, json={"token": 5})
    assert_problem(wrong_type, 400, "invalid-request")
    assert wrong_type.json()["detail"] == "token: Expected `str`, got `int`"
    assert wrong_type.json()["title"] == bad_id.json()["title"]  # one title per code, the detail is specific
