"""/metrics: Prometheus text with the counters operators alert on, moving with what the service does."""

from __future__ import annotations

import re
from typing import Any

from litestar.testing import TestClient

from tests.helpers import EXCHANGE, METRICS, Stack, mint


def scrape(client: TestClient[Any]) -> dict[str, float]:
    response = client.get(METRICS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for line in response.text.splitlines():
        match = re.match(r"^(authority_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            samples[match.group(1)] = float(match.group(2))
    return samples


def test_counters_follow_mints_exchanges_replays_and_denials(client: TestClient[Any], stack: Stack) -> None:
    before = scrape(client)
    token = mint(client, stack)
    client.post(EXCHANGE, json={"token": token})
    client.post(EXCHANGE, json={"token": token})
    client.post(EXCHANGE, json={"token": "x.y.z"})
    after = scrape(client)

    def grew(name: str) -> float:
        return after.get(name, 0) - before.get(name, 0)

    assert grew('authority_mints_total{role="operator"}') == 1
    assert grew("authority_exchanges_total") == 1
    assert grew("authority_replays_total") == 1
    assert grew('authority_denials_total{reason="token-replayed"}') == 1
    assert grew('authority_denials_total{reason="invalid-token"}') == 1
    assert after.get('authority_key_events_total{event="created"}', 0) >= 1
    assert any(name.startswith("authority_http_requests_total") for name in after)
