"""Accountability: a reason and a ticket on every impersonation that must have them, a way out for the impersonated
session, bulk revocation, the staff's list and the customer's own view, and sessions capped by the impersonator's
own sign-in. Through the real app on a real Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import msgspec
import pytest
from litestar.testing import TestClient

from authority import demo, sessions
from authority.app import create_app
from authority.directory_file import DEMO_DIRECTORY
from tests.helpers import (
    END_CURRENT,
    EXCHANGE,
    INTROSPECT,
    MY_IMPERSONATIONS,
    REVOKE_ALL,
    SESSIONS,
    STAFF,
    Stack,
    assert_problem,
    audit_events,
    decode_unverified,
    direct_redis,
    revoke,
    team,
)
from tests.races import RACING, page_while_inserting, race_a_bulk_revocation

OPERATOR = ("operator", "7")


def mint(client: TestClient[Any], stack: Stack, coworker: int = 42, *, who: tuple[str, str] = OPERATOR,
         location: str = "1", ttl: int = 3600, **params: Any) -> Any:  # fmt: skip
    bearer = stack.bearer(*who, location=location, ttl=ttl)
    if who[0] == "team-admin":
        return client.get(team(coworker), params=params, headers=bearer)
    return client.get(STAFF, params={"coworkerId": coworker, **params}, headers=bearer)


def session(client: TestClient[Any], stack: Stack, coworker: int = 42, **kwargs: Any) -> dict[str, Any]:
    """An exchanged session (its grant) for ``coworker``."""
    minted = mint(client, stack, coworker, **kwargs)
    assert minted.status_code == 200, minted.text
    exchanged = client.post(EXCHANGE, json={"token": minted.json()["token"]})
    assert exchanged.status_code == 200, exchanged.text
    grant: dict[str, Any] = exchanged.json()
    return grant


def active(client: TestClient[Any], stack: Stack, grant: dict[str, Any]) -> bool:
    answer = client.post(INTROSPECT, data={"token": grant["access_token"]}, headers=stack.bearer(*OPERATOR))
    return bool(answer.json()["active"])


def own(grant: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {grant['access_token']}"}


# --- reason and ticket ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"reason": "x" * 201},
        {"reason": "ü" * 201},  # characters are counted, not bytes
        {"reason": ""},
        {"reason": "   "},
        {"reason": "line\nbreak"},
        {"reason": "carriage\rreturn"},
        {"reason": "tab\there"},
        {"reason": "nul\x00"},
        {"reason": "escape\x1b[31mred"},
        {"reason": "delete\x7f"},
        {"reason": "next\x85line"},  # C1 control
        {"reason": "line\u2028separator"},
        {"reason": "paragraph\u2029separator"},
        {"reason": "byte order\ufeffmark"},
        {"reason": "zero\u200bwidth"},  # a format character, invisible in a log
        {"reason": "bidi\u202eevil"},
        {"ticket": "has space"},
        {"ticket": "x" * 65},
        {"ticket": "ümlaut"},
        {"ticket": ""},
    ],
)
def test_a_malformed_reason_or_ticket_is_400(client: TestClient[Any], stack: Stack, params: dict[str, Any]) -> None:
    body = assert_problem(mint(client, stack, **params), 400, "invalid-request")
    assert next(iter(params)) in body["detail"]
    audit_events(stack, lambda e: e["event"] == "refusal", at_least=1)  # the refusal is on the stream, and
    assert not audit_events(stack, lambda e: e["event"] == "mint", at_least=0)  # nothing was minted before it


def test_a_repeated_reason_is_ambiguous(client: TestClient[Any], stack: Stack) -> None:
    response = client.get(
        STAFF + "?coworkerId=42&reason=a&reason=b", headers=stack.bearer(*OPERATOR)
    )  # fmt: skip
    assert_problem(response, 400, "invalid-request")


@pytest.mark.parametrize("query", ["reason=a&reason=b", "ticket=T-1&ticket=T-2", "reason=a&ticket=T-1&ticket=T-1"])
@pytest.mark.parametrize("who", [OPERATOR, ("team-admin", "5")])
def test_a_repeated_reason_or_ticket_is_400_on_both_mint_routes(
    client: TestClient[Any], stack: Stack, query: str, who: tuple[str, str]
) -> None:
    path = f"{STAFF}?coworkerId=43&" if who == OPERATOR else f"{team(43)}?"
    body = assert_problem(client.get(path + query, headers=stack.bearer(*who)), 400, "invalid-request")
    assert query.rsplit("&", 1)[1].split("=", maxsplit=1)[0] in body["detail"]
    assert not audit_events(stack, lambda e: e["event"] == "mint", at_least=0)


@pytest.mark.parametrize(
    "reason",
    [
        "x" * 200,  # the longest
        "é" * 200,  # 200 characters, 400 bytes
        "日本語のお客様から電話 🙂",
        "مساعدة العميل في الفاتورة",  # right to left, with no bidi control in it
        "Kundin bittet um Hilfe: Rechnung fehlt — ☎ zwei Mal",
        "a",
    ],
)
@pytest.mark.parametrize("who", [OPERATOR, ("team-admin", "5")])
def test_a_well_formed_reason_is_accepted_as_is(
    client: TestClient[Any], stack: Stack, reason: str, who: tuple[str, str]
) -> None:
    minted = mint(client, stack, 43, who=who, reason=reason)
    assert minted.status_code == 200, minted.text
    assert decode_unverified(minted.json()["token"])["reason"] == reason


def test_reason_and_ticket_travel_everywhere(client: TestClient[Any], stack: Stack) -> None:
    why: dict[str, Any] = {"reason": "Kundin bittet um Hilfe: Rechnung fehlt — ☎ zwei Mal", "ticket": "SUP-1234/a:b#c"}
    minted = mint(client, stack, **why)
    assert minted.status_code == 200, minted.text
    token = minted.json()["token"]
    claims = decode_unverified(token)
    assert (claims["reason"], claims["ticket"]) == (why["reason"], why["ticket"])
    assert "reason" not in claims["act"]  # beside act, not in it
    grant = client.post(EXCHANGE, json={"token": token}).json()
    access = decode_unverified(grant["access_token"])
    assert (access["reason"], access["ticket"]) == (why["reason"], why["ticket"])
    introspected = client.post(INTROSPECT, data={"token": grant["access_token"]}, headers=stack.bearer(*OPERATOR))
    assert (introspected.json()["reason"], introspected.json()["ticket"]) == (why["reason"], why["ticket"])
    assert client.post(revoke(grant["session_id"]), headers=stack.bearer(*OPERATOR)).status_code == 200
    after = client.post(INTROSPECT, data={"token": grant["access_token"]}, headers=stack.bearer(*OPERATOR))
    assert after.json() == {"active": False}  # the answer says nothing of an inactive token; the audit does
    kinds = ("mint", "exchange", "revocation", "introspection")
    session_events = audit_events(stack, lambda e: e["event"] in kinds, at_least=5)
    events = {(e["event"], e["outcome"]): e for e in session_events}
    assert all((e["why"], e["ticket"]) == (why["reason"], why["ticket"]) for e in events.values()), events
    assert set(events) == {
        ("mint", "issued"), ("exchange", "session"), ("revocation", "revoked"),
        ("introspection", "active"), ("introspection", "inactive"),
    }  # fmt: skip
    assert events[("introspection", "inactive")]["reason"] == "revoked"  # the audit's own reason: why inactive


def test_without_a_reason_nothing_says_one(client: TestClient[Any], stack: Stack) -> None:
    grant = session(client, stack)
    assert "reason" not in decode_unverified(grant["access_token"])


@pytest.fixture
def strict(make_stack: Callable[..., Stack], tmp_path: Path) -> Stack:
    directory = json.loads(DEMO_DIRECTORY.read_text())
    directory["locations"]["2"]["require_ticket"] = True  # location 2 asks everyone for a ticket
    path = tmp_path / "directory.json"
    path.write_text(json.dumps(directory))
    return make_stack(require_reason=["staff"], require_ticket=["team-admin"], directory_file=str(path))


def test_settings_and_locations_require_a_reason_or_a_ticket(strict: Stack) -> None:
    with strict.client() as client:
        assert "reason is required" in assert_problem(mint(client, strict), 400, "invalid-request")["detail"]
        assert mint(client, strict, reason="asked by phone").status_code == 200
        team_admin = ("team-admin", "5")
        said = assert_problem(mint(client, strict, 43, who=team_admin), 400, "invalid-request")["detail"]
        assert "ticket is required" in said
        assert mint(client, strict, 43, who=team_admin, ticket="T-1").status_code == 200
        in_two = mint(client, strict, 200, location="2", reason="r")
        assert "ticket is required" in assert_problem(in_two, 400, "invalid-request")["detail"]
        assert mint(client, strict, 200, location="2", reason="r", ticket="T-2").status_code == 200


def test_required_lists_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from authority.settings import SettingsError, load  # noqa: PLC0415

    assert load({"AUTHORITY_REQUIRE_REASON": '["staff", "team-admin"]'}).require_reason == ["staff", "team-admin"]
    with pytest.raises(SettingsError, match="AUTHORITY_REQUIRE_TICKET"):
        load({"AUTHORITY_REQUIRE_TICKET": '["everyone"]'})


# --- ending a session from the inside -------------------------------------------------------------------------


def test_the_impersonated_session_ends_itself_once_and_idempotently(client: TestClient[Any], stack: Stack) -> None:
    grant = session(client, stack)
    ended = client.post(END_CURRENT, headers=own(grant))
    assert ended.status_code == 200, ended.text
    assert ended.json() == {"session_id": grant["session_id"], "ended": True}
    assert not active(client, stack, grant)
    again = client.post(END_CURRENT, headers=own(grant))
    assert again.json() == {"session_id": grant["session_id"], "ended": True}
    endings = audit_events(stack, lambda e: e["event"] == "revocation", at_least=1)
    assert [e["outcome"] for e in endings] == ["ended"]  # audited once


def test_only_that_route_takes_an_impersonated_bearer(client: TestClient[Any], stack: Stack) -> None:
    grant = session(client, stack)
    assert_problem(client.get(STAFF, params={"coworkerId": 43}, headers=own(grant)), 403, "nested-impersonation")
    assert_problem(client.get(SESSIONS, headers=own(grant)), 403, "nested-impersonation")
    assert_problem(client.post(REVOKE_ALL, json={"subject": "42"}, headers=own(grant)), 403, "nested-impersonation")
    assert_problem(client.get(MY_IMPERSONATIONS, headers=own(grant)), 403, "nested-impersonation")
    # and nothing but an impersonated session of ours may call it
    assert_problem(client.post(END_CURRENT, headers=stack.bearer(*OPERATOR)), 403, "forbidden")
    assert_problem(client.post(END_CURRENT, headers=stack.bearer("customer", "42")), 403, "forbidden")
    assert_problem(client.post(END_CURRENT), 401, "unauthenticated")


# --- bulk revocation ------------------------------------------------------------------------------------------


def test_bulk_revocation_by_actor_and_by_customer_in_the_callers_location(
    client: TestClient[Any], stack: Stack
) -> None:
    by_7 = [session(client, stack, 42), session(client, stack, 43)]
    by_8 = session(client, stack, 42, who=("operator", "8"))
    elsewhere = session(client, stack, 200, location="2")  # operator 7 of location 2: not location 1's to revoke
    answer = client.post(REVOKE_ALL, json={"actor": "7"}, headers=stack.bearer("admin", "1"))
    assert answer.json() == {"revoked": 2}
    assert [active(client, stack, g) for g in [*by_7, by_8, elsewhere]] == [False, False, True, True]
    assert client.post(REVOKE_ALL, json={"subject": "42"}, headers=stack.bearer("admin", "1")).json() == {"revoked": 1}
    assert not active(client, stack, by_8)
    assert active(client, stack, elsewhere)
    assert client.post(REVOKE_ALL, json={"actor": "7"}, headers=stack.bearer("admin", "1")).json() == {"revoked": 0}


@pytest.mark.parametrize("body", [{}, {"actor": "7", "subject": "42"}, {"subject": "x"}, {"actor": ""}, {"who": 1}])
def test_bulk_revocation_needs_exactly_one_well_formed_target(
    client: TestClient[Any], stack: Stack, body: dict[str, Any]
) -> None:
    assert_problem(client.post(REVOKE_ALL, json=body, headers=stack.bearer(*OPERATOR)), 400, "invalid-request")


def test_bulk_revocation_is_for_staff(client: TestClient[Any], stack: Stack) -> None:
    team_admin = client.post(REVOKE_ALL, json={"subject": "43"}, headers=stack.bearer("team-admin", "5"))
    assert_problem(team_admin, 401, "customer-session")


def test_a_bulk_revocation_catches_every_session_exchanged_before_it_was_asked(
    make_stack: Callable[..., Stack],
) -> None:
    stack = make_stack(**RACING)
    answered = asyncio.run(race_a_bulk_revocation(stack))
    revocations = audit_events(stack, lambda e: e["event"] == "revocation", at_least=100)
    assert sorted(e["sid"] for e in revocations) == sorted(answered)  # each session audited, once
    assert {e["outcome"] for e in revocations} == {"revoked"}


# --- the staff's list -----------------------------------------------------------------------------------------


def test_staff_list_their_locations_sessions_newest_first_with_filters(client: TestClient[Any], stack: Stack) -> None:
    first = session(client, stack, 42, reason="first")
    second = session(client, stack, 43, who=("operator", "8"))
    third = session(client, stack, 42, ticket="T-3")
    client.post(END_CURRENT, headers=own(second))
    session(client, stack, 200, location="2")  # another location's
    listed = client.get(SESSIONS, headers=stack.bearer("admin", "1")).json()
    assert [i["session_id"] for i in listed["items"]] == [
        third["session_id"],
        second["session_id"],
        first["session_id"],
    ]
    assert "next" not in listed
    item = listed["items"][2]
    assert (item["subject"], item["actor"]["sub"], item["actor"]["role"], item["reason"], item["state"]) == (
        "42", "7", "operator", "first", "active"
    )  # fmt: skip
    assert item["ends"] > item["started"]

    def ids(**query: str) -> list[str]:
        page = client.get(SESSIONS, params=query, headers=stack.bearer("admin", "1"))
        assert page.status_code == 200, page.text
        return [i["session_id"] for i in page.json()["items"]]

    assert ids(actor="8") == [second["session_id"]]
    assert ids(subject="42") == [third["session_id"], first["session_id"]]
    assert ids(state="ended") == [second["session_id"]]
    assert ids(actor="7", subject="43") == []
    assert ids(state="revoked") == []


def test_pages_are_stable_while_sessions_are_added(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(**RACING)
    asyncio.run(page_while_inserting(stack))


def test_filtered_pages_past_the_scan_limit_are_stable_while_sessions_are_added(
    make_stack: Callable[..., Stack],
) -> None:
    """A filter reads at most SCAN_LIMIT index entries per page (4 here, over an index alternating the customer
    kept and another): pages come short, with a cursor to go on from, and still none is repeated or skipped."""
    stack = make_stack(**RACING)
    with patch.object(sessions, "SCAN_LIMIT", 4):
        seen, _, short = asyncio.run(page_while_inserting(stack, query={"actor": "7", "subject": "42"}, existing=20))
    assert len(seen) >= 10
    assert short  # the scan limit was reached: pages came short, and paging went on past them


@pytest.mark.parametrize("cursor", ["nope", "AAAA", "MDAwMDAwMDAwMDAwMDAwMDpzaWQ"[:-1], "MDAwMDAwMDAwMDAwMDpzaWQ"])
def test_a_cursor_not_made_here_is_400(client: TestClient[Any], stack: Stack, cursor: str) -> None:
    response = client.get(SESSIONS, params={"cursor": cursor}, headers=stack.bearer("admin", "1"))
    assert_problem(response, 400, "invalid-request")


def test_lists_are_for_staff_of_the_location(client: TestClient[Any], stack: Stack) -> None:
    session(client, stack, 42)
    assert_problem(client.get(SESSIONS, headers=stack.bearer("team-admin", "5")), 401, "customer-session")
    other = client.get(SESSIONS, headers=stack.bearer("admin", "1", location="2"))
    assert other.json() == {"items": []}


# --- the customer's own view ----------------------------------------------------------------------------------


def test_the_customer_sees_who_impersonated_them_and_how_it_ended(client: TestClient[Any], stack: Stack) -> None:
    first = session(client, stack, 42, reason="billing question", ticket="SUP-1")
    second = session(client, stack, 42, who=("team-admin", "5"))
    client.post(END_CURRENT, headers=own(second))
    session(client, stack, 43)  # someone else's
    mine = client.get(MY_IMPERSONATIONS, headers=stack.bearer("customer", "42"))
    assert mine.status_code == 200, mine.text
    items = mine.json()["items"]
    assert [(i["session_id"], i["actor"]["sub"], i["actor"]["role"], i["state"]) for i in items] == [
        (second["session_id"], "5", "team-admin", "ended"),
        (first["session_id"], "7", "operator", "active"),
    ]
    assert (items[1]["reason"], items[1]["ticket"]) == ("billing question", "SUP-1")


def test_nobody_else_reads_a_customers_list(client: TestClient[Any], stack: Stack) -> None:
    grant = session(client, stack, 42)
    assert client.get(MY_IMPERSONATIONS, headers=stack.bearer("customer", "43")).json() == {"items": []}
    # the same coworker id in another location is another customer
    assert client.get(MY_IMPERSONATIONS, headers=stack.bearer("customer", "42", location="2")).json() == {"items": []}
    assert_problem(client.get(MY_IMPERSONATIONS, headers=stack.bearer(*OPERATOR)), 403, "forbidden")
    assert_problem(client.get(MY_IMPERSONATIONS, headers=own(grant)), 403, "nested-impersonation")


def test_the_customers_view_keeps_sessions_for_the_retention_and_no_longer(
    make_stack: Callable[..., Stack],
) -> None:
    """Retention by time alone, on the service's own clock: far fewer sessions than the per-customer bound."""
    stack = make_stack(trail_retention_s=86_400, trail_per_customer=10)
    now = [time.time()]
    customer = stack.bearer("customer", "42", ttl=10 * 86_400)

    def mine(client: TestClient[Any]) -> list[str]:
        listed = client.get(MY_IMPERSONATIONS, params={"limit": 100}, headers=customer)
        assert listed.status_code == 200, listed.text
        return [i["session_id"] for i in listed.json()["items"]]

    def staffs(client: TestClient[Any]) -> list[str]:
        listed = client.get(SESSIONS, params={"limit": 100}, headers=stack.bearer("admin", "1", ttl=10 * 86_400))
        return [i["session_id"] for i in listed.json()["items"]]

    with TestClient(create_app(stack.settings, clock=lambda: now[0])) as client:
        old = session(client, stack, 42, ttl=10 * 86_400)["session_id"]
        now[0] += 86_400 - 60  # a minute short of the retention: still there, expired as a session
        assert mine(client) == [old]
        assert client.get(MY_IMPERSONATIONS, headers=customer).json()["items"][0]["state"] == "expired"
        now[0] += 120  # a minute past it: gone from both views, with nothing newer to push it out
        assert mine(client) == []
        assert staffs(client) == []
        newer = []
        for _ in range(3):
            now[0] += 1  # one after the other (on a clock standing still they would tie, and sort by id)
            newer.append(session(client, stack, 42, ttl=10 * 86_400)["session_id"])
        assert mine(client) == list(reversed(newer))
        assert staffs(client) == list(reversed(newer))
        with direct_redis(stack) as direct:
            prefix = stack.settings.redis_prefix
            assert direct.zcard(f"{prefix}trail-customer:1:42") == 3  # the old entry trimmed from the index
            assert 0 < direct.ttl(f"{prefix}trail:{newer[0]}") <= 86_400  # and the server forgets it too


