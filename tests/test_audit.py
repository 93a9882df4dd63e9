"""The audit trail: one event per request on the capped Redis stream, tied to the request id, never a secret."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from authority.cli import main
from tests.helpers import EXCHANGE, INTROSPECT, PASSPHRASE, STAFF, Stack, direct_redis, revoke


def stream_events(stack: Stack) -> list[bytes]:
    with direct_redis(stack) as direct:
        entries = direct.xrange(f"{stack.settings.redis_prefix}audit")
    return [fields[b"event"] for _, fields in entries]


def test_one_event_per_request_none_lost_no_secrets(stack: Stack) -> None:
    secrets_seen: list[str] = []
    expected: list[tuple[str, str]] = []
    with stack.client() as client:
        n = 0

        def call(method: str, path: str, event: str, outcome: str, **kwargs: Any) -> Any:
            nonlocal n
            n += 1
            headers = {"X-Request-ID": f"req-{n}", **kwargs.pop("headers", {})}
            response = client.request(method, path, headers=headers, **kwargs)
            expected.append((event, outcome))
            return response

        operator, customer = stack.bearer("operator", "7"), stack.bearer("customer", "42")
        secrets_seen += [operator["Authorization"][7:], customer["Authorization"][7:]]
        token = call("GET", STAFF, "mint", "issued", params={"coworkerId": 42}, headers=operator).json()["token"]
        call("GET", STAFF, "refusal", "coworker-not-found", params={"coworkerId": 999}, headers=operator)
        call("GET", STAFF, "refusal", "customer-session", params={"coworkerId": 43}, headers=customer)
        access = call("POST", EXCHANGE, "exchange", "session", json={"token": token}).json()["access_token"]
        call("POST", EXCHANGE, "refusal", "token-replayed", json={"token": token})
        call("POST", EXCHANGE, "refusal", "invalid-token", json={"token": "x.y.z"})
        call("POST", INTROSPECT, "introspection", "inactive", data={"token": access}, headers=operator)
        token2 = call("GET", STAFF, "mint", "issued", params={"coworkerId": 43}, headers=operator).json()["token"]
        session2 = call("POST", EXCHANGE, "exchange", "session", json={"token": token2}).json()
        call("POST", revoke(session2["session_id"]), "revocation", "revoked", headers=operator)
        call("GET", STAFF, "refusal", "unauthenticated", params={"coworkerId": 42})
        call("GET", STAFF, "refusal", "invalid-request", params={"coworkerId": "x"}, headers=operator)
        call("GET", STAFF, "refusal", "headers-too-large", headers={"X-Padding": "p" * 9000})
        secrets_seen += [token, access, token2, session2["access_token"]]
        client.blocking_portal.call(client.app.state.services.audit.flush)

    raw = stream_events(stack)
    events = [json.loads(line) for line in raw]
    requests = [e for e in events if e["event"] != "key"]  # key events belong to no request
    assert [(e["event"], e["outcome"]) for e in requests] == expected
    assert [e["request_id"] for e in requests] == [f"req-{i}" for i in range(1, len(expected) + 1)]
    assert requests[0]["actor"] == "7"
    assert requests[0]["subject"] == "42"
    assert requests[0]["location"] == "1"
    assert requests[3]["sid"] == requests[0]["jti"]
    replay = requests[4]
    assert (replay["jti"], replay["revoked"]) == (requests[0]["jti"], "now")
    assert any(e["event"] == "key" and e["outcome"] == "created" for e in events)
    for line in raw:
        assert b"eyJ" not in line  # no JWT (header or payload) in any field
        assert b"PRIVATE KEY" not in line
        assert not any(secret.encode() in line for secret in secrets_seen)


def test_the_stream_is_capped(make_stack: Any) -> None:
    stack: Stack = make_stack(audit_stream_maxlen=100)
    with stack.client() as client:
        for _ in range(400):
            client.post(EXCHANGE, json={"token": "x.y.z"})
        client.blocking_portal.call(client.app.state.services.audit.flush)
    assert 100 <= len(stream_events(stack)) < 400  # MAXLEN ~: trimmed in whole nodes, never unbounded


def test_audit_tail_prints_the_newest_events(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with stack.client() as client:
        for n in range(3):
            client.post(EXCHANGE, json={"token": "x.y.z"}, headers={"X-Request-ID": f"tail-{n}"})
        client.blocking_portal.call(client.app.state.services.audit.flush)
    monkeypatch.setenv("AUTHORITY_REDIS_URL", str(stack.settings.redis_url))
    monkeypatch.setenv("AUTHORITY_REDIS_PREFIX", stack.settings.redis_prefix)
    monkeypatch.setenv("AUTHORITY_KEY_PASSPHRASE", PASSPHRASE)
    assert main(["audit", "tail", "-n", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["request_id"] for e in lines] == ["tail-1", "tail-2"]


def test_audit_tail_follow_keeps_following_a_quiet_stream(stack: Stack) -> None:
    """Past many Redis timeouts of silence, ``--follow`` is still there, and prints what comes, with a UTC time."""
    env = {
        **os.environ,
        "AUTHORITY_REDIS_URL": str(stack.settings.redis_url),
        "AUTHORITY_REDIS_PREFIX": stack.settings.redis_prefix,
        "AUTHORITY_REDIS_TIMEOUT_S": "0.2",
    }
    command = [sys.executable, "-m", "authority.cli", "audit", "tail", "-f"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(2)  # ten Redis timeouts with nothing to read
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        event = {"ts": 1_800_000_000.5, "event": "mint", "outcome": "issued", "request_id": "followed"}
        with direct_redis(stack) as redis:
            redis.xadd(f"{stack.settings.redis_prefix}audit", {"event": json.dumps(event)})
        assert process.stdout is not None
        line = json.loads(process.stdout.readline())  # the test's timeout bounds this read
        assert (line["request_id"], line["time"]) == ("followed", "2027-01-15T08:00:00.500Z")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_follow_from_now_and_an_interrupt_end_quietly(stack: Stack) -> None:
    """``-n 0 --follow`` prints only what comes from now on; Ctrl-C ends it with status 130 and no traceback."""
    with direct_redis(stack) as redis:
        old = {"ts": 1_800_000_000.0, "event": "mint", "outcome": "issued", "request_id": "before"}
        redis.xadd(f"{stack.settings.redis_prefix}audit", {"event": json.dumps(old)})
    env = {
        **os.environ,
        "AUTHORITY_REDIS_URL": str(stack.settings.redis_url),
        "AUTHORITY_REDIS_PREFIX": stack.settings.redis_prefix,
    }
    # As from a terminal: SIGINT raises KeyboardInterrupt (a process started in the background inherits it ignored)
    interactive = "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    interactive += "from authority.cli import main; sys.exit(main(sys.argv[1:]))"
    command = [sys.executable, "-c", interactive, "audit", "tail", "-n", "0", "-f"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        printed: list[str] = []
        reader = threading.Thread(target=lambda: printed.append(process.stdout.readline() if process.stdout else ""))
        reader.start()
        with direct_redis(stack) as redis:
            while reader.is_alive():  # new events until the tail, started meanwhile, prints one
                redis.xadd(f"{stack.settings.redis_prefix}audit", {"event": json.dumps({**old, "request_id": "after"})})
                reader.join(0.2)
        assert json.loads(printed[0])["request_id"] == "after"  # "before" was not printed
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=10) == 130
        assert "Traceback" not in (process.stderr.read() if process.stderr else "")
    finally:
        process.kill()
        process.wait(timeout=10)
