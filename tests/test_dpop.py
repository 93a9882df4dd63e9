"""DPoP proofs (RFC 9449): the proof matrix of section 4.3 against ``verify_proof``, one refusal per way a proof can
be wrong; a proof's jti used once on a real Redis (``ProofReplay``); the stateless server nonces of section 8.

Good proofs are signed by PyJWT with keys made by cryptography, as a client would; hostile ones are written by
hand, so nothing second-guesses what an attacker may send.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import string
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from redis.asyncio import Redis

from authority.dpop import (
    DEFAULT_ALGORITHMS,
    MAX_PROOF_LENGTH,
    DpopProof,
    Nonces,
    ProofReplay,
    ath_of,
    normalised_url,
    verify_proof,
)
from authority.keys.jwk import PrivateKey, public_members, thumbprint
from authority.refusals import InvalidDpopProof, UseDpopNonce
from tests import helpers as h

URL = "https://authority.test/oauth2/token"
NOW = 1_700_000_000
ALPHABET = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
# The group order of P-256 (SEC 2, section 2.4.2), written here independently of the service.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SECRET = b"a nonce secret of thirty-two bytes or more"


@dataclass
class Holder:
    """A client's DPoP key pair, signing proofs as a client library would (PyJWT)."""

    alg: str
    key: PrivateKey

    @property
    def jwk(self) -> dict[str, Any]:
        members: dict[str, Any] = jwt.get_algorithm_by_name(self.alg).to_jwk(self.key.public_key(), as_dict=True)
        return members

    @property
    def jkt(self) -> str:
        """RFC 7638, computed by the service's own key module from the public key (not from the proof)."""
        return thumbprint(public_members(self.key.public_key()))

    def claims(self, **changes: Any) -> dict[str, Any]:
        """A fresh proof's claims for POST ``URL`` at ``NOW``, with changes (``None``: the claim left out)."""
        claims = {"jti": uuid.uuid4().hex, "htm": "POST", "htu": URL, "iat": NOW, **changes}
        return {name: value for name, value in claims.items() if value is not None}

    def proof(self, header: dict[str, Any] | None = None, **changes: Any) -> str:
        """A proof signed by PyJWT (``header``: changes to its header, ``None`` leaving a parameter out)."""
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        return jwt.encode(self.claims(**changes), self.key, algorithm=self.alg, headers=headers)

    def sign(self, data: bytes) -> bytes:
        return jwt.get_algorithm_by_name(self.alg).sign(data, self.key)

    def header(self, **changes: Any) -> dict[str, Any]:
        return {"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk, **changes}


def es256() -> Holder:
    return Holder("ES256", ec.generate_private_key(ec.SECP256R1()))


def eddsa() -> Holder:
    return Holder("EdDSA", ed25519.Ed25519PrivateKey.generate())


def rs256() -> Holder:
    return Holder("RS256", rsa.generate_private_key(65537, 2048))


def ps256() -> Holder:
    return Holder("PS256", rsa.generate_private_key(65537, 2048))


HOLDERS: dict[str, Callable[[], Holder]] = {"ES256": es256, "EdDSA": eddsa, "RS256": rs256, "PS256": ps256}


@pytest.fixture(params=["ES256", "EdDSA"])
def holder(request: pytest.FixtureRequest) -> Holder:
    made: Holder = HOLDERS[request.param]()
    return made


def verify(proof: str, **options: Any) -> DpopProof:
    """``verify_proof`` for POST ``URL`` at ``NOW`` (``options`` override)."""
    arguments: dict[str, Any] = {"method": "POST", "url": URL, "now": NOW, **options}
    return verify_proof(proof, **arguments)


def refused(proof: str, **options: Any) -> InvalidDpopProof:
    """The refusal of ``proof``: a 401 with a DPoP challenge saying ``invalid_dpop_proof``."""
    with pytest.raises(InvalidDpopProof) as caught:
        verify(proof, **options)
    refusal = caught.value
    assert (refusal.status, refusal.code) == (401, "invalid-dpop-proof")
    challenge = refusal.headers["WWW-Authenticate"]
    assert challenge.startswith("DPoP ")
    assert 'error="invalid_dpop_proof"' in challenge
    return refusal


def use_nonce(proof: str, **options: Any) -> UseDpopNonce:
    """The refusal of ``proof`` for its nonce: section 8's 400 ``use_dpop_nonce``, the nonce to use in a header."""
    with pytest.raises(UseDpopNonce) as caught:
        verify(proof, **options)
    refusal = caught.value
    assert (refusal.status, refusal.code) == (400, "use-dpop-nonce")
    assert refusal.headers["DPoP-Nonce"]
    return refusal


def raw_jws(header: bytes, payload: bytes, signer: h.Signer) -> str:
    """A compact JWS over exactly these bytes."""
    signing_input = f"{h.b64(header)}.{h.b64(payload)}"
    return f"{signing_input}.{h.b64(signer(signing_input.encode()))}"


def respelled(segment: str) -> str:
    """``segment`` with one of the bits no byte uses set otherwise: the same bytes to a lenient decoder."""
    assert len(segment) % 4 in (2, 3)
    other = segment[:-1] + ALPHABET[ALPHABET.index(segment[-1]) ^ 1]
    assert h.unb64(other) == h.unb64(segment)
    return other


def uneven(raw: bytes) -> bytes:
    """``raw`` with JSON whitespace up to 1 mod 3 bytes, so its base64url has unused bits to re-spell."""
    return raw + b" " * ((1 - len(raw)) % 3)


def high_s_twin(proof: str) -> str:
    """An ES256 ``proof`` with its signature (r, s) turned into (r, n - s): the other twin, which verifies too."""
    signing_input, signature = proof.rsplit(".", 1)
    raw = h.unb64(signature)
    s = int.from_bytes(raw[32:], "big")
    return f"{signing_input}.{h.b64(raw[:32] + (P256_ORDER - s).to_bytes(32, 'big'))}"


# --- good proofs ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "RS256", "PS256"])
def test_a_good_proof_passes_and_names_its_key_by_rfc7638_thumbprint(alg: str) -> None:
    holder = HOLDERS[alg]()
    claims = holder.claims()
    proof = jwt.encode(claims, holder.key, algorithm=alg, headers={"typ": "dpop+jwt", "jwk": holder.jwk})
    assert verify(proof) == DpopProof(jkt=holder.jkt, jti=claims["jti"], iat=NOW)
    assert verify(proof, expected_jkt=holder.jkt).jkt == holder.jkt


def test_the_jkt_is_the_rfc7638_example_thumbprint() -> None:
    """RFC 7638 section 3.1's RSA key and its thumbprint, through a proof header's jwk."""
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3"
        "oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdA"
        "ZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-"
        "kEgU8awapJzKnqDKgw"
    )
    key = jwt.get_algorithm_by_name("RS256").from_jwk({"kty": "RSA", "n": n, "e": "AQAB"})
    assert isinstance(key, rsa.RSAPublicKey)
    assert thumbprint(public_members(key)) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    # written as a proof's jwk, the key itself is accepted (it is the signature, absent here, that is not)
    forged = h.forge({"typ": "dpop+jwt", "alg": "RS256", "jwk": {"kty": "RSA", "n": n, "e": "AQAB"}}, {}, h.unsigned)
    assert refused(forged).detail == "signature does not verify"


