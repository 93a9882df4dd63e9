"""One token, one spelling: every JWT the service reads is refused unless written the one way it could have been.

base64url leaves the low bits of a segment's last character unused (4 bits when the bytes number 1 mod 3, 2 bits
when 2 mod 3): a 64-byte Ed25519 or ES256 signature is 86 characters, so 16 spellings that lenient decoders read
alike, and the signature binds the bytes, not the spelling. ECDSA adds a twin signature (r, n - s) for each
(r, s), and JSON lets a member name appear twice. Each is refused, at the exchange (``invalid-token``, or
``bad-signature`` for a high S) and on the bearer path (``unauthenticated``), and refusing spends nothing.
"""

from __future__ import annotations

import json
import string
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from jwt.algorithms import ECAlgorithm
from litestar.testing import TestClient

from authority import demo
from authority.authn import Authenticator
from authority.settings import TrustedIssuer
from authority.tokens import (
    IMPERSONATION_TYP,
    Actor,
    OwnTokens,
    impersonation_claims,
    read_header,
    sign,
    verify_signature,
)
from tests import helpers as h

ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# Group orders of P-256 and P-384 (SEC 2, sections 2.4.2 and 2.5.1), written here independently of the service.
CURVES: dict[str, tuple[hashes.HashAlgorithm, int, int]] = {
    "secp256r1": (hashes.SHA256(), 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551, 32),
    "secp384r1": (
        hashes.SHA384(),
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
        48,
    ),
}


def respellings(segment: str) -> list[str]:
    """Every other spelling of ``segment``: its last character with other values in the bits no byte uses."""
    unused = {0: 0, 2: 4, 3: 2}[len(segment) % 4]
    kept = ALPHABET.index(segment[-1]) & ~((1 << unused) - 1)
    others = [segment[:-1] + ALPHABET[kept | low] for low in range(1 << unused)]
    others.remove(segment)
    assert all(h.unb64(other) == h.unb64(segment) for other in others)  # a lenient decoder reads each alike
    return others


def uneven(raw: bytes) -> bytes:
    """``raw`` with JSON whitespace appended up to 1 mod 3 bytes: its base64url has 4 unused bits, 16 spellings."""
    return raw + b" " * ((1 - len(raw)) % 3)


def ecdsa(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """A JWS ECDSA signature r || s over ``data``, the low-S one of the twins (r, s) and (r, n - s)."""
    digest, order, size = CURVES[key.curve.name]
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(digest)))
    s = min(s, order - s)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def s_beyond_the_order(token: str) -> str:
    """``token`` with an s of all one bits, larger than any curve order: no signature, and no crash either."""
    signing_input, signature = token.rsplit(".", 1)
    half = len(h.unb64(signature)) // 2
    return f"{signing_input}.{h.b64(h.unb64(signature)[:half] + bytes([255]) * half)}"


def high_s_twin(key: ec.EllipticCurvePrivateKey, token: str) -> str:
    """``token`` with its signature (r, s) replaced by (r, n - s), checked to verify on its own."""
    digest, order, size = CURVES[key.curve.name]
    signing_input, signature = token.rsplit(".", 1)
    raw = h.unb64(signature)
    r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
    assert s <= order // 2
    key.public_key().verify(encode_dss_signature(r, order - s), signing_input.encode(), ec.ECDSA(digest))
    return f"{signing_input}.{h.b64(raw[:size] + (order - s).to_bytes(size, 'big'))}"


def jws(header: bytes, payload: bytes, signer: h.Signer, *, respell: str = "") -> list[str]:
    """The compact JWS over exactly these bytes, or (``respell``: "header" or "payload") every re-spelling of that
    segment, each validly signed as written: refused for its spelling alone."""
    head, body = h.b64(header), h.b64(payload)
    variants = [(spelled, body) for spelled in respellings(head)] if respell == "header" else [(head, body)]
    variants = [(head, b) for b in respellings(body)] if respell == "payload" else variants
    return [f"{a}.{b}.{h.b64(signer(f'{a}.{b}'.encode()))}" for a, b in variants]


def respelled_signatures(token: str) -> list[str]:
    signing_input, signature = token.rsplit(".", 1)
    return [f"{signing_input}.{other}" for other in respellings(signature)]


def signer_of(client: TestClient[Any]) -> h.Signer:
    """The authority's active key, signing as it does (low S for ECDSA)."""
    signer = h.authority_of(client).keyring.signer_at(int(time.time()))
    assert signer is not None
    key = signer.private
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return lambda data: ecdsa(key, data)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key.sign


def exchange(client: TestClient[Any], token: str) -> Any:
    return client.post(h.EXCHANGE, json={"token": token})


def present(client: TestClient[Any], token: str) -> Any:
    return client.get(h.STAFF, params={"coworkerId": 42}, headers={"Authorization": f"Bearer {token}"})


def remembered(client: TestClient[Any]) -> set[str]:
    authenticator: Authenticator = client.app.state.services.authenticator
    return set(authenticator.remembered())


