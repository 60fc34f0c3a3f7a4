"""multi_critic: the points merge rule, the loop it drives, verifier-confirmed points; sim, server, CLI."""

from __future__ import annotations

import json
import random
import re
import statistics
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.config import RoleConfig
from deliberate.engine.runner import arun
from deliberate.errors import ConfigError
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.math_errors import wrong_math_solution
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.parsing import ParseError
from deliberate.roles.prompts import Prompts
from deliberate.strategies.multi_critic import (
    DEFAULT_PERSONAS,
    MergedPoint,
    Point,
    PointsCritic,
    issue_similarity,
    merge_points,
    parse_points,
)
from deliberate.tasks import load_suite
from tests.test_cli import cli
from tests.test_refine import first_sample_accuracy

TASK = Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")
SUITE = Suite.of("tiny", [TASK])


# ---------------------------------------------------------------- the merge rule


def test_issue_similarity_is_jaccard_over_content_words() -> None:
    # {final, answer, does, not, follow} vs the same plus {steps}: 5 / 6
    assert issue_similarity("The final answer does not follow",
                            "final answer does not follow from the steps") == pytest.approx(5 / 6)
    # {step, 2, computes, 12, 4, 46, 48} vs {computes, 12, 4, 46, should, 48}: 5 / 8
    assert issue_similarity("Step 2 computes 12 * 4 = 46, but 12 * 4 = 48.",
                            "computes 12 * 4 = 46 but it should be 48") == pytest.approx(5 / 8)
    assert issue_similarity("the", "of the") == 0.0  # nothing but function words


def test_merge_keeps_points_raised_by_more_than_one_critic() -> None:
    a = [Point(step=3, issue="Step 3 misreads the price."),
         Point(step=2, issue="Step 2 adds instead of multiplying."),
         Point(step=2, issue="Step 2 again: wrong operation."),  # same critic: counts once
         Point(step=None, issue="The final answer does not follow")]
    b = [Point(step=2, issue="The product in step 2 is wrong."),
         Point(step=None, issue="final answer does not follow from the steps"),
         Point(step=1, issue="Step 1 is unclear.")]
    c = [Point(step=None, issue="Step 3 misreads the price of apples."),
         Point(step=4, issue="Step 4 rounds too early.")]
    merged = merge_points([("A", a), ("B", b), ("C", c)])
    assert [m.to_dict() for m in merged] == [
        {"step": 2, "issue": "Step 2 adds instead of multiplying.", "raised_by": ["A", "B"],
         "confirmed_by": None},
        # C's step-less point matches A's step-3 point by text: {step, 3, misreads, price}
        # vs the same plus {apples}: 4 / 5 >= 0.5
        {"step": 3, "issue": "Step 3 misreads the price.", "raised_by": ["A", "C"],
         "confirmed_by": None},
        {"step": None, "issue": "The final answer does not follow", "raised_by": ["A", "B"],
         "confirmed_by": None},
    ]
    assert merge_points([("A", a), ("B", b), ("C", c)], min_agree=3) == []
    # a stricter text rule drops the step-less matches, not the step matches
    strict = merge_points([("A", a), ("B", b), ("C", c)], similarity=0.9)
    assert [(m.step, m.raised_by) for m in strict] == [(2, ["A", "B"])]
    # one critic alone keeps everything only when one voice is enough
    assert [m.step for m in merge_points([("A", a)], min_agree=1)] == [2, 3, None]
    assert merge_points([("A", a)]) == []


def test_points_different_steps_never_match_even_with_equal_words() -> None:
    same_words = [("A", [Point(step=1, issue="wrong sum")]), ("B", [Point(step=2, issue="wrong sum")])]
    assert merge_points(same_words) == []
    assert merge_points(same_words, min_agree=1) == [
        MergedPoint(1, "wrong sum", ["A"]), MergedPoint(2, "wrong sum", ["B"])]


def test_parse_points_accepts_loose_shapes_and_rejects_bad_ones() -> None:
    v = parse_points('```json\n{"verdict": "Incorrect", "score": "3/10", "points": '
                     '[{"step": "step 2", "issue": "bad"}, "no step here", '
                     '{"step": 0, "issue": "none"}],}\n```', (1, 10))
    assert (v.verdict, v.score) == ("incorrect", 3)
    assert [(p.step, p.issue) for p in v.points] == [(2, "bad"), (None, "no step here"),
                                                      (None, "none")]
    assert parse_points('{"verdict": "correct", "score": 9, "points": null}', (1, 10)).points == []
    with pytest.raises(ParseError):
        parse_points('{"verdict": "maybe", "score": 5, "points": []}', (1, 10))
    with pytest.raises(ParseError):
        parse_points('{"verdict": "correct", "score": 11, "points": []}', (1, 10))


# ---------------------------------------------------------------- the strategy, scripted


def role(r: ChatRequest) -> str:
    return r.tags.get("role", "")


def answer_in(r: ChatRequest) -> str:
    first_user = next(m.content for m in r.messages if m.role == "user")
    m = re.search(r"<candidate>.*?Answer: (\S+).*?</candidate>", first_user, re.S)
    assert m is not None
    return m.group(1)


