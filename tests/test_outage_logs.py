"""A Redis outage is a few log lines, not one per failed request: logged when it starts, summarised while it
lasts, and once when it ends (with how many failures and for how long)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import pytest

from authority.embedded import EmbeddedRedis
from authority.logs import JsonFormatter
from authority.outages import OutageLog
from tests.helpers import READYZ, STAFF, Clock, Stack, assert_problem, collected


def outage_lines(records: list[logging.LogRecord]) -> list[tuple[str, str, int, int]]:
    """(phase, cause, count, total) of each outage line: extra fields on the record, which the JSON line carries."""
    lines = [vars(r) for r in records if hasattr(r, "outage")]
    return [(line["outage"], line["cause"], line["count"], line["total"]) for line in lines]


def duration_s(record: logging.LogRecord) -> float:
    value: float = vars(record)["duration_s"]
    return value


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def outages(clock: Clock) -> Iterator[tuple[OutageLog, list[logging.LogRecord]]]:
    logger = logging.getLogger("test.outages")
    logger.setLevel(logging.INFO)
    with collected("test.outages") as records:
        yield OutageLog(logger, interval_s=10, quiet_s=1, clock=clock), records


def test_an_outage_is_logged_at_start_once_per_interval_and_at_recovery(
    outages: tuple[OutageLog, list[logging.LogRecord]], clock: Clock
) -> None:
    log, records = outages
    start = clock.now
    log.failed("redis: ConnectionError")
    assert outage_lines(records) == [("started", "redis: ConnectionError", 1, 1)]
    assert records[0].levelno == logging.WARNING

    for _ in range(500):  # within the interval: counted, not logged
        clock.now += 0.01
        log.failed("redis: ConnectionError")
    assert len(records) == 1

    clock.now = start + 10  # an interval after the start line: the next failure writes the summary
    log.failed("redis: ConnectionError")
    assert outage_lines(records)[1:] == [("continuing", "redis: ConnectionError", 501, 502)]
    assert duration_s(records[1]) == 10.0

    for _ in range(3):
        clock.now += 1
        log.failed("redis: ConnectionError")
    assert len(records) == 2  # the next summary waits for the next interval

    clock.now += 1
    log.recovered()
    assert outage_lines(records)[2:] == [("recovered", "redis: ConnectionError", 3, 505)]
    assert duration_s(records[2]) == 13.0  # first failure to last
    assert "505 failures over 13.0 s" in records[2].getMessage()

    log.recovered()
    clock.now += 60
    log.recovered()
    assert len(records) == 3  # recovery is logged once

    log.failed("redis: ConnectionError")  # a new outage starts fresh
    log.failed("redis: ConnectionError")
    clock.now += 1
    log.recovered()
    assert outage_lines(records)[3:] == [
        ("started", "redis: ConnectionError", 1, 1),
        ("recovered", "redis: ConnectionError", 1, 2),
    ]
    assert duration_s(records[-1]) == 0.0


def test_causes_are_logged_separately(outages: tuple[OutageLog, list[logging.LogRecord]], clock: Clock) -> None:
    log, records = outages
    log.failed("redis: ConnectionError")
    log.failed("audit stream: ConnectionError")
    log.failed("redis: ConnectionError")
    log.failed("redis: TimeoutError")
    assert outage_lines(records) == [
        ("started", "redis: ConnectionError", 1, 1),
        ("started", "audit stream: ConnectionError", 1, 1),
        ("started", "redis: TimeoutError", 1, 1),
    ]
    clock.now += 0.5
    log.failed("audit stream: ConnectionError")
    clock.now += 0.6
    log.recovered()  # only the causes quiet for quiet_s are over
    assert outage_lines(records)[3:] == [
        ("recovered", "redis: ConnectionError", 1, 2),
        ("recovered", "redis: TimeoutError", 0, 1),
    ]
    clock.now += 0.5
    log.recovered()
    assert outage_lines(records)[5:] == [("recovered", "audit stream: ConnectionError", 1, 2)]


def test_a_partial_outage_is_one_outage_not_a_start_and_end_per_failure(
    outages: tuple[OutageLog, list[logging.LogRecord]], clock: Clock
) -> None:
    """Failures mixed with successes (one Cluster shard down, a full pool): successes within ``quiet_s`` of a
    failure do not end it, so it costs one line per interval, whatever the traffic."""
    log, records = outages
    for _ in range(1000):
        log.failed("redis: ConnectionError")
        clock.now += 0.05
        log.recovered()
        clock.now += 0.05
    assert [line[0] for line in outage_lines(records)] == ["started", *["continuing"] * 9]


def test_the_json_line_carries_the_outage_fields(
    outages: tuple[OutageLog, list[logging.LogRecord]], clock: Clock
) -> None:
    log, records = outages
    log.failed("redis: ConnectionError")
    clock.now += 2.5
    log.failed("redis: ConnectionError")
    log.recovered()
    clock.now += 1
    log.recovered()
    line = json.loads(JsonFormatter().format(records[-1]))
    assert line["level"] == "info"
    assert (line["outage"], line["cause"], line["count"], line["total"], line["duration_s"]) == (
        "recovered", "redis: ConnectionError", 1, 2, 2.5,
    )  # fmt: skip
    assert line["message"] == "redis: ConnectionError: recovered after 2 failures over 2.5 s"


def test_a_redis_outage_logs_a_few_lines_not_one_per_request(
    private_redis: EmbeddedRedis, make_stack: Callable[..., Stack]
) -> None:
    stack = make_stack(redis_url=private_redis.url, mint_rate_per_actor=1000, mint_rate_per_location=1000)
    operator = stack.bearer("operator", "7")
    requests = 200
    with stack.client() as client, collected("authority") as records:
        assert client.get(STAFF, params={"coworkerId": 42}, headers=operator).status_code == 200
        private_redis.stop()
        for _ in range(requests):
            assert_problem(client.get(STAFF, params={"coworkerId": 42}, headers=operator), 503, "unavailable")
        during = list(records)
        # a start line per cause (the request path, the audit writer), once each from the key rounds and the key
        # announcements listener when they fail in this window; not 200
        assert len(during) <= 4, [r.getMessage() for r in during]
        started = [line for line in outage_lines(during) if line[0] == "started"]
        causes = sorted(cause for _, cause, _, _ in started)
        assert "redis: ConnectionError" in causes
        assert len(set(causes)) == len(causes)  # each cause once

        private_redis.start()
        deadline = time.monotonic() + 15  # the end is logged at the first success quiet_s (1 s) after a failure
        while sorted(line[1] for line in outage_lines(records[len(during) :]) if line[0] == "recovered") != causes:
            assert time.monotonic() < deadline, [r.getMessage() for r in records]
            assert client.get(STAFF, params={"coworkerId": 42}, headers=operator).status_code == 200
            time.sleep(0.2)
        ended = [line for line in outage_lines(records[len(during) :]) if line[0] == "recovered"]

    assert ("recovered", "redis: ConnectionError", requests - 1, requests) in ended  # all counted, none logged alone


def test_an_outage_lasts_from_its_first_failed_readiness_check_to_its_last(
    private_redis: EmbeddedRedis, make_stack: Callable[..., Stack]
) -> None:
    """With little traffic, the readiness checks are most of what meets an outage: each is counted into it (under
    the request path's cause), so its end says how long it lasted, not "1 failures over 0.0 s" for the one request
    that happened to come."""
    stack = make_stack(redis_url=private_redis.url)
    operator = stack.bearer("operator", "7")
    with stack.client() as client, collected("authority") as records:
        assert client.get(STAFF, params={"coworkerId": 42}, headers=operator).status_code == 200
        private_redis.stop()
        for check in range(12):
            assert_problem(client.get(READYZ), 503, "unavailable")
            if check == 6:  # one request in the outage
                assert_problem(client.get(STAFF, params={"coworkerId": 42}, headers=operator), 503, "unavailable")
            time.sleep(0.25)
        private_redis.start()
        deadline = time.monotonic() + 15
        end = {"outage": "recovered", "cause": "redis: ConnectionError"}
        while not (ended := [r for r in records if end.items() <= vars(r).items()]):
            assert time.monotonic() < deadline, [r.getMessage() for r in records]
            assert client.get(STAFF, params={"coworkerId": 42}, headers=operator).status_code == 200
            time.sleep(0.2)

    assert outage_lines(ended) == [("recovered", "redis: ConnectionError", 12, 13)]
    assert duration_s(ended[0]) >= 2.5, ended[0].getMessage()  # 11 pauses of 0.25 s between the first and last


def test_failing_key_rounds_are_one_line_naming_the_cause(
    private_redis: EmbeddedRedis, make_stack: Callable[..., Stack]
) -> None:
    """Like the outage log's lines: the cause, no traceback (the README promises one line per outage). The Redis
    key store: with key files, a round with nothing due asks Redis nothing."""
    stack = make_stack(redis_url=private_redis.url, key_store="redis", key_refresh_s=0.2)
    with stack.client(), collected("authority.keys") as records:
        private_redis.stop()
        deadline = time.monotonic() + 10
        while not (failing := [r for r in records if r.getMessage().startswith("key rounds failing")]):
            assert time.monotonic() < deadline, [r.getMessage() for r in records]
            time.sleep(0.05)
        private_redis.start()
        while not any(r.getMessage() == "key rounds succeed again" for r in records):
            assert time.monotonic() < deadline + 10, [r.getMessage() for r in records]
            time.sleep(0.05)

    (line,) = failing
    assert line.getMessage() == "key rounds failing (redis: ConnectionError); retrying every 0.2 s until they succeed"
    assert line.levelno == logging.WARNING
    assert line.exc_info is None
    formatted = JsonFormatter().format(line)
    assert "\n" not in formatted
    assert "Traceback" not in formatted
