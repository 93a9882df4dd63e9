"""Configuration: every ``AUTHORITY_*`` environment variable, parsed once into typed Structs.

A typo in a variable name or a value of the wrong type stops the service at start with a message naming the
variable, rather than surfacing as a surprise on the first request.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin
from urllib.parse import urlsplit

import msgspec

from authority.events.set import EVENT_TYPES

PREFIX = "AUTHORITY_"
SigningAlg = Literal["EdDSA", "ES256", "RS256"]
CallerAlg = Literal["EdDSA", "ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]
Positive = Annotated[int, msgspec.Meta(ge=1)]


class SettingsError(ValueError):
    """The configuration cannot be used; the message names the variable to fix."""


class TrustedIssuer(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """An identity provider whose bearer tokens may call the mint endpoints (the portal's sign-in)."""

    issuer: Annotated[str, msgspec.Meta(min_length=1)]
    audiences: Annotated[list[str], msgspec.Meta(min_length=1)]
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: Annotated[list[CallerAlg], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["EdDSA", "ES256", "RS256"]
    )
    role_claim: str = "role"
    location_claim: str = "loc"
    coworker_claim: str = "sub"
    # RFC 9470 step-up, all optional: how recent (auth_time) and how strong (acr, amr) the impersonator's own
    # sign-in must be for them to impersonate.
    # A session never outlives the impersonator's own sign-in: its exp is at most the exp of the bearer that minted.
    cap_session_to_bearer: bool = True
    max_auth_age_s: Annotated[int, msgspec.Meta(ge=0)] | None = None
    acr_values: list[str] = msgspec.field(default_factory=list)
    amr_values: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"trusted issuer {self.issuer!r} needs exactly one of jwks_url or jwks_file")


class TokenClient(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A client of the token endpoint's one-step flow (RFC 8693 with an actor token), which must authenticate:
    ``client_secret_basic`` against the SHA-256 of its secret, or ``private_key_jwt`` with a key of its JWKS."""

    client_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9._~-]{1,128}$")]
    client_secret_sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")] | None = None
    jwks_file: str | None = None

    def __post_init__(self) -> None:
        if (self.client_secret_sha256 is None) == (self.jwks_file is None):
            raise ValueError(f"token client {self.client_id!r} needs exactly one of client_secret_sha256 or jwks_file")


class EventReceiver(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Where security events are pushed (RFC 8935): ``url`` receives each SET, ``aud`` names ``audience``;
    ``events`` (event type URIs) filters them, all when empty; ``bearer`` is sent as ``Authorization: Bearer``.
    ``name`` (default: the audience) names the receiver in Redis, metrics, logs and ``authority events``."""

    url: str
    audience: Annotated[str, msgspec.Meta(min_length=1)]
    events: list[str] = msgspec.field(default_factory=list)
    bearer: Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,4096}$")] | None = None
    name: Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,200}$")] | None = None

    @property
    def label(self) -> str:
        return self.name or self.audience

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


