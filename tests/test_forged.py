"""Forged, mangled and misdirected tokens through the real app: each refused with its own problem type, and none
of them changes anything (the genuine token they were derived from still exchanges afterwards)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from litestar.testing import TestClient

from authority import demo
from authority.keys import FileKeyStore, LoadedKey
from authority.keys.jwk import public_jwk
from authority.keys.keyring import new_record, unseal_record
from tests.helpers import (
    EXCHANGE,
    JWKS,
    PASSPHRASE,
    STAFF,
    Stack,
    assert_problem,
    authority_of,
    b64,
    caller_claims,
    demo_header,
    forge,
    hs256,
    kid_of_key,
    mint,
    public_key_forms,
    real_signing_key,
    split,
    unsigned,
)


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """The forgeries here are built around Ed25519 keys; the other algs, the default ES256 included, are covered by
    test_rotation, test_keys and test_spelling."""
    return make_stack(key_alg="EdDSA")


@dataclass
class Minted:
    """A genuine, unused impersonation token, its decoded parts, and the key that really signed it."""

    client: TestClient[Any]
    token: str
    header: dict[str, Any]
    claims: dict[str, Any]
    signature: bytes
    real_key: ed25519.Ed25519PrivateKey
    attacker: ed25519.Ed25519PrivateKey

    def refused(self, token: str, code: str) -> None:
        """``token`` is refused with ``code``, and the genuine token is untouched: it still exchanges, once."""
        assert_problem(self.client.post(EXCHANGE, json={"token": token}), 401, code)
        genuine = self.client.post(EXCHANGE, json={"token": self.token})
        assert genuine.status_code == 200, genuine.text

    def resigned(self, header: dict[str, Any] | None = None, **claims: Any) -> str:
        """The genuine token's claims (same jti) with changes, validly signed by the authority's real key."""
        merged = {k: v for k, v in {**self.claims, **claims}.items() if v is not None}
        return forge(header or self.header, merged, self.real_key.sign)


@pytest.fixture
def minted(client: TestClient[Any], stack: Stack) -> Minted:
    token = mint(client, stack)
    header, claims, signature = split(token)
    return Minted(client, token, header, claims, signature, real_signing_key(client),
                  ed25519.Ed25519PrivateKey.generate())  # fmt: skip


def test_resigning_with_the_real_key_reproduces_an_accepted_token(minted: Minted) -> None:
    """Guards every test below: a re-signed token is refused for what was changed, not for how it was built."""
    session = minted.client.post(EXCHANGE, json={"token": minted.resigned()})
    assert session.status_code == 200, session.text
    assert_problem(minted.client.post(EXCHANGE, json={"token": minted.token}), 401, "token-replayed")


# --- signatures and algorithms ------------------------------------------------------------------------------


def test_flipped_signature_byte(minted: Minted) -> None:
    head, payload, _ = minted.token.split(".")
    signature = bytearray(minted.signature)
    signature[10] ^= 0x01
    minted.refused(f"{head}.{payload}.{b64(bytes(signature))}", "bad-signature")


@pytest.mark.parametrize("change", [{"sub": "43"}, {"loc": "2"}, {"act": {"sub": "1", "role": "admin"}},
                                    {"exp": 0}])  # fmt: skip
def test_payload_changed_old_signature_kept(minted: Minted, change: dict[str, Any]) -> None:
    head, _, signature = minted.token.split(".")
    payload = b64(json.dumps({**minted.claims, **change}).encode())
    minted.refused(f"{head}.{payload}.{signature}", "bad-signature")


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_with_empty_signature(minted: Minted, alg: str) -> None:
    minted.refused(forge({**minted.header, "alg": alg}, minted.claims, unsigned), "bad-signature")


@pytest.mark.parametrize("form", ["pem", "raw"])
def test_hs256_keyed_with_the_published_public_key(minted: Minted, form: str) -> None:
    secret = public_key_forms(minted.real_key.public_key())[form]
    minted.refused(forge({**minted.header, "alg": "HS256"}, minted.claims, hs256(secret)), "bad-signature")


def test_hmac_signature_under_the_real_alg(minted: Minted) -> None:
    secret = public_key_forms(minted.real_key.public_key())["pem"]
    minted.refused(forge(minted.header, minted.claims, hs256(secret)), "bad-signature")


def test_unknown_kid_signed_by_its_own_key(minted: Minted) -> None:
    header = {**minted.header, "kid": kid_of_key(minted.attacker)}
    minted.refused(forge(header, minted.claims, minted.attacker.sign), "unknown-key")


def test_other_key_claiming_the_real_kid(minted: Minted) -> None:
    minted.refused(forge(minted.header, minted.claims, minted.attacker.sign), "bad-signature")


@pytest.mark.parametrize("kid", [None, ""])
def test_kid_missing_or_empty(minted: Minted, kid: Any) -> None:
    header = {k: v for k, v in {**minted.header, "kid": kid}.items() if v is not None}
    minted.refused(
        forge(header, minted.claims, minted.real_key.sign), "invalid-token" if kid is None else "unknown-key"
    )


# --- header parameters that name their own key material -----------------------------------------------------


def attacker_certificate(key: ed25519.Ed25519PrivateKey) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authority")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, None)
    )  # fmt: skip
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@pytest.mark.parametrize("param", ["jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit"])
@pytest.mark.parametrize("signed_by", ["attacker", "real"])
def test_key_naming_header_params_are_refused(minted: Minted, param: str, signed_by: str) -> None:
    key = minted.attacker if signed_by == "attacker" else minted.real_key
    values: dict[str, dict[str, Any]] = {
        "jku": {"jku": "https://attacker.example/jwks.json"},
        "jwk": {"jwk": {k: v for k, v in public_jwk(key.public_key(), "EdDSA").items() if k != "use"}},
        "x5u": {"x5u": "https://attacker.example/cert.pem"},
        "x5c": {"x5c": [attacker_certificate(key)]},
        "x5t": {"x5t": b64(hashlib.sha1(b"cert").digest())},  # noqa: S324 - a header value, never computed
        "x5t#S256": {"x5t#S256": b64(hashlib.sha256(b"cert").digest())},
        # The one crit PyJWT itself understands; other crit values: see test_pyjwt_header_errors_*.
        "crit": {"crit": ["b64"], "b64": True},
    }
    header = {**minted.header, **values[param]}
    if signed_by == "attacker" and param == "jwk":
        header["kid"] = kid_of_key(minted.attacker)  # the self-consistent variant: kid matches the embedded key
    minted.refused(forge(header, minted.claims, key.sign), "invalid-token")


PYJWT_REFUSED_HEADERS = [{"kid": 7}, {"kid": ["x"]}, {"kid": None}, {"crit": ["exp"]}, {"crit": []},
                         {"crit": "exp"}, {"crit": ["b64"]}]  # fmt: skip


@pytest.mark.parametrize("extra", PYJWT_REFUSED_HEADERS, ids=json.dumps)
def test_pyjwt_header_errors_on_exchange_are_401_not_500(minted: Minted, extra: dict[str, Any]) -> None:
    minted.refused(forge({**minted.header, **extra}, minted.claims, minted.real_key.sign), "invalid-token")


@pytest.mark.parametrize("extra", PYJWT_REFUSED_HEADERS, ids=json.dumps)
def test_pyjwt_header_errors_on_bearer_are_401_not_500(
    client: TestClient[Any], stack: Stack, extra: dict[str, Any]
) -> None:
    token = forge(demo_header(stack, **extra), caller_claims(stack), demo.demo_key(stack.keys_dir).sign)
    assert_unauthenticated(client, token)


# --- typ, iss, aud ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", ["JWT", "at+jwt", "application/at+jwt", "imp", "jwt+imp", "", 1, None])
def test_wrong_or_missing_typ(minted: Minted, typ: Any) -> None:
    header = {k: v for k, v in {**minted.header, "typ": typ}.items() if v is not None}
    minted.refused(minted.resigned(header), "wrong-token-type")


def test_an_access_token_is_not_an_impersonation_token(client: TestClient[Any], stack: Stack) -> None:
    session = client.post(EXCHANGE, json={"token": mint(client, stack)}).json()
    assert_problem(client.post(EXCHANGE, json={"token": session["access_token"]}), 401, "wrong-token-type")


@pytest.mark.parametrize("iss", ["https://attacker.example", "http://authority.test/", "HTTP://AUTHORITY.TEST",
                                 "urn:authority:demo-issuer"])  # fmt: skip
def test_wrong_issuer(minted: Minted, iss: str) -> None:
    minted.refused(minted.resigned(iss=iss), "wrong-issuer")


@pytest.mark.parametrize("aud", ["portal-api", "http://authority.test", f"http://authority.test{EXCHANGE}/",
                                 "authority"])  # fmt: skip
def test_wrong_audience(minted: Minted, aud: str) -> None:
    minted.refused(minted.resigned(aud=aud), "wrong-audience")


# --- time ---------------------------------------------------------------------------------------------------


def test_expired(minted: Minted) -> None:
    now = int(time.time())
    minted.refused(minted.resigned(iat=now - 120, nbf=now - 120, exp=now - 60), "token-expired")


@pytest.mark.parametrize("field", ["nbf", "iat"])
def test_not_yet_valid_beyond_leeway(minted: Minted, field: str) -> None:
    now = int(time.time())
    claims: dict[str, Any] = {"iat": now, "nbf": now, "exp": now + 150, field: now + 120}
    minted.refused(minted.resigned(**claims), "token-not-yet-valid")


def test_lifetime_longer_than_allowed(minted: Minted) -> None:
    now = int(time.time())
    minted.refused(minted.resigned(iat=now, nbf=now, exp=now + 3600), "invalid-token")


def test_backdated_iat_cannot_stretch_a_lifetime(minted: Minted) -> None:
    now = int(time.time())
    minted.refused(minted.resigned(iat=now - 1000, nbf=now, exp=now + 30), "invalid-token")


# --- well-signed but never issued, or malformed claims ------------------------------------------------------


def test_never_issued_jti_is_refused_every_time(minted: Minted) -> None:
    forged = minted.resigned(jti=b64(b"\x00" * 16))
    assert_problem(minted.client.post(EXCHANGE, json={"token": forged}), 401, "token-not-issued")
    minted.refused(forged, "token-not-issued")  # not "replayed": refusing wrote nothing


@pytest.mark.parametrize(
    "change",
    [{"sub": 42}, {"exp": "9999999999"}, {"iat": 1.5}, {"nbf": True}, {"jti": 1}, {"loc": 1},
     {"aud": [f"http://authority.test{EXCHANGE}"]}, {"act": "7"}, {"act": {"sub": "7"}},
     {"act": {"sub": "7", "role": "operator", "act": {"sub": "1"}}}, {"sub": None}, {"jti": None},
     {"exp": None}, {"act": None}, {"exp": 10**30}, {"iat": -(10**30)}],
)  # fmt: skip
def test_claims_of_the_wrong_shape(minted: Minted, change: dict[str, Any]) -> None:
    merged = {k: v for k, v in {**minted.claims, **change}.items() if v is not None}
    minted.refused(forge(minted.header, merged, minted.real_key.sign), "invalid-token")


def test_payload_that_is_not_an_object(minted: Minted) -> None:
    signing_input = f"{b64(json.dumps(minted.header).encode())}.{b64(b'[1, 2]')}"
    token = f"{signing_input}.{b64(minted.real_key.sign(signing_input.encode()))}"
    minted.refused(token, "invalid-token")


# --- a pending key is published but must not be trusted yet ------------------------------------------------


@pytest.fixture
def pending(client: TestClient[Any], stack: Stack) -> LoadedKey:
    """A successor key, published an hour before it may sign, as a rotation makes it."""
    now = int(time.time())
    record = new_record("EdDSA", PASSPHRASE, now=now, activates_at=now + 3600)
    client.blocking_portal.call(FileKeyStore(stack.keys_dir).save, [record])
    client.blocking_portal.call(authority_of(client).keys.refresh)
    private = unseal_record(record, PASSPHRASE, demo=False, source="test")
    return LoadedKey(record, private, private.public_key(), public_jwk(private.public_key(), "EdDSA"), "pending")


def test_token_signed_by_a_pending_key(minted: Minted, pending: LoadedKey) -> None:
    assert pending.kid in {k["kid"] for k in minted.client.get(JWKS).json()["keys"]}
    assert minted.header["kid"] != pending.kid
    assert isinstance(pending.private, ed25519.Ed25519PrivateKey)
    minted.refused(forge({**minted.header, "kid": pending.kid}, minted.claims, pending.private.sign), "unknown-key")


# --- caller bearers on the mint endpoint --------------------------------------------------------------------


def assert_unauthenticated(client: TestClient[Any], token: str) -> None:
    response = client.get(STAFF, params={"coworkerId": 42}, headers={"Authorization": f"Bearer {token}"})
    assert_problem(response, 401, "unauthenticated")
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_genuine_caller_bearer_is_accepted(client: TestClient[Any], stack: Stack) -> None:
    """Guards the bearer tests below: the hand-built token, unchanged, mints."""
    token = forge(demo_header(stack), caller_claims(stack), demo.demo_key(stack.keys_dir).sign)
    response = client.get(STAFF, params={"coworkerId": 42}, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("alg", ["none", "None"])
def test_bearer_alg_none(client: TestClient[Any], stack: Stack, alg: str) -> None:
    assert_unauthenticated(client, forge(demo_header(stack, alg=alg), caller_claims(stack), unsigned))


@pytest.mark.parametrize("form", ["pem", "raw"])
def test_bearer_hs256_keyed_with_the_issuers_public_key(client: TestClient[Any], stack: Stack, form: str) -> None:
    secret = public_key_forms(demo.demo_key(stack.keys_dir).public_key())[form]
    assert_unauthenticated(client, forge(demo_header(stack, alg="HS256"), caller_claims(stack), hs256(secret)))


@pytest.mark.parametrize(
    "changes",
    [{"exp": 1_000_000}, {"exp": None}, {"exp": "9999999999"}, {"nbf": 10**10}, {"iat": 10**10},
     {"aud": "portal-api"}, {"aud": ["portal-api"]}, {"aud": None}, {"iss": "https://attacker.example"},
     {"iss": None}],
)  # fmt: skip
def test_bearer_claims_refused(client: TestClient[Any], stack: Stack, changes: dict[str, Any]) -> None:
    token = forge(demo_header(stack), caller_claims(stack, **changes), demo.demo_key(stack.keys_dir).sign)
    assert_unauthenticated(client, token)


def test_bearer_signed_by_an_unknown_key(client: TestClient[Any], stack: Stack) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    assert_unauthenticated(client, forge(demo_header(stack, kid=kid_of_key(attacker)), caller_claims(stack),
                                         attacker.sign))  # fmt: skip
    assert_unauthenticated(client, forge(demo_header(stack), caller_claims(stack), attacker.sign))


def test_bearer_claiming_to_be_our_own_session(client: TestClient[Any], stack: Stack) -> None:
    """A demo-issuer key cannot sign for the authority's own issuer, whatever the typ or kid says."""
    claims = caller_claims(stack, iss="http://authority.test", aud="portal-api", act={"sub": "1", "role": "x"})
    assert_unauthenticated(client, forge(demo_header(stack), claims, demo.demo_key(stack.keys_dir).sign))


