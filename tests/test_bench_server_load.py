"""bench.server_load: a --quick run completes without errors and writes what it documents.

Speed is the benchmark's business: nothing here asserts on wall-clock time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    proc = subprocess.run([sys.executable, "-m", "bench.server_load", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["settings"]["model"] == "best_of_n:n=4/up"
    assert result["machine"]["cpu_count"] and "load_average" in result["machine"]
    levels = [r["concurrency"] for r in result["results"]]
    assert levels == [1, 8]
    for r in result["results"]:
        assert r["errors"] == {"server": 0, "direct": 0}
        # the same requests cost the same tokens through the server and directly
        assert r["same_usage"] is True
        lo, hi = r["added_s"]["ci95"]
        assert lo <= r["added_s"]["mean"] <= hi
        assert r["server_s"]["min"] <= r["server_s"]["p50"] <= r["server_s"]["max"]
        assert set(r["cpu_ms_per_request"]) == {"server", "direct"}
        assert r["critical_path_s"] == 2 * result["settings"]["ttft_ms"] / 1000
    assert "added mean" in proc.stdout
