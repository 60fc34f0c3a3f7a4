"""route (easy/hard routing) and the step critic it uses: logic, parsing, sim, server, CLI."""

from __future__ import annotations

import gzip
import json
import random
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.config import RoleConfig
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.math_errors import wrong_math_solution
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.parsing import ParseError
from deliberate.roles.prompts import Prompts
from deliberate.roles.step_critic import (
    NO_ERROR,
    StepCritic,
    from_processbench_label,
    parse_step_verdict,
    split_steps,
    step_score,
    to_processbench_label,
)
from deliberate.tasks import load_suite
from tests.conftest import shared_data
from tests.test_cli import cli
from tests.test_refine import first_sample_accuracy

TASK = Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")
SUITE = Suite.of("tiny", [TASK])


# ---------------------------------------------------------------- steps and indexing


def test_split_steps_one_per_line_keeping_the_answer() -> None:
    text = "Step 1: Two apples.\n\n  Step 2) 2 + 2 = 4\nThen we are done.\nAnswer: 4\n"
    assert split_steps(text) == ["Two apples.", "2 + 2 = 4", "Then we are done.", "Answer: 4"]
    assert split_steps("\n \n") == []


def test_processbench_labels_convert_both_ways() -> None:
    assert [to_processbench_label(s) for s in (-1, 1, 2, 7)] == [-1, 0, 1, 6]
    assert [from_processbench_label(x) for x in (-1, 0, 1, 6)] == [-1, 1, 2, 7]
    with pytest.raises(ValueError, match="numbered from 1"):
        to_processbench_label(0)
    with pytest.raises(ValueError, match="0-based"):
        from_processbench_label(-2)


def test_step_score_is_the_share_of_steps_before_the_error() -> None:
    assert step_score(NO_ERROR, 4) == 1.0
    assert [step_score(k, 4) for k in (1, 2, 4)] == [0.0, 0.25, 0.75]


def test_parse_step_verdict_reads_loose_replies_and_checks_the_range() -> None:
    assert parse_step_verdict('Sure.\n```json\n{"first_wrong_step": "step 3", "reason": "x",}\n```',
                              5).first_wrong_step == 3
    assert parse_step_verdict('{"first_wrong_step": null, "reason": "fine"}', 5).first_wrong_step == -1
    assert parse_step_verdict('{"first_wrong_step": 2.0}', 5).first_wrong_step == 2
    for bad in ('{"first_wrong_step": 6, "reason": ""}', '{"first_wrong_step": 0}',
                '{"first_wrong_step": "two"}', '{"first_wrong_step": true}', "no json"):
        with pytest.raises(ParseError):
            parse_step_verdict(bad, 5)


def critic_with(script: Any) -> tuple[StepCritic, FunctionModel]:
    model = FunctionModel(script)
    return StepCritic(model, RoleConfig(temperature=0.0), Prompts(), 1), model


async def test_step_critic_numbers_steps_and_repairs_once() -> None:
    replies = iter(['{"first_wrong_step": 9, "reason": "too far"}',
                    '{"first_wrong_step": 2, "reason": "2 + 2 is not 5"}'])
    critic, model = critic_with(lambda r, i: next(replies))
    review = await critic.review(TASK, "Two and two.\n2 + 2 = 5\nAnswer: 5")
    assert review.first_wrong_step == 2 and review.repaired and review.score == pytest.approx(1 / 3)
    first, repair = model.requests
    assert re.findall(r'<step n="(\d)">\n(.*?)\n</step>', first.messages[-1].content) == [
        ("1", "Two and two."), ("2", "2 + 2 = 5"), ("3", "Answer: 5")]
    assert repair.messages[-2].content == '{"first_wrong_step": 9, "reason": "too far"}'
    assert "first_wrong_step 9 is not -1 or a step from 1 to 3" in repair.messages[-1].content
    assert repair.tags["repair"] == "1"


async def test_step_critic_records_a_failure_after_one_repair() -> None:
    critic, model = critic_with(lambda r, i: "Step two, I think.")
    review = await critic.review(TASK, ["a", "b"])
    assert review.verdict is None and review.first_wrong_step is None and review.score is None
    assert review.error and len(model.requests) == 2


