"""The search-vs-best-of-N benchmark (bench/search_vs_best_of_n.py) in quick mode.

Runs the script in a subprocess once, then checks that its JSON holds the per-task
records and that every figure of the report can be recomputed from them.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deliberate.evals.stats import mean_ci, paired_difference, sign_test

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "search_vs_best_of_n.py"

Quick = tuple[dict[str, Any], str, Path]


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Quick:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DELIBERATE_", "OPENAI_"))}
    env["DELIBERATE_HOME"] = str(out / "home")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out-json", str(out / "r.json"),
         "--out-md", str(out / "r.md")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "r.json").read_text()), (out / "r.md").read_text(), out


def task_means(cell: dict[str, Any]) -> list[float]:
    return [statistics.mean(c) for c in cell["correct"]]


def baseline(data: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in data["cells"] if c["variant"] == "best_of_n" and c["mode"] == "fit"
                and all(c[k] == cell[k] for k in ("sim", "suite", "budget")))


def test_json_holds_configs_and_per_task_records(quick: Quick) -> None:
    data, _, _ = quick
    for key in ("commit", "plan", "sims", "roles", "suites", "variants", "calibration",
                "reference_check", "cells", "wall_s", "command"):
        assert key in data
    ref = data["reference_check"]["default"]["arithmetic"]
    assert ref["tasks"] == 6
    assert 0 <= ref["step_critic_accepts"] <= 1 and 0 <= ref["judge_accepts"] <= 1
    assert data["plan"] == {"sims": ["default"], "budgets": [8000], "seeds": [0],
                            "calibration_seed": 1000, "capped": True, "quick": True}
    assert len(data["commit"]["head"]) == 40
    assert data["sims"]["default"]["params"]["skill"] == 0.6
    assert len(data["suites"]["arithmetic"]["tasks"]) == 6
    suites = [s for s, i in data["suites"].items() if "skipped" not in i]
    for variant in ("best_of_n", "mcts", "beam"):
        for suite in suites:
            modes = {c["mode"] for c in data["cells"]
                     if c["variant"] == variant and c["suite"] == suite}
            assert modes == {"fit", "capped"}, (variant, suite)
    for cell in data["cells"]:
        n_tasks = len(data["suites"][cell["suite"]]["tasks"])
        assert len(cell["correct"]) == len(cell["tokens"]) == n_tasks
        assert all(len(c) == 1 and set(c) <= {0, 1} for c in cell["correct"])
        assert cell["params"][data["variants"][cell["variant"]]["size"]] == cell["size"]


def test_accuracy_and_differences_recompute_from_the_records(quick: Quick) -> None:
    data, _, _ = quick
    compared = 0
    for cell in data["cells"]:
        means = task_means(cell)
        acc = cell["accuracy"]
        assert acc["value"] == pytest.approx(statistics.mean(means))
        assert acc == pytest.approx(mean_ci(means).as_dict())
        assert acc["low"] <= acc["value"] <= acc["high"]
        base = baseline(data, cell)
        if base is cell:
            assert cell["vs_best_of_n"] is None
            continue
        cmp = cell["vs_best_of_n"]
        d = paired_difference(means, task_means(base))
        assert cmp["difference"] == pytest.approx(d.as_dict())
        assert d.low <= d.value <= d.high
        assert cmp["sign_p"] == pytest.approx(sign_test(means, task_means(base)))
        assert cmp["significant"] == (d.low > 0 or d.high < 0)
        compared += 1
    assert compared > 0


def test_tokens_and_budgets_recompute_from_the_records(quick: Quick) -> None:
    data, _, _ = quick
    for cell in data["cells"]:
        flat = [t for ts in cell["tokens"] for t in ts]
        dg = cell["diagnostics"]
        assert dg["mean_tokens"] == pytest.approx(statistics.mean(flat))
        assert dg["max_tokens"] == max(flat)
        # every request the strategy made is attributed to a role
        assert dg["tokens_accounted_share"] == 1.0
        assert sum(dg["tokens_by_role"].values()) == pytest.approx(dg["mean_tokens"])
        assert dg["truncated_replies"] == 0
        if cell["mode"] == "capped":
            assert max(flat) <= cell["budget"] == cell["cap"]
    for cal in data["calibration"]:
        probes = {int(k): v for k, v in cal["probes"].items()}
        if cal["size"] is None:
            assert probes[min(probes)] > cal["budget"]
            continue
        # the chosen size fits; the next size tried above it does not
        assert probes[cal["size"]] <= cal["budget"]
        above = [s for s in probes if s > cal["size"]]
        if above:
            assert probes[min(above)] > cal["budget"]


def test_report_shows_the_recomputed_figures(quick: Quick) -> None:
    data, md, _ = quick
    assert "Quick mode" in md
    lines = md.splitlines()
    for cell in data["cells"]:
        row_start = (f"| {cell['sim']} | {cell['suite']} | {cell['budget']:,} | "
                     f"{cell['variant']} | {cell['mode']} |")
        rows = [ln for ln in lines if ln.startswith(row_start)]
        assert len(rows) == 1, row_start
        means = task_means(cell)
        e = mean_ci(means)
        assert f"{100 * e.value:.1f}% [{100 * e.low:.1f}, {100 * e.high:.1f}]" in rows[0]
        assert f"| {statistics.mean(t for ts in cell['tokens'] for t in ts):,.0f} |" in rows[0]
        base = baseline(data, cell)
        if base is not cell:
            d = paired_difference(means, task_means(base))
            assert f"{100 * d.value:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" in rows[0]


def test_report_is_rendered_from_the_json_alone(quick: Quick) -> None:
    _, md, out = quick
    again = out / "again.md"
    subprocess.run([sys.executable, str(SCRIPT), "--render-only", "--out-json",
                    str(out / "r.json"), "--out-md", str(again)],
                   cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    assert again.read_text() == md
    assert "Why (hand-written analysis" in md
