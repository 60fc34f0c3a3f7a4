"""The store at scale: 10,000 tasks × 16 samples on SQLite and PostgreSQL.

Issue 7 asks for "a run of 10,000 tasks × 16 samples on SQLite, and on PostgreSQL:
write throughput, and memory that stays flat as tasks finish". This script makes
that run and measures it.

**What runs.** ``deliberate.arun`` runs ``self_consistency`` with n = 16 over a
synthetic suite of 10,000 arithmetic word problems, built in code with known
answers, with the in-process ``sim`` model: no HTTP, because the store is the
subject here. Each task's 16 samples arrive in one model call, and every sample
is a generator node in the tree, graded by the answer verifier (one judgement
each). A task therefore writes 1 attempt, 17 nodes (the root and 16 samples),
16 judgements and 1 model call: 35 rows. The response cache is off. Tasks run 8
at a time (the engine's default). Each backend gets a fresh database: a
temporary SQLite file, or a new schema in the PostgreSQL database given by
``--postgres-url`` or ``DELIBERATE_TEST_POSTGRES_URL``, dropped afterwards. Without
a URL the PostgreSQL run is recorded as skipped.

**What it measures.** Wall time and the engine process's CPU time. The rows
counted back from the store, per table, checked against the count the strategy
implies. Rows/s and tasks/s. Resident memory (RSS) and Python's allocated blocks,
sampled every 5% of finished tasks from the engine's progress callback. The
flatness figure is the growth from 20% to 100% of tasks finished, in MiB and as a
least-squares slope in MiB per 1,000 tasks. RSS can hide growth, because memory
freed by one structure is reused by another. A census of live objects by type,
taken at 20%, 60% and 100%, therefore names whatever grows. A type counts as
*kept per finished task* when its count rises by at least half an object a task
in both halves. For such a type the census also gives what each instance holds
(deep size) and which variable holds the instances. Every engine run is in a
fresh child process, so its memory figures are its own.

**Baselines, in the same run and on the same database:**

- *raw*: the very rows the engine wrote, read back and inserted with bare
  SQLAlchemy Core ``executemany`` (500 rows per transaction) into empty copies
  of the four tables (same columns, keys and indexes). This is the floor that
  the database and its driver set. ``engine ÷ raw`` is what everything else
  costs: strategy, sim, journal and store.
- *store replay*: the same rows written through ``Store.put_*`` and an awaited
  ``Store.record_call`` per call, 8 tasks at a time, into a second fresh
  database. ``store ÷ raw`` is what the store's own machinery costs: queue,
  group commits, upserts.
- *small run*: the engine run with a tenth of the tasks, to show how time and
  memory per task scale.

Two departures from a plain run, both for the sake of the measurement:

- The sim's per-task caches of wrong answers are filled before the run. A remote
  model keeps nothing in the engine's process, and these caches would otherwise
  grow with tasks done.
- The wall time excludes the object censuses. They are timed and reported.

``python -m bench.store_scale`` writes ``bench/results/store_scale.json``;
``--quick`` (200 tasks × 4 samples) writes only with ``--out``; ``--tasks``,
``--samples``, ``--backends`` and ``--postgres-url`` are the main knobs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import math
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    ForeignKey,
    Index,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    select,
    text,
)

from bench._harness import (
    RESULTS,
    limited,
    machine,
    peak_rss_mb,
    ratio,
    rss_mb,
    timed,
    write_result,
)
from deliberate.config import RunConfig
from deliberate.engine.runner import arun, new_run_id
from deliberate.models.sim import SimModel
from deliberate.store import MAX_BATCH, Store, resolve_url, schema
from deliberate.tasks.task import Suite, Task
from deliberate.tree import AttemptRecord, JudgementRecord, ModelCallRecord, NodeRecord, RunRecord

DEFAULT_OUT = RESULTS / "store_scale.json"
PG_ENV = "DELIBERATE_TEST_POSTGRES_URL"
BACKENDS = ("sqlite", "postgresql")
STRATEGIES = ("self_consistency", "best_of_n")
SKIPPED_PG = f"skipped: no PostgreSQL URL (--postgres-url or {PG_ENV})"
TABLES = ("attempts", "nodes", "judgements", "model_calls")
RAW_BATCH = MAX_BATCH  # rows per transaction of the raw baseline: the store's own batch
CHUNK_TASKS = 500  # tasks read back at a time for the baselines (memory stays bounded)
FLAT_FROM = 0.2  # flatness is measured from this share of tasks finished to the end
MID_AT = 0.6  # a census here too: what grows in proportion grows in both halves
FLAT_LIMIT_MIB_PER_1K = 1.0  # about 1 KiB kept per finished task


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of a run."""

    tasks: int = 10_000
    samples: int = 16
    strategy: str = "self_consistency"
    concurrency: int = 8
    backends: tuple[str, ...] = BACKENDS
    postgres_url: str | None = None
    small_tasks: int | None = None  # None: a tenth of ``tasks``; 0: no small run
    baselines: bool = True
    sample_every: float = 0.05  # share of tasks between memory samples
    seed: int = 0

    @property
    def small(self) -> int:
        return max(1, self.tasks // 10) if self.small_tasks is None else self.small_tasks


QUICK = Settings(tasks=200, samples=4, small_tasks=50)


# ------------------------------------------------------------------ pure helpers


def synthetic_tasks(n: int, seed: int = 0) -> list[Task]:
    """``n`` arithmetic word problems with answers and worked solutions the sim knows.

    Each prompt starts with its own number, so the sim's prompt index (keyed on the
    first 48 characters) finds every task in O(1) however large the suite.
    """
    rng = random.Random(seed)
    out = []
    width = len(str(max(n - 1, 0)))
    for i in range(n):
        a, b, c = rng.randint(3, 40), rng.randint(3, 40), rng.randint(1, 60)
        total, left = a * b, a * b - c
        out.append(
            Task(
                id=f"s{i:0{width}d}",
                kind="math",
                prompt=(
                    f"Problem {i}: a crate holds {a} boxes of {b} bolts each, and {c} "
                    "bolts are used. How many bolts are left?"
                ),
                answer=str(left),
                solution=(
                    f"Bolts in the crate: {a} * {b} = {total}.\n"
                    f"Bolts left after using {c}: {total} - {c} = {left}.\nAnswer: {left}"
                ),
                metadata={"difficulty": round(rng.uniform(0.1, 0.6), 2)},
            )
        )
    return out


def expected_rows(tasks: int, samples: int, strategy: str) -> dict[str, int]:
    """The rows a run must leave per table: a root and ``samples`` generator nodes
    per task, one call (all samples in one request), every sample graded, and for
    ``best_of_n`` (verifier-scored) a second judgement per sample."""
    per_sample = {"self_consistency": 1, "best_of_n": 2}[strategy]
    return {
        "attempts": tasks,
        "nodes": tasks * (samples + 1),
        "judgements": tasks * samples * per_sample,
        "model_calls": tasks,
    }


def strategy_params(strategy: str, samples: int) -> dict[str, Any]:
    if strategy == "best_of_n":
        return {"n": samples, "scorer": "verifier"}
    return {"n": samples}


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y on x; None with fewer than two distinct x."""
    if len(points) < 2:
        return None
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in points) / sxx


def flatness(
    samples: Sequence[Mapping[str, float]],
    total: int,
    key: str = "rss_mb",
    start: float = FLAT_FROM,
) -> dict[str, Any]:
    """Growth of ``key`` from the first sample at ``start`` of ``total`` tasks done to
    the last sample, and its slope per 1,000 tasks over those samples."""
    tail = [s for s in samples if s["done"] >= start * total]
    if not tail:
        return {"from_done": None, "to_done": None, "growth": None, "slope_per_1k": None}
    first, last = tail[0], tail[-1]
    k = slope([(s["done"], s[key]) for s in tail])
    return {
        "from_done": int(first["done"]),
        "to_done": int(last["done"]),
        "from": first[key],
        "to": last[key],
        "growth": last[key] - first[key],
        "slope_per_1k": None if k is None else k * 1000,
    }


def census_growth(
    before: Mapping[str, int], after: Mapping[str, int], tasks_between: int, top: int = 8
) -> dict[str, list[dict[str, Any]]]:
    """Object types whose live count grew (and shrank) most between two censuses.

    Changes of a single object are left out: they are one-offs (a census's own record,
    a timer), not growth.
    """
    deltas = [(name, before.get(name, 0), after.get(name, 0)) for name in set(before) | set(after)]
    deltas = [d for d in deltas if abs(d[2] - d[1]) > 1]

    def row(name: str, b: int, a: int) -> dict[str, Any]:
        per = (a - b) / tasks_between * 1000 if tasks_between else None
        return {"type": name, "before": b, "after": a, "delta": a - b, "per_1k_tasks": per}

    grew = sorted((d for d in deltas if d[2] > d[1]), key=lambda d: d[1] - d[2])
    shrank = sorted((d for d in deltas if d[2] < d[1]), key=lambda d: d[2] - d[1])
    return {"grew": [row(*d) for d in grew[:top]], "shrank": [row(*d) for d in shrank[:3]]}


def census() -> Counter[type]:
    """Live objects the collector tracks, by type (no allocation per object, so taking
    it does not itself leave the heap larger)."""
    gc.collect()
    return Counter(map(type, gc.get_objects()))


def type_name(t: type) -> str:
    return f"{t.__module__}.{t.__qualname__}"


def named(counts: Mapping[type, int]) -> Counter[str]:
    out: Counter[str] = Counter()
    for t, n in counts.items():
        out[type_name(t)] += n
    return out


def deep_size(obj: Any, seen: set[int]) -> int:
    """Bytes held by ``obj`` and what it alone reaches through dicts, lists, tuples,
    sets and slotted or plain instances (objects in ``seen`` are counted once)."""
    stack, total = [obj], 0
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, type):
            continue
        seen.add(id(o))
        total += sys.getsizeof(o)
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, list | tuple | set | frozenset):
            stack.extend(o)
        else:
            for name in getattr(type(o), "__slots__", ()):
                if hasattr(o, name):
                    stack.append(getattr(o, name))
            if hasattr(o, "__dict__"):
                stack.append(o.__dict__)
    return total


def owner_of(container: Any, ignore: tuple[Any, ...]) -> str | None:
    """Where a container lives: the function whose local or closure variable it is
    (``Engine._run.<locals>.one`` …), or the class of the instance whose attribute it is."""
    for ref in gc.get_referrers(container):
        if any(ref is i for i in ignore):
            continue
        if type(ref).__name__ == "cell":  # a closure variable: cell <- tuple <- function
            for closure in gc.get_referrers(ref):
                if not isinstance(closure, tuple):
                    continue
                slot = next(k for k, c in enumerate(closure) if c is ref)
                for fn in gc.get_referrers(closure):
                    if getattr(fn, "__closure__", None) is closure:
                        return f"variable {fn.__code__.co_freevars[slot]!r} of {fn.__qualname__}"
        if type(ref).__name__ == "frame" and ref.f_code not in _OWN_CODE:
            for name, value in ref.f_locals.items():
                if value is container:
                    return f"variable {name!r} of {ref.f_code.co_qualname}"
        if isinstance(ref, dict):
            names = [k for k, v in ref.items() if v is container]
            for owner in gc.get_referrers(ref):
                if names and getattr(owner, "__dict__", None) is ref:
                    return f"attribute {names[0]!r} of a {type(owner).__qualname__}"
        elif not isinstance(ref, list | tuple | set):
            # attributes kept without a __dict__ (slots, or 3.11's inline values)
            names = [
                n for n in getattr(type(ref), "__slots__", ()) if getattr(ref, n, None) is container
            ]
            if not names and hasattr(ref, "__dict__"):
                names = [k for k, v in vars(ref).items() if v is container]
            if names:
                return f"attribute {names[0]!r} of a {type(ref).__qualname__}"
    return None


def retained(kind: type, limit: int = 200) -> dict[str, Any]:
    """What the live instances of ``kind`` hold (deep size of a sample, scaled to all)
    and the container that holds the first of them (its type and length)."""
    objs = [o for o in gc.get_objects() if type(o) is kind]
    sample = objs[:limit]
    seen: set[int] = set()
    per = sum(deep_size(o, seen) for o in sample) / len(sample) if sample else 0.0
    holder = None
    if objs:
        for ref in gc.get_referrers(objs[0]):
            if ref is not objs and ref is not sample and isinstance(ref, dict | list | set):
                holder = f"a {type(ref).__name__} of {len(ref):,} entries"
                owner = owner_of(ref, (objs, sample))
                if owner:
                    holder += f" ({owner})"
                break
    count = len(objs)
    del objs, sample
    return {
        "count": count,
        "bytes_each": round(per),
        "mib_all": round(per * count / 2**20, 2),
        "held_by": holder,
    }


_OWN_CODE = (owner_of.__code__, retained.__code__)


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def pg_admin_url(settings: Settings) -> str | None:
    return settings.postgres_url or os.environ.get(PG_ENV) or None


# ------------------------------------------------------------------ databases


@contextlib.contextmanager
def pg_schemas(admin_url: str, count: int) -> Iterator[list[str]]:
    """``count`` fresh schemas in the given database, dropped afterwards; yields URLs
    whose tables land in them (nothing of the database's own is touched)."""
    admin = resolve_url(admin_url)
    names = [f"store_scale_{uuid.uuid4().hex[:12]}" for _ in range(count)]
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    made: list[str] = []
    try:
        with engine.connect() as conn:
            for name in names:
                conn.exec_driver_sql(f'CREATE SCHEMA "{name}"')
                made.append(name)
        yield [
            admin.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(
                hide_password=False
            )
            for name in names
        ]
    finally:
        with contextlib.suppress(Exception), engine.connect() as conn:
            for name in made:
                conn.exec_driver_sql(f'DROP SCHEMA "{name}" CASCADE')
        engine.dispose()


def bare_engine(url: str) -> Engine:
    """A plain SQLAlchemy engine, with the store's SQLite pragmas (WAL, synchronous
    NORMAL, foreign keys on) so that the baseline pays what the store pays."""
    engine = create_engine(resolve_url(url))
    if engine.dialect.name == "sqlite":

        def pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for p in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
                cur.execute(f"PRAGMA {p}")
            cur.close()

        event.listen(engine, "connect", pragmas)
    return engine


def raw_tables(meta: MetaData) -> dict[str, Table]:
    """Empty copies of the four tables (``raw_*``): same columns, keys, unique
    constraints and indexes, the same foreign key to ``runs``."""
    Table("runs", meta, Column("id", String, primary_key=True))  # for the foreign keys only
    out: dict[str, Table] = {}
    for name in TABLES:
        src: Table = getattr(schema, name)
        cols: list[Any] = []
        for c in src.columns:
            fk = [ForeignKey("runs.id")] if c.foreign_keys else []
            cols.append(Column(c.name, c.type, *fk, primary_key=c.primary_key, nullable=c.nullable))
        t = Table(f"raw_{name}", meta, *cols)
        for i, idx in enumerate(src.indexes):
            Index(f"raw_{name}_ix{i}", *[t.c[c.name] for c in idx.columns])
        for i, uc in enumerate(c for c in src.constraints if isinstance(c, UniqueConstraint)):
            t.append_constraint(
                UniqueConstraint(*[c.name for c in uc.columns], name=f"raw_{name}_uq{i}")
            )
        out[name] = t
    return out


def count_rows(engine: Engine, run_id: str) -> dict[str, int]:
    out: dict[str, int] = {}
    with engine.connect() as conn:
        for name in TABLES:
            t: Table = getattr(schema, name)
            stmt = select(func.count()).select_from(t).where(t.c.run_id == run_id)
            out[name] = int(conn.execute(stmt).scalar_one())
    return out


def database_bytes(engine: Engine, sqlite_path: Path | None) -> int | None:
    """On-disk size of what the run wrote (SQLite: file + WAL; PostgreSQL: the
    schema's tables with their indexes and TOAST)."""
    if sqlite_path is not None:
        return sum(p.stat().st_size for p in sqlite_path.parent.glob(sqlite_path.name + "*"))
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
                )
            ).scalar_one()
        )