def test_an_es256_proof_verifies_whichever_s_it_carries_and_both_twins_are_one_proof(redis_url: str) -> None:
    """Clients' libraries (WebCrypto, OpenSSL under PyJWT) leave S high for half their signatures: those verify.
    The twin (r, n - s) of a proof is the same proof, so its jti is already spent."""
    holder = es256()
    proof = holder.proof()
    twin = high_s_twin(proof)
    assert twin != proof
    first, second = verify(proof), verify(twin)
    assert first == second
    replay = ProofReplay(Redis.from_url(redis_url), f"t{uuid.uuid4().hex[:12]}:")

    async def uses() -> list[bool]:
        return [await replay.first_use(p.jti, p.jkt, p.replay_ttl(NOW)) for p in (first, second)]

    assert asyncio.run(uses()) == [True, False]


def test_the_typ_is_compared_as_a_media_type() -> None:
    """RFC 7515 section 4.1.9: case-insensitive, and ``application/`` may be written or left out."""
    holder = eddsa()
    for typ in ("application/dpop+jwt", "DPoP+JWT"):
        assert verify(holder.proof({"typ": typ})).jkt == holder.jkt


# --- htm, htu ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "post", "PUT"])
def test_a_proof_for_another_method_is_refused(holder: Holder, method: str) -> None:
    refused(holder.proof(htm=method))


