"""Configuration from ``AUTHORITY_*`` variables: typed, strict, and every mistake named at start."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import uvicorn
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwt.algorithms import OKPAlgorithm

from authority import demo, services
from authority.app import create_app
from authority.embedded import free_port
from authority.keys import FileKeyStore, KeyStoreError
from authority.keys.keyring import new_record
from authority.services import RefusedStart
from authority.settings import Settings, SettingsError, TrustedIssuer, load
from tests.helpers import BIN, EXCHANGE, PASSPHRASE, ROOT, the_images_cmd


def issuer(**fields: Any) -> dict[str, Any]:
    return {"issuer": "https://portal.example", "audiences": ["authority"], "jwks_url": "https://portal.example/jwks",
            **fields}  # fmt: skip


def test_defaults() -> None:
    s = load({})
    assert (s.host, s.port, s.redis_url, s.redis_prefix) == ("127.0.0.1", 8000, None, "authority:")
    assert (s.key_alg, s.key_passphrase, s.keys_dir, s.demo) == ("ES256", None, "keys", False)
    assert (s.impersonation_ttl_s, s.session_ttl_s, s.session_max_ttl_s) == (60, 900, 3600)
    assert (s.clock_skew_s, s.jwks_max_age_s, s.session_audience) == (10, 300, "portal-api")
    assert s.trusted_issuers == []
    assert s.public_issuer == "http://127.0.0.1:8000"
    assert s.exchange_audience == f"http://127.0.0.1:8000{EXCHANGE}"


def test_values_are_parsed_from_strings() -> None:
    s = load({"AUTHORITY_PORT": "9000", "AUTHORITY_REDIS_TIMEOUT_S": "0.25", "AUTHORITY_KEY_ALG": "ES256",
                      "AUTHORITY_IMPERSONATION_TTL_S": "30", "AUTHORITY_ISSUER": "https://auth.example"})  # fmt: skip
    assert (s.port, s.redis_timeout_s, s.key_alg, s.impersonation_ttl_s) == (9000, 0.25, "ES256", 30)
    assert s.public_issuer == "https://auth.example"


@pytest.mark.parametrize("issuer", ["https://auth.example/", "https://auth.example/tenant/", ""])
def test_an_issuer_is_used_as_typed_or_refused(issuer: str) -> None:
    """Never silently re-spelled: a consumer configured with the issuer as typed would refuse every token."""
    with pytest.raises(SettingsError, match="without a trailing '/'"):
        load({"AUTHORITY_ISSUER": issuer})


@pytest.mark.parametrize(
    "issuer",
    ["authority.example", "/authority", "ftp://authority.example", "https:authority.example", "https:///tenant",
     "https://authority.example?tenant=1", "https://authority.example#top", "https://user:pw@authority.example",
     "https://authority.example:port", "https://[::1"],
)  # fmt: skip
def test_an_issuer_that_is_not_an_absolute_url_is_refused_naming_the_variable(issuer: str) -> None:
    """Every token's iss and the base of every published URL: a host name alone, a path, another scheme, a query,
    credentials were all accepted, and became the iss of every token."""
    with pytest.raises(SettingsError) as refused:
        load({"AUTHORITY_ISSUER": issuer})
    assert str(refused.value).splitlines() == [
        f"AUTHORITY_ISSUER={issuer!r} must be an absolute https URL (https://host[:port][/path]), without query, "
        "fragment or credentials: it is the iss of every token and the base of every URL published"
    ]


@pytest.mark.parametrize(
    "issuer", ["http://authority.example", "http://10.0.0.5:8000", "http://authority.example.com/t"]
)
def test_a_plain_http_issuer_is_refused_outside_loopback_and_demo(issuer: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load({"AUTHORITY_ISSUER": issuer})
    assert str(refused.value).splitlines() == [
        f"AUTHORITY_ISSUER={issuer!r} must be https: plain http only on a loopback address or a .test or .localhost "
        "name (and anywhere under --demo)"
    ]
    assert load({"AUTHORITY_ISSUER": issuer}, demo=True).issuer == issuer  # a trial on a private network


@pytest.mark.parametrize(
    "issuer",
    ["https://authority.example", "https://authority.example:8443/tenant", "http://127.0.0.1:8000", "http://[::1]:8000",
     "http://localhost:8000", "http://authority.test", "http://app.localhost"],
)  # fmt: skip
def test_an_https_issuer_or_a_local_http_one_is_accepted_as_typed(issuer: str) -> None:
    assert load({"AUTHORITY_ISSUER": issuer}).public_issuer == issuer


def test_a_plain_http_issuer_stops_the_service_in_one_line(tmp_path: Path) -> None:
    """At the entry point granian and uvicorn load: one line naming the variable, no traceback, exit 2."""
    env = serving_env(tmp_path, "redis://127.0.0.1:1/0", "never:", free_port(), AUTHORITY_KEY_PASSPHRASE=PASSPHRASE,
                      AUTHORITY_ISSUER="http://authority.example.com")  # fmt: skip
    command = [str(BIN / "python"), "-c", "import authority.asgi"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        "authority: AUTHORITY_ISSUER='http://authority.example.com' must be https: plain http only on a loopback "
        "address or a .test or .localhost name (and anywhere under --demo)"
    ]


def test_overrides_win_over_the_environment() -> None:
    assert load({"AUTHORITY_PORT": "9000"}, port=9100).port == 9100
    assert load({}, demo=True).demo is True


def test_other_variables_are_ignored() -> None:
    s = load({"PATH": "/bin", "AUTHORITY_TEST_REDIS_URL": "redis://x", "AUTHORITY_TEST_ANYTHING": "1",
                      "AUTHORITYPORT": "1"})  # fmt: skip
    assert s == load({})


@pytest.mark.parametrize(
    ("name", "value"),
    [("AUTHORITY_PORT", "abc"), ("AUTHORITY_PORT", "0"), ("AUTHORITY_PORT", "65536"),
     ("AUTHORITY_IMPERSONATION_TTL_S", "601"), ("AUTHORITY_IMPERSONATION_TTL_S", "4"),
     ("AUTHORITY_SESSION_TTL_S", "0"), ("AUTHORITY_CLOCK_SKEW_S", "-1"), ("AUTHORITY_REDIS_TIMEOUT_S", "0"),
     ("AUTHORITY_KEY_ALG", "HS256"), ("AUTHORITY_KEY_ALG", "none"), ("AUTHORITY_REDIS_PREFIX", "a b"),
     ("AUTHORITY_MAX_BODY_BYTES", "1"), ("AUTHORITY_KEY_STORE", "s3"), ("AUTHORITY_KEY_ROTATION_S", "59")],
)  # fmt: skip
def test_a_bad_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: "):
        load({name: value})


def test_schema_and_metrics_are_served_unless_turned_off() -> None:
    assert (load({}).public_schema, load({}).public_metrics) == (True, True)
    s = load({"AUTHORITY_PUBLIC_SCHEMA": "false", "AUTHORITY_PUBLIC_METRICS": "0"})
    assert (s.public_schema, s.public_metrics) == (False, False)
    s = load({"AUTHORITY_PUBLIC_SCHEMA": "True", "AUTHORITY_PUBLIC_METRICS": "1"})
    assert (s.public_schema, s.public_metrics) == (True, True)


@pytest.mark.parametrize("name", ["AUTHORITY_PUBLIC_SCHEMA", "AUTHORITY_PUBLIC_METRICS"])
@pytest.mark.parametrize("value", ["off", "yes", "", "2"])
def test_a_public_path_is_turned_on_or_off_by_true_or_false_only(name: str, value: str) -> None:
    """One line, naming the variable and what it takes: an operator who wrote "off" knows what to write instead."""
    with pytest.raises(SettingsError) as refused:
        load({name: value})
    assert re.fullmatch(rf"{name}: .* \(one of true, false\)", str(refused.value)), str(refused.value)


def test_unknown_variable_is_refused() -> None:
    with pytest.raises(SettingsError, match=r"^unknown variable AUTHORITY_FOO$"):
        load({"AUTHORITY_FOO": "1"})
    with pytest.raises(SettingsError, match=r"^unknown variable AUTHORITY_SESION_TTL_S$"):
        load({"AUTHORITY_SESION_TTL_S": "60"})


@pytest.mark.parametrize("value", ["1", "true", "0", ""])
def test_demo_is_never_chosen_by_the_environment(value: str) -> None:
    with pytest.raises(SettingsError, match="--demo"):
        load({"AUTHORITY_DEMO": value})


def test_trusted_issuers_json() -> None:
    raw = [issuer(), issuer(issuer="urn:other", jwks_url=None, jwks_file="/etc/jwks.json", algorithms=["ES256"],
                            role_claim="roles")]  # fmt: skip
    s = load({"AUTHORITY_TRUSTED_ISSUERS": json.dumps(raw)})
    assert s.trusted_issuers == [
        TrustedIssuer(issuer="https://portal.example", audiences=["authority"], jwks_url="https://portal.example/jwks"),
        TrustedIssuer(issuer="urn:other", audiences=["authority"], jwks_file="/etc/jwks.json", algorithms=["ES256"],
                      role_claim="roles"),
    ]  # fmt: skip
    assert s.trusted_issuers[0].algorithms == ["EdDSA", "ES256", "RS256"]


@pytest.mark.parametrize("value", ["[{", "not json", "[{'issuer': 'x'}]"])
def test_trusted_issuers_invalid_json(value: str) -> None:
    with pytest.raises(SettingsError, match=r"^AUTHORITY_TRUSTED_ISSUERS: not valid JSON"):
        load({"AUTHORITY_TRUSTED_ISSUERS": value})


@pytest.mark.parametrize(
    "entry",
    [issuer(jwks_file="/etc/jwks.json"), issuer(jwks_url=None), issuer(audiences=[]), issuer(issuer=""),
     issuer(algorithms=["HS256"]), issuer(algorithms=["none"]), issuer(algorithms=[]), issuer(extra=1),
     {"issuer": "x"}],
    ids=["both-jwks", "no-jwks", "no-audience", "empty-issuer", "hs256", "none", "no-algs", "unknown-field",
         "incomplete"],
)  # fmt: skip
def test_bad_trusted_issuer_is_refused(entry: dict[str, Any]) -> None:
    with pytest.raises(SettingsError, match=r"^AUTHORITY_TRUSTED_ISSUERS: "):
        load({"AUTHORITY_TRUSTED_ISSUERS": json.dumps([entry])})


def test_trusted_issuers_must_be_a_list() -> None:
    with pytest.raises(SettingsError, match=r"^AUTHORITY_TRUSTED_ISSUERS: "):
        load({"AUTHORITY_TRUSTED_ISSUERS": json.dumps(issuer())})


def test_both_jwks_sources_message_names_the_issuer() -> None:
    with pytest.raises(SettingsError, match="needs exactly one of jwks_url or jwks_file"):
        load({"AUTHORITY_TRUSTED_ISSUERS": json.dumps([issuer(jwks_url=None)])})


def test_session_ttl_may_not_exceed_its_maximum() -> None:
    with pytest.raises(SettingsError, match="AUTHORITY_SESSION_TTL_S=7200 must not exceed AUTHORITY_SESSION_MAX_TTL_S"):
        load({"AUTHORITY_SESSION_TTL_S": "7200"})
    with pytest.raises(
        SettingsError, match="AUTHORITY_SESSION_TTL_S=600 must not exceed AUTHORITY_SESSION_MAX_TTL_S=300"
    ):
        load({"AUTHORITY_SESSION_TTL_S": "600", "AUTHORITY_SESSION_MAX_TTL_S": "300"})
    assert load({"AUTHORITY_SESSION_TTL_S": "3600"}).session_ttl_s == 3600


def test_a_new_key_is_published_for_a_whole_jwks_cache_lifetime_before_it_signs() -> None:
    with pytest.raises(SettingsError, match="AUTHORITY_KEY_PREPUBLISH_S=60 must be ≥ AUTHORITY_JWKS_MAX_AGE_S=300"):
        load({"AUTHORITY_KEY_PREPUBLISH_S": "60", "AUTHORITY_JWKS_MAX_AGE_S": "300"})
    with pytest.raises(
        SettingsError, match="AUTHORITY_KEY_PREPUBLISH_S=3600 must be shorter than AUTHORITY_KEY_ROTATION_S=3600"
    ):
        load({"AUTHORITY_KEY_PREPUBLISH_S": "3600", "AUTHORITY_KEY_ROTATION_S": "3600"})
    s = load({"AUTHORITY_KEY_PREPUBLISH_S": "300", "AUTHORITY_KEY_ROTATION_S": "600", "AUTHORITY_KEY_STORE": "redis"})
    assert (s.key_prepublish_s, s.key_rotation_s, s.key_store) == (300, 600, "redis")


# --- create_app: a production start needs callers, a directory and Redis ------------------------------------


def production(tmp_path: Path, **changes: Any) -> Settings:
    fields: dict[str, Any] = {
        "redis_url": "redis://127.0.0.1:6399/0",
        "issuer": "https://authority.example",
        "keys_dir": str(tmp_path / "keys"),
        "key_passphrase": PASSPHRASE,
        "directory_file": str(Path(demo.__file__).with_name("demo_directory.json")),
        "trusted_issuers": [demo.trusted_demo_issuer(tmp_path / "issuer")],
        **changes,
    }
    return load({}, **{k: v for k, v in fields.items() if v is not None})


def test_create_app_accepts_a_complete_production_config(tmp_path: Path) -> None:
    create_app(production(tmp_path))  # Redis is only connected to at startup, so none needs to run here


@pytest.mark.parametrize(
    ("missing", "variable"),
    [("issuer", "AUTHORITY_ISSUER"), ("trusted_issuers", "AUTHORITY_TRUSTED_ISSUERS"),
     ("directory_file", "AUTHORITY_DIRECTORY_FILE"),
     ("redis_url", "AUTHORITY_REDIS_URL"), ("key_passphrase", "AUTHORITY_KEY_PASSPHRASE")],
)  # fmt: skip
def test_create_app_refuses_an_incomplete_production_config(tmp_path: Path, missing: str, variable: str) -> None:
    settings = production(tmp_path, **{missing: [] if missing == "trusted_issuers" else None})
    with pytest.raises(SettingsError, match=variable):
        create_app(settings)
    assert not (tmp_path / "keys").exists()  # refused before any key was written


def test_create_app_refuses_an_unreadable_key_before_listening(tmp_path: Path) -> None:
    now = int(time.time())
    asyncio.run(FileKeyStore(tmp_path / "keys").save([new_record("EdDSA", PASSPHRASE, now=now, activates_at=now)]))
    with pytest.raises(KeyStoreError, match="wrong AUTHORITY_KEY_PASSPHRASE"):
        create_app(production(tmp_path, key_passphrase="not the passphrase"))


def test_demo_needs_no_trusted_issuers_directory_or_passphrase(tmp_path: Path) -> None:
    create_app(production(tmp_path, trusted_issuers=[], directory_file=None, key_passphrase=None, demo=True))


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379"])
def test_malformed_redis_url_is_a_settings_error(tmp_path: Path, url: str) -> None:
    with pytest.raises(SettingsError, match="AUTHORITY_REDIS_URL"):
        create_app(production(tmp_path, redis_url=url))


def test_waiting_for_replicas_must_end_before_the_redis_timeout() -> None:
    """Else a WAIT that legitimately lasts reads as Redis not answering, and a confirmed exchange as a failure."""
    with pytest.raises(
        SettingsError,
        match=r"AUTHORITY_REDIS_REPLICA_TIMEOUT_MS=500 must be shorter than AUTHORITY_REDIS_TIMEOUT_S=0\.5",
    ):
        load({"AUTHORITY_REDIS_MIN_REPLICAS": "1", "AUTHORITY_REDIS_REPLICA_TIMEOUT_MS": "500"})
    s = load({"AUTHORITY_REDIS_MIN_REPLICAS": "1", "AUTHORITY_REDIS_REPLICA_TIMEOUT_MS": "400"})
    assert (s.redis_min_replicas, s.redis_replica_timeout_ms) == (1, 400)


def test_a_trusted_issuers_jwks_file_with_a_key_without_kid_stops_the_start(tmp_path: Path) -> None:
    """Else it is accepted and every bearer it signed fails as signed by an unknown key."""
    key = ed25519.Ed25519PrivateKey.generate()
    jwks = tmp_path / "portal.jwks.json"
    jwks.write_text(json.dumps({"keys": [json.loads(OKPAlgorithm.to_jwk(key.public_key()))]}))  # no kid, as PyJWT
    issuer = {"issuer": "https://portal.example", "audiences": ["authority"], "jwks_file": str(jwks)}
    with pytest.raises(ValueError, match=r"key #0 has no kid"):
        create_app(production(tmp_path, trusted_issuers=[issuer]))


def test_every_mistake_is_named_at_once_one_line_each() -> None:
    """An operator fixes a configuration in one go: every bad variable, each on its own line, with the values."""
    with pytest.raises(SettingsError) as bad_values:
        load({"AUTHORITY_PORT": "eighty", "AUTHORITY_KEY_ALG": "HS256", "AUTHORITY_NOPE": "1"})
    lines = str(bad_values.value).splitlines()
    assert len(lines) == 3
    assert any(line == "unknown variable AUTHORITY_NOPE" for line in lines)
    assert any(line.startswith("AUTHORITY_PORT: ") for line in lines)
    assert any(line.startswith("AUTHORITY_KEY_ALG: ") and "ES256" in line for line in lines)  # the allowed values
    with pytest.raises(SettingsError) as bad_rules:
        load({"AUTHORITY_KEY_PREPUBLISH_S": "60", "AUTHORITY_SESSION_TTL_S": "7200"})
    assert str(bad_rules.value).splitlines() == [
        "AUTHORITY_SESSION_TTL_S=7200 must not exceed AUTHORITY_SESSION_MAX_TTL_S=3600",
        "AUTHORITY_KEY_PREPUBLISH_S=60 must be ≥ AUTHORITY_JWKS_MAX_AGE_S=300: every cached JWKS must hold a key "
        "before it signs",
    ]


def test_a_service_is_told_everything_it_lacks_and_every_bad_value_in_one_go() -> None:
    """Bad values, broken rules and what a service outside --demo cannot start without, all at once: the operator
    walking through a first start met them one per attempt."""
    with pytest.raises(SettingsError) as everything:
        load(
            {"AUTHORITY_PORT": "abc", "AUTHORITY_ISSUER": "https://a.example/", "AUTHORITY_SESSION_TTL_S": "-1",
             "AUTHORITY_FOO": "1"},
            serving=True,
        )  # fmt: skip
    lines = str(everything.value).splitlines()
    assert [line.split(" ", 1)[0].split(":")[0].split("=")[0] for line in lines] == [
        "unknown",  # unknown variable AUTHORITY_FOO
        "AUTHORITY_PORT",
        "AUTHORITY_SESSION_TTL_S",
        "AUTHORITY_REDIS_URL",
        "AUTHORITY_KEY_PASSPHRASE",
        "AUTHORITY_TRUSTED_ISSUERS",
        "AUTHORITY_DIRECTORY_URL",
        "AUTHORITY_ISSUER",  # the trailing '/': a rule across fields, on the values that fit theirs
    ]
    assert load({}, serving=True, demo=True).demo  # --demo needs none of them


# --- the directory: a file or the portal's API ------------------------------------------------------------------

PORTAL = {"AUTHORITY_DIRECTORY_URL": "https://portal.example/directory"}


def test_the_portals_directory_settings_and_their_defaults() -> None:
    s = load({**PORTAL, "AUTHORITY_DIRECTORY_TOKEN": "t0ken", "AUTHORITY_DIRECTORY_TLS_CERT": "/etc/a.pem",
              "AUTHORITY_DIRECTORY_TLS_KEY": "/etc/a.key", "AUTHORITY_DIRECTORY_CACHE_S": "0"})  # fmt: skip
    assert (s.directory_url, s.directory_token, s.directory_cache_s) == ("https://portal.example/directory", "t0ken", 0)
    assert (s.directory_timeout_s, s.directory_negative_cache_s, s.directory_max_concurrency) == (1.0, 2.0, 32)
    assert s.directory_max_answer_bytes == 65536
    assert load({"AUTHORITY_DIRECTORY_URL": "http://127.0.0.1:8100", "AUTHORITY_DIRECTORY_TOKEN": "t"}).directory_token


@pytest.mark.parametrize(
    ("environ", "line"),
    [
        ({**PORTAL, "AUTHORITY_DIRECTORY_FILE": "/etc/d.json"},
         "AUTHORITY_DIRECTORY_URL and AUTHORITY_DIRECTORY_FILE are both set"),
        ({**PORTAL, "AUTHORITY_DIRECTORY_TLS_CERT": "/etc/a.pem"},
         "AUTHORITY_DIRECTORY_TLS_CERT is set without AUTHORITY_DIRECTORY_TLS_KEY"),
        ({**PORTAL, "AUTHORITY_DIRECTORY_TLS_KEY": "/etc/a.key"},
         "AUTHORITY_DIRECTORY_TLS_KEY is set without AUTHORITY_DIRECTORY_TLS_CERT"),
        ({"AUTHORITY_DIRECTORY_URL": "portal.example"}, "_URL='portal.example' must be an http(s) URL"),
        ({"AUTHORITY_DIRECTORY_URL": "ftp://portal.example"}, "_URL='ftp://portal.example' must be an http(s) URL"),
        ({"AUTHORITY_DIRECTORY_URL": "https://portal.example/d?x=1"}, "without query or fragment"),
        ({"AUTHORITY_DIRECTORY_URL": "https://portal.example/d/"}, "_URL='https://portal.example/d/' must not end"),
        ({"AUTHORITY_DIRECTORY_URL": "http://portal.example", "AUTHORITY_DIRECTORY_TLS_CA": "/etc/ca.pem"},
         "is plain http: AUTHORITY_DIRECTORY_TLS_* would not be used"),
        ({"AUTHORITY_DIRECTORY_TOKEN": "t"}, "AUTHORITY_DIRECTORY_TOKEN is set without AUTHORITY_DIRECTORY_URL"),
    ],
    ids=["url-and-file", "cert-no-key", "key-no-cert", "no-scheme", "ftp", "query", "trailing-slash",
         "tls-over-http", "token-no-url"],
)  # fmt: skip
def test_a_broken_directory_setting_is_one_line_naming_it(environ: dict[str, str], line: str) -> None:
    with pytest.raises(SettingsError) as refused:
        load(environ)
    lines = str(refused.value).splitlines()
    assert len(lines) == 1, lines
    assert line in lines[0]
    assert lines[0].startswith("AUTHORITY_DIRECTORY_")


def test_every_broken_directory_setting_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as refused:
        load({"AUTHORITY_DIRECTORY_URL": "https://portal.example/", "AUTHORITY_DIRECTORY_FILE": "/etc/d.json",
              "AUTHORITY_DIRECTORY_TLS_CERT": "/etc/a.pem"})  # fmt: skip
    assert str(refused.value).splitlines() == [
        "AUTHORITY_DIRECTORY_URL and AUTHORITY_DIRECTORY_FILE are both set: the directory is one or the other",
        "AUTHORITY_DIRECTORY_URL='https://portal.example/' must not end with '/': the lookup paths are appended to it",
        "AUTHORITY_DIRECTORY_TLS_CERT is set without AUTHORITY_DIRECTORY_TLS_KEY, its private key",
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("AUTHORITY_DIRECTORY_TIMEOUT_S", "0"), ("AUTHORITY_DIRECTORY_TIMEOUT_S", "31"),
     ("AUTHORITY_DIRECTORY_CACHE_S", "-1"), ("AUTHORITY_DIRECTORY_NEGATIVE_CACHE_S", "soon"),
     ("AUTHORITY_DIRECTORY_MAX_CONCURRENCY", "0"), ("AUTHORITY_DIRECTORY_MAX_ANSWER_BYTES", "10")],
)  # fmt: skip
def test_a_bad_directory_value_names_its_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=f"^{name}: "):
        load({name: value})


def test_a_directory_token_that_cannot_be_a_header_is_refused_without_echoing_it() -> None:
    with pytest.raises(SettingsError, match=r"^AUTHORITY_DIRECTORY_TOKEN: ") as refused:
        load({**PORTAL, "AUTHORITY_DIRECTORY_TOKEN": "s3cret with spaces"})
    assert "s3cret" not in str(refused.value)


def test_create_app_accepts_the_portals_directory_instead_of_a_file(tmp_path: Path) -> None:
    create_app(production(tmp_path, directory_file=None, directory_url="https://portal.example/directory"))
    with pytest.raises(SettingsError, match="AUTHORITY_DIRECTORY_URL or AUTHORITY_DIRECTORY_FILE is required"):
        create_app(production(tmp_path, directory_file=None))


def test_an_unusable_directory_tls_file_stops_the_start_naming_it(tmp_path: Path) -> None:
    (tmp_path / "not-a-cert.pem").write_text("not a certificate")
    portal = {"directory_file": None, "directory_url": "https://portal.example"}
    settings = production(tmp_path, **portal, directory_tls_cert=str(tmp_path / "not-a-cert.pem"),
                          directory_tls_key=str(tmp_path / "k"))  # fmt: skip
    with pytest.raises(ValueError, match=r"^AUTHORITY_DIRECTORY_TLS_CERT="):
        create_app(settings)
    with pytest.raises(ValueError, match=r"^AUTHORITY_DIRECTORY_TLS_CA="):
        create_app(production(tmp_path, **portal, directory_tls_ca=str(tmp_path / "missing-ca.pem")))


# --- what only the start can find: the lifespan's operator errors, under each server -----------------------------


def sealed_in_redis(redis_url: str, prefix: str) -> dict[bytes, bytes]:
    """A signing key in the Redis key store at ``prefix``, sealed with PASSPHRASE; the hash as written."""
    now = int(time.time())
    record = new_record("ES256", PASSPHRASE, now=now, activates_at=now)
    with redis.Redis.from_url(redis_url) as direct:
        direct.hset(f"{prefix}keys", record.kid, msgspec.json.encode(record))
        written: dict[bytes, bytes] = direct.hgetall(f"{prefix}keys")
        return written


def serving_env(tmp_path: Path, redis_url: str, prefix: str, port: int, **variables: str) -> dict[str, str]:
    issuer = demo.trusted_demo_issuer(tmp_path / "portal")
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("AUTHORITY_")},
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "AUTHORITY_PORT": str(port),
        "AUTHORITY_ISSUER": f"http://127.0.0.1:{port}",
        "AUTHORITY_REDIS_URL": redis_url,
        "AUTHORITY_REDIS_PREFIX": prefix,
        "AUTHORITY_KEYS_DIR": str(tmp_path / "keys"),
        "AUTHORITY_KEY_STORE": "redis",
        "AUTHORITY_DIRECTORY_FILE": str(ROOT / "authority" / "demo_directory.json"),
        "AUTHORITY_TRUSTED_ISSUERS": json.dumps(
            [{"issuer": issuer.issuer, "audiences": issuer.audiences, "jwks_file": issuer.jwks_file}]
        ),
        **variables,
    }


@pytest.mark.parametrize("server", ["cli", "uvicorn", "granian"])
def test_a_wrong_passphrase_for_keys_in_redis_stops_every_server_with_one_line(
    redis_url: str, tmp_path: Path, server: str
) -> None:
    """Keys in the Redis store sealed with one passphrase, a start with another: found only in the lifespan (the
    store is read there), and said there as a bad setting is, in one line with no traceback, under `authority
    serve`, `uvicorn authority.asgi:app` and the image's granian command; the server exits non-zero; and nothing
    is written to the store (a standby sealed with the wrong passphrase would break the next, right, start)."""
    port, prefix = free_port(), f"wrong{free_port()}:"
    before = sealed_in_redis(redis_url, prefix)
    env = serving_env(tmp_path, redis_url, prefix, port, AUTHORITY_KEY_PASSPHRASE="not the passphrase")
    command = {
        "cli": [str(BIN / "authority"), "serve"],
        "uvicorn": [str(BIN / "uvicorn"), "--host", "127.0.0.1", "--port", str(port), "authority.asgi:app"],
        "granian": the_images_cmd(port),
    }[server]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == (2 if server == "cli" else 3 if server == "uvicorn" else 1), output
    assert "Traceback" not in output
    assert "Exception" not in output
    said = {line for line in output.splitlines() if line.startswith("authority: ")}
    assert said == {f"authority: redis hash {prefix}keys: cannot decrypt private key (wrong AUTHORITY_KEY_PASSPHRASE?)"}
    if server != "granian":  # granian says it once per worker it starts, until its crash-loop check stops it
        assert sum(line.startswith("authority: ") for line in output.splitlines()) == 1, output
    with redis.Redis.from_url(redis_url) as direct:
        assert direct.hgetall(f"{prefix}keys") == before


def test_no_signing_key_in_time_is_one_line_and_a_failed_start(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Another holder of the rotation lock writes no key: the start gives up after START_WAIT_S (1 s here) and says
    so in one line; uvicorn, told the start failed with no message, exits with its startup-failure status."""
    monkeypatch.setattr(services, "START_WAIT_S", 1)
    prefix = f"nokey{free_port()}:"
    with redis.Redis.from_url(redis_url) as direct:
        direct.set(f"{prefix}keys:lock", "another replica", px=60_000)
    settings = load(serving_env(tmp_path, redis_url, prefix, free_port(), AUTHORITY_KEY_PASSPHRASE=PASSPHRASE))
    said = io.StringIO()
    app = RefusedStart(create_app(settings), out=said)
    server = uvicorn.Server(uvicorn.Config(app, port=free_port(), log_level="warning"))
    with pytest.raises(SystemExit) as exited:
        server.run()
    assert exited.value.code == 3
    assert app.refused
    assert said.getvalue().splitlines() == [
        "authority: no signing key after 1 s: another process holds the rotation lock and wrote none"
    ]
    assert "Traceback" not in capfd.readouterr().err
    with redis.Redis.from_url(redis_url) as direct:
        assert not direct.hlen(f"{prefix}keys")


def test_a_failure_that_is_not_an_operators_passes_through_untouched() -> None:
    """A bug in the start stays a traceback (Litestar's message, the exception raised): it is not one to hide."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        try:
            raise ExceptionGroup("start", [KeyError("a bug")])
        except BaseException:
            await send({"type": "lifespan.startup.failed", "message": "Traceback ..."})
            raise

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "lifespan.startup"}

    said = io.StringIO()
    lifespan: dict[str, Any] = {"type": "lifespan"}
    with pytest.raises(ExceptionGroup):
        asyncio.run(RefusedStart(app, out=said)(lifespan, receive, send))
    assert sent == [{"type": "lifespan.startup.failed", "message": "Traceback ..."}]
    assert not said.getvalue()