@pytest.fixture(params=["EdDSA", "ES256"])
def ours(
    request: pytest.FixtureRequest, make_stack: Callable[..., h.Stack]
) -> Iterator[tuple[TestClient[Any], h.Stack]]:
    """A running authority signing with ``request.param``."""
    stack = make_stack(key_alg=request.param)
    with stack.client() as client:
        yield client, stack


# --- our tokens, at the exchange ----------------------------------------------------------------------------


def test_every_respelled_signature_is_refused_and_the_genuine_token_still_exchanges(
    ours: tuple[TestClient[Any], h.Stack],
) -> None:
    client, stack = ours
    token = h.mint(client, stack)
    others = respelled_signatures(token)
    assert len(others) == 15  # 64 bytes, 86 characters: 4 unused bits
    for other in others:
        h.assert_problem(exchange(client, other), 401, "invalid-token")
    assert exchange(client, token).status_code == 200
    h.assert_problem(exchange(client, token), 401, "token-replayed")


@pytest.mark.parametrize("segment", ["header", "payload"])
def test_every_respelled_header_or_payload_is_refused_even_when_signed_as_written(
    ours: tuple[TestClient[Any], h.Stack], segment: str
) -> None:
    client, stack = ours
    header, claims, _ = h.split(h.mint(client, stack))
    header_bytes, payload = uneven(json.dumps(header).encode()), uneven(json.dumps(claims).encode())
    signer = signer_of(client)
    others = jws(header_bytes, payload, signer, respell=segment)
    assert len(others) == 15
    for other in others:
        h.assert_problem(exchange(client, other), 401, "invalid-token")
    (canonical,) = jws(header_bytes, payload, signer)  # the same token spelled the one way: accepted, once
    assert exchange(client, canonical).status_code == 200, "re-signing is sound: the refusals were for spelling"


def test_high_s_twin_of_our_es256_token_is_refused(make_stack: Callable[..., h.Stack]) -> None:
    stack = make_stack(key_alg="ES256")
    with stack.client() as client:
        token = h.mint(client, stack)
        key = h.authority_of(client).keyring.signer_at(int(time.time()))
        assert key is not None
        assert isinstance(key.private, ec.EllipticCurvePrivateKey)
        for other in (high_s_twin(key.private, token), s_beyond_the_order(token)):
            h.assert_problem(exchange(client, other), 401, "bad-signature")
        assert exchange(client, token).status_code == 200