def test_the_customers_view_keeps_their_newest_sessions(make_stack: Callable[..., Stack]) -> None:
    """The per-customer bound alone, well within the retention: the staff's list keeps every one."""
    stack = make_stack(trail_per_customer=10, mint_rate_per_actor=10_000, mint_rate_per_location=10_000)
    with stack.client() as client:
        made = [session(client, stack, 42)["session_id"] for _ in range(12)]
        mine = client.get(MY_IMPERSONATIONS, params={"limit": 100}, headers=stack.bearer("customer", "42")).json()
        assert [i["session_id"] for i in mine["items"]] == list(reversed(made))[:10]
        listed = client.get(SESSIONS, params={"limit": 100}, headers=stack.bearer("admin", "1")).json()
        assert [i["session_id"] for i in listed["items"]] == list(reversed(made))


# --- a session never outlives its impersonator's sign-in ------------------------------------------------------


def test_the_session_ends_with_the_minting_bearer(client: TestClient[Any], stack: Stack) -> None:
    grant = session(client, stack, ttl=120)  # the operator's own sign-in ends in two minutes
    access = decode_unverified(grant["access_token"])
    assert access["exp"] - access["iat"] <= 120
    assert grant["expires_in"] <= 120


def test_the_cap_can_be_turned_off_per_issuer(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    issuer = msgspec.structs.replace(demo.trusted_demo_issuer(tmp_path / "keys"), cap_session_to_bearer=False)
    stack = make_stack(trusted_issuers=[issuer])
    with stack.client() as client:
        grant = session(client, stack, ttl=120)
        assert grant["expires_in"] == stack.settings.session_ttl_s


def test_a_bearer_that_expired_before_the_exchange_opens_no_session(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack()
    now = [time.time()]
    with TestClient(create_app(stack.settings, clock=lambda: now[0])) as client:
        token = mint(client, stack, ttl=30).json()["token"]
        now[0] += 45  # the impersonation token (60 s) still valid; the operator's own sign-in is over
        refused = client.post(EXCHANGE, json={"token": token})
        assert "sign-in has expired" in assert_problem(refused, 401, "impersonation-withdrawn")["detail"]


@pytest.fixture
def client(stack: Stack) -> Iterator[TestClient[Any]]:
    with stack.client() as test_client:
        yield test_client
