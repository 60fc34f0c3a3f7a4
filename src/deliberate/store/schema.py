"""The tables as the code reads and writes them today.

This is the *current* shape; :mod:`deliberate.store.migrations` is how a database
gets there, and a test holds the two to the same columns and indexes. Column names
equal the field names of the records in :mod:`deliberate.tree`, so rows convert to
records without a mapping table. Timestamps are floats (seconds since the epoch).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "MIGRATIONS_TABLE",
    "attempts",
    "judgements",
    "metadata",
    "migrations_table",
    "model_calls",
    "nodes",
    "runs",
]

# Named constraints, so later migrations can alter them by name on PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)

MIGRATIONS_TABLE = "deliberate_migrations"

# One row per applied migration; the schema version is the row count.
migrations_table = Table(
    MIGRATIONS_TABLE,
    metadata,
    Column("name", String, primary_key=True),
    Column("applied_at", Double, nullable=False),
)

runs = Table(
    "runs",
    metadata,
    Column("id", String, primary_key=True),
    Column("config", JSON, nullable=False),
    Column("status", String, nullable=False),
    Column("created_at", Double, nullable=False, index=True),
    Column("updated_at", Double, nullable=False),
    Column("summary", JSON, nullable=False),
)

attempts = Table(
    "attempts",
    metadata,
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

nodes = Table(
    "nodes",
    metadata,
    Column("id", String, primary_key=True),
    Column("run_id", String, ForeignKey("runs.id"), nullable=False),
    Column("task_id", String, nullable=False),
    # No foreign key: a node may be written in the same batch as, or before, its parent.
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

judgements = Table(
    "judgements",
    metadata,
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

# The unique (run_id, task_id, key) index also serves lookups by run and by
# (run, task): a second index on its prefix would only slow the writes.
model_calls = Table(
    "model_calls",
    metadata,
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