class Settings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Everything the service reads from its environment. Field ``x_y`` is variable ``AUTHORITY_X_Y``."""

    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    issuer: str | None = None
    redis_url: str | None = None
    redis_prefix: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9:_.-]{1,64}$")] = "authority:"
    redis_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=30)] = 0.5
    redis_max_connections: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 512
    redis_cluster: bool = False
    redis_min_replicas: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0
    redis_replica_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=5000)] = 200
    keys_dir: str = "keys"
    key_passphrase: str | None = None
    key_alg: SigningAlg = "ES256"  # every common consumer verifies it; EdDSA and RS256 on request (README)
    key_store: Literal["file", "redis"] = "file"
    key_rotation_s: Annotated[int, msgspec.Meta(ge=60)] = 86400
    key_prepublish_s: Positive = 3600
    key_grace_s: Annotated[int, msgspec.Meta(ge=0)] = 300
    key_refresh_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    impersonation_ttl_s: Annotated[int, msgspec.Meta(ge=5, le=600)] = 60
    session_ttl_s: Positive = 900
    session_max_ttl_s: Positive = 3600
    session_audience: str = "portal-api"
    session_client_id: str = "portal"
    clock_skew_s: Annotated[int, msgspec.Meta(ge=0, le=300)] = 10
    jwks_max_age_s: Annotated[int, msgspec.Meta(ge=0, le=86400)] = 300
    jwks_fetch_timeout_s: Annotated[int, msgspec.Meta(ge=1, le=30)] = 3
    max_body_bytes: Annotated[int, msgspec.Meta(ge=256, le=1_048_576)] = 8192
    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=65536)] = 8192
    mint_rate_per_actor: Positive = 30
    mint_rate_per_location: Positive = 300
    mint_rate_window_s: Positive = 60
    audit_stream_maxlen: Annotated[int, msgspec.Meta(ge=100)] = 100_000
    # Accountability: who must give a reason / a ticket when minting (a location may also ask, in the directory),
    # and how long and how much of the sessions' trail is kept for staff lists and the customer's own view.
    require_reason: list[Literal["staff", "team-admin"]] = msgspec.field(default_factory=list)
    require_ticket: list[Literal["staff", "team-admin"]] = msgspec.field(default_factory=list)
    trail_retention_s: Annotated[int, msgspec.Meta(ge=3600, le=400 * 86400)] = 90 * 86400
    trail_per_customer: Annotated[int, msgspec.Meta(ge=10, le=100_000)] = 1000
    # RFC 9449: "allowed" binds a session to the key of a DPoP proof that comes; "required" refuses a mint, an
    # exchange or a token request without one (and a token minted with one is redeemed only with that key).
    dpop: Literal["off", "allowed", "required"] = "allowed"
    # With a secret (32+ bytes, shared by every replica), proofs must carry a server nonce (RFC 9449 section 8).
    dpop_nonce_secret: Annotated[str, msgspec.Meta(min_length=32)] | None = None
    # The RFC 8693 token endpoint's clients for the one-step flow (subject + actor token).
    token_clients: list[TokenClient] = msgspec.field(default_factory=list)
    directory_file: str | None = None
    directory_url: str | None = None  # the portal's directory API (docs/directory-api.yaml); excludes directory_file
    directory_token: Annotated[str, msgspec.Meta(pattern=r"^[\x21-\x7e]{1,4096}$")] | None = None  # bearer
    directory_tls_cert: str | None = None  # client certificate (PEM), for mutual TLS; with directory_tls_key
    directory_tls_key: str | None = None
    directory_tls_ca: str | None = None  # the CA (PEM) the portal's certificate is checked against; else the system's
    directory_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=30)] = 1.0  # whole lookup, queueing included
    directory_cache_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 5.0  # 0: ask the portal every time
    directory_negative_cache_s: Annotated[float, msgspec.Meta(ge=0, le=300)] = 2.0  # "not found", likewise
    directory_max_concurrency: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 32
    directory_max_answer_bytes: Annotated[int, msgspec.Meta(ge=1024, le=16_777_216)] = 65_536
    trusted_issuers: list[TrustedIssuer] = msgspec.field(default_factory=list)
    # Security events pushed to receivers (RFC 8935): each SET retried with backoff (at most event_backoff_max_s
    # apart) until event_max_age_s after it happened, then dead-lettered; at most event_backlog waiting per receiver.
    event_receivers: list[EventReceiver] = msgspec.field(default_factory=list)
    event_max_age_s: Annotated[int, msgspec.Meta(ge=1, le=30 * 86400)] = 86400
    event_backoff_max_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 300.0
    event_backlog: Annotated[int, msgspec.Meta(ge=100, le=10_000_000)] = 100_000
    event_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=60)] = 5.0  # one POST, answer read included
    data_dir: str = ".authority"
    public_schema: bool = True  # /schema: the API documentation page and the OpenAPI document
    public_metrics: bool = True  # /metrics: Prometheus text
    demo: bool = False

    def __post_init__(self) -> None:
        if broken := self.rules_broken():
            raise ValueError("\n".join(broken))

    def rules_broken(self) -> list[str]:
        """Every rule across settings this configuration breaks, one line each, naming the variables and the values
        in force: an operator fixes them all in one go."""
        v = {name: f"{PREFIX}{name.upper()}={getattr(self, name)}" for name in msgspec.structs.asdict(self)}
        broken = []
        if self.issuer is not None:
            broken += self._issuer_rules_broken(self.issuer)
        if self.session_ttl_s > self.session_max_ttl_s:
            broken.append(f"{v['session_ttl_s']} must not exceed {v['session_max_ttl_s']}")
        if self.key_prepublish_s < self.jwks_max_age_s:
            broken.append(
                f"{v['key_prepublish_s']} must be ≥ {v['jwks_max_age_s']}: every cached JWKS must hold a key before "
                "it signs"
            )
        if self.key_prepublish_s >= self.key_rotation_s:
            broken.append(f"{v['key_prepublish_s']} must be shorter than {v['key_rotation_s']}")
        if self.redis_min_replicas and self.redis_replica_timeout_ms >= self.redis_timeout_s * 1000:
            broken.append(
                f"{v['redis_replica_timeout_ms']} must be shorter than {v['redis_timeout_s']}: a WAIT for replicas "
                "that lasts longer reads as Redis not answering"
            )
        broken += self._directory_rules_broken()
        broken += self._event_rules_broken()
        return broken

    def _issuer_rules_broken(self, issuer: str) -> list[str]:
        """The issuer is the public https URL consumers know the service by, as typed: the ``iss`` of every token,
        the base of every URL published, the URL a DPoP proof names. Plain http only where it cannot be a public
        name: a loopback address, ``localhost``, or an RFC 6761 name (``.localhost``, ``.test``); under --demo,
        anywhere (a trial on a private network)."""
        var = f"{PREFIX}ISSUER={issuer!r}"
        if not issuer or issuer.endswith("/"):
            return [f"{var} must be a URL without a trailing '/': it is the iss of every token, and consumers compare "
                    "it as typed"]  # fmt: skip
        try:
            parts = urlsplit(issuer)
            shaped = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
        except ValueError:  # a port that is not a number, a bracketed host that is not IPv6
            shaped = False
        if not shaped or parts.query or parts.fragment or parts.username is not None:
            return [f"{var} must be an absolute https URL (https://host[:port][/path]), without query, fragment or "
                    "credentials: it is the iss of every token and the base of every URL published"]  # fmt: skip
        if parts.scheme == "http" and not self.demo and not _local_name(parts.hostname or ""):
            return [f"{var} must be https: plain http only on a loopback address or a .test or .localhost name "
                    "(and anywhere under --demo)"]  # fmt: skip
        return []

    def _directory_rules_broken(self) -> list[str]:
        """The directory is a file or the portal's API, not both; what is sent to the portal goes as configured."""
        url, broken = self.directory_url, []
        var = {"url": f"{PREFIX}DIRECTORY_URL", "token": f"{PREFIX}DIRECTORY_TOKEN"}
        if url is not None and self.directory_file is not None:
            broken.append(f"{var['url']} and {PREFIX}DIRECTORY_FILE are both set: the directory is one or the other")
        if url is not None:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
                broken.append(f"{var['url']}={url!r} must be an http(s) URL, without query or fragment")
            elif url.endswith("/"):
                broken.append(f"{var['url']}={url!r} must not end with '/': the lookup paths are appended to it")
            elif parts.scheme == "http" and (self.directory_tls_cert or self.directory_tls_ca):
                broken.append(f"{var['url']}={url!r} is plain http: {PREFIX}DIRECTORY_TLS_* would not be used")
        else:
            for field in ("directory_token", "directory_tls_cert", "directory_tls_key", "directory_tls_ca"):
                if getattr(self, field) is not None:
                    broken.append(f"{PREFIX}{field.upper()} is set without {var['url']}: it would not be used")
        if self.directory_tls_cert is not None and self.directory_tls_key is None:
            broken.append(f"{PREFIX}DIRECTORY_TLS_CERT is set without {PREFIX}DIRECTORY_TLS_KEY, its private key")
        if self.directory_tls_key is not None and self.directory_tls_cert is None:
            broken.append(f"{PREFIX}DIRECTORY_TLS_KEY is set without {PREFIX}DIRECTORY_TLS_CERT, its certificate")
        return broken

    def _event_rules_broken(self) -> list[str]:
        """Receivers: reached over TLS (plain http only on loopback, for a local relay or a test), told apart by
        name, asking only for events that exist."""
        var, broken, names = f"{PREFIX}EVENT_RECEIVERS", [], set()
        for receiver in self.event_receivers:
            parts = urlsplit(receiver.url)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment or parts.username:
                broken.append(f"{var}: url {receiver.url!r} must be an http(s) URL without credentials or fragment")
            elif parts.scheme == "http" and not _loopback(parts.hostname):
                broken.append(f"{var}: url {receiver.url!r} must be https (plain http only to a loopback address)")
            for unknown in sorted(set(receiver.events) - set(EVENT_TYPES)):
                known = ", ".join(EVENT_TYPES)
                broken.append(f"{var}: receiver {receiver.label!r} asks for {unknown!r}; known: {known}")
            if receiver.label in names:
                broken.append(f"{var}: two receivers are named {receiver.label!r}: give each a distinct name")
            names.add(receiver.label)
        return broken

    @property
    def key_retention_s(self) -> int:
        """How long a superseded key still verifies: the longest token it signed, plus skew, plus grace."""
        return max(self.session_max_ttl_s, self.impersonation_ttl_s) + self.clock_skew_s + self.key_grace_s

    @property
    def public_issuer(self) -> str:
        """The ``iss`` of every token we sign, and the base of every URL we publish."""
        return self.issuer or f"http://{self.host}:{self.port}"  # no default outside --demo (services.check)

    @property
    def exchange_audience(self) -> str:
        """The ``aud`` of impersonation tokens: only our own exchange endpoint accepts them."""
        return f"{self.public_issuer}/api/sys/users/exchange"

    @property
    def keys_path(self) -> Path:
        return Path(self.keys_dir)


