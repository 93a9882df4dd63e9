"""Mint rate limits: per caller and per location, in Redis, so they hold across replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import pytest
from redis.asyncio import Redis

from authority.limits import MintLimiter
from authority.refusals import RateLimited, Unavailable
from authority.replay import Allowlist
from tests.helpers import EXCHANGE, STAFF, Stack, assert_problem, team


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
            assert_problem(client.get(team(coworker), headers=team_admin), 404, "coworker-not-found")
        assert_problem(client.get(team(43), headers=team_admin), 429, "rate-limited")


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


def test_issue_counts_and_writes_in_one_call_and_refuses_for_either(redis_url: str) -> None:
    """Over the limit the jti is on the list all the same (the token is never handed out; the entry expires);
    a jti already on the list is refused and left as it was."""
    prefix = f"t{uuid.uuid4().hex[:12]}:"

    async def scenario() -> None:
        redis = Redis.from_url(redis_url)
        limiter = MintLimiter(redis, prefix, per_actor=1, per_location=10, window_s=60)
        allowlist = Allowlist(redis, prefix)

        async def issue(jti: str, actor: str = "7") -> None:
            await allowlist.issue(jti, 90, limiter=limiter, issuer="https://idp.test", actor=actor, location="1")

        try:
            await issue("first")
            with pytest.raises(RateLimited) as refused:
                await issue("second")
            assert str(refused.value) == "mint rate for this caller exceeded (1 per window)"
            assert 1 <= int(refused.value.headers["Retry-After"]) <= 60
            assert await redis.get(f"{prefix}jti:second") == b"issued"
            assert 0 < await redis.ttl(f"{prefix}jti:second") <= 90

            await redis.set(f"{prefix}jti:first", "active:{}", keepttl=True)
            with pytest.raises(Unavailable) as collided:
                await issue("first", actor="8")
            assert str(collided.value) == "jti collision: refusing to issue the same token id twice; try again"
            assert await redis.get(f"{prefix}jti:first") == b"active:{}"
        finally:
            await redis.aclose()

    asyncio.run(scenario())
