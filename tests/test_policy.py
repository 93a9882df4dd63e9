"""Who may impersonate whom, asked at mint and asked again at exchange, on a live directory: the file, and the
portal's API (the reference adapter over the same file, on a loopback socket); and RFC 9470 step-up of the
impersonator's own sign-in. Every branch of the policy, on both backends, through the real app on a real Redis."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import msgspec
import pytest
from litestar.testing import TestClient

from authority import demo
from authority.directory import CoworkerEntry, LocationEntry, Membership
from authority.directory_file import DEMO_DIRECTORY, FileDirectory
from authority.directory_http import HttpDirectory
from authority.policy import broken_rule
from examples.portal_adapter import FileSource, create_app
from tests.helpers import (
    EXCHANGE,
    STAFF,
    Stack,
    assert_problem,
    audit_events,
    decode_unverified,
    direct_redis,
    serving,
    team,
)


@pytest.fixture
def directory_file(tmp_path: Path) -> Path:
    path = tmp_path / "directory.json"
    path.write_bytes(DEMO_DIRECTORY.read_bytes())
    return path


@pytest.fixture(params=["file", "portal"])
def live(request: pytest.FixtureRequest, make_stack: Callable[..., Stack], directory_file: Path) -> Iterator[Stack]:
    """The service on the directory file, or on the portal adapter serving that file. The portal's positive cache
    is the default (the exchange must see past it); "not found" is not cached, so a coworker added is minted for
    at once, as the file backend's ``reload()`` allows."""
    if request.param == "file":
        yield make_stack(directory_file=str(directory_file))
        return
    with serving(create_app(FileSource(directory_file))) as url:
        yield make_stack(directory_file=None, directory_url=url, directory_negative_cache_s=0)


@pytest.fixture
def client(live: Stack) -> Iterator[TestClient[Any]]:
    with live.client() as test_client:
        yield test_client


