"""Signing keys: RFC 7638 kids, JWKs that other libraries accept, and key files that are safe at rest."""

from __future__ import annotations

import asyncio
import hashlib
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from redis.asyncio import Redis

from authority.audit import AuditLog
from authority.cli import main
from authority.keys import (
    FileKeyStore,
    KeyManager,
    KeyNotices,
    KeyRecord,
    Keyring,
    KeyStoreError,
    LoadedKey,
    RotationLock,
    Schedule,
)
from authority.keys.jwk import public_jwk, public_members, thumbprint
from authority.keys.keyring import new_record, unseal_record
from authority.keys.lifecycle import State
from authority.refusals import BadSignature
from authority.settings import SettingsError
from authority.tokens import IMPERSONATION_TYP, Actor, impersonation_claims, read_header, sign, verify_signature
from tests.helpers import PASSPHRASE, b64, unb64

SCHEDULE = Schedule(rotation_s=86400, prepublish_s=3600, retention_s=4210)
# RFC 7638 section 3.1.
RFC7638_N = (
    "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknj"
    "hMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQv"
    "RL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnq"
    "DKgw"
)
RFC7638_KID = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
# RFC 8037 appendices A.2 and A.3.
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
PUBLIC_MEMBERS = {"OKP": {"kty", "crv", "x"}, "EC": {"kty", "crv", "x", "y"}, "RSA": {"kty", "n", "e"}}


def key_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.json"))


def read_record(path: Path) -> KeyRecord:
    return msgspec.json.decode(path.read_bytes(), type=KeyRecord)


def save(directory: Path, *records: KeyRecord) -> None:
    asyncio.run(FileKeyStore(directory).save(records))


def loaded(record: KeyRecord, key_state: State) -> LoadedKey:
    private = unseal_record(record, PASSPHRASE, demo=False, source="test")
    return LoadedKey(record, private, private.public_key(), public_jwk(private.public_key(), record.alg), key_state)


def signed_by(key: LoadedKey) -> str:
    claims = impersonation_claims(
        issuer="https://a.example", audience="https://a.example/x", coworker_id=42, location="1",
        actor=Actor(sub="7", role="operator", iss="urn:portal"), jti="j", now=1000, ttl=60,
    )  # fmt: skip
    return sign(claims, key, IMPERSONATION_TYP)


def signing(keyring: Keyring) -> LoadedKey:
    signer = keyring.signer_at(int(time.time()))
    assert signer is not None
    return signer


Start = Callable[..., Keyring]


@pytest.fixture
def start(redis_url: str) -> Start:
    """One start of the key manager on a file store, as the service does it: load, and make a key if none signs."""

    def run(directory: Path, *, alg: str = "EdDSA", passphrase: str | None = PASSPHRASE, demo: bool = False) -> Keyring:
        async def tick() -> Keyring:
            redis = Redis.from_url(redis_url)
            try:
                prefix = f"k{uuid.uuid4().hex[:12]}:"
                keys = KeyManager(FileKeyStore(directory), RotationLock(redis, prefix), KeyNotices(redis, prefix),
                                  alg=alg, passphrase=passphrase, demo=demo, schedule=SCHEDULE, refresh_s=2,
                                  clock=time.time,
                                  audit=AuditLog(redis, f"{prefix}audit", 1000))  # fmt: skip
                return await keys.tick()
            finally:
                await redis.aclose()

        return asyncio.run(tick())

    return run


# --- thumbprints and JWKs -----------------------------------------------------------------------------------


def test_rfc7638_example_thumbprint() -> None:
    members = {"kty": "RSA", "n": RFC7638_N, "e": "AQAB", "alg": "RS256", "kid": "2011-04-29"}
    assert thumbprint(members) == RFC7638_KID  # only the required members count
    key = rsa.RSAPublicNumbers(65537, int.from_bytes(unb64(RFC7638_N), "big")).public_key()
    assert public_members(key) == {"kty": "RSA", "n": RFC7638_N, "e": "AQAB"}
    assert public_jwk(key, "RS256")["kid"] == RFC7638_KID


def test_rfc8037_okp_thumbprint() -> None:
    key = ed25519.Ed25519PublicKey.from_public_bytes(unb64(RFC8037_X))
    assert public_jwk(key, "EdDSA") == {"kty": "OKP", "crv": "Ed25519", "x": RFC8037_X, "kid": RFC8037_KID,
                                        "alg": "EdDSA", "use": "sig"}  # fmt: skip


