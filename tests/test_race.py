"""Single use under concurrency: many simultaneous exchanges of one token, through the real app and Redis."""

from __future__ import annotations

import asyncio

import pytest

from authority.app import create_app
from tests.helpers import EXCHANGE, STAFF, Stack, concurrently_served

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_fifty_concurrent_exchanges_of_one_token_yield_exactly_one_session(stack: Stack) -> None:
    """The fifty are in flight at once on one event loop (``concurrently_served``), so their consume scripts meet
    in Redis as a burst of real racing requests would."""
    async with concurrently_served(create_app(stack.settings)) as client:
        minted = await client.get(STAFF, params={"coworkerId": 42}, headers=stack.bearer("operator", "7"))
        token = minted.json()["token"]
        responses = await asyncio.gather(*(client.post(EXCHANGE, json={"token": token}) for _ in range(50)))

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] + [401] * 49
    refused = [r.json()["type"] for r in responses if r.status_code == 401]
    assert set(refused) == {"urn:authority:problem:token-replayed"}
