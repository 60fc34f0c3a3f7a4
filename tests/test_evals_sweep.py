"""Sweeps: expansion into cells, a sweep on sim in process, its own budget, kill and resume
through the CLI against the sim server, and one-line errors."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from deliberate.cli import main
from deliberate.cli.eval import build_sweep_config
from deliberate.engine.runner import arun, summarise
from deliberate.errors import ConfigError, ModelConnectionError, UsageError
from deliberate.evals.sweep import (
    SweepConfig,
    aresume_sweep,
    arun_sweep,
    expand,
    load_sweep,
    parse_strategy_spec,
)
from deliberate.models.base import ChatModel, ChatRequest, ChatResponse, ModelWrapper
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.store import Store
from deliberate.tasks import load_suite
from tests.test_cli import cli

FOUR = ["best_of_n:n=1,2,4", "self_consistency:n=1,3,5", "mcts:iterations=1,2,3",
        "refine:max_rounds=1,2,3"]


def small(**kw: Any) -> SweepConfig:
    data: dict[str, Any] = {"base": {"limit": 3, "cache": False, "seed": 5},
                            "strategies": FOUR, "models": ["sim?skill=0.3"], "concurrency": 3}
    data.update(kw)
    return SweepConfig.from_mapping(data)


# -- expansion ------------------------------------------------------------------------


def test_expansion_gives_cells_in_order_with_ids_labels_and_budget_axes() -> None:
    cfg = SweepConfig.from_mapping({
        "base": {"limit": 4, "seed": 9, "task_budget": {"max_calls": 50}},
        "suites": ["arithmetic", "python"],
        "models": ["sim", "sim?skill=0.3"],
        "strategies": [
            "best_of_n:n=2,4",
            {"strategy": "mcts", "params": {"k": 2}, "budget": {"iterations": [2, 3]}},
            "refine",  # no values: the sweep's token axis
        ],
        "task_tokens": [1000, 3000],
    })
    cells = expand(cfg, "S")
    assert len(cells) == 2 * 2 * 6
    assert [c.run_id for c in cells] == [f"S.{i:03d}" for i in range(24)]
    assert [c.index for c in cells] == list(range(24))
    # suites, then models, then strategies, then budget values (outermost first)
    assert [c.label for c in cells[:7]] == [
        "best_of_n n=2 @ arithmetic / sim", "best_of_n n=4 @ arithmetic / sim",
        "mcts iterations=2 @ arithmetic / sim", "mcts iterations=3 @ arithmetic / sim",
        "refine task_tokens=1000 @ arithmetic / sim", "refine task_tokens=3000 @ arithmetic / sim",
        "best_of_n n=2 @ arithmetic / sim?skill=0.3",
    ]
    assert cells[23].label == "refine task_tokens=3000 @ python / sim?skill=0.3"
    assert cells[3].record() == {
        "run_id": "S.003", "label": "mcts iterations=3 @ arithmetic / sim", "strategy": "mcts",
        "strategy_params": {"k": 2, "iterations": 3}, "suite": "arithmetic", "model": "sim",
        "budget": {"name": "iterations=3", "axis": "param", "value": 3, "param": "iterations"},
    }
    assert cells[5].budget == {"name": "task_tokens=3000", "axis": "tokens", "value": 3000,
                               "param": None}
    for c in cells:
        rc = c.config
        assert (rc.strategy, rc.strategy_params, rc.suite, rc.model, rc.name) == (
            c.strategy, c.strategy_params, c.suite, c.model, c.label)
        assert (rc.limit, rc.seed, rc.task_budget.max_calls) == (4, 9, 50)  # the base's
        tokens = c.budget["value"] if c.budget["axis"] == "tokens" else None
        assert rc.task_budget.max_tokens == tokens
    assert cells[4].strategy_params == {}  # the token axis leaves the strategy's params


def test_default_knob_and_spec_forms() -> None:
    cfg = SweepConfig.from_mapping({"strategies": ["best_of_n", "mcts", "refine", "debate"],
                                    "budgets": [1, 2], "models": ["sim"]})
    assert [c.budget["name"] for c in expand(cfg, "x")] == [
        "n=1", "n=2", "iterations=1", "iterations=2", "max_rounds=1", "max_rounds=2",
        "rounds=1", "rounds=2"]
    assert parse_strategy_spec("mcts:iterations=2, 4,8") == {
        "strategy": "mcts", "knob": "iterations", "values": [2, 4, 8]}
    assert parse_strategy_spec("best-of-n") == {"strategy": "best-of-n"}
    one = SweepConfig.from_mapping({"strategies": "best-of-n:n=3", "models": "sim"})
    assert [c.label for c in expand(one, "x")] == ["best_of_n n=3 @ arithmetic / sim"]


def test_yaml_and_the_stored_form_give_the_same_sweep(tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: demo\nbase: {limit: 3, seed: 2}\nstrategies:\n  - best_of_n:n=2,4\n"
        "  - strategy: refine\n    label: refine-memory\n    params: {memory: true}\n"
        "    budget: {task_tokens: [500, 900]}\nmodels: [sim]\nconcurrency: 3\n"
        "budget: {max_calls: 100}\n")
    cfg = SweepConfig.from_yaml(path)
    assert cfg.name == "demo" and cfg.concurrency == 3 and cfg.budget.max_calls == 100
    assert [c.label for c in expand(cfg, "y")][2] == "refine-memory task_tokens=500 @ arithmetic / sim"
    stored = SweepConfig.from_mapping(cfg.resolved().model_dump(mode="json"))
    assert stored == cfg.resolved()
    assert [c.record() for c in expand(stored, "y")] == [c.record() for c in expand(cfg, "y")]


def test_the_example_sweep_file_loads() -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "sweeps" / "arithmetic.yaml"
    cells = expand(SweepConfig.from_yaml(path), "ex")
    assert len({c.strategy for c in cells}) >= 4
    assert all(sum(c.strategy == s for c in cells) >= 3 for s in {c.strategy for c in cells})


@pytest.mark.parametrize(("data", "message"), [
    ({"strategies": ["magic:n=1,2"]}, "unknown strategy 'magic'"),
    ({"strategies": ["best_of_n:depth=1,2"]}, "strategy best_of_n has no parameter 'depth'"),
    ({"strategies": ["best_of_n:n=0,2"]},
     "cell 'best_of_n n=0 @ arithmetic / sim': strategy best_of_n: n"),
    ({"strategies": ["best_of_n:n=2,2"]}, "repeated budget values"),
    ({"strategies": ["best_of_n:n=a,2"]}, "budget value 'a' is not a number"),
    ({"strategies": ["best_of_n:n"]}, "must look like NAME:KNOB=V1,V2"),
    ({"strategies": ["best_of_n"]}, "has no budget values"),
    ({"strategies": ["best_of_n"], "budgets": [2], "task_tokens": [100]}, "not both"),
    ({"strategies": ["codet"], "budgets": [2]}, ""),  # codet has n: fine
    ({"strategies": ["best_of_n:n=2", "best_of_n:n=2"]}, "two cells are labelled"),
    ({"strategies": ["best_of_n:task_tokens=0"]}, "task_budget.max_tokens"),
    ({"strategies": [{"strategy": "mcts", "budget": {"iterations": 2}}]}, "budget must map"),
    ({"strategies": ["best_of_n:n=2"], "base": {"strategy": "mcts"}}, "base.strategy"),
    ({"strategies": ["best_of_n:n=2"], "concurrency": 0}, "concurrency"),
    ({"strategies": []}, "strategies"),
    ({"strategies": ["best_of_n:n=2"], "base": {"limt": 3}}, "base.limt"),
])
def test_bad_sweeps_fail_with_one_line(data: dict[str, Any], message: str) -> None:
    data = {"models": ["sim"], **data}
    if not message:
        expand(SweepConfig.from_mapping(data), "ok")
        return
    with pytest.raises(ConfigError) as err:
        expand(SweepConfig.from_mapping(data), "bad")
    text = str(err.value)
    assert message in text and "\n" not in text, text


# -- running in process ---------------------------------------------------------------


async def test_sweep_on_sim_stores_every_cell_as_a_run_and_reruns_nothing(tmp_path: Path) -> None:
    cfg = small()
    seen: list[tuple[int, str]] = []
    async with await Store.aopen(str(tmp_path / "s.db")) as st:
        res = await arun_sweep(cfg, sweep_id="sw", store=st,
                               progress=lambda p, c: seen.append((p.tasks_done, c.status)))
        assert res.status == "done"
        cells = expand(cfg, "sw")
        assert len(cells) == 12
        sweep = await st.get_run("sw")
        assert sweep is not None and sweep.status == "done"
        assert sweep.config == {"kind": "sweep", "sweep": cfg.resolved().model_dump(mode="json"),
                                "cells": [c.record() for c in cells]}
        totals = {"tasks": 0, "correct": 0, "prompt_tokens": 0, "calls": 0}
        for cell in cells:
            run = await st.get_run(cell.run_id)
            assert run is not None and run.status == "done"
            assert run.config == cell.config.model_dump(mode="json")
            attempts = await st.get_attempts(cell.run_id)
            assert len(attempts) == 3 and all(a.status == "done" for a in attempts)
            expect = summarise(attempts)
            for key in ("tasks", "correct", "graded", "prompt_tokens", "completion_tokens",
                        "calls", "accuracy"):
                assert run.summary[key] == expect[key], (cell.label, key)
            for key in totals:
                totals[key] += run.summary[key]
        assert sweep.summary["cells"] == sweep.summary["done"] == 12
        assert {k: sweep.summary[k] for k in totals} == totals
        assert seen[-1][0] == 36 and {s for _, s in seen} >= {"pending", "running", "done"}
        assert [c.status for c in res.cells] == ["done"] * 12
        # the budget axis does what it says: more samples, more tokens
        bon = [c.tokens for c in res.cells if c.cell.strategy == "best_of_n"]
        assert bon == sorted(bon) and bon[0] < bon[-1]

        # Running it again (same id) or resuming it re-runs nothing.
        again = await arun_sweep(cfg, sweep_id="sw", store=st)
        assert again.recorded_calls == 0 and again.replayed_calls == 0
        again = await aresume_sweep("sw", store=st)
        assert again.recorded_calls == 0 and again.status == "done"
        assert await load_sweep(st, "sw") == cfg.resolved()
        with pytest.raises(UsageError, match="different configuration"):
            await arun_sweep(small(concurrency=1, base={"limit": 2, "cache": False}),
                             sweep_id="sw", store=st)

    # A cell gives exactly what the same config gives as a lone run: sharing the
    # backends across cells changes nothing.
    for cell in (cells[2], cells[7]):
        lone = await arun(cell.config.model_copy(update={"store": str(tmp_path / "lone.db")}))
        async with await Store.aopen(str(tmp_path / "s.db")) as st:
            stored = await st.get_attempts(cell.run_id)
        assert [(a.task_id, a.answer, a.correct) for a in lone.attempts] == [
            (a.task_id, a.answer, a.correct) for a in stored]


async def test_the_token_axis_caps_each_task(tmp_path: Path) -> None:
    cfg = small(strategies=["self_consistency"], task_tokens=[400, 100_000],
                base={"limit": 3, "cache": False})
    async with await Store.aopen(str(tmp_path / "s.db")) as st:
        res = await arun_sweep(cfg, sweep_id="t", store=st)
        tight, loose = [await st.get_attempts(c.cell.run_id) for c in res.cells]
    assert [c.cell.config.task_budget.max_tokens for c in res.cells] == [400, 100_000]
    assert all(a.prompt_tokens + a.completion_tokens <= 400 for a in tight)
    assert all(a.budget_limited for a in tight)
    assert not any(a.budget_limited for a in loose)
    assert sum(a.completion_tokens for a in loose) > sum(a.completion_tokens for a in tight)


class _Gauge(ModelWrapper):
    """Counts requests and the most in flight at once."""

    def __init__(self, inner: ChatModel) -> None:
        super().__init__(inner)
        self.requests = self.in_flight = self.max_in_flight = 0

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.requests += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.002)
            return await self.inner.complete(request)
        finally:
            self.in_flight -= 1


async def test_cells_share_one_backend_under_one_concurrency_limit(tmp_path: Path) -> None:
    gauge = _Gauge(SimModel(load_suite("arithmetic"), SimParams(skill=0.3)))
    cfg = small(models=["sim"], concurrency=4,
                base={"limit": 3, "cache": False, "concurrency": 3, "max_inflight_calls": 2})
    async with await Store.aopen(str(tmp_path / "s.db")) as st:
        res = await arun_sweep(cfg, sweep_id="g", store=st, models={"sim": gauge})
        paid = sum(c.summary["paid_calls"] for c in res.cells)
    assert res.status == "done"
    assert gauge.max_in_flight == 2  # 4 cells × 3 tasks, yet never more than the limit
    assert gauge.requests == paid == res.summary["paid"]["calls"]


async def test_the_sweep_budget_stops_it_cleanly_and_resume_finishes_it(tmp_path: Path) -> None:
    async with await Store.aopen(str(tmp_path / "s.db")) as st:
        full = await arun_sweep(small(), sweep_id="full", store=st)
        cap = full.summary["paid"]["calls"] // 3
        part = await arun_sweep(small(budget={"max_calls": cap}), sweep_id="cut", store=st)
        assert part.status == "interrupted" and part.summary["stopped_by"] == "calls"
        assert part.summary["paid"]["calls"] <= cap  # a hard limit: no call beyond it
        statuses = [c.status for c in part.cells]
        assert "done" in statuses and set(statuses) - {"done"}
        assert (await st.get_run("cut")).status == "interrupted"  # type: ignore[union-attr]
        for c in part.cells:
            run = await st.get_run(c.cell.run_id)
            if c.status == "done":
                assert run is not None and run.status == "done"
            elif c.status == "pending":  # never started
                assert run is None

        # Resumed with the same budget it stops at once; with more, it finishes, and
        # every cell ends as it would have without the budget.
        same = await aresume_sweep("cut", store=st)
        assert same.status == "interrupted" and same.recorded_calls == 0
        cfg = (await load_sweep(st, "cut")).model_copy(update={"budget": small().budget})
        done = await arun_sweep(cfg, sweep_id="cut", store=st)
        assert done.status == "done"
        assert done.summary["paid"]["calls"] <= full.summary["paid"]["calls"] + 3 * 4
        for a, b in zip(full.cells, done.cells, strict=True):
            x = await st.get_attempts(a.cell.run_id)
            y = await st.get_attempts(b.cell.run_id)
            assert [(t.task_id, t.answer, t.correct) for t in x] == [
                (t.task_id, t.answer, t.correct) for t in y], a.cell.label


async def test_an_unreachable_model_stops_the_sweep(tmp_path: Path) -> None:
    cfg = small(models=["openai:m@http://127.0.0.1:9/v1"],
                base={"limit": 2, "cache": False, "retry": {"max_attempts": 1}})
    async with await Store.aopen(str(tmp_path / "s.db")) as st:
        with pytest.raises(ModelConnectionError):
            await arun_sweep(cfg, sweep_id="down", store=st)
        rec = await st.get_run("down")
        assert rec is not None and rec.status == "failed"
        assert rec.summary["done"] == 0


# -- the command ------------------------------------------------------------------------


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DELIBERATE_"))}
    env["DELIBERATE_HOME"] = str(home)
    env["COLUMNS"] = "200"
    return env


def _cells_done(db: Path, sweep_id: str) -> int:
    try:
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT COUNT(*) FROM runs WHERE id LIKE ? AND status='done'",
                            (sweep_id + ".%",)).fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


def _per_cell(db: Path, sweep_id: str, columns: str, table: str) -> list[tuple[Any, ...]]:
    """``columns`` of ``table`` for every cell of a sweep, the cell's index first."""
    with sqlite3.connect(db) as c:
        rows = c.execute(f"SELECT substr(run_id, ?1), {columns} FROM {table} "
                         "WHERE run_id LIKE ?2", (len(sweep_id) + 2, sweep_id + ".%"))
        return sorted(rows.fetchall())


