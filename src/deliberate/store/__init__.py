"""Persistence of the tree: runs, task attempts, nodes, judgements, model calls.

SQLite (WAL) by default at ``$DELIBERATE_HOME/deliberate.db``, PostgreSQL by URL.
See :mod:`deliberate.store.store` for how writes are batched and made durable,
and :mod:`deliberate.store.migrations` for how the schema evolves.
"""

from deliberate.store.migrations import SCHEMA_VERSION
from deliberate.store.store import MAX_BATCH, NodeView, Store
from deliberate.store.urls import default_home, default_path, resolve_url

__all__ = ["MAX_BATCH", "SCHEMA_VERSION", "NodeView", "Store", "default_home", "default_path",
           "resolve_url"]
