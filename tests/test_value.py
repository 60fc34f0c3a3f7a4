"""Value functions: the LLM hybrid value (parse, repair, failure), verifier reward, mixes, sim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.roles.prompts import Prompts
from deliberate.roles.value import ValueRole, parse_value
from deliberate.search.value import MixedValue
from deliberate.tasks import load_suite

SUITE = Suite.of("tiny", [Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")])


def is_value(r: ChatRequest) -> bool:
    return "<value_request>" in r.messages[-1].content


def cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "scripted", "store": str(tmp_path / "s.db"), "cache": False,
                            "suite": "tiny", "strategy": "mcts",
                            "strategy_params": {"iterations": 1, "k": 2}}
    base.update(kw)
    return RunConfig.model_validate(base)


def test_parse_value_checks_the_scale() -> None:
    v = parse_value('{"score": 40, "explanation": "ok", "advice": "try x"}', (-100, 100))
    assert (v.score, v.explanation, v.advice) == (40, "ok", "try x")
    with pytest.raises(Exception, match="outside the scale"):
        parse_value('{"score": 140, "explanation": "", "advice": ""}', (-100, 100))


async def test_llm_value_normalises_and_records_advice(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_value(r):
            score = 60 if "Answer: 4" in r.messages[-1].content else -80
            return json.dumps({"score": score, "explanation": "why", "advice": "do y"})
        return "2 + 2 = 4\nAnswer: 4" if i == 0 else "2 + 2 = 5\nAnswer: 5"

    res = await arun(cfg(tmp_path), models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert res.attempts[0].answer == "4"
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t1")
    vals = sorted((j.score or 0.0, j.normalised or 0.0, j.critique, j.meta["advice"])
                  for j in judgements if j.role == "value")
    assert [v[0] for v in vals] == [-80, 60]
    assert [v[1] for v in vals] == [pytest.approx(0.1), pytest.approx(0.8)]
    assert all(v[2:] == ("why", "do y") for v in vals)
    rewards = sorted(n.meta["reward"] for n in nodes if "reward" in n.meta)
    assert rewards == [pytest.approx(0.1), pytest.approx(0.8)]


async def test_llm_value_repairs_once_then_records_failure(tmp_path: Path) -> None:
    seen: list[str] = []

    def script(r: ChatRequest, i: int) -> str:
        if is_value(r) or r.tags.get("repair"):
            seen.append(r.tags.get("repair", "0"))
            return "no json here"
        return "Answer: 4"

    res = await arun(cfg(tmp_path, strategy_params={"iterations": 1, "k": 1}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert seen == ["0", "1"]  # one request, one repair
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        _, judgements = await st.load_tree(res.run_id, "t1")
    [j] = [j for j in judgements if j.role == "value"]
    assert j.verdict == "parse_failure" and j.score is None and j.meta["repaired"]
    assert res.attempts[0].answer == "4"  # nothing valued: the first node is returned


async def test_verifier_and_mixed_values(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_value(r):
            return json.dumps({"score": 0, "explanation": "unsure", "advice": "a"})
        return "Answer: 4" if i == 0 else "Answer: 5"

    res = await arun(cfg(tmp_path, strategy_params={"iterations": 1, "k": 2, "value": "mix",
                                                    "w_llm": 1, "w_verifier": 3}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t1")
    rewards = {n.answer: n.meta["reward"] for n in nodes if "reward" in n.meta}
    # LLM 0 on -100..100 = 0.5; verifier 1 or 0; mix (1*0.5 + 3*v)/4
    assert rewards == {"4": pytest.approx(0.875), "5": pytest.approx(0.125)}
    assert sum(1 for j in judgements if j.role == "verifier") == 2
    with pytest.raises(ValueError, match="one weight per part"):
        MixedValue([], [])


def _value_of(sim: SimModel, task: Task, text: str) -> dict[str, Any]:
    role = ValueRole(sim, RunConfig.model_validate({}).role("value"), Prompts(), seed=1)
    req = role.request(role.messages(task, text))
    return dict(json.loads(sim.respond(req).texts[0]))


@pytest.mark.parametrize(("sens", "spec"), [(1.0, 1.0), (0.7, 0.9)])
def test_sim_value_tracks_truth_with_its_error_rates(sens: float, spec: float) -> None:
    suite = load_suite("arithmetic")
    task = suite.tasks[0]
    right = f"Answer: {task.answer}"
    wrong = f"Answer: {int(str(task.answer)) + 7}"
    hi, lo = [], []
    for seed in range(150):  # the value role is greedy: independent draws need other sim seeds
        sim = SimModel(suite, SimParams(sensitivity=sens, specificity=spec, seed=seed))
        hi.append(_value_of(sim, task, right)["score"] > 0)
        lo.append(_value_of(sim, task, wrong)["score"] < 0)
    assert abs(sum(hi) / 150 - spec) < 0.09
    assert abs(sum(lo) / 150 - sens) < 0.09
    r = _value_of(sim, task, wrong)
    assert r["explanation"] and r["advice"] and -100 <= r["score"] <= 100
