"""``python -m examples.portal_adapter (--file directory.json | --sqlite portal.db) [--host H] [--port N]``.

The bearer token the authority must send (``AUTHORITY_DIRECTORY_TOKEN``) is ``--token``, or better
``PORTAL_ADAPTER_TOKEN`` in the environment (a command line is visible to every user of the host); none: open.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

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
    args = parser.parse_args(argv)
    try:
        chosen: Source = FileSource(args.file) if args.file else SqliteSource(args.sqlite)
    except (OSError, ValueError, sqlite3.Error) as exc:  # a missing or unreadable file or table
        print(f"portal adapter: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(create_app(chosen, args.token or None), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
