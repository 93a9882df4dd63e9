"""The directory as the portal's HTTP API: the reference adapter on a real loopback socket (over mutual TLS too,
with a CA and certificates made here), and small misbehaving servers (slow, failing, garbage, endless) written
here, since a portal fails in ways no adapter should copy; through the service, each of them a 503 that writes
nothing to Redis.

Nothing is mocked: ``HttpDirectory`` sends real requests with its real client. Time in the cache tests is a clock
the test moves, so a TTL is checked exactly, whatever the machine's load.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import msgspec
import pytest
import redis
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from schemathesis.specs.openapi.definitions import OPENAPI_31

from authority.directory import CoworkerEntry, LocationEntry, Membership
from authority.directory_file import DEMO_DIRECTORY
from authority.directory_http import HttpDirectory, tls_context
from authority.embedded import free_port
from authority.refusals import Unavailable
from examples.portal_adapter import SCHEMA, FileSource, SqliteSource, create_app
from tests.helpers import (
    EXCHANGE,
    ROOT,
    STAFF,
    Clock,
    Stack,
    assert_problem,
    collected,
    direct_redis,
    serving,
    team,
    wait_until_ready,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
CONTRACT = ROOT / "docs" / "directory-api.yaml"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# --- the reference adapter, served for real --------------------------------------------------------------------


class Counted:
    """A source that counts the lookups the adapter made: each is one request that reached the portal."""

    def __init__(self, source: FileSource | SqliteSource) -> None:
        self.source = source
        self.asked: list[str] = []  # appended from the adapter's worker threads; list.append is atomic

    def location(self, location: str) -> LocationEntry | None:
        self.asked.append(f"location {location}")
        return self.source.location(location)

    def coworker(self, location: str, coworker_id: int) -> CoworkerEntry | None:
        self.asked.append(f"coworker {location} {coworker_id}")
        return self.source.coworker(location, coworker_id)


def write_directory(path: Path, data: dict[str, Any]) -> None:
    """Replace the file as an operator's tooling would: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_text(json.dumps(data))
    os.replace(fresh, path)


@pytest.fixture
def directory_data() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DEMO_DIRECTORY.read_text())
    data["locations"]["Berlin/Mitte é?#"] = {"coworkers": [7]}  # a location is any string: every byte escaped
    return data


@pytest.fixture
def directory_file(tmp_path: Path, directory_data: dict[str, Any]) -> Path:
    path = tmp_path / "directory.json"
    write_directory(path, directory_data)
    return path


@dataclass
class Portal:
    url: str
    source: Counted


@pytest.fixture
def portal(directory_file: Path) -> Iterator[Portal]:
    source = Counted(FileSource(directory_file))
    with serving(create_app(source)) as url:
        yield Portal(url, source)


@asynccontextmanager
async def asking(url: str, **options: Any) -> AsyncIterator[HttpDirectory]:
    directory = HttpDirectory(url, **options)
    try:
        yield directory
    finally:
        await directory.close()


# --- servers that misbehave ------------------------------------------------------------------------------------

Answer = Callable[["RawServer", asyncio.StreamWriter], Awaitable[None]]  # what the server writes to a request


@dataclass
class RawServer:
    url: str
    requests: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    sent: int = 0  # body bytes written so far
    answer: Answer | None = None
    handlers: set[asyncio.Task[None]] = field(default_factory=set)


