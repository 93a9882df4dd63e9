"""Trying a deployment before the portal is wired: ``authority callers token`` signs as a configured test issuer,
the real service accepts what it signs, and ``authority callers check`` says what a bearer may call, or why not."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from litestar.testing import TestClient

from authority import demo
from authority.app import create_app
from authority.cli import main
from authority.settings import load
from tests.helpers import PASSPHRASE, STAFF, team

ISSUER = "https://portal.example.test"


@pytest.fixture
def deployment(monkeypatch: pytest.MonkeyPatch, redis_url: str, tmp_path: Path) -> Path:
    """A deployment configured as the docs say, without --demo: one trusted issuer with a jwks_file that does not
    exist yet, with its own claim names. Returns the jwks_file's path."""
    jwks_file = tmp_path / "issuer" / "jwks.json"
    issuer = {
        "issuer": ISSUER,
        "audiences": ["authority", "other"],
        "jwks_file": str(jwks_file),
        "algorithms": ["ES256"],
        "role_claim": "portal_role",
        "location_claim": "portal_location",
        "coworker_claim": "coworker",
    }
    for name in [n for n in os.environ if n.startswith("AUTHORITY_") and not n.startswith("AUTHORITY_TEST_")]:
        monkeypatch.delenv(name)
    for name, value in {
        "AUTHORITY_ISSUER": "https://authority.example.test",
        "AUTHORITY_REDIS_URL": redis_url,
        "AUTHORITY_REDIS_PREFIX": f"callers{uuid.uuid4().hex[:8]}:",
        "AUTHORITY_KEYS_DIR": str(tmp_path / "keys"),
        "AUTHORITY_KEY_PASSPHRASE": PASSPHRASE,
        "AUTHORITY_DIRECTORY_FILE": str(Path(demo.__file__).with_name("demo_directory.json")),
        "AUTHORITY_TRUSTED_ISSUERS": json.dumps([issuer]),
    }.items():
        monkeypatch.setenv(name, value)
    return jwks_file


def token(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["callers", "token", *args]) == 0
    return capsys.readouterr().out.strip()


def check(capsys: pytest.CaptureFixture[str], bearer: str) -> tuple[int, str]:
    code = main(["callers", "check", bearer])
    return code, capsys.readouterr().out


def test_a_test_issuers_token_mints_on_the_real_service(deployment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    operator = token(capsys, "--role", "operator", "--sub", "7", "--location", "1")
    header, claims = jwt.get_unverified_header(operator), jwt.decode(operator, options={"verify_signature": False})
    assert header["alg"] == "ES256"  # the issuer's only accepted alg
    assert header["kid"] in {k["kid"] for k in json.loads(deployment.read_text())["keys"]}
    assert (claims["iss"], claims["aud"], claims["portal_role"], claims["portal_location"]) == (
        ISSUER, "authority", "operator", "1"
    )  # fmt: skip
    assert oct(deployment.with_name("jwks.json.key.pem").stat().st_mode & 0o777) == "0o600"

    with TestClient(create_app(load())) as client:  # the service as configured, started after the key was made
        minted = client.get(STAFF, params={"coworkerId": 42}, headers={"Authorization": f"Bearer {operator}"})
        assert minted.status_code == 200, minted.text
        team_admin = token(capsys, "--role", "team-admin", "--sub", "5", "--location", "1")
        minted = client.get(team(43), headers={"Authorization": f"Bearer {team_admin}"})
        assert minted.status_code == 200, minted.text


def test_the_test_key_is_made_once_and_kept(deployment: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = token(capsys, "--role", "admin", "--sub", "1", "--location", "1")
    assert main(["callers", "token", "--role", "admin", "--sub", "1", "--location", "1"]) == 0
    said = capsys.readouterr()
    assert jwt.get_unverified_header(said.out.strip())["kid"] == jwt.get_unverified_header(first)["kid"]
    assert "restart" not in said.err  # only a new key needs the service to re-read the file
    assert len(json.loads(deployment.read_text())["keys"]) == 1


@pytest.mark.usefixtures("deployment")
def test_check_says_which_mint_a_bearer_may_call(capsys: pytest.CaptureFixture[str]) -> None:
    code, said = check(capsys, token(capsys, "--role", "operator", "--sub", "7", "--location", "1"))
    assert code == 0
    assert f"issuer {ISSUER}, subject '7', role 'operator', location '1', coworker id 7" in said
    assert "staff mint: allowed" in said
    assert "team-admin mint: refused, 403 forbidden" in said

    code, said = check(capsys, token(capsys, "--role", "team-admin", "--sub", "5", "--location", "1"))
    assert code == 0
    assert "staff mint: refused, 401 customer-session" in said
    assert "team-admin mint: allowed (if the directory agrees)" in said


@pytest.mark.usefixtures("deployment")
@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"aud": "someone-else"}, "Audience doesn't match"),
        ({"iss": "https://elsewhere.test"}, "issuer we do not trust"),
        ({"exp": 1}, "Signature has expired"),
        ({"exp": "4102444800"}, "exp, nbf and iat must be NumericDates"),
    ],
    ids=["audience", "issuer", "expired", "string-exp"],
)
def test_check_says_why_a_bearer_is_refused(
    capsys: pytest.CaptureFixture[str], deployment: Path, change: dict[str, Any], reason: str
) -> None:
    good = token(capsys, "--role", "operator", "--sub", "7", "--location", "1")
    key = deployment.with_name("jwks.json.key.pem").read_bytes()
    claims = {**jwt.decode(good, options={"verify_signature": False}), **change}
    bad = jwt.encode(claims, key, algorithm="ES256", headers=jwt.get_unverified_header(good))
    code, said = check(capsys, bad)
    assert code == 1
    assert said.startswith("refused: 401 unauthenticated")
    assert reason in said


def test_an_issuer_whose_keys_come_from_a_url_cannot_be_signed_for(
    deployment: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    portal = {"issuer": ISSUER, "audiences": ["authority"], "jwks_url": "https://portal.example.test/jwks.json"}
    monkeypatch.setenv("AUTHORITY_TRUSTED_ISSUERS", json.dumps([portal]))
    assert main(["callers", "token", "--role", "admin", "--sub", "1", "--location", "1"]) == 2
    said = capsys.readouterr().err
    assert said.count("\n") == 1
    assert "AUTHORITY_TRUSTED_ISSUERS" in said
    assert "jwks_url" in said
    assert not deployment.parent.exists()  # nothing was written


@pytest.mark.usefixtures("deployment")
def test_an_unknown_issuer_is_named_with_the_configured_ones(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--issuer", "https://nope", "--role", "admin", "--sub", "1", "--location", "1"]
    assert main(["callers", "token", *args]) == 2
    said = capsys.readouterr().err
    assert "no issuer 'https://nope'" in said
    assert ISSUER in said
