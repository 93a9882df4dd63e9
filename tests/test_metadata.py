"""Authorization server metadata (RFC 8414) at ``/.well-known/oauth-authorization-server``, the same document at
``/.well-known/openid-configuration``: checked by Authlib's RFC 8414 validator, against the app's own route table,
and for names of our own that cannot collide with registered ones."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata  # type: ignore[import-untyped]  # Authlib: no types
from authlib.oidc.discovery import OpenIDProviderMetadata  # type: ignore[import-untyped]
from litestar.exceptions import NotFoundException
from litestar.testing import TestClient

from tests.helpers import DISCOVERY, JWKS, METADATA, Stack

ISSUER = "https://authority.example"
OWN = "authority_"  # the prefix of every name of ours
# Every name registered for this document by the RFCs that concern us: RFC 8414 section 2 (and 2.1), RFC 9449
# section 5.1 (DPoP), RFC 8705 section 3.3 and 5 (mutual TLS). Anything else in the document must carry OWN.
REGISTERED = {
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "jwks_uri",
    "registration_endpoint",
    "scopes_supported",
    "response_types_supported",
    "response_modes_supported",
    "grant_types_supported",
    "token_endpoint_auth_methods_supported",
    "token_endpoint_auth_signing_alg_values_supported",
    "service_documentation",
    "ui_locales_supported",
    "op_policy_uri",
    "op_tos_uri",
    "revocation_endpoint",
    "revocation_endpoint_auth_methods_supported",
    "revocation_endpoint_auth_signing_alg_values_supported",
    "introspection_endpoint",
    "introspection_endpoint_auth_methods_supported",
    "introspection_endpoint_auth_signing_alg_values_supported",
    "code_challenge_methods_supported",
    "signed_metadata",
    "dpop_signing_alg_values_supported",
    "tls_client_certificate_bound_access_tokens",
    "mtls_endpoint_aliases",
}
# Every URL the document publishes: the method it is called with and the route (by name) that must answer it.
ENDPOINTS = {
    "token_endpoint": ("POST", "token"),
    "jwks_uri": ("GET", "jwks"),
    "introspection_endpoint": ("POST", "introspect"),
    "authority_impersonation_endpoint": ("GET", "impersonate"),
    "authority_team_impersonation_endpoint_template": ("GET", "team-impersonate"),
    "authority_exchange_endpoint": ("POST", "exchange"),
    "authority_session_revocation_endpoint_template": ("POST", "revoke"),
}
SAMPLES = {"coworkerId": "42", "sid": "s" * 22}  # what a caller puts into the URI templates


@pytest.fixture
def https(make_stack: Callable[..., Stack], monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient[Any]]:
    """A service with a production-shaped issuer; Authlib's https checks left on."""
    monkeypatch.delenv("AUTHLIB_INSECURE_TRANSPORT", raising=False)
    with make_stack(issuer=ISSUER).client() as client:
        yield client


def document(client: TestClient[Any], path: str = METADATA) -> dict[str, Any]:
    response = client.get(path)
    assert response.status_code == 200, response.text
    meta: dict[str, Any] = response.json()
    return meta


def test_authlib_validates_the_rfc_8414_document(https: TestClient[Any]) -> None:
    meta = document(https)
    AuthorizationServerMetadata(meta).validate()
    assert meta["grant_types_supported"] == ["urn:ietf:params:oauth:grant-type:token-exchange"]
    # "none": an impersonation token is redeemed without client authentication (flow a); the one-step flow (b)
    # needs one of the others
    assert meta["token_endpoint_auth_methods_supported"] == ["none", "client_secret_basic", "private_key_jwt"]
    assert meta["introspection_endpoint_auth_methods_supported"] == ["Bearer"]  # a trusted issuer's bearer
    assert {"ES256", "EdDSA", "PS256", "RS256"} == set(meta["dpop_signing_alg_values_supported"])
    assert "none" not in meta["token_endpoint_auth_signing_alg_values_supported"]