@pytest.mark.parametrize(
    "htu",
    [
        "https://authority.test/oauth2/introspect",
        "https://authority.test/oauth2/token/",
        "https://authority.test/oauth2/TOKEN",
        "https://authority.test/oauth2/./token",
        "https://elsewhere.test/oauth2/token",
        "https://authority.test.elsewhere.test/oauth2/token",
        "http://authority.test/oauth2/token",
        "https://authority.test:8443/oauth2/token",
        "https://user@authority.test/oauth2/token",
        "https://authority.test/oauth2/tok%65n",
        "https://authority.test/oauth2/to\nken",
        "/oauth2/token",
        "authority.test/oauth2/token",
        "ftp://authority.test/oauth2/token",
        "https://authority.test:99999/oauth2/token",
        "",
    ],
    ids=[
        "other-path", "trailing-slash", "path-case", "dot-segment", "other-host", "host-suffix", "other-scheme",
        "other-port", "userinfo", "unreserved-percent-encoded", "newline", "relative", "no-scheme", "ftp",
        "port-out-of-range", "empty",
    ],
)  # fmt: skip
def test_a_proof_for_another_url_is_refused(holder: Holder, htu: str) -> None:
    assert "htu" in refused(holder.proof(htu=htu)).detail


@pytest.mark.parametrize(
    "htu",
    [
        "https://authority.test/oauth2/token?grant_type=x",
        "https://authority.test/oauth2/token#fragment",
        "https://authority.test/oauth2/token?a=1#b",
        "HTTPS://Authority.TEST/oauth2/token",
        "https://authority.test:443/oauth2/token",
        "https://AUTHORITY.test:443/oauth2/token?x#y",
    ],
    ids=["query", "fragment", "query-and-fragment", "scheme-and-host-case", "default-port", "all-at-once"],
)
def test_the_url_is_compared_without_query_or_fragment_and_normalised(holder: Holder, htu: str) -> None:
    assert verify(holder.proof(htu=htu)).jkt == holder.jkt


def test_the_servers_url_is_normalised_the_same_way(holder: Holder) -> None:
    proof = holder.proof(htu="https://authority.test/oauth2/token")
    for url in ("https://AUTHORITY.test:443/oauth2/token", "https://authority.test/oauth2/token?x=1"):
        assert verify(proof, url=url).jkt == holder.jkt
    with pytest.raises(ValueError, match="not an absolute"):
        verify(proof, url="/oauth2/token")


@pytest.mark.parametrize(
    ("url", "normal"),
    [
        ("HTTP://Example.COM:80", "http://example.com/"),
        ("http://example.com:8080/a%2fb?q#f", "http://example.com:8080/a%2Fb"),
        ("https://[::1]:443/x", "https://[::1]/x"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ("https://example.com:/x", "https://example.com/x"),
        ("https://:443/x", None),
        ("https://a@example.com/x", None),
        ("https://example.com/%zz", None),
        ("https://example.com/a b", None),
        ("mailto:someone@example.com", None),
    ],
)
def test_normalised_url(url: str, normal: str | None) -> None:
    assert normalised_url(url) == normal


# --- iat --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("iat", "accepted"), [(NOW - 61, False), (NOW - 60, True), (NOW + 60, True), (NOW + 61, False)]
)
def test_a_proof_outside_its_iat_window_is_refused(holder: Holder, iat: int, accepted: bool) -> None:
    proof = holder.proof(iat=iat)
    if accepted:
        assert verify(proof).iat == iat
    else:
        assert "iat" in refused(proof).detail


def test_the_iat_window_is_configurable(holder: Holder) -> None:
    proof = holder.proof(iat=NOW - 200)
    refused(proof)
    assert verify(proof, iat_window_s=300).iat == NOW - 200
    refused(holder.proof(iat=NOW + 11), iat_window_s=10)


@pytest.mark.parametrize("iat", [float(NOW), str(NOW), True, None])
def test_an_iat_that_is_not_a_whole_number_is_refused(holder: Holder, iat: Any) -> None:
    refused(holder.proof(iat=iat) if iat is not None else holder.proof(iat=None))


