"""The production entry point for ASGI servers: ``uvicorn authority.asgi:app`` or ``granian authority.asgi:app``.

Configuration comes from ``AUTHORITY_*`` only; ``--demo`` does not exist here, so this path never has plain keys,
an embedded Redis or the demo issuer. Each worker process builds its own app (and Redis pool) from the same settings.
"""

from authority import logs
from authority.app import create_app
from authority.settings import load

logs.configure()
app = create_app(load())
