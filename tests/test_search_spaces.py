"""Every search over every space: config checks, scripted logic, sim, server, CLI.

``mcts``, ``best_first`` and ``beam`` share the space and value a config names
(``strategies/_search.py``); these tests run each across the answer and step
spaces and check what is specific to a space: what is a finished candidate, what
the verifier, judge and grader see, and what the step critic's advice feeds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import arun
from deliberate.errors import ConfigError
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.strategies.base import build_strategy
from deliberate.tasks import load_suite

REPO = Path(__file__).resolve().parents[1]
SUITE = Suite.of("tiny", [Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")])


def cfg(tmp_path: Path, strategy: str, model: str = "sim", **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"suite": "arithmetic", "limit": 3, "strategy": strategy,
                            "model": model, "store": str(tmp_path / "s.db"), "cache": False,
                            "seed": 5}
    base.update(kw)
    return RunConfig.model_validate(base)


async def load(tmp_path: Path, run_id: str, task_id: str) -> tuple[list[Any], list[Any]]:
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        return await st.load_tree(run_id, task_id)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize(("strategy", "params", "message"), [
    ("mcts", {"space": "env"}, "space=env needs env="),
    ("best_first", {"env": "x:Y"}, "only read with space=env"),
    ("mcts", {"value": "critic"}, "use it with space=steps"),
    ("beam", {"value": "verifier"}, "no prefix could be valued"),
    ("beam", {"split": "delimiter"}, "non-empty delimiter"),
    ("mcts", {"value": "mix", "w_llm": 0, "w_verifier": 0}, "positive sum"),
    ("best_first", {"space": "trees"}, "space"),
])
def test_inconsistent_search_configs_are_one_line_errors(strategy: str, params: dict[str, Any],
                                                         message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy(strategy, params)


def test_depth_and_value_defaults_follow_the_space() -> None:
    from deliberate.strategies._search import SearchConfig

    assert [SearchConfig(space=s).depth for s in ("answer", "steps")] == [4, 8]
    assert [SearchConfig(space=s).value_kind for s in ("answer", "steps")] == ["llm", "critic"]
    assert SearchConfig(space="steps", max_depth=3, value="mix").depth == 3


# ---------------------------------------------------------------- scripted logic


def _steps(r: ChatRequest) -> list[str]:
    return re.findall(r'<step n="\d+">\n(.*?)\n</step>', r.messages[-1].content)


def step_script(seen: list[str]) -> Any:
    """Proposer: 'sD.i' steps, answering at depth 2 ('Answer: 4' for i=0, else 5).
    Critic: a step ending in '.1' or 'Answer: 5' is the first wrong one. Judge:
    scores a whole solution by whether it reached 4. Every prompt is kept."""

    def script(r: ChatRequest, i: int) -> str:
        text = r.messages[-1].content
        seen.append(text)
        steps = _steps(r)
        if "<partial_solution>" in text:
            return f"Answer: {4 + i}" if len(steps) == 2 else f"s{len(steps)}.{i}"
        if "<numbered_steps>" in text:
            bad = next((k for k, s in enumerate(steps, 1)
                        if s.endswith(".1") or s == "Answer: 5"), -1)
            return json.dumps({"first_wrong_step": bad, "reason": f"bad step {bad}"})
        return json.dumps({"verdict": "correct" if "Answer: 4" in text else "incorrect",
                           "score": 9 if "Answer: 4" in text else 2, "critique": "c"})

    return script


@pytest.mark.parametrize("strategy", ["mcts", "best_first"])
async def test_step_space_search_finishes_on_a_right_path(tmp_path: Path, strategy: str) -> None:
    seen: list[str] = []
    params = {"space": "steps", "k": 2, "iterations": 6, "threshold": None}
    res = await arun(cfg(tmp_path, strategy, "scripted", suite="tiny", limit=None,
                         strategy_params=params),
                     models={"scripted": FunctionModel(step_script(seen))}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer == "4" and a.correct
    nodes, judgements = await load(tmp_path, res.run_id, "t1")
    chosen = next(n for n in nodes if n.id == a.final_node_id)
    # the chosen node is the final step; the whole solution is kept for grading
    assert chosen.text == "Answer: 4" and chosen.meta["candidate"] == "s0.0\ns1.0\nAnswer: 4"
    path = {n.id for n in nodes if n.meta.get("chosen")}
    assert len(path) == 4  # root, two steps, the answer
    # every proposed step was valued by the step critic, none by the LLM value
    roles = {j.role for j in judgements}
    assert "step_critic" in roles and "value" not in roles
    # no final step is ever expanded: no prompt extends a solution that has an answer
    assert not any("<partial_solution>" in t and "Answer:" in t.split("<partial_solution>")[1]
                   .split("</partial_solution>")[0] for t in seen)
    # the critic's named wrong step became advice for a sibling's proposal
    assert any("Step 2 looks wrong" in t for t in seen if "<partial_solution>" in t)
    assert res.summary["accuracy"] == 1.0
    assert a.stats["search"]["space"] == "steps"


async def test_step_space_judge_discriminator_sees_the_whole_solution(tmp_path: Path) -> None:
    seen: list[str] = []
    params = {"space": "steps", "k": 2, "iterations": 6, "threshold": None,
              "discriminator": "judge", "judge_top": 3}
    res = await arun(cfg(tmp_path, "mcts", "scripted", suite="tiny", limit=None,
                         strategy_params=params),
                     models={"scripted": FunctionModel(step_script(seen))}, suite=SUITE)
    judged = [t for t in seen if "<candidate>" in t and "<numbered_steps>" not in t
              and "<partial_solution>" not in t]
    assert judged and all(re.search(r"s0\.\d\ns1\.\d\nAnswer: \d", t) for t in judged)
    assert res.attempts[0].correct


async def test_step_space_with_no_finished_path_returns_the_best_prefix(tmp_path: Path) -> None:
    def never_answers(r: ChatRequest, i: int) -> str:
        if "<partial_solution>" in r.messages[-1].content:
            return f"s{len(_steps(r))}.{i}"
        return json.dumps({"first_wrong_step": -1, "reason": "fine"})

    params = {"space": "steps", "k": 2, "iterations": 3, "max_depth": 5}
    res = await arun(cfg(tmp_path, "mcts", "scripted", suite="tiny", limit=None,
                         strategy_params=params),
                     models={"scripted": FunctionModel(never_answers)}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer is None and a.correct is False
    assert "no finished candidate" in a.stats["note"]
    assert a.stats["search"]["candidates"] == 0


def answer_script(r: ChatRequest, i: int) -> str:
    """Generator: '3'+i; refiner: one more than the candidate; value: 100 at 4, -50 else."""
    text = r.messages[-1].content
    if "<critique>" in text:
        got = re.search(r"Answer: (\d+)", text.split("<candidate>")[1])
        return f"Answer: {int(got.group(1)) + 1 if got else 0}"
    if "<candidate>" in text:
        right = "Answer: 4" in text.split("<candidate>")[1]
        return json.dumps({"score": 100 if right else -50, "explanation": "e",
                           "advice": "add one"})
    return f"Answer: {3 - i}"


async def test_beam_over_answers_refines_the_kept_beams(tmp_path: Path) -> None:
    params = {"space": "answer", "n": 4, "width": 2, "max_depth": 3}
    res = await arun(cfg(tmp_path, "beam", "scripted", suite="tiny", limit=None,
                         strategy_params=params),
                     models={"scripted": FunctionModel(answer_script)}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer == "4" and a.correct
    nodes, judgements = await load(tmp_path, res.run_id, "t1")
    by_depth: dict[int, list[Any]] = {}
    for n in nodes:
        by_depth.setdefault(n.depth, []).append(n)
    assert sorted(n.text for n in by_depth[1]) == ["Answer: 0", "Answer: 1", "Answer: 2",
                                                   "Answer: 3"]
    # depth 2: the two best (3 and 2, ties by creation) are each refined twice (n // width)
    assert sorted(n.text for n in by_depth[2]) == ["Answer: 3", "Answer: 3", "Answer: 4",
                                                   "Answer: 4"]
    assert all(n.operator == "refine" for n in by_depth[2])
    assert {j.role for j in judgements} >= {"value"}
    assert a.stats["search"]["space"] == "answer"


# ---------------------------------------------------------------- sim and server


@pytest.mark.parametrize(("strategy", "params"), [
    ("mcts", {"space": "steps", "iterations": 5, "k": 2}),
    ("best_first", {"space": "steps", "iterations": 5, "k": 2}),
    ("beam", {"space": "answer", "n": 4, "width": 2, "max_depth": 2}),
    ("mcts", {"space": "steps", "iterations": 4, "k": 2, "value": "mix", "parallel": 2}),
])
async def test_sim_runs_are_deterministic_and_graded_on_whole_candidates(
        tmp_path: Path, strategy: str, params: dict[str, Any]) -> None:
    r1 = await arun(cfg(tmp_path / "a", strategy, strategy_params=params))
    r2 = await arun(cfg(tmp_path / "b", strategy, strategy_params=params))
    assert [(a.answer, a.correct) for a in r1.attempts] == [(a.answer, a.correct)
                                                             for a in r2.attempts]
    assert all(a.correct is not None for a in r1.attempts)
    assert sum(bool(a.correct) for a in r1.attempts) >= 2
    nodes, judgements = await load(tmp_path / "a", r1.run_id, "arith-01")
    graded = [j for j in judgements if j.role == "grader"]
    assert graded
    if params["space"] == "steps":
        final = next(n for n in nodes if n.meta.get("candidate"))
        assert final.meta["candidate"].count("\n") >= 1  # several steps, graded together
    if params.get("value") == "mix":
        assert {"step_critic", "verifier"} <= {j.role for j in judgements}


@pytest.mark.parametrize(("strategy", "params", "budget"), [
    ("mcts", {"space": "steps", "iterations": 30, "k": 3, "parallel": 2, "threshold": None},
     3000),
    ("best_first", {"space": "steps", "iterations": 30, "k": 3, "threshold": None}, 3000),
    ("beam", {"space": "answer", "n": 4, "width": 2, "max_depth": 12}, 6000),
])
async def test_other_spaces_through_the_sim_server_within_budget(
        tmp_path: Path, strategy: str, params: dict[str, Any], budget: int) -> None:
    with SimServer(load_suite("arithmetic"), SimParams(), ServerConfig()) as srv:
        res = await arun(cfg(tmp_path, strategy, f"openai:sim@{srv.base_url}",
                             task_budget={"max_tokens": budget}, strategy_params=params))
    for a in res.attempts:
        assert a.prompt_tokens + a.completion_tokens <= budget
        assert a.final_node_id is not None
    assert any(a.status == "budget_limited" for a in res.attempts)
    nodes, _ = await load(tmp_path, res.run_id, "arith-01")
    role = "step_proposer" if params["space"] == "steps" else "refiner"
    assert any(n.role == role for n in nodes)


def test_cli_runs_each_search_over_another_space(tmp_path: Path) -> None:
    for strategy, space in (("best_first", "steps"), ("beam", "answer")):
        r = subprocess.run(
            [sys.executable, "-m", "deliberate", "run", "--strategy", strategy, "-p",
             f"space={space}", "-p", "k=2" if strategy != "beam" else "n=4", "--limit", "2",
             "--model", "sim", "--store", str(tmp_path / "c.db"), "--no-cache"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "accuracy" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "deliberate", "run", "--strategy", "mcts", "-p", "space=env",
         "--limit", "1", "--model", "sim", "--store", str(tmp_path / "c.db")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "space=env needs env=" in r.stderr
    assert "Traceback" not in r.stderr


async def test_identical_proposals_become_one_child_with_their_share_as_prior(
        tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        text = r.messages[-1].content
        if "<partial_solution>" in text:
            if _steps(r):
                return "Answer: 4"
            return "2 + 2 = 4" if i < 3 else "2 * 2 = 4"  # 3 of 4 samples agree
        return json.dumps({"first_wrong_step": -1, "reason": "fine"})

    params = {"space": "steps", "k": 4, "iterations": 2, "selection": "puct"}
    res = await arun(cfg(tmp_path, "mcts", "scripted", suite="tiny", limit=None,
                         strategy_params=params),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    nodes, _ = await load(tmp_path, res.run_id, "t1")
    first = sorted((n.text, n.meta["proposed"], n.meta["prior"]) for n in nodes if n.depth == 1)
    assert first == [("2 * 2 = 4", 1, 0.25), ("2 + 2 = 4", 3, 0.75)]
    # the four identical answers under the expanded step are one node
    assert [n.text for n in nodes if n.depth == 2] == ["Answer: 4"]
    assert res.attempts[0].correct


def test_show_draws_a_searched_tree_with_its_statistics(tmp_path: Path) -> None:
    from tests.test_cli import cli

    db = str(tmp_path / "show.db")
    r = cli("run", "--strategy", "mcts", "-p", "iterations=4", "-p", "k=3", "--limit", "1",
            "--model", "sim", "--store", db, "--no-cache", "--run-id", "m", env_home=tmp_path)
    assert r.returncode == 0, r.stderr
    full = cli("show", "m", "arith-01", "--store", db, "--critiques", env_home=tmp_path)
    assert full.returncode == 0, full.stderr
    out = full.stdout
    assert re.search(r"search\s+space answer, iterations \d+, expansions \d+", out)
    assert re.search(r"tree\s+\d+ nodes, depth \d+, branching [\d.]+", out)
    assert "visits=" in out and "value=" in out and "★" in out
    assert "value: " in out and "value: advice: " in out  # the hybrid value's words
    assert "chosen candidate" in out
    drawn = out.count("\n├── ") + out.count("└── ")
    top = cli("show", "m", "arith-01", "--store", db, "--top", "1", env_home=tmp_path).stdout
    assert "not shown" in top
    assert top.count("└── ") + top.count("├── ") < drawn
    # every node is accounted for: drawn or counted in a "not shown" line
    hidden = sum(int(n) for n in re.findall(r"\((\d+) nodes?\) not shown", top))
    shown_nodes = len(re.findall(r"(?:├──|└──) (?:★ )?\w+ #?", top))
    nodes = int(re.search(r"tree\s+(\d+) nodes", top).group(1))  # type: ignore[union-attr]
    assert shown_nodes + hidden == nodes - 1  # the root is the heading
    chosen = cli("show", "m", "arith-01", "--store", db, "--chosen-only", env_home=tmp_path)
    lines = [ln for ln in chosen.stdout.splitlines() if "── " in ln and "not shown" not in ln]
    assert lines and all("★" in ln for ln in lines)