def database_settings(engine: Engine) -> dict[str, Any]:
    """What makes commits cheap or dear on this database (recorded with the result)."""
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return {
                "sqlite": conn.exec_driver_sql("select sqlite_version()").scalar_one(),
                "journal_mode": conn.exec_driver_sql("PRAGMA journal_mode").scalar_one(),
                "synchronous": conn.exec_driver_sql("PRAGMA synchronous").scalar_one(),
            }
        return {
            "postgresql": conn.exec_driver_sql("SHOW server_version").scalar_one(),
            **{
                k: conn.exec_driver_sql(f"SHOW {k}").scalar_one()
                for k in ("fsync", "synchronous_commit", "shared_buffers")
            },
        }


# ------------------------------------------------------------------ one engine run


@dataclass(slots=True)
class MemoryProbe:
    """The progress callback: memory every ``every`` finished tasks, and a census of
    live objects at ``FLAT_FROM`` and ``MID_AT`` of the tasks and at the end."""

    total: int
    every: int
    started: float = field(default_factory=time.perf_counter)
    samples: list[dict[str, float]] = field(default_factory=list)
    censuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    census_s: float = 0.0
    census_rss_mb: float = 0.0  # RSS the censuses themselves added (gc, their lists)
    growth: dict[str, Any] = field(default_factory=dict)

    def take(self, done: int) -> None:
        rss = rss_mb()
        self.samples.append(
            {
                "done": done,
                "t_s": round(time.perf_counter() - self.started, 3),
                "rss_mb": round(rss, 2),
                "rss_net_mb": round(rss - self.census_rss_mb, 2),
                "blocks": sys.getallocatedblocks(),
                "pending_tasks": len(asyncio.all_tasks()),
            }
        )

    def __call__(self, progress: Any, attempt: Any) -> None:
        done = int(progress.done)
        if attempt is None:
            return
        at_flat = "from" not in self.censuses and done >= FLAT_FROM * self.total
        at_mid = "mid" not in self.censuses and done >= MID_AT * self.total and not at_flat
        last = done == self.total
        if at_flat:  # census first: what it leaves behind is then not counted as growth
            self._census("from", done)
        if at_mid and not last:
            self._census("mid", done)
        if done % self.every == 0 or last or at_flat:
            self.take(done)
        if last:
            self._census("to", done)
            self.growth = self.what_grew()

    def _census(self, name: str, done: int) -> None:
        t0, rss0 = time.perf_counter(), rss_mb()
        self.censuses[name] = {"done": done, "counts": dict(census())}
        self.census_s += time.perf_counter() - t0
        self.census_rss_mb += rss_mb() - rss0

    def what_grew(self, top: int = 5) -> dict[str, Any]:
        """The census difference, 20% to 100%, with each type's change in either half
        (20% to 60%, 60% to 100%); for the non-builtin types that grew most, what their
        instances hold and where they are held; and what is kept per finished task."""
        t0 = time.perf_counter()
        a, b = self.censuses["from"], self.censuses["to"]
        m = self.censuses.get("mid", a)
        before, mid, after = named(a["counts"]), named(m["counts"]), named(b["counts"])
        growth: dict[str, Any] = census_growth(before, after, b["done"] - a["done"])
        growth.update(from_done=a["done"], mid_done=m["done"], to_done=b["done"])
        by_name = {type_name(t): t for t in b["counts"]}
        for g in growth["grew"]:
            g["halves"] = [mid.get(g["type"], 0) - g["before"], g["after"] - mid.get(g["type"], 0)]
        owned = [g for g in growth["grew"] if not g["type"].startswith("builtins.")]
        for g in owned[:top]:
            g["retained"] = retained(by_name[g["type"]])
        growth["per_task"] = per_task_growth(
            growth["grew"], m["done"] - a["done"], b["done"] - m["done"]
        )
        self.census_s += time.perf_counter() - t0
        return growth