def test_replay_ttl_covers_what_is_left_of_the_window() -> None:
    proof = DpopProof(jkt="k", jti="j", iat=NOW)
    assert [proof.replay_ttl(now) for now in (NOW - 60, NOW, NOW + 60, NOW + 61)] == [121, 61, 1, 1]


# --- required claims --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("claim", ["jti", "htm", "htu", "iat"])
def test_a_proof_without_a_required_claim_is_refused(holder: Holder, claim: str) -> None:
    assert claim in refused(holder.proof(**{claim: None})).detail


@pytest.mark.parametrize("jti", ["", "x" * 129, 12345])
def test_a_jti_that_is_empty_too_long_or_not_a_string_is_refused(holder: Holder, jti: Any) -> None:
    refused(holder.proof(jti=jti))


def test_claims_that_are_not_an_object_are_refused(holder: Holder) -> None:
    refused(raw_jws(json.dumps(holder.header()).encode(), b'["jti"]', holder.sign))


# --- replay -----------------------------------------------------------------------------------------------------


def test_a_proofs_jti_is_used_once_per_key(redis_url: str) -> None:
    prefix = f"t{uuid.uuid4().hex[:12]}:"
    one, other = es256(), eddsa()
    proof = verify(one.proof(jti="same"))
    others = verify(other.proof(jti="same"))

    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        try:
            replay = ProofReplay(redis, prefix)
            assert await replay.first_use(proof.jti, proof.jkt, proof.replay_ttl(NOW))
            assert not await replay.first_use(proof.jti, proof.jkt, proof.replay_ttl(NOW))  # reused: refused
            assert await replay.first_use(others.jti, others.jkt, 60)  # the same jti under another key
            key = f"{prefix}dpop:{hashlib.sha256(f'{proof.jkt}:same'.encode()).hexdigest()}"
            assert 55 <= await redis.ttl(key) <= 61
            assert len([k async for k in redis.scan_iter(f"{prefix}*")]) == 2
        finally:
            await redis.aclose()

    asyncio.run(scenario())


def test_a_jti_is_usable_again_once_its_window_has_passed(redis_url: str) -> None:
    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        try:
            replay = ProofReplay(redis, f"t{uuid.uuid4().hex[:12]}:")
            assert await replay.first_use("j", "k", 1)
            assert not await replay.first_use("j", "k", 1)
            await asyncio.sleep(1.2)
            assert await replay.first_use("j", "k", 1)
            with pytest.raises(ValueError, match="at least one second"):
                await replay.first_use("j", "k", 0)
        finally:
            await redis.aclose()

    asyncio.run(scenario())


# --- the key ----------------------------------------------------------------------------------------------------


def test_a_proof_by_another_key_than_expected_is_refused(holder: Holder) -> None:
    other = eddsa()
    assert "another key" in refused(holder.proof(), expected_jkt=other.jkt).detail
    # another key pretending to be the expected one: its proof carries its own jwk, so its own thumbprint
    refused(other.proof(), expected_jkt=holder.jkt)


def test_a_jwk_of_another_key_than_the_signers_is_refused(holder: Holder) -> None:
    """Signed by one key, naming another: the signature is checked against the key named, and fails."""
    other = HOLDERS[holder.alg]()
    assert "signature" in refused(holder.proof({"jwk": other.jwk})).detail


def test_alg_none_is_refused(holder: Holder) -> None:
    refused(h.forge(holder.header(alg="none"), holder.claims(), h.unsigned))


def test_hs256_with_the_public_key_as_secret_is_refused(holder: Holder) -> None:
    public = holder.key.public_key()
    forms = [
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(holder.jwk).encode(),
    ]
    for secret in forms:
        assert "alg" in refused(h.forge(holder.header(alg="HS256"), holder.claims(), h.hs256(secret))).detail
    # and not even if asked to: HS* are not algorithms a proof may use
    with pytest.raises(ValueError, match="asymmetric"):
        verify(holder.proof(), algorithms=frozenset({"HS256", "ES256"}))


def test_an_oct_jwk_is_refused() -> None:
    """PyJWT's PyJWK would make an HMAC key of it; a proof's key must be a public key."""
    secret = b"shared secret of thirty-two bytes!!"
    assert jwt.PyJWK({"kty": "oct", "k": h.b64(secret)}).algorithm_name == "HS256"  # why we check it ourselves
    oct_jwk = {"kty": "oct", "k": h.b64(secret)}
    for alg in ("HS256", "ES256", "EdDSA"):
        header = {"typ": "dpop+jwt", "alg": alg, "jwk": oct_jwk}
        refused(h.forge(header, es256().claims(), h.hs256(secret)))