async def test_step_critic_on_processbench_keeps_the_indexing_straight() -> None:
    path = shared_data("math/processbench-gsm8k.json.gz")
    items = json.loads(gzip.decompress(path.read_bytes()))[:60]
    labels = {item["problem"]: item["label"] for item in items}

    def oracle(r: ChatRequest, i: int) -> str:
        text = r.messages[-1].content
        problem = re.search(r"<task>\n(.*?)\n</task>", text, re.S)
        assert problem is not None
        step = from_processbench_label(labels[problem.group(1)])
        return json.dumps({"first_wrong_step": step, "reason": "oracle"})

    critic, _ = critic_with(oracle)
    for item in items:
        task = Task(id=item["id"], prompt=item["problem"], kind="math")
        review = await critic.review(task, item["steps"])
        assert len(review.steps) == len(item["steps"])
        assert review.first_wrong_step is not None
        assert to_processbench_label(review.first_wrong_step) == item["label"]


async def test_sim_step_critic_has_the_configured_error_rates() -> None:
    suite = load_suite("arithmetic")
    sim = SimModel(suite, SimParams(sensitivity=0.7, specificity=0.9, seed=3))
    critic = StepCritic(sim, RoleConfig(temperature=1.0), Prompts(), 5)
    exact = near_or_missed = clean = flagged = 0
    for i, task in enumerate(suite):
        assert task.solution is not None
        wrong, step = wrong_math_solution(task.solution, random.Random(i))
        for sample in range(20):
            r_wrong = await critic.review(task, wrong, sample=sample)
            r_right = await critic.review(task, task.solution, sample=sample)
            assert r_wrong.first_wrong_step is not None and r_right.first_wrong_step is not None
            if r_wrong.first_wrong_step == step:
                exact += 1
                assert r_wrong.verdict is not None
                assert r_wrong.verdict.reason.startswith(f"Step {step} ")
            else:
                near_or_missed += 1
                assert r_wrong.first_wrong_step in (-1, step - 1, step + 1)
            clean += r_right.first_wrong_step == -1
            flagged += r_right.first_wrong_step != -1
    n = 30 * 20
    assert abs(exact / n - 0.7) < 4 * (0.21 / n) ** 0.5
    assert abs(clean / n - 0.9) < 4 * (0.09 / n) ** 0.5


# ---------------------------------------------------------------- routing, scripted


def role(r: ChatRequest) -> str:
    return r.tags.get("role", "")


def routed(samples: list[str], reviews: dict[str, int], refine_to: str = "4") -> FunctionModel:
    """Generator sample i answers ``samples[i]``; the step critic flags ``reviews[answer]``."""
    return FunctionModel(route_script(samples, reviews, refine_to))


def route_script(samples: list[str], reviews: dict[str, int],
                 refine_to: str = "4") -> Callable[[ChatRequest, int], str]:

    def script(r: ChatRequest, i: int) -> str:
        if role(r) == "generator":
            a = samples[i]
            return f"Two and two.\n2 + 2 = {a}\nAnswer: {a}" if a != "?" else "no idea"
        if role(r) == "step_critic":
            ans = re.search(r"Answer: (\S+)\n</step>", r.messages[-1].content)
            assert ans is not None
            return json.dumps({"first_wrong_step": reviews[ans.group(1)],
                               "reason": f"about {ans.group(1)}"})
        if role(r) == "refiner":
            return f"Two and two.\n2 + 2 = {refine_to}\nAnswer: {refine_to}"
        raise AssertionError(r.tags)

    return script


def cfg(tmp_path: Path, **params: Any) -> RunConfig:
    return RunConfig.model_validate({
        "model": "scripted", "store": str(tmp_path / "s.db"), "cache": False, "suite": "tiny",
        "strategy": "route", "strategy_params": params,
    })


async def load(tmp_path: Path, run_id: str) -> tuple[list[Any], list[Any]]:
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        return await st.load_tree(run_id, "t1")


