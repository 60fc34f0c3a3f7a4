"""The store against SQLite and a real PostgreSQL server.

PostgreSQL tests need DELIBERATE_TEST_POSTGRES_URL (``eval "$(bash .ci/postgres.sh)"``);
each gets a fresh schema in that database, dropped afterwards. Without
the variable they skip, except under CI=true, where they fail: CI never skips them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import UniqueConstraint, create_engine, event, insert, inspect

from deliberate.errors import StoreError
from deliberate.store import SCHEMA_VERSION, Store, default_path, resolve_url
from deliberate.store import schema as tables
from deliberate.store.migrations import MIGRATIONS, migrate
from deliberate.tree import (
    AttemptRecord,
    JudgementRecord,
    ModelCallRecord,
    NodeRecord,
    RunRecord,
)

PG_ENV = "DELIBERATE_TEST_POSTGRES_URL"
SETUP_HINT = 'eval "$(bash .ci/postgres.sh)"'


# ------------------------------------------------------------------ fixtures


def _pg_admin_url() -> str:
    url = os.environ.get(PG_ENV)
    if url:
        return url
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(
            f"CI=true but {PG_ENV} is not set: PostgreSQL tests must run in CI ({SETUP_HINT})"
        )
    pytest.skip(f"{PG_ENV} is not set; run {SETUP_HINT} to test against PostgreSQL")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose tables land in a fresh, empty schema, dropped after the test.

    A schema per test rather than a database: CREATE DATABASE costs half a second.
    """
    admin = resolve_url(_pg_admin_url())
    name = f"t_{uuid.uuid4().hex[:16]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
        try:
            url = admin.update_query_dict({"options": f"-csearch_path={name}"})
            yield url.render_as_string(hide_password=False)
        finally:
            with engine.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await Store.aopen(store_url)
    try:
        yield s
    finally:
        await s.aclose()


# ------------------------------------------------------------------- helpers


def make_run(run_id: str = "run-1", created_at: float | None = None) -> RunRecord:
    run = RunRecord(
        id=run_id,
        config={"strategy": "best_of_n", "n": 4, "model": {"name": "sim:é", "t": 0.8}},
        status="running",
        summary={"accuracy": None, "tags": ["a", "b"]},
    )
    if created_at is not None:
        run.created_at = run.updated_at = created_at
    return run


def make_node(node_id: str, run_id: str = "run-1", task_id: str = "t1", **kw: Any) -> NodeRecord:
    fields: dict[str, Any] = {"parent_id": None, "role": "generator", "operator": "generate"}
    fields.update(kw)
    return NodeRecord(id=node_id, run_id=run_id, task_id=task_id, **fields)


def make_call(
    i: int, run_id: str = "run-1", task_id: str = "t1", key: str | None = None, **kw: Any
) -> ModelCallRecord:
    fields: dict[str, Any] = {
        "node_id": None,
        "model": "sim",
        "role": "generator",
        "request": {"messages": [{"role": "user", "content": f"q{i}"}]},
        "response": {"choices": [{"text": f"a{i}"}]},
    }
    fields.update(kw)
    return ModelCallRecord(
        id=f"call-{i}", run_id=run_id, task_id=task_id, key=key or f"key-{i}", **fields
    )


async def in_thread_store(url: str) -> Store:
    """A second, independent Store (own engine) on the same database."""
    return await Store.aopen(url)


# -------------------------------------------------------------- round trips