def test_a_jwk_with_a_private_member_is_refused_though_the_signature_verifies(holder: Holder) -> None:
    private: dict[str, Any] = jwt.get_algorithm_by_name(holder.alg).to_jwk(holder.key, as_dict=True)
    assert "d" in private
    assert "public key" in refused(holder.proof({"jwk": private})).detail
    for member in ("p", "q", "dp", "dq", "qi", "oth", "k"):
        refused(holder.proof({"jwk": {**holder.jwk, member: "AQAB"}}))


@pytest.mark.parametrize(
    ("alg", "jwk"),
    [
        ("ES256", {"kty": "OKP", "crv": "Ed25519"}),
        ("ES256", {"crv": "P-384"}),
        ("ES256", {"crv": "secp256k1"}),
        ("ES256", {"kty": "RSA"}),
        ("ES256", {"x": None}),
        ("ES256", {"y": 7}),
        ("ES256", {"x": "AAAA"}),
        ("ES256", {"alg": "ES384"}),
        ("EdDSA", {"crv": "Ed448"}),
        ("EdDSA", {"kty": "EC"}),
        ("EdDSA", {"x": "AQID"}),
    ],
    ids=[
        "ec-alg-okp-key", "other-curve", "unsupported-curve", "rsa-kty", "no-x", "y-not-a-string", "short-x",
        "jwk-alg-differs", "ed448", "okp-alg-ec-kty", "short-ed25519",
    ],
)  # fmt: skip
def test_a_jwk_that_is_not_a_key_of_the_proofs_alg_is_refused(alg: str, jwk: dict[str, Any]) -> None:
    holder = HOLDERS[alg]()
    changed = {name: value for name, value in {**holder.jwk, **jwk}.items() if value is not None}
    refused(holder.proof({"jwk": changed}))


def test_an_ec_point_off_the_curve_is_refused() -> None:
    holder = es256()
    jwk = holder.jwk
    y = int.from_bytes(h.unb64(jwk["y"]), "big")
    refused(holder.proof({"jwk": {**jwk, "y": h.b64((y ^ 1).to_bytes(32, "big"))}}))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # PyJWT signs it, warning
def test_a_short_rsa_key_or_one_spelled_with_leading_zeros_is_refused() -> None:
    short = Holder("RS256", rsa.generate_private_key(65537, 1024))  # noqa: S505 (the point: too short)
    assert "2048" in refused(short.proof()).detail
    holder = HOLDERS["RS256"]()
    jwk = holder.jwk
    padded = {**jwk, "n": h.b64(b"\x00" + h.unb64(jwk["n"]))}
    assert "minimum number of octets" in refused(holder.proof({"jwk": padded})).detail


@pytest.mark.parametrize("jwk", [None, "a string", ["a", "list"]])
def test_a_proof_without_a_jwk_object_is_refused(holder: Holder, jwk: Any) -> None:
    header = {name: value for name, value in holder.header(jwk=jwk).items() if value is not None}
    refused(raw_jws(json.dumps(header).encode(), json.dumps(holder.claims()).encode(), holder.sign))


@pytest.mark.parametrize("parameter", ["jku", "x5u", "x5c", "x5t", "x5t#S256", "crit"])
def test_a_header_naming_other_key_material_or_extensions_is_refused(holder: Holder, parameter: str) -> None:
    refused(holder.proof({parameter: ["https://keys.example/"]}))


def test_an_alg_outside_the_allowlist_is_refused_and_the_challenge_names_the_allowed(holder: Holder) -> None:
    refusal = refused(holder.proof(), algorithms=frozenset({"RS256"}))
    assert 'algs="RS256"' in refusal.headers["WWW-Authenticate"]
    challenge = refused(h.forge(holder.header(alg="none"), holder.claims(), h.unsigned)).headers["WWW-Authenticate"]
    assert f'algs="{" ".join(sorted(DEFAULT_ALGORITHMS))}"' in challenge


def test_a_tampered_payload_is_refused(holder: Holder) -> None:
    head, _, signature = holder.proof().split(".")
    body = h.b64(json.dumps(holder.claims(htm="DELETE")).encode())
    assert "signature" in refused(f"{head}.{body}.{signature}", method="DELETE").detail