@asynccontextmanager
async def raw_server(answer: Answer) -> AsyncIterator[RawServer]:
    """An HTTP/1.1 server of a few lines on a loopback socket: each request, whatever it asks, gets ``answer``
    (which ``server.answer`` may change). Its connections are cut at the end, however the test ends."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        state.handlers.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            state.requests += 1
            state.in_flight += 1
            state.most_in_flight = max(state.most_in_flight, state.in_flight)
            try:
                assert state.answer is not None
                await state.answer(state, writer)
            finally:
                state.in_flight -= 1
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:  # by the teardown below: a handler of 3.11's streams must not end cancelled,
            pass  # or its done callback logs the cancellation as an error
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state = RawServer(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", answer=answer)
    try:
        yield state
    finally:
        server.close()
        for task in state.handlers:
            task.cancel()
        await asyncio.gather(*state.handlers, return_exceptions=True)
        await server.wait_closed()


def respond(status: int, body: bytes = b"", **headers: str) -> Answer:
    async def answer(_: RawServer, writer: asyncio.StreamWriter) -> None:
        fields = {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}
        head = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in fields.items())
        writer.write(f"HTTP/1.1 {status} X\r\n{head}Connection: close\r\n\r\n".encode() + body)
        await writer.drain()

    return answer


def respond_json(value: Any) -> Answer:
    return respond(200, json.dumps(value).encode())


async def silent(_: RawServer, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3600)  # never answers; cancelled when the test ends


def endless(length: int | None = None) -> Answer:
    """A 200 whose body never ends (chunked), or says it is ``length`` long: 64 KiB at a time, while read."""

    async def answer(server: RawServer, writer: asyncio.StreamWriter) -> None:
        framing = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n".encode())
        piece = b"[" * 65536
        while length is None or server.sent < length:
            writer.write(b"10000\r\n" + piece + b"\r\n" if length is None else piece)
            await writer.drain()
            server.sent += len(piece)

    return answer


# --- lookups ---------------------------------------------------------------------------------------------------


async def test_lookups_through_the_adapter_answer_what_the_file_says(portal: Portal) -> None:
    async with asking(portal.url) as directory:
        assert await directory.location("1") == LocationEntry(id="1", impersonation=True)
        assert await directory.location("3") == LocationEntry(id="3", impersonation=False)
        assert await directory.coworker("1", 42) == CoworkerEntry(
            id=42, impersonable=True, staff=False, teams=(Membership("7", "member"), Membership("8", "admin"))
        )
        assert await directory.coworker("1", 60) == CoworkerEntry(
            id=60, impersonable=False, staff=False, teams=(Membership("7", "member"),)
        )
        assert await directory.location("Berlin/Mitte é?#") == LocationEntry(id="Berlin/Mitte é?#", impersonation=True)
        assert await directory.coworker("Berlin/Mitte é?#", 7) is not None
        # not found is an answer: None, not a failure
        assert await directory.location("404") is None
        assert await directory.coworker("2", 42) is None  # a coworker of another location
        assert await directory.coworker("1", 4242) is None
        # a location that spells another resource's path is one segment, so not that resource
        assert await directory.location("1/coworkers/42") is None
        assert await directory.location("..") is None
        assert await directory.location("") is None
    assert "location 1/coworkers/42" in portal.source.asked
    assert not any(".." in asked or asked == "location " for asked in portal.source.asked)  # never sent


async def test_the_adapter_serves_sqlite_too(tmp_path: Path) -> None:
    path = tmp_path / "portal.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(SCHEMA)
        db.execute("INSERT INTO locations VALUES ('1', 1), ('3', 0)")
        db.execute("INSERT INTO coworkers (location_id, id, staff) VALUES ('1', 5, 0), ('1', 42, 0), ('1', 70, 1)")
        db.execute("INSERT INTO memberships VALUES ('1', '7', 5, 'admin'), ('1', '7', 42, 'member')")
    with serving(create_app(SqliteSource(path))) as url:
        async with asking(url) as directory:
            assert await directory.location("3") == LocationEntry(id="3", impersonation=False)
            admin, member = await directory.coworker("1", 5), await directory.coworker("1", 42)
            assert admin is not None
            assert member is not None
            assert admin.administers(member)
            assert (await directory.coworker("1", 70)) == CoworkerEntry(id=70, impersonable=True, staff=True, teams=())
            assert await directory.coworker("3", 5) is None
    assert SCHEMA.strip() in (ROOT / "examples" / "portal_adapter" / "README.md").read_text()  # shown as it is


@pytest.mark.parametrize(
    ("body", "expected"),
    [({"id": "1", "impersonation": False, "name": "Mitte", "opens": {"at": 8}}, LocationEntry("1", False))],
)
async def test_fields_the_contract_does_not_name_are_ignored(body: Any, expected: LocationEntry) -> None:
    async with raw_server(respond_json(body)) as server, asking(server.url) as directory:
        assert await directory.location("1") == expected
        coworker = {"id": 42, "impersonable": True, "staff": False, "email": "x@example",
                    "teams": [{"id": "7", "role": "member", "since": 2020}]}  # fmt: skip
        server.answer = respond_json(coworker)
        assert await directory.coworker("1", 42) == CoworkerEntry(42, True, False, (Membership("7", "member"),))


@pytest.mark.parametrize(
    "body",
    [
        {"impersonation": True},  # no id
        {"id": "1"},  # no kill switch: never assumed on
        {"id": 1, "impersonation": True},  # an id of another type
        {"id": "1", "impersonation": "yes"},
        {"id": "2", "impersonation": True},  # another location than asked
        [],
        None,
    ],
    ids=["no-id", "no-impersonation", "int-id", "string-bool", "other-id", "list", "null"],
)
async def test_a_location_outside_the_contract_is_unavailable(body: Any) -> None:
    async with raw_server(respond_json(body)) as server, asking(server.url) as directory:
        with pytest.raises(Unavailable) as refused:
            await directory.location("1")
    assert refused.value.headers == {"Retry-After": "1"}


@pytest.mark.parametrize(
    "changes",
    [{"teams": None}, {"staff": None}, {"impersonable": None}, {"id": 43}, {"id": "42"},
     {"teams": [{"id": "7", "role": "owner"}]}, {"teams": [{"id": 7, "role": "member"}]}, {"teams": [{"id": "7"}]}],
    ids=["no-teams", "no-staff", "no-impersonable", "other-id", "string-id", "unknown-role", "int-team", "no-role"],
)  # fmt: skip
async def test_a_coworker_outside_the_contract_is_unavailable(changes: dict[str, Any]) -> None:
    body = {"id": 42, "impersonable": True, "staff": False, "teams": [], **changes}
    answer = respond_json({k: v for k, v in body.items() if v is not None})
    async with raw_server(answer) as server, asking(server.url) as directory:
        with pytest.raises(Unavailable, match=r"outside its contract|another id"):
            await directory.coworker("1", 42)


# --- a portal that cannot answer -------------------------------------------------------------------------------


async def test_a_portal_that_is_down_is_unavailable_with_retry_after() -> None:
    async with asking(f"http://127.0.0.1:{free_port()}") as directory:  # nothing listens there
        with pytest.raises(Unavailable, match="cannot be reached") as refused:
            await directory.coworker("1", 42)
    assert refused.value.status == 503
    assert refused.value.headers["Retry-After"] == "1"


async def test_a_slow_portal_is_unavailable_after_the_timeout_not_later() -> None:
    async with raw_server(silent) as server, asking(server.url, timeout_s=0.3) as directory:
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"did not answer within 0\.3 s"):
            await directory.location("1")
        elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 1.5, elapsed  # the deadline, plus what a busy machine adds; never the socket's own


@pytest.mark.parametrize(
    ("answer", "cause"),
    [
        (respond(500), "HTTP 500"),
        (respond(502, b"<html>Bad gateway</html>"), "HTTP 502"),
        (respond(503, Retry_After="30"), "HTTP 503"),
        (respond(302, Location="https://elsewhere.example/locations/1"), "HTTP 302"),
        (respond(400), "HTTP 400"),
        (respond(403), "HTTP 403"),
        (respond(200, b"<html>It works!</html>"), "malformed answer"),
        (respond(200, b'{"id": "1", "impersonation": tru'), "malformed answer"),
        (respond(200), "malformed answer"),
        (respond(200, b'{"id":"1","impersonation":true}', Content_Encoding="gzip"), "malformed answer"),
        (respond(200, b"\x00\xff" * 100), "malformed answer"),
    ],
    ids=["500", "502", "503", "redirect", "400", "403", "html", "truncated", "empty", "gzip", "binary"],
)
async def test_a_failing_portal_is_unavailable_and_nothing_is_cached(
    answer: Answer, cause: str, outage_records: list[logging.LogRecord]
) -> None:
    async with raw_server(answer) as server, asking(server.url) as directory:
        for _ in range(2):
            with pytest.raises(Unavailable) as refused:
                await directory.location("1")
            assert refused.value.headers["Retry-After"] == "1"
        assert server.requests == 2  # a failure is never remembered
        server.answer = respond_json({"id": "1", "impersonation": True})
        assert await directory.location("1") == LocationEntry("1", True)
    assert outage_lines(outage_records) == [("started", f"directory: {cause}")]


async def test_an_answer_over_the_cap_is_abandoned_not_read(outage_records: list[logging.LogRecord]) -> None:
    """10 MB announced, or a body that never ends: refused as soon as the cap is passed, long before the deadline."""
    for answer in (endless(length=10 * 1024 * 1024), endless()):
        async with raw_server(answer) as server, asking(server.url, timeout_s=10) as directory:
            started = time.monotonic()
            with pytest.raises(Unavailable, match="MAX_ANSWER_BYTES=65536"):
                await directory.location("1")
            assert time.monotonic() - started < 5  # not the deadline: the body was abandoned
        assert server.sent < 10 * 1024 * 1024
    assert outage_lines(outage_records) == [("started", "directory: oversized answer")] * 2


async def test_an_answer_just_under_the_cap_is_read() -> None:
    padding = "x" * (4096 - len('{"id":"1","impersonation":true,"p":""}'))
    body = f'{{"id":"1","impersonation":true,"p":"{padding}"}}'.encode()
    assert len(body) == 4096
    async with raw_server(respond(200, body)) as server, asking(server.url, max_answer_bytes=4096) as directory:
        assert await directory.location("1") == LocationEntry("1", True)
        server.answer = respond(200, body + b" ")
        directory.cache_s = 0
        with pytest.raises(Unavailable):
            await directory.location("2")


# --- cache and coalescing --------------------------------------------------------------------------------------


async def test_an_answer_is_kept_for_the_ttl_and_a_change_is_seen_after_it(
    portal: Portal, directory_file: Path, directory_data: dict[str, Any]
) -> None:
    clock = Clock(1000.0)
    async with asking(portal.url, cache_s=5, negative_cache_s=2, clock=clock) as directory:
        assert await directory.location("1") == LocationEntry("1", True)
        directory_data["locations"]["1"]["impersonation"] = False  # the kill switch, thrown on the portal
        write_directory(directory_file, directory_data)
        clock.now += 4.9
        assert await directory.location("1") == LocationEntry("1", True)  # within the TTL: not asked again
        assert portal.source.asked == ["location 1"]
        clock.now += 0.2
        assert await directory.location("1") == LocationEntry("1", False)  # past it: asked, and seen
        assert portal.source.asked == ["location 1"] * 2


async def test_not_found_is_kept_for_the_negative_ttl(
    portal: Portal, directory_file: Path, directory_data: dict[str, Any]
) -> None:
    clock = Clock(1000.0)
    async with asking(portal.url, cache_s=5, negative_cache_s=2, clock=clock) as directory:
        assert await directory.coworker("2", 42) is None
        directory_data["locations"]["2"]["coworkers"].append(42)  # joins location 2
        write_directory(directory_file, directory_data)
        clock.now += 1.9
        assert await directory.coworker("2", 42) is None
        assert len(portal.source.asked) == 1
        clock.now += 0.2
        assert await directory.coworker("2", 42) == CoworkerEntry(42, True, False, ())
        assert len(portal.source.asked) == 2


async def test_a_ttl_of_zero_asks_every_time(portal: Portal) -> None:
    async with asking(portal.url, cache_s=0, negative_cache_s=0) as directory:
        for _ in range(3):
            assert await directory.location("1") is not None
            assert await directory.location("404") is None
    assert len(portal.source.asked) == 6


async def test_fifty_concurrent_lookups_of_one_coworker_are_one_request(portal: Portal) -> None:
    async with asking(portal.url, cache_s=0, negative_cache_s=0) as directory:  # coalesced, not cached
        answers = await asyncio.gather(*(directory.coworker("1", 42) for _ in range(50)))
        assert len(set(answers)) == 1
        assert answers[0] is not None
        assert portal.source.asked == ["coworker 1 42"]
        failures = await asyncio.gather(*(directory.coworker("1", 4242) for _ in range(50)))
        assert failures == [None] * 50
    assert portal.source.asked == ["coworker 1 42", "coworker 1 4242"]
    assert directory.requests == 2


async def test_a_fresh_lookup_skips_the_cache_refreshes_it_and_is_still_coalesced(
    portal: Portal, directory_file: Path, directory_data: dict[str, Any]
) -> None:
    """The exchange's re-check: what the portal says now, not what the mint's lookup left in the cache; fifty at
    once are still one request, and what it answers is what the next (cached) lookup gets."""
    clock = Clock(1000.0)
    async with asking(portal.url, cache_s=5, clock=clock) as directory:
        assert (await directory.coworker("1", 43)) == CoworkerEntry(43, True, False, (Membership("7", "member"),))
        place = directory_data["locations"]["1"]
        place["coworkers"] = [c for c in place["coworkers"] if c != 43] + [{"id": 43, "impersonable": False}]
        write_directory(directory_file, directory_data)
        cached = await directory.coworker("1", 43)
        assert cached is not None
        assert cached.impersonable  # from the cache, as meant
        portal.source.asked.clear()
        answers = await asyncio.gather(*(directory.coworker("1", 43, fresh=True) for _ in range(50)))
        assert {a.impersonable for a in answers if a is not None} == {False}
        assert portal.source.asked == ["coworker 1 43"]
        assert await directory.coworker("1", 43) == answers[0]
        assert portal.source.asked == ["coworker 1 43"]


async def test_a_failure_is_shared_by_the_lookups_waiting_for_it_then_forgotten() -> None:
    async with raw_server(respond(502)) as server, asking(server.url) as directory:
        outcomes = await asyncio.gather(*(directory.location("1") for _ in range(20)), return_exceptions=True)
        assert all(isinstance(o, Unavailable) for o in outcomes)
        assert server.requests == 1
        with pytest.raises(Unavailable):
            await directory.location("1")
        assert server.requests == 2


async def test_at_most_max_concurrency_requests_reach_the_portal_at_once() -> None:
    async def slowly_not_found(server: RawServer, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.1)
        await respond(404)(server, writer)

    async with raw_server(slowly_not_found) as server, asking(server.url, max_concurrency=3, timeout_s=10) as d:
        assert await asyncio.gather(*(d.coworker("1", n) for n in range(30))) == [None] * 30
    assert server.requests == 30
    assert server.most_in_flight <= 3
    assert server.most_in_flight >= 2  # concurrent all the same (3 unless the machine is very busy)


async def test_a_lookup_given_up_by_its_caller_still_answers_the_others(portal: Portal) -> None:
    async with asking(portal.url, cache_s=0) as directory:
        first = asyncio.create_task(directory.coworker("1", 42))
        second = asyncio.create_task(directory.coworker("1", 42))
        await asyncio.sleep(0)
        first.cancel()
        answer = await second
        assert answer is not None
        assert answer == await directory.coworker("1", 42)
        assert first.cancelled()


# --- credentials and the outage log ----------------------------------------------------------------------------


@pytest.fixture
def adapter_with_token(directory_file: Path) -> Iterator[str]:
    """The adapter as an operator runs it: ``python -m examples.portal_adapter``, its token in the environment."""
    port = free_port()
    env = {**os.environ, "PORTAL_ADAPTER_TOKEN": "the-right-token"}
    command = [sys.executable, "-m", "examples.portal_adapter", "--file", str(directory_file), "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/healthz", process, seconds=20)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.fixture
def outage_records() -> Iterator[list[logging.LogRecord]]:
    with collected("authority.outages") as records:
        yield records


def outage_lines(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [(vars(r)["outage"], vars(r)["cause"]) for r in records if hasattr(r, "outage")]


async def test_the_bearer_is_required_and_a_wrong_one_is_named_in_the_log(
    adapter_with_token: str, outage_records: list[logging.LogRecord]
) -> None:
    for token in ("a-wrong-token", None):
        async with asking(adapter_with_token, token=token) as directory:
            with pytest.raises(Unavailable, match=r"HTTP 401: it refused our credentials \(AUTHORITY_DIRECTORY_TOKEN"):
                await directory.location("1")
    assert outage_lines(outage_records) == [("started", "directory: HTTP 401")] * 2  # two directories, two logs
    assert "directory: HTTP 401: failing" in outage_records[0].getMessage()
    async with asking(adapter_with_token, token="the-right-token") as directory:
        assert await directory.location("1") == LocationEntry("1", True)
        assert await directory.coworker("1", 42) is not None


async def test_an_outage_is_logged_once_per_cause_and_its_end_once(outage_records: list[logging.LogRecord]) -> None:
    clock = Clock(1000.0)
    async with raw_server(respond(502)) as server, asking(server.url, cache_s=0, clock=clock, timeout_s=0.2) as d:
        for _ in range(5):
            with pytest.raises(Unavailable):
                await d.location("1")
            clock.now += 0.1
        server.answer = silent
        for _ in range(3):
            with pytest.raises(Unavailable):
                await d.location("1")
        server.answer = respond_json({"id": "1", "impersonation": True})
        clock.now += 1.5  # quiet for longer than the outage log's quiet_s
        for _ in range(3):
            assert await d.location("1") is not None
    assert outage_lines(outage_records) == [
        ("started", "directory: HTTP 502"),
        ("started", "directory: timeout"),
        ("recovered", "directory: HTTP 502"),
        ("recovered", "directory: timeout"),
    ]
    totals = {vars(r)["cause"]: vars(r)["total"] for r in outage_records if vars(r)["outage"] == "recovered"}
    assert totals == {"directory: HTTP 502": 5, "directory: timeout": 3}


# --- in the service --------------------------------------------------------------------------------------------


def test_the_service_mints_through_the_portal_and_answers_503_when_it_cannot(
    make_stack: Callable[..., Stack], directory_file: Path
) -> None:
    source = Counted(FileSource(directory_file))
    with serving(create_app(source)) as url:
        stack = make_stack(directory_file=None, directory_url=url, directory_cache_s=0)
        with stack.client() as client:
            minted = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
            assert minted.status_code == 200, minted.text
            assert {"location 1", "coworker 1 42"} <= set(source.asked)
            refused = client.get(STAFF, params={"coworkerId": 60}, headers=stack.bearer("operator", "7"))
            assert_problem(refused, 403, "coworker-not-impersonable")  # the portal's word, obeyed
    # the portal is gone now; the service is still up
    with stack.client() as client:
        down = client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
    assert_problem(down, 503, "unavailable")
    assert down.headers["retry-after"] == "1"
    assert "directory" in down.json()["detail"]


def test_the_exchange_asks_afresh_so_a_withdrawal_right_after_the_mint_is_seen(
    make_stack: Callable[..., Stack], directory_file: Path, directory_data: dict[str, Any]
) -> None:
    """With the default cache (5 s): the mint's lookup is in the cache when the coworker opts out, a second later;
    the exchange does not take it from there (a token lives 60 s: the exchange is the last chance to refuse)."""
    source = Counted(FileSource(directory_file))
    with serving(create_app(source)) as url:
        stack = make_stack(directory_file=None, directory_url=url)
        assert stack.settings.directory_cache_s == 5
        with stack.client() as client:
            token = client.get(STAFF, params={"coworkerId": 43}, headers=stack.bearer("operator", "7")).json()["token"]
            place = directory_data["locations"]["1"]
            place["coworkers"] = [c for c in place["coworkers"] if c != 43] + [{"id": 43, "impersonable": False}]
            write_directory(directory_file, directory_data)
            body = assert_problem(client.post(EXCHANGE, json={"token": token}), 401, "impersonation-withdrawn")
            assert "marked not impersonable" in body["detail"]
            assert_problem(client.post(EXCHANGE, json={"token": token}), 401, "token-replayed")  # spent
    assert source.asked.count("coworker 1 43") == 3  # the mint, then each exchange: never the cache


@contextmanager
def raw_server_in_a_thread(answer: Answer) -> Iterator[RawServer]:
    """``raw_server`` on an event loop of its own, for a service called through the (blocking) test client."""
    loop = asyncio.new_event_loop()
    started: asyncio.Future[RawServer] = loop.create_future()
    stop = asyncio.Event()

    async def run() -> None:
        async with raw_server(answer) as server:
            started.set_result(server)
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run(),), name="raw-portal", daemon=True)
    thread.start()
    try:
        yield asyncio.run_coroutine_threadsafe(asyncio.wait_for(asyncio.shield(started), 10), loop).result()
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def mint_writes(stack: Stack) -> dict[bytes, bytes | None]:
    """What a mint writes to Redis: allowlist entries (``jti:``) and rate-limit counters (``rate:``), each key with
    its serialized value, so a counter moved is a change too."""
    prefix = stack.settings.redis_prefix
    with direct_redis(stack) as direct:
        keys = [*direct.scan_iter(f"{prefix}jti:*"), *direct.scan_iter(f"{prefix}rate:*")]
        return {key: _dumped(direct, key) for key in keys}


def _dumped(direct: redis.Redis, key: bytes) -> bytes | None:
    dumped = direct.dump(key)
    assert dumped is None or isinstance(dumped, bytes)
    return dumped


async def slow(_: RawServer, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(3)  # past the service's deadline, then a good answer nobody waits for any more
    await respond_json({"id": "1", "impersonation": True})(_, writer)


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (slow, "did not answer within 0.5 s"),
        (respond(200, b"<html>It works!</html>"), "outside its contract"),
        (respond_json({"id": "1", "impersonation": "yes"}), "outside its contract"),
        (endless(length=10 * 1024 * 1024), "MAX_ANSWER_BYTES=65536"),
        (endless(), "MAX_ANSWER_BYTES=65536"),
    ],
    ids=["slow", "garbage", "off-contract", "10MB", "endless"],
)
def test_a_portal_that_cannot_answer_makes_the_mint_503_and_nothing_is_written(
    make_stack: Callable[..., Stack], answer: Answer, said: str
) -> None:
    """Slow, garbage, oversized: the mint answers 503 with Retry-After, and Redis holds no token and no moved rate
    counter: the portal is asked before anything is counted or issued."""
    with raw_server_in_a_thread(answer) as portal:
        stack = make_stack(directory_file=None, directory_url=portal.url, directory_timeout_s=0.5)
        with stack.client() as client:
            before = mint_writes(stack)
            staff = client.get(STAFF, params={"coworkerId": 43}, headers=stack.bearer("operator", "7"))
            for refused in (staff, client.get(team(43), headers=stack.bearer("team-admin", "5"))):
                body = assert_problem(refused, 503, "unavailable")
                assert refused.headers["retry-after"] == "1"
                assert said in body["detail"]
            assert mint_writes(stack) == before == {}
    assert portal.requests >= 1


# --- mutual TLS to the portal ----------------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, the portal's certificate (for 127.0.0.1) and a client certificate it signed; and a CA of nobody's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _issue(
    folder: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, usage: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A P-256 certificate for ``name`` (``usage``: ca, server or client), signed by ``issuer`` (None: itself),
    written to ``folder/name.pem`` with its key in ``folder/name.key``."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    signer_cert, signer_key = issuer if issuer is not None else (None, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(signer_cert.subject if signer_cert is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=usage == "ca", path_length=None), critical=True)
    )
    if usage == "ca":
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    else:
        purpose = ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        assert signer_cert is not None
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    if usage == "server":
        names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(signer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    folder = tmp_path / "pki"
    folder.mkdir()
    ca = _issue(folder, "ca", None, "ca")
    _issue(folder, "portal", ca, "server")
    _issue(folder, "authority", ca, "client")
    _issue(folder, "other-ca", None, "ca")
    return Pki(
        ca=folder / "ca.pem",
        server_cert=folder / "portal.pem",
        server_key=folder / "portal.key",
        client_cert=folder / "authority.pem",
        client_key=folder / "authority.key",
        other_ca=folder / "other-ca.pem",
    )


@pytest.fixture
def tls_adapter(directory_file: Path, pki: Pki) -> Iterator[str]:
    """``python -m examples.portal_adapter`` over HTTPS, requiring a client certificate signed by the CA."""
    port = free_port()
    tls = ["--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)]
    command = [sys.executable, "-m", "examples.portal_adapter", "--file", str(directory_file), "--port", str(port)]
    process = subprocess.Popen([*command, *tls], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:  # listening, as seen by a TCP connect: the TLS itself is what the tests try
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            with closing(socket.socket()) as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "the adapter did not listen"
            time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)
        if process.stderr:
            process.stderr.close()


def tls_settings(pki: Pki, *, client: bool = True, ca: Path | None = None) -> dict[str, Any]:
    return {
        "directory_tls_ca": str(ca or pki.ca),
        **({"directory_tls_cert": str(pki.client_cert), "directory_tls_key": str(pki.client_key)} if client else {}),
    }


async def test_mutual_tls_with_the_client_certificate_and_unavailable_without(
    make_stack: Callable[..., Stack], tls_adapter: str, pki: Pki, outage_records: list[logging.LogRecord]
) -> None:
    """The settings' TLS context against a portal that requires a client certificate: the lookups answer with it;
    without it, or with a portal certificate the configured CA did not sign, the portal cannot be reached (503)."""
    stack = make_stack(directory_file=None, directory_url=tls_adapter, **tls_settings(pki))
    async with asking(tls_adapter, tls=tls_context(stack.settings)) as directory:
        assert await directory.location("1") == LocationEntry("1", True)
        assert await directory.coworker("1", 42) is not None
    for refused in (tls_settings(pki, client=False), tls_settings(pki, ca=pki.other_ca)):
        unset = {"directory_tls_cert": None, "directory_tls_key": None}
        settings = msgspec.structs.replace(stack.settings, **(unset | refused))
        async with asking(tls_adapter, tls=tls_context(settings)) as directory:
            with pytest.raises(Unavailable, match="cannot be reached") as failed:
                await directory.location("1")
        assert failed.value.headers["Retry-After"] == "1"
    causes = [cause for _, cause in outage_lines(outage_records)]
    assert len(causes) == 2
    assert all(cause.startswith("directory: ") for cause in causes)


def test_the_service_mints_through_mutual_tls_and_503s_without_it(
    make_stack: Callable[..., Stack], tls_adapter: str, pki: Pki
) -> None:
    operator = {"coworkerId": 42}  # the query of a staff mint
    stack = make_stack(directory_file=None, directory_url=tls_adapter, **tls_settings(pki))
    with stack.client() as client:
        minted = client.get(STAFF, params=operator, headers=stack.bearer("operator", "7"))
        assert minted.status_code == 200, minted.text
    for refused in (tls_settings(pki, client=False), tls_settings(pki, ca=pki.other_ca)):
        stack = make_stack(directory_file=None, directory_url=tls_adapter, **refused)
        with stack.client() as client:
            down = client.get(STAFF, params=operator, headers=stack.bearer("operator", "7"))
        body = assert_problem(down, 503, "unavailable")
        assert down.headers["retry-after"] == "1"
        assert "cannot be reached" in body["detail"]
        assert mint_writes(stack) == {}  # nothing minted, nothing counted


# --- the contract, written down --------------------------------------------------------------------------------


def contract() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CONTRACT.read_text())
    return document


def test_the_contract_is_a_valid_openapi_31_document() -> None:
    document = contract()
    assert document["openapi"].startswith("3.1")
    errors = [error.message for error in jsonschema_rs.Draft202012Validator(OPENAPI_31).iter_errors(document)]
    assert not errors, errors
    schemes = document["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "mutualTLS"}
    for path in document["paths"].values():
        assert {"200", "404"} <= set(path["get"]["responses"])


@pytest.mark.parametrize(
    ("schema", "struct"), [("Location", LocationEntry), ("Coworker", CoworkerEntry), ("Membership", Membership)]
)
def test_the_contracts_schemas_are_the_structs(schema: str, struct: type[msgspec.Struct]) -> None:
    """Every field the authority decodes is in the contract, required exactly when the struct has no default, and
    nothing more: the two cannot drift."""
    written = contract()["components"]["schemas"][schema]
    fields = msgspec.structs.fields(struct)
    assert written["required"] == [f.name for f in fields if f.required]
    assert set(written["properties"]) == {f.name for f in fields}
    assert {name: p["default"] for name, p in written["properties"].items() if "default" in p} == {
        f.name: f.default for f in fields if not f.required
    }
    assert written.get("additionalProperties", True) is True  # the portal may say more


async def test_what_the_adapter_serves_is_valid_against_the_contract(portal: Portal) -> None:
    components = contract()["components"]

    def check(body: Any, schema: str) -> None:  # the schema's $refs point into the document's own components
        jsonschema_rs.Draft202012Validator(
            {"$ref": f"#/components/schemas/{schema}", "components": components}
        ).validate(body)

    async with httpx.AsyncClient(base_url=portal.url) as client:
        check((await client.get("/locations/1")).json(), "Location")
        for coworker in (5, 42, 60, 70):
            check((await client.get(f"/locations/1/coworkers/{coworker}")).json(), "Coworker")
        assert (await client.get("/locations/1/coworkers/4242")).status_code == 404
        assert (await client.get("/locations/nowhere")).status_code == 404


def test_fifty_concurrent_mints_ask_the_portal_once_per_cache_period(
    make_stack: Callable[..., Stack], directory_file: Path
) -> None:
    source = Counted(FileSource(directory_file))
    with serving(create_app(source)) as url:
        stack = make_stack(
            directory_file=None, directory_url=url, mint_rate_per_actor=1000, mint_rate_per_location=1000
        )
        operator = stack.bearer("operator", "7")
        with stack.client() as client, ThreadPoolExecutor(50) as pool:
            statuses = list(
                pool.map(
                    lambda _: client.get(STAFF, params={"coworkerId": 42}, headers=operator).status_code, range(50)
                )
            )
    assert statuses == [200] * 50
    assert sorted(source.asked) == ["coworker 1 42", "location 1"]  # one lookup of each, shared by all fifty


def test_the_exchange_asks_the_portal_again_and_a_portal_down_spends_nothing(
    make_stack: Callable[..., Stack], directory_file: Path, directory_data: dict[str, Any]
) -> None:
    source = Counted(FileSource(directory_file))
    with serving(create_app(source)) as url:
        stack = make_stack(directory_file=None, directory_url=url, directory_cache_s=0)
        operator = stack.bearer("operator", "7")
        with stack.client() as client:
            withdrawn = client.get(STAFF, params={"coworkerId": 43}, headers=operator).json()["token"]
            kept = client.get(STAFF, params={"coworkerId": 42}, headers=operator).json()["token"]
            place = directory_data["locations"]["1"]
            place["coworkers"] = [c for c in place["coworkers"] if c != 43] + [{"id": 43, "impersonable": False}]
            write_directory(directory_file, directory_data)
            source.asked.clear()
            assert_problem(client.post(EXCHANGE, json={"token": withdrawn}), 401, "impersonation-withdrawn")
            assert "coworker 1 43" in source.asked  # asked again, not answered from the mint's lookup
        with stack.client(directory_url=f"http://127.0.0.1:{free_port()}") as client:  # a portal that is down
            assert_problem(client.post(EXCHANGE, json={"token": kept}), 503, "unavailable")
        with stack.client() as client:  # back: the token was not spent
            assert client.post(EXCHANGE, json={"token": kept}).status_code == 200