async def test_every_record_round_trips_with_all_fields(store: Store) -> None:
    run = make_run()
    run.status = "interrupted"
    await store.create_run(run)
    attempt = AttemptRecord(
        run_id=run.id,
        task_id="t1",
        status="budget_limited",
        root_id="n-root",
        final_node_id="n-child",
        answer="42",
        correct=True,
        budget_limited=True,
        prompt_tokens=3_000_000_000,
        completion_tokens=456,
        calls=7,
        cost=0.125,
        latency_s=3.5,
        error="budget: tokens",
        stats={"depth": 2, "scores": [0.1, 0.9], "nested": {"ok": False}},
        updated_at=1_700_000_000.123456,
    )
    root = make_node("n-root", text="root", depth=0, status="open", created_at=1.5)
    child = NodeRecord(
        id="n-child",
        run_id=run.id,
        task_id="t1",
        parent_id="n-root",
        role="refiner",
        operator="refine",
        text="the answer is 42 ✓",
        answer="42",
        depth=1,
        status="pruned",
        visits=9,
        value=0.75,
        call_id="call-1",
        sample_index=3,
        meta={"virtual_loss": 1, "why": "ok", "null": None},
        created_at=2.25,
    )
    judgement = JudgementRecord(
        id="j-1",
        run_id=run.id,
        task_id="t1",
        node_id="n-child",
        source="model:sim",
        role="critic",
        score=7.5,
        scale_min=1.0,
        scale_max=10.0,
        verdict="incorrect",
        critique="step 2 divides by zero",
        first_wrong_step=2,
        meta={"raw": "Score: 7.5"},
        created_at=3.0,
    )
    call = ModelCallRecord(
        id="call-1",
        run_id=run.id,
        task_id="t1",
        node_id="n-child",
        key="k-1",
        model="sim",
        role="refiner",
        request={"messages": [{"role": "user", "content": "hi"}], "temperature": 0.8, "n": 2},
        response={"choices": [{"message": {"content": "42"}}], "usage": {"total": 5}},
        prompt_tokens=12,
        completion_tokens=34,
        cost=0.001,
        latency_s=0.25,
        cached=True,
        error="partial",
        created_at=4.0,
    )
    failed_call = make_call(2, response=None, error="HTTP 500")
    store.put_attempt(attempt)
    store.put_node(root)
    store.put_node(child)
    store.put_judgement(judgement)
    await store.record_call(call)
    await store.record_call(failed_call)
    await store.flush()

    assert await store.get_run(run.id) == run
    assert await store.get_attempt(run.id, "t1") == attempt
    assert await store.get_attempts(run.id) == [attempt]
    assert await store.load_tree(run.id, "t1") == ([root, child], [judgement])
    assert await store.load_calls(run.id, "t1") == {"k-1": call, "key-2": failed_call}


async def test_missing_records_read_as_none_or_empty(store: Store) -> None:
    assert await store.get_run("nope") is None
    assert await store.get_attempt("nope", "t") is None
    assert await store.get_attempts("nope") == []
    assert await store.load_tree("nope", "t") == ([], [])
    assert await store.load_calls("nope", "t") == {}
    assert await store.count_calls("nope") == 0


async def test_update_run_sets_status_and_summary(store: Store) -> None:
    run = make_run(created_at=100.0)
    await store.create_run(run)
    await store.update_run(run.id, status="done")
    got = await store.get_run(run.id)
    assert got is not None
    assert (got.status, got.summary, got.created_at) == ("done", run.summary, 100.0)
    assert got.updated_at > 100.0
    await store.update_run(run.id, summary={"accuracy": 0.5})
    got = await store.get_run(run.id)
    assert got is not None
    assert (got.status, got.summary) == ("done", {"accuracy": 0.5})
    with pytest.raises(StoreError, match="no run 'missing'"):
        await store.update_run("missing", status="failed")


async def test_create_run_twice_is_an_error(store: Store) -> None:
    await store.create_run(make_run())
    with pytest.raises(StoreError, match="already exists"):
        await store.create_run(make_run())


async def test_list_runs_newest_first_with_limit(store: Store) -> None:
    for i, created in enumerate([30.0, 10.0, 50.0, 20.0, 40.0]):
        await store.create_run(make_run(f"run-{i}", created_at=created))
    runs = await store.list_runs()
    assert [r.created_at for r in runs] == [50.0, 40.0, 30.0, 20.0, 10.0]
    assert [r.id for r in await store.list_runs(limit=2)] == ["run-2", "run-4"]


# ------------------------------------------------------------ upsert semantics


@pytest.mark.parametrize("same_batch", [False, True])
async def test_node_put_replaces_only_mutable_fields(store: Store, same_batch: bool) -> None:
    await store.create_run(make_run())
    first = make_node("n1", text="draft", status="open", depth=1, created_at=1.0)
    later = make_node(
        "n1",
        text="final",
        answer="7",
        status="done",
        visits=4,
        value=0.5,
        meta={"k": 1},
        depth=9,  # immutable: ignored
        role="refiner",  # immutable: ignored
        created_at=2.0,  # immutable: ignored
    )
    store.put_node(first)
    if not same_batch:
        await store.flush()
    store.put_node(later)
    await store.flush()
    nodes, _ = await store.load_tree("run-1", "t1")
    expected = make_node(
        "n1",
        text="final",
        answer="7",
        status="done",
        visits=4,
        value=0.5,
        meta={"k": 1},
        depth=1,
        created_at=1.0,
    )
    assert nodes == [expected]


