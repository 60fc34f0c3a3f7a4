"""bench/concurrency.py: a --quick run's JSON and its task generator. No timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench import concurrency
from bench._harness import REPO


def test_tasks_are_unique_and_keep_their_answers() -> None:
    suite = concurrency.suite_of(70, 7)
    prompts = [t.prompt for t in suite.tasks]
    assert len(set(prompts)) == 70 and len({t.id for t in suite.tasks}) == 70
    base = concurrency.load_suite("arithmetic").tasks
    assert suite.tasks[31].answer == base[1].answer
    assert suite.tasks[31].prompt.startswith(base[1].prompt)


def test_quick_run_writes_consistent_figures(tmp_path: Path) -> None:
    out = tmp_path / "c.json"
    r = subprocess.run([sys.executable, "-m", "bench.concurrency", "--quick", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [row["concurrency"] for row in res["results"]] == list(concurrency.QUICK.levels)
    for row in res["results"]:
        for side in ("engine", "bare"):
            m = row[side]
            # one call per task, all answered, none refused: the quick run has no errors
            assert m["calls"] == row["tasks"] and m["errors"] == 0 and m["error_kinds"] == {}
            assert 1 <= m["max_in_flight"] <= row["concurrency"]
            assert m["memory"]["peak_mb"] >= m["memory"]["start_mb"] > 0
        assert row["engine_over_bare_calls_per_s"] == pytest.approx(
            row["engine"]["calls_per_s"] / row["bare"]["calls_per_s"], abs=2e-3)
    (target,) = res["targets"]
    assert target["met"] is None  # a quick run does not judge the 1,000-in-flight target
    assert res["headline"]["max_in_flight_without_errors"] == max(
        row["engine"]["max_in_flight"] for row in res["results"])
    assert concurrency.markdown(res).startswith("## Concurrency")