# --- typ --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "at+jwt", "dpop", "dpop+jwt ", ["dpop+jwt"]])
def test_a_proof_with_another_typ_is_refused(holder: Holder, typ: Any) -> None:
    header = {name: value for name, value in holder.header(typ=typ).items() if value is not None}
    assert "typ" in refused(h.forge(header, holder.claims(), holder.sign)).detail


# --- ath --------------------------------------------------------------------------------------------------------


def test_ath_binds_the_proof_to_its_access_token(holder: Holder) -> None:
    token, other = "the.access.token", "another.access.token"
    proof = holder.proof(ath=ath_of(token))
    assert verify(proof, access_token=token).jkt == holder.jkt
    assert "ath" in refused(proof, access_token=other).detail  # a proof made for another token
    assert "ath" in refused(holder.proof(), access_token=token).detail  # no ath at all
    assert verify(proof).jkt == holder.jkt  # no token presented (a token request): ath is not asked for


def test_ath_is_the_base64url_sha256_of_the_token() -> None:
    """RFC 9449 section 7.1's example: the access token and the ath of the proof sent with it."""
    assert ath_of("Kz~8mXK1EalYznwH-LC-1fBAo.4Ljp~zsPE_NeO.gxU") == "fUHyO2r2Z3DZ53EsNrWBb0xWXoaNy59IiKCAqksmQEo"


# --- nonces -----------------------------------------------------------------------------------------------------


def test_a_required_nonce_missing_wrong_or_old_asks_for_the_current_one(holder: Holder) -> None:
    clock = h.Clock(NOW)
    nonces = Nonces(SECRET, period_s=300, clock=clock)
    current = nonces.current()
    assert verify(holder.proof(nonce=current), nonces=nonces).jkt == holder.jkt
    for nonce in (None, "wrong", Nonces(b"another secret, thirty-two bytes long", clock=clock).current()):
        assert use_nonce(holder.proof(nonce=nonce), nonces=nonces).headers["DPoP-Nonce"] == current
    clock.now += 300  # one rotation: the previous nonce still works, the new one is handed out
    assert nonces.current() != current
    assert verify(holder.proof(nonce=current), nonces=nonces).jkt == holder.jkt
    clock.now += 300  # two: too old
    refusal = use_nonce(holder.proof(nonce=current), nonces=nonces)
    assert refusal.headers["DPoP-Nonce"] == nonces.current() != current


def test_an_exact_nonce_can_be_required(holder: Holder) -> None:
    assert verify(holder.proof(nonce="n-1"), nonce="n-1").jkt == holder.jkt
    for nonce in (None, "n-0"):
        assert use_nonce(holder.proof(nonce=nonce), nonce="n-1").headers["DPoP-Nonce"] == "n-1"
    refused(holder.proof(nonce=1), nonce="1")  # not a string at all: a malformed proof


def test_a_nonce_refusal_comes_only_for_a_proof_good_otherwise(holder: Holder) -> None:
    nonces = Nonces(SECRET, clock=h.Clock(NOW))
    refused(holder.proof(htm="GET"), nonces=nonces)
    refused(holder.proof(iat=NOW - 3600), nonces=nonces)


def test_nonces_rotate_on_buckets_and_need_a_real_secret() -> None:
    clock = h.Clock(NOW - NOW % 60)
    nonces = Nonces(SECRET, period_s=60, clock=clock)
    first = nonces.current()
    assert len(first) == 43
    assert set(first) <= set(ALPHABET)
    clock.now += 59
    assert nonces.current() == first
    assert Nonces(SECRET, period_s=60, clock=clock).current() == first  # another replica, the same secret
    clock.now += 1
    second = nonces.current()
    assert second != first
    assert nonces.valid(first)
    assert nonces.valid(second)
    clock.now += 60
    assert not nonces.valid(first)
    assert nonces.valid(second)
    for bad in ("", "é" * 43, first[:-1], first + "A"):
        assert not nonces.valid(bad)
    with pytest.raises(ValueError, match="32 bytes"):
        Nonces(b"short")


# --- size, spelling, JSON ---------------------------------------------------------------------------------------


