"""python -m bench: the one command that runs the performance benchmarks and writes
their JSON and SUMMARY.md. Nothing here asserts on time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import __main__ as run_all
from bench._harness import REPO


def test_quick_subset_writes_results_and_a_summary(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only",
                        "engine_overhead,concurrency", "--out-dir", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for name in ("engine_overhead", "concurrency"):
        assert json.loads((tmp_path / f"{name}.json").read_text())["benchmark"] == name
    text = (tmp_path / "SUMMARY.md").read_text()
    assert "## Engine overhead" in text and "## Concurrency" in text
    assert "engine CPU overhead ≤ 1 ms" in text and "1,000 model calls in flight" in text
    # the committed before-figures are compared with this run's after-figures
    assert "## Before and after the optimisations" in text
    eo = json.loads((tmp_path / "engine_overhead.json").read_text())
    assert f"{eo['results'][0]['cpu_ms_per_call']['engine']:.3f}" in text


def test_before_after_compares_the_same_workloads() -> None:
    def result(commit: str, engine: float, bare: float) -> dict[str, object]:
        return {"machine": {"commit": commit}, "results": [
            {"strategy": "best_of_n", "cpu_ms_per_call": {"engine": engine, "bare": bare},
             "overhead_ms_per_call": engine - bare},
            {"strategy": "only_after", "cpu_ms_per_call": {"engine": 1.0, "bare": 1.0},
             "overhead_ms_per_call": 0.0}]}

    before = result("aaaa", 3.0, 1.0)
    before["results"] = before["results"][:1]  # type: ignore[index]
    lines = run_all.before_after(before, result("bbbb", 1.5, 1.0))
    rows = [x for x in lines if x.startswith("| best_of_n")]
    assert rows == ["| best_of_n | 3.000 | 2.000 | 1.500 | 0.500 | 0.50 |"]
    assert not any(x.startswith("| only_after") for x in lines)


def test_bad_arguments_are_one_line() -> None:
    for args in (["--only", "nope"], ["--quick"]):
        r = subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and "Traceback" not in r.stderr
        assert "unknown benchmark" in r.stderr or "--quick needs --out-dir" in r.stderr


def test_concurrency_before_after_pairs_levels() -> None:
    def level(c: int, in_flight: int, cps: float, errors: int) -> dict[str, object]:
        return {"concurrency": c, "engine": {"max_in_flight": in_flight, "calls_per_s": cps,
                                             "errors": errors, "memory": {"peak_mb": 100.0}}}

    before = {"machine": {"commit": "aaaa"}, "results": [level(1000, 1000, 90, 0),
                                                         level(2000, 1000, 95, 0)]}
    after = {"machine": {"commit": "bbbb"}, "results": [level(2000, 2000, 170, 0),
                                                        level(4000, 4000, 200, 0)]}
    rows = [x for x in run_all.concurrency_before_after(before, after) if x.startswith("| 2")]
    assert rows == ["| 2000 | 1000 | 2000 | 95 | 170 | 0 | 0 | 100 | 100 |"]