async def test_agreement_at_the_threshold_is_easy_and_votes(tmp_path: Path) -> None:
    model = routed(["4", "5", "4", "4", "4"], {})
    res = await arun(cfg(tmp_path), models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].answer == "4" and "easy: 4 of 5" in res.attempts[0].stats["note"]
    assert {role(r) for r in model.requests} == {"generator"}  # no review, no refinement
    nodes, judgements = await load(tmp_path, res.run_id)
    root = next(n for n in nodes if n.operator == "root")
    assert root.meta["route"] == {"decision": "easy", "agreement": 0.8, "samples": 5,
                                  "votes": {"4": 4.0, "5": 1.0}}
    router = [j for j in judgements if j.role == "router"]
    assert [(j.node_id, j.verdict, j.score) for j in router] == [(root.id, "easy", 0.8)]
    chosen = [n for n in nodes if n.meta.get("chosen")]
    assert len(chosen) == 1 and chosen[0].sample_index == 0 and chosen[0].meta["route"] == "easy"


async def test_below_the_threshold_is_hard_and_refines_the_flagged_step(tmp_path: Path) -> None:
    samples = ["5", "4", "5", "4", "5"]
    model = routed(samples, {"5": 2, "4": -1})
    res = await arun(cfg(tmp_path), models={"scripted": model}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer == "4" and a.correct
    assert a.stats["note"].startswith("hard: 3 of 5 samples agree; stopped: accepted")
    refiner = [r for r in model.requests if role(r) == "refiner"]
    assert len(refiner) == 1
    shown = refiner[0].messages[-1].content
    assert "Step 2 is the first wrong step: about 5" in shown
    assert "Steps 1 to 1 are right: keep them. Redo step 2 and every step after it." in shown
    nodes, judgements = await load(tmp_path, res.run_id)
    start = next(n for n in nodes if n.operator == "generate" and n.sample_index == 0)
    fixed = next(n for n in nodes if n.operator == "refine")
    review = next(j for j in judgements if j.role == "step_critic" and j.node_id == start.id)
    assert fixed.parent_id == start.id and fixed.meta == {"round": 1, "chosen": True,
                                                          "route": "hard",
                                                          "feedback_ids": [review.id]}
    reviews = [(j.node_id, j.first_wrong_step, j.verdict, j.score)
               for j in judgements if j.role == "step_critic"]
    assert reviews == [(start.id, 2, "incorrect", pytest.approx(1 / 3)),
                       (fixed.id, -1, "correct", 1.0)]
    root = next(n for n in nodes if n.operator == "root")
    assert root.meta["route"]["decision"] == "hard"
    # the same samples are easy for a lower bar
    res2 = await arun(cfg(tmp_path, threshold=0.6), models={"scripted": routed(samples, {})},
                      suite=SUITE)
    assert res2.attempts[0].answer == "5"


async def test_unparseable_samples_count_against_agreement(tmp_path: Path) -> None:
    model = routed(["4", "4", "?", "4", "?"], {"4": -1})
    res = await arun(cfg(tmp_path), models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].stats["note"].startswith("hard: 3 of 5")
    assert res.attempts[0].answer == "4"  # reviewed clean: accepted without refinement
    assert not [r for r in model.requests if role(r) == "refiner"]


async def test_hard_rounds_stop_at_max_rounds_and_keep_the_best_reviewed(tmp_path: Path) -> None:
    answers = iter(["6", "7", "8"])

    def script(r: ChatRequest, i: int) -> str:
        if role(r) == "refiner":
            a = next(answers)
            return f"Two and two.\n2 + 2 = {a}\nAnswer: {a}"
        return base(r, i)

    base = route_script(["5", "3", "9", "1", "2"], {"5": 2, "6": 1, "7": 3, "8": 2})
    model = FunctionModel(script)
    res = await arun(cfg(tmp_path, max_rounds=3, k=5), models={"scripted": model}, suite=SUITE)
    # every sample differs: hard; step scores 5: 1/3, 6: 0, 7: 2/3, 8: 1/3
    assert res.attempts[0].answer == "7"
    assert "stopped: max_rounds" in res.attempts[0].stats["note"]
    assert len([r for r in model.requests if role(r) == "refiner"]) == 3


async def test_selection_by_step_critic_reviews_one_per_answer(tmp_path: Path) -> None:
    # 5 has the votes but an early error; 4 is reviewed clean
    model = routed(["5", "5", "4", "5", "7"], {"5": 1, "4": -1, "7": 3})
    res = await arun(cfg(tmp_path, select="step_critic"), models={"scripted": model},
                     suite=SUITE)
    assert res.attempts[0].answer == "4"
    reviews = [r for r in model.requests if role(r) == "step_critic"]
    assert len(reviews) == 3  # one per distinct answer, the winner's reused for round 0
    assert not [r for r in model.requests if role(r) == "refiner"]
    # by votes alone the 5 is refined (here into a 4)
    model2 = routed(["5", "5", "4", "5", "7"], {"5": 1, "4": -1, "7": 3})
    res2 = await arun(cfg(tmp_path, select="vote"), models={"scripted": model2}, suite=SUITE)
    assert res2.attempts[0].answer == "4"
    assert len([r for r in model2.requests if role(r) == "refiner"]) == 1


async def test_budget_on_the_hard_path_returns_the_best_so_far(tmp_path: Path) -> None:
    model = routed(["5", "4", "5", "4", "5"], {"5": 2, "4": 2}, refine_to="6")
    config = cfg(tmp_path, max_rounds=5).merged({"task_budget.max_calls": 3})
    res = await arun(config, models={"scripted": model}, suite=SUITE)
    a = res.attempts[0]
    # generate, review, refine; the next review is refused: the refinement stays unjudged
    assert a.calls == 3 and a.status == "budget_limited"
    assert a.answer == "5" and "stopped: budget" in a.stats["note"]


# ---------------------------------------------------------------- sim, server, CLI


async def test_route_on_sim_beats_one_sample(tmp_path: Path) -> None:
    ours, single = [], []
    decisions: set[str] = set()
    for seed in range(2):
        path = tmp_path / f"route-{seed}.db"
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "strategy": "route", "model": "sim", "store": str(path),
            "cache": False, "seed": seed}))
        ours.append(res.summary["accuracy"])
        single.append(await first_sample_accuracy(path, res.run_id,
                                                  [a.task_id for a in res.attempts]))
        decisions |= {a.stats["note"].split(":")[0] for a in res.attempts}
    assert decisions == {"easy", "hard"}
    assert statistics.mean(ours) > statistics.mean(single)


