"""The production entry point for ASGI servers: ``uvicorn authority.asgi:app`` or ``granian authority.asgi:app``.

Configuration comes from ``AUTHORITY_*`` only; ``--demo`` does not exist here, so this path never has plain keys,
an embedded Redis or the demo issuer. Each worker process builds its own app (and Redis pool) from the same settings.
"""

import sys

from authority import logs, metrics
from authority.app import create_app, freeze_startup
from authority.services import OPERATOR_ERRORS, RefusedStart, say
from authority.settings import load

logs.configure()
try:
    settings = load(serving=True)
    metrics.claim_folder()  # PROMETHEUS_MULTIPROC_DIR: this server's alone, before anything is counted
    # What only the start can find (keys in Redis sealed with another passphrase, say) is said as the settings are:
    # one line per mistake, then the server exits non-zero (RefusedStart).
    app = RefusedStart(create_app(settings))
    freeze_startup()
except OPERATOR_ERRORS as exc:  # one line per mistake in every worker's log, not a traceback
    say(exc, sys.stderr)
    raise SystemExit(2) from None