_JSON_FIELDS = {"trusted_issuers", "require_reason", "require_ticket", "token_clients", "event_receivers"}
_FIELDS = {field.name: field.type for field in msgspec.structs.fields(Settings)}


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _local_name(host: str) -> bool:
    """A host no public issuer can be named by: a loopback address, ``localhost``, or a name RFC 6761 keeps out of
    the public DNS for local and test use (``.localhost``, ``.test``)."""
    host = host.lower().rstrip(".")
    return _loopback(host) or host.endswith((".localhost", ".test"))


def missing_to_serve(values: Mapping[str, object]) -> list[str]:
    """What a service outside ``--demo`` cannot start without, one line each (``values``: field -> value)."""
    if values.get("demo"):
        return []
    required = {
        "issuer": "the iss of every token and the base of every published URL (a default would name this host "
        "and port, not the one consumers reach)",
        "redis_url": "where the allowlist, sessions and keys live (only --demo starts a private server)",
        "key_passphrase": "private keys are encrypted at rest with it",
        "trusted_issuers": "whose bearers may mint: with none, no caller ever could",
    }
    lines = [f"{PREFIX}{name.upper()} is required outside --demo: {why}" for name, why in required.items()
             if not values.get(name)]  # fmt: skip
    if not values.get("directory_url") and not values.get("directory_file"):
        lines.append(f"{PREFIX}DIRECTORY_URL or {PREFIX}DIRECTORY_FILE is required outside --demo: who exists where")
    return lines


