"""The documentation under ``/schema`` works offline: the page, Swagger UI's files (from the pinned package) and the
OpenAPI document all come from the service itself, and nothing in them points anywhere else. ``AUTHORITY_PUBLIC_SCHEMA``
and ``AUTHORITY_PUBLIC_METRICS`` take ``/schema`` and ``/metrics`` off the port."""

from __future__ import annotations

import hashlib
import re
from html.parser import HTMLParser
from typing import Any

import pytest
from litestar.testing import TestClient

from authority import docs_ui
from tests.helpers import HEALTHZ, METRICS, SCHEMA, STAFF, Stack, assert_problem

PAGE = "/schema"
# An address with a scheme and a host (http://, https://, wss://, ...): somewhere other than this service.
ELSEWHERE = re.compile(r"\b[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# swagger-ui-dist 5.31.0 on npm, byte for byte: a new package release changes these on purpose, after a look.
SWAGGER_UI_SHA256 = {
    "swagger-ui-bundle.js": "93b7b0862a80e2786f85b560be7693c2344354ffa7e7e224f850a54349724c31",
    "swagger-ui.css": "9e576f8322132c76949da47f9bb53c891373c303ea3a761ff548ffc9de50a98c",
}


class References(HTMLParser):
    """Every URL an HTML page makes the browser load or link to, with the tag and attribute naming it."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in {"src", "href", "action", "srcset", "poster", "data", "formaction", "manifest"} and value:
                self.found.append((tag, name, value))


def references(page: str) -> list[tuple[str, str, str]]:
    parser = References()
    parser.feed(page)
    return parser.found


def fetched(found: list[tuple[str, str, str]]) -> list[str]:
    """What the browser fetches for the page: its scripts, stylesheets and icon (a ``data:`` URL is no fetch)."""
    return [url for _, _, url in found if not url.startswith("data:")]


def test_the_page_names_nothing_outside_the_service(client: TestClient[Any]) -> None:
    response = client.get(PAGE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    assert not ELSEWHERE.search(page), ELSEWHERE.search(page)
    assert "fonts" not in page.lower()
    found = references(page)
    assert {(tag, attr) for tag, attr, _ in found} == {("link", "href"), ("script", "src")}
    assert all(url.startswith(("/schema/", "data:")) for _, _, url in found), found  # never //host
    assert any(tag == "link" and url.startswith("data:") for tag, _, url in found)  # the icon: no request at all


def test_every_file_the_page_loads_is_served_with_its_type(client: TestClient[Any]) -> None:
    urls = fetched(references(client.get(PAGE).text))
    assert len(urls) == 3  # Swagger UI's stylesheet and script, and the script that starts it
    types = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert response.headers["content-type"] == types[url[url.rindex(".") :]], url
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "max-age" in response.headers["cache-control"]


def test_the_stylesheet_loads_no_font_or_image_from_elsewhere(client: TestClient[Any]) -> None:
    """Its icons are data: URLs; it imports nothing (their SVG carries the xmlns http://www.w3.org/2000/svg, a
    name, not a fetch)."""
    css = client.get(f"{docs_ui.ASSETS_URL}/swagger-ui.css").text
    assert "@import" not in css
    assert "@font-face" not in css
    urls = re.findall(r"url\(\s*['\"]?([^'\")]*)", css)
    assert urls
    assert all(url.startswith("data:") for url in urls), [u for u in urls if not u.startswith("data:")]


def test_swagger_ui_is_the_pinned_release_byte_for_byte(client: TestClient[Any]) -> None:
    """The files served are the package's, and the package's are swagger-ui-dist's: integrity the CDN never had."""
    for name, digest in SWAGGER_UI_SHA256.items():
        body = client.get(f"{docs_ui.ASSETS_URL}/{name}").content
        assert body == (docs_ui.SWAGGER_UI / name).read_bytes()
        assert hashlib.sha256(body).hexdigest() == digest, f"{name}: not Swagger UI 5.31.0"
    assert docs_ui.SWAGGER_UI.name == "swagger-ui-5.31.0"


def test_the_start_script_loads_only_our_document_and_no_validator_badge(client: TestClient[Any]) -> None:
    """Swagger UI's online-validator badge would send the document's address to validator.swagger.io."""
    script = client.get(f"{docs_ui.ASSETS_URL}/{docs_ui.START_SCRIPT}").text
    assert not ELSEWHERE.search(script)
    assert f"url: '{SCHEMA}'" in script
    assert "validatorUrl: null" in script
    document = client.get(SCHEMA)
    assert document.status_code == 200
    assert document.json()["openapi"].startswith("3.1")  # what Swagger UI 5 renders (4.x could not)


def test_the_browser_is_told_to_load_nothing_from_elsewhere(client: TestClient[Any]) -> None:
    """Defence in depth: should a page or script ever name another origin, the browser refuses it."""
    policy = client.get(PAGE).headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == directives["style-src"] == "'self'"  # nothing inline, no eval
    assert directives["connect-src"] == "'self'"
    assert directives["img-src"] == "'self' data:"
    assert directives["frame-ancestors"] == "'none'"
    assert not ELSEWHERE.search(policy)


def test_only_the_files_the_page_uses_are_reachable(client: TestClient[Any]) -> None:
    """The package also holds a demo index.html pointing at a public petstore, source maps and other builds."""
    for name in ("index.html", "swagger-initializer.js", "swagger-ui-bundle.js.map", "..%2F__init__.py", "nope.js"):
        assert_problem(client.get(f"{docs_ui.ASSETS_URL}/{name}"), 404, "not-found")


def test_the_docs_need_no_bearer_and_are_no_operation_of_the_api(client: TestClient[Any]) -> None:
    for url in [PAGE, SCHEMA, *fetched(references(client.get(PAGE).text))]:
        assert client.get(url).status_code == 200, url  # no Authorization header
    paths = client.get(SCHEMA).json()["paths"]
    assert not [path for path in paths if path.startswith("/schema")]
    assert_problem(client.get(STAFF, params={"coworkerId": 42}), 401, "unauthenticated")  # the API still needs one


@pytest.mark.parametrize(
    ("setting", "off", "on"),
    [("public_schema", [PAGE, SCHEMA, f"{docs_ui.ASSETS_URL}/swagger-ui.css",
                        f"{docs_ui.ASSETS_URL}/{docs_ui.START_SCRIPT}"], [METRICS]),
     ("public_metrics", [METRICS], [PAGE, SCHEMA])],
)  # fmt: skip
def test_turned_off_a_path_answers_like_any_unknown_path(stack: Stack, setting: str, off: list[str], on: list[str]
                                                        ) -> None:  # fmt: skip
    with stack.client(**{setting: False}) as client:
        for url in off:
            assert_problem(client.get(url), 404, "not-found")
        for url in [*on, HEALTHZ]:
            assert client.get(url).status_code == 200, url


def test_without_metrics_the_document_does_not_offer_them(stack: Stack) -> None:
    with stack.client(public_metrics=False) as client:
        assert METRICS not in client.get(SCHEMA).json()["paths"]