async def test_attempt_put_replaces_the_row(store: Store) -> None:
    await store.create_run(make_run())
    store.put_attempt(AttemptRecord("run-1", "t1", status="running", calls=1))
    store.put_attempt(AttemptRecord("run-1", "t1", status="running", calls=2))
    await store.flush()
    final = AttemptRecord("run-1", "t1", status="done", answer="x", correct=False, calls=3)
    store.put_attempt(final)
    assert await store.get_attempts("run-1") == [final]


async def test_judgement_put_ignores_a_repeated_id(store: Store) -> None:
    await store.create_run(make_run())
    first = JudgementRecord("j1", "run-1", "t1", "n1", "verifier:exact", "verifier", score=1.0)
    again = JudgementRecord("j1", "run-1", "t1", "n1", "verifier:exact", "verifier", score=0.0)
    store.put_judgement(first)
    store.put_judgement(again)
    await store.flush()
    store.put_judgement(again)
    assert (await store.load_tree("run-1", "t1"))[1] == [first]


async def test_record_call_ignores_a_repeated_key_or_id(store: Store) -> None:
    await store.create_run(make_run())
    original = make_call(1, key="k")
    await store.record_call(original)
    await store.record_call(make_call(2, key="k", response={"other": True}))  # same key
    await store.record_call(make_call(1, key="k2"))  # same id
    await asyncio.gather(
        store.record_call(make_call(3, key="k3")), store.record_call(make_call(4, key="k3"))
    )
    calls = await store.load_calls("run-1", "t1")
    assert set(calls) == {"k", "k3"}
    assert calls["k"] == original
    assert calls["k3"].id == "call-3"
    # The same key in another task or run is a different call.
    await store.create_run(make_run("run-2"))
    await store.record_call(make_call(5, task_id="t2", key="k"))
    await store.record_call(make_call(6, run_id="run-2", key="k"))
    assert await store.count_calls("run-1") == 3
    assert await store.count_calls("run-2") == 1


async def test_count_calls_by_cache_hit(store: Store) -> None:
    await store.create_run(make_run())
    for i in range(5):
        await store.record_call(make_call(i, cached=i < 2))
    assert await store.count_calls("run-1") == 5
    assert await store.count_calls("run-1", cached=True) == 2
    assert await store.count_calls("run-1", cached=False) == 3


async def test_load_tree_returns_exactly_that_tasks_nodes(store: Store) -> None:
    for run_id in ("run-1", "run-2"):
        await store.create_run(make_run(run_id))
        for task_id in ("t1", "t2"):
            for k in range(3):
                node_id = f"{run_id}/{task_id}/{k}"
                store.put_node(make_node(node_id, run_id, task_id, created_at=float(3 - k)))
                store.put_judgement(
                    JudgementRecord(
                        f"j:{node_id}", run_id, task_id, node_id, "verifier:x", "verifier"
                    )
                )
    nodes, judgements = await store.load_tree("run-2", "t1")
    assert [n.id for n in nodes] == [f"run-2/t1/{k}" for k in (2, 1, 0)]
    assert {j.node_id for j in judgements} == {n.id for n in nodes}