def test_ec_coordinates_are_full_length_and_thumbprint_is_canonical() -> None:
    """RFC 7518 6.2.1.2: x and y are always 32 bytes for P-256, even when the value has leading zero bytes."""
    scalar = next(i for i in range(1, 10_000)
                  if ec.derive_private_key(i, ec.SECP256R1()).public_key().public_numbers().x < 2**248)  # fmt: skip
    public = ec.derive_private_key(scalar, ec.SECP256R1()).public_key()
    jwk = public_jwk(public, "ES256")
    assert len(unb64(jwk["x"])) == 32
    assert len(unb64(jwk["y"])) == 32
    canonical = f'{{"crv":"P-256","kty":"EC","x":"{jwk["x"]}","y":"{jwk["y"]}"}}'.encode()
    assert jwk["kid"] == b64(hashlib.sha256(canonical).digest())
    assert public_jwk(public, "ES256") == jwk  # stable


def test_unsupported_curve_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported curve"):
        public_members(ec.generate_private_key(ec.SECP384R1()).public_key())


@pytest.mark.parametrize(("alg", "kty"), [("EdDSA", "OKP"), ("ES256", "EC"), ("RS256", "RSA")])
def test_keyrings_per_alg_publish_jwks_pyjwt_accepts(start: Start, tmp_path: Path, alg: str, kty: str) -> None:
    keyring = start(tmp_path, alg=alg)
    key = keyring.signer_at(int(time.time()))
    assert key is not None
    assert key.alg == alg
    assert key.jwk["kty"] == kty
    assert (key.jwk["alg"], key.jwk["use"], key.jwk["kid"]) == (alg, "sig", key.kid)
    assert public_jwk(key.public, alg) == key.jwk  # the kid is stable: recomputed, it is the same

    token = signed_by(key)
    header = read_header(token)
    assert (header["alg"], header["kid"], header["typ"]) == (alg, key.kid, IMPERSONATION_TYP)
    assert msgspec.json.decode(verify_signature(token, key.public, key.alg, header))["sub"] == "42"

    signer_jwk, standby_jwk = msgspec.json.decode(keyring.jwks)["keys"]  # JWKS order: the signer first
    assert standby_jwk["alg"] == alg
    published = jwt.PyJWK(signer_jwk)
    assert published.algorithm_name == alg
    assert published.key_id == key.kid
    claims = jwt.decode(token, published, algorithms=[alg], audience="https://a.example/x",
                        options={"verify_exp": False})  # fmt: skip
    assert claims["act"] == {"sub": "7", "role": "operator", "iss": "urn:portal"}


@pytest.mark.parametrize("alg", ["EdDSA", "ES256", "RS256"])
def test_verify_refuses_another_key_and_another_alg(alg: str) -> None:
    key, other = (loaded(new_record(alg, PASSPHRASE, now=1, activates_at=1), "active") for _ in range(2))
    token = signed_by(key)
    with pytest.raises(BadSignature):
        verify_signature(token, other.public, other.alg, read_header(token))
    wrong_alg = "ES256" if alg != "ES256" else "EdDSA"
    with pytest.raises(BadSignature):
        verify_signature(token, key.public, wrong_alg, read_header(token))


def test_jwks_lists_public_members_only() -> None:
    states: list[tuple[str, State]] = [("EdDSA", "pending"), ("ES256", "active"), ("RS256", "retiring")]
    keys = [loaded(new_record(alg, PASSPHRASE, now=1, activates_at=1), key_state) for alg, key_state in states]
    keyring = Keyring(tuple(keys))
    published = msgspec.json.decode(keyring.jwks)["keys"]
    assert {k["kid"] for k in published} == {k.kid for k in keys}
    for jwk in published:
        assert set(jwk) == PUBLIC_MEMBERS[jwk["kty"]] | {"kid", "alg", "use"}
    assert b'"d"' not in keyring.jwks
    assert b"PRIVATE" not in keyring.jwks


def test_pending_key_is_published_but_neither_signs_nor_verifies(start: Start, tmp_path: Path) -> None:
    now = int(time.time())
    active = new_record("EdDSA", PASSPHRASE, now=now - 60, activates_at=now - 60)
    pending = new_record("EdDSA", PASSPHRASE, now=now, activates_at=now + 600)
    save(tmp_path, active, pending)
    keyring = start(tmp_path)
    signer = keyring.signer_at(int(time.time()))
    assert signer is not None
    assert signer.kid == active.kid
    assert keyring.verifier(pending.kid, now, 10) is None
    assert keyring.verifier(active.kid, now, 10) is signer
    assert {k["kid"] for k in msgspec.json.decode(keyring.jwks)["keys"]} == {active.kid, pending.kid}
    assert len(key_files(tmp_path)) == 2  # nothing new was made


# --- key files at rest --------------------------------------------------------------------------------------


