"""Best-first search: expands the best frontier node, stops by rule, chooses the best value."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest

SUITE = Suite.of("tiny", [Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")])
# generator answers by sample; the refiner appends "0" to the answer it refines
GEN = {0: "1", 1: "2", 2: "3"}
SCORE = {"1": 10, "2": 50, "3": 30, "20": 70, "10": 0, "200": 99, "30": 20}


def script(r: ChatRequest, i: int) -> str:
    user = r.messages[-1].content
    if "<value_request>" in user:
        ans = re.findall(r"Answer: (\d+)", user)[-1]
        return json.dumps({"score": SCORE.get(ans, -50), "explanation": "e", "advice": "a"})
    if "<critique>" in user:
        ans = re.findall(r"<candidate>.*?Answer: (\d+)", user, re.S)[0]
        return f"Answer: {ans}0"
    return f"Answer: {GEN[r.sample_offset + i]}"


def cfg(tmp_path: Path, **params: Any) -> RunConfig:
    return RunConfig.model_validate({
        "model": "scripted", "store": str(tmp_path / "s.db"), "cache": False, "suite": "tiny",
        "strategy": "best_first", "strategy_params": {"k": 1, "threshold": None, **params}})


async def expanded(tmp_path: Path, run_id: str) -> tuple[list[str], list[str]]:
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, _ = await st.load_tree(run_id, "t1")
    by = {n.id: n for n in nodes}
    parents = [by[n.parent_id].answer or "root" for n in nodes
               if n.parent_id is not None and n.operator == "refine"]
    chosen = [n.answer or "root" for n in nodes if n.meta.get("chosen")]
    return parents, chosen


async def test_expands_best_frontier_node_and_chooses_best_value(tmp_path: Path) -> None:
    def three(r: ChatRequest, i: int) -> str:
        return script(r, i)

    res = await arun(cfg(tmp_path, k=3, iterations=2),
                     models={"scripted": FunctionModel(three)}, suite=SUITE)
    # root -> 1 (10), 2 (50), 3 (30); expand 2 -> 20 x3 (70); expand the first 20 -> 200 (99)
    parents, chosen = await expanded(tmp_path, res.run_id)
    assert parents == ["2", "2", "2", "20", "20", "20"]
    assert res.attempts[0].answer == "200"
    assert sorted(chosen) == ["2", "20", "200", "root"]


@pytest.mark.parametrize(("threshold", "answer"), [(0.95, "200"), (0.8, "20")])
async def test_stops_on_threshold(tmp_path: Path, threshold: float, answer: str) -> None:
    # 70 on -100..100 = 0.85; 99 = 0.995
    res = await arun(cfg(tmp_path, k=3, iterations=50, threshold=threshold),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert res.attempts[0].answer == answer
    assert "threshold" in str(res.attempts[0].stats.get("note", ""))


async def test_budget_keeps_best_so_far(tmp_path: Path) -> None:
    c = cfg(tmp_path, k=3, iterations=50).model_copy(
        update={"task_budget": RunConfig.model_validate(
            {"task_budget": {"max_calls": 6}}).task_budget})
    res = await arun(c, models={"scripted": FunctionModel(script)}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer is not None and a.status == "budget_limited"


async def test_runs_on_sim_deterministically(tmp_path: Path) -> None:
    outs = []
    for d in ("a", "b"):
        rc = RunConfig.model_validate({
            "model": "sim", "store": str(tmp_path / d / "s.db"), "cache": False,
            "suite": "arithmetic", "limit": 4, "seed": 5, "strategy": "best_first",
            "strategy_params": {"iterations": 3, "k": 2}})
        res = await arun(rc)
        outs.append([(a.answer, a.correct, a.prompt_tokens) for a in res.attempts])
    assert outs[0] == outs[1] and all(a[0] is not None for a in outs[0])