async def test_load_node_reads_one_node_and_what_is_about_it(store: Store) -> None:
    await store.create_run(make_run())
    await store.create_run(make_run("run-2"))
    parent = make_node("p", created_at=1.0)
    # Made by call-1 (recorded under another node that asked the same), judged by a
    # judgement citing call-4; call-2 and call-3 were made for it; call-5 is unrelated.
    node = make_node("n", parent_id="p", call_id="call-1", created_at=2.0)
    for n in (parent, node, make_node("other", created_at=3.0),
              make_node("n-elsewhere", "run-2", created_at=4.0)):
        store.put_node(n)
    late = JudgementRecord("j2", "run-1", "t1", "n", "verifier:x", "verifier", created_at=6.0)
    early = JudgementRecord("j1", "run-1", "t1", "n", "model:sim", "critic", created_at=5.0,
                            meta={"call_ids": ["call-4"]})
    for j in (late, early, JudgementRecord("j3", "run-1", "t1", "other", "v", "verifier")):
        store.put_judgement(j)
    calls = {i: make_call(i, node_id=node_id, created_at=float(10 - i))
             for i, node_id in [(1, "other"), (2, "n"), (3, "n"), (4, None), (5, "other")]}
    for c in calls.values():
        await store.record_call(c)
    await store.record_call(make_call(6, "run-2", node_id="n"))

    view = await store.load_node("run-1", "t1", "n")
    assert view is not None
    assert (view.node, view.parent) == (node, parent)
    assert view.judgements == [early, late]
    assert list(view.calls) == ["call-4", "call-3", "call-2", "call-1"]  # creation order
    assert view.calls["call-2"] == calls[2]

    root = await store.load_node("run-1", "t1", "p")
    assert root is not None and root.parent is None and root.calls == {}
    assert await store.load_node("run-1", "t1", "missing") is None
    assert await store.load_node("run-1", "t2", "n") is None  # not in that task
    assert await store.load_node("run-2", "t1", "n") is None


async def test_reads_see_writes_still_queued(store: Store) -> None:
    await store.create_run(make_run())
    store.put_node(make_node("n1"))
    store.put_attempt(AttemptRecord("run-1", "t1"))
    assert [n.id for n in (await store.load_tree("run-1", "t1"))[0]] == ["n1"]
    assert await store.get_attempt("run-1", "t1") is not None


# ------------------------------------------------------- durability, batching