async def test_route_through_the_openai_client(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(skill=0.3), ServerConfig()) as srv:
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "limit": 6, "strategy": "route",
            "model": f"openai:sim@{srv.base_url}", "store": str(tmp_path / "s.db"),
            "cache": False, "seed": 2}))
    assert res.summary["failed"] == 0 and res.summary["graded"] == 6
    st = Store.open(str(tmp_path / "s.db"))
    hard = 0
    async with st:
        for a in res.attempts:
            nodes, judgements = await st.load_tree(res.run_id, a.task_id)
            root = next(n for n in nodes if n.operator == "root")
            assert sum(j.role == "router" for j in judgements) == 1
            if root.meta["route"]["decision"] == "hard":
                hard += 1
                assert any(j.role == "step_critic" and j.first_wrong_step is not None
                           for j in judgements)
    assert hard > 0


def test_route_from_the_command_line(tmp_path: Path, clean_env: Path) -> None:
    r = cli("run", "--strategy", "route", "-p", "k=4", "-p", "threshold=0.75",
            "--limit", "3", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "route" in r.stdout


def test_sim_step_critic_judges_a_correct_partial_solution_right_so_far() -> None:
    from deliberate.models.sim.core import SimModel
    from deliberate.models.sim.handlers.step_critic import true_first_wrong
    from deliberate.tasks import load_suite

    suite = load_suite("arithmetic")
    task = suite.get("arith-02")
    behaviour = SimModel(suite)._behaviours[task.id]
    first = "After giving some away: 35 - 12 = 23."
    assert true_first_wrong(task, behaviour, [first])[0] == -1
    assert true_first_wrong(task, behaviour, ["After giving some away: 35 - 12 = 22."])[0] == 1
    assert true_first_wrong(task, behaviour, [first, "Answer: 23"])[0] == 2