def test_our_es256_signatures_are_all_low_s_and_verify(make_stack: Callable[..., h.Stack]) -> None:
    """OpenSSL leaves half its ECDSA signatures high-S; the signer normalises every one, so none is refused."""
    stack = make_stack(key_alg="ES256")
    with stack.client() as client:
        authority = h.authority_of(client)
    s, key, keyring = stack.settings, authority.keyring.signer_at(int(time.time())), authority.keyring
    assert key is not None
    assert isinstance(key.private, ec.EllipticCurvePrivateKey)
    _, order, size = CURVES["secp256r1"]
    unnormalised = [jwt.get_algorithm_by_name("ES256").sign(b"x", key.private) for _ in range(200)]
    assert any(int.from_bytes(raw[size:], "big") > order // 2 for raw in unnormalised)
    now = int(time.time())
    actor = Actor(sub="7", role="operator", iss=demo.DEMO_ISSUER)
    for n in range(200):
        claims = impersonation_claims(issuer=s.public_issuer, audience=s.exchange_audience, coworker_id=42,
                                      location="1", actor=actor, jti=f"jti{n}", now=now, ttl=60)  # fmt: skip
        token = sign(claims, key, IMPERSONATION_TYP)
        assert int.from_bytes(h.unb64(token.rsplit(".", 1)[1])[size:], "big") <= order // 2
        assert verify_signature(token, key.public, "ES256", read_header(token))
        assert OwnTokens.of(s).impersonation(token, keyring, now) == claims


# --- callers' bearers, at the h.mint endpoint -----------------------------------------------------------------


def test_every_respelled_caller_bearer_is_refused_and_never_remembered(client: TestClient[Any], stack: h.Stack) -> None:
    genuine = demo.dev_token(stack.keys_dir, role="operator", sub="7", location="1")
    demo_sign = demo.demo_key(stack.keys_dir).sign
    header, claims = (
        uneven(json.dumps(h.demo_header(stack)).encode()),
        uneven(json.dumps(h.caller_claims(stack)).encode()),
    )
    others = [
        *respelled_signatures(genuine),
        *jws(header, claims, demo_sign, respell="header"),
        *jws(header, claims, demo_sign, respell="payload"),
    ]
    assert len(others) == 45
    for other in others:
        h.assert_problem(present(client, other), 401, "unauthenticated")
    (canonical,) = jws(header, claims, demo_sign)
    for accepted in (genuine, canonical):
        assert present(client, accepted).status_code == 200
    assert remembered(client) == {genuine, canonical}


@dataclass
class EcIssuer:
    """A trusted issuer signing callers' bearers with ECDSA, published as a JWKS file."""

    config: TrustedIssuer
    key: ec.EllipticCurvePrivateKey
    alg: str

    def bearer(self, stack: h.Stack, **changes: Any) -> str:
        header = json.dumps({"alg": self.alg, "kid": self.alg.lower(), "typ": "at+jwt"}).encode()
        claims = json.dumps(h.caller_claims(stack, iss=self.config.issuer, **changes)).encode()
        (token,) = jws(header, claims, lambda data: ecdsa(self.key, data))
        return token


@pytest.fixture(params=[("ES256", ec.SECP256R1()), ("ES384", ec.SECP384R1())], ids=["ES256", "ES384"])
def ec_issuer(request: pytest.FixtureRequest, tmp_path: Path) -> EcIssuer:
    alg, curve = request.param
    key = ec.generate_private_key(curve)
    jwk = {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": alg.lower(), "alg": alg}
    jwks = tmp_path / f"{alg}.jwks.json"
    jwks.write_bytes(msgspec.json.encode({"keys": [jwk]}))
    config = TrustedIssuer(issuer=f"https://{alg.lower()}.idp.test", audiences=[demo.DEMO_AUDIENCE],
                           jwks_file=str(jwks), algorithms=[alg])  # fmt: skip
    return EcIssuer(config, key, alg)


def test_respelled_ecdsa_bearer_is_refused(make_stack: Callable[..., h.Stack], ec_issuer: EcIssuer) -> None:
    stack = make_stack(trusted_issuers=[ec_issuer.config])
    with stack.client() as client:
        genuine = ec_issuer.bearer(stack)
        for other in [s_beyond_the_order(genuine), *respelled_signatures(genuine)]:
            h.assert_problem(present(client, other), 401, "unauthenticated")
        assert present(client, genuine).status_code == 200
        assert remembered(client) == {genuine}


def test_an_ecdsa_bearer_is_one_token_whichever_s_its_issuer_wrote(
    make_stack: Callable[..., h.Stack], ec_issuer: EcIssuer
) -> None:
    """Issuers' libraries (OpenSSL under PyJWT, node, Go) leave s high for half their signatures: refusing those
    would refuse half the portal's sign-ins. Either twin is accepted, and remembered once, as the low-S one."""
    stack = make_stack(trusted_issuers=[ec_issuer.config])
    with stack.client() as client:
        low = ec_issuer.bearer(stack)
        high = high_s_twin(ec_issuer.key, low)
        assert present(client, high).status_code == 200
        assert present(client, low).status_code == 200
        assert remembered(client) == {low}


# --- duplicate member names -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        '{{"token": "x", "token": "{t}"}}',
        '{{"token": "{t}", "token": "{t}"}}',
        '{{"token": "{t}", "token": "x"}}',
        '{{"token": "x", "t\\u006fken": "{t}"}}',
    ],
    ids=["last-genuine", "both-genuine", "first-genuine", "escaped-name"],
)
def test_exchange_body_with_a_repeated_name_is_refused_and_spends_nothing(
    client: TestClient[Any], stack: h.Stack, body: str
) -> None:
    token = h.mint(client, stack)
    response = client.post(h.EXCHANGE, content=body.format(t=token), headers={"content-type": "application/json"})
    h.assert_problem(response, 400, "invalid-request")
    assert exchange(client, token).status_code == 200


def test_repeated_names_in_our_header_or_claims_are_refused(client: TestClient[Any], stack: h.Stack) -> None:
    """Signed by our real key, the last of each pair being the genuine value: refused all the same."""
    header, claims, _ = h.split(h.mint(client, stack))
    head, payload = json.dumps(header).encode(), json.dumps(claims).encode()
    signer = signer_of(client)
    repeated = [
        *jws(b'{"kid": "other", ' + head[1:], payload, signer),
        *jws(b'{"typ": "JWT", ' + head[1:], payload, signer),
        *jws(head, b'{"sub": "1", ' + payload[1:], signer),
        *jws(head, payload.replace(b'"act": {', b'"act": {"role": "admin", '), signer),
    ]
    for token in repeated:
        h.assert_problem(exchange(client, token), 401, "invalid-token")
    (genuine,) = jws(head, payload, signer)
    assert exchange(client, genuine).status_code == 200


def test_repeated_names_in_a_caller_bearer_are_refused(client: TestClient[Any], stack: h.Stack) -> None:
    demo_sign = demo.demo_key(stack.keys_dir).sign
    head, payload = json.dumps(h.demo_header(stack)).encode(), json.dumps(h.caller_claims(stack)).encode()
    repeated = [
        *jws(b'{"kid": "other", ' + head[1:], payload, demo_sign),
        *jws(head, b'{"role": "customer", ' + payload[1:], demo_sign),
        *jws(head, b'{"iss": "https://elsewhere.test", ' + payload[1:], demo_sign),
    ]
    for token in repeated:
        h.assert_problem(present(client, token), 401, "unauthenticated")
    (genuine,) = jws(head, payload, demo_sign)
    assert present(client, genuine).status_code == 200
    assert remembered(client) == {genuine}