async def test_a_run_status_is_committed_after_the_writes_queued_before_it(
        store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run marked done while its last attempt still sat in the queue was, when the
    process died in between, skipped on resume with that task unanswered."""
    await store.create_run(make_run())
    slow_batch = store._write_batch

    def late(rows: Any) -> None:
        time.sleep(0.3)  # the writer is busy when the status update arrives
        slow_batch(rows)

    monkeypatch.setattr(store, "_write_batch", late)
    store.put_attempt(AttemptRecord("run-1", "t1", status="done", answer="42"))
    await store.update_run("run-1", status="done")
    other = await in_thread_store(store_url)  # reads the database, not the queue
    try:
        run = await other.get_run("run-1")
        attempt = await other.get_attempt("run-1", "t1")
        assert run is not None and run.status == "done"
        assert attempt is not None and attempt.answer == "42"
    finally:
        await other.aclose()


async def test_record_call_is_durable_when_it_returns(store: Store, store_url: str) -> None:
    await store.create_run(make_run())
    call = make_call(1)
    await store.record_call(call)
    other = await in_thread_store(store_url)
    try:
        assert await other.load_calls("run-1", "t1") == {"key-1": call}
    finally:
        await other.aclose()


async def test_concurrent_record_calls_are_group_committed(store: Store) -> None:
    await store.create_run(make_run())
    before = store.batches_committed
    await asyncio.gather(*(store.record_call(make_call(i)) for i in range(1000)))
    batches = store.batches_committed - before
    assert 2 <= batches <= 10  # at most 500 per batch, far fewer than one per call
    assert await store.count_calls("run-1") == 1000
    assert len(await store.load_calls("run-1", "t1")) == 1000


async def test_a_lone_record_call_does_not_wait_for_a_timer(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Group commit takes what is queued when the writer is free; it never holds a
    call back to wait for company (every loop timer passes through ``call_at``)."""
    await store.create_run(make_run())
    loop = asyncio.get_running_loop()
    timers: list[Any] = []
    schedule = loop.call_at

    def call_at(when: float, callback: Any, *args: Any, **kw: Any) -> asyncio.TimerHandle:
        timers.append(callback)
        return schedule(when, callback, *args, **kw)

    monkeypatch.setattr(loop, "call_at", call_at)
    before = store.batches_committed
    for i in range(5):
        await store.record_call(make_call(i))
    assert timers == []
    assert store.batches_committed - before == 5


async def test_aclose_writes_everything_queued(store_url: str) -> None:
    s = await Store.aopen(store_url)
    await s.create_run(make_run())
    for i in range(50):
        s.put_node(make_node(f"n{i}"))
    await s.aclose()
    await s.aclose()  # idempotent
    other = await in_thread_store(store_url)
    try:
        assert len((await other.load_tree("run-1", "t1"))[0]) == 50
    finally:
        await other.aclose()


async def test_a_failing_batch_is_not_swallowed(store_url: str) -> None:
    s = await Store.aopen(store_url)
    try:
        await s.create_run(make_run())
        s.put_node(make_node("orphan", run_id="no-such-run"))  # foreign key violation
        with pytest.raises(StoreError, match="writing a batch of 2 records failed"):
            await s.record_call(make_call(1))  # same batch as the orphan
        with pytest.raises(StoreError, match="writing a batch"):
            await s.flush()
        with pytest.raises(StoreError, match="writing a batch"):
            s.put_node(make_node("n2"))
        with pytest.raises(StoreError, match="writing a batch"):
            await s.record_call(make_call(2))
    finally:
        with pytest.raises(StoreError, match="writing a batch"):
            await s.aclose()
    await s.aclose()  # already closed: nothing more to report
    other = await in_thread_store(store_url)
    try:
        assert await other.count_calls("run-1") == 0  # the whole batch rolled back
    finally:
        await other.aclose()


async def test_reads_and_writes_do_not_block_the_loop(store: Store) -> None:
    await store.create_run(make_run())

    def slow(*_: Any) -> None:
        time.sleep(0.1)

    event.listen(store._engine, "before_cursor_execute", slow)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    try:
        await store.get_run("run-1")
        await store.record_call(make_call(1))
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        event.remove(store._engine, "before_cursor_execute", slow)
    assert ticks >= 8  # a blocked loop would not tick at all during the sleeps


async def test_writes_need_a_started_open_store(store_url: str) -> None:
    s = await asyncio.to_thread(Store.open, store_url)
    try:
        await s.create_run(make_run())  # direct writes and reads work unstarted
        assert await s.get_run("run-1") is not None
        with pytest.raises(StoreError, match="not started"):
            s.put_node(make_node("n1"))
    finally:
        await s.aclose()
    with pytest.raises(StoreError, match="closed"):
        s.put_node(make_node("n1"))
    with pytest.raises(StoreError, match="closed"):
        await s.get_run("run-1")


async def test_async_with_starts_and_closes(store_url: str) -> None:
    async with await asyncio.to_thread(Store.open, store_url) as s:
        await s.create_run(make_run())
        await s.record_call(make_call(1))
    with pytest.raises(StoreError, match="closed"):
        await s.count_calls("run-1")


# ----------------------------------------------------------- schema, opening


Shape = dict[str, tuple[set[str], set[tuple[str | None, ...]]]]


def _reflect(url: str) -> Shape:
    """Column names and indexed column tuples of every table in the database."""
    engine = create_engine(resolve_url(url))
    try:
        insp = inspect(engine)
        out: Shape = {}
        for name in insp.get_table_names():
            cols = {c["name"] for c in insp.get_columns(name)}
            idx = {tuple(i["column_names"]) for i in insp.get_indexes(name)}
            idx |= {tuple(u["column_names"]) for u in insp.get_unique_constraints(name)}
            out[name] = (cols, idx)
        return out
    finally:
        engine.dispose()


async def test_migrated_database_matches_the_schema_module(store: Store, store_url: str) -> None:
    got = await asyncio.to_thread(_reflect, store_url)
    want: Shape = {
        t.name: (
            {c.name for c in t.columns},
            {tuple(c.name for c in i.columns) for i in t.indexes}
            | {
                tuple(c.name for c in u.columns)
                for u in t.constraints
                if isinstance(u, UniqueConstraint)
            },
        )
        for t in tables.metadata.sorted_tables
    }
    assert got == want


async def test_reopening_applies_nothing_twice(store_url: str) -> None:
    for _ in range(2):
        s = await Store.aopen(store_url)
        await s.aclose()
    engine = create_engine(resolve_url(store_url))
    try:
        with engine.connect() as conn:
            names = list(conn.execute(tables.migrations_table.select()).scalars())
    finally:
        engine.dispose()
    assert names == [name for name, _ in MIGRATIONS]
    assert len(MIGRATIONS) == SCHEMA_VERSION


async def test_a_failing_migration_leaves_nothing_behind(store_url: str) -> None:
    def create_table(conn: Any) -> None:
        conn.exec_driver_sql("CREATE TABLE half_done (x INTEGER)")

    def explode(conn: Any) -> None:
        raise RuntimeError("boom")

    s = await Store.aopen(store_url)  # a real store, so the begin hooks are in place
    engine = s._write_engine
    try:
        with pytest.raises(RuntimeError, match="boom"), engine.begin() as conn:
            migrate(conn, "test", [*MIGRATIONS, ("002_half", create_table), ("003_x", explode)])
        assert "half_done" not in inspect(engine).get_table_names()
    finally:
        await s.aclose()


async def test_a_newer_database_is_refused(store_url: str) -> None:
    s = await Store.aopen(store_url)
    await s.aclose()
    engine = create_engine(resolve_url(store_url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(tables.migrations_table).values(name="999_future", applied_at=0.0))
    finally:
        engine.dispose()
    newer = SCHEMA_VERSION + 1
    with pytest.raises(
        StoreError,
        match=rf"has schema version {newer}, this deliberate knows up to {SCHEMA_VERSION}: "
        r"upgrade deliberate",
    ):
        Store.open(store_url)


def test_unreachable_postgres_fails_fast_with_one_line() -> None:
    with pytest.raises(StoreError) as info:
        Store.open("postgresql://u:secret@127.0.0.1:1/x")
    message = str(info.value)
    assert message.startswith("cannot open store postgresql+psycopg://u:***@127.0.0.1:1/x: ")
    assert "\n" not in message
    assert "secret" not in message


def test_unwritable_path_fails_with_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(StoreError, match=r"^cannot open store sqlite:///.*a-file/sub/x\.db: "):
        Store.open(str(blocker / "sub" / "x.db"))


def test_unsupported_url_is_refused() -> None:
    with pytest.raises(StoreError, match="unsupported store URL mysql://u:\\*\\*\\*@h/db"):
        Store.open("mysql://u:pw@h/db")


def test_url_resolution(tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_path() == clean_env / "deliberate.db"
    assert resolve_url(None).database == str(default_path())
    monkeypatch.delenv("DELIBERATE_HOME")
    assert default_path() == Path.home() / ".local/share/deliberate/deliberate.db"
    monkeypatch.chdir(tmp_path)
    assert resolve_url("x.db").database == str(tmp_path / "x.db")
    assert resolve_url("sqlite:////abs/y.db").database == "/abs/y.db"
    assert resolve_url("postgresql://u@h/db").drivername == "postgresql+psycopg"
    assert resolve_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert resolve_url("postgresql+psycopg2://u@h/db").drivername == "postgresql+psycopg2"


async def test_default_store_lives_in_deliberate_home(clean_env: Path) -> None:
    s = await Store.aopen(None)
    try:
        await s.create_run(make_run())
    finally:
        await s.aclose()
    assert (clean_env / "deliberate.db").exists()


async def test_sqlite_connections_are_configured(tmp_path: Path) -> None:
    s = await Store.aopen(str(tmp_path / "p.db"))

    def pragmas() -> list[Any]:
        with s._engine.connect() as conn:
            return [
                conn.exec_driver_sql(f"PRAGMA {p}").scalar()
                for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            ]

    try:
        assert await asyncio.to_thread(pragmas) == ["wal", 1, 1, 30_000]
    finally:
        await s.aclose()


async def test_in_memory_sqlite_store(tmp_path: Path) -> None:
    async with await asyncio.to_thread(Store.open, "sqlite://") as s:
        await s.create_run(make_run())
        await asyncio.gather(*(s.record_call(make_call(i)) for i in range(100)), s.list_runs())
        assert await s.count_calls("run-1") == 100


async def test_text_the_database_cannot_hold_is_cleaned_not_lost(store: Store) -> None:
    """A NUL byte in a reply must not fail its batch (PostgreSQL rejects NUL in text)."""
    run = make_run()
    await store.create_run(run)
    node = make_node("n-nul", text="before\x00after", meta={"score": float("nan"), "x": "a\x00"})
    store.put_node(node)
    await store.flush()
    nodes, _ = await store.load_tree(run.id, node.task_id)
    (got,) = [n for n in nodes if n.id == "n-nul"]
    if store.dialect == "postgresql":
        assert got.text == "before\ufffdafter"
        assert got.meta == {"score": None, "x": "a\ufffd"}
    else:
        assert got.text == "before\x00after"
