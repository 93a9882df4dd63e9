"""Security events delivered for real: the service runs as ``authority serve`` processes on loopback, and a receiver
(an HTTP server of the test's own) verifies every SET with PyJWT's ``PyJWKClient`` through the service's JWKS URL,
as a portal would. Sessions by the thousand, a receiver that goes away, a replica killed mid-delivery, a refusal,
and what the SETs say."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import httpx
import jwt
import pytest
import redis
from redis.asyncio import Redis as AsyncRedis

from authority import demo
from authority.cli import main
from authority.embedded import free_port
from authority.events import delivery
from authority.events.dead_letters import DeadLetters
from authority.events.delivery import Deliveries, backoff
from authority.events.push import Delivered, Failed, Pusher, Refused, verdict
from authority.events.set import (
    EVENT_TYPES,
    KEY_RETIRED,
    SESSION_REVOKED,
    SESSION_STARTED,
    SET_TYP,
    TOKEN_REPLAYED,
    About,
    Impersonator,
    session_started,
    set_jti,
)
from authority.services import build
from authority.settings import EventReceiver, SettingsError, load
from tests.helpers import EXCHANGE, JWKS, METRICS, READYZ, REVOKE_ALL, ROOT, STAFF, Stack, collected, revoke

CLI = str(Path(sys.executable).with_name("authority"))
ISSUER = "http://authority.test"  # every replica's: the public name in front of them, never called here
PASSPHRASE = "events test passphrase"

# --- the receiver: a real HTTP server that verifies each SET as a portal would -----------------------------------


@dataclass
class Arrival:
    audience: str
    jti: str
    type: str
    session: str | None
    claims: dict[str, Any]
    kid: str = ""  # of the key that signed it
    at: float = field(default_factory=time.monotonic)


@dataclass
class Receiver:
    """Receives SETs at ``/<audience>``, verifies each (signature through the JWKS URLs, ``typ``, ``iss``, ``aud``,
    the RFC 8417 claims) and answers 202; ``refusing`` answers RFC 8935's 400 instead, ``failing`` 503 to SETs of
    those event types; ``delay_s`` holds each answer back, ``holding`` (while clear) every answer. ``arrivals``
    keeps every SET verified (duplicates included, in arrival order); ``failures`` every one that did not verify.
    ``jwks``, if set, is served at ``/jwks`` (for an in-process service, which has no URL of its own)."""

    jwks_urls: list[str] = field(default_factory=list)  # see ``trust``
    port: int = field(default_factory=free_port)
    delay_s: float = 0.0
    refusing: bool = False
    failing: set[str] = field(default_factory=set)
    holding: threading.Event | None = None
    held: int = 0  # requests that waited for ``holding``
    jwks: dict[str, Any] | None = None
    arrivals: list[Arrival] = field(default_factory=list)
    attempts: Counter[str] = field(default_factory=Counter)  # jti -> POSTs seen, refused ones included
    failures: list[str] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connections: set[socket.socket] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._keys = [jwt.PyJWKClient(url, cache_keys=True) for url in self.jwks_urls]

    def trust(self, *jwks_urls: str) -> None:
        """Verify SETs with these JWKS URLs from now on (a service's, once it is up)."""
        self.jwks_urls[:] = [*self.jwks_urls, *jwks_urls]
        self._keys = [jwt.PyJWKClient(url, cache_keys=True) for url in self.jwks_urls]

    def url(self, audience: str) -> str:
        return f"http://127.0.0.1:{self.port}/{audience}"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # connections kept open, as a real receiver would

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._connections.add(self.connection)

            def finish(self) -> None:
                with owner._lock:
                    owner._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                answer = json.dumps(owner.jwks).encode()
                self.send_response(200 if owner.jwks is not None else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request (a replica killed): nothing was sent
                    self.close_connection = True
                    return
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                if owner.holding is not None and not owner.holding.is_set():
                    with owner._lock:
                        owner.held += 1
                    owner.holding.wait()
                status, answer = owner.receive(self.path.strip("/"), self.headers.get("content-type", ""), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Down: no longer listening, and every open connection cut."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            for connection in self._connections:
                with suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def _signing_key(self, token: str) -> Any:
        for client in self._keys:
            try:
                return client.get_signing_key_from_jwt(token).key
            except jwt.PyJWKClientConnectionError:
                continue  # that replica is gone: ask the next
        raise AssertionError("no JWKS URL answered")

    def receive(self, audience: str, content_type: str, body: bytes) -> tuple[int, bytes]:
        try:
            token = body.decode()
            assert content_type == "application/secevent+jwt", content_type
            header = jwt.get_unverified_header(token)
            assert (header["typ"], header["alg"], bool(header["kid"])) == (SET_TYP, "ES256", True), header
            claims: dict[str, Any] = jwt.decode(
                token,
                self._signing_key(token),
                algorithms=["ES256"],
                audience=audience,
                issuer=ISSUER,
                options={"require": ["iss", "iat", "jti", "aud"]},
            )
            assert not {"exp", "sub"} & set(claims), claims  # RFC 8417 section 2.2: SETs do not look like ID tokens
            assert len(claims["events"]) == 1, claims
            ((kind, _),) = claims["events"].items()
        except Exception as exc:
            with self._lock:
                self.failures.append(repr(exc))
            return 500, b"{}"
        with self._lock:
            self.attempts[claims["jti"]] += 1
            if self.refusing:
                return 400, json.dumps({"err": "invalid_audience", "description": "not for us"}).encode()
            if kind in self.failing:
                return 503, b"{}"
            session = claims["sub_id"].get("session", {}).get("id")
            self.arrivals.append(Arrival(audience, claims["jti"], kind, session, claims, header["kid"]))
        return 202, b""

    def delivered(self, audience: str) -> list[Arrival]:
        with self._lock:
            return [a for a in self.arrivals if a.audience == audience]


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# --- the service: `authority serve` processes sharing one Redis --------------------------------------------------


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    portal: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def jwks(self) -> str:
        return f"{self.base}{JWKS}"

    def staff(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {demo.dev_token(self.portal, role='operator', sub='7', location='1')}"}

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass
class Deployment:
    """The settings replicas share: one Redis and prefix, keys in Redis, the same issuer and receivers."""

    redis_url: str
    root: Path
    prefix: str = field(default_factory=lambda: f"ev{uuid.uuid4().hex[:10]}:")
    settings: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        issuer = demo.trusted_demo_issuer(self.root / "portal")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")}
        return env | {
            "AUTHORITY_REDIS_URL": self.redis_url,
            "AUTHORITY_REDIS_PREFIX": self.prefix,
            "AUTHORITY_ISSUER": ISSUER,
            "AUTHORITY_KEY_STORE": "redis",
            "AUTHORITY_KEY_PASSPHRASE": PASSPHRASE,
            "AUTHORITY_KEYS_DIR": str(self.root / "keys"),
            "AUTHORITY_DIRECTORY_FILE": str(ROOT / "authority" / "demo_directory.json"),
            "AUTHORITY_TRUSTED_ISSUERS": json.dumps(
                [{"issuer": issuer.issuer, "audiences": issuer.audiences, "jwks_file": issuer.jwks_file}]
            ),
            "AUTHORITY_MINT_RATE_PER_ACTOR": "1000000",
            "AUTHORITY_MINT_RATE_PER_LOCATION": "1000000",
            "AUTHORITY_EVENT_BACKOFF_MAX_S": "1",
            "AUTHORITY_REDIS_TIMEOUT_S": "5",  # a busy machine starves Redis of CPU: slow, not down
            **self.settings,
        }

    @contextmanager
    def replica(self) -> Iterator[Service]:
        """One ``authority serve`` process, ready; stopped (or reaped, if the test killed it) on the way out."""
        port = free_port()
        log = self.root / f"serve-{port}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [CLI, "serve", "--port", str(port)], cwd=self.root, env=self.env(), stdout=out, stderr=out
            )
        service = Service(process, port, log, self.root / "portal")
        try:
            wait_for(f"{service.base}{READYZ}", lambda: _ready(service), 60, service)
            yield service
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=10)

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url)

    @property
    def outbox(self) -> str:
        return f"{self.prefix}events{{{self.prefix}audit}}"

    def cli(self, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
        """``authority`` in this process, with the deployment's settings."""
        for name, value in self.env().items():
            if name.startswith("AUTHORITY_"):
                monkeypatch.setenv(name, value)
        return main(list(args))


def _ready(service: Service) -> bool:
    try:
        return httpx.get(f"{service.base}{READYZ}", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_for(what: str, check: Callable[[], Any], seconds: float, *services: Service) -> Any:
    """``check()`` until truthy; fail after ``seconds`` (with the services' logs), or when a service not killed by
    the test dies."""
    deadline = time.monotonic() + seconds
    while True:
        if result := check():
            return result
        for service in services:
            if service.process.poll() is not None and service.process.returncode != -signal.SIGKILL:
                raise AssertionError(f"the service exited waiting for {what}:\n{service.output()}")
        logs = "\n".join(s.output() for s in services)
        assert time.monotonic() < deadline, f"no {what} within {seconds} s\n{logs}"
        time.sleep(0.05)


def receivers(*entries: tuple[str, str, list[str]]) -> dict[str, str]:
    """``AUTHORITY_EVENT_RECEIVERS`` for (url, audience, events) triples."""
    listed = [{"url": url, "audience": audience, "events": events} for url, audience, events in entries]
    return {"AUTHORITY_EVENT_RECEIVERS": json.dumps(listed)}


def open_sessions(service: Service, count: int, coworker: int = 42, threads: int = 4) -> list[str]:
    """``count`` sessions for ``coworker``: minted and exchanged over HTTP, by ``threads`` clients at once."""
    staff = service.staff()

    def some(share: int) -> list[str]:
        sids = []
        with httpx.Client(base_url=service.base, timeout=30) as http:
            for _ in range(share):
                minted = http.get(STAFF, params={"coworkerId": coworker}, headers=staff)
                assert minted.status_code == 200, minted.text
                exchanged = http.post(EXCHANGE, json={"token": minted.json()["token"]})
                assert exchanged.status_code == 200, exchanged.text
                sids.append(exchanged.json()["session_id"])
        return sids

    shares = [count // threads + (n < count % threads) for n in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        return [sid for sids in pool.map(some, shares) for sid in sids]


def by_session(arrivals: list[Arrival]) -> dict[str, list[str]]:
    """Each session's event types in the order they first arrived (a duplicate adds nothing)."""
    seen: set[str] = set()
    order: dict[str, list[str]] = {}
    for arrival in arrivals:
        if arrival.jti not in seen and arrival.session is not None:
            seen.add(arrival.jti)
            order.setdefault(arrival.session, []).append(arrival.type)
    return order


def duplicates(arrivals: list[Arrival]) -> int:
    return len(arrivals) - len({a.jti for a in arrivals})


# --- the rules, without a server --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "content_type", "body", "expected"),
    [
        (202, "", b"", Delivered()),
        (400, "application/json", b'{"err": "invalid_key", "description": "kid?"}', Refused("invalid_key", "kid?")),
        (400, "application/json; charset=utf-8", b'{"err": "invalid_request"}', Refused("invalid_request", "")),
        (400, "text/html", b"<h1>Bad Request</h1>", Failed("HTTP 400")),  # a proxy's, not the receiver's verdict
        (400, "application/json", b'{"error": "x"}', Failed("HTTP 400")),
        (400, "application/json", b'{"err": ""}', Failed("HTTP 400")),
        (200, "", b"", Failed("HTTP 200")),  # RFC 8935 says 202
        (301, "", b"", Failed("HTTP 301")),  # redirects are not followed
        (401, "application/json", b'{"err": "authentication_failed"}', Failed("HTTP 401")),
        (503, "", b"", Failed("HTTP 503")),
    ],
)
def test_what_an_answer_means(status: int, content_type: str, body: bytes, expected: object) -> None:
    assert verdict(status, content_type, body) == expected


def test_retries_back_off_exponentially_with_jitter_up_to_a_ceiling() -> None:
    for attempt, ceiling in ((0, 0.5), (1, 1.0), (3, 4.0), (10, 300.0), (500, 300.0)):
        waits = [backoff(attempt, 300.0) for _ in range(200)]
        assert all(ceiling / 2 <= w <= ceiling for w in waits)
        assert len(set(waits)) > 100  # spread, so returning receivers are not met all at once


def test_a_sets_jti_is_the_same_on_every_retry_and_differs_between_receivers() -> None:
    about = About(session="s", subject="42", location="1", actor=Impersonator(sub="7", role="operator", iss="i"), at=1)
    event = session_started(about, ends=2, reason=None, ticket=None)
    assert set_jti(event, "portal") == set_jti(event, "portal") != set_jti(event, "audit-log")
    other = session_started(about, ends=2, reason=None, ticket=None)
    assert set_jti(other, "portal") != set_jti(event, "portal")


def test_receivers_are_checked_at_start() -> None:
    given = [
        {"url": "http://portal.example.com/events", "audience": "portal"},
        {"url": "https://user:pw@portal.example.com/events", "audience": "a"},
        {"url": "https://portal.example.com/events", "audience": "portal", "events": ["session-started"]},
        {"url": "http://[::1]:8080/events", "audience": "local"},
    ]
    with pytest.raises(SettingsError) as refused:
        load({"AUTHORITY_EVENT_RECEIVERS": json.dumps(given)})
    assert str(refused.value).splitlines() == [
        "AUTHORITY_EVENT_RECEIVERS: url 'http://portal.example.com/events' must be https (plain http only to a "
        "loopback address)",
        "AUTHORITY_EVENT_RECEIVERS: url 'https://user:pw@portal.example.com/events' must be an http(s) URL without "
        "credentials or fragment",
        f"AUTHORITY_EVENT_RECEIVERS: receiver 'portal' asks for 'session-started'; known: {', '.join(EVENT_TYPES)}",
        "AUTHORITY_EVENT_RECEIVERS: two receivers are named 'portal': give each a distinct name",
    ]
    with pytest.raises(SettingsError, match="AUTHORITY_EVENT_RECEIVERS: "):
        load({"AUTHORITY_EVENT_RECEIVERS": json.dumps([{"url": "https://x.example", "audience": ""}])})


@contextmanager
def misbehaving(answer: bytes | None, *, endless: bool = False) -> Iterator[int]:
    """A TCP server on loopback that reads a request, then sends ``answer`` (None: nothing, ever), and with
    ``endless`` goes on sending bytes until the client hangs up."""
    server = socket.create_server(("127.0.0.1", 0))
    stopping = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stopping.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.recv(65536)
                if answer is None:
                    stopping.wait()
                    continue
                try:
                    connection.sendall(answer)
                    while endless and not stopping.is_set():
                        connection.sendall(b"x" * 65536)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stopping.set()
        thread.join(timeout=10)
        server.close()


def test_a_bad_receiver_costs_one_timeout_at_most() -> None:
    """Hanging, answering without end, or not speaking TLS: each POST ends within the deadline, with a verdict."""

    async def push(url: str) -> tuple[object, float]:
        pusher = Pusher(timeout_s=1.0)
        started = time.monotonic()
        try:
            return await pusher.push(url, "a.b.c", None), time.monotonic() - started
        finally:
            await pusher.close()

    with misbehaving(None) as port:
        result, took = asyncio.run(push(f"http://127.0.0.1:{port}/"))
        assert result == Failed("timeout")
        assert took < 5  # the deadline, and whatever a busy machine adds
    huge = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 99999999\r\n\r\n{"
    with misbehaving(huge, endless=True) as port:
        result, took = asyncio.run(push(f"http://127.0.0.1:{port}/"))
        assert result == Failed("HTTP 400")
        assert took < 5
    with misbehaving(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n") as port:
        verdict_, _ = asyncio.run(push(f"https://127.0.0.1:{port}/"))  # a plain-HTTP server behind an https URL
        assert isinstance(verdict_, Failed)
        assert verdict_.cause != "timeout"


def test_any_failure_of_a_post_is_a_failed_attempt_and_an_unusable_url_is_refused_at_start(
    make_stack: Callable[..., Stack],
) -> None:
    """URLs the settings' checks let through but the HTTP client cannot use: a POST to one is a failed attempt,
    never an exception (which ended the courier's holding, to start again at the same entry forever); and the
    service refuses them at start, one line each, naming the setting."""

    async def push(url: str) -> object:
        pusher = Pusher(timeout_s=1.0)
        try:
            return await pusher.push(url, "a.b.c", None)
        finally:
            await pusher.close()

    bad = ["http://127.0.0.1:99999/events", "http://127.0.0.1/\x7f"]
    for url in bad:
        result = asyncio.run(push(url))
        assert isinstance(result, Failed), result
    stack = make_stack(event_receivers=[{"url": url, "audience": f"r{n}"} for n, url in enumerate(bad)])
    with pytest.raises(SettingsError) as refused:
        build(stack.settings, log=None)
    lines = str(refused.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith("AUTHORITY_EVENT_RECEIVERS: url ") and "cannot be used" in line for line in lines)


@pytest.mark.parametrize("skew_s", [3600.0, -3600.0])
def test_a_new_receivers_group_starts_when_it_was_configured_on_redis_clock(redis_url: str, skew_s: float) -> None:
    """Events already on the outbox when a receiver is first configured were written for others: it gets none of
    them, and every one written from its configuration on, whatever the host's clock says (ahead, the group
    started in the future and skipped what was written until then, forever; behind, it got an hour of the past)."""
    prefix = f"ev{uuid.uuid4().hex[:10]}:"
    stream = f"{prefix}events{{{prefix}audit}}"

    async def scenario() -> list[bytes]:
        redis = AsyncRedis.from_url(redis_url)
        try:
            await redis.xadd(stream, {"event": b"before"})
            await asyncio.sleep(1)  # well apart from the start, whatever a busy machine adds to a round trip
            deliveries = Deliveries(
                redis, [EventReceiver(url="http://127.0.0.1:9/events", audience="new")], stream=stream,
                prefix=prefix, dead=DeadLetters(redis, f"{prefix}events:dead", 100), sign=lambda _: None,
                issuer=ISSUER, timeout_s=1, max_age_s=60, backoff_max_s=1, backlog=100,
                clock=lambda: time.time() + skew_s,
            )  # fmt: skip
            await redis.xadd(stream, {"event": b"after"})  # by a process started with it, its courier not yet up
            await deliveries.couriers[0].prepare()
            reply = cast(
                list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]],
                await redis.xreadgroup("new", "reader", {stream: ">"}),
            )
            await deliveries.close()
            return [fields[b"event"] for _, fields in reply[0][1]] if reply else []
        finally:
            await redis.delete(stream)
            await redis.aclose()

    assert asyncio.run(scenario()) == [b"after"]


def test_dead_letters_trimmed_at_their_cap_are_counted_in_the_log(redis_url: str) -> None:
    stream = f"dead{uuid.uuid4().hex[:10]}"

    async def scenario() -> int:
        redis = AsyncRedis.from_url(redis_url)
        letters = DeadLetters(redis, stream, maxlen=100)
        try:
            for n in range(350):
                await letters.add(receiver="portal", event=b"{}", cause="expired", detail=str(n))
            return await redis.xlen(stream)
        finally:
            await redis.delete(stream)
            await redis.aclose()

    with collected("authority.events") as logged:
        left = asyncio.run(scenario())
    said = [r.getMessage() for r in logged if "dead letters over their cap of 100" in r.getMessage()]
    trimmed = [int(message.split("the ")[1].split()[0]) for message in said]
    assert left < 350
    assert sum(trimmed) == 350 - left


def test_a_receivers_backlog_is_bounded_counted_and_logged(make_stack: Callable[..., Stack]) -> None:
    """A receiver away for good: past AUTHORITY_EVENT_BACKLOG, the oldest waiting events are dropped, with a
    metric and a log line; the lag gauge says how old the oldest waiting one is."""
    nobody = [{"url": f"http://127.0.0.1:{free_port()}/events", "audience": "portal"}]
    stack = make_stack(event_receivers=nobody, event_backlog=100, event_backoff_max_s=1, mint_rate_per_actor=1000)
    staff = stack.bearer("operator", "7")
    with collected("authority.events") as logged, stack.client() as client:

        def metric(name: str) -> float:
            """A sample of /metrics for this receiver (the counters are the process's: other tests add to them)."""
            lines = [line for line in client.get(METRICS).text.splitlines() if line.startswith(name)]
            return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

        dropped = 'authority_events_total{outcome="dropped",receiver="portal"}'
        before = metric(dropped)
        for _ in range(250):
            token = client.get(STAFF, params={"coworkerId": 42}, headers=staff).json()["token"]
            assert client.post(EXCHANGE, json={"token": token}).status_code == 200
        deadline = time.monotonic() + 30
        while not any("over AUTHORITY_EVENT_BACKLOG=100; dropped the" in r.getMessage() for r in logged):
            assert time.monotonic() < deadline, "nothing dropped"
            time.sleep(0.1)
        assert 0 < metric(dropped) - before <= 250 - 100
        assert metric('authority_event_lag_seconds{receiver="portal"}') > 0


def in_process_receiver(client: Any, receiver: Receiver) -> None:
    """Have ``receiver`` verify with the in-process service's JWKS, served by itself."""
    receiver.jwks = client.get(JWKS).json()
    receiver.trust(f"http://127.0.0.1:{receiver.port}/jwks")


def test_a_poison_event_type_holds_no_other_session_back_and_each_session_stays_in_order(
    make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The receiver answers 503 to every revocation, for good: more of them fail than the courier holds (HELD) and
    than it keeps to retry (RETRYING, so some spill to the pending list); sessions opened after are delivered all the
    same. The failing ones are retried; a replay's event, behind its session's failing revocation, is not sent
    before it. Once the receiver takes revocations, every session's events arrive, each session's in order."""
    monkeypatch.setattr(delivery, "HELD", 4)
    monkeypatch.setattr(delivery, "RETRYING", 6)
    with receiving() as receiver:
        receiver.failing = {SESSION_REVOKED}
        portal = [{"url": receiver.url("portal"), "audience": "portal"}]
        stack = make_stack(event_receivers=portal, event_backoff_max_s=0.5, mint_rate_per_actor=1000)
        staff = stack.bearer("operator", "7")
        with stack.client() as client:
            in_process_receiver(client, receiver)

            def session() -> tuple[str, str]:
                token = client.get(STAFF, params={"coworkerId": 42}, headers=staff).json()["token"]
                exchanged = client.post(EXCHANGE, json={"token": token})
                assert exchanged.status_code == 200, exchanged.text
                return token, exchanged.json()["session_id"]

            poisoned = [session() for _ in range(16)]
            for _, sid in poisoned:
                assert client.post(revoke(sid), headers=staff).status_code == 200
            for token, _ in poisoned[:3]:  # a replay of a revoked session: told, after its revocation
                assert client.post(EXCHANGE, json={"token": token}).status_code == 401
            later = [session()[1] for _ in range(20)]

            def sessions_seen() -> set[str | None]:
                return {a.session for a in receiver.delivered("portal")}

            wait_for("the later sessions' starts", lambda: set(later) <= sessions_seen(), 60)
            wait_for("revocations retried", lambda: sum(n > 1 for n in receiver.attempts.values()) >= 6, 60)
            assert TOKEN_REPLAYED not in {a.type for a in receiver.delivered("portal")}
            receiver.failing = set()
            wanted = {sid for _, sid in poisoned}
            wait_for(
                "every revocation and replay",
                lambda: (
                    {a.session for a in receiver.delivered("portal") if a.type == SESSION_REVOKED} == wanted
                    and sum(a.type == TOKEN_REPLAYED for a in receiver.delivered("portal")) >= 3
                ),
                60,
            )
    assert receiver.failures == []
    order = by_session(receiver.delivered("portal"))
    for n, (_, sid) in enumerate(poisoned):
        assert order[sid] == [SESSION_STARTED, SESSION_REVOKED, *([TOKEN_REPLAYED] if n < 3 else [])], order[sid]
    assert all(order[sid] == [SESSION_STARTED] for sid in later)


# --- the tests ---------------------------------------------------------------------------------------------------


def test_a_thousand_sessions_every_event_delivered_verified_and_in_order(
    redis_url: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """1,000 sessions opened, then all revoked in bulk: the receiver gets 2,000 SETs, each verified through the
    JWKS, each session's start before its revocation; a receiver asking only for revocations gets those alone."""
    deployment = Deployment(redis_url, tmp_path)
    with receiving() as receiver:
        deployment.settings = receivers(
            (receiver.url("portal"), "portal", []), (receiver.url("revocations"), "revocations", [SESSION_REVOKED])
        )
        with deployment.replica() as service:
            receiver.trust(service.jwks)
            started = time.monotonic()
            sids = open_sessions(service, 1000)
            revoked = httpx.post(
                f"{service.base}{REVOKE_ALL}", json={"subject": "42"}, headers=service.staff(), timeout=60
            )
            assert revoked.json() == {"revoked": 1000}, revoked.text
            answered = time.monotonic()
            wanted = {(sid, kind) for sid in sids for kind in (SESSION_STARTED, SESSION_REVOKED)}

            def all_there() -> bool:
                got = {(a.session, a.type) for a in receiver.delivered("portal")}
                return wanted <= got and len({a.jti for a in receiver.delivered("revocations")}) >= 1000

            wait_for("every event delivered", all_there, 60, service)
            elapsed = time.monotonic() - started
    assert receiver.failures == []
    order = by_session(receiver.delivered("portal"))
    assert all(order[sid] == [SESSION_STARTED, SESSION_REVOKED] for sid in sids), "a session's events out of order"
    filtered = receiver.delivered("revocations")
    assert {a.type for a in filtered} == {SESSION_REVOKED}
    assert {a.session for a in filtered} == set(sids)
    # the two receivers' SETs of one event are two SETs: their jti differ
    assert not {a.jti for a in filtered} & {a.jti for a in receiver.delivered("portal")}
    # the 2,000 revocation SETs were all written by the one bulk revocation: their pace is the delivery's
    times = sorted(a.at for a in receiver.arrivals if a.type == SESSION_REVOKED)
    rate = (len(times) - 1) / (times[-1] - times[0])
    record_property("revocation_sets_per_s", round(rate))
    record_property("duplicates", duplicates(receiver.arrivals))
    print(
        f"\n3,000 SETs (1,000 sessions) in {elapsed:.1f} s from the first mint; the 2,000 revocation SETs at "
        f"{rate:.0f}/s, the last {times[-1] - answered:.2f} s after the bulk revocation answered; "
        f"{duplicates(receiver.arrivals)} duplicates"
    )


def test_a_receiver_down_for_ten_seconds_gets_everything_once_back(redis_url: str, tmp_path: Path) -> None:
    deployment = Deployment(redis_url, tmp_path)
    with receiving() as receiver:
        deployment.settings = receivers((receiver.url("portal"), "portal", []))
        with deployment.replica() as service:
            receiver.trust(service.jwks)
            sids = open_sessions(service, 50)
            wait_for("the first events", lambda: len(receiver.delivered("portal")) >= 50, 30, service)
            receiver.stop()
            down_until = time.monotonic() + 10
            while time.monotonic() < down_until:  # sessions keep opening while it is away
                sids += open_sessions(service, 10, threads=2)
            receiver.start()
            wanted = set(sids)
            wait_for(
                "every session's start",
                lambda: wanted <= {a.session for a in receiver.delivered("portal")},
                60,
                service,
            )
            metrics = httpx.get(f"{service.base}{METRICS}").text
    assert receiver.failures == []
    assert 'authority_events_total{outcome="retried",receiver="portal"}' in metrics  # it was away, and retried
    assert len(sids) > 60


def test_a_replica_killed_mid_delivery_the_other_finishes_its_deliveries(redis_url: str, tmp_path: Path) -> None:
    """Two replicas; the one holding the receiver's lease is killed (SIGKILL) while its POSTs are in flight to a
    slow receiver: the other takes the lease over, claims what it held, and delivers everything."""
    deployment = Deployment(redis_url, tmp_path)
    with receiving() as receiver:
        receiver.holding = threading.Event()  # every answer held back until the holder is dead: in flight
        deployment.settings = receivers((receiver.url("portal"), "portal", []))
        with deployment.replica() as first, deployment.replica() as second:
            receiver.trust(first.jwks, second.jwks)
            sids = open_sessions(second, 60)
            wait_for("deliveries under way", lambda: receiver.held >= 1, 30, first, second)
            with deployment.redis() as direct:
                holder = cast(bytes, direct.get(f"{deployment.prefix}events:lease:portal")).decode()
            pid = int(holder.split(":")[1])
            victim, survivor = (first, second) if pid == first.process.pid else (second, first)
            assert pid == victim.process.pid, (holder, first.process.pid, second.process.pid)
            os.kill(pid, signal.SIGKILL)
            victim.process.wait(timeout=10)
            in_flight = len(sids) - len({a.session for a in receiver.delivered("portal")})
            assert in_flight == len(sids)  # it died with all of it left, some of it sent and unanswered
            receiver.holding.set()
            wait_for(
                "every session's start, from the survivor",
                lambda: set(sids) <= {a.session for a in receiver.delivered("portal")},
                60,
                survivor,
            )
            with deployment.redis() as direct:  # each acknowledged once its 202 is in (just after the receiver's)
                wait_for("nothing pending", lambda: not direct.xpending(deployment.outbox, "portal")["pending"], 30)
    assert receiver.failures == []
    print(f"\n{in_flight} deliveries taken over, {duplicates(receiver.arrivals)} duplicates")


def test_a_process_killed_right_after_an_exchange_keeps_its_audit_entry_and_event(
    redis_url: str, tmp_path: Path
) -> None:
    deployment = Deployment(redis_url, tmp_path)
    deployment.settings = receivers((f"http://127.0.0.1:{free_port()}/nobody", "portal", []))  # never answers
    with deployment.replica() as service:
        staff = service.staff()
        token = httpx.get(f"{service.base}{STAFF}", params={"coworkerId": 42}, headers=staff).json()["token"]
        exchanged = httpx.post(f"{service.base}{EXCHANGE}", json={"token": token})
        service.process.send_signal(signal.SIGKILL)
        service.process.wait(timeout=10)
    assert exchanged.status_code == 200
    sid = exchanged.json()["session_id"]
    with deployment.redis() as direct:
        audit = [json.loads(f[b"event"]) for _, f in direct.xrange(f"{deployment.prefix}audit")]
        outbox = [json.loads(f[b"event"]) for _, f in direct.xrange(deployment.outbox)]
    assert [(e["event"], e["outcome"]) for e in audit if e.get("jti") == sid] == [
        ("mint", "issued"),
        ("exchange", "session"),
    ]
    assert [(e["type"], e["session"]) for e in outbox] == [(SESSION_STARTED, sid)]


def test_a_refused_set_is_dead_lettered_never_retried_and_redrive_delivers_it(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment = Deployment(redis_url, tmp_path)
    dead = f"{deployment.prefix}events:dead"
    with receiving() as receiver:
        receiver.refusing = True
        deployment.settings = receivers((receiver.url("portal"), "portal", []))
        with deployment.replica() as service:
            receiver.trust(service.jwks)
            with deployment.redis() as direct:
                open_sessions(service, 1)
                wait_for("a dead letter", lambda: direct.xlen(dead) == 1, 30, service)
                open_sessions(service, 1)  # a second one, refused too: meanwhile the first was not tried again
                wait_for("a second dead letter", lambda: direct.xlen(dead) == 2, 30, service)
                # acknowledged (just after the dead letter is written): never again
                wait_for("no refusal pending", lambda: not direct.xpending(deployment.outbox, "portal")["pending"], 30)
            assert sorted(receiver.attempts.values()) == [1, 1]
            metrics = httpx.get(f"{service.base}{METRICS}").text
            assert 'authority_events_total{outcome="refused",receiver="portal"} 2.0' in metrics
            assert 'outcome="retried"' not in metrics

            assert deployment.cli(monkeypatch, "events", "dead") == 0
            letters = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
            assert [(d["receiver"], d["cause"], d["event"]["type"]) for d in letters] == [
                ("portal", "refused", SESSION_STARTED)
            ] * 2
            assert letters[0]["detail"] == "invalid_audience: not for us"

            receiver.refusing = False
            assert deployment.cli(monkeypatch, "events", "redrive", "--receiver", "portal") == 0
            assert "redriven: 2 dead letters of portal" in capsys.readouterr().err
            wait_for("the redriven events", lambda: len(receiver.delivered("portal")) == 2, 30, service)
            assert {a.jti for a in receiver.delivered("portal")} == set(receiver.attempts)  # the same jti as before
            with deployment.redis() as direct:
                assert direct.xlen(dead) == 0
    assert receiver.failures == []


def test_an_emergency_retire_whose_records_cannot_be_written_says_so_and_logs_its_line(
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The key is retired in the store, then its audit entry and event cannot be written (the audit stream's key
    holds something else: every write to it fails): the retire still takes effect, its JSON line is logged (the
    record of last resort), and the command fails, saying the receivers were not told."""
    deployment = Deployment(redis_url, tmp_path)
    deployment.settings = receivers((f"http://127.0.0.1:{free_port()}/nobody", "portal", []))
    assert deployment.cli(monkeypatch, "keys", "rotate") == 0
    kid = next(line.split()[0] for line in capsys.readouterr().out.splitlines() if " active " in line)
    with deployment.redis() as direct:
        direct.delete(f"{deployment.prefix}audit")
        direct.set(f"{deployment.prefix}audit", "not a stream")
    assert deployment.cli(monkeypatch, "keys", "retire", kid) == 2
    said = capsys.readouterr().err
    assert "authority: key retired, in effect on 0 of 0 running service processes; but its audit entry and " in said
    assert f"key-retired event were not written: {kid} (ResponseError" in said
    (logged,) = [r for r in caplog.records if r.name == "authority.keys" and "not written" in r.getMessage()]
    line = json.loads(logged.getMessage().partition("not written: ")[2])
    assert (line["event"], line["outcome"], line["kid"]) == ("key", "revoked", kid)
    with deployment.redis() as direct:
        direct.delete(f"{deployment.prefix}audit")
    assert deployment.cli(monkeypatch, "keys", "list") == 0
    assert any(row.startswith(kid) and " revoked " in row for row in capsys.readouterr().out.splitlines())


def test_past_max_age_a_set_is_dead_lettered_as_expired_and_what_follows_it_is_delivered(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The receiver fails every start (503): retried until AUTHORITY_EVENT_MAX_AGE_S, then dead-lettered and
    counted ``expired``; the session's revocation, behind it, is then delivered and counted ``delivered``.
    ``events tail`` prints both events, oldest first."""
    deployment = Deployment(redis_url, tmp_path, settings={"AUTHORITY_EVENT_MAX_AGE_S": "2"})
    with receiving() as receiver:
        receiver.failing = {SESSION_STARTED}
        deployment.settings |= receivers((receiver.url("portal"), "portal", []))
        with deployment.replica() as service:
            receiver.trust(service.jwks)
            (sid,) = open_sessions(service, 1)
            assert httpx.post(f"{service.base}/api/sys/sessions/{sid}/revoke", headers=service.staff()).is_success
            wait_for("the revocation", lambda: receiver.delivered("portal"), 60, service)
            metrics = httpx.get(f"{service.base}{METRICS}").text
    assert [(a.type, a.session) for a in receiver.arrivals] == [(SESSION_REVOKED, sid)]
    assert max(receiver.attempts.values()) > 1  # the start, tried again before it expired
    assert 'authority_events_total{outcome="expired",receiver="portal"} 1.0' in metrics
    assert 'authority_events_total{outcome="delivered",receiver="portal"} 1.0' in metrics
    assert deployment.cli(monkeypatch, "events", "dead") == 0
    (letter,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (letter["cause"], letter["event"]["type"], letter["detail"]) == (
        "expired",
        SESSION_STARTED,
        "last attempt: HTTP 503",
    )
    assert deployment.cli(monkeypatch, "events", "tail", "-n", "5") == 0
    tailed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["type"], e["session"]) for e in tailed] == [(SESSION_STARTED, sid), (SESSION_REVOKED, sid)]
    assert all(e["time"].endswith("Z") for e in tailed)


def test_sets_say_what_rfc_8417_rfc_9493_and_caep_ask(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A session started, then ended by staff, its token replayed, the key that signed the SETs retired in an
    emergency: the SETs' claims, as the receiver verified them."""
    deployment = Deployment(redis_url, tmp_path)
    with receiving() as receiver:
        deployment.settings = receivers((receiver.url("portal"), "portal", []))
        with deployment.replica() as service:
            receiver.trust(service.jwks)
            minted = httpx.get(f"{service.base}{STAFF}", params={"coworkerId": 42}, headers=service.staff())
            token = minted.json()["token"]
            sid = httpx.post(f"{service.base}{EXCHANGE}", json={"token": token}).json()["session_id"]
            revoked = httpx.post(f"{service.base}/api/sys/sessions/{sid}/revoke", headers=service.staff())
            assert revoked.status_code == 200
            wait_for("both SETs", lambda: len(receiver.delivered("portal")) == 2, 30, service)
            replayed = httpx.post(f"{service.base}{EXCHANGE}", json={"token": token})
            assert replayed.status_code == 401
            kid = receiver.arrivals[0].kid
            assert deployment.cli(monkeypatch, "keys", "retire", kid) == 0
            wait_for("the replay's and the key's SETs", lambda: len(receiver.delivered("portal")) == 4, 30, service)
    assert receiver.failures == []
    kinds = {a.type: a.claims for a in receiver.delivered("portal")}  # the key's own order is not the session's
    started, ended = kinds[SESSION_STARTED], kinds[SESSION_REVOKED]
    replay, retired = kinds[TOKEN_REPLAYED], kinds[KEY_RETIRED]
    subject = {
        "format": "complex",
        "session": {"format": "opaque", "id": sid},
        "user": {"format": "iss_sub", "iss": ISSUER, "sub": "42"},
        "tenant": {"format": "opaque", "id": "1"},
    }
    for claims in (started, ended):
        assert claims["iss"] == ISSUER
        assert claims["aud"] == "portal"
        assert claims["sub_id"] == subject
        assert isinstance(claims["iat"], int)
        assert claims["toe"] == claims["iat"]
        assert len(claims["jti"]) >= 22
    assert started["events"] == {
        SESSION_STARTED: {
            "event_timestamp": started["toe"],
            "act": {"sub": "7", "role": "operator", "iss": "urn:authority:demo-issuer"},
            "expires_at": started["events"][SESSION_STARTED]["expires_at"],
        }
    }
    assert ended["events"] == {
        SESSION_REVOKED: {
            "event_timestamp": ended["toe"],
            "initiating_entity": "admin",
            "reason_admin": {"en": "revoked by staff or its impersonator"},
        }
    }
    assert started["txn"] != ended["txn"]  # each its own request
    assert replay["sub_id"] == subject
    assert replay["events"] == {
        TOKEN_REPLAYED: {"event_timestamp": replay["toe"], "act": started["events"][SESSION_STARTED]["act"],
                         "session_revoked": False}
    }  # fmt: skip
    assert retired["sub_id"] == {"format": "opaque", "id": kid}
    assert retired["events"] == {
        KEY_RETIRED: {"event_timestamp": retired["toe"], "kid": kid, "jwks_uri": f"{ISSUER}/.well-known/jwks.json"}
    }
    assert {a.kid for a in receiver.arrivals if a.type == KEY_RETIRED} != {kid}  # signed by the key signing since