ANSWERS = ("task_id, answer, correct", "attempts")
TREES = ("task_id, operator, coalesce(answer, ''), text, visits", "nodes")
PAID = "SELECT COUNT(*) FROM model_calls WHERE run_id LIKE ? AND error IS NULL"


def _paid(db: Path, sweep_id: str) -> int:
    with sqlite3.connect(db) as c:
        return int(c.execute(PAID, (sweep_id + ".%",)).fetchone()[0])


def test_killed_sweep_resumes_to_the_same_cells_paying_for_nothing_twice(
        tmp_path: Path, clean_env: Path) -> None:
    """SIGKILL mid-sweep, then --resume: every cell ends with the answers and trees of an
    uninterrupted sweep, and the server answers no request of it twice."""
    args = ["-s", "best_of_n:n=1,2,4", "-s", "self_consistency:n=1,3,5",
            "-s", "mcts:iterations=1,2,3", "-s", "refine:max_rounds=1,2,3",
            "--limit", "3", "--concurrency", "2", "--task-concurrency", "2", "--no-cache",
            "--seed", "3"]
    with SimServer(load_suite("arithmetic"), SimParams(skill=0.3, latency_ms=5),
                   ServerConfig()) as srv:
        stats = srv.url + "/stats"
        model = ["--model", f"openai:sim@{srv.base_url}"]
        # The uninterrupted sweep in process, from the config the command builds.
        whole = tmp_path / "whole.db"
        cfg = build_sweep_config(None, {"strategies": args[1:8:2], "base.limit": 3,
                                        "concurrency": 2, "base.concurrency": 2,
                                        "base.cache": False, "base.seed": 3,
                                        "models": [model[1]], "base.store": str(whole)}, {})
        assert asyncio.run(arun_sweep(cfg, sweep_id="whole")).status == "done"
        whole_requests = httpx.get(stats).json()["completed"]
        httpx.post(srv.url + "/stats/reset")

        db = tmp_path / "broken.db"
        proc = subprocess.Popen(
            [sys.executable, "-m", "deliberate", "eval", "sweep", *args, *model, "--store",
             str(db), "--sweep-id", "broken"], env=_env(clean_env),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _cells_done(db, "broken") < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert 3 <= _cells_done(db, "broken") < 12, "the kill must land mid-sweep"
        before = httpx.get(stats).json()["completed"]

        r = cli("eval", "sweep", "--resume", "broken", "--store", str(db), env_home=clean_env)
        assert r.returncode == 0, r.stderr
        assert "12/12 cells done" in r.stdout
        total = httpx.get(stats).json()["completed"]

    assert _per_cell(db, "broken", *ANSWERS) == _per_cell(whole, "whole", *ANSWERS)
    assert _per_cell(db, "broken", *TREES) == _per_cell(whole, "whole", *TREES)
    assert _paid(db, "broken") == _paid(whole, "whole") == whole_requests
    assert before < whole_requests
    # Only calls in flight at the kill (never answered, so never recorded) are asked
    # again: at most 2 cells × 2 tasks × 6 calls a task has in flight (mcts: k=3
    # refinements + 3 values).
    assert whole_requests <= total <= whole_requests + 2 * 2 * 6


def test_ctrl_c_marks_the_sweep_interrupted_and_prints_how_to_continue(
        tmp_path: Path, clean_env: Path) -> None:
    db = tmp_path / "s.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "deliberate", "eval", "sweep", "-s", "best_of_n:n=2,4",
         "-s", "self_consistency:n=2,4", "--model", "sim?latency_ms=40", "--limit", "6",
         "--no-cache", "--store", str(db), "--sweep-id", "intr"],
        env=_env(clean_env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while _cells_done(db, "intr") < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert f"deliberate eval sweep --resume intr --store {db}" in err
    assert "Traceback" not in err
    with sqlite3.connect(db) as c:
        status = dict(c.execute("SELECT id, status FROM runs").fetchall())
    assert status["intr"] == "interrupted" and "interrupted" in status.values()
    r = cli("eval", "sweep", "--resume", "intr", "--store", str(db), env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert _cells_done(db, "intr") == 4


@pytest.mark.parametrize(("args", "message"), [
    (["eval", "sweep"], "name the strategies to sweep"),
    (["eval", "sweep", "-s", "magic:n=1,2"], "unknown strategy 'magic'"),
    (["eval", "sweep", "-s", "best_of_n:n=0"], "strategy best_of_n: n"),
    (["eval", "sweep", "-s", "best_of_n", "--budgets", "2,x"], "'x' is not a number"),
    (["eval", "sweep", "-s", "best_of_n:n=2", "-p", "mcts.k=2"], "STRATEGY.KEY=VALUE"),
    (["eval", "sweep", "-s", "best_of_n:n=2", "--suite", "marsupials"], "unknown suite"),
    (["eval", "sweep", "-s", "best_of_n:n=2", "-m", "warp:drive"], "unknown model backend"),
    (["eval", "sweep", "--resume", "s", "--limit", "3"], "drop --limit"),
    (["eval", "sweep", "--resume", "nosuch"], "no sweep 'nosuch'"),
    (["eval", "sweep", "-s", "best_of_n:n=2", "--sweep-id", "a b"], "--sweep-id"),
    (["eval", "sweep", "-c", "missing.yaml"], "cannot read config file"),
])
def test_bad_input_gives_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ex:
        main([*args, "--store", str(tmp_path / "s.db")] if "-c" not in args else args)
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2, err
    assert message in err and len(err.splitlines()) == 1, err
    assert "Traceback" not in err


def test_sweep_file_flags_and_params_from_the_command(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: {limit: 2, cache: false}\nstrategies: [best_of_n:n=1,2]\n"
                     "models: [sim]\n")
    db = tmp_path / "s.db"
    main(["eval", "sweep", "-c", str(sweep), "-s", "best_of_n:n=1,2", "-s",
          "self_consistency:n=3", "-p", "best_of_n.scorer=verifier", "--limit", "3",
          "--store", str(db), "--sweep-id", "f"])
    out = capsys.readouterr().out
    assert "3/3 cells done" in out and "deliberate report f" in out
    with sqlite3.connect(db) as c:
        rows = dict(c.execute("SELECT id, config FROM runs WHERE id LIKE 'f.%'").fetchall())
    assert '"scorer": "verifier"' in rows["f.000"] and '"limit": 3' in rows["f.002"]
    assert '"scorer"' not in rows["f.002"]


def test_runs_and_show_describe_a_sweep(tmp_path: Path, clean_env: Path) -> None:
    from tests.test_cli import cli

    db = str(tmp_path / "s.db")
    r = cli("eval", "sweep", "--strategy", "best_of_n:n=1,2", "--limit", "2", "--store", db,
            "--no-cache", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    listed = cli("runs", "--store", db, env_home=clean_env).stdout
    assert "sweep of 2 cells" in listed
    sweep_id = next(ln.split()[1] for ln in listed.splitlines() if "sweep of" in ln)
    shown = cli("show", sweep_id, "--store", db, env_home=clean_env)
    assert shown.returncode == 0, shown.stderr
    assert f"{sweep_id}.000" in shown.stdout and f"{sweep_id}.001" in shown.stdout
    assert "best_of_n n=1" in shown.stdout and "best_of_n n=2" in shown.stdout
