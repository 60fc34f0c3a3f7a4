"""Schema migrations: an append-only list of named functions.

:data:`MIGRATIONS` is applied in order when a store opens, inside one transaction,
and each applied name is recorded in the ``deliberate_migrations`` table. The schema
version of a database is the number of migrations applied to it.

Rules, because databases in the wild hold whatever a released migration did:

- never edit, rename, reorder or remove a migration once it has been released;
- change the schema only by appending a new migration (and updating
  :mod:`deliberate.store.schema`, which a test holds to the migrated result);
- a migration defines the tables it creates itself, frozen as they were, rather
  than importing :mod:`~deliberate.store.schema`, whose tables keep moving.

A database migrated by a newer deliberate (more, or unknown, migrations) is
refused with a :class:`~deliberate.errors.StoreError` rather than guessed at.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    insert,
    select,
    text,
)

from deliberate.errors import StoreError
from deliberate.store.schema import NAMING, migrations_table

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "migrate"]

Migration = Callable[[Connection], None]

# Any fixed 64-bit number: serialises concurrent migrators on one PostgreSQL database.
_PG_LOCK_KEY = 0x64656C6962


def m001_initial(conn: Connection) -> None:
    """Runs, task attempts, nodes, judgements and model calls."""
    md = MetaData(naming_convention=NAMING)
    Table(
        "runs",
        md,
        Column("id", String, primary_key=True),
        Column("config", JSON, nullable=False),
        Column("status", String, nullable=False),
        Column("created_at", Double, nullable=False, index=True),
        Column("updated_at", Double, nullable=False),
        Column("summary", JSON, nullable=False),
    )
    Table(
        "attempts",
        md,
        Column("run_id", String, ForeignKey("runs.id"), primary_key=True),
        Column("task_id", String, primary_key=True),
        Column("status", String, nullable=False),
        Column("root_id", String),
        Column("final_node_id", String),
        Column("answer", Text),
        Column("correct", Boolean),
        Column("budget_limited", Boolean, nullable=False),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("calls", Integer, nullable=False),
        Column("cost", Double, nullable=False),
        Column("latency_s", Double, nullable=False),
        Column("error", Text),
        Column("stats", JSON, nullable=False),
        Column("updated_at", Double, nullable=False),
    )
    Table(
        "nodes",
        md,
        Column("id", String, primary_key=True),
        Column("run_id", String, ForeignKey("runs.id"), nullable=False),
        Column("task_id", String, nullable=False),
        Column("parent_id", String, index=True),
        Column("role", String, nullable=False),
        Column("operator", String, nullable=False),
        Column("text", Text, nullable=False),
        Column("answer", Text),
        Column("depth", Integer, nullable=False),
        Column("status", String, nullable=False),
        Column("visits", Integer, nullable=False),
        Column("value", Double),
        Column("call_id", String),
        Column("sample_index", Integer),
        Column("meta", JSON, nullable=False),
        Column("created_at", Double, nullable=False),
        Index(None, "run_id", "task_id"),
    )
    Table(
        "judgements",
        md,
        Column("id", String, primary_key=True),
        Column("run_id", String, ForeignKey("runs.id"), nullable=False),
        Column("task_id", String, nullable=False),
        Column("node_id", String, nullable=False, index=True),
        Column("source", String, nullable=False),
        Column("role", String, nullable=False),
        Column("score", Double),
        Column("scale_min", Double),
        Column("scale_max", Double),
        Column("verdict", String),
        Column("critique", Text),
        Column("first_wrong_step", Integer),
        Column("meta", JSON, nullable=False),
        Column("created_at", Double, nullable=False),
        Index(None, "run_id", "task_id"),
    )
    Table(
        "model_calls",
        md,
        Column("id", String, primary_key=True),
        Column("run_id", String, ForeignKey("runs.id"), nullable=False),
        Column("task_id", String, nullable=False),
        Column("node_id", String),
        Column("key", String, nullable=False),
        Column("model", String, nullable=False),
        Column("role", String, nullable=False),
        Column("request", JSON, nullable=False),
        Column("response", JSON(none_as_null=True)),
        Column("prompt_tokens", BigInteger, nullable=False),
        Column("completion_tokens", BigInteger, nullable=False),
        Column("cost", Double, nullable=False),
        Column("latency_s", Double, nullable=False),
        Column("cached", Boolean, nullable=False),
        Column("error", Text),
        Column("created_at", Double, nullable=False),
        UniqueConstraint("run_id", "task_id", "key"),
    )
    md.create_all(conn)


# Append only. Never edit a released entry.
MIGRATIONS: list[tuple[str, Migration]] = [
    ("001_initial", m001_initial),
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(
    conn: Connection,
    where: str,
    migrations: list[tuple[str, Migration]] = MIGRATIONS,
) -> int:
    """Bring the database on ``conn`` up to date; return its schema version.

    Runs in the caller's transaction, so a failing migration leaves nothing half
    applied. ``where`` names the database in error messages.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    migrations_table.create(conn, checkfirst=True)
    applied = list(conn.scalars(select(migrations_table.c.name)))
    known = [name for name, _ in migrations]
    unknown = sorted(set(applied) - set(known))
    if len(applied) > len(known) or unknown:
        raise StoreError(
            f"database at {where} has schema version {len(applied)}, this deliberate "
            f"knows up to {len(known)}: upgrade deliberate"
            + (f" (unknown migrations: {', '.join(unknown)})" if unknown else "")
        )
    done = set(applied)
    for name, fn in migrations:
        if name in done:
            continue
        fn(conn)
        conn.execute(insert(migrations_table).values(name=name, applied_at=time.time()))
    return len(known)
