"""bench.parallel_rollouts: its wave counts, and a --quick run's JSON.

Speed is the benchmark's business: nothing here asserts on wall-clock time.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import parallel_rollouts as bench

from deliberate.tree import NodeRecord

REPO = Path(__file__).resolve().parents[1]


def chain(n: int) -> dict[str, str | None]:
    return {f"r{i}": (f"r{i - 1}" if i else None) for i in range(n)}


def star(leaves: int) -> dict[str, str | None]:
    return {"root": None, **{f"c{i:02d}": "root" for i in range(leaves)}}


@pytest.mark.parametrize("p", [1, 4, 16])
def test_a_chain_takes_one_wave_per_rollout_whatever_p(p: int) -> None:
    assert bench.critical_path_waves(chain(10), p) == 10


@pytest.mark.parametrize(("p", "waves"), [(1, 64), (4, 17), (16, 5), (63, 2), (100, 2)])
def test_a_star_takes_the_root_then_its_children_p_at_a_time(p: int, waves: int) -> None:
    assert bench.critical_path_waves(star(63), p) == waves


def test_hu_schedules_the_long_branch_first() -> None:
    # root -> a -> a1 -> a2 -> a3 (a long branch) and root -> b, c, d (short ones):
    # with 2 slots the long branch must start at once, giving 5 rounds; a scheduler
    # that ran b, c, d before a would need 6.
    parent: dict[str, str | None] = {"root": None, "a": "root", "a1": "a", "a2": "a1",
                                     "a3": "a2", "b": "root", "c": "root", "d": "root"}
    assert bench.critical_path_waves(parent, 2) == 5
    assert bench.critical_path_waves(parent, 1) == len(parent)


def test_waves_refuse_a_cycle() -> None:
    with pytest.raises(ValueError, match="forest"):
        bench.critical_path_waves({"a": "b", "b": "a"}, 2)


def test_in_order_replay_matches_or_exceeds_the_optimum() -> None:
    parent = star(63)
    order = {r: i for i, r in enumerate(sorted(parent, key=lambda r: r != "root"))}
    assert bench.inorder_waves(parent, order, 16) == 5
    assert bench.inorder_waves(parent, order, 1) == 64
    # launch order puts the long branch last: in-order launching pays for it
    par: dict[str, str | None] = {"root": None, "b": "root", "c": "root", "a": "root",
                                  "a1": "a", "a2": "a1"}
    seq = ["root", "b", "c", "a", "a1", "a2"]
    got = bench.inorder_waves(par, {r: i for i, r in enumerate(seq)}, 2)
    assert got is not None and got >= bench.critical_path_waves(par, 2)
    assert bench.inorder_waves(par, {"root": 0}, 2) is None  # order not known for all


def node(id_: str, parent: str | None, rollout: int | None = None) -> NodeRecord:
    meta: dict[str, Any] = {} if rollout is None else {"rollout": rollout}
    return NodeRecord(id=id_, run_id="r", task_id="t", parent_id=parent, role="refiner",
                      operator="refine", meta=meta)


def test_rollouts_are_read_from_the_tree() -> None:
    nodes = [node("R", None), node("a", "R", 0), node("b", "R", 0), node("a1", "a", 1),
             node("a2", "a", 1), node("b1", "b", 2), node("a11", "a1", 3)]
    ro = bench.rollouts_of(nodes)
    assert ro.parent == {"R": None, "a": "R", "b": "R", "a1": "a"}
    assert ro.order == {"R": 0, "a": 1, "b": 2, "a1": 3}


def test_draft_tags_are_letters_and_differ_by_request_and_sample() -> None:
    tags = {bench.draft_tag(prefix, i) for prefix in ("x", "y") for i in range(3)}
    assert len(tags) == 6
    assert all(t.isalpha() and t.islower() and len(t) == 8 for t in tags)
    assert bench.draft_tag("x", 0) == bench.draft_tag("x", 0)


def test_quick_run_writes_consistent_figures(tmp_path: Path) -> None:
    out = tmp_path / "parallel.json"
    proc = subprocess.run([sys.executable, "-m", "bench.parallel_rollouts", "--quick", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "wall(P)/wall(1)" in proc.stdout  # the table was printed
    data = json.loads(out.read_text())

    for key in ("machine", "server", "mcts", "parallel", "baseline", "results", "tasks",
                "rollout_latency_s", "bench_config"):
        assert key in data
    assert data["machine"]["cpu_count"] >= 1
    assert data["machine"]["python"].startswith("3.")
    assert data["server"]["ttft_ms"] == 20.0 and data["server"]["tokens_per_s"] == 0.0
    assert data["server"]["fail_rate"] == 0.0
    assert data["mcts"]["threshold"] is None and data["mcts"]["iterations"] == 8
    assert data["rollout_latency_s"] == pytest.approx(2 * 0.020)

    rows = {r["parallel"]: r for r in data["results"]}
    assert sorted(rows) == data["parallel"] == [1, 4]
    base = data["baseline"]
    assert base["parallel"] == 1 and base["wall_s"] == rows[1]["wall_s"]
    expected_rollouts = data["tasks"] * data["mcts"]["iterations"]
    for p, r in rows.items():
        assert r["failed_tasks"] == 0
        assert r["rollouts"] == r["rollouts_in_tree"] == expected_rollouts
        assert r["stopped_by"] == ["iterations"] * data["tasks"]
        assert r["calls"] > 0 and r["tokens"] == r["prompt_tokens"] + r["completion_tokens"] > 0
        # draft tags: every request the search made reached the server, once
        assert r["server_requests"] == r["calls_recorded"] == r["calls"]
        assert r["server_max_in_flight"] >= 1
        assert r["wall_s"] in r["wall_s_runs"]
        assert r["ratio"] == pytest.approx(r["wall_s"] / base["wall_s"])
        assert r["ideal"] == pytest.approx(1 / p)
        assert r["efficiency"] == pytest.approx(base["wall_s"] / (p * r["wall_s"]))
        waves = r["critical_path_waves"]
        assert math.ceil(expected_rollouts / p) <= waves <= expected_rollouts
        assert r["inorder_waves"] >= waves
        assert r["bound_ratio"] == pytest.approx(waves / base["critical_path_waves"])
        assert r["lower_bound_s"] == pytest.approx(waves * data["rollout_latency_s"])
        assert r["wall_over_lower_bound"] == pytest.approx(r["wall_s"] / r["lower_bound_s"])
    # one rollout at a time: every rollout is its own wave
    assert rows[1]["critical_path_waves"] == rows[1]["inorder_waves"] == expected_rollouts
    # four in flight: the search itself allows fewer waves (not a timing claim)
    assert rows[4]["critical_path_waves"] < rows[1]["critical_path_waves"]
    assert rows[4]["server_max_in_flight"] > rows[1]["server_max_in_flight"]