def test_no_authorization_endpoint_is_promised(https: TestClient[Any]) -> None:
    """``response_types_supported`` is REQUIRED (section 2) and may not be empty (3.2: "Claims with zero elements
    MUST be omitted"): ``["none"]``, and no ``authorization_endpoint``, no grant that needs one."""
    meta = document(https)
    assert meta["response_types_supported"] == ["none"]
    assert "authorization_endpoint" not in meta
    assert not {"authorization_code", "implicit"} & set(meta["grant_types_supported"])
    assert all(value != [] for value in meta.values())


@pytest.mark.parametrize("issuer", [ISSUER, "https://Id.Example.COM:8443/tenant-1", "http://127.0.0.1:8000"])
def test_issuer_is_authority_issuer_exactly(make_stack: Callable[..., Stack], issuer: str) -> None:
    """Character for character, whatever its case, port or path; every URL is the issuer followed by a path."""
    with make_stack(issuer=issuer).client() as client:
        meta = document(client)
    assert meta["issuer"] == issuer
    for name in ENDPOINTS:
        assert meta[name].startswith(issuer + "/"), name
    AuthorizationServerMetadata(meta).validate()  # a path, and plain http on loopback (the demo), pass too


def test_every_url_resolves_to_its_route(https: TestClient[Any]) -> None:
    meta = document(https)
    published = {name for name, value in meta.items() if isinstance(value, str) and value.startswith(ISSUER + "/")}
    assert published == ENDPOINTS.keys(), "a URL in the document that this test does not check, or one gone"
    router = https.app.asgi_router
    for name, (method, handler) in ENDPOINTS.items():
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLES[m.group(1)], meta[name].removeprefix(ISSUER))
        try:
            routed = router.handle_routing(path=path, method=method)[1].name
        except NotFoundException:
            routed = None
        assert routed == handler, (name, path)
    templates = {name: meta[name].removeprefix(ISSUER) for name in meta if name.endswith("_template")}
    paths = https.get("/schema/openapi.json").json()["paths"]
    assert all(template in paths for template in templates.values()), templates  # as the OpenAPI document writes it


def test_both_paths_serve_the_same_document_with_the_jwks_cache_lifetime(client: TestClient[Any]) -> None:
    rfc8414, oidc = client.get(METADATA), client.get(DISCOVERY)
    assert rfc8414.content == oidc.content
    for response in (rfc8414, oidc):
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert response.headers["cache-control"] == "public, max-age=300"  # AUTHORITY_JWKS_MAX_AGE_S


@pytest.mark.parametrize("path", [METADATA, DISCOVERY])
def test_head_answers_with_the_get_headers_and_no_body(client: TestClient[Any], path: str) -> None:
    got, head = client.get(path), client.head(path)
    assert (head.status_code, head.content) == (200, b"")
    for name in ("content-type", "content-length", "cache-control"):
        assert head.headers.get(name) == got.headers.get(name), name


def test_names_not_registered_carry_our_prefix(client: TestClient[Any]) -> None:
    meta = document(client)
    ours = {name for name in meta if name not in REGISTERED}
    assert all(name.startswith(OWN) for name in ours), ours - {n for n in ours if n.startswith(OWN)}
    assert ours == {
        "authority_impersonation_endpoint",
        "authority_team_impersonation_endpoint_template",
        "authority_exchange_endpoint",
        "authority_session_revocation_endpoint_template",
        "authority_access_token_audience",
        "authority_token_signing_alg_values_supported",
    }
    assert "revocation_endpoint" not in meta  # ours is not RFC 7009's: it ends a session named in its path
    assert meta["authority_access_token_audience"] == "portal-api"
    keys = client.get(JWKS).json()["keys"]
    assert meta["authority_token_signing_alg_values_supported"] == sorted({key["alg"] for key in keys})


def test_openid_configuration_is_oauth_metadata_not_an_openid_provider_document(https: TestClient[Any]) -> None:
    """We issue no ID tokens, so the OpenID-only REQUIRED members are left out (see ``routes.discovery``): an
    OpenID Connect validator refuses the document, and the refusal is the first of those members."""
    meta = document(https, DISCOVERY)
    AuthorizationServerMetadata(meta).validate()
    assert not {"subject_types_supported", "id_token_signing_alg_values_supported", "userinfo_endpoint"} & meta.keys()
    with pytest.raises(ValueError, match='"subject_types_supported" is required'):
        OpenIDProviderMetadata(meta).validate()
