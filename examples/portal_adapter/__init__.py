"""A reference implementation of the directory API the authority asks (``docs/directory-api.yaml``).

A portal implements two GETs over its own database; this adapter serves them from the authority's directory file
format, or from a small SQLite database, so an operator can try ``AUTHORITY_DIRECTORY_URL`` before the portal
does, and a portal engineer can read what the authority expects in a hundred lines. See ``README.md``.
"""

from examples.portal_adapter.app import create_app
from examples.portal_adapter.sources import SCHEMA, FileSource, Source, SqliteSource

__all__ = ["SCHEMA", "FileSource", "Source", "SqliteSource", "create_app"]