@pytest.mark.parametrize("param", ["jku", "jwk", "x5u", "x5c"])
def test_bearer_key_naming_header_params(client: TestClient[Any], stack: Stack, param: str) -> None:
    attacker = ed25519.Ed25519PrivateKey.generate()
    values: dict[str, Any] = {
        "jku": "https://attacker.example/jwks.json",
        "jwk": public_jwk(attacker.public_key(), "EdDSA"),
        "x5u": "https://attacker.example/cert.pem",
        "x5c": [attacker_certificate(attacker)],
    }
    header = demo_header(stack, kid=kid_of_key(attacker), **{param: values[param]})
    assert_unauthenticated(client, forge(header, caller_claims(stack), attacker.sign))
    # Even the issuer's own key cannot make these parameters acceptable.
    genuine = demo.demo_key(stack.keys_dir)
    assert_unauthenticated(client, forge(demo_header(stack, **{param: values[param]}), caller_claims(stack),
                                         genuine.sign))  # fmt: skip


def test_impersonation_token_presented_as_bearer(client: TestClient[Any], stack: Stack) -> None:
    token = mint(client, stack)
    assert_unauthenticated(client, token)
    # The same claims typed imp+jwt by the trusted issuer are not a bearer either.
    forged = forge(demo_header(stack, typ="imp+jwt"), caller_claims(stack), demo.demo_key(stack.keys_dir).sign)
    assert_unauthenticated(client, forged)
    assert client.post(EXCHANGE, json={"token": token}).status_code == 200  # presenting it did not spend it


@pytest.mark.parametrize("changes", [{"aud": f"http://authority.test{EXCHANGE}"}, {"exp": 1_000_000},
                                     {"typ": "imp+jwt"}])  # fmt: skip
def test_our_own_session_token_misused_as_bearer(minted: Minted, changes: dict[str, Any]) -> None:
    """Our real key, but an access token that is expired, for another audience, or not an access token."""
    session = minted.client.post(EXCHANGE, json={"token": minted.token}).json()
    header, claims, _ = split(session["access_token"])
    header["typ"] = changes.get("typ", header["typ"])
    claims.update({k: v for k, v in changes.items() if k != "typ"})
    if "exp" in changes:
        claims.update(iat=changes["exp"] - 900, nbf=changes["exp"] - 900)
    assert_unauthenticated(minted.client, forge(header, claims, minted.real_key.sign))
