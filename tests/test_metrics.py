"""/metrics: Prometheus text with the counters operators alert on, moving with what the service does."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar.testing import TestClient

from authority.metrics import MULTIPROC_DIR
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


def labelled(samples: dict[str, float]) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The samples by name and label set, whatever order the exposition writes the labels in."""
    found = {}
    for sample, value in samples.items():
        name, _, labels = sample.partition("{")
        found[name, frozenset(re.findall(r'([a-z_]+)="([^"]*)"', labels))] = value
    return found


def test_http_series_count_each_routed_request_by_route_template_and_status(
    client: TestClient[Any], stack: Stack
) -> None:
    """The series (names, labels, buckets) Litestar's Prometheus middleware kept, which dashboards read."""
    before = labelled(scrape(client))
    client.post(EXCHANGE, json={"token": mint(client, stack)})
    client.post(EXCHANGE, json={"token": "x.y.z"})
    client.post(EXCHANGE, json={"token": "a.b.c"})
    after = labelled(scrape(client))

    def grew(name: str, status: int, **more: str) -> float:
        route = {
            "method": "POST",
            "path": "/api/sys/users/exchange",
            "status_code": str(status),
            "app_name": "authority",
        }
        key = (name, frozenset({**route, **more}.items()))
        return after.get(key, 0) - before.get(key, 0)

    assert grew("authority_http_requests_total", 200) == 1
    assert grew("authority_http_requests_total", 401) == 2
    assert grew("authority_http_request_duration_seconds_count", 401) == 2
    assert grew("authority_http_request_duration_seconds_bucket", 401, le="+Inf") == 2
    assert grew("authority_http_requests_in_progress", 200) == 0
    assert (
        "authority_http_requests_in_progress",
        frozenset(
            {"method": "POST", "path": "/api/sys/users/exchange", "status_code": "200", "app_name": "authority"}.items()
        ),
    ) in after
    assert grew("authority_http_requests_error_total", 200) == grew("authority_http_requests_error_total", 401) == 0


# --- PROMETHEUS_MULTIPROC_DIR: one server's folder ------------------------------------------------------------

# A process that claims the folder as authority.asgi does, counts an exchange, says so, and runs until its stdin
# closes; or says why it may not have the folder, in one line, and exits 2.
CLAIMER = """
import sys
from authority import metrics
from authority.settings import SettingsError
try:
    metrics.claim_folder()
except SettingsError as exc:
    print(exc, flush=True)
    sys.exit(2)
metrics.count("exchange", "session", None)
print("claimed", flush=True)
sys.stdin.read()
"""


@dataclass
class Claimer:
    process: subprocess.Popen[str]
    said: str


def claim(folder: Path, *, own_group: bool = False) -> Claimer:
    """A process of this test's claiming ``folder``, started by this process (its parent, as a server's main process
    starts its workers); ``own_group``: in a process group of its own, as systemd starts a single-process server."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIMER],
        env={**os.environ, MULTIPROC_DIR: str(folder)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        process_group=0 if own_group else None,
    )
    assert process.stdout is not None
    return Claimer(process, process.stdout.readline().strip())


def stop(claimer: Claimer) -> int:
    """Let ``claimer`` end (if it has not already) and wait for it; its exit status."""
    assert claimer.process.stdin is not None
    assert claimer.process.stdout is not None
    claimer.process.stdin.close()
    status = claimer.process.wait(timeout=30)
    claimer.process.stdout.close()
    return status


def counter_files(folder: Path) -> set[str]:
    return {path.name for path in folder.glob("counter_*.db")}


def test_processes_of_one_server_share_its_metrics_folder(tmp_path: Path) -> None:
    """Two processes under one parent (a server's workers; a respawned worker is one more) keep each other's
    counts: the second claims the folder without emptying it."""
    folder = tmp_path / "prometheus"
    first = claim(folder)
    try:
        assert first.said == "claimed"
        second = claim(folder)
        try:
            assert second.said == "claimed"
            assert counter_files(folder) == {f"counter_{first.process.pid}.db", f"counter_{second.process.pid}.db"}
        finally:
            stop(second)
    finally:
        stop(first)


def test_a_second_server_refuses_a_running_servers_metrics_folder_and_a_later_one_empties_it(tmp_path: Path) -> None:
    """A process of another server (here: another process group under the same parent, as systemd starts
    single-process servers) is refused while the owner runs, in one line naming the variable; once the owner has
    stopped, the next server takes the folder and empties it, so its counts start at 0."""
    folder = tmp_path / "prometheus"
    owner = claim(folder)
    try:
        assert owner.said == "claimed"
        intruder = claim(folder, own_group=True)
        assert stop(intruder) == 2
        assert intruder.said.startswith(f"{MULTIPROC_DIR}: {folder} is in use by another running server ("), intruder
        assert counter_files(folder) == {f"counter_{owner.process.pid}.db"}
    finally:
        stop(owner)
    successor = claim(folder, own_group=True)
    try:
        assert successor.said == "claimed"
        assert counter_files(folder) == {f"counter_{successor.process.pid}.db"}  # the stopped owner's are gone
    finally:
        stop(successor)


def test_an_unusable_metrics_folder_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    """A folder that cannot be made (here: under a file) stops the start as a setting would, not with a traceback."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    refused = claim(blocker / "prometheus")
    assert stop(refused) == 2
    assert refused.said == f"{MULTIPROC_DIR}: {blocker / 'prometheus'}: Not a directory", refused.said