def test_a_proof_over_the_size_cap_is_refused(holder: Holder) -> None:
    proof = holder.proof(padding="x" * MAX_PROOF_LENGTH)
    assert len(proof) > MAX_PROOF_LENGTH
    assert "longer" in refused(proof).detail
    fits = holder.proof(padding="x" * 2000)
    assert len(fits) <= MAX_PROOF_LENGTH
    assert verify(fits).jkt == holder.jkt


@pytest.mark.parametrize("proof", ["", "a.b", "a.b.c.d", "not a jws", "..", "e30.e30.", "e30.e30.e30"], ids=repr)
def test_something_that_is_not_a_jws_is_refused(proof: str) -> None:
    refused(proof)


def test_repeated_member_names_in_the_header_or_the_claims_are_refused(holder: Holder) -> None:
    """Signed by the key the jwk names, the last of each pair being the genuine value: refused all the same."""
    head, body = json.dumps(holder.header()).encode(), json.dumps(holder.claims()).encode()
    repeated = [
        raw_jws(b'{"typ": "JWT", ' + head[1:], body, holder.sign),
        raw_jws(b'{"alg": "none", ' + head[1:], body, holder.sign),
        raw_jws(head.replace(b'"jwk": {', b'"jwk": {"kty": "oct", '), body, holder.sign),
        raw_jws(head, b'{"htu": "https://elsewhere.test/", ' + body[1:], holder.sign),
        raw_jws(head, b'{"htm": "GET", ' + body[1:], holder.sign),
        raw_jws(head, b'{"h\\u0074m": "GET", ' + body[1:], holder.sign),
    ]
    for proof in repeated:
        assert "twice" in refused(proof).detail
    assert verify(raw_jws(head, body, holder.sign)).jkt == holder.jkt


def test_a_proof_not_written_in_canonical_base64url_is_refused(holder: Holder) -> None:
    head, body = uneven(json.dumps(holder.header()).encode()), uneven(json.dumps(holder.claims()).encode())
    genuine = raw_jws(head, body, holder.sign)
    h64, b64, signature = genuine.split(".")
    respellings = [
        f"{h64}.{b64}.{respelled(signature)}",  # 64 bytes, 86 characters: 4 bits unused
        *(
            f"{a}.{b}.{h.b64(holder.sign(f'{a}.{b}'.encode()))}"  # re-signed as written
            for a, b in ((respelled(h64), b64), (h64, respelled(b64)))
        ),
        f"{h64}.{b64}.{signature}==",
        f"{h64}=.{b64}.{signature}",
        f" {genuine}",
        *([f"{h64}.{b64}.{signature.replace('-', '+').replace('_', '/')}"] if set("-_") & set(signature) else []),
        f"{h64}.{b64[:10]}\n{b64[10:]}.{signature}",
    ]
    for proof in respellings:
        refused(proof)
    assert verify(genuine).jkt == holder.jkt


def test_json_that_is_not_utf8_or_has_a_bom_is_refused(holder: Holder) -> None:
    head, body = json.dumps(holder.header()).encode(), json.dumps(holder.claims()).encode()
    refused(raw_jws(b"\xef\xbb\xbf" + head, body, holder.sign))
    refused(raw_jws(head, body.decode().encode("utf-16"), holder.sign))
    refused(raw_jws(head, body[:-1] + b', "x": "\xff"}', holder.sign))


# --- the refusals themselves ------------------------------------------------------------------------------------


def test_the_challenge_is_a_valid_header_whatever_the_detail_says() -> None:
    refusal = InvalidDpopProof('a "quoted" \\ détail\nwith a newline', algs=("ES256", "EdDSA"))
    challenge = refusal.headers["WWW-Authenticate"]
    assert challenge == (
        'DPoP error="invalid_dpop_proof", error_description="a \'quoted\' / d?tail?with a newline", algs="ES256 EdDSA"'
    )
    assert refusal.detail == 'a "quoted" \\ détail\nwith a newline'  # the problem body keeps it as it was
    assert UseDpopNonce("use it", nonce="abc").headers == {"DPoP-Nonce": "abc"}


def test_the_arguments_of_the_service_itself_are_checked(holder: Holder) -> None:
    proof = holder.proof()
    wrong: dict[str, Any]
    for wrong in ({"algorithms": frozenset()}, {"algorithms": frozenset({"none"})}, {"iat_window_s": 0}):
        with pytest.raises(ValueError, match=r"DPoP algorithms|iat window"):
            verify(proof, **wrong)
