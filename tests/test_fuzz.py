"""Schemathesis against the app's own OpenAPI document (``/schema/openapi.json``), through the real ASGI app and a
real Redis: whatever the fuzzer sends — schema-valid or schema-violating — the answer is never a 5xx, and every 4xx
is RFC 9457 problem details.

Schemathesis's lazy pytest loader (``schemathesis.pytest.from_fixture``) fails under pytest 9 (it sets the removed
``Item._nodeid``), and a module-level schema would need the app, and so Redis, at import time. So each operation's
case strategy (``APIOperation.as_strategy``) is driven by Hypothesis here, bounded and derandomized, and each case is
sent with ``Case.call`` over schemathesis's own ASGI transport.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode, Response
from schemathesis.core.result import Ok
from schemathesis.python.asgi import shutdown_lifespans

from authority.app import create_app
from tests.helpers import (
    DISCOVERY,
    END_CURRENT,
    EXCHANGE,
    HEALTHZ,
    INTROSPECT,
    JWKS,
    METADATA,
    METRICS,
    MY_IMPERSONATIONS,
    READYZ,
    REVOKE_ALL,
    SCHEMA,
    SESSIONS,
    STAFF,
    TOKEN,
    Stack,
    revoke,
    team,
)

Operation = APIOperation[Any, Any, Any, Any]
BOUNDED = hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: a failure names its case
)
# Operations by their labels (method and path as the schema writes it).
MINT_OP, TEAM_OP, EXCHANGE_OP = f"GET {STAFF}", f"GET {team('{coworkerId}')}", f"POST {EXCHANGE}"
REVOKE_OP, INTROSPECT_OP, HEALTHZ_OP = f"POST {revoke('{sid}')}", f"POST {INTROSPECT}", f"GET {HEALTHZ}"
# Every operation the service documents: a new one must be listed here, so none escapes the fuzzer unnoticed.
OPERATIONS = {
    MINT_OP,
    TEAM_OP,
    EXCHANGE_OP,
    REVOKE_OP,
    INTROSPECT_OP,
    f"GET {JWKS}",
    f"GET {METADATA}",
    f"GET {DISCOVERY}",
    HEALTHZ_OP,
    f"GET {READYZ}",
    f"GET {METRICS}",
    f"POST {END_CURRENT}",
    f"POST {TOKEN}",
    f"POST {REVOKE_ALL}",
    f"GET {SESSIONS}",
    f"GET {MY_IMPERSONATIONS}",
    *(f"HEAD {path}" for path in (JWKS, METADATA, DISCOVERY, HEALTHZ, READYZ)),
}


@pytest.fixture
def api(make_stack: Callable[..., Stack]) -> Iterator[tuple[Stack, BaseSchema]]:
    """The app's own schema, loaded over ASGI; that starts the app's lifespan, on schemathesis's one portal thread
    (alive until the process exits); the lifespan, and so the app's background work, is ended here. Rate limits
    are lifted so the fuzzer keeps reaching the directory rather than a 429."""
    stack = make_stack(mint_rate_per_actor=100_000, mint_rate_per_location=100_000)
    yield stack, schemathesis.openapi.from_asgi(SCHEMA, create_app(stack.settings))
    shutdown_lifespans()


def label(operation: Operation) -> str:
    return f"{operation.method.upper()} {operation.path}"


def check(case: Case[Any], response: Response, headers: dict[str, str]) -> None:
    reproduce = f"{response.status_code} {response.text[:300]}\n{case.as_curl_command(headers=headers)}"
    assert response.status_code < 500, reproduce
    if response.status_code >= 400 and case.operation.path == TOKEN:  # RFC 6749 section 5.2, not problem details
        assert response.headers.get("content-type") == ["application/json"], reproduce
        assert isinstance(response.json()["error"], str), reproduce
        assert response.headers.get("cache-control") == ["no-store"], reproduce
    elif response.status_code >= 400:
        assert response.headers.get("content-type") == ["application/problem+json"], reproduce
        body = response.json()
        assert body["status"] == response.status_code, reproduce
        assert body["type"].startswith("urn:authority:problem:"), reproduce
        assert isinstance(body["title"], str), reproduce
        assert isinstance(body["detail"], str), reproduce
        assert "Traceback" not in response.text, reproduce


def fuzz_operation(operation: Operation, mode: GenerationMode, headers: dict[str, str], statuses: set[int]) -> None:
    @BOUNDED
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case[Any]) -> None:
        case.headers.update(headers)  # the schema declares a bearer scheme: the test's own bearer, not a made-up one
        response = case.call(headers=headers)
        statuses.add(response.status_code)
        check(case, response, headers)

    run()


def fuzz(schema: BaseSchema, headers: dict[str, str], per_operation: Mapping[str, dict[str, str]] | None = None
         ) -> dict[str, set[int]]:  # fmt: skip
    """Every operation with schema-valid and (where it takes input) schema-violating cases; returns the statuses
    each operation answered."""
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), results
    found: list[Operation] = [result.ok() for result in results if isinstance(result, Ok)]
    assert {label(operation) for operation in found} == OPERATIONS
    seen: dict[str, set[int]] = {}
    for operation in found:
        takes_input = next(operation.iter_parameters(), None) is not None or bool(list(operation.body))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):
            statuses: set[int] = set()
            fuzz_operation(operation, mode, (per_operation or {}).get(label(operation), headers), statuses)
            seen.setdefault(label(operation), set()).update(statuses)
            seen.setdefault(f"{label(operation)} ({mode.value})", set()).update(statuses)
    return seen


def test_anonymous_fuzz_never_5xx(api: tuple[Stack, BaseSchema]) -> None:
    _, schema = api
    seen = fuzz(schema, {})
    assert seen[HEALTHZ_OP] == {200}
    assert seen[MINT_OP] == {401}  # authentication first, whatever the parameters
    assert {400, 401} <= seen[EXCHANGE_OP]  # body validation, then token verification


def test_operator_fuzz_never_5xx(api: tuple[Stack, BaseSchema]) -> None:
    """With a valid operator bearer every case gets past authentication to parameter and body validation (with a
    team admin's on the team path, which staff may not use), and on to the directory and the allowlist."""
    stack, schema = api
    seen = fuzz(schema, stack.bearer("operator", "7"), {TEAM_OP: stack.bearer("team-admin", "5")})
    assert {400, 404} <= seen[MINT_OP]
    assert {400, 404} <= seen[TEAM_OP]
    assert {400, 404} <= seen[REVOKE_OP]
    assert {200, 400} <= seen[INTROSPECT_OP]
    # Schema-valid cases carry the bearer; schema-violating ones may break the declared bearer scheme on purpose.
    valid = {name: statuses for name, statuses in seen.items() if name.endswith("(positive)")}
    assert all(401 not in statuses for name, statuses in valid.items() if not name.startswith(EXCHANGE_OP)), seen