def load(environ: Mapping[str, str] | None = None, /, *, serving: bool = False, **overrides: object) -> Settings:
    """Build Settings from ``AUTHORITY_*`` variables; ``overrides`` (from CLI flags) win over the environment. Each
    value is converted on its own, so an error names its variable without reading the converter's message; every
    mistake is said at once, rules across variables and (``serving``) what a service needs included."""
    env = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    errors: list[str] = []  # all of them at once, one line each
    for name, value in sorted(env.items()):
        if not name.startswith(PREFIX) or name.startswith(f"{PREFIX}TEST_"):
            continue
        field = name.removeprefix(PREFIX).lower()
        if field == "demo":
            errors.append(f"{name}: demo mode is chosen with the --demo flag only, never by the environment")
        elif field not in _FIELDS:
            errors.append(f"unknown variable {name}")
        elif field in _JSON_FIELDS:
            try:
                raw[field] = msgspec.json.decode(value)
            except msgspec.DecodeError as exc:
                errors.append(f"{name}: not valid JSON ({exc})")
        else:
            raw[field] = value
    raw.update(overrides)
    unfit: set[str] = set()
    for key, given in raw.items():
        try:
            msgspec.convert(given, _FIELDS[key], strict=False)
        except msgspec.ValidationError as exc:
            unfit.add(key)
            kind = _FIELDS[key]
            allowed = get_args(kind) if get_origin(kind) is Literal else ("true", "false") if kind is bool else ()
            errors.append(f"{PREFIX}{key.upper()}: {exc}" + (f" (one of {', '.join(allowed)})" if allowed else ""))
    fit = {key: value for key, value in raw.items() if key not in unfit}
    if serving:
        errors += missing_to_serve(fit)
    try:  # the rules across fields, on the values that fit theirs: their messages name the variables
        settings = msgspec.convert(fit, Settings, strict=False)
    except msgspec.ValidationError as exc:
        errors += str(exc).splitlines()
    if errors:
        raise SettingsError("\n".join(errors))
    return settings
