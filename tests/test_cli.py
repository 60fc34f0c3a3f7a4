"""The real ``deliberate`` command in subprocesses: runs, listing, trees, errors, resume."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.tasks import load_suite


def cli(*args: str, env_home: Path, timeout: float = 120, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OPENAI_", "DELIBERATE_"))}
    env["DELIBERATE_HOME"] = str(env_home)
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "deliberate", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, **kw)


def test_demo_run_lists_and_shows(tmp_path: Path, clean_env: Path) -> None:
    r = cli("run", "--limit", "5", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "stored in" in r.stdout
    assert "simulated model" in r.stdout
    run_id = r.stdout.split(" as run ")[1].split()[0]
    assert (clean_env / "deliberate.db").exists()  # the documented default store
    r = cli("runs", env_home=clean_env)
    assert r.returncode == 0 and run_id in r.stdout and "self_consistency" in r.stdout
    r = cli("show", run_id, env_home=clean_env)
    assert r.returncode == 0 and "arith-01" in r.stdout
    r = cli("show", run_id, "arith-01", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert "task arith-01" in r.stdout and r.stdout.count("generate #") == 8
    assert "★" in r.stdout  # the chosen candidate is marked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--strategy", "magic"], "unknown strategy 'magic'"),
        (["run", "--suite", "nowhere.jsonl"], "cannot read suite file"),
        (["run", "--suite", "marsupials"], "unknown suite"),
        (["run", "--model", "openai:m@http://127.0.0.1:9/v1", "--limit", "1"], "cannot reach"),
        (["run", "--model", "openai:gpt-4o-mini", "--limit", "1"], "OPENAI_API_KEY"),
        (["run", "--model", "warp:drive"], "unknown model backend 'warp'"),
        (["run", "-n", "0"], "strategy self_consistency: n"),
        (["run", "--concurrency", "0"], "concurrency"),
        (["run", "--model", "sim?skill=high"], "skill"),
        (["run", "--config", "missing.yaml"], "cannot read config file"),
        (["run", "-p", "oops"], "key=value"),
        (["run", "--verifier", "telepathy"], "unknown verifier"),
        (["show", "no-such-run"], "no run 'no-such-run'"),
        (["run", "--store", "postgresql://u:secret@127.0.0.1:1/x"], "cannot open store"),
    ],
)
def test_bad_input_gives_one_clear_line(args: list[str], message: str, clean_env: Path,
                                        tmp_path: Path) -> None:
    r = cli(*args, env_home=clean_env, cwd=tmp_path)
    assert r.returncode != 0
    err = r.stderr.strip()
    assert message in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "secret" not in err


@pytest.mark.parametrize("args", [["show", "r", "t", "--depth", "-1"], ["run", "--limit", "x"],
                                  ["runs", "--no-such-flag"]])
def test_bad_options_are_usage_errors_without_a_traceback(args: list[str],
                                                          clean_env: Path) -> None:
    r = cli(*args, env_home=clean_env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "Try 'deliberate" in r.stderr and "Error:" in r.stderr


def test_bad_yaml_config_value(tmp_path: Path, clean_env: Path) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("suite: arithmetic\ntask_budget:\n  max_tokens: -5\n")
    r = cli("run", "--config", str(cfg), env_home=clean_env)
    assert r.returncode == 2
    assert "task_budget.max_tokens" in r.stderr and "Traceback" not in r.stderr
    db = tmp_path / "from-yaml.db"
    cfg.write_text("suite: arithmetic\nstrategy: best_of_n\nstrategy_params: {n: 2}\nlimit: 2\n"
                   f"store: {db}\n")
    r = cli("run", "--config", str(cfg), "--seed", "3", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert "best_of_n" in r.stdout
    assert db.exists() and not (clean_env / "deliberate.db").exists()  # the file's store is used


def test_debug_shows_the_traceback(clean_env: Path) -> None:
    r = cli("--debug", "run", "--strategy", "magic", env_home=clean_env)
    assert r.returncode != 0 and "Traceback" in r.stderr


def _done_tasks(db: Path, run_id: str) -> int:
    try:
        with sqlite3.connect(db) as c:
            row = c.execute("SELECT COUNT(*) FROM attempts WHERE run_id=? AND status IN "
                            "('done','budget_limited')", (run_id,)).fetchone()
            return int(row[0])
    except sqlite3.Error:
        return 0


def _answers(db: Path, run_id: str) -> list[tuple[str, str, int]]:
    with sqlite3.connect(db) as c:
        return c.execute("SELECT task_id, answer, correct FROM attempts WHERE run_id=? "
                         "ORDER BY task_id", (run_id,)).fetchall()


def _tree_shape(db: Path, run_id: str) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(db) as c:
        return sorted(c.execute(
            "SELECT task_id, operator, coalesce(answer, ''), text FROM nodes WHERE run_id=?",
            (run_id,)).fetchall())


def _paid_calls(db: Path, run_id: str) -> int:
    with sqlite3.connect(db) as c:
        row = c.execute("SELECT COUNT(*) FROM model_calls WHERE run_id=? AND error IS NULL",
                        (run_id,)).fetchone()
        return int(row[0])


@dataclass
class KillResume:
    base: Path  # store of the uninterrupted run "whole"
    db: Path  # store of the run "broken", SIGKILLed and resumed
    whole_requests: int  # server requests of the uninterrupted run
    first_requests: int  # server requests before the kill
    total_requests: int  # server requests before the kill and on resume


def kill_and_resume(tmp_path: Path, home: Path, args: list[str], *, latency_ms: float,
                    kill_after: int, tasks: int) -> KillResume:
    """Run ``args`` uninterrupted, then again SIGKILLed once ``kill_after`` tasks are
    done and resumed, both against one sim server that counts requests."""
    with SimServer(load_suite("arithmetic"), SimParams(latency_ms=latency_ms),
                   ServerConfig()) as srv:
        model = ["--model", f"openai:sim@{srv.base_url}"]
        base = tmp_path / "uninterrupted.db"
        r = cli("run", *args, *model, "--store", str(base), "--run-id", "whole", env_home=home)
        assert r.returncode == 0, r.stderr
        whole_requests = httpx.get(srv.url + "/stats").json()["completed"]
        httpx.post(srv.url + "/stats/reset")

        db = tmp_path / "killed.db"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DELIBERATE_"))}
        env["DELIBERATE_HOME"] = str(home)
        proc = subprocess.Popen(
            [sys.executable, "-m", "deliberate", "run", *args, *model, "--store", str(db),
             "--run-id", "broken"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _done_tasks(db, "broken") < kill_after and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert kill_after <= _done_tasks(db, "broken") < tasks, "the kill must land mid-run"
        first_requests = httpx.get(srv.url + "/stats").json()["completed"]

        r = cli("run", "--resume", "broken", "--store", str(db), env_home=home)
        assert r.returncode == 0, r.stderr
        total_requests = httpx.get(srv.url + "/stats").json()["completed"]
    return KillResume(base, db, whole_requests, first_requests, total_requests)


def test_resume_after_sigkill_pays_for_no_call_twice(tmp_path: Path, clean_env: Path) -> None:
    args = ["--strategy", "best_of_n", "-n", "4", "--concurrency", "2", "--no-cache",
            "--seed", "11"]
    k = kill_and_resume(tmp_path, clean_env, args, latency_ms=15, kill_after=8, tasks=30)
    assert _answers(k.db, "broken") == _answers(k.base, "whole")
    assert _tree_shape(k.db, "broken") == _tree_shape(k.base, "whole")
    # Every call the uninterrupted run paid for was paid exactly once across kill + resume,
    # except those in flight at the moment of the kill (never answered, so never recorded):
    # at most 2 tasks × 4 parallel judge calls.
    assert _paid_calls(k.db, "broken") == _paid_calls(k.base, "whole") == k.whole_requests
    assert k.whole_requests <= k.total_requests <= k.whole_requests + 8
    assert k.first_requests < k.whole_requests


def test_ctrl_c_marks_the_run_interrupted_and_resume_finishes_it(tmp_path: Path,
                                                                  clean_env: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DELIBERATE_"))}
    env["DELIBERATE_HOME"] = str(clean_env)
    proc = subprocess.Popen(
        [sys.executable, "-m", "deliberate", "run", "--model", "sim?latency_ms=200", "-n", "4",
         "--concurrency", "2", "--no-cache", "--run-id", "intr"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    db = clean_env / "deliberate.db"
    deadline = time.monotonic() + 60
    while _done_tasks(db, "intr") < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    r = cli("runs", env_home=clean_env)
    assert "interrupted" in r.stdout
    r = cli("run", "--resume", "intr", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert _done_tasks(db, "intr") == 30


def test_models_and_strategies_commands(clean_env: Path) -> None:
    r = cli("models", env_home=clean_env)
    assert r.returncode == 0 and "default model: sim" in r.stdout
    assert "[@BASE_URL]" in r.stdout  # the grammar is shown, not eaten as markup
    r = cli("strategies", env_home=clean_env)
    assert r.returncode == 0
    for name in ("best_of_n", "self_consistency"):
        assert name in r.stdout


@pytest.mark.parametrize(("search", "in_flight"), [
    (["--strategy", "mcts", "-p", "iterations=4"], 6),  # k=3 refinements + 3 values
    (["--strategy", "mcts", "-p", "iterations=4", "-p", "space=steps"], 3),  # 3 critic calls
    (["--strategy", "beam", "-p", "n=4"], 4),  # one critic call per proposed step
], ids=["mcts-answer", "mcts-steps", "beam-steps"])
def test_killed_search_resumes_to_the_same_tree(tmp_path: Path, clean_env: Path,
                                                search: list[str], in_flight: int) -> None:
    """The tree in the store is the search state: a SIGKILLed search continues from it."""
    args = [*search, "--limit", "12", "--concurrency", "2", "--no-cache", "--seed", "3"]
    k = kill_and_resume(tmp_path, clean_env, args, latency_ms=10, kill_after=3, tasks=12)
    assert _answers(k.db, "broken") == _answers(k.base, "whole")
    assert _tree_shape(k.db, "broken") == _tree_shape(k.base, "whole")
    with sqlite3.connect(k.db) as a, sqlite3.connect(k.base) as b:
        q = ("SELECT task_id, operator, visits, round(value, 9) FROM nodes WHERE run_id=? "
             "ORDER BY task_id, operator, visits, value")
        assert a.execute(q, ("broken",)).fetchall() == b.execute(q, ("whole",)).fetchall()
    assert _paid_calls(k.db, "broken") == _paid_calls(k.base, "whole") == k.whole_requests
    # calls in flight at the kill (never answered) are the only ones asked twice:
    # at most 2 tasks × the calls one task has in flight at once
    assert k.whole_requests <= k.total_requests <= k.whole_requests + 2 * in_flight
