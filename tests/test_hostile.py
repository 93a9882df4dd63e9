"""Hostile input through the real app: oversized headers and bodies, deep nesting, wrong content types, broken
encodings, NUL bytes and look-alike digits, hostile request ids. Each is refused with RFC 9457 problem details —
never a 5xx — and changes nothing: a genuine token minted before still exchanges, exactly once."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.helpers import EXCHANGE, HEALTHZ, INTROSPECT, JWKS, STAFF, Stack, assert_problem, b64, mint, revoke, team

JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}
TOKEN_JSON = '{"token": "x.y.z"}'
# Deep enough to exhaust any recursive JSON decoder at the default recursion limit, small enough for every limit.
DEPTH = 1400


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def jws(header: bytes, payload: bytes) -> str:
    """A compact JWS of these exact bytes, with a signature nobody made."""
    return f"{b64(header)}.{b64(payload)}.{b64(b'x' * 64)}"


DEEP = b',"x":' + nested(DEPTH) + b"}"


@pytest.fixture
def spare(client: TestClient[Any], stack: Stack) -> Iterator[str]:
    """A genuine token minted before the hostile request; afterwards it must still exchange, exactly once."""
    token = mint(client, stack, coworker=43)
    yield token
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200
    assert_problem(client.post(EXCHANGE, json={"token": token}), 401, "token-replayed")


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    """Problem details, never cached publicly, tagged with a request id."""
    body = assert_problem(response, status, code)
    assert "public" not in response.headers.get("cache-control", "")
    assert response.headers["x-request-id"]
    return body


# --- headers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Padding": "p" * 9000},
        {f"X-Many-{i}": "v" * 90 for i in range(100)},
        {"Authorization": "Bearer " + "a" * 9000},
        {"Cookie": "c=" + "x" * 9000},
    ],
    ids=["one-huge", "many-small", "huge-authorization", "huge-cookie"],
)
@pytest.mark.parametrize("path", [STAFF + "?coworkerId=42", EXCHANGE, INTROSPECT, HEALTHZ])
@pytest.mark.usefixtures("spare")
def test_headers_over_the_cap_get_431(
    client: TestClient[Any], stack: Stack, headers: dict[str, str], path: str
) -> None:
    method = "GET" if path.startswith((STAFF, HEALTHZ)) else "POST"
    auth = {} if "Authorization" in headers else stack.bearer("operator", "7")
    response = client.request(method, path, headers={**auth, **headers})
    body = refused(response, 431, "headers-too-large")
    assert "8192" in body["detail"]


def test_exchange_refused_for_its_headers_does_not_spend_the_token(client: TestClient[Any], stack: Stack) -> None:
    token = mint(client, stack)
    refused(client.post(EXCHANGE, json={"token": token}, headers={"X-Padding": "p" * 9000}), 431, "headers-too-large")
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200


def test_header_cap_is_the_configured_one(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(max_header_bytes=2048)
    with stack.client() as client:
        padding = {"X-Padding": "p" * 2100}
        refused(client.get(HEALTHZ, headers=padding), 431, "headers-too-large")
        assert client.get(HEALTHZ, headers={"X-Padding": "p" * 1000}).status_code == 200


@pytest.mark.usefixtures("spare")
def test_authorization_under_the_header_cap_but_over_the_token_limit(client: TestClient[Any]) -> None:
    response = client.get(STAFF, params={"coworkerId": 42}, headers={"Authorization": "Bearer " + "a" * 7000})
    assert "4096" in refused(response, 401, "unauthenticated")["detail"]


# --- deep nesting -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("spare")
def test_deeply_nested_json_in_an_introspection_request(client: TestClient[Any], stack: Stack) -> None:
    """Introspection is form-encoded (RFC 7662): a JSON body, however deep, is no form; a deep token is inactive."""
    operator = stack.bearer("operator", "7")
    refused(client.post(INTROSPECT, content=nested(4000), headers={**operator, **JSON}), 415, "unsupported-media-type")
    refused(client.post(INTROSPECT, content=nested(4000), headers={**operator, **FORM}), 400, "invalid-request")
    deep = jws(b'{"alg":"EdDSA","kid":"k"' + DEEP, b"{}")
    answer = client.post(INTROSPECT, data={"token": deep}, headers=operator)
    assert answer.status_code == 200
    assert answer.json() == {"active": False}


@pytest.mark.parametrize(
    ("where", "code"),
    [("exchange-header", "invalid-token"), ("exchange-payload", "bad-signature"),
     ("bearer-header", "unauthenticated"), ("bearer-payload", "unauthenticated")],
)  # fmt: skip
@pytest.mark.usefixtures("spare")
def test_deeply_nested_token(client: TestClient[Any], where: str, code: str) -> None:
    """Nesting deeper than a recursive JSON decoder's stack, inside the 4096-character token limit, unsigned: the
    exchange and the bearer check both refuse it before or without trusting a byte of it."""
    kid = client.get(JWKS).json()["keys"][0]["kid"]
    header, payload = b'{"alg":"EdDSA","typ":"imp+jwt","kid":"%s"' % kid.encode(), b'{"iss":"x"'
    deep_header = where.endswith("header")
    token = jws(header + DEEP, payload + b"}") if deep_header else jws(header + b"}", payload + DEEP)
    assert len(token) <= 4096
    if where.startswith("exchange"):
        refused(client.post(EXCHANGE, json={"token": token}), 401, code)
    else:
        refused(client.get(STAFF, params={"coworkerId": 42}, headers={"Authorization": f"Bearer {token}"}), 401, code)


@pytest.mark.parametrize(
    "body", [nested(4000), b'{"token":' + nested(4000) + b"}", b'{"a":' * 1300 + b"1" + b"}" * 1300],
    ids=["array", "in-token", "objects"],
)  # fmt: skip
@pytest.mark.usefixtures("spare")
def test_deeply_nested_exchange_body_is_400(client: TestClient[Any], body: bytes) -> None:
    assert len(body) <= 8192
    refused(client.post(EXCHANGE, content=body, headers=JSON), 400, "invalid-request")


# --- body size ----------------------------------------------------------------------------------------------


def padded(size: int) -> bytes:
    """An exchange body of exactly ``size`` bytes: ``{"token": "aaa…"}``."""
    shell = b'{"token": ""}'
    return shell[:-2] + b"a" * (size - len(shell)) + shell[-2:]


@pytest.mark.usefixtures("spare")
def test_body_at_the_limit_is_read_and_one_byte_over_is_413(client: TestClient[Any], stack: Stack) -> None:
    limit = stack.settings.max_body_bytes
    at_limit = client.post(EXCHANGE, content=padded(limit), headers=JSON)
    refused(at_limit, 400, "invalid-request")  # read and validated: the token is longer than 4096
    refused(client.post(EXCHANGE, content=padded(limit + 1), headers=JSON), 413, "body-too-large")
    form = b"token=" + b"a" * (limit + 1 - len(b"token="))
    refused(client.post(INTROSPECT, content=form, headers={**stack.bearer("operator", "7"), **FORM}), 413,
            "body-too-large")  # fmt: skip


@pytest.mark.usefixtures("spare")
def test_streamed_body_over_the_limit_is_413(client: TestClient[Any]) -> None:
    """No Content-Length to trust (chunked): the limit holds on the bytes actually read."""

    def chunks() -> Iterator[bytes]:
        yield b'{"token": "'
        for _ in range(20):
            yield b"a" * 512
        yield b'"}'

    refused(client.post(EXCHANGE, content=chunks(), headers=JSON), 413, "body-too-large")


@pytest.mark.usefixtures("spare")
def test_understated_content_length_does_not_smuggle_a_body(client: TestClient[Any]) -> None:
    refused(client.post(EXCHANGE, content=padded(9000), headers={**JSON, "content-length": "20"}), 413,
            "body-too-large")  # fmt: skip


# --- content types and encodings ----------------------------------------------------------------------------


def test_exchange_token_sent_as_a_form_is_refused_and_not_spent(client: TestClient[Any], stack: Stack) -> None:
    token = mint(client, stack)
    refused(client.post(EXCHANGE, data={"token": token}), 415, "unsupported-media-type")
    refused(client.post(EXCHANGE, files={"token": ("token", token.encode())}), 415, "unsupported-media-type")
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("application/json", b"token=x"),
     ("application/json", b'\xef\xbb\xbf{"token": "x.y.z"}'), ("application/json", TOKEN_JSON.encode("utf-16")),
     ("application/json; charset=utf-16", TOKEN_JSON.encode("utf-16")),
     ("application/json", TOKEN_JSON.encode("utf-32"))],
)  # fmt: skip
@pytest.mark.usefixtures("spare")
def test_exchange_body_not_utf8_json_is_400(client: TestClient[Any], content_type: str, body: bytes) -> None:
    """The exchange reads UTF-8 JSON only (RFC 8259 8.1): no BOM, no UTF-16/32 even when the content type says so."""
    refused(client.post(EXCHANGE, content=body, headers={"content-type": content_type}), 400, "invalid-request")


@pytest.mark.parametrize(("content_type", "body"), [("text/plain", b"token=x.y.z"), ("application/xml", b"<t>x</t>")])
@pytest.mark.usefixtures("spare")
def test_exchange_body_of_another_media_type_is_415(client: TestClient[Any], content_type: str, body: bytes) -> None:
    """Refused for its media type, before a byte of it is parsed."""
    refused(client.post(EXCHANGE, content=body, headers={"content-type": content_type}), 415, "unsupported-media-type")


@pytest.mark.parametrize("body", [b'{"token": "\xff\xfe"}', b'{"token": "a.b.c\xc0\xaf"}', b'{"\xff": 1}'])
@pytest.mark.usefixtures("spare")
def test_non_utf8_exchange_body_is_400(client: TestClient[Any], body: bytes) -> None:
    refused(client.post(EXCHANGE, content=body, headers=JSON), 400, "invalid-request")


@pytest.mark.parametrize("body", [b"token=\xff\xfe", b"token=%ff%fe", b"token=a%00b", b"token=%C0%AF..%2F"])
@pytest.mark.usefixtures("spare")
def test_introspection_of_broken_bytes_is_inactive(client: TestClient[Any], stack: Stack, body: bytes) -> None:
    response = client.post(INTROSPECT, content=body, headers={**stack.bearer("operator", "7"), **FORM})
    assert response.status_code == 200
    assert response.json() == {"active": False}


# --- NUL bytes and unicode in query and path ----------------------------------------------------------------

LOOKALIKES = ["4%002", "42%00", "%00", "%EF%BC%94%EF%BC%92", "%D9%A4%D9%A2", "%E2%91%A3", "4%E2%80%8B2", "42%0D",
              "%ff", "%C0%B4%C0%B2", "%F0%9F%92%A9"]  # fmt: skip


@pytest.mark.parametrize("raw", LOOKALIKES)
@pytest.mark.usefixtures("spare")
def test_nul_and_unicode_digits_are_not_ids(client: TestClient[Any], stack: Stack, raw: str) -> None:
    """Fullwidth and Arabic-Indic digits, a circled four, a zero-width space, overlong UTF-8, NUL: none is 42."""
    operator, admin = stack.bearer("operator", "7"), stack.bearer("team-admin", "5")
    refused(client.get(f"{STAFF}?coworkerId={raw}", headers=operator), 400, "invalid-request")
    refused(client.get(team(raw), headers=admin), 400, "invalid-request")
    refused(client.post(revoke("a" * 16 + raw), headers=operator), 400, "invalid-request")


@pytest.mark.usefixtures("spare")
def test_trailing_newline_is_not_an_id(client: TestClient[Any], stack: Stack) -> None:
    operator, admin = stack.bearer("operator", "7"), stack.bearer("team-admin", "5")
    refused(client.get(f"{STAFF}?coworkerId=42%0A", headers=operator), 400, "invalid-request")
    refused(client.get(team("43%0A"), headers=admin), 400, "invalid-request")
    refused(client.post(revoke("a" * 16 + "%0A"), headers=operator), 400, "invalid-request")


@pytest.mark.parametrize("path", ["/nope%00", "/%00", f"{EXCHANGE}%00", f"/%E2%80%AE{HEALTHZ}", "/.%2e/.%2e/etc"])
def test_nul_and_unicode_in_unknown_paths_are_404(client: TestClient[Any], path: str) -> None:
    assert_problem(client.get(path), 404, "not-found")


@pytest.mark.usefixtures("spare")
def test_nul_in_a_token_is_refused(client: TestClient[Any], stack: Stack) -> None:
    refused(client.post(EXCHANGE, json={"token": "a\x00.b.c"}), 401, "invalid-token")
    token = mint(client, stack)
    refused(client.post(EXCHANGE, json={"token": token + "\x00"}), 401, "invalid-token")
    refused(client.get(STAFF, params={"coworkerId": 42}, headers={"Authorization": "Bearer a\x00b.c.d"}), 401,
            "unauthenticated")  # fmt: skip
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200


# --- request ids --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given", ["abc-123", "A.b_c-9", "x" * 64])
def test_sane_request_id_is_echoed_on_success_and_refusal(client: TestClient[Any], stack: Stack, given: str) -> None:
    rid = {"X-Request-ID": given}
    responses = [
        client.get(HEALTHZ, headers=rid),
        client.get(STAFF, params={"coworkerId": 42}, headers={**rid, **stack.bearer("operator", "7")}),
        client.get(STAFF, params={"coworkerId": 42}, headers=rid),
        client.post(EXCHANGE, json={"token": "x.y.z"}, headers=rid),
        client.post(EXCHANGE, content=padded(9000), headers={**rid, **JSON}),
        client.get(HEALTHZ, headers={**rid, "X-Padding": "p" * 9000}),
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 401, 413, 431]
    assert all(r.headers.get_list("x-request-id") == [given] for r in responses)


@pytest.mark.parametrize(
    "given",
    [b"x" * 65, b"x" * 200, b"a\nb", b"a\r\nSet-Cookie: stolen=1", b"a b", b"a\tb", b"../../x", b"a;b", b"\xff\xfe",
     "r\u00e9".encode("latin-1"), b"", b"a\x00b"],
    ids=lambda v: repr(v[:12]),
)  # fmt: skip
def test_hostile_request_id_is_replaced(client: TestClient[Any], given: bytes) -> None:
    response = client.get(HEALTHZ, headers=[(b"X-Request-ID", given)])
    assert response.status_code == 200
    assert "set-cookie" not in response.headers
    [echoed] = response.headers.get_list("x-request-id")
    assert echoed.encode() != given
    assert echoed.isalnum()
    assert len(echoed) <= 64


def test_requests_that_match_no_route_still_carry_their_id(client: TestClient[Any]) -> None:
    """The header cap is route middleware (Litestar runs none for a path that matches no route): such a request
    gets its 404/405, parses nothing, and still carries its request id."""
    rid = {"X-Request-ID": "rid-404"}
    assert client.get("/nope", headers=rid).headers.get("x-request-id") == "rid-404"
    assert client.delete(EXCHANGE, headers=rid).headers.get("x-request-id") == "rid-404"
    refused(client.get("/nope", headers={"X-Padding": "p" * 9000}), 404, "not-found")


# --- caching ------------------------------------------------------------------------------------------------


def test_token_responses_are_no_store_and_their_refusals_never_public(client: TestClient[Any], stack: Stack) -> None:
    operator = stack.bearer("operator", "7")
    token = mint(client, stack)
    minted = client.get(STAFF, params={"coworkerId": 43}, headers=operator)
    session = client.post(EXCHANGE, json={"token": token})
    introspected = client.post(INTROSPECT, data={"token": session.json()["access_token"]}, headers=operator)
    revoked = client.post(revoke(session.json()["session_id"]), headers=operator)
    for response in (minted, session, introspected, revoked):
        assert response.status_code == 200, response.text
        assert "no-store" in response.headers["cache-control"]
    refusals = [
        client.get(STAFF, params={"coworkerId": 42}),
        client.get(STAFF, params={"coworkerId": "x"}, headers=operator),
        client.get(STAFF, params={"coworkerId": 4242}, headers=operator),
        client.post(EXCHANGE, json={"token": token}),
        client.post(EXCHANGE, content=b"{", headers=JSON),
        client.post(EXCHANGE, content=padded(9000), headers=JSON),
        client.post(INTROSPECT, data={"token": "x"}),
        client.post(revoke("a" * 16), headers=operator),
        client.get(STAFF, params={"coworkerId": 42}, headers={**operator, "X-Padding": "p" * 9000}),
    ]
    assert [r.status_code for r in refusals] == [401, 400, 404, 401, 400, 413, 401, 404, 431]
    for response in refusals:
        assert "public" not in response.headers.get("cache-control", ""), response.text
        assert json.loads(response.text)["status"] == response.status_code


def test_exchange_wants_json_and_spends_nothing_otherwise(client: TestClient[Any], stack: Stack) -> None:
    token = mint(client, stack)
    body = json.dumps({"token": token})
    for media_type in ("text/plain", "application/x-www-form-urlencoded"):
        response = client.post(EXCHANGE, content=body, headers={"content-type": media_type})
        refused(response, 415, "unsupported-media-type")
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200


def test_a_repeated_coworker_id_is_ambiguous(client: TestClient[Any], stack: Stack) -> None:
    response = client.get(f"{STAFF}?coworkerId=42&coworkerId=43", headers=stack.bearer("operator", "7"))
    refused(response, 400, "invalid-request")
