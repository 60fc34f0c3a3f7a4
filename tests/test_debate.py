"""Debate: rounds, early stop on agreement, the tree, each final decision, ties, budgets."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.config import RoleConfig
from deliberate.engine.runner import arun
from deliberate.errors import ConfigError
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.roles.debater import Debater
from deliberate.roles.prompts import Prompts
from deliberate.strategies.base import build_strategy
from deliberate.tasks import load_suite

TASK = Task(id="t", prompt="What is 2 + 2?", kind="math", answer="4")
SUITE = Suite.of("tiny", [TASK])

Script = Callable[[ChatRequest, int], str]


def between(text: str, tag: str) -> str:
    m = re.search(f"<{tag}>\n(.*?)\n</{tag}>", text, re.DOTALL)
    assert m is not None, tag
    return m.group(1)


def number(text: str) -> int:
    m = re.search(r"Answer: (-?\d+)", text)
    assert m is not None, text
    return int(m.group(1))


def others_of(r: ChatRequest) -> list[str]:
    return re.findall(r"<answer>\n(.*?)\n</answer>", r.messages[-1].content, re.DOTALL)


def debate_script(first: list[int], revise: Callable[[int, list[int]], int],
                  judge: Callable[[int], float] | None = None,
                  pairwise: Callable[[int, int], str] | None = None) -> Script:
    """Round 0: debater i answers first[i]; later rounds: revise(own, others);
    judge(answer) -> score; pairwise(a, b) -> "A"/"B"/"tie"."""
    def script(r: ChatRequest, i: int) -> str:
        role = r.tags.get("role")
        text = r.messages[-1].content
        if role == "debater" and r.tags.get("round") == "0":
            return f"I think so.\nAnswer: {first[i]}"
        if role == "debater":
            own = number(between(text, "your_answer"))
            return f"Revised.\nAnswer: {revise(own, [number(o) for o in others_of(r)])}"
        if role == "judge":
            assert judge is not None, "the judge was not expected"
            score = judge(number(between(text, "candidate")))
            return json.dumps({"critique": "c", "verdict": "correct", "score": score})
        if role == "pairwise_judge":
            assert pairwise is not None, "the pairwise judge was not expected"
            a, b = (number(between(text, t)) for t in ("candidate_a", "candidate_b"))
            return json.dumps({"winner": pairwise(a, b), "reason": "r"})
        raise AssertionError(f"unexpected request {r.tags}")
    return script


def majority(own: int, others: list[int]) -> int:
    counts = Counter([own, *others])
    return max(counts, key=lambda k: (counts[k], k == own))


def stubborn(own: int, others: list[int]) -> int:
    return own


def cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "scripted", "store": str(tmp_path / "s.db"),
                            "cache": False, "suite": "tiny", "strategy": "debate"}
    base.update(kw)
    return RunConfig.model_validate(base)


async def run(tmp_path: Path, script: Script, **params: Any) -> tuple[Any, FunctionModel]:
    model = FunctionModel(script)
    res = await arun(cfg(tmp_path, strategy_params=params), models={"scripted": model},
                     suite=SUITE)
    return res, model


async def tree(tmp_path: Path, res: Any) -> tuple[list[Any], list[Any]]:
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        return await st.load_tree(res.run_id, "t")


def roles_of(model: FunctionModel) -> list[str]:
    return [f"{r.tags.get('role')}:{r.tags.get('round', '')}" for r in model.requests]


# ---------------------------------------------------------------- rounds and stopping


async def test_agreement_in_round_zero_stops_before_any_revision(tmp_path: Path) -> None:
    res, model = await run(tmp_path, debate_script([4, 4, 4], majority))
    assert roles_of(model) == ["debater:0"]  # one request with n = 3, nothing else
    assert model.requests[0].n == 3
    a = res.attempts[0]
    assert a.answer == "4" and a.correct and "0 revision round(s)" in a.stats["note"]
    assert "agree" in a.stats["note"]
    nodes, judgements = await tree(tmp_path, res)
    root = next(n for n in nodes if n.parent_id is None)
    kids = [n for n in nodes if n.parent_id == root.id]
    assert len(kids) == 3 and {n.operator for n in kids} == {"generate"}
    assert sorted(n.meta["debater"] for n in kids) == [0, 1, 2]
    assert not [j for j in judgements if j.role in ("judge", "pairwise")]


async def test_debaters_read_each_other_and_stop_once_they_agree(tmp_path: Path) -> None:
    res, model = await run(tmp_path, debate_script([4, 5, 4], majority), rounds=3)
    assert roles_of(model) == ["debater:0"] + ["debater:1"] * 3  # agreed after round 1
    revision = next(r for r in model.requests if r.tags.get("round") == "1"
                    and "Answer: 5" in between(r.messages[-1].content, "your_answer"))
    assert [number(o) for o in others_of(revision)] == [4, 4]
    assert res.attempts[0].answer == "4"
    assert "1 revision round(s), stopped early" in res.attempts[0].stats["note"]
    nodes, _ = await tree(tmp_path, res)
    by_id = {n.id: n for n in nodes}
    r1 = [n for n in nodes if n.operator == "debate"]
    assert len(r1) == 3
    for n in r1:
        parent = by_id[n.parent_id]
        assert parent.operator == "generate" and parent.meta["debater"] == n.meta["debater"]
        assert n.meta["round"] == 1 and n.role == "debater"
        saw = n.meta["saw"]
        assert len(saw) == 2 and parent.id not in saw
        assert all(by_id[s].meta["round"] == 0 for s in saw)


async def test_stubborn_debaters_run_every_round_then_vote(tmp_path: Path) -> None:
    res, model = await run(tmp_path, debate_script([4, 5, 4], stubborn))
    assert roles_of(model) == ["debater:0"] + ["debater:1"] * 3 + ["debater:2"] * 3  # R = 2
    a = res.attempts[0]
    assert a.answer == "4" and "vote 2 of 3" in a.stats["note"]
    nodes, _ = await tree(tmp_path, res)
    assert max(n.depth for n in nodes) == 3  # root → round 0 → round 1 → round 2
    final = [n for n in nodes if n.meta.get("final")]
    assert sorted(n.meta["round"] for n in final) == [2, 2, 2]
    assert [n.meta["debater"] for n in final if n.meta["chosen"]] == [0]
    assert sorted(n.value for n in final) == pytest.approx([1 / 3, 2 / 3, 2 / 3])


async def test_without_stop_on_agreement_all_rounds_are_run(tmp_path: Path) -> None:
    _, model = await run(tmp_path, debate_script([4, 4, 4], majority),
                         rounds=1, stop_on_agreement=False)
    assert roles_of(model) == ["debater:0"] + ["debater:1"] * 3


async def test_zero_rounds_is_independent_answers_and_a_vote(tmp_path: Path) -> None:
    res, model = await run(tmp_path, debate_script([5, 4, 4, 4, 5], stubborn),
                           debaters=5, rounds=0)
    assert roles_of(model) == ["debater:0"] and res.attempts[0].answer == "4"


# ---------------------------------------------------------------- decisions and ties


async def test_vote_tie_is_broken_by_the_judge(tmp_path: Path) -> None:
    res, model = await run(tmp_path, debate_script([4, 5], stubborn,
                                                   judge=lambda a: 9 if a == 5 else 3),
                           debaters=2, rounds=1)
    assert roles_of(model).count("judge:") == 2
    assert res.attempts[0].answer == "5"
    assert "vote tied 1-1" in res.attempts[0].stats["note"]
    _, judgements = await tree(tmp_path, res)
    assert sorted(j.score for j in judgements if j.role == "judge") == [3, 9]


async def test_vote_tie_the_judge_cannot_split_goes_to_the_earlier_debater(
        tmp_path: Path) -> None:
    res, _ = await run(tmp_path, debate_script([5, 4], stubborn, judge=lambda a: 7),
                       debaters=2, rounds=0)
    assert res.attempts[0].answer == "5"


async def test_judge_decision_can_overrule_the_majority(tmp_path: Path) -> None:
    res, model = await run(tmp_path, debate_script([4, 5, 4], stubborn,
                                                   judge=lambda a: 10 if a == 5 else 2),
                           decision="judge", rounds=1)
    assert roles_of(model).count("judge:") == 2  # one per distinct answer
    assert res.attempts[0].answer == "5"


async def test_judge_decision_ties_go_to_more_votes(tmp_path: Path) -> None:
    res, _ = await run(tmp_path, debate_script([5, 4, 4], stubborn, judge=lambda a: 6),
                       decision="judge", rounds=0)
    assert res.attempts[0].answer == "4"


async def test_pairwise_decision_runs_a_tournament_of_distinct_answers(tmp_path: Path) -> None:
    def nearer_four(a: int, b: int) -> str:
        return "tie" if abs(a - 4) == abs(b - 4) else ("A" if abs(a - 4) < abs(b - 4) else "B")

    res, model = await run(tmp_path, debate_script([3, 6, 4, 6], stubborn,
                                                   pairwise=nearer_four),
                           debaters=4, decision="pairwise", rounds=1)
    assert res.attempts[0].answer == "4"  # beats the more popular 6
    assert roles_of(model).count("pairwise_judge:") == 4  # 3 answers: 2 matches × 2 orders
    _, judgements = await tree(tmp_path, res)
    pw = [j for j in judgements if j.role == "pairwise"]
    assert len(pw) == 4 and all(j.meta["consistent"] for j in pw)


async def test_unparseable_final_answers_do_not_vote(tmp_path: Path) -> None:
    res, _ = await run(tmp_path, lambda r, i: "no idea" if i < 2 else "Answer: 7", rounds=0)
    assert res.attempts[0].answer == "7"
    res2, _ = await run(tmp_path, lambda r, i: "no idea", rounds=1)
    assert res2.attempts[0].answer is None
    assert "no debater gave a parseable answer" in res2.attempts[0].stats["note"]


# ---------------------------------------------------------------- roles, budgets, config


async def test_each_debater_can_have_its_own_model(tmp_path: Path) -> None:
    models = {name: FunctionModel(debate_script([v, v, v], stubborn,
                                                judge=lambda a: 9 if a == 5 else 1),
                                  model_id=name)
              for name, v in (("m1", 4), ("m2", 5), ("scripted", 6), ("j", 0))}
    res = await arun(cfg(tmp_path, strategy_params={"roles": "alice,bob,carol", "rounds": 1},
                         roles={"alice": {"model": "m1"},
                                "bob": {"model": "m2", "temperature": 0.3}},
                         judge={"model": "j", "temperature": 0}),
                     models=models, suite=SUITE)
    assert res.summary["failed"] == 0
    for name in ("m1", "m2", "scripted"):
        assert roles_of(models[name]) == ["debater:0", "debater:1"]
    assert all(r.temperature == 0.3 for r in models["m2"].requests)
    assert roles_of(models["j"]) == ["judge:"] * 3  # a three-way tie goes to the judge
    assert res.attempts[0].answer == "5"
    nodes, _ = await tree(tmp_path, res)
    names = {n.meta["debater"]: n.meta["role_name"] for n in nodes if n.role == "debater"}
    assert names == {0: "alice", 1: "bob", 2: "carol"}


async def test_a_call_budget_stops_the_debate_with_its_best_so_far(tmp_path: Path) -> None:
    model = FunctionModel(debate_script([4, 5, 4], stubborn))
    res = await arun(cfg(tmp_path, task_budget={"max_calls": 2}, strategy_params={"rounds": 2}),
                     models={"scripted": model}, suite=SUITE)
    a = res.attempts[0]
    assert a.status == "budget_limited" and a.calls <= 2
    assert a.answer == "4" and "stopped by the budget" in a.stats["note"]


@pytest.mark.parametrize(("params", "message"), [
    ({"roles": "a", "rounds": 1}, "debaters"),
    ({"roles": ["a", "b"], "debaters": 3}, "2 roles given"),
    ({"debaters": 1}, "debaters"),
    ({"decision": "coin"}, "decision"),
])
def test_bad_debate_parameters_are_config_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_strategy("debate", params)


def test_roles_from_the_command_line_set_the_number_of_debaters() -> None:
    s = build_strategy("debate", {"roles": "a, b,a,c"})
    assert s.config.model_dump()["debaters"] == 4
    assert s.config.model_dump()["roles"] == ["a", "b", "a", "c"]


# ---------------------------------------------------------------- on the sim


def sim_debater(params: SimParams) -> tuple[Debater, Task]:
    suite = load_suite("arithmetic")
    sim = SimModel(suite, params)
    return Debater(sim, RoleConfig(temperature=0.8), Prompts(), 0), next(iter(suite))


def with_answer(task: Task, value: str) -> str:
    assert task.solution is not None and task.answer is not None
    return task.solution.replace(f"Answer: {task.answer}", f"Answer: {value}")


async def test_sim_debater_with_a_perfect_check_adopts_the_right_answer_and_keeps_it() -> None:
    debater, task = sim_debater(SimParams(sensitivity=1.0, specificity=1.0))
    right, wrong = with_answer(task, task.answer or ""), with_answer(task, "999")
    for k in range(5):
        moved = await debater.revise(task, wrong, [right, right], round=1, sample=k)
        assert number(moved.texts[0]) == int(task.answer or 0)
        kept = await debater.revise(task, right, [wrong, wrong], round=1, sample=k)
        assert kept.texts[0] == right
        agreed = await debater.revise(task, wrong, [wrong, wrong], round=1, sample=k)
        assert agreed.texts[0] == wrong  # nobody disagrees: nothing to revise


async def test_sim_debater_with_no_judgement_re_solves_or_conforms() -> None:
    # sensitivity 0, specificity 1: every answer looks right → conform with the share
    debater, task = sim_debater(SimParams(sensitivity=0.0, specificity=1.0))
    own, other = with_answer(task, "998"), with_answer(task, "999")
    outs = [(await debater.revise(task, own, [other, other], round=1, sample=k)).texts[0]
            for k in range(20)]
    assert set(outs) == {other}  # both others agree: share 1
    split = [(await debater.revise(task, own, [other, with_answer(task, "997")], round=1,
                                   sample=k)).texts[0] for k in range(40)]
    assert {own, other} == set(split)  # share 1/2: sometimes conforms, sometimes not


def acc(res: Any) -> float:
    value = res.summary["accuracy"]
    assert isinstance(value, float)
    return value


async def test_debate_on_sim_beats_a_single_sample_and_is_deterministic(tmp_path: Path) -> None:
    def conf(strategy: str, params: dict[str, Any], seed: int) -> RunConfig:
        return RunConfig.model_validate({
            "suite": "arithmetic", "strategy": strategy, "strategy_params": params,
            "model": "sim", "store": str(tmp_path / "s.db"), "cache": False, "seed": seed})

    single = debate = 0.0
    for seed in range(3):
        single += acc(await arun(conf("self_consistency", {"n": 1}, seed)))
        debate += acc(await arun(conf("debate", {}, seed)))
    assert debate / 3 > single / 3 + 0.05
    a = await arun(conf("debate", {"decision": "pairwise"}, 5))
    b = await arun(conf("debate", {"decision": "pairwise"}, 5))
    assert [x.answer for x in a.attempts] == [x.answer for x in b.attempts]

    def shape(nodes: list[Any]) -> list[tuple[Any, ...]]:
        return sorted((n.meta.get("debater", -1), n.meta.get("round", -1), n.text,
                       bool(n.meta.get("chosen"))) for n in nodes)

    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        for task_id in ("arith-10", "arith-25"):
            na, _ = await st.load_tree(a.run_id, task_id)
            nb, _ = await st.load_tree(b.run_id, task_id)
            assert shape(na) == shape(nb)


async def test_debate_through_the_openai_client_on_loopback(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "limit": 5, "strategy": "debate",
            "strategy_params": {"decision": "judge"},
            "model": f"openai:sim@{srv.base_url}", "store": str(tmp_path / "s.db"),
            "cache": False, "seed": 4}))
    assert res.summary["failed"] == 0 and all(a.answer for a in res.attempts)
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        for a in res.attempts:
            nodes, _ = await st.load_tree(res.run_id, a.task_id)
            calls = await st.load_calls(res.run_id, a.task_id)
            debaters = [n for n in nodes if n.role == "debater"]
            assert sum(n.meta["round"] == 0 for n in debaters) == 3
            assert all(n.call_id in {c.id for c in calls.values()} for n in debaters)
            assert a.final_node_id in {n.id for n in debaters if n.meta.get("chosen")}


def test_debate_from_the_command_line(tmp_path: Path, clean_env: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DELIBERATE_"))}
    env["DELIBERATE_HOME"] = str(clean_env)
    r = subprocess.run(
        [sys.executable, "-m", "deliberate", "run", "--strategy", "debate", "--limit", "4",
         "-p", "rounds=1", "-p", "decision=pairwise", "-p", "tournament=round_robin",
         "--store", str(tmp_path / "cli.db")],
        capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "debate" in r.stdout
