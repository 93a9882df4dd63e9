"""RFC 8725 (JWT Best Current Practices) section 2, "Threats and Vulnerabilities", one test per subsection: each
attack is built by hand and presented to the real app at the two places it accepts a JWT — the exchange endpoint
(our impersonation tokens) and the bearer of the mint endpoints (the trusted issuer's caller tokens) — and refused,
with the genuine token it was derived from still accepted afterwards. ``test_forged.py`` holds the exhaustive
variants of 2.1, 2.7 and 2.8; this file is the catalogue, section by section.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from litestar.testing import TestClient

from authority import demo
from authority.keys.jwk import public_jwk
from authority.settings import TrustedIssuer
from tests import helpers as h


@dataclass
class Target:
    """One place that accepts a JWT, a genuine token it accepts, that token's parts, and the key that signed it."""

    name: str
    client: TestClient[Any]
    stack: h.Stack
    present: Callable[[str], Any]
    header: dict[str, Any]
    claims: dict[str, Any]
    key: ed25519.Ed25519PrivateKey
    genuine: str = field(init=False)

    def __post_init__(self) -> None:
        self.genuine = self.sign()

    def sign(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """The genuine header and claims with changes, signed by the genuine key: refused for the change alone."""
        merged = {k: v for k, v in {**self.claims, **claims}.items() if v is not None}
        return h.forge(self.header if header is None else header, merged, self.key.sign)

    def raw(self, header: bytes, payload: bytes, signer: Callable[[bytes], bytes] | None = None) -> str:
        """A compact JWS over exactly these bytes (signed by the genuine key unless ``signer`` says otherwise)."""
        signing_input = f"{h.b64(header)}.{h.b64(payload)}"
        return f"{signing_input}.{h.b64((signer or self.key.sign)(signing_input.encode()))}"

    def refuses(self, *cases: tuple[str, str]) -> None:
        """Each ``(token, code)`` is refused — with ``code`` at the exchange; on the bearer path every failure is
        ``unauthenticated`` — and then the genuine token is still accepted: refusing changed nothing."""
        for token, code in cases:
            h.assert_problem(self.present(token), 401, code if self.name == "exchange" else "unauthenticated")
        accepted = self.present(self.genuine)
        assert accepted.status_code == 200, accepted.text


def each(code: str, *tokens: str) -> list[tuple[str, str]]:
    return [(token, code) for token in tokens]


def exchange_target(client: TestClient[Any], stack: h.Stack) -> Target:
    header, claims, _ = h.split(h.mint(client, stack))
    return Target("exchange", client, stack, lambda t: client.post(h.EXCHANGE, json={"token": t}), header, claims,
                  h.real_signing_key(client))  # fmt: skip


def bearer_target(client: TestClient[Any], stack: h.Stack) -> Target:
    def present(token: str) -> Any:
        return client.get(h.STAFF, params={"coworkerId": 42}, headers={"Authorization": f"Bearer {token}"})

    return Target("bearer", client, stack, present, h.demo_header(stack), h.caller_claims(stack),
                  demo.demo_key(stack.keys_dir))  # fmt: skip


@pytest.fixture
def stack(make_stack: Callable[..., h.Stack]) -> h.Stack:
    """The forgeries here are built around Ed25519 keys; the other algs, the default ES256 included, are covered by
    test_rotation, test_keys and test_spelling."""
    return make_stack(key_alg="EdDSA")


@pytest.fixture(params=["exchange", "bearer"])
def target(request: pytest.FixtureRequest, client: TestClient[Any], stack: h.Stack) -> Target:
    return exchange_target(client, stack) if request.param == "exchange" else bearer_target(client, stack)


def segments(*parts: bytes) -> str:
    return ".".join(h.b64(part) for part in parts)


def published(client: TestClient[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return client.get(h.JWKS).json()["keys"], client.get(h.DISCOVERY).json()


# --- 2.1 -----------------------------------------------------------------------------------------------------


def test_2_1_weak_signatures_and_insufficient_signature_validation(target: Target) -> None:
    """2.1: "The algorithm can be changed to 'none' by an attacker, and some libraries would trust this value";
    "an RS256 parameter value can be changed into HS256" with the public key used as the HMAC secret.

    Refused because the verifier never takes the algorithm from the token: each key verifies with its own ``alg``
    only (ours from their records; the trusted issuer's from its h.JWKS, within its allowlist), and a signature must
    verify — ``none``, an HMAC keyed with any form of the public key, a stripped or zeroed signature all fail."""
    public = h.public_key_forms(target.key.public_key())
    signing_input = target.genuine.rsplit(".", 1)[0]
    none_header = h.b64(json.dumps({**target.header, "alg": "none"}).encode())
    target.refuses(
        *each(
            "bad-signature",
            h.forge({**target.header, "alg": "none"}, target.claims, h.unsigned),
            f"{none_header}.{signing_input.split('.')[1]}.{target.genuine.rsplit('.', 1)[1]}",  # none, sig kept
            *(h.forge({**target.header, "alg": "HS256"}, target.claims, h.hs256(form)) for form in public.values()),
            h.forge(target.header, target.claims, h.hs256(public["pem"])),  # an HMAC under the real alg's name
            f"{signing_input}.",
            f"{signing_input}.{h.b64(bytes(64))}",
            h.forge({**target.header, "alg": "ES256"}, target.claims, target.key.sign),  # right key, other alg
        )
    )


# --- 2.2 -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_2_2_weak_symmetric_keys(target: Target, alg: str) -> None:
    """2.2: "some applications use a keyed MAC algorithm, such as HS256, to sign tokens but supply a weak
    symmetric key ... vulnerable to offline brute-force or dictionary attacks".

    Refused because there is no symmetric key to guess: signing is asymmetric only (EdDSA, ES256, RS256), the h.JWKS
    publishes no ``oct`` key, discovery advertises no MAC alg, and a MAC token under any secret is refused."""
    keys, meta = published(target.client)
    assert all(key["kty"] != "oct" and "k" not in key for key in keys)
    assert not any(a.startswith("HS") or a == "none" for a in meta["authority_token_signing_alg_values_supported"])
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]

    def mac(secret: bytes) -> Callable[[bytes], bytes]:
        return lambda data: hmac.new(secret, data, digest).digest()

    secrets_tried = (b"", b"secret", b"password", b"authority", b"changeme", b"portal-api")
    target.refuses(*each("bad-signature", *(h.forge({**target.header, "alg": alg}, target.claims, mac(s))
                                            for s in secrets_tried)))  # fmt: skip


# --- 2.3 -----------------------------------------------------------------------------------------------------


def test_2_3_incorrect_composition_of_encryption_and_signature(target: Target) -> None:
    """2.3: "Some libraries that decrypt a JWE-encrypted JWT to obtain a JWS-signed object do not always validate
    the internal signature."

    Refused because the service neither decrypts nor unwraps: a five-part JWE, or a JWS whose payload is another
    JWT (``cty: JWT``), is judged as the outer token alone, and the genuine token wrapped inside vouches for
    nothing. Even the genuine key's signature over a wrapped JWT is no token: the payload must be the claims.
    Wrapping the genuine token does not spend it either."""
    inner = target.genuine.encode()
    jwe_header = {
        "alg": "dir",
        "enc": "A256GCM",
        "cty": "JWT",
        "kid": target.header["kid"],
        "typ": target.header["typ"],
    }
    attacker = ed25519.Ed25519PrivateKey.generate()
    nested = {**target.header, "cty": "JWT"}
    forged_inner = h.forge(target.header, {**target.claims, "sub": "1"}, h.unsigned).encode()
    target.refuses(
        (segments(json.dumps(jwe_header).encode(), b"", os.urandom(12), inner, os.urandom(16)), "invalid-token"),
        (target.raw(json.dumps({**nested, "alg": "none"}).encode(), inner, h.unsigned), "bad-signature"),
        (
            target.raw(json.dumps({**nested, "kid": h.kid_of_key(attacker)}).encode(), inner, attacker.sign),
            "unknown-key",
        ),
        (target.raw(json.dumps(nested).encode(), forged_inner), "invalid-token"),
    )


# --- 2.4 and 2.5 --------------------------------------------------------------------------------------------


def jwe(header: dict[str, Any]) -> str:
    """A compact JWE: protected header, encrypted key, IV, ciphertext, tag."""
    return segments(json.dumps(header).encode(), os.urandom(256), os.urandom(16), os.urandom(64), os.urandom(16))


def test_2_4_plaintext_leakage_through_analysis_of_ciphertext_length(target: Target) -> None:
    """2.4: "Many encryption algorithms leak information about the length of the plaintext ... This problem is
    exacerbated when the plaintext is initially compressed".

    Refused because the service accepts no encrypted (let alone compressed) token, so it is never a decryption or
    length oracle; and it issues none: its own tokens are three-part JWS, without ``zip`` or ``enc``."""
    session = target.client.post(h.EXCHANGE, json={"token": h.mint(target.client, target.stack)}).json()
    for issued in (h.mint(target.client, target.stack), session["access_token"]):
        assert issued.count(".") == 2
        assert not {"zip", "enc"} & jwt.get_unverified_header(issued).keys()
    base = {"kid": target.header["kid"], "typ": target.header["typ"], "zip": "DEF"}
    target.refuses(
        (jwe({**base, "alg": "RSA-OAEP", "enc": "A128CBC-HS256"}), "invalid-token"),
        (jwe({**base, "alg": "RSA-OAEP-256", "enc": "A256GCM"}), "invalid-token"),
    )


def test_2_5_insecure_use_of_elliptic_curve_encryption(target: Target) -> None:
    """2.5: libraries "fail to validate their inputs correctly when performing elliptic curve key agreement (the
    'ECDH-ES' algorithm)"; invalid curve points let an attacker "recover the recipient's private key".

    Refused because no key of ours does key agreement: every published key is ``use: sig``, no ``ECDH-ES`` token
    is decrypted, and an ``epk`` (on or off the curve) is never used — in a JWE, or dressed up as a JWS."""
    keys, _ = published(target.client)
    assert {key["use"] for key in keys} == {"sig"}
    off_curve = {"kty": "EC", "crv": "P-256", "x": h.b64(bytes(31) + b"\x01"), "y": h.b64(bytes(31) + b"\x02")}
    point = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    on_curve = {"kty": "EC", "crv": "P-256", "x": h.b64(point.x.to_bytes(32, "big")),
                "y": h.b64(point.y.to_bytes(32, "big"))}  # fmt: skip
    base = {"kid": target.header["kid"], "typ": target.header["typ"], "enc": "A256GCM"}
    target.refuses(
        (jwe({**base, "alg": "ECDH-ES", "epk": off_curve}), "invalid-token"),
        (jwe({**base, "alg": "ECDH-ES+A256KW", "epk": on_curve}), "invalid-token"),
        (
            h.forge({**target.header, "alg": "ECDH-ES", "epk": off_curve}, target.claims, target.key.sign),
            "bad-signature",
        ),
    )


# --- 2.6 -----------------------------------------------------------------------------------------------------


def test_2_6_multiplicity_of_json_encodings(target: Target) -> None:
    """2.6: older JSON allowed "UTF-8, UTF-16, and UTF-32"; an encoding the recipient reads differently from the
    validator "could be used by a malicious sender to bypass the recipient's validation checks". Duplicate member
    names are the same kind of ambiguity: parsers differ on which one counts.

    Refused because the signature binds the exact bytes: a duplicate ``sub``/``aud``/``act``/``iss`` added to a
    genuine token breaks its signature; a second ``alg`` is refused before any signature is checked (a header
    naming a member twice is malformed); and claims must be UTF-8 JSON — a UTF-16, UTF-32 or BOM-prefixed payload
    is refused even under the genuine key's signature."""
    head, _, signature = target.genuine.split(".")
    claims = json.dumps(target.claims).encode()
    header = json.dumps(target.header).encode()
    extras = [b', "sub": "1"', b', "aud": "x"', b', "act": {"sub": "1", "role": "admin"}', b', "iss": "x"']
    appended = [claims[:-1] + extra + b"}" for extra in extras]
    encoded = [claims.decode().encode(codec) for codec in ("utf-16", "utf-16-be", "utf-32", "utf-8-sig")]
    public_pem = h.public_key_forms(target.key.public_key())["pem"]
    target.refuses(
        *each("bad-signature", *(f"{head}.{h.b64(payload)}.{signature}" for payload in appended)),
        (target.raw(header[:-1] + b', "alg": "HS256"}', claims, h.hs256(public_pem)), "invalid-token"),
        (target.raw(b'{"alg": "none", ' + header[1:], claims, h.unsigned), "invalid-token"),
        *each("invalid-token", *(target.raw(header, payload) for payload in encoded)),
    )


def test_2_6_duplicate_names_are_refused_even_under_the_genuine_key(target: Target) -> None:
    """Duplicate names a key holder signed (the service never emits any): RFC 7515 section 5.2 and RFC 7519
    section 4 let a recipient reject them or take the last; we reject, since a consumer taking the first would read
    another token than the one we verified — in the claims, in a nested object, or in the header."""
    claims, header = json.dumps(target.claims).encode(), json.dumps(target.header).encode()
    target.refuses(*each("invalid-token", target.raw(header, claims[:-1] + b', "sub": "43"}'),
                         target.raw(header, claims[:-1] + b', "ext": {"x": 1, "x": 2}}'),
                         target.raw(header[:-1] + b', "typ": "JWT"}', claims)))  # fmt: skip


@pytest.mark.parametrize("codec", ["utf-16", "utf-32", "utf-8-sig"])
def test_2_6_header_not_in_utf8_is_refused(target: Target, codec: str) -> None:
    header = json.dumps(target.header).encode(codec)
    target.refuses((target.raw(header, json.dumps(target.claims).encode()), "invalid-token"))


def signed_with_extra(target: Target, payload: bytes, replaced: str | None = None) -> str:
    """The genuine claims (less ``replaced``) plus the raw JSON member ``payload``, signed by the genuine key."""
    kept = json.dumps({k: v for k, v in target.claims.items() if k != replaced}).encode()
    token = target.raw(json.dumps(target.header).encode(), kept[:-1] + b", " + payload + b"}")
    assert len(token) <= 4096
    return token


def test_2_6_signed_claims_nested_beyond_any_decoder_are_refused(target: Target) -> None:
    """Even under the genuine key, claims that no recursive JSON decoder can read are refused, not a 500."""
    target.refuses((signed_with_extra(target, b'"x": ' + b"[" * 1000 + b"]" * 1000), "invalid-token"))


@pytest.mark.parametrize(("replaced", "payload"), [("loc", b'"loc": "\xff"'), (None, b'"x": "\xc0\xaf"')],
                         ids=["invalid-utf8-claim", "invalid-utf8-extra"])  # fmt: skip
def test_2_6_signed_claims_not_in_utf8_are_refused(target: Target, replaced: str | None, payload: bytes) -> None:
    # (500), and a bad byte in an unknown claim is skipped unchecked (accepted); RFC 8725 3.7 says refuse.
    target.refuses((signed_with_extra(target, payload, replaced), "invalid-token"))


# --- 2.7 -----------------------------------------------------------------------------------------------------


def test_2_7_substitution_attacks(client: TestClient[Any], stack: h.Stack, make_stack: Callable[..., h.Stack]) -> None:
    """2.7: "one recipient will be given a JWT that was intended for it and will attempt to use it at a different
    recipient for which that JWT was not intended".

    Refused because every token names its audience and issuer and both are checked exactly: an access token (for
    the portal API) is no exchange grant; a grant re-aimed at another audience fails; a token minted by another
    deployment of the authority fails on ``iss`` even when it shares this one's keys; a caller token the trusted
    issuer made for another service is no bearer here."""
    exchange = exchange_target(client, stack)
    access = client.post(h.EXCHANGE, json={"token": h.mint(client, stack)}).json()["access_token"]
    staging = make_stack(keys_dir=stack.keys_dir, issuer="http://staging.authority.test")
    with staging.client() as other:
        elsewhere = h.mint(other, staging)
        h.assert_problem(other.post(h.EXCHANGE, json={"token": exchange.genuine}), 401, "wrong-issuer")
    assert jwt.get_unverified_header(elsewhere)["kid"] == exchange.header["kid"]  # the same key signed both
    exchange.refuses(
        (access, "wrong-token-type"),
        (exchange.sign(aud="portal-api"), "wrong-audience"),
        (exchange.sign(aud=f"http://staging.authority.test{h.EXCHANGE}"), "wrong-audience"),
        (elsewhere, "wrong-issuer"),
    )
    bearer = bearer_target(client, stack)
    bearer.refuses(*each("unauthenticated", bearer.sign(aud="other-service"), bearer.sign(aud=["other", "portal"]),
                         bearer.sign(iss="http://staging.authority.test")))  # fmt: skip


# --- 2.8 -----------------------------------------------------------------------------------------------------


def test_2_8_cross_jwt_confusion(client: TestClient[Any], stack: h.Stack) -> None:
    """2.8: "JWT tokens that have been issued for one purpose being subverted and used for another".

    Refused because each kind of token is told apart by explicit typing (RFC 8725 3.11) and by its audience:
    ``imp+jwt`` grants only at the exchange, ``at+jwt`` sessions only as (nested-impersonation-refusing) bearers,
    and caller tokens only from the trusted issuer. Presenting one where another belongs spends nothing."""
    exchange, bearer = exchange_target(client, stack), bearer_target(client, stack)
    access = client.post(h.EXCHANGE, json={"token": h.mint(client, stack)}).json()["access_token"]
    caller = bearer.genuine
    exchange.refuses(
        (access, "wrong-token-type"),
        (caller, "wrong-token-type"),
        (bearer.sign({**bearer.header, "typ": "imp+jwt"}), "unknown-key"),  # the issuer's key is not ours
        (exchange.sign({**exchange.header, "typ": "at+jwt"}), "wrong-token-type"),
        (exchange.sign({**exchange.header, "typ": "JWT"}), "wrong-token-type"),
    )
    bearer.refuses(*each("unauthenticated", exchange.genuine, exchange.sign({**exchange.header, "typ": "at+jwt"})))
    operator = stack.bearer("operator", "9")
    for token in (h.mint(client, stack), caller):  # introspection knows only access tokens
        assert client.post(h.INTROSPECT, data={"token": token}, headers=operator).json() == {"active": False}
    nested = {"Authorization": f"Bearer {access}"}
    h.assert_problem(client.get(h.STAFF, params={"coworkerId": 42}, headers=nested), 403, "nested-impersonation")


# --- 2.9 -----------------------------------------------------------------------------------------------------


@dataclass
class Loopback:
    """A loopback HTTP server that records every request it gets and answers with ``body``."""

    url: str
    hits: list[str]
    body: bytes


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    hits: list[str] = []
    state = Loopback("", hits, b"{}")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}"
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


KID_INJECTIONS = ["../../../../etc/passwd", "../demo-issuer/key", "..\\..\\keys", "' OR '1'='1", "1; DROP TABLE keys",
                  "*", "authority:jti:*", "{{7*7}}", "${jndi:ldap://127.0.0.1:1/a}", "kid\r\nX-Injected: 1", "a\x00b",
                  "k" * 2000]  # fmt: skip


def test_2_9_indirect_attacks_on_the_server(target: Target, loopback: Loopback, tmp_path: Path) -> None:
    """2.9: claims and header parameters "used by the recipient to perform lookup operations, such as database and
    LDAP searches. Others include URLs that are similarly looked up by the server ... vectors for injection
    attacks or server-side request forgery (SSRF)".

    Refused because nothing in a token is dereferenced: ``jku``, ``x5u`` and ``jwk`` are refused outright (the
    loopback server sees no request), ``iss`` only selects among configured issuers (no discovery is fetched from
    it), and ``kid`` is only compared with the kids of loaded keys — traversal, SQL, glob or CRLF in it reads no
    file, runs no query, matches no key, and writes nothing."""
    attacker = ed25519.Ed25519PrivateKey.generate()
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": h.b64(h.public_key_forms(attacker.public_key())["raw"])}
    urls = {"jku": f"{loopback.url}/jwks.json", "x5u": f"{loopback.url}/cert.pem"}
    key_files = sorted(p.name for p in target.stack.keys_dir.rglob("*"))
    self_signed = {"kid": h.kid_of_key(attacker), "jwk": jwk}
    kids = [
        *KID_INJECTIONS,
        f"$(touch {tmp_path / 'pwned'})",
        f"../{target.stack.keys_dir.name}/{target.header['kid']}",
    ]
    target.refuses(
        *each("invalid-token", *(target.sign({**target.header, param: url}) for param, url in urls.items())),
        *each(
            "invalid-token",
            *(h.forge({**target.header, **self_signed, p: u}, target.claims, attacker.sign) for p, u in urls.items()),
        ),
        (h.forge({**target.header, **self_signed}, target.claims, attacker.sign), "invalid-token"),
        (h.forge(target.header, {**target.claims, "iss": f"{loopback.url}"}, attacker.sign), "bad-signature"),
        *each("unknown-key", *(target.sign({**target.header, "kid": kid}) for kid in kids)),
    )
    assert loopback.hits == []
    assert sorted(p.name for p in target.stack.keys_dir.rglob("*")) == key_files
    assert not (tmp_path / "pwned").exists()


def test_2_9_unknown_kids_cannot_make_the_server_hammer_its_identity_provider(
    make_stack: Callable[..., h.Stack], loopback: Loopback, tmp_path: Path
) -> None:
    """For an issuer configured by ``jwks_url``, a ``kid`` the server does not know may trigger one refetch of
    the issuer's h.JWKS, but a stream of fresh kids from unauthenticated callers triggers no more than that."""
    keys_dir = tmp_path / "keys"
    loopback.body = json.dumps({"keys": [public_jwk(demo.demo_key(keys_dir).public_key(), "EdDSA")]}).encode()
    idp = TrustedIssuer(issuer="https://idp.test", audiences=["authority"], jwks_url=f"{loopback.url}/jwks.json",
                        algorithms=["EdDSA"])  # fmt: skip
    stack = make_stack(keys_dir=keys_dir, trusted_issuers=[idp])
    with stack.client() as client:
        target = bearer_target(client, stack)
        target.claims["iss"] = "https://idp.test"
        target.genuine = target.sign()
        assert target.present(target.genuine).status_code == 200
        fetched = len(loopback.hits)
        target.refuses(*each("unauthenticated", *(target.sign({**target.header, "kid": secrets.token_urlsafe(12)})
                                    for _ in range(20))))  # fmt: skip
    assert fetched == 1
    assert len(loopback.hits) <= fetched + 1
    assert set(loopback.hits) == {"/jwks.json"}


@pytest.mark.parametrize(
    ("loc", "status", "code"),
    [("2 ", 404, "coworker-not-found"), ("*", 404, "coworker-not-found"), ("1' OR '1'='1", 404, "coworker-not-found"),
     ("../2", 404, "coworker-not-found"), (["1", "2"], 403, "forbidden"), ({"$ne": "x"}, 403, "forbidden"),
     (True, 403, "forbidden")],
)  # fmt: skip
def test_2_9_lookup_claims_are_values_not_queries(
    client: TestClient[Any], stack: h.Stack, loc: Any, status: int, code: str
) -> None:
    """A genuinely signed caller's location claim keys the directory lookup as a plain value: no value of it
    reaches coworker 200 of location 2 (a string is looked up verbatim; anything else names no location)."""
    operator = stack.bearer("operator", "7", claims={"loc": loc})
    h.assert_problem(client.get(h.STAFF, params={"coworkerId": 200}, headers=operator), status, code)
