"""bench/store_scale.py: its pure helpers, and the JSON of --quick runs on SQLite and
(when a server is given) PostgreSQL.

Speed is the benchmark's business: nothing here asserts on wall-clock time.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import store_scale
from bench._harness import ratio
from sqlalchemy import MetaData, create_engine, inspect, text

from deliberate.models.base import Message
from deliberate.models.sim import SimModel
from deliberate.store import schema as tables
from deliberate.tasks.task import Suite
from deliberate.verifiers.base import parse_answer

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ pure helpers


def test_synthetic_tasks_are_distinct_solved_and_found_by_the_sim() -> None:
    tasks = store_scale.synthetic_tasks(300, seed=1)
    assert len({t.id for t in tasks}) == 300
    # the sim's prompt index keys on the first 48 characters: each task its own key
    assert len({t.prompt[:48] for t in tasks}) == 300
    for t in tasks:
        assert t.kind == "math"
        assert t.solution is not None and t.solution.endswith(f"Answer: {t.answer}")
        assert parse_answer(t, t.solution) == t.answer
    sim = SimModel(Suite.of("x", tasks))
    for t in tasks[::37]:
        found = sim.find_task([Message(role="user", content=t.prompt)])
        assert found is not None and found.id == t.id
    again = store_scale.synthetic_tasks(5, seed=1)
    assert [t.prompt for t in again] == [t.prompt for t in tasks[:5]]
    assert [t.prompt for t in store_scale.synthetic_tasks(5, seed=2)] != [t.prompt for t in again]


def test_expected_rows_per_strategy() -> None:
    assert store_scale.expected_rows(10, 16, "self_consistency") == {
        "attempts": 10,
        "nodes": 170,
        "judgements": 160,
        "model_calls": 10,
    }
    assert store_scale.expected_rows(3, 4, "best_of_n")["judgements"] == 24
    assert store_scale.strategy_params("best_of_n", 4) == {"n": 4, "scorer": "verifier"}


def test_slope_is_least_squares_and_needs_two_distinct_x() -> None:
    assert store_scale.slope([(0, 1.0), (10, 21.0), (20, 41.0)]) == pytest.approx(2.0)
    assert store_scale.slope([(0, 5.0), (10, 7.0), (20, 5.0)]) == pytest.approx(0.0)
    assert store_scale.slope([(3, 1.0)]) is None
    assert store_scale.slope([(3, 1.0), (3, 2.0)]) is None


def test_flatness_starts_at_the_first_sample_past_the_share() -> None:
    samples = [{"done": d, "rss_mb": 100.0 + 0.002 * d} for d in range(100, 1001, 100)]
    samples[0]["rss_mb"] = 50.0  # before 20%: ignored
    f = store_scale.flatness(samples, 1000)
    assert f["from_done"] == 200 and f["to_done"] == 1000
    assert f["growth"] == pytest.approx(0.002 * 800)
    assert f["slope_per_1k"] == pytest.approx(2.0)
    assert store_scale.flatness([], 1000)["growth"] is None


def test_census_growth_orders_and_scales_by_tasks() -> None:
    before = {"A": 10, "B": 500, "C": 3, "D": 7}
    after = {"A": 1010, "B": 100, "C": 53, "D": 8, "E": 4}
    g = store_scale.census_growth(before, after, tasks_between=1000)
    assert [r["type"] for r in g["grew"]] == ["A", "C", "E"]  # D: a one-off, left out
    assert g["grew"][0]["per_1k_tasks"] == pytest.approx(1000.0)
    assert [r["type"] for r in g["shrank"]] == ["B"]
    assert g["shrank"][0]["delta"] == -400
    grew = [
        {"type": "m.A", "delta": 1000, "halves": [500, 500], "retained": {"bytes_each": 900}},
        {"type": "m.Queue", "delta": 600, "halves": [0, 600], "retained": {"bytes_each": 90}},
        {"type": "m.C", "delta": 50, "halves": [25, 25], "retained": {"bytes_each": 10_000}},
        {"type": "builtins.dict", "delta": 1000, "halves": [500, 500]},
    ]
    per = store_scale.per_task_growth(grew, 500, 500)
    assert per == {"types": ["m.A"], "bytes_per_task": 900}
    assert store_scale.per_task_growth([], 0, 10)["types"] == []


def test_deep_size_counts_shared_objects_once() -> None:
    shared = "x" * 1000
    a, b = {"k": shared}, {"k": shared}
    seen: set[int] = set()
    first = store_scale.deep_size(a, seen)
    second = store_scale.deep_size(b, seen)
    assert first >= sys.getsizeof(shared) + sys.getsizeof(a)
    assert second < sys.getsizeof(shared)


def test_retained_finds_the_container_of_instances() -> None:
    class Kept:
        __slots__ = ("payload",)

        def __init__(self) -> None:
            self.payload = [str(id(self)) * 20]  # a string of its own, 200+ characters

    held = {i: Kept() for i in range(50)}
    got = store_scale.retained(Kept)
    assert got["count"] == 50
    assert got["bytes_each"] > 200
    assert got["held_by"] == "a dict of 50 entries"
    del held


def test_owner_of_names_the_closure_variable_or_the_attribute() -> None:
    def outer() -> Any:
        kept: dict[int, object] = {1: object()}

        def inner() -> dict[int, object]:
            return kept

        return inner

    fn = outer()
    where = store_scale.owner_of(fn(), ())
    assert where is not None
    assert where.startswith("variable 'kept' of ") and where.endswith("outer.<locals>.inner")

    class Holder:
        def __init__(self) -> None:
            self.records: list[int] = [1, 2]

    class Slotted:
        __slots__ = ("records",)

        def __init__(self) -> None:
            self.records: list[int] = [3]

    h, sl = Holder(), Slotted()
    for holder, name in ((h, "Holder"), (sl, "Slotted")):
        where = store_scale.owner_of(holder.records, ())
        assert where is not None
        assert where.startswith("attribute 'records' of a ") and where.endswith(name)
    assert store_scale.owner_of([4], ()) is None


def test_raw_tables_copy_the_store_tables_without_name_clashes(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    tables.metadata.create_all(engine)  # the store's own tables and index names first
    meta = MetaData()
    raw = store_scale.raw_tables(meta)
    meta.create_all(engine, tables=list(raw.values()))
    insp = inspect(engine)
    for name in store_scale.TABLES:
        src = getattr(tables, name)
        assert [c["name"] for c in insp.get_columns(f"raw_{name}")] == [c.name for c in src.c]
        assert len(insp.get_indexes(f"raw_{name}")) == len(insp.get_indexes(name))
        assert insp.get_pk_constraint(f"raw_{name}")["constrained_columns"] == [
            c.name for c in src.primary_key
        ]
        assert [fk["referred_table"] for fk in insp.get_foreign_keys(f"raw_{name}")] == ["runs"]
    engine.dispose()


@pytest.mark.parametrize(
    "argv",
    [
        ["--tasks", "0"],
        ["--samples", "200"],
        ["--backends", "mysql"],
        ["--small-tasks", "-1"],
        ["--strategy", "mcts"],
        ["--tasks", "many"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        store_scale.main(argv)
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


# ------------------------------------------------------------------ --quick runs


def quick(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    out = tmp_path / "store_scale.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.store_scale", "--quick", "--out", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {out}" in proc.stdout
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def check_backend_row(row: dict[str, Any], tasks: int, samples: int, small: int) -> None:
    """Invariants every measured row must hold, whatever the machine's speed."""
    expected = store_scale.expected_rows(tasks, samples, "self_consistency")
    assert row["tasks"] == tasks and row["failed"] == 0
    assert row["by_table"] == row["expected"] == expected
    assert row["counts_match"] is True
    assert row["rows"] == sum(expected.values())
    assert row["calls"] == tasks  # all samples of a task in one request
    assert row["batches"] > 0
    assert row["wall_s"] > 0 and row["cpu_s"] > 0
    assert row["rows_per_s"] == pytest.approx(row["rows"] / row["wall_s"])
    assert row["tasks_per_s"] == pytest.approx(tasks / row["wall_s"])
    assert row["sim_tasks_warmed"] == tasks
    base = row["baselines"]
    assert base["rows_read"] == row["rows"]
    for name in ("raw", "store_replay"):
        assert base[name]["by_table"] == expected
        assert base[name]["rows"] == row["rows"]
        assert base[name]["rows_per_s"] == pytest.approx(row["rows"] / base[name]["wall_s"])
    assert row["ratios"]["engine_over_raw"] == ratio(row["wall_s"], base["raw"]["wall_s"])
    assert row["ratios"]["store_over_raw"] == ratio(
        base["store_replay"]["wall_s"], base["raw"]["wall_s"]
    )
    assert row["ratios"]["engine_over_store"] == ratio(
        row["wall_s"], base["store_replay"]["wall_s"]
    )
    mem = row["memory"]
    done = [s["done"] for s in mem["samples"]]
    assert done == sorted(done) and done[-1] == tasks and len(done) >= 10
    assert mem["samples"][-1]["pending_tasks"] <= mem["samples"][0]["pending_tasks"]
    assert mem["rss"]["to_done"] == tasks
    assert mem["rss"]["from_done"] >= store_scale.FLAT_FROM * tasks
    assert mem["rss"]["growth"] == pytest.approx(mem["rss"]["to"] - mem["rss"]["from"])
    assert mem["peak_rss_mb"] >= mem["rss"]["to"] - 0.5
    # net of the censuses: the same samples less what the censuses (at 20% and 60%)
    # added before each, so the difference changes only at those two points
    diffs = [round(smp["rss_mb"] - smp["rss_net_mb"], 2) for smp in mem["samples"]]
    early = [
        d
        for smp, d in zip(mem["samples"], diffs, strict=True)
        if smp["done"] < mem["rss"]["from_done"]
    ]
    assert all(abs(d) <= 0.01 for d in early)
    levels = sorted(diffs)
    steps = sum(1 for a, b in itertools.pairwise(levels) if b - a > 0.025)
    assert steps <= 2  # rounding to 0.01 aside
    assert mem["rss_net"]["from_done"] == mem["rss"]["from_done"]
    first = mem["samples"][0]
    assert mem["upfront"] == {
        "rss_mb": round(first["rss_mb"] - mem["before_run"]["rss_mb"], 2),
        "blocks": first["blocks"] - mem["before_run"]["blocks"],
        "pending_tasks": first["pending_tasks"],
        "at_done": first["done"],
    }
    assert first["pending_tasks"] <= tasks - first["done"] + 5  # the task group's, and a few
    census = mem["census"]
    assert census["to_done"] == tasks and census["from_done"] == mem["rss"]["from_done"]
    for g in census["grew"]:
        assert g["after"] - g["before"] == g["delta"] > 1
    assert census["from_done"] <= census["mid_done"] <= census["to_done"]
    first = census["mid_done"] - census["from_done"]
    second = census["to_done"] - census["mid_done"]
    for g in census["grew"]:
        assert sum(g["halves"]) == g["delta"]
        if g["type"].startswith("builtins."):
            assert "retained" not in g
    kept = census["per_task"]["types"]
    assert kept == [
        g["type"]
        for g in census["grew"]
        if not g["type"].startswith("builtins.")
        and g["halves"][0] / first >= 0.5
        and g["halves"][1] / second >= 0.5
    ]
    # today the engine keeps every finished task's AttemptRecord (its run result)
    attempts = [g for g in census["grew"] if g["type"] == "deliberate.tree.AttemptRecord"]
    if attempts:
        assert attempts[0]["after"] == attempts[0]["retained"]["count"] == tasks
    sm = row["small_run"]
    assert sm["tasks"] == small and sm["counts_match"] is True
    assert sm["rows"] == sum(store_scale.expected_rows(small, samples, "self_consistency").values())
    assert row["scaling"]["tasks_ratio"] == ratio(tasks, small)
    assert row["scaling"]["s_per_task_ratio"] == ratio(row["wall_s"] / tasks, sm["wall_s"] / small)
    extra_mb = mem["upfront"]["rss_mb"] - sm["upfront"]["rss_mb"]
    assert row["scaling"]["upfront_kib_per_task"] == round(extra_mb * 1024 / (tasks - small), 3)


