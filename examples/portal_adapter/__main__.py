"""``python -m examples.portal_adapter (--file directory.json | --sqlite portal.db) [--host H] [--port N]
[--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]``.

The bearer token the authority must send (``AUTHORITY_DIRECTORY_TOKEN``) is ``--token``, or better
``PORTAL_ADAPTER_TOKEN`` in the environment (a command line is visible to every user of the host); none: open.
With ``--tls-cert`` it serves HTTPS; with ``--tls-client-ca`` too, only to clients whose certificate that CA
signed (the authority's ``AUTHORITY_DIRECTORY_TLS_CERT``): mutual TLS, as a portal may require.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import ssl
import sys
from pathlib import Path
from typing import Any

import uvicorn

from examples.portal_adapter.app import create_app
from examples.portal_adapter.sources import FileSource, Source, SqliteSource


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.portal_adapter", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--file", type=Path, help="a directory file, in authority/demo_directory.json's format")
    source.add_argument("--sqlite", type=Path, help="a SQLite database with the schema of the README")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--token", default=os.environ.get("PORTAL_ADAPTER_TOKEN"), help="bearer token to require")
    parser.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM, chain included)")
    parser.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    parser.add_argument("--tls-client-ca", type=Path, help="require client certificates signed by this CA (PEM)")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        parser.error("--tls-cert and --tls-key go together, and --tls-client-ca needs them")
    try:
        chosen: Source = FileSource(args.file) if args.file else SqliteSource(args.sqlite)
    except (OSError, ValueError, sqlite3.Error) as exc:  # a missing or unreadable file or table
        print(f"portal adapter: {exc}", file=sys.stderr)
        return 2
    tls: dict[str, Any] = {}  # uvicorn.run's ssl_* options
    if args.tls_cert:
        tls = {"ssl_certfile": args.tls_cert, "ssl_keyfile": args.tls_key}
        if args.tls_client_ca:
            tls |= {"ssl_ca_certs": str(args.tls_client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    app = create_app(chosen, args.token or None)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", **tls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
