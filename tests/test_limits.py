"""Mint rate limits: per caller and per location, in Redis, so they hold across replicas."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Stack
from tests.test_api import EXCHANGE, STAFF, assert_problem


def test_a_caller_over_its_rate_gets_429_with_retry_after(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(mint_rate_per_actor=3, mint_rate_window_s=60)
    operator = stack.bearer("operator", "7")
    with stack.client() as client:
        tokens = [client.get(STAFF, params={"coworkerId": 42}, headers=operator) for _ in range(3)]
        assert [t.status_code for t in tokens] == [200, 200, 200]
        refused = client.get(STAFF, params={"coworkerId": 42}, headers=operator)
        assert_problem(refused, 429, "rate-limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        # another caller is not slowed down, and tokens already minted still work
        assert client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "8")).status_code == 200
        assert client.post(EXCHANGE, json={"token": tokens[0].json()["token"]}).status_code == 200


def test_failed_lookups_count_too(make_stack: Callable[..., Stack]) -> None:
    """A phished team-admin account probing ids gets slowed down as much as one that succeeds."""
    stack = make_stack(mint_rate_per_actor=2)
    team_admin = stack.bearer("team-admin", "5")
    with stack.client() as client:
        for coworker in (1000, 1001):
            assert_problem(client.get(f"/api/public/coworkers/{coworker}/impersonate", headers=team_admin), 404,
                           "coworker-not-found")  # fmt: skip
        assert_problem(client.get("/api/public/coworkers/43/impersonate", headers=team_admin), 429, "rate-limited")


def test_a_location_has_its_own_ceiling(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(mint_rate_per_actor=100, mint_rate_per_location=4)
    with stack.client() as client:
        statuses = [
            client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", str(n))).status_code
            for n in range(5)
        ]
        assert statuses == [200, 200, 200, 200, 429]
        other_location = stack.bearer("operator", "1", location="2")
        assert client.get(STAFF, params={"coworkerId": 200}, headers=other_location).status_code == 200


def test_the_limit_holds_across_two_replicas(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(mint_rate_per_actor=4)
    operator = stack.bearer("operator", "7")
    with stack.client() as one, stack.client() as two:
        statuses = [c.get(STAFF, params={"coworkerId": 42}, headers=operator).status_code for c in (one, two) * 3]
    assert statuses == [200, 200, 200, 200, 429, 429]


def test_unauthenticated_requests_do_not_spend_a_callers_budget(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(mint_rate_per_actor=1)
    with stack.client() as client:
        for _ in range(5):
            assert client.get(STAFF, params={"coworkerId": 42}).status_code == 401
        assert client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7")).status_code == 200
