"""One SET pushed to one receiver (RFC 8935), and what its answer means.

RFC 8935 section 2: the SET is the body of a POST, ``Content-Type: application/secevent+jwt``; 202 means the
receiver has it. Section 2.3: a receiver that judges the SET invalid answers 400 with a JSON error body (``err``
and ``description``): that is its verdict on this SET, and sending it again would get the same, so it is refused
for good. Anything else (a redirect, 401, 5xx, a 400 without such a body — a proxy's, say —, a timeout, a TLS or
connection failure) says nothing about the SET: it is tried again later.

A bad receiver must not hurt the service: the whole exchange, answer included, has one deadline; redirects are
not followed; proxies from the environment are not used; the answer is read no further than ``MAX_ANSWER_BYTES``.
And a failure of any kind is a failed attempt, never an exception: one that escaped would end the courier's
holding, which would start again at the same entry, and fail again, forever. A URL the client cannot use at all is
refused at start instead (``unusable``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx
import msgspec

MEDIA_TYPE = "application/secevent+jwt"
MAX_ANSWER_BYTES = 16_384  # an RFC 8935 error body is a few hundred bytes; nothing else in an answer is read


@dataclass(frozen=True)
class Delivered:
    pass


@dataclass(frozen=True)
class Refused:
    """RFC 8935 section 2.3: the receiver refused this SET (``err``: its error code, ``description``: its words)."""

    err: str
    description: str


@dataclass(frozen=True)
class Failed:
    """Nothing said about the SET: try again later. ``cause`` names the failure for logs (never the SET)."""

    cause: str


Verdict = Delivered | Refused | Failed


class _ErrorBody(msgspec.Struct, frozen=True):
    err: str
    description: str = ""


def verdict(status: int, content_type: str, body: bytes) -> Verdict:
    """What an answer means (RFC 8935 sections 2.2 and 2.3)."""
    if status == 202:
        return Delivered()
    if status == 400 and content_type.partition(";")[0].strip().lower() == "application/json":
        try:
            error = msgspec.json.decode(body, type=_ErrorBody)
        except msgspec.DecodeError:
            pass
        else:
            if error.err:
                return Refused(error.err[:100], error.description[:500])
    return Failed(f"HTTP {status}")


def unusable(url: str) -> str | None:
    """Why the HTTP client could not POST to ``url`` (a URL the settings' checks let through), or None."""
    try:
        port = httpx.URL(url).port
    except httpx.InvalidURL as exc:
        return str(exc)
    if port is not None and not 0 < port < 65536:
        return f"port {port} is out of range"
    return None


class Pusher:
    """One HTTP client for every receiver: ``timeout_s`` bounds each whole POST, connecting and the answer
    included (a receiver that trickles its answer is cut off like one that never answers)."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False, http2=False
        )

    async def push(self, url: str, token: str, bearer: str | None) -> Verdict:
        # identity: an answer is read as sent, so a compressed one cannot expand past the cap
        headers = {"Content-Type": MEDIA_TYPE, "Accept": "application/json", "Accept-Encoding": "identity"}
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._client.stream("POST", url, content=token.encode(), headers=headers) as answer:
                    body = b""
                    async for chunk in answer.aiter_raw():
                        body += chunk
                        if len(body) > MAX_ANSWER_BYTES:
                            break
                    return verdict(answer.status_code, answer.headers.get("content-type", ""), body)
        except TimeoutError:
            return Failed("timeout")
        except httpx.HTTPError as exc:
            return Failed(type(exc).__name__)
        except Exception as exc:  # any failure is a failed attempt (module docstring)
            return Failed(f"{type(exc).__name__}: {exc}"[:200])

    async def close(self) -> None:
        await self._client.aclose()
