"""Where the store lives: the default path and the URLs we accept.

With no URL the store is SQLite at ``$DELIBERATE_HOME/deliberate.db``, where
``DELIBERATE_HOME`` defaults to ``~/.local/share/deliberate``. Accepted forms:

- a filesystem path (``runs.db``, ``~/data/x.db``): SQLite at that file;
- ``sqlite:///relative.db``, ``sqlite:////abs/path.db``; ``sqlite://`` or
  ``sqlite:///:memory:`` for a private in-memory database;
- ``postgresql://user:pw@host/db`` (also ``postgres://``), which is pinned to the
  psycopg 3 driver; an explicit ``postgresql+driver://`` is kept as given.

Any other database is refused: the upserts are written for these two dialects.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from deliberate.errors import StoreError

__all__ = ["default_home", "default_path", "display_url", "is_memory", "resolve_url"]


def default_home() -> Path:
    """``$DELIBERATE_HOME``, else ``~/.local/share/deliberate``."""
    home = os.environ.get("DELIBERATE_HOME")
    if home:
        return Path(home).expanduser()
    return Path.home() / ".local" / "share" / "deliberate"


def default_path() -> Path:
    """The SQLite file used when no store URL is given."""
    return default_home() / "deliberate.db"


def resolve_url(url: str | None) -> URL:
    """Turn what the user gave into a SQLAlchemy URL for SQLite or PostgreSQL."""
    if url is None or url == "":
        return URL.create("sqlite", database=str(default_path()))
    if "://" not in url:
        return URL.create("sqlite", database=str(Path(url).expanduser().resolve()))
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise StoreError(f"cannot parse store URL {url!r}: {e}") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            parsed = parsed.set(database=str(Path(parsed.database).expanduser()))
        return parsed
    raise StoreError(
        f"unsupported store URL {display_url(parsed)}: "
        "use a file path, sqlite:///path or postgresql://user@host/db"
    )


def is_memory(url: URL) -> bool:
    """True for SQLite's private in-memory database."""
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def display_url(url: URL) -> str:
    """The URL with its password masked, for messages."""
    return url.render_as_string(hide_password=True)
