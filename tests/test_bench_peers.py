"""bench/peers.py: a --quick run writes what it documents; its pure logic.

Speed is the benchmark's business: nothing here asserts on wall-clock time. The
peers need their own environment (optillm and DSPy); the quick run uses
bench/.peers/venv, else the one named by DELIBERATE_PEER_PYTHON, and without one it
checks that the peers are skipped, said so, and the deliberate rows still run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bench import peers

REPO = Path(__file__).resolve().parents[1]


def peer_python() -> Path | None:
    for candidate in (
        os.environ.get("DELIBERATE_PEER_PYTHON"),
        str(peers.default_peer_python()),
        "/tmp/peervenv/bin/python",
    ):
        if candidate and Path(candidate).exists():
            versions = peers.peer_versions(Path(candidate))
            if versions["optillm"] and versions["dspy"]:
                return Path(candidate)
    return None


def check_row_arithmetic(r: dict[str, Any], base: dict[str, Any]) -> None:
    rt = r["ratio_to_deliberate"]
    if r["status"] != "ok":
        assert rt == {"wall": None, "calls": None, "tokens": None}
        return
    assert r["calls"] > 0 and r["wall_s"] > 0
    assert r["tokens"] == r["prompt_tokens"] + r["completion_tokens"]
    assert r["accuracy"] == round(r["correct"] / r["tasks"], 3)
    assert rt["wall"] == round(r["wall_s"] / base["wall_s"], 3)
    assert rt["calls"] == round(r["calls"] / base["calls"], 3)
    assert rt["tokens"] == round(r["tokens"] / base["tokens"], 3)


def test_quick_run_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    py = peer_python()
    cmd = [sys.executable, "-m", "bench.peers", "--quick", "--out", str(out)]
    if py is not None:
        cmd += ["--peer-python", str(py)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["benchmark"] == "peers"
    assert result["machine"]["cpu_count"] and "load_average" in result["machine"]
    cfg = result["config"]
    st = peers.QUICK
    assert (cfg["tasks"], cfg["bon_n"], cfg["sc_n"]) == (st.tasks, st.bon_n, st.sc_n)
    rows = result["results"]
    expected = [(w, s) for w in peers.WORKLOADS for s in ("deliberate", *peers.PEERS_OF[w])]
    assert [(r["workload"], r["system"]) for r in rows] == expected
    base = {r["workload"]: r for r in rows if r["system"] == "deliberate"}
    assert result["baseline"]["rows"] == list(base.values())
    n, tasks = st.bon_n, st.tasks
    for r in rows:
        check_row_arithmetic(r, base[r["workload"]])
    for b in base.values():
        assert b["status"] == "ok" and b["failed"] == 0 and b["tasks"] == tasks
        assert b["ratio_to_deliberate"] == {"wall": 1.0, "calls": 1.0, "tokens": 1.0}
    # every call reaches the server (Draft tags): one request of N samples, N judgements
    assert base["best_of_n"]["calls"] == tasks * (1 + n)
    assert base["self_consistency"]["calls"] == tasks
    peer_rows = [r for r in rows if r["system"] != "deliberate"]
    assert len(result["targets"]) == 2 * len(peer_rows)  # wall time and tokens
    for i, r in enumerate(peer_rows):
        wall, tokens = result["targets"][2 * i : 2 * i + 2]
        assert wall["value"] == r["ratio_to_deliberate"]["wall"]
        assert wall["met"] == (None if wall["value"] is None else wall["value"] > 1.0)
        assert tokens["value"] == r["ratio_to_deliberate"]["tokens"]
        assert tokens["met"] == (None if tokens["value"] is None else tokens["value"] >= 1.0)
        assert wall["note"] and tokens["note"]
    for key, value in result["headline"].items():
        w, system, k = key.split(".")
        assert (
            value
            == next(r for r in peer_rows if (r["workload"], r["system"]) == (w, system))[
                "ratio_to_deliberate"
            ][k]
        )
    md = peers.markdown(result)
    assert md.startswith("## peers") and "| best_of_n | deliberate |" in md
    assert "python -m bench.peers --quick" in md
    if py is None:
        assert all(r["status"].startswith("skipped: no peer environment") for r in peer_rows)
        return
    v = result["peers"]["versions"]
    assert v["optillm"] == "0.4.0" and v["dspy"] == "3.4.1"
    assert v["litellm"] and v["openai"]
    for r in peer_rows:
        assert r["status"] == "ok", r
        assert r["failed"] == 0 and r["tasks"] == tasks
    got = {(r["workload"], r["system"]): r["calls"] for r in peer_rows}
    # each peer's calls follow from its algorithm
    assert got["best_of_n", "optillm"] == tasks * (1 + n)  # N in one request + N ratings
    assert got["best_of_n", "dspy"] == tasks * 2 * n  # N attempts, each judged
    assert got["self_consistency", "optillm"] == tasks * peers.OPTILLM_SC_SAMPLES
    assert got["self_consistency", "dspy"] == tasks  # one request of n (engine litellm)
    assert got["mcts", "optillm"] == tasks * 7 * st.mcts_iterations  # depth 1
    assert tasks * 2 <= got["refine", "dspy"] <= tasks * (3 * st.refine_attempts - 1)


# ------------------------------------------------------------------ pure logic


def measure(
    system: str,
    wall: float | None,
    calls: int | None,
    tokens: tuple[int, int] | None,
    status: str = "ok",
    workload: str = "best_of_n",
) -> peers.Measure:
    m = peers.Measure(workload, system, status=status, wall_s=wall, calls=calls, tasks=4, correct=3)
    if tokens is not None:
        m.prompt_tokens, m.completion_tokens = tokens
    m.settings = {"concurrency": 8}
    return m


def test_rows_carry_ratios_to_deliberate_and_targets_follow_them() -> None:
    base = measure("deliberate", 2.0, 36, (1000, 200))
    rows = [
        peers.row_dict(base, base),
        peers.row_dict(measure("optillm", 5.0, 36, (600, 100)), base),
        peers.row_dict(measure("dspy", 1.0, 72, (2400, 300)), base),
        peers.row_dict(
            measure("dspy", None, None, None, status="skipped: no env", workload="refine"), None
        ),
    ]
    assert rows[1]["ratio_to_deliberate"] == {"wall": 2.5, "calls": 1.0, "tokens": 0.583}
    assert rows[2]["ratio_to_deliberate"] == {"wall": 0.5, "calls": 2.0, "tokens": 2.25}
    assert rows[3]["ratio_to_deliberate"] == {"wall": None, "calls": None, "tokens": None}
    assert rows[1]["accuracy"] == 0.75
    targets = peers.target_rows(rows)
    # (wall, tokens) for optillm, dspy and the skipped row
    assert [t["met"] for t in targets] == [True, False, False, True, None, None]
    assert "missed: deliberate takes 2.00× dspy's wall time (100% slower)" in targets[2]["note"]
    assert "missed: deliberate uses 1.72× optillm's tokens" in targets[1]["note"]
    assert "optillm 36 calls × (17 prompt + 3 completion tokens)" in targets[1]["note"]
    assert "not measured: skipped: no env" in targets[4]["note"]


def test_a_missing_peer_python_is_said_not_fatal(tmp_path: Path) -> None:
    py, why = peers.find_peer_python(tmp_path / "nope" / "python", False, tmp_path)
    assert py is None and why is not None and "nope" in why


def test_the_dspy_job_carries_every_setting() -> None:
    st = peers.QUICK

    class T:
        id, prompt = "t1", "What is 1 + 1?"

    sc = peers.dspy_job(st, "self_consistency", [T()])
    assert sc == {
        "workload": "self_consistency",
        "tasks": [{"id": "t1", "prompt": T.prompt}],
        "concurrency": st.concurrency,
        "n": st.sc_n,
        "threshold": None,
        "engine": "litellm",
    }
    refine = peers.dspy_job(st, "refine", [T()])
    assert (refine["n"], refine["threshold"], refine["engine"]) == (
        st.refine_attempts,
        st.refine_threshold,
        "auto",
    )
    assert peers.optillm_body(st, "mcts", "q")["mcts_simulations"] == st.mcts_iterations
    assert peers.optillm_body(st, "best_of_n", "q") == {
        "messages": [{"role": "user", "content": "q"}]
    }


def test_answers_are_scored_against_the_tasks() -> None:
    assert peers.is_right("Step 1: 2 + 2 = 4\nAnswer: 4", "4")
    assert peers.is_right("4", "4")
    assert not peers.is_right("Answer: 5", "4")
    assert not peers.is_right(None, "4")


def test_bad_arguments_exit_with_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        peers.main(["--quick", "--workloads", "best_of_n,nope"])
    assert exc.value.code == 2
    assert "unknown workload(s) nope" in capsys.readouterr().err