def change(client: TestClient[Any], path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Replace the directory file atomically, as a deploy tool would; the file backend is made to read it now (as
    SIGHUP does; left alone it reads a changed file within a second), the adapter reads it at its next request."""
    data = json.loads(path.read_text())
    edit(data)
    staged = path.with_suffix(".new")
    staged.write_text(json.dumps(data))
    os.replace(staged, path)
    directory = client.app.state.services.authority.directory
    if isinstance(directory, FileDirectory):
        directory.reload()
    else:
        assert isinstance(directory, HttpDirectory)


def audited_rules(stack: Stack) -> list[str]:
    """The rule of the one refusal a test expects on the audit stream."""
    return [e["rule"] for e in audit_events(stack, lambda e: "rule" in e, at_least=1)]


def mint(client: TestClient[Any], stack: Stack, coworker: int, *, role: str = "operator", sub: str = "7",
         location: str = "1", **claims: Any) -> Any:  # fmt: skip
    bearer = stack.bearer(role, sub, location=location, claims=claims or None)
    if role == "team-admin":
        return client.get(team(coworker), headers=bearer)
    return client.get(STAFF, params={"coworkerId": coworker}, headers=bearer)


# --- the rules, pure ------------------------------------------------------------------------------------------

OPEN = LocationEntry(id="1", impersonation=True)


def coworker(id: int, *teams: tuple[str, str], impersonable: bool = True, staff: bool = False) -> CoworkerEntry:
    memberships = tuple(Membership(id=t, role=r) for t, r in teams)  # type: ignore[arg-type]
    return CoworkerEntry(id=id, impersonable=impersonable, staff=staff, teams=memberships)


@pytest.mark.parametrize(
    ("place", "target", "admin", "rule"),
    [
        (None, coworker(42), None, "location-unknown"),
        (LocationEntry(id="1", impersonation=False), coworker(42), None, "impersonation-disabled"),
        (OPEN, None, None, "coworker-unknown"),
        (OPEN, coworker(42, staff=True), None, "coworker-is-staff"),
        (OPEN, coworker(42, impersonable=False), None, "coworker-not-impersonable"),
        (OPEN, coworker(42), None, None),
    ],
)
def test_staff_rules(place: Any, target: Any, admin: Any, rule: str | None) -> None:
    assert broken_rule(place, target) == rule


@pytest.mark.parametrize(
    ("target", "admin", "rule"),
    [
        (coworker(5, ("7", "admin")), coworker(5, ("7", "admin")), "self"),
        (coworker(42, ("7", "member")), None, "admin-unknown"),
        (coworker(42, ("8", "member")), coworker(5, ("7", "admin")), "not-administered"),
        (coworker(44, ("7", "admin")), coworker(5, ("7", "admin")), "not-administered"),  # another admin of it
        (coworker(42, ("7", "member")), coworker(5, ("7", "member")), "not-administered"),  # a fellow member
        (coworker(42, ("7", "member"), staff=True), coworker(5, ("7", "admin")), "coworker-is-staff"),
        (coworker(42, ("7", "member"), impersonable=False), coworker(5, ("7", "admin")), "coworker-not-impersonable"),
        (coworker(42, ("7", "member")), coworker(5, ("8", "member"), ("7", "admin")), None),
    ],
)
def test_team_admin_rules(target: CoworkerEntry, admin: CoworkerEntry | None, rule: str | None) -> None:
    assert broken_rule(OPEN, target, admin_id=5, admin=admin) == rule


# --- at mint --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [
        (42, "1", 200, None, None),
        (60, "1", 403, "coworker-not-impersonable", "coworker-not-impersonable"),
        (70, "1", 403, "coworker-is-staff", "coworker-is-staff"),
        (300, "3", 403, "impersonation-disabled", "impersonation-disabled"),
        (42, "9", 404, "coworker-not-found", "location-unknown"),
        (200, "1", 404, "coworker-not-found", "coworker-unknown"),  # staff only in their own location
    ],
)
def test_staff_mint_policy(client: TestClient[Any], live: Stack, case: tuple[int, str, int, str | None, str | None]
                           ) -> None:  # fmt: skip
    coworker_id, location, status, code, rule = case  # coworker, caller's location, status, code, audited rule
    response = mint(client, live, coworker_id, location=location)
    if code is None:
        assert response.status_code == status, response.text
        return
    assert_problem(response, status, code)
    assert audited_rules(live) == [rule]


@pytest.mark.parametrize(
    ("admin", "coworker_id", "rule"),
    [
        ("5", 5, "self"),
        ("5", 44, "not-administered"),  # another admin of team 7
        ("5", 99, "not-administered"),  # a member of team 8, which 5 does not administer
        ("5", 60, "coworker-not-impersonable"),
        ("5", 70, "coworker-is-staff"),
        ("5", 200, "coworker-unknown"),  # in another location
        ("43", 42, "not-administered"),  # a fellow member administers nothing
    ],
)
def test_team_admin_gets_one_404_for_every_rule_and_the_audit_keeps_which(
    client: TestClient[Any], live: Stack, admin: str, coworker_id: int, rule: str
) -> None:
    response = mint(client, live, coworker_id, role="team-admin", sub=admin)
    body = assert_problem(response, 404, "coworker-not-found")
    assert body["detail"] == f"no coworker {coworker_id} in a team you administer"  # nothing tells them apart
    assert audited_rules(live) == [rule]


def test_team_admin_in_a_switched_off_location_is_told_so(client: TestClient[Any], live: Stack) -> None:
    assert_problem(mint(client, live, 301, role="team-admin", sub="300", location="3"), 403, "impersonation-disabled")


def test_team_admin_of_another_team_mints_for_its_member(client: TestClient[Any], live: Stack) -> None:
    assert mint(client, live, 99, role="team-admin", sub="42").status_code == 200  # 42 administers team 8


def test_a_changed_directory_file_is_read_at_the_next_mint(
    client: TestClient[Any], live: Stack, directory_file: Path
) -> None:
    assert mint(client, live, 500).status_code == 404
    change(client, directory_file, lambda d: d["locations"]["1"]["coworkers"].append(500))
    assert mint(client, live, 500).status_code == 200


# --- again at exchange ----------------------------------------------------------------------------------------


def _restore(data: dict[str, Any]) -> None:
    data.clear()
    data.update(json.loads(DEMO_DIRECTORY.read_text()))


def _set(where: dict[str, Any], **values: Any) -> None:
    where.update(values)


def _flag(coworker_id: int, **flags: bool) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        place = data["locations"]["1"]
        place["coworkers"] = [c for c in place["coworkers"] if c != coworker_id] + [{"id": coworker_id, **flags}]

    return edit


def _drop_from_team(coworker_id: int, role: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["locations"]["1"]["teams"]["7"][role].remove(coworker_id)

    return edit


@pytest.mark.parametrize(
    ("minter", "case"),
    [
        ("operator", (_flag(43, impersonable=False), "coworker-not-impersonable")),
        ("operator", (_flag(43, staff=True), "coworker-is-staff")),
        ("operator", (lambda d: _set(d["locations"]["1"], impersonation=False), "impersonation-disabled")),
        ("operator", (lambda d: d["locations"]["1"]["coworkers"].remove(43), "coworker-unknown")),
        ("operator", (lambda d: d["locations"].pop("1"), "location-unknown")),
        ("team-admin", (_drop_from_team(5, "admins"), "not-administered")),  # the admin was demoted
        ("team-admin", (_drop_from_team(43, "members"), "not-administered")),  # the member left the team
        ("team-admin", (lambda d: d["locations"]["1"]["coworkers"].remove(5), "admin-unknown")),
    ],
)
def test_exchange_asks_the_policy_again_and_spends_a_withdrawn_token(
    client: TestClient[Any], live: Stack, directory_file: Path, minter: str, case: tuple[Callable[..., None], str]
) -> None:
    edit, rule = case  # the directory's change between mint and exchange, and the rule it breaks
    minted = mint(client, live, 43, role=minter, sub="5" if minter == "team-admin" else "7")
    assert minted.status_code == 200, minted.text
    change(client, directory_file, edit)
    refused = client.post(EXCHANGE, json={"token": minted.json()["token"]})
    body = assert_problem(refused, 401, "impersonation-withdrawn")
    assert "no longer allowed" in body["detail"]
    assert audited_rules(live) == [rule]
    # no session was opened: nothing on the trail, so no listing shows it and no bulk revocation finds it
    sid = decode_unverified(minted.json()["token"])["jti"]
    with direct_redis(live) as direct:
        assert not direct.exists(f"{live.settings.redis_prefix}trail:{sid}")
    # spent: put back as it was, the token still opens nothing
    change(client, directory_file, _restore)
    assert_problem(client.post(EXCHANGE, json={"token": minted.json()["token"]}), 401, "token-replayed")


def test_an_unchanged_directory_lets_the_exchange_through(client: TestClient[Any], live: Stack) -> None:
    minted = mint(client, live, 43, role="team-admin", sub="5")
    assert client.post(EXCHANGE, json={"token": minted.json()["token"]}).status_code == 200


# --- step-up of the impersonator's own sign-in (RFC 9470) -----------------------------------------------------


@pytest.fixture
def strict(make_stack: Callable[..., Stack], tmp_path: Path) -> Stack:
    issuer = msgspec.structs.replace(
        demo.trusted_demo_issuer(tmp_path / "keys"), max_auth_age_s=300, acr_values=["mfa", "phr"], amr_values=["otp"]
    )
    return make_stack(trusted_issuers=[issuer])


@pytest.mark.parametrize(
    ("claims", "said"),
    [
        ({}, "no auth_time"),
        ({"auth_time": -1000, "acr": "mfa", "amr": ["otp"]}, "signed in 1"),  # auth_time relative, below
        ({"auth_time": 0, "acr": "pwd", "amr": ["otp"]}, "needs acr mfa or phr"),
        ({"auth_time": 0, "acr": "mfa", "amr": ["pwd"]}, "by otp"),
    ],
    ids=["no-auth-time", "too-old", "weak-acr", "no-amr"],
)
def test_step_up_is_asked_for_with_the_rfc_9470_challenge(strict: Stack, claims: dict[str, Any], said: str) -> None:
    if "auth_time" in claims:
        claims = {**claims, "auth_time": int(time.time()) + claims["auth_time"]}
    with strict.client() as client:
        for role, sub in (("operator", "7"), ("team-admin", "5")):
            response = mint(client, strict, 43, role=role, sub=sub, **claims)
            body = assert_problem(response, 401, "insufficient-user-authentication")
            assert said in body["detail"]
            challenge = response.headers["www-authenticate"]
            assert challenge.startswith('Bearer error="insufficient_user_authentication"')
            assert 'max_age="300"' in challenge
            assert 'acr_values="mfa phr"' in challenge


def test_a_satisfied_step_up_is_carried_in_act_of_both_tokens(strict: Stack) -> None:
    signed_in = int(time.time()) - 10
    with strict.client() as client:
        minted = mint(client, strict, 43, auth_time=signed_in, acr="phr", amr=["pwd", "otp"])
        assert minted.status_code == 200, minted.text
        act = decode_unverified(minted.json()["token"])["act"]
        assert (act["auth_time"], act["acr"], act["amr"]) == (signed_in, "phr", ["pwd", "otp"])
        session = client.post(EXCHANGE, json={"token": minted.json()["token"]}).json()["access_token"]
        assert jwt.decode(session, options={"verify_signature": False})["act"] == act