def test_first_start_creates_a_signer_and_a_standby_encrypted_owner_only(start: Start, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keyring = start(keys)
    paths = key_files(keys)
    records = {r.kid: r for r in map(read_record, paths)}
    assert len(records) == 2
    for path in paths:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stem in records
    for record in records.values():
        assert record.encrypted
        assert record.private_pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert signing(keyring) is not None
    assert signing(keyring).state == "active"
    assert sorted(k.state for k in keyring.keys) == ["active", "pending"]
    assert {k.kid for k in keyring.keys} == set(records)


def test_reopening_loads_the_same_key(start: Start, tmp_path: Path) -> None:
    first, again = start(tmp_path), start(tmp_path)
    assert signing(first) is not None
    assert signing(again) is not None
    assert signing(again).kid == signing(first).kid
    assert again.jwks == first.jwks
    assert again.etag == first.etag
    assert len(key_files(tmp_path)) == 2


def test_wrong_passphrase_is_refused_clearly(start: Start, tmp_path: Path) -> None:
    start(tmp_path)
    files = key_files(tmp_path)
    with pytest.raises(KeyStoreError, match="cannot decrypt private key \\(wrong AUTHORITY_KEY_PASSPHRASE\\?\\)"):
        start(tmp_path, passphrase="not the passphrase")
    assert key_files(tmp_path) == files  # no second key was made to replace the one it cannot read


def test_encrypted_key_without_passphrase_in_demo(start: Start, tmp_path: Path) -> None:
    start(tmp_path)
    with pytest.raises(KeyStoreError, match="private key is encrypted; set AUTHORITY_KEY_PASSPHRASE"):
        start(tmp_path, passphrase=None, demo=True)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o602])
def test_readable_key_file_is_refused(start: Start, tmp_path: Path, mode: int) -> None:
    start(tmp_path)
    path = key_files(tmp_path)[0]
    path.chmod(mode)
    with pytest.raises(KeyStoreError, match=r"permissions .* are too open; run chmod 600"):
        start(tmp_path)


def test_plain_key_only_in_demo(start: Start, tmp_path: Path) -> None:
    demo_ring = start(tmp_path, passphrase=None, demo=True)
    for path in key_files(tmp_path):
        record = read_record(path)
        assert not record.encrypted
        assert record.private_pem.startswith("-----BEGIN PRIVATE KEY-----")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(KeyStoreError, match="not encrypted; only --demo accepts plain keys"):
        start(tmp_path)
    again = start(tmp_path, passphrase=None, demo=True)
    assert signing(again) is not None
    assert signing(demo_ring) is not None
    assert signing(again).kid == signing(demo_ring).kid


def test_record_whose_kid_is_not_its_thumbprint_is_refused(start: Start, tmp_path: Path) -> None:
    now = int(time.time())
    other = new_record("EdDSA", PASSPHRASE, now=now, activates_at=now)
    claimed = new_record("EdDSA", PASSPHRASE, now=now, activates_at=now).kid
    save(tmp_path, msgspec.structs.replace(other, kid=claimed))  # someone else's key filed under a kid
    with pytest.raises(KeyStoreError, match=f"kid {claimed} is not the key's RFC 7638 thumbprint"):
        start(tmp_path)


@pytest.mark.parametrize("alg", ["ES256", "RS256", "HS256", "none"])
def test_record_whose_alg_does_not_fit_its_key_is_refused(start: Start, tmp_path: Path, alg: str) -> None:
    now = int(time.time())
    save(tmp_path, msgspec.structs.replace(new_record("EdDSA", PASSPHRASE, now=now, activates_at=now), alg=alg))
    with pytest.raises(KeyStoreError, match=f"does not fit its alg {alg}"):
        start(tmp_path)


def test_file_that_is_not_a_key_record_is_refused(start: Start, tmp_path: Path) -> None:
    path = tmp_path / "junk.json"
    path.write_text('{"kid": "x"}')
    path.chmod(0o600)
    with pytest.raises(KeyStoreError, match=r"junk\.json: not a key record"):
        start(tmp_path)


def test_no_passphrase_outside_demo_writes_no_plain_key(start: Start, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="AUTHORITY_KEY_PASSPHRASE is required"):
        start(tmp_path, passphrase=None, demo=False)
    assert key_files(tmp_path) == []


def test_cli_rotate_without_passphrase_writes_no_plain_key(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path
) -> None:
    for name, value in {"AUTHORITY_REDIS_URL": redis_url, "AUTHORITY_REDIS_PREFIX": f"k{uuid.uuid4().hex[:8]}:",
                        "AUTHORITY_KEYS_DIR": str(tmp_path)}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AUTHORITY_KEY_PASSPHRASE", raising=False)
    assert main(["keys", "rotate"]) == 2
    assert [p for p in key_files(tmp_path) if "PRIVATE KEY-----" in p.read_text()
            and "ENCRYPTED" not in p.read_text()] == []  # fmt: skip


def test_leftover_staging_file_does_not_stop_the_start(start: Start, tmp_path: Path) -> None:
    first = start(tmp_path)
    staged = tmp_path / ".tmp-k3y5x2.json"
    staged.write_bytes(key_files(tmp_path)[-1].read_bytes()[:40])  # half of a record, as a crash leaves it
    staged.chmod(0o600)
    again = start(tmp_path)
    assert signing(again) is not None
    assert signing(first) is not None
    assert signing(again).kid == signing(first).kid