def per_task_growth(grew: Sequence[Mapping[str, Any]], first: int, second: int) -> dict[str, Any]:
    """The types kept per finished task, and their bytes a task.

    A type is kept per task when its live count rose by at least half an object a
    task in both halves (``first`` and ``second`` tasks long): a queue that happens to
    be full at the end does not qualify, a record kept for every task does. Builtin
    types (dict, list, str…) are left out: their growth belongs to an owner, whose
    deep size already counts them.
    """
    if first <= 0 or second <= 0:
        return {"types": [], "bytes_per_task": 0}
    kept = [
        g
        for g in grew
        if not g["type"].startswith("builtins.")
        and g["halves"][0] / first >= 0.5
        and g["halves"][1] / second >= 0.5
    ]
    between = first + second
    total = sum(g["delta"] / between * g.get("retained", {}).get("bytes_each", 0) for g in kept)
    return {"types": [g["type"] for g in kept], "bytes_per_task": round(total)}


def upfront(before: Mapping[str, float], samples: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """What the run holds before its first tasks finish: RSS and allocated blocks at the
    first sample over those just before the run, and the asyncio tasks then pending
    (the engine creates one per task of the suite at the start)."""
    if not samples:
        return {"rss_mb": None, "blocks": None, "pending_tasks": None, "at_done": None}
    first = samples[0]
    return {
        "rss_mb": round(first["rss_mb"] - before["rss_mb"], 2),
        "blocks": first["blocks"] - before["blocks"],
        "pending_tasks": first.get("pending_tasks"),
        "at_done": first["done"],
    }


def warm_sim(sim: Any) -> int:
    """Fill the sim's lazy per-task caches (its wrong answers) before the run, so its
    memory does not grow with tasks done; how many tasks were warmed."""
    warmed = 0
    for b in getattr(sim, "_behaviours", {}).values():
        if hasattr(b, "_wrong_texts"):
            _ = b._wrong_texts
            warmed += 1
    return warmed


async def engine_run(settings: Settings, tasks: int, url: str) -> dict[str, Any]:
    """Run the engine over ``tasks`` synthetic tasks into the store at ``url``."""
    suite = Suite.of("store_scale", synthetic_tasks(tasks, settings.seed))
    sim = SimModel(suite)
    warmed = warm_sim(sim)
    cfg = RunConfig(
        suite="store_scale",
        strategy=settings.strategy,
        strategy_params=strategy_params(settings.strategy, settings.samples),
        model="sim",
        cache=False,
        concurrency=settings.concurrency,
        seed=settings.seed,
        max_inflight_calls=max(64, settings.concurrency),
    )
    store = await Store.aopen(url)
    probe = MemoryProbe(total=tasks, every=max(1, math.ceil(tasks * settings.sample_every)))
    gc.collect()
    before = {"rss_mb": round(rss_mb(), 2), "blocks": sys.getallocatedblocks()}
    run_id = new_run_id()
    try:
        probe.started = time.perf_counter()
        with timed() as t:
            result = await arun(
                cfg, run_id=run_id, store=store, models={"sim": sim}, suite=suite, progress=probe
            )
        batches = store.batches_committed
    finally:
        await store.aclose()
    wall = t["wall_s"] - probe.census_s
    summary = result.summary
    return {
        "run_id": run_id,
        "tasks": tasks,
        "wall_s": wall,
        "cpu_s": t["cpu_s"],
        "census_s": probe.census_s,
        "batches": batches,
        "sim_tasks_warmed": warmed,
        "failed": summary.get("failed"),
        "accuracy": summary.get("accuracy"),
        "calls": summary.get("calls"),
        "memory": {
            "before_run": before,
            "samples": probe.samples,
            "peak_rss_mb": round(peak_rss_mb(), 2),
            "rss": flatness(probe.samples, tasks, "rss_mb"),
            "rss_net": flatness(probe.samples, tasks, "rss_net_mb"),
            "census_rss_mb": round(probe.census_rss_mb, 2),
            "upfront": upfront(before, probe.samples),
            "blocks": flatness(probe.samples, tasks, "blocks"),
            "census": probe.growth,
        },
    }


# ------------------------------------------------------------------ the baselines


def read_chunk(engine: Engine, run_id: str, lo: str, hi: str) -> dict[str, list[dict[str, Any]]]:
    """The rows of tasks ``lo``..``hi`` of a run, per table, nodes in creation order."""
    out: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for name in TABLES:
            t: Table = getattr(schema, name)
            stmt = select(t).where(t.c.run_id == run_id, t.c.task_id >= lo, t.c.task_id <= hi)
            if "created_at" in t.c:
                stmt = stmt.order_by(t.c.created_at, t.c.id)
            out[name] = [dict(r) for r in conn.execute(stmt).mappings()]
    return out


def raw_insert(
    engine: Engine, tables: Mapping[str, Table], rows: Mapping[str, list[dict[str, Any]]]
) -> float:
    """Insert ``rows`` with bare ``executemany``, RAW_BATCH rows a transaction; seconds."""
    t0 = time.perf_counter()
    for name in TABLES:
        stmt = insert(tables[name])
        batch = rows[name]
        for i in range(0, len(batch), RAW_BATCH):
            with engine.begin() as conn:
                conn.execute(stmt, batch[i : i + RAW_BATCH])
    return time.perf_counter() - t0


async def store_replay(
    store: Any, rows: Mapping[str, list[dict[str, Any]]], concurrency: int
) -> float:
    """Write ``rows`` through the store as the engine does, task by task, ``concurrency``
    tasks at a time: attempt, nodes, each call awaited, judgements, attempt; seconds."""
    by_task: dict[str, dict[str, list[Any]]] = {}
    kinds = {
        "attempts": AttemptRecord,
        "nodes": NodeRecord,
        "judgements": JudgementRecord,
        "model_calls": ModelCallRecord,
    }
    for name, factory in kinds.items():
        for r in rows[name]:
            by_task.setdefault(r["task_id"], {k: [] for k in kinds})[name].append(factory(**r))
    async def one(recs: dict[str, list[Any]]) -> None:
        for a in recs["attempts"]:
            store.put_attempt(dataclasses.replace(a, status="running"))
        for n in recs["nodes"]:
            store.put_node(n)
        for c in recs["model_calls"]:
            await store.record_call(c)
        for j in recs["judgements"]:
            store.put_judgement(j)
        for a in recs["attempts"]:
            store.put_attempt(a)

    t0 = time.perf_counter()
    await limited([one(recs) for recs in by_task.values()], concurrency)
    await store.flush()
    return time.perf_counter() - t0


async def baselines(
    settings: Settings, run_id: str, engine: Engine, replay_url: str, task_ids: Sequence[str]
) -> dict[str, Any]:
    """The raw and store-replay baselines over the engine run's own rows."""
    meta = MetaData()
    tables = raw_tables(meta)
    meta.create_all(engine, tables=list(tables.values()))
    store = await Store.aopen(replay_url)
    with engine.connect() as conn:
        cfg = conn.execute(
            select(schema.runs.c.config).where(schema.runs.c.id == run_id)
        ).scalar_one()
    await store.create_run(RunRecord(id=run_id, config=cfg))
    raw_s = replay_s = 0.0
    rows_n = 0
    try:
        for chunk in chunks(task_ids, CHUNK_TASKS):
            rows = read_chunk(engine, run_id, chunk[0], chunk[-1])
            rows_n += sum(len(v) for v in rows.values())
            raw_s += await asyncio.to_thread(raw_insert, engine, tables, rows)
            replay_s += await store_replay(store, rows, settings.concurrency)
        batches = store.batches_committed
    finally:
        await store.aclose()
    replay_engine = bare_engine(replay_url)
    try:
        replay_rows = count_rows(replay_engine, run_id)
    finally:
        replay_engine.dispose()
    with engine.connect() as conn:
        raw_rows = {
            name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for name, t in tables.items()
        }
    return {
        "raw": {
            "what": f"bare SQLAlchemy Core executemany, {RAW_BATCH} rows a transaction, "
            "into empty copies of the tables in the same database",
            "rows": sum(raw_rows.values()),
            "by_table": raw_rows,
            "wall_s": raw_s,
            "rows_per_s": sum(raw_rows.values()) / raw_s if raw_s else None,
        },
        "store_replay": {
            "what": f"Store.put_* and an awaited Store.record_call, "
            f"{settings.concurrency} tasks at a time, into a fresh database",
            "rows": sum(replay_rows.values()),
            "by_table": replay_rows,
            "wall_s": replay_s,
            "batches": batches,
            "rows_per_s": sum(replay_rows.values()) / replay_s if replay_s else None,
        },
        "rows_read": rows_n,
    }


# ------------------------------------------------------------------ one job (child process)


def job(
    settings: Settings, backend: str, tasks: int, with_baselines: bool, workdir: str
) -> dict[str, Any]:
    """One engine run (and its baselines) on one fresh database: runs in a child."""
    return asyncio.run(_job(settings, backend, tasks, with_baselines, Path(workdir)))


async def _job(
    settings: Settings, backend: str, tasks: int, with_baselines: bool, workdir: Path
) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        sqlite_path: Path | None = None
        if backend == "sqlite":
            name = f"store_scale-{tasks}-{uuid.uuid4().hex[:8]}"
            sqlite_path = workdir / f"{name}.db"
            url = f"sqlite:///{sqlite_path}"
            replay_url = f"sqlite:///{workdir / f'{name}-replay.db'}"
        else:
            admin = pg_admin_url(settings)
            assert admin is not None
            url, replay_url = stack.enter_context(pg_schemas(admin, 2))
        out = await engine_run(settings, tasks, url)
        engine = bare_engine(url)
        stack.callback(engine.dispose)
        out["database"] = database_settings(engine)
        rows = count_rows(engine, out["run_id"])
        out["rows"] = sum(rows.values())
        out["by_table"] = rows
        out["expected"] = expected_rows(tasks, settings.samples, settings.strategy)
        out["counts_match"] = rows == out["expected"]
        size = database_bytes(engine, sqlite_path)
        out["bytes_per_row"] = size / out["rows"] if size and out["rows"] else None
        out["rows_per_s"] = out["rows"] / out["wall_s"]
        out["tasks_per_s"] = tasks / out["wall_s"]
        out["cpu_us_per_row"] = 1e6 * out["cpu_s"] / out["rows"] if out["rows"] else None
        if with_baselines:
            ids = [t.id for t in synthetic_tasks(tasks, settings.seed)]
            out["baselines"] = await baselines(
                settings, out["run_id"], engine, replay_url, sorted(ids)
            )
        return out


def in_child(
    settings: Settings, backend: str, tasks: int, with_baselines: bool, workdir: str
) -> dict[str, Any]:
    """Run :func:`job` in a fresh (spawned) process, so its memory is its own."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        return pool.submit(job, settings, backend, tasks, with_baselines, workdir).result()


# ------------------------------------------------------------------ the benchmark


def backend_row(backend: str, big: dict[str, Any], small: dict[str, Any] | None) -> dict[str, Any]:
    """One result row: the large run, its baselines and ratios, the small run."""
    row: dict[str, Any] = {"backend": backend, **big}
    base = big.get("baselines")
    if base:
        raw, rep = base["raw"], base["store_replay"]
        row["ratios"] = {
            "engine_over_raw": ratio(big["wall_s"], raw["wall_s"]),
            "store_over_raw": ratio(rep["wall_s"], raw["wall_s"]),
            "engine_over_store": ratio(big["wall_s"], rep["wall_s"]),
            "raw_rows_per_s_over_engine": ratio(raw["rows_per_s"], big["rows_per_s"]),
        }
    if small is not None:
        per_big = big["wall_s"] / big["tasks"]
        per_small = small["wall_s"] / small["tasks"]
        row["small_run"] = {
            k: small[k]
            for k in (
                "tasks",
                "wall_s",
                "cpu_s",
                "rows",
                "rows_per_s",
                "tasks_per_s",
                "counts_match",
                "batches",
            )
        }
        row["small_run"]["peak_rss_mb"] = small["memory"]["peak_rss_mb"]
        row["small_run"]["upfront"] = small["memory"]["upfront"]
        up_big, up_small = big["memory"]["upfront"]["rss_mb"], small["memory"]["upfront"]["rss_mb"]
        extra = big["tasks"] - small["tasks"]
        row["scaling"] = {
            "tasks_ratio": ratio(big["tasks"], small["tasks"]),
            "s_per_task_ratio": ratio(per_big, per_small),
            "peak_rss_ratio": ratio(big["memory"]["peak_rss_mb"], small["memory"]["peak_rss_mb"]),
            # what holding one more task of the suite costs before any finishes
            "upfront_kib_per_task": None
            if up_big is None or up_small is None or extra <= 0
            else round((up_big - up_small) * 1024 / extra, 3),
        }
    return row


def rss_window(memory: Mapping[str, Any]) -> dict[str, Any]:
    """The flatness figure to judge: RSS net of what the censuses added, when measured."""
    net: dict[str, Any] | None = memory.get("rss_net")
    return net if net is not None else dict(memory["rss"])


def run(quick: bool = False, settings: Settings | None = None) -> dict[str, Any]:
    """Every backend: the small run, then the large run with its baselines."""
    s = settings or (QUICK if quick else Settings())
    for b in s.backends:
        if b not in BACKENDS:
            raise ValueError(f"unknown backend {b!r}; choose from {', '.join(BACKENDS)}")
    if s.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {s.strategy!r}; choose from {', '.join(STRATEGIES)}")
    pg = pg_admin_url(s)
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="store_scale-") as tmp:
        for b in s.backends:
            if b == "postgresql" and pg is None:
                rows.append({"backend": b, "skipped": SKIPPED_PG})
                continue
            small = in_child(s, b, s.small, False, tmp) if s.small else None
            big = in_child(s, b, s.tasks, s.baselines, tmp)
            rows.append(backend_row(b, big, small))
    total = time.perf_counter() - started
    config = {
        "tasks": s.tasks,
        "samples": s.samples,
        "strategy": s.strategy,
        "strategy_params": strategy_params(s.strategy, s.samples),
        "model": "sim",
        "concurrency": s.concurrency,
        "backends": list(s.backends),
        "postgres": "given" if pg else None,
        "small_tasks": s.small,
        "baselines": s.baselines,
        "sample_every": s.sample_every,
        "seed": s.seed,
        "raw_batch_rows": RAW_BATCH,
        "flat_from": FLAT_FROM,
        "cache": False,
        "sim_caches_warmed": True,
        "quick": quick,
        "total_wall_s": total,
    }
    return {
        "benchmark": "store_scale",
        "machine": without_secret(machine(), s.postgres_url),
        "config": config,
        "baseline": {
            "raw": "the engine run's own rows inserted with bare SQLAlchemy "
            f"Core executemany ({RAW_BATCH} rows a transaction) into "
            "empty copies of the tables in the same database",
            "store_replay": "the same rows through Store.put_* / record_call into a fresh database",
            "small_run": f"the engine run with {s.small} tasks",
            "figures": {r["backend"]: r.get("baselines") for r in rows},
        },
        "results": rows,
        "headline": headline(rows),
        "targets": targets(rows, s),
    }


def without_secret(record: dict[str, Any], url: str | None) -> dict[str, Any]:
    """The machine record with a PostgreSQL URL given on the command line masked: it
    may hold a password, and result files are committed."""
    if url and "argv" in record:
        record["argv"] = [a.replace(url, "<postgres-url>") for a in record["argv"]]
    return record


def headline(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for r in rows:
        if "skipped" in r:
            continue
        p = "sqlite" if r["backend"] == "sqlite" else "pg"
        out[f"{p}_rows_per_s"] = round(r["rows_per_s"], 1)
        out[f"{p}_tasks_per_s"] = round(r["tasks_per_s"], 2)
        for k in ("engine_over_raw", "store_over_raw"):
            out[f"{p}_{k}"] = r.get("ratios", {}).get(k)
        rss = rss_window(r["memory"])
        out[f"{p}_rss_growth_mib"] = None if rss["growth"] is None else round(rss["growth"], 2)
        out[f"{p}_rss_slope_mib_per_1k"] = (
            None if rss["slope_per_1k"] is None else round(rss["slope_per_1k"], 3)
        )
        if "scaling" in r:
            out[f"{p}_s_per_task_vs_small"] = r["scaling"]["s_per_task_ratio"]
            out[f"{p}_upfront_kib_per_task"] = r["scaling"].get("upfront_kib_per_task")
        per = r["memory"]["census"].get("per_task")
        out[f"{p}_kept_bytes_per_task"] = None if per is None else per["bytes_per_task"]
    return out


def targets(rows: Sequence[Mapping[str, Any]], s: Settings) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for r in rows:
        b = r["backend"]
        if "skipped" in r:
            out.append(
                {
                    "target": f"{b}: the run completes with every row stored",
                    "value": None,
                    "limit": None,
                    "met": None,
                    "note": r["skipped"],
                }
            )
            continue
        missing = {
            k: v - r["by_table"].get(k, 0)
            for k, v in r["expected"].items()
            if r["by_table"].get(k, 0) != v
        }
        out.append(
            {
                "target": f"{b}: {r['tasks']:,} tasks × {s.samples} samples complete, "
                "every row counted back",
                "value": r["rows"],
                "limit": sum(r["expected"].values()),
                "met": bool(r["counts_match"]) and not r["failed"],
                "note": ""
                if r["counts_match"] and not r["failed"]
                else f"failed tasks {r['failed']}; rows short per table {missing}",
            }
        )
        rss = rss_window(r["memory"])
        k = rss["slope_per_1k"]
        met = None if k is None else k <= FLAT_LIMIT_MIB_PER_1K
        out.append(
            {
                "target": f"{b}: RSS flat from {FLAT_FROM:.0%} to 100% of tasks, net of the "
                f"censuses (slope ≤ {FLAT_LIMIT_MIB_PER_1K} MiB per 1,000 tasks)",
                "value": None if k is None else round(k, 3),
                "limit": FLAT_LIMIT_MIB_PER_1K,
                "met": met,
                "note": "" if met else growth_note(r),
            }
        )
        per = r["memory"]["census"].get("per_task")
        kept = None if per is None else not per["types"]
        out.append(
            {
                "target": f"{b}: nothing kept per finished task (no object type whose live "
                "count grows by half an object a task or more in both 20–60% and 60–100%): "
                "bytes a task",
                "value": None if per is None else per["bytes_per_task"],
                "limit": 0,
                "met": kept,
                "note": "" if kept or per is None else growth_note(r, per["types"]),
            }
        )
    return out


def growth_note(r: Mapping[str, Any], only: Sequence[str] | None = None) -> str:
    """What grew (the types in ``only``, else the three that grew most) and what shrank
    between 20% and 100% of tasks, from the census."""
    c = r["memory"]["census"]
    if not c:
        return "no census"
    between = max(1, c["to_done"] - c["from_done"])
    grew = c.get("grew", [])
    parts = []
    for g in [g for g in grew if g["type"] in only] if only is not None else grew[:3]:
        text = f"{g['type']} {g['delta'] / between:+.2f} a task"
        ret = g.get("retained")
        if ret:
            text += f" ({ret['bytes_each']} B each, {ret['mib_all']} MiB in all"
            text += f", held by {ret['held_by']})" if ret["held_by"] else ")"
        parts.append(text)
    shrank = ", ".join(
        f"{g['type']} {g['delta'] / between:+.2f} a task" for g in c.get("shrank", [])[:2]
    )
    rss = rss_window(r["memory"])
    return (
        f"RSS {rss['growth']:+.1f} MiB from {c['from_done']:,} to {c['to_done']:,} tasks; "
        f"grew: {'; '.join(parts) or 'nothing'}; shrank: {shrank or 'nothing'}"
    )


# ------------------------------------------------------------------ reporting


def _f(x: Any, fmt: str = ",.0f") -> str:
    return "–" if x is None else format(x, fmt)


def table_rows(result: Mapping[str, Any]) -> list[list[str]]:
    """One line of figures per backend (shared by the Markdown and the console table)."""
    lines = []
    for r in result["results"]:
        if "skipped" in r:
            lines.append([r["backend"], r["skipped"]] + [""] * (len(HEADERS) - 2))
            continue
        base = r.get("baselines") or {}
        raw = base.get("raw", {})
        rep = base.get("store_replay", {})
        ratios = r.get("ratios", {})
        rss = rss_window(r["memory"])
        scale = r.get("scaling", {})
        up = r["memory"].get("upfront") or upfront(
            r["memory"]["before_run"], r["memory"]["samples"]
        )
        lines.append(
            [
                r["backend"],
                f"{r['tasks']:,} × {result['config']['samples']}",
                f"{r['rows']:,}" + ("" if r["counts_match"] else " (short)"),
                _f(r["wall_s"], ".1f"),
                _f(r["rows_per_s"]),
                _f(r["tasks_per_s"], ".1f"),
                f"{_f(raw.get('rows_per_s'))} / {_f(rep.get('rows_per_s'))}",
                f"{_f(ratios.get('engine_over_raw'), '.2f')} / "
                f"{_f(ratios.get('store_over_raw'), '.2f')}",
                f"{_f(rss.get('from'), '.1f')} → {_f(rss.get('to'), '.1f')}",
                _f(rss.get("growth"), "+.1f"),
                _f(rss.get("slope_per_1k"), "+.3f"),
                _f(up.get("rss_mb"), "+.1f"),
                _f(r["memory"]["census"].get("per_task", {}).get("bytes_per_task")),
                _f(scale.get("s_per_task_ratio"), ".2f"),
            ]
        )
    return lines


HEADERS = [
    "backend",
    "tasks × samples",
    "rows",
    "wall s",
    "rows/s",
    "tasks/s",
    "raw / store rows/s",
    "engine ÷ raw / store ÷ raw",
    "RSS MiB 20% → 100%",
    "growth MiB",
    "MiB per 1k tasks",
    "upfront MiB",
    "kept B/task",
    "s/task ÷ small run",
]


def markdown(result: dict[str, Any]) -> str:
    c = result["config"]
    out = [
        f"## Store at scale: {c['tasks']:,} tasks × {c['samples']} samples "
        "on SQLite and PostgreSQL",
        "",
        f"`{c['strategy']}` with n = {c['samples']} on the in-process sim, {c['concurrency']} "
        "tasks in flight, one fresh database per run. Baselines from the same run: "
        f"*raw* = {result['baseline']['raw']}; *store* = "
        f"{result['baseline']['store_replay']}; *small run* = "
        f"{result['baseline']['small_run']}.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|",
    ]
    out += ["| " + " | ".join(line) + " |" for line in table_rows(result)]
    measured = [r for r in result["results"] if "skipped" not in r]
    net = all("rss_net" in r["memory"] for r in measured)
    out += [
        "",
        "RSS from 20% to 100% of tasks is "
        + (
            "net of what the object censuses added. "
            if net
            else "as sampled, with what the object census at 60% added (the step there). "
        )
        + "*Upfront* is the RSS the run gained before its first 5% of tasks finished. "
        "*Kept B/task* is memory kept per finished task, from the census. Live objects by "
        "type, 20% → 100%:",
        "",
    ]
    for r in result["results"]:
        if "skipped" in r:
            continue
        census = r["memory"]["census"]
        parts = []
        for g in census.get("grew", [])[:3] + census.get("shrank", [])[:2]:
            text = f"`{g['type']}` {g['before']:,} → {g['after']:,}"
            ret = g.get("retained")
            if ret and ret.get("held_by"):
                text += f" ({ret['bytes_each']} B each, in {ret['held_by']})"
            parts.append(text)
        out.append(f"- {r['backend']}: {'; '.join(parts) or 'nothing'}")
    out += ["", "Targets:", ""]
    for t in result["targets"]:
        met = {True: "met", False: "missed", None: "not measured"}[t["met"]]
        note = f" ({t['note']})" if t["note"] else ""
        out.append(f"- {t['target']}: {met}, value {t['value']}, limit {t['limit']}{note}")
    cmd = "python -m bench.store_scale" + (" --quick" if c.get("quick") else "")
    out += [
        "",
        f"Reproduce: `{cmd}` (PostgreSQL: `--postgres-url URL` or {PG_ENV}); "
        f"the run took {c['total_wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(out)


def print_table(result: Mapping[str, Any]) -> None:
    """The figures on the console: the columns that fit a terminal."""
    from rich.console import Console
    from rich.table import Table as RichTable

    keep = (
        "backend",
        "tasks × samples",
        "rows",
        "wall s",
        "rows/s",
        "engine ÷ raw / store ÷ raw",
        "kept B/task",
        "growth MiB",
        "MiB per 1k tasks",
    )
    cols = [HEADERS.index(h) for h in keep]
    t = RichTable(title="store_scale (rows/s of raw and store: see the JSON)")
    for i in cols:
        t.add_column(HEADERS[i], justify="left" if i == 0 else "right")
    for line in table_rows(result):
        t.add_row(*[line[i] for i in cols])
    console = Console()
    console.print(t)
    for target in result["targets"]:
        met = {True: "met", False: "MISSED", None: "not measured"}[target["met"]]
        console.print(
            f"{met}: {target['target']} = {target['value']}  {target['note']}", markup=False
        )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench.store_scale",
        description="The store at scale: write throughput and memory of a large engine run "
        "on SQLite and PostgreSQL, against bare executemany of the same rows.",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK.tasks} tasks × {QUICK.samples} samples (what the test runs)",
    )
    ap.add_argument("--tasks", type=int, help="tasks in the large run (default 10000)")
    ap.add_argument("--samples", type=int, help="samples per task (default 16)")
    ap.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="self_consistency (default) or best_of_n scored by the verifier",
    )
    ap.add_argument("--concurrency", type=int, help="tasks in flight (default 8)")
    ap.add_argument(
        "--small-tasks", type=int, help="tasks in the small scaling run (default a tenth; 0: none)"
    )
    ap.add_argument("--backends", help="comma-separated: sqlite,postgresql (default both)")
    ap.add_argument(
        "--postgres-url",
        help=f"a PostgreSQL database (default ${PG_ENV}); the "
        "runs use fresh schemas in it, dropped afterwards",
    )
    ap.add_argument("--no-baselines", action="store_true", help="skip raw and store replay")
    ap.add_argument(
        "--out",
        type=Path,
        help="JSON output (default for a full run: "
        "bench/results/store_scale.json; --quick writes only with --out)",
    )
    args = ap.parse_args(argv)
    s = QUICK if args.quick else Settings()
    changes: dict[str, Any] = {}
    for name in ("tasks", "samples", "strategy", "concurrency", "small_tasks", "postgres_url"):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    for name in ("tasks", "samples", "concurrency"):
        if name in changes and changes[name] < 1:
            ap.error(f"--{name} must be at least 1")
    if changes.get("small_tasks", 0) < 0:
        ap.error("--small-tasks must be 0 or more")
    if not 1 <= changes.get("samples", 1) <= 128:
        ap.error("--samples must be in 1..128 (the sim's most samples per request)")
    if args.backends:
        backends = tuple(b.strip() for b in args.backends.split(",") if b.strip())
        bad = [b for b in backends if b not in BACKENDS]
        if bad or not backends:
            ap.error(f"--backends: choose from {', '.join(BACKENDS)}")
        changes["backends"] = backends
    if args.no_baselines:
        changes["baselines"] = False
    s = dataclasses.replace(s, **changes)
    result = run(quick=args.quick, settings=s)
    print_table(result)
    out = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    written = write_result(result, out)
    if written is not None:
        print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
