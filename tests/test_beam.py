"""Beam search and DVTS: pruning on scripted scores, DVTS partition, sim, server, CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.strategies.beam import final_choice, rank
from deliberate.tasks import load_suite
from deliberate.tree import NodeRecord

SUITE = Suite.of("tiny", [Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")])


def cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "scripted", "store": str(tmp_path / "s.db"),
                            "cache": False, "suite": "tiny", "strategy": "beam"}
    base.update(kw)
    return RunConfig.model_validate(base)


def node(i: int, value: float | None, answer: str | None = None) -> NodeRecord:
    return NodeRecord(id=f"n{i}", run_id="r", task_id="t", parent_id="root", role="x",
                      operator="step", text=str(i), depth=1, value=value, answer=answer)


def test_rank_keeps_top_by_score_ties_to_creation_order() -> None:
    nodes = [node(0, 0.5), node(1, None), node(2, 0.9), node(3, 0.5), node(4, 0.9)]
    assert [n.id for n in rank(nodes)] == ["n2", "n4", "n0", "n3", "n1"]
    assert final_choice([node(0, 0.9), node(1, 0.2, "4")]).id == "n1"  # type: ignore[union-attr]


def _steps(r: ChatRequest) -> list[str]:
    return re.findall(r'<step n="\d+">\n(.*?)\n</step>', r.messages[-1].content)


def scripted(r: ChatRequest, i: int) -> str:
    """Proposer: step 'sK.i'; depth 3 answers. Critic: wrong step where a step ends in .1."""
    steps = _steps(r)
    if "<partial_solution>" in r.messages[-1].content:
        return f"Answer: {4 + i}" if len(steps) == 2 else f"s{len(steps)}.{i}"
    bad = next((k for k, s in enumerate(steps, 1) if s.endswith(".1") or s == "Answer: 5"), -1)
    return json.dumps({"first_wrong_step": bad, "reason": "r"})


async def test_beam_prunes_to_width_and_picks_best_finished(tmp_path: Path) -> None:
    res = await arun(cfg(tmp_path, strategy_params={"n": 4, "width": 2}),
                     models={"scripted": FunctionModel(scripted)}, suite=SUITE)
    assert res.attempts[0].answer == "4" and res.attempts[0].correct
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t1")
    by_depth: dict[int, list[NodeRecord]] = {}
    for n in nodes:
        by_depth.setdefault(n.depth, []).append(n)
    assert len(by_depth[1]) == 4  # root proposes n
    parents = {n.parent_id for n in by_depth[2]}
    kept = {n.id for n in by_depth[1] if n.text in ("s0.0", "s0.2")}  # top 2, ties by order
    assert parents == kept and len(by_depth[2]) == 4  # each beam proposes n // width
    assert sum(1 for j in judgements if j.role == "step_critic") == len(nodes) - 1
    assert all(n.operator == "step" for n in nodes if n.parent_id)


async def test_dvts_subtrees_are_independent(tmp_path: Path) -> None:
    res = await arun(cfg(tmp_path, strategy_params={"n": 4, "width": 2, "dvts": True}),
                     models={"scripted": FunctionModel(scripted)}, suite=SUITE)
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, _ = await st.load_tree(res.run_id, "t1")
    first = sorted((n for n in nodes if n.depth == 1), key=lambda n: n.sample_index or 0)
    # groups {s0.0, s0.1} and {s0.2, s0.3}: each keeps its best, expanded on its own
    expanded = {n.parent_id for n in nodes if n.depth == 2}
    assert expanded == {first[0].id, first[2].id}
    assert res.attempts[0].answer == "4"


async def test_budget_stops_with_best_so_far(tmp_path: Path) -> None:
    res = await arun(cfg(tmp_path, strategy_params={"n": 4, "width": 2},
                         task_budget={"max_calls": 3}),
                     models={"scripted": FunctionModel(scripted)}, suite=SUITE)
    assert res.attempts[0].budget_limited


def _sim_cfg(tmp_path: Path, model: str, seed: int = 3) -> RunConfig:
    return RunConfig.model_validate({
        "model": model, "store": str(tmp_path / "r.db"), "suite": "arithmetic", "limit": 6,
        "strategy": "beam", "strategy_params": {"n": 6, "width": 2}, "seed": seed,
        "cache": False, "generator": {"temperature": 0.8}})


async def test_beam_on_sim_is_deterministic_and_matches_server(tmp_path: Path) -> None:
    a = await arun(_sim_cfg(tmp_path, "sim"))
    b = await arun(_sim_cfg(tmp_path, "sim"))
    out = [(x.task_id, x.answer) for x in a.attempts]
    assert out == [(x.task_id, x.answer) for x in b.attempts]
    assert all(x.answer is not None for x in a.attempts)
    with SimServer(load_suite("arithmetic"), SimParams(), ServerConfig()) as srv:
        c = await arun(_sim_cfg(tmp_path, f"openai:sim@{srv.base_url}"))
    assert [(x.task_id, x.answer) for x in c.attempts] == out


def test_cli_runs_beam(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "deliberate", "run", "--strategy", "beam", "--limit", "2",
         "--suite", "arithmetic", "--model", "sim", "--store", str(tmp_path / "c.db"),
         "-p", "n=4", "-p", "width=2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "accuracy" in proc.stdout
