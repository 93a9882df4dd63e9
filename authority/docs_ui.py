"""The API documentation under ``/schema``: Swagger UI whose files come from a pinned package and are served by the
service itself, so the page works without internet and loads nothing from anywhere else.

The page references only this service: Swagger UI's stylesheet and script from ``swagger-ui-bundle-v2`` (its
version is Swagger UI's), a small start script of ours (a separate file, so the Content-Security-Policy needs no
inline script), and the OpenAPI document itself at ``/schema/openapi.json``. Only the files the page uses are served,
by name: the package's own ``index.html`` (which points at a public petstore) and source maps stay unpublished.
``validatorUrl: null`` turns off Swagger UI's badge, which would send the document's address to validator.swagger.io.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Annotated, Any

from litestar import Request, Router, get
from litestar.datastructures import CacheControlHeader, ResponseHeader
from litestar.exceptions import NotFoundException
from litestar.openapi.plugins import OpenAPIRenderPlugin
from litestar.params import PathParameter
from litestar.response import File
from swagger_ui_bundle import swagger_ui_path  # type: ignore[import-untyped]  # it ships no py.typed

PATH = "/schema"
SPEC_URL = f"{PATH}/openapi.json"  # Litestar serves the document there (other tools and the fuzzer read it)
ASSETS_URL = f"{PATH}/assets"
SWAGGER_UI = Path(swagger_ui_path)  # .../vendor/swagger-ui-<version>
START_SCRIPT = "authority-docs.js"
# The files the page loads, by the name it uses; nothing else of the package is reachable.
ASSETS = {
    "swagger-ui.css": "text/css",  # Litestar adds "; charset=utf-8" to a text type
    "swagger-ui-bundle.js": "text/javascript",
}
# Nothing but this service: a browser refuses whatever a page or script would fetch from elsewhere, and any inline
# script. Swagger UI's stylesheet draws its icons as data: images; "Try it out" calls this service. (Checked by hand
# in headless Chromium: every operation open, requests tried, no violation.)
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# The package is pinned: its files change only with a new release of the service (a day is long enough).
CACHE = CacheControlHeader(public=True, max_age=86400)

_START = f"""\
"use strict";
// Swagger UI over this service's own OpenAPI document (see authority/docs_ui.py).
window.addEventListener("load", () => {{
  window.ui = SwaggerUIBundle({{
    url: {SPEC_URL!r},
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
  }});
}});
""".encode()


class SwaggerUI(OpenAPIRenderPlugin):
    """The page at ``/schema``; its files are served by the handlers ``router`` carries. The icon is ``data:,``: a
    browser asks for none."""

    def __init__(self) -> None:
        super().__init__(path="/")

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(f"{openapi_schema['info']['title']} API")
        return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{ASSETS_URL}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_URL}/swagger-ui-bundle.js"></script>
<script src="{ASSETS_URL}/{START_SCRIPT}"></script>
</body>
</html>
""".encode()


@get(f"/assets/{START_SCRIPT}", media_type="text/javascript", cache_control=CACHE, sync_to_thread=False)
def start_script() -> bytes:
    return _START


@get("/assets/{name:str}", cache_control=CACHE, sync_to_thread=False)
def asset(name: Annotated[str, PathParameter()]) -> File:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise NotFoundException(f"no asset {name!r}")
    return File(SWAGGER_UI / name, media_type=media_type, content_disposition_type="inline")


def router() -> Router:
    """The router Litestar puts the page and the OpenAPI document on, with the asset handlers; none of it is an
    operation of the API, and anyone may read it (the app's bearer middleware leaves ``/schema`` out). One per app:
    Litestar changes a router it registers."""
    return Router(
        PATH,
        route_handlers=[start_script, asset],
        include_in_schema=False,
        response_headers=[
            ResponseHeader(name="Content-Security-Policy", value=CONTENT_SECURITY_POLICY),
            ResponseHeader(name="X-Content-Type-Options", value="nosniff"),
        ],
    )
