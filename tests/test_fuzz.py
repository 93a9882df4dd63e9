"""Schemathesis against the app's own OpenAPI document (``/schema/openapi.json``), through the real ASGI app and a
real Redis: whatever the fuzzer sends — schema-valid or schema-violating — the answer is never a 5xx, and every 4xx
is RFC 9457 problem details.

Schemathesis's lazy pytest loader (``schemathesis.pytest.from_fixture``) fails under pytest 9 (it sets the removed
``Item._nodeid``), and a module-level schema would need the app, and so Redis, at import time. So each operation's
case strategy (``APIOperation.as_strategy``) is driven by Hypothesis here, bounded and derandomized, and each case is
sent with ``Case.call`` over schemathesis's own ASGI transport.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis import APIOperation, BaseSchema, Case, GenerationMode, Response
from schemathesis.core.result import Ok

from authority.app import create_app
from tests.conftest import Stack

Operation = APIOperation[Any, Any, Any, Any]
BOUNDED = hypothesis.settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(hypothesis.HealthCheck),
    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],  # no shrinking: a failure names its case
)
# Every operation the service documents: a new one must be listed here, so none escapes the fuzzer unnoticed.
OPERATIONS = {
    "GET /api/sys/users/impersonate",
    "GET /api/public/coworkers/{coworker_id}/impersonate",
    "POST /api/sys/users/exchange",
    "POST /api/sys/sessions/{sid}/revoke",
    "POST /oauth2/introspect",
    "GET /.well-known/jwks.json",
    "GET /.well-known/openid-configuration",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
}
TEAM_PATH = "GET /api/public/coworkers/{coworker_id}/impersonate"


@pytest.fixture
def api(make_stack: Callable[..., Stack]) -> tuple[Stack, BaseSchema]:
    """The app's own schema, loaded over ASGI; that starts the app's lifespan, which schemathesis's pytest plugin
    ends at teardown. Rate limits are lifted so the fuzzer keeps reaching the directory rather than a 429."""
    stack = make_stack(mint_rate_per_actor=100_000, mint_rate_per_location=100_000)
    return stack, schemathesis.openapi.from_asgi("/schema/openapi.json", create_app(stack.settings))


def label(operation: Operation) -> str:
    return f"{operation.method.upper()} {operation.path}"


def check(case: Case[Any], response: Response, headers: dict[str, str]) -> None:
    reproduce = f"{response.status_code} {response.text[:300]}\n{case.as_curl_command(headers=headers)}"
    assert response.status_code < 500, reproduce
    if response.status_code >= 400:
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
        statuses = seen.setdefault(label(operation), set())
        takes_input = next(operation.iter_parameters(), None) is not None or bool(list(operation.body))
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if takes_input else (GenerationMode.POSITIVE,):
            fuzz_operation(operation, mode, (per_operation or {}).get(label(operation), headers), statuses)
    return seen


def test_anonymous_fuzz_never_5xx(api: tuple[Stack, BaseSchema]) -> None:
    _, schema = api
    seen = fuzz(schema, {})
    assert seen["GET /healthz"] == {200}
    assert seen["GET /api/sys/users/impersonate"] == {401}  # authentication first, whatever the parameters
    assert {400, 401} <= seen["POST /api/sys/users/exchange"]  # body validation, then token verification


def test_operator_fuzz_never_5xx(api: tuple[Stack, BaseSchema]) -> None:
    """With a valid operator bearer every case gets past authentication to parameter and body validation (with a
    team admin's on the team path, which staff may not use), and on to the directory and the allowlist."""
    stack, schema = api
    seen = fuzz(schema, stack.bearer("operator", "7"), {TEAM_PATH: stack.bearer("team-admin", "5")})
    assert {400, 404} <= seen["GET /api/sys/users/impersonate"]
    assert {400, 404} <= seen[TEAM_PATH]
    assert {400, 404} <= seen["POST /api/sys/sessions/{sid}/revoke"]
    assert {200, 400} <= seen["POST /oauth2/introspect"]
    assert all(401 not in statuses for name, statuses in seen.items() if name != "POST /api/sys/users/exchange")