def persona_of(r: ChatRequest) -> int:
    return next((i for i, p in enumerate(DEFAULT_PERSONAS) if p in r.messages[0].content), 0)


def points_reply(verdict: str, score: int, points: list[tuple[int | None, str]]) -> str:
    return json.dumps({"verdict": verdict, "score": score,
                       "points": [{"step": s, "issue": t} for s, t in points]})


def script_for(critiques: dict[str, list[str]], refine_to: str = "4") -> FunctionModel:
    """Critic i answers ``critiques[answer][i]``; the refiner always writes ``refine_to``."""

    def script(r: ChatRequest, i: int) -> str:
        if role(r) == "generator":
            return "Two and two.\n2 + 2 = 5\nAnswer: 5"
        if role(r) == "critic_points":
            return critiques[answer_in(r)][persona_of(r)]
        if role(r) == "refiner":
            return f"2 + 2 = {refine_to}\nAnswer: {refine_to}"
        raise AssertionError(r.tags)

    return FunctionModel(script)


def cfg(tmp_path: Path, **params: Any) -> RunConfig:
    return RunConfig.model_validate({
        "model": "scripted", "store": str(tmp_path / "s.db"), "cache": False, "suite": "tiny",
        "strategy": "multi_critic", "strategy_params": params,
    })


async def load(tmp_path: Path, run_id: str) -> tuple[list[Any], list[Any]]:
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        return await st.load_tree(run_id, "t1")


ACCEPT = points_reply("correct", 9, [])