def test_quick_run_on_sqlite_writes_what_it_documents(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != store_scale.PG_ENV}
    result = quick(tmp_path, env=env)  # both backends asked; no URL: PostgreSQL skipped
    assert result["benchmark"] == "store_scale"
    assert {"cpu_count", "python", "commit", "load_average"} <= set(result["machine"])
    cfg = result["config"]
    q = store_scale.QUICK
    assert (cfg["tasks"], cfg["samples"], cfg["small_tasks"]) == (q.tasks, q.samples, q.small)
    assert cfg["backends"] == ["sqlite", "postgresql"] and cfg["postgres"] is None
    sqlite, pg = result["results"]
    assert pg == {"backend": "postgresql", "skipped": store_scale.SKIPPED_PG}
    check_backend_row(sqlite, q.tasks, q.samples, q.small)
    assert sqlite["database"]["journal_mode"] == "wal"
    assert result["baseline"]["figures"]["sqlite"] == sqlite["baselines"]
    head = result["headline"]
    assert head["sqlite_engine_over_raw"] == sqlite["ratios"]["engine_over_raw"]
    assert head["sqlite_rows_per_s"] == round(sqlite["rows_per_s"], 1)
    assert head["sqlite_rss_slope_mib_per_1k"] == round(
        sqlite["memory"]["rss_net"]["slope_per_1k"], 3
    )
    assert (
        head["sqlite_kept_bytes_per_task"]
        == sqlite["memory"]["census"]["per_task"]["bytes_per_task"]
    )
    assert not any(k.startswith("pg_") for k in head)
    targets = result["targets"]
    assert len(targets) == 4
    for t in targets:
        assert set(t) == {"target", "value", "limit", "met", "note"}
        assert t["met"] is not False or t["note"]
    assert targets[0]["met"] is True and targets[0]["value"] == sqlite["rows"]
    assert targets[1]["value"] == round(sqlite["memory"]["rss_net"]["slope_per_1k"], 3)
    kept = sqlite["memory"]["census"]["per_task"]
    assert targets[2]["met"] is (not kept["types"])
    assert targets[2]["value"] == kept["bytes_per_task"]
    for name in kept["types"]:
        assert name in targets[2]["note"]
    assert targets[3]["met"] is None and targets[3]["note"] == store_scale.SKIPPED_PG
    md = store_scale.markdown(result)
    assert md.startswith("## Store at scale")
    assert "| backend |" in md and "engine ÷ raw" in md
    assert "python -m bench.store_scale --quick" in md
    assert store_scale.SKIPPED_PG in md


@pytest.mark.postgres
def test_quick_run_on_postgresql_counts_every_row_and_drops_its_schemas(tmp_path: Path) -> None:
    url = os.environ.get(store_scale.PG_ENV)
    if not url:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true but {store_scale.PG_ENV} is not set")
        pytest.skip(f'{store_scale.PG_ENV} is not set; run eval "$(bash .ci/postgres.sh)"')
    result = quick(
        tmp_path,
        "--backends",
        "postgresql",
        "--postgres-url",
        url,
        "--tasks",
        "60",
        "--small-tasks",
        "20",
    )
    (row,) = result["results"]
    assert row["backend"] == "postgresql"
    check_backend_row(row, 60, store_scale.QUICK.samples, 20)
    assert {"fsync", "synchronous_commit"} <= set(row["database"])
    assert row["bytes_per_row"] is not None and row["bytes_per_row"] > 0
    assert result["config"]["postgres"] == "given" and url not in json.dumps(result)
    assert result["headline"]["pg_rows_per_s"] == round(row["rows_per_s"], 1)
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'store_scale_%'")
            ).scalar_one()
    finally:
        engine.dispose()
    assert left == 0
    assert math.isfinite(row["memory"]["rss"]["growth"])
