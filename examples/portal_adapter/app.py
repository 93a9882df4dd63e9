"""The directory API (``docs/directory-api.yaml``) as a Litestar app over a ``Source``.

The path is split by hand, on the raw path: a location is any string, so ``a/b`` arrives as ``a%2Fb``, and a
router that decodes before it matches would read ``/locations/a%2Fb`` as two segments (or worse,
``/locations/x%2Fcoworkers%2F5`` as a coworker).
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote

from litestar import Litestar, Request, Response, get
from litestar.params import PathParameter

from examples.portal_adapter.sources import Source

COWORKER_ID = re.compile(r"-?(0|[1-9][0-9]*)")  # the id as the authority writes an int: nothing else names one


def _not_found(what: str) -> Response[Any]:
    return Response({"detail": f"no such {what}"}, status_code=404)


def _authorized(header: str | None, token: str) -> bool:
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def create_app(source: Source, token: str | None = None) -> Litestar:
    """The two lookups of ``source`` over HTTP; with ``token``, only for callers that present it as a bearer."""

    @get("/locations/{rest:path}", sync_to_thread=True)  # a thread: a lookup may be a database query
    def lookup(request: Request[Any, Any, Any], rest: Annotated[Path, PathParameter()]) -> Response[Any]:
        del rest  # decoded: the raw path is read instead (module docstring)
        if token is not None and not _authorized(request.headers.get("authorization"), token):
            return Response(
                {"detail": "a valid bearer token is required"}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
            )
        raw: bytes = request.scope["raw_path"]
        parts = [unquote(part) for part in raw.decode("ascii", "replace").removeprefix("/locations/").split("/")]
        if len(parts) == 1:
            place = source.location(parts[0])
            return _not_found("location") if place is None else Response(place)
        if len(parts) == 3 and parts[1] == "coworkers" and COWORKER_ID.fullmatch(parts[2]):
            coworker = source.coworker(parts[0], int(parts[2]))
            return _not_found("coworker in this location") if coworker is None else Response(coworker)
        return _not_found("resource")

    @get("/healthz", sync_to_thread=False)
    def healthz() -> str:
        return "ok"

    return Litestar(route_handlers=[lookup, healthz], logging_config=None)  # uvicorn's logging, no thread of its own