async def test_agreed_points_drive_the_refiner_and_lone_points_do_not(tmp_path: Path) -> None:
    model = script_for({
        "5": [points_reply("incorrect", 2, [(2, "2 + 2 is not 5")]),
              points_reply("incorrect", 3, [(2, "the sum is wrong"), (1, "vague opening")]),
              ACCEPT],
        "4": [ACCEPT, ACCEPT, ACCEPT],
    })
    res = await arun(cfg(tmp_path), models={"scripted": model}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer == "4" and a.correct and "stopped: accepted" in a.stats["note"]
    refiner = [r for r in model.requests if role(r) == "refiner"]
    assert len(refiner) == 1
    shown = re.search(r"<critique>(.*)</critique>", refiner[0].messages[-1].content, re.S)
    assert shown is not None
    assert shown.group(1).strip() == (
        "Verdict: incorrect (1 problem(s) confirmed, 3 reviewers)\n"
        "- Step 2: 2 + 2 is not 5 (raised by 2 reviewers)")
    nodes, judgements = await load(tmp_path, res.run_id)
    first = next(n for n in nodes if n.operator == "generate")
    critics = [j for j in judgements if j.role == "critic" and j.node_id == first.id]
    assert [j.meta["critic"] for j in critics] == ["critic", "critic_2", "critic_3"]
    assert critics[1].meta["points"] == [{"step": 2, "issue": "the sum is wrong"},
                                         {"step": 1, "issue": "vague opening"}]
    merged = [j for j in judgements if j.role == "merged_critique"]
    assert [(j.node_id == first.id, j.verdict) for j in merged] == [(True, "incorrect"),
                                                                    (False, "correct")]
    assert merged[0].meta["points"] == [{"step": 2, "issue": "2 + 2 is not 5",
                                         "raised_by": ["critic", "critic_2"],
                                         "confirmed_by": None}]
    # the version's score is the mean of its critics' normalised scores
    assert merged[0].score == pytest.approx(((2 - 1) / 9 + (3 - 1) / 9 + (9 - 1) / 9) / 3)


async def test_no_agreement_accepts_unless_a_verifier_confirms(tmp_path: Path) -> None:
    split = {"5": [points_reply("incorrect", 2, [(2, "2 + 2 is not 5")]),
                   points_reply("incorrect", 3, [(1, "vague opening")]), ACCEPT],
             "4": [ACCEPT, ACCEPT, ACCEPT]}
    model = script_for(split)
    res = await arun(cfg(tmp_path), models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].answer == "5"  # nothing agreed on: accepted as it is
    assert not [r for r in model.requests if role(r) == "refiner"]
    model2 = script_for(split)
    res2 = await arun(cfg(tmp_path, use_verifier=True), models={"scripted": model2}, suite=SUITE)
    assert res2.attempts[0].answer == "4"
    refiner = [r for r in model2.requests if role(r) == "refiner"]
    assert re.search(r"- answer 5 differs from the reference \(confirmed by verifier:\w+\)",
                     refiner[0].messages[-1].content)
    _, judgements = await load(tmp_path, res2.run_id)
    merged = next(j for j in judgements if j.role == "merged_critique")
    assert merged.meta["points"][0]["confirmed_by"].startswith("verifier:")
    assert merged.meta["points"][0]["raised_by"] == []


async def test_each_critic_uses_its_own_role_settings(tmp_path: Path) -> None:
    seen: list[str] = []

    def other(r: ChatRequest, i: int) -> str:
        seen.append(f"{r.temperature}")
        return points_reply("correct", 8, [])

    config = cfg(tmp_path, critics=["critic", "reviewer_b"], personas=[], min_agree=2).merged(
        {"roles": {"reviewer_b": {"model": "other", "temperature": 0.3}}})
    main = script_for({"5": [ACCEPT, ACCEPT, ACCEPT]})
    res = await arun(config, models={"scripted": main, "other": FunctionModel(other)},
                     suite=SUITE)
    assert res.attempts[0].answer == "5"
    assert seen == ["0.3"]  # reviewer_b went to its own model with its own temperature
    crit = [r for r in main.requests if role(r) == "critic_points"]
    assert len(crit) == 1 and crit[0].temperature == 0.0  # the "critic" role's settings
    assert "You check" not in crit[0].messages[0].content  # personas=[]: none


async def test_budget_during_the_critiques_keeps_the_judged_version(tmp_path: Path) -> None:
    model = script_for({
        "5": [points_reply("incorrect", 2, [(2, "not 5")])] * 3,
        "4": [ACCEPT, ACCEPT, ACCEPT],
    })
    # generate 1, critiques 3, refine 1, then only 1 of the next 3 critiques fits
    config = cfg(tmp_path).merged({"task_budget.max_calls": 6})
    res = await arun(config, models={"scripted": model}, suite=SUITE)
    a = res.attempts[0]
    assert a.status == "budget_limited" and "stopped: budget" in a.stats["note"]
    assert a.answer == "5"  # the refinement was never fully judged, so it cannot win
    _, judgements = await load(tmp_path, res.run_id)
    assert len([j for j in judgements if j.role == "merged_critique"]) == 1


def test_config_rules() -> None:
    from deliberate.strategies.base import build_strategy

    with pytest.raises(ConfigError, match="min_agree 3"):
        build_strategy("multi_critic", {"critics": "critic,critic_2", "min_agree": 3})
    with pytest.raises(ConfigError, match="distinct"):
        build_strategy("multi_critic", {"critics": ["critic", "critic"]})
    s = build_strategy("multi_critic", {"critics": "critic, other"})
    assert s.config.model_dump()["critics"] == ("critic", "other")


# ---------------------------------------------------------------- sim, server, CLI


async def test_sim_critics_agree_on_the_true_step_and_not_on_false_alarms() -> None:
    suite = load_suite("arithmetic")
    task = suite.tasks[5]
    assert task.solution is not None
    sim = SimModel(suite, SimParams(sensitivity=1.0, specificity=0.0))
    wrong, step = wrong_math_solution(task.solution, random.Random(4))
    critics = [PointsCritic(sim, RoleConfig(temperature=0.0), Prompts(), 1, persona=p)
               for p in DEFAULT_PERSONAS]
    on_wrong = [await c.critique(task, wrong) for c in critics]
    assert all(r.value is not None and r.value.verdict == "incorrect" for r in on_wrong)
    assert all(any(p.step == step for p in r.value.points) for r in on_wrong if r.value)
    merged = merge_points([(str(i), r.value.points) for i, r in enumerate(on_wrong) if r.value])
    assert merged[0].step == step and len(merged[0].raised_by) == 3
    # specificity 0: every critic rejects the right solution, each at a random step
    right = task.solution
    on_right = [await c.critique(task, right) for c in critics]
    assert all(r.value is not None and r.value.verdict == "incorrect" for r in on_right)
    assert all(len(r.value.points) == 1 for r in on_right if r.value)


async def test_multi_critic_on_sim_beats_one_sample_on_average(tmp_path: Path) -> None:
    ours, single = [], []
    for seed in range(2):
        path = tmp_path / f"mc-{seed}.db"
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "strategy": "multi_critic", "model": "sim",
            "store": str(path), "cache": False, "seed": seed}))
        assert res.summary["failed"] == 0
        ours.append(res.summary["accuracy"])
        single.append(await first_sample_accuracy(path, res.run_id,
                                                  [a.task_id for a in res.attempts]))
    assert statistics.mean(ours) > statistics.mean(single)


async def test_multi_critic_through_the_openai_client(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(skill=0.4), ServerConfig()) as srv:
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "limit": 4, "strategy": "multi_critic",
            "model": f"openai:sim@{srv.base_url}", "store": str(tmp_path / "s.db"),
            "cache": False, "seed": 1}))
    assert res.summary["failed"] == 0 and res.summary["graded"] == 4
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        for a in res.attempts:
            nodes, judgements = await st.load_tree(res.run_id, a.task_id)
            versions = [n for n in nodes if n.operator in ("generate", "refine")]
            merged = [j for j in judgements if j.role == "merged_critique"]
            assert len(merged) == len(versions)
            assert sum(j.role == "critic" for j in judgements) == 3 * len(versions)


def test_multi_critic_from_the_command_line(tmp_path: Path, clean_env: Path) -> None:
    r = cli("run", "--strategy", "multi_critic", "-p", "critics=[critic,critic_2]",
            "-p", "max_rounds=2", "--limit", "3", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "multi_critic" in r.stdout
