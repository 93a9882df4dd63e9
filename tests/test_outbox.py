"""The outbox: a state change's audit entry and security events are on their streams when its answer is, written
by the change's own script, chosen by its outcome; nothing waits for a background flush."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from redis.crc import key_slot

from authority.events.outbox import outbox_stream
from authority.events.set import KEY_RETIRED, SESSION_ENDED, SESSION_REVOKED, SESSION_STARTED, TOKEN_REPLAYED
from tests.helpers import END_CURRENT, EXCHANGE, STAFF, Stack, authority_of, direct_redis, in_app, revoke

NOBODY = [{"url": "http://127.0.0.1:9/events", "audience": "portal"}]  # configured, never reached


def streams(stack: Stack) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit entries and the outbox's events, as they are now (no flush, no wait)."""
    prefix = stack.settings.redis_prefix
    with direct_redis(stack) as direct:
        audit = cast(list[tuple[bytes, dict[bytes, bytes]]], direct.xrange(f"{prefix}audit"))
        events = cast(list[tuple[bytes, dict[bytes, bytes]]], direct.xrange(outbox_stream(f"{prefix}audit")))
    return [json.loads(f[b"event"]) for _, f in audit], [json.loads(f[b"event"]) for _, f in events]


def test_the_outbox_shares_the_audit_streams_cluster_slot() -> None:
    """So a Cluster writes a change's audit entry and events together, in one script."""
    for prefix in ("authority:", "t0123456789ab:", "a.b-c_d:"):
        assert key_slot(outbox_stream(f"{prefix}audit").encode()) == key_slot(f"{prefix}audit".encode())


def test_each_state_change_writes_its_entry_and_events_before_it_answers(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(event_receivers=NOBODY)
    staff = stack.bearer("operator", "7")
    with stack.client() as client:
        token = client.get(STAFF, params={"coworkerId": 42, "reason": "support call"}, headers=staff).json()["token"]
        audit, events = streams(stack)
        assert [e["event"] for e in audit if e["event"] != "key"] == ["mint"]
        assert events == []

        sid = client.post(EXCHANGE, json={"token": token}).json()["session_id"]
        audit, events = streams(stack)
        assert (audit[-1]["event"], audit[-1]["sid"]) == ("exchange", sid)
        assert [(e["type"], e["session"], e.get("reason")) for e in events] == [(SESSION_STARTED, sid, "support call")]

        replayed = client.post(EXCHANGE, json={"token": token}, headers={"X-Request-ID": "the-replay"})
        assert replayed.json()["type"] == "urn:authority:problem:token-replayed"
        audit, events = streams(stack)
        replay = [e for e in audit if e["outcome"] == "token-replayed"]
        assert len(replay) == 1  # written by the replay's own script, not again by the refusal hook
        assert (replay[0]["revoked"], replay[0]["request_id"], replay[0]["status"]) == ("now", "the-replay", 401)
        assert [(e["type"], e["txn"]) for e in events[1:]] == [
            (TOKEN_REPLAYED, "the-replay"),
            (SESSION_REVOKED, "the-replay"),
        ]
        assert events[2]["initiator"] == "policy"

        client.post(EXCHANGE, json={"token": token})  # a replay of a revoked session: told, nothing revoked
        _, events = streams(stack)
        assert [(e["type"], e.get("revoked")) for e in events[3:]] == [(TOKEN_REPLAYED, False)]


def test_ending_and_revoking_are_announced_once(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(event_receivers=NOBODY)
    staff = stack.bearer("operator", "7")
    with stack.client() as client:
        grants = []
        for _ in range(2):
            token = client.get(STAFF, params={"coworkerId": 42}, headers=staff).json()["token"]
            grants.append(client.post(EXCHANGE, json={"token": token}).json())
        own = {"Authorization": f"Bearer {grants[0]['access_token']}"}
        assert client.post(END_CURRENT, headers=own).status_code == 200
        assert client.post(revoke(grants[1]["session_id"]), headers=staff).status_code == 200
        assert client.post(revoke(grants[1]["session_id"]), headers=staff).status_code == 200  # again: no event
        audit, events = streams(stack)
    closing = [(e["type"], e["session"], e["initiator"]) for e in events if e["type"] != SESSION_STARTED]
    assert closing == [
        (SESSION_ENDED, grants[0]["session_id"], "user"),
        (SESSION_REVOKED, grants[1]["session_id"], "admin"),
    ]
    assert [e["outcome"] for e in audit if e["event"] == "revocation"] == ["ended", "revoked", "revoked"]


def test_without_receivers_no_event_is_written(stack: Stack) -> None:
    with stack.client() as client:
        token = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7")).json()["token"]
        client.post(EXCHANGE, json={"token": token})
        audit, events = streams(stack)
    assert [e["event"] for e in audit if e["event"] != "key"] == ["mint", "exchange"]
    assert events == []


def test_an_emergency_retire_announces_the_key(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(event_receivers=NOBODY, key_store="redis")
    with stack.client() as client:
        keys = authority_of(client).keys
        kid = keys.keyring.keys[0].kid
        in_app(client, lambda: keys.retire(kid))
        audit, events = streams(stack)
    assert [e["kid"] for e in audit if (e["event"], e["outcome"]) == ("key", "revoked")] == [kid]
    assert [(e["type"], e["kid"]) for e in events] == [(KEY_RETIRED, kid)]
