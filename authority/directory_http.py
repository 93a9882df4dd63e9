"""The directory as the portal's own HTTP API (``docs/directory-api.yaml``): asked per lookup, briefly remembered.

Each mint asks the portal who the caller and the coworker are, so the portal is on the request path and everything
here is about keeping it from hurting that path, or being hurt by it:

- a deadline for the whole lookup (``AUTHORITY_DIRECTORY_TIMEOUT_S``, queueing for a connection included): a
  portal that hangs costs a mint that long, then a 503, never a pile of waiting requests;
- a short cache of answers, "not found" included (``AUTHORITY_DIRECTORY_CACHE_S``, ``..._NEGATIVE_CACHE_S``): a
  burst of mints asks the portal once, and a change there (the ``impersonation: false`` kill switch) is seen within
  that time; a ``fresh`` lookup (the exchange's re-check) is never answered from it, and refreshes it;
- one request per key at a time: fifty concurrent lookups of a coworker wait for the same answer, fresh or not;
- at most ``AUTHORITY_DIRECTORY_MAX_CONCURRENCY`` requests in flight to the portal from this process;
- an answer is read as a stream, uncompressed, and abandoned past ``AUTHORITY_DIRECTORY_MAX_ANSWER_BYTES``;
- no redirects followed, no proxy taken from the environment: the request goes where the setting says.

A portal that cannot answer (down, slow, 5xx, 401, a redirect, an answer that is not the contract's) is
``Unavailable`` (503 with ``Retry-After``): never cached, never guessed, logged once per cause while it lasts.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import TypeVar, cast
from urllib.parse import quote

import httpx
import msgspec

from authority.directory import CoworkerEntry, LocationEntry
from authority.outages import OutageLog
from authority.refusals import Unavailable
from authority.settings import Settings

Entry = TypeVar("Entry", LocationEntry, CoworkerEntry)
MAX_CACHED = 10_000  # answers kept at most: distinct lookups (an enumeration) cost memory only up to this
logger = logging.getLogger("authority")


class _Failure(msgspec.Struct, frozen=True):
    """Why the portal gave no answer: ``cause`` is stable (one outage per cause), ``detail`` is for the 503."""

    cause: str
    detail: str


class _Refused(Exception):
    """An answer read no further: too large, or encoded in a way we did not ask for."""

    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def segment(value: str) -> str:
    """``value`` as one path segment: every reserved character escaped, ``/`` included (a location is any string)."""
    return quote(value, safe="")


class HttpDirectory:
    """Lookups answered by the portal at ``base_url``; see the module docstring for how it is protected."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 1.0,
        cache_s: float = 5.0,
        negative_cache_s: float = 2.0,
        max_concurrency: int = 32,
        max_answer_bytes: int = 65_536,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self.negative_cache_s = negative_cache_s
        self.max_answer_bytes = max_answer_bytes
        self.requests = 0  # sent to the portal, for the curious (tests, benchmarks)
        self.outages = OutageLog(logging.getLogger("authority.outages"), clock=clock)
        self._clock = clock
        headers = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "authority"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.AsyncClient(
            headers=headers,
            verify=tls if tls is not None else True,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency),
            follow_redirects=False,
            trust_env=False,  # no HTTP(S)_PROXY, no .netrc: the directory is reached as configured, or not at all
        )
        self._slots = asyncio.Semaphore(max_concurrency)
        self._cache: dict[str, tuple[float, LocationEntry | CoworkerEntry | None]] = {}
        self._in_flight: dict[str, asyncio.Task[LocationEntry | CoworkerEntry | _Failure | None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpDirectory:
        """The directory the ``AUTHORITY_DIRECTORY_*`` settings describe; a TLS file that cannot be used stops the
        start with a ValueError naming its variable."""
        assert settings.directory_url is not None
        return cls(
            settings.directory_url,
            token=settings.directory_token,
            tls=tls_context(settings),
            timeout_s=settings.directory_timeout_s,
            cache_s=settings.directory_cache_s,
            negative_cache_s=settings.directory_negative_cache_s,
            max_concurrency=settings.directory_max_concurrency,
            max_answer_bytes=settings.directory_max_answer_bytes,
        )

    async def close(self) -> None:
        for task in self._in_flight.values():
            task.cancel()
        await self._client.aclose()

    async def location(self, location: str, *, fresh: bool = False) -> LocationEntry | None:
        if location in ("", ".", ".."):  # no location is named so: the path would mean another resource
            return None
        return await self._lookup(f"/locations/{segment(location)}", LocationEntry, location, fresh)

    async def coworker(self, location: str, coworker_id: int, *, fresh: bool = False) -> CoworkerEntry | None:
        if location in ("", ".", ".."):
            return None
        path = f"/locations/{segment(location)}/coworkers/{coworker_id}"
        return await self._lookup(path, CoworkerEntry, coworker_id, fresh)

    async def _lookup(self, path: str, kind: type[Entry], expected_id: str | int, fresh: bool) -> Entry | None:
        """The cached answer for ``path`` while it is fresh (unless ``fresh`` is asked); else the answer of the
        request in flight for it, started here if there is none. Its callers are shielded from each other: one that
        gives up does not cancel it."""
        cached = None if fresh else self._cache.get(path)
        if cached is not None and cached[0] > self._clock():
            return cast("Entry | None", cached[1])
        task = self._in_flight.get(path)
        if task is None:
            task = asyncio.create_task(self._ask(path, kind, expected_id))
            self._in_flight[path] = task
            task.add_done_callback(lambda _: self._in_flight.pop(path, None))
        outcome = await asyncio.shield(task)
        if isinstance(outcome, _Failure):
            raise Unavailable(outcome.detail)  # carries Retry-After
        return cast("Entry | None", outcome)

    async def _ask(self, path: str, kind: type[Entry], expected_id: str | int) -> Entry | _Failure | None:
        """One request to the portal: its answer (remembered), or why there is none (logged, not remembered)."""
        outcome = await self._request(path, kind, expected_id)
        if isinstance(outcome, _Failure):
            self.outages.failed(outcome.cause)
            return outcome
        self.outages.recovered()
        ttl = self.cache_s if outcome is not None else self.negative_cache_s
        if ttl > 0:
            self._remember(path, self._clock() + ttl, outcome)
        return outcome

    def _remember(self, path: str, until: float, entry: LocationEntry | CoworkerEntry | None) -> None:
        self._cache.pop(path, None)  # re-inserted last: when full, the oldest answers go first
        if len(self._cache) >= MAX_CACHED:
            now = self._clock()
            for stale in [k for k, (expires, _) in self._cache.items() if expires <= now]:
                del self._cache[stale]
            while len(self._cache) >= MAX_CACHED:
                del self._cache[next(iter(self._cache))]
        self._cache[path] = (until, entry)

    async def _request(self, path: str, kind: type[Entry], expected_id: str | int) -> Entry | _Failure | None:
        url = f"{self.base_url}{path}"
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                self.requests += 1
                status, body = await self._get(url)
        except (TimeoutError, httpx.TimeoutException):
            return _Failure("directory: timeout", f"the portal's directory did not answer within {self.timeout_s:g} s")
        except (httpx.HTTPError, OSError) as exc:  # refused, reset, TLS handshake failed, a protocol error...
            name = type(exc).__name__
            return _Failure(f"directory: {name}", f"the portal's directory cannot be reached ({name})")
        except _Refused as exc:
            return exc.failure
        if status == 404:
            return None
        if status != 200:
            return _Failure(f"directory: HTTP {status}", f"the portal's directory answered HTTP {status}{_why(status)}")
        try:
            entry = msgspec.json.decode(body, type=kind)
        except msgspec.DecodeError:
            return _Failure("directory: malformed answer", "the portal's directory answered outside its contract")
        if entry.id != expected_id:
            return _Failure("directory: wrong entry", "the portal's directory answered for another id than asked")
        return entry

    async def _get(self, url: str) -> tuple[int, bytes]:
        """Status and body of ``GET url``; the body is read only for a 200, and never past the cap."""
        async with self._client.stream("GET", url) as response:
            if response.status_code != 200:
                return response.status_code, b""
            encoding = response.headers.get("content-encoding", "identity").strip().lower()
            if encoding != "identity":  # asked for identity: a compressed answer could expand past any cap
                detail = f"the portal's directory answered in {encoding}, which was not asked for"
                raise _Refused(_Failure("directory: malformed answer", detail))
            length = response.headers.get("content-length", "")
            if length.isdigit() and int(length) > self.max_answer_bytes:
                raise _Refused(self._oversized())
            body = bytearray()
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > self.max_answer_bytes:
                    raise _Refused(self._oversized())
            return 200, bytes(body)

    def _oversized(self) -> _Failure:
        return _Failure(
            "directory: oversized answer",
            f"the portal's directory answered more than AUTHORITY_DIRECTORY_MAX_ANSWER_BYTES={self.max_answer_bytes}",
        )


def _why(status: int) -> str:
    if status in (401, 403):
        return ": it refused our credentials (AUTHORITY_DIRECTORY_TOKEN, AUTHORITY_DIRECTORY_TLS_*)"
    if 300 <= status < 400:
        return ": a redirect, which is not followed (is AUTHORITY_DIRECTORY_URL the API's own URL?)"
    return ""


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS client context the settings ask for: a CA of the operator's, a client certificate, or the defaults
    (None). A file that cannot be used is a ValueError naming its variable, at start."""
    if settings.directory_tls_ca is None and settings.directory_tls_cert is None:
        return None
    try:
        context = (
            ssl.create_default_context(cafile=settings.directory_tls_ca)
            if settings.directory_tls_ca is not None
            else httpx.create_ssl_context()
        )
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"AUTHORITY_DIRECTORY_TLS_CA={settings.directory_tls_ca}: cannot be used ({exc})") from None
    if settings.directory_tls_cert is not None:
        try:
            context.load_cert_chain(settings.directory_tls_cert, settings.directory_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"AUTHORITY_DIRECTORY_TLS_CERT={settings.directory_tls_cert} with AUTHORITY_DIRECTORY_TLS_KEY="
                f"{settings.directory_tls_key}: cannot be used ({exc})"
            ) from None
    return context
