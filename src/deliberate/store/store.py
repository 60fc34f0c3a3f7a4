"""The :class:`Store`: the tree persisted with SQLAlchemy Core, used from asyncio.

Reads run the blocking SQLAlchemy work in a worker thread so the event loop keeps
driving model calls. Writes of attempts, nodes, judgements and model calls are
queued and written by one background writer task in batches, one transaction per
batch, in a worker thread:

- the writer takes everything queued (up to ``max_batch`` records) as soon as it
  is free, with no timer, so a lone record waits for nothing but its own commit;
  while one batch commits, the next accumulates (group commit);
- :meth:`Store.record_call` returns only once the batch holding the call has
  committed, so a model call is persisted before its result is used;
- :meth:`Store.put_node` and friends return at once; :meth:`Store.flush` and
  :meth:`Store.aclose` wait for them;
- a failing batch fails the ``record_call`` awaiting it, is raised again by
  ``flush``/``aclose`` as :class:`~deliberate.errors.StoreError`, and refuses
  further writes, because records were lost;
- reads first wait for writes already queued, so a read sees the caller's writes.

Runs are created and updated directly (awaited, own transaction): they are rare,
and the queued records refer to them. Create a run before writing into it. Those
direct writes also wait for what is queued first, so a run's status never gets
ahead of its rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    Connection,
    Engine,
    Insert,
    Select,
    create_engine,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, RowMapping
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from deliberate.errors import MissingDependencyError, StoreError
from deliberate.store import schema
from deliberate.store.migrations import migrate
from deliberate.store.urls import display_url, is_memory, resolve_url
from deliberate.tree import (
    AttemptRecord,
    JudgementRecord,
    ModelCallRecord,
    NodeRecord,
    RunRecord,
    RunStatus,
    now,
)

__all__ = ["MAX_BATCH", "NodeView", "Store"]

MAX_BATCH = 500
"""Most records written in one transaction."""

SQLITE_BUSY_MS = 30_000
"""How long a SQLite connection waits for another writer before failing."""

PG_CONNECT_TIMEOUT_S = 10

# Fields of a node that a later put with the same id replaces.
NODE_MUTABLE = ("text", "answer", "status", "visits", "value", "meta")

_R = TypeVar("_R")
_Kind = Literal["attempt", "node", "judgement", "call", "barrier", "stop"]


@dataclass(slots=True)
class _Write:
    """One entry of the writer queue: a record to write, or a barrier / stop marker.

    The record's row is taken when its batch is committed (on the event loop, so no
    await can split an update), not when it is queued: a node that a search updates
    many times before the writer gets to it is copied once, in its latest state.
    """

    kind: _Kind
    record: Any = None
    done: asyncio.Future[None] | None = None


def _reason(exc: BaseException) -> str:
    """The first line of what the database driver said, for one-line errors."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # The driver's own implicit transactions skip DDL and cannot BEGIN IMMEDIATE;
    # switch them off and begin transactions ourselves in _sqlite_on_begin.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        for pragma in (
            "journal_mode=WAL",
            "synchronous=NORMAL",
            "foreign_keys=ON",
            f"busy_timeout={SQLITE_BUSY_MS}",
        ):
            cur.execute(f"PRAGMA {pragma}")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # Writers take the write lock up front: a deferred transaction that later
    # upgrades can fail with SQLITE_BUSY without waiting for busy_timeout.
    write = conn.get_execution_options().get("deliberate_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _create_engine(url: URL) -> Engine:
    """An engine configured for its backend (pragmas, pool, timeouts)."""
    if url.get_backend_name() == "postgresql":
        try:
            return create_engine(
                url,
                pool_pre_ping=True,
                connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S},
            )
        except ModuleNotFoundError as e:
            raise MissingDependencyError("a PostgreSQL store", "postgres", "psycopg[binary]") from e
    if is_memory(url):
        # One private database: every thread must share its single connection.
        engine = create_engine(
            "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        assert url.database is not None
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _upsert_statements(dialect: str) -> dict[_Kind, Insert]:
    """The four write statements in the dialect's INSERT … ON CONFLICT form."""
    insert_fn = postgresql.insert if dialect == "postgresql" else sqlite.insert
    att = insert_fn(schema.attempts)
    node = insert_fn(schema.nodes)
    return {
        "attempt": att.on_conflict_do_update(
            index_elements=["run_id", "task_id"],
            set_={c.name: att.excluded[c.name] for c in schema.attempts.c if not c.primary_key},
        ),
        "node": node.on_conflict_do_update(
            index_elements=["id"],
            set_={name: node.excluded[name] for name in NODE_MUTABLE},
        ),
        "judgement": insert_fn(schema.judgements).on_conflict_do_nothing(),
        # Ignores a repeated id and a repeated (run_id, task_id, key) alike.
        "call": insert_fn(schema.model_calls).on_conflict_do_nothing(),
    }


def _coalesce(rows: Iterable[tuple[_Kind, dict[str, Any]]]
              ) -> dict[_Kind, list[dict[str, Any]]]:
    """Group a batch's rows by table, folding repeated upserts of one key into one row.

    PostgreSQL refuses an upsert that touches a row twice, and the merge keeps the
    semantics of applying the puts in order.
    """
    attempts: dict[tuple[str, str], dict[str, Any]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    out: dict[_Kind, list[dict[str, Any]]] = {"judgement": [], "call": []}
    for kind, row in rows:
        if kind == "attempt":
            attempts[(row["run_id"], row["task_id"])] = row
        elif kind == "node":
            first = nodes.get(row["id"])
            if first is None:
                nodes[row["id"]] = row
            else:
                first.update({name: row[name] for name in NODE_MUTABLE})
        else:
            out[kind].append(row)
    out["attempt"] = list(attempts.values())
    out["node"] = list(nodes.values())
    return out


def _pg_clean(value: Any) -> Any:
    """What PostgreSQL can hold: NUL in text becomes U+FFFD, non-finite JSON floats null.

    Model output can contain NUL bytes, which PostgreSQL text and JSON cannot store;
    without this one such reply would fail its whole batch.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {k: _pg_clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_pg_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _json_copy(value: Any) -> Any:
    """A copy of JSON-shaped data deep enough that later edits of the caller's dicts and
    lists cannot reach a queued write (``dataclasses.asdict`` does the same for any
    type, several times slower: it was the store's largest cost per model call)."""
    kind = type(value)
    if kind is dict:
        return {k: _json_copy(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_json_copy(v) for v in value]
    if kind in _SCALARS:
        return value
    return copy.deepcopy(value)


_SCALARS = frozenset({str, int, float, bool, type(None)})


def _row(record: Any) -> dict[str, Any]:
    """A record's fields as a row to queue, snapshotted (see :func:`_json_copy`)."""
    return {f.name: _json_copy(getattr(record, f.name)) for f in dataclasses.fields(record)}


def _tree_queries(run_id: str, task_id: str) -> tuple[Select[Any], Select[Any]]:
    """A task's nodes and its judgements, each in creation order."""
    n, j = schema.nodes, schema.judgements
    return (
        select(n).where(n.c.run_id == run_id, n.c.task_id == task_id)
        .order_by(n.c.created_at, n.c.id),
        select(j).where(j.c.run_id == run_id, j.c.task_id == task_id)
        .order_by(j.c.created_at, j.c.id),
    )


@dataclass(frozen=True)
class NodeView:
    """What :meth:`Store.load_node` reads: a node, its parent, its judgements, and by id
    the calls that made it, were made for it or its judgements cite (each in creation
    order)."""

    node: NodeRecord
    parent: NodeRecord | None
    judgements: list[JudgementRecord]
    calls: dict[str, ModelCallRecord]


def _records(factory: Callable[..., _R], rows: Iterable[RowMapping]) -> list[_R]:
    return [factory(**row) for row in rows]


class Store:
    """The tree's persistence: SQLite by default, PostgreSQL by URL.

    Open with :meth:`open` (blocking) or ``await Store.aopen(url)`` (which also
    starts the writer); use as ``async with``; close with :meth:`aclose`. Each Store
    owns its engine, so several stores (or runs) can share a process.
    """

    def __init__(self, engine: Engine, url: URL, *, max_batch: int = MAX_BATCH) -> None:
        """Wrap an engine whose schema is current; use :meth:`open` instead."""
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._engine = engine
        self._dialect = engine.dialect.name
        self._where = display_url(url)
        self._max_batch = max_batch
        self._statements = _upsert_statements(self._dialect)
        self._write_engine = (
            engine.execution_options(deliberate_write=True) if self._dialect == "sqlite" else engine
        )
        # An in-memory SQLite database is one connection: serialise its users.
        self._serial: threading.Lock | None = threading.Lock() if is_memory(url) else None
        self._queue: asyncio.Queue[_Write] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._accepting = False
        self._closed = False
        self._pending = 0
        self._failure: StoreError | None = None
        self._batches = 0

    # ----------------------------------------------------------------- lifecycle

    @classmethod
    def open(cls, url: str | None = None, *, max_batch: int = MAX_BATCH) -> Store:
        """Connect, create or migrate the schema, and return a Store (not started).

        Blocking; from async code prefer :meth:`aopen`. Raises StoreError with one
        line when the database cannot be reached or is newer than this code.
        """
        parsed = resolve_url(url)
        where = display_url(parsed)
        try:
            engine = _create_engine(parsed)
        except OSError as e:
            raise StoreError(f"cannot open store {where}: {e.strerror or e}") from e
        try:
            with engine.execution_options(deliberate_write=True).begin() as conn:
                migrate(conn, where)
        except StoreError:
            engine.dispose()
            raise
        except (SQLAlchemyError, OSError) as e:
            engine.dispose()
            raise StoreError(f"cannot open store {where}: {_reason(e)}") from e
        return cls(engine, parsed, max_batch=max_batch)

    @classmethod
    async def aopen(cls, url: str | None = None, *, max_batch: int = MAX_BATCH) -> Store:
        """Open in a worker thread and start the writer."""
        store = await asyncio.to_thread(cls.open, url, max_batch=max_batch)
        await store.start()
        return store

    async def start(self) -> None:
        """Start the background writer on the running event loop."""
        if self._closed:
            raise StoreError(f"store {self._where} is closed")
        if self._writer is not None:
            return
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(self._queue), name="store-writer")
        self._accepting = True

    async def aclose(self) -> None:
        """Write everything queued, stop the writer and release the connections.

        Raises StoreError if any batch failed since the store opened.
        """
        if self._closed:
            return
        self._closed = True
        self._accepting = False
        try:
            if self._writer is not None and self._queue is not None:
                self._queue.put_nowait(_Write("stop"))
                await self._writer
        finally:
            await asyncio.to_thread(self._engine.dispose)
        self._raise_failure()

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        """The database URL, password masked."""
        return self._where

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self._dialect

    @property
    def batches_committed(self) -> int:
        """How many write batches the writer has committed (for tests and metrics)."""
        return self._batches

    def __repr__(self) -> str:
        return f"Store({self._where!r})"

    # -------------------------------------------------------------------- runs

    async def create_run(self, run: RunRecord) -> None:
        """Insert a new run; StoreError if its id exists."""
        row = dataclasses.asdict(run)

        def write(conn: Connection) -> None:
            try:
                conn.execute(insert(schema.runs).values(**row))
            except IntegrityError:
                raise StoreError(f"run {run.id!r} already exists in {self._where}") from None

        await self._write_now(write)

    async def update_run(
        self,
        run_id: str,
        *,
        status: RunStatus | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        """Set a run's status and/or replace its summary; bumps ``updated_at``."""
        values: dict[str, Any] = {"updated_at": now()}
        if status is not None:
            values["status"] = status
        if summary is not None:
            values["summary"] = copy.deepcopy(summary)
        stmt = update(schema.runs).where(schema.runs.c.id == run_id).values(**values)

        def write(conn: Connection) -> None:
            if conn.execute(stmt).rowcount == 0:
                raise StoreError(f"no run {run_id!r} in {self._where}")

        await self._write_now(write)

    async def get_run(self, run_id: str) -> RunRecord | None:
        stmt = select(schema.runs).where(schema.runs.c.id == run_id)
        rows = await self._read(lambda c: _records(RunRecord, c.execute(stmt).mappings()))
        return rows[0] if rows else None

    async def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The most recently created runs first."""
        t = schema.runs
        stmt = select(t).order_by(t.c.created_at.desc(), t.c.id.desc()).limit(limit)
        return await self._read(lambda c: _records(RunRecord, c.execute(stmt).mappings()))

    # ---------------------------------------------------------- queued writes

    def put_attempt(self, attempt: AttemptRecord) -> None:
        """Queue an upsert of a task attempt (all fields replaced)."""
        self._enqueue(_Write("attempt", attempt))

    def put_node(self, node: NodeRecord) -> None:
        """Queue an upsert by id; a repeat replaces text, answer, status, visits, value, meta."""
        self._enqueue(_Write("node", node))

    def put_judgement(self, judgement: JudgementRecord) -> None:
        """Queue an insert; a judgement whose id exists is ignored."""
        self._enqueue(_Write("judgement", judgement))

    async def record_call(self, call: ModelCallRecord) -> None:
        """Persist a model call; returns once it is committed.

        A call whose (run_id, task_id, key) or id exists is ignored: on resume the
        stored one stands.
        """
        done = asyncio.get_running_loop().create_future()
        self._enqueue(_Write("call", call, done))
        await done

    async def flush(self) -> None:
        """Wait until everything queued so far is committed; raise any write failure."""
        if self._accepting:
            await self._barrier()
        self._raise_failure()

    # ------------------------------------------------------------------ reads

    async def get_attempts(self, run_id: str) -> list[AttemptRecord]:
        """A run's task attempts, by task id."""
        t = schema.attempts
        stmt = select(t).where(t.c.run_id == run_id).order_by(t.c.task_id)
        return await self._read(lambda c: _records(AttemptRecord, c.execute(stmt).mappings()))

    async def get_attempt(self, run_id: str, task_id: str) -> AttemptRecord | None:
        t = schema.attempts
        stmt = select(t).where(t.c.run_id == run_id, t.c.task_id == task_id)
        rows = await self._read(lambda c: _records(AttemptRecord, c.execute(stmt).mappings()))
        return rows[0] if rows else None

    async def load_calls(self, run_id: str, task_id: str) -> dict[str, ModelCallRecord]:
        """A task attempt's model calls keyed by journal key, for resume."""
        t = schema.model_calls
        stmt = select(t).where(t.c.run_id == run_id, t.c.task_id == task_id)
        calls = await self._read(lambda c: _records(ModelCallRecord, c.execute(stmt).mappings()))
        return {call.key: call for call in calls}

    async def load_tree(
        self, run_id: str, task_id: str
    ) -> tuple[list[NodeRecord], list[JudgementRecord]]:
        """A task attempt's nodes and judgements, each in creation order."""
        nodes_q, judgements_q = _tree_queries(run_id, task_id)

        def read(c: Connection) -> tuple[list[NodeRecord], list[JudgementRecord]]:
            return (
                _records(NodeRecord, c.execute(nodes_q).mappings()),
                _records(JudgementRecord, c.execute(judgements_q).mappings()),
            )

        return await self._read(read)

    async def page_attempts(self, run_id: str, *, after: str | None = None,
                            limit: int = 500) -> list[AttemptRecord]:
        """Up to ``limit`` of a run's attempts in task-id order, after task ``after``.

        Keyset paging: a reader walks a large run a page at a time (pass the last
        task id of one page as ``after`` of the next) with memory that follows the
        page, not the run.
        """
        t = schema.attempts
        stmt = select(t).where(t.c.run_id == run_id)
        if after is not None:
            stmt = stmt.where(t.c.task_id > after)
        stmt = stmt.order_by(t.c.task_id).limit(limit)
        return await self._read(lambda c: _records(AttemptRecord, c.execute(stmt).mappings()))

    async def count_attempts(self, run_id: str) -> int:
        """How many task attempts a run has."""
        t = schema.attempts
        stmt = select(func.count()).select_from(t).where(t.c.run_id == run_id)
        return await self._read(lambda c: int(c.execute(stmt).scalar_one()))

    async def load_task(
        self, run_id: str, task_id: str
    ) -> tuple[list[NodeRecord], list[JudgementRecord], dict[str, ModelCallRecord]]:
        """A task attempt's nodes and judgements (creation order) and its model calls by
        call id, in one read (what an export needs of one task)."""
        nodes_q, judgements_q = _tree_queries(run_id, task_id)
        m = schema.model_calls
        calls_q = select(m).where(m.c.run_id == run_id, m.c.task_id == task_id)

        def read(
            c: Connection,
        ) -> tuple[list[NodeRecord], list[JudgementRecord], dict[str, ModelCallRecord]]:
            calls = _records(ModelCallRecord, c.execute(calls_q).mappings())
            return (
                _records(NodeRecord, c.execute(nodes_q).mappings()),
                _records(JudgementRecord, c.execute(judgements_q).mappings()),
                {call.id: call for call in calls},
            )

        return await self._read(read)

    async def load_node(self, run_id: str, task_id: str, node_id: str) -> NodeView | None:
        """One node with its parent, its judgements and the calls about it, without
        reading the rest of its task (a web view opens nodes of 5,000-node trees)."""
        n, j, m = schema.nodes, schema.judgements, schema.model_calls
        node_q = select(n).where(n.c.id == node_id, n.c.run_id == run_id,
                                 n.c.task_id == task_id)
        judgements_q = (select(j).where(j.c.node_id == node_id, j.c.run_id == run_id)
                        .order_by(j.c.created_at, j.c.id))

        def read(c: Connection) -> NodeView | None:
            found = _records(NodeRecord, c.execute(node_q).mappings())
            if not found:
                return None
            node = found[0]
            parent = None
            if node.parent_id is not None:
                up = select(n).where(n.c.id == node.parent_id, n.c.run_id == run_id)
                parents = _records(NodeRecord, c.execute(up).mappings())
                parent = parents[0] if parents else None
            judgements = _records(JudgementRecord, c.execute(judgements_q).mappings())
            cited = {node.call_id} if node.call_id is not None else set()
            for jm in judgements:
                ids = jm.meta.get("call_ids")
                if isinstance(ids, list):
                    cited.update(str(i) for i in ids)
            about = m.c.node_id == node_id
            calls_q = (select(m).where(m.c.run_id == run_id, m.c.task_id == task_id,
                                       or_(about, m.c.id.in_(cited)) if cited else about)
                       .order_by(m.c.created_at, m.c.id))
            calls = _records(ModelCallRecord, c.execute(calls_q).mappings())
            return NodeView(node, parent, judgements, {call.id: call for call in calls})

        return await self._read(read)

    async def call_models(self, run_id: str) -> list[tuple[str, str, int]]:
        """(model, role, calls) of a run's model calls, most calls first (for reports)."""
        t = schema.model_calls
        n = func.count().label("n")
        stmt = (
            select(t.c.model, t.c.role, n)
            .where(t.c.run_id == run_id)
            .group_by(t.c.model, t.c.role)
            .order_by(n.desc(), t.c.model, t.c.role)
        )
        return await self._read(
            lambda c: [(str(r[0]), str(r[1]), int(r[2])) for r in c.execute(stmt)]
        )

    async def count_calls(self, run_id: str, *, cached: bool | None = None) -> int:
        """How many model calls a run made (optionally only cache hits or misses)."""
        t = schema.model_calls
        stmt = select(func.count()).select_from(t).where(t.c.run_id == run_id)
        if cached is not None:
            stmt = stmt.where(t.c.cached == cached)
        return await self._read(lambda c: int(c.execute(stmt).scalar_one()))

    async def call_totals(self, run_ids: Sequence[str], *, cached: bool | None = None
                          ) -> tuple[int, int, int, float]:
        """(calls, prompt tokens, completion tokens, cost) of the model calls recorded
        for these runs (optionally only cache hits or misses): what a sweep of many runs
        has paid for so far."""
        t = schema.model_calls
        stmt = select(func.count(), func.coalesce(func.sum(t.c.prompt_tokens), 0),
                      func.coalesce(func.sum(t.c.completion_tokens), 0),
                      func.coalesce(func.sum(t.c.cost), 0.0)).where(
            t.c.run_id.in_(list(run_ids)))
        if cached is not None:
            stmt = stmt.where(t.c.cached == cached)

        def read(c: Connection) -> tuple[int, int, int, float]:
            row = c.execute(stmt).one()
            return int(row[0]), int(row[1]), int(row[2]), float(row[3])

        if not run_ids:
            return 0, 0, 0, 0.0
        return await self._read(read)

    # -------------------------------------------------------------- internals

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise StoreError(str(self._failure)) from self._failure.__cause__

    def _enqueue(self, write: _Write) -> None:
        if not self._accepting or self._queue is None:
            state = "closed" if self._closed else "not started (await store.start())"
            raise StoreError(f"store {self._where} is {state}")
        self._raise_failure()
        self._queue.put_nowait(write)
        self._pending += 1

    async def _after_queued(self) -> None:
        """Wait for the writes queued so far, if any: reads must see them, and a direct
        write must not overtake them."""
        if self._pending and self._accepting:
            await self._barrier()

    async def _barrier(self) -> None:
        """Wait until the writer has handled everything queued before this call."""
        assert self._queue is not None
        done = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write("barrier", done=done))
        await done

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        if self._serial is None:
            yield
        else:
            with self._serial:
                yield

    async def _read(self, fn: Callable[[Connection], _R]) -> _R:
        """Run ``fn`` on a connection in a worker thread, after queued writes."""
        if self._closed:
            raise StoreError(f"store {self._where} is closed")
        await self._after_queued()

        def run() -> _R:
            try:
                with self._exclusive(), self._engine.connect() as conn:
                    return fn(conn)
            except SQLAlchemyError as e:
                raise StoreError(f"store {self._where}: {_reason(e)}") from e

        return await asyncio.to_thread(run)

    async def _write_now(self, fn: Callable[[Connection], None]) -> None:
        """Run ``fn`` in its own transaction in a worker thread, after queued writes.

        A run marked done before its last attempt is committed would, killed in
        between, be skipped on resume with that task unanswered.
        """
        if self._closed:
            raise StoreError(f"store {self._where} is closed")
        await self._after_queued()

        def run() -> None:
            try:
                with self._exclusive(), self._write_engine.begin() as conn:
                    fn(conn)
            except SQLAlchemyError as e:
                raise StoreError(f"store {self._where}: {_reason(e)}") from e

        await asyncio.to_thread(run)

    def _write_batch(self, rows: list[tuple[_Kind, dict[str, Any]]]) -> None:
        """Write one batch in one transaction (runs in a worker thread)."""
        groups = _coalesce(rows)
        with self._exclusive(), self._write_engine.begin() as conn:
            for kind in ("attempt", "node", "judgement", "call"):
                table_rows = groups[kind]
                if table_rows and self._dialect == "postgresql":
                    table_rows = [_pg_clean(r) for r in table_rows]
                if table_rows:
                    conn.execute(self._statements[kind], table_rows)

    async def _write_loop(self, queue: asyncio.Queue[_Write]) -> None:
        """The writer: take all that is queued, commit it, settle its waiters, repeat."""
        batch: list[_Write] = []
        try:
            while True:
                batch = [await queue.get()]
                while len(batch) < self._max_batch and not queue.empty():
                    batch.append(queue.get_nowait())
                stop = any(w.kind == "stop" for w in batch)
                await self._commit(batch)
                batch = []
                if stop:
                    return
        finally:
            # Only reached early on cancellation or a bug: nobody may wait forever.
            leftover = batch + [queue.get_nowait() for _ in range(queue.qsize())]
            for w in leftover:
                if w.done is not None and not w.done.done():
                    w.done.set_exception(StoreError(f"store {self._where}: writer stopped"))
            self._pending = 0

    async def _commit(self, batch: list[_Write]) -> None:
        writes = [w for w in batch if w.record is not None]
        snapshots: dict[int, dict[str, Any]] = {}  # one per record object in a batch
        for w in writes:
            if id(w.record) not in snapshots:
                snapshots[id(w.record)] = _row(w.record)
        rows = [(w.kind, snapshots[id(w.record)]) for w in writes]
        error: StoreError | None = None
        if writes:
            try:
                await asyncio.to_thread(self._write_batch, rows)
            except Exception as e:
                error = StoreError(
                    f"store {self._where}: writing a batch of {len(writes)} records "
                    f"failed: {_reason(e)}"
                )
                error.__cause__ = e
                if self._failure is None:
                    self._failure = error
            else:
                self._batches += 1
            finally:
                self._pending -= len(writes)
        for w in batch:
            if w.done is None or w.done.done():
                continue
            if error is not None and w.kind == "call":
                failed = StoreError(str(error))
                failed.__cause__ = error.__cause__
                w.done.set_exception(failed)
            else:
                w.done.set_result(None)
