"""Redis lost means refuse, never accept: 503 while it is down, and a token minted before the loss is dead."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from authority.embedded import EmbeddedRedis, free_port
from tests.helpers import EXCHANGE, HEALTHZ, READYZ, STAFF, Stack, assert_problem, audit_events


def test_redis_down_is_503_and_restart_refuses_old_tokens(
    private_redis: EmbeddedRedis, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(redis_url=private_redis.url)
    operator = stack.bearer("operator", "7")
    with stack.client() as client:
        before = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]

        private_redis.stop()
        assert_problem(client.get(STAFF, params={"coworkerId": 43}, headers=operator), 503, "unavailable")
        down = client.post(EXCHANGE, json={"token": before})
        assert_problem(down, 503, "unavailable")
        assert down.headers["retry-after"] == "1"
        assert_problem(client.get(READYZ), 503, "unavailable")
        assert client.get(HEALTHZ).status_code == 200  # alive, just not ready

        private_redis.start()
        assert_problem(client.post(EXCHANGE, json={"token": before}), 401, "token-not-issued")
        after = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]
        assert client.post(EXCHANGE, json={"token": after}).status_code == 200
        assert client.get(READYZ).status_code == 200


def test_readiness_checks_failing_in_an_outage_are_not_audited(
    private_redis: EmbeddedRedis, make_stack: Callable[..., Stack]
) -> None:
    """A probe is not a user's request: the load balancer's checks of every replica, each a 503 while Redis is
    down, are no audit entries (the outage log counts them); a user's request refused meanwhile is one."""
    stack = make_stack(redis_url=private_redis.url)
    operator = stack.bearer("operator", "7")
    with stack.client() as client:
        assert client.get(READYZ).status_code == 200
        private_redis.stop()
        for _ in range(5):
            assert_problem(client.get(READYZ), 503, "unavailable")
        assert_problem(client.get(STAFF, params={"coworkerId": 42}, headers=operator), 503, "unavailable")
        private_redis.start()
        # queued in order and written in one batch once Redis is back: a probe's entry would come before the mint's
        refusals = audit_events(stack, lambda event: event["event"] == "refusal", at_least=1)

    assert [(event["path"], event["outcome"]) for event in refusals] == [(STAFF, "unavailable")]


def test_with_min_replicas_an_unreplicated_exchange_hands_nothing_out(
    private_redis: EmbeddedRedis, make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """With AUTHORITY_REDIS_MIN_REPLICAS, an exchange that no replica confirmed is a 503 with no session, so a
    failover to a replica that never saw it can at most hand out the one session nobody received."""
    # a replica starved of CPU on a busy machine can take far longer than a production deadline to acknowledge
    stack = make_stack(
        redis_url=private_redis.url, redis_min_replicas=1, redis_replica_timeout_ms=3000, redis_timeout_s=5
    )
    operator = stack.bearer("operator", "7")
    with stack.client() as client:
        alone = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]
        assert_problem(client.post(EXCHANGE, json={"token": alone}), 503, "unavailable")

        replica_args = ["--replicaof", "127.0.0.1", str(private_redis.port)]
        with EmbeddedRedis(tmp_path / "replica", persist=False, extra=replica_args):
            with redis.Redis(port=private_redis.port) as primary:  # the primary's view is the one the script reads
                for _ in range(200):
                    if primary.info("replication").get("slave0", {}).get("state") == "online":
                        break
                    time.sleep(0.05)
            token = client.get(STAFF, params={"coworkerId": 43}, headers=operator).json()["token"]
            exchanged = client.post(EXCHANGE, json={"token": token})
            assert exchanged.status_code == 200, exchanged.text


def test_with_redis_unreachable_at_start_readiness_and_mint_name_redis(make_stack: Callable[..., Stack]) -> None:
    """The service starts (not ready) and says why: Redis, at its URL, without the password in it."""
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    stack = make_stack(redis_url=url, key_store="redis")
    with stack.client() as client:
        readiness = client.get(READYZ)
        assert_problem(readiness, 503, "unavailable")
        minted = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
        assert_problem(minted, 503, "unavailable")
        for answer in (readiness, minted):
            assert "Redis at redis://127.0.0.1:" in answer.json()["detail"], answer.text
            assert "s3cret" not in answer.text


def fill(server: redis.Redis) -> list[str]:
    """Write to ``server`` until it refuses even a small write (OOM); the keys written. Large values first, then
    smaller ones: a refused large write can leave room for a small one."""
    written: list[str] = []
    for size in (65536, 4096, 256, 16):
        with pytest.raises(redis.exceptions.OutOfMemoryError):  # noqa: PT012 - write until the server refuses
            for _ in range(100_000):
                written.append(f"filler:{len(written)}")
                server.set(written[-1], b"x" * size)
    return written


def test_a_full_redis_under_noeviction_is_503_and_spends_nothing(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """The compose file runs Valkey with ``maxmemory-policy noeviction``: full, it refuses writes (OOM) rather than
    evicting an allowlist entry. The service then answers 503, never 500 and never a token; the token whose exchange
    was refused is still good once memory is freed (the consume script's write was refused before it wrote)."""
    extra = ["--maxmemory", "8mb", "--maxmemory-policy", "noeviction"]
    with EmbeddedRedis(tmp_path / "full", persist=False, extra=extra) as server:
        stack = make_stack(redis_url=server.url)
        operator = stack.bearer("operator", "7")
        with stack.client() as client, redis.Redis(port=server.port) as direct:
            before = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]
            filled = fill(direct)

            minted = client.get(STAFF, params={"coworkerId": 43}, headers=operator)
            assert_problem(minted, 503, "unavailable")
            assert minted.headers["retry-after"] == "1"
            assert_problem(client.post(EXCHANGE, json={"token": before}), 503, "unavailable")
            assert client.get(HEALTHZ).status_code == 200

            direct.delete(*filled)
            assert client.post(EXCHANGE, json={"token": before}).status_code == 200
