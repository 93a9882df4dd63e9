"""Prometheus counters for what operators watch, derived from the audit events so the two never disagree.

With several worker processes, set ``PROMETHEUS_MULTIPROC_DIR`` (the container does) so ``/metrics`` sums them.
"""

from __future__ import annotations

import os

# Multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set in the container on a tmpfs) needs its folder before the first
# metric exists, whichever entry point (server, CLI) imports this first.
if directory := os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.makedirs(directory, exist_ok=True)

from prometheus_client import Counter

MINTS = Counter("authority_mints_total", "Impersonation tokens minted", ["role"])
EXCHANGES = Counter("authority_exchanges_total", "Impersonation tokens exchanged for a session")
REPLAYS = Counter("authority_replays_total", "Second uses of an impersonation token (refused; session revoked)")
DENIALS = Counter("authority_denials_total", "Refused requests, by refusal code", ["reason"])
REVOCATIONS = Counter("authority_revocations_total", "Sessions revoked on request")
KEY_EVENTS = Counter(
    "authority_key_events_total", "Key lifecycle changes (created, rescheduled, revoked, removed)", ["event"]
)


def count(event: str, outcome: str, role: str | None) -> None:
    if event == "mint":
        MINTS.labels(role=role or "").inc()
    elif event == "exchange":
        EXCHANGES.inc()
    elif event == "refusal":
        DENIALS.labels(reason=outcome).inc()
        if outcome == "token-replayed":
            REPLAYS.inc()
    elif event == "revocation":
        REVOCATIONS.inc()
    elif event == "key":
        KEY_EVENTS.labels(event=outcome).inc()
