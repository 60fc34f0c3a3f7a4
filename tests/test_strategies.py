"""Strategy logic with scripted models: selection, voting, ties, parse failures, budgets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest

SUITE = Suite.of("tiny", [
    Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4"),
    Task(id="t2", prompt="What is 3 * 3?", kind="math", answer="9"),
])


def is_judge(r: ChatRequest) -> bool:
    return "<candidate>" in r.messages[1].content


def cfg(tmp_path: Path, **kw: object) -> RunConfig:
    base = {"model": "scripted", "store": str(tmp_path / "s.db"), "cache": False, "suite": "tiny"}
    base.update(kw)
    return RunConfig.model_validate(base)


async def test_best_of_n_picks_highest_score_ties_to_earliest(tmp_path: Path) -> None:
    answers = {0: "3", 1: "4", 2: "4", 3: "5"}
    scores = {"3": 2, "4": 9, "5": 9}  # 4 (samples 1, 2) and 5 (sample 3) tie at 9

    def script(r: ChatRequest, i: int) -> str:
        if is_judge(r):
            ans = re.search(r"Answer: (\d+)", r.messages[1].content)
            assert ans is not None
            return json.dumps({"critique": "c", "verdict": "correct", "score": scores[ans.group(1)]})
        return f"thinking\nAnswer: {answers[i]}"

    res = await arun(cfg(tmp_path, strategy="best_of_n", strategy_params={"n": 4}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert [a.answer for a in res.attempts] == ["4", "4"]
    assert [a.correct for a in res.attempts] == [True, False]
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t1")
    chosen = [n for n in nodes if n.meta.get("chosen")]
    assert len(chosen) == 1 and chosen[0].sample_index == 1
    assert sum(1 for j in judgements if j.role == "judge") == 4
    graded = {j.node_id: j.verdict for j in judgements if j.role == "grader"}
    assert len(graded) == 4  # every candidate graded once, for the record
    assert graded[chosen[0].id] == "correct"
    assert res.attempts[0].stats["candidates_correct"] == 2


async def test_unparseable_judge_is_repaired_once_then_recorded(tmp_path: Path) -> None:
    calls: list[str] = []

    def script(r: ChatRequest, i: int) -> str:
        if is_judge(r):
            repair = any(m.role == "assistant" for m in r.messages)
            calls.append("repair" if repair else "judge")
            if "Answer: 1" in r.messages[1].content:
                return "looks fine to me, 8/10" if not repair else '{"verdict": "correct", "score": 7}'
            return "I cannot decide." if not repair else "still no JSON"
        return f"Answer: {i}"

    res = await arun(cfg(tmp_path, strategy="best_of_n", strategy_params={"n": 2}, limit=1),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert calls.count("judge") == 2 and calls.count("repair") == 2
    assert res.attempts[0].answer == "1"  # the only scored candidate wins
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t1")
    by_answer = {n.answer: n.id for n in nodes}
    verdicts = {j.node_id: j for j in judgements if j.role == "judge"}
    assert verdicts[by_answer["0"]].verdict == "parse_failure"
    assert verdicts[by_answer["0"]].score is None  # never a silent default
    assert verdicts[by_answer["1"]].score == 7 and verdicts[by_answer["1"]].meta["repaired"]


async def test_self_consistency_votes_and_breaks_ties_by_first_appearance(tmp_path: Path) -> None:
    seq = {"t1": ["5", "4", "5", "4", "x"], "t2": ["9", "8", "8", "9", "9"]}

    def script(r: ChatRequest, i: int) -> str:
        task = "t1" if "2 + 2" in r.messages[1].content else "t2"
        a = seq[task][i]
        return "no idea" if a == "x" else f"Answer: {a}"

    res = await arun(cfg(tmp_path, strategy="self_consistency", strategy_params={"n": 5}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    # t1: 5 and 4 tie 2-2 (the unparseable sample does not vote) → 5 appeared first
    assert [a.answer for a in res.attempts] == ["5", "9"]
    assert res.summary["accuracy"] == 0.5


async def test_weighted_vote_uses_judge_scores(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_judge(r):
            good = "Answer: 4" in r.messages[1].content
            return json.dumps({"critique": "", "verdict": "correct", "score": 10 if good else 1})
        return "Answer: 4" if i == 0 else "Answer: 7"

    res = await arun(cfg(tmp_path, strategy="self_consistency",
                         strategy_params={"n": 3, "weighted": True}, limit=1),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert res.attempts[0].answer == "4"  # 1 vote × 1.0 beats 2 votes × 0.0


async def test_task_budget_marks_tasks_budget_limited(tmp_path: Path) -> None:
    res = await arun(
        cfg(tmp_path, strategy="best_of_n", strategy_params={"n": 8},
            task_budget={"max_tokens": 700}, judge={"max_tokens": 100, "temperature": 0},
            generator={"max_tokens": 100}),
        models={"scripted": FunctionModel(lambda r, i: json.dumps(
            {"critique": "", "verdict": "correct", "score": 5}) if is_judge(r) else "Answer: 4")},
        suite=SUITE,
    )
    for a in res.attempts:
        assert a.status == "budget_limited" and a.budget_limited
        assert a.prompt_tokens + a.completion_tokens <= 700
        assert a.answer == "4"  # best so far is still returned


async def test_unknown_strategy_and_bad_params_are_usage_errors(tmp_path: Path) -> None:
    from deliberate.errors import ConfigError, UnknownNameError

    with pytest.raises(UnknownNameError, match=r"known: .*best_of_n.*self_consistency"):
        await arun(cfg(tmp_path, strategy="nope"), models={"scripted": FunctionModel(
            lambda r, i: "")}, suite=SUITE)
    with pytest.raises(ConfigError, match="strategy best_of_n: n"):
        await arun(cfg(tmp_path, strategy="best_of_n", strategy_params={"n": 0}),
                   models={"scripted": FunctionModel(lambda r, i: "")}, suite=SUITE)


async def test_prompt_templates_can_be_replaced_per_run(tmp_path: Path) -> None:
    templates = tmp_path / "prompts"
    templates.mkdir()
    (templates / "generator_system.j2").write_text("You are terse. Task kind: {{ task.kind }}.")
    seen: list[str] = []

    def script(r: ChatRequest, i: int) -> str:
        seen.append(r.messages[0].content)
        return "Answer: 4"

    await arun(cfg(tmp_path, strategy="self_consistency", strategy_params={"n": 1}, limit=1,
                   prompts_dir=str(templates)),
               models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert seen == ["You are terse. Task kind: math."]
    from deliberate.errors import ConfigError

    with pytest.raises(ConfigError, match="does not exist"):
        await arun(cfg(tmp_path, prompts_dir=str(tmp_path / "nowhere")),
                   models={"scripted": FunctionModel(script)}, suite=SUITE)


async def test_candidate_grading_can_be_turned_off(tmp_path: Path) -> None:
    model = FunctionModel(lambda r, i: f"Answer: {4 if i == 2 else 5}")
    res = await arun(cfg(tmp_path, strategy="self_consistency", strategy_params={"n": 3},
                         limit=1, grade_candidates=False),
                     models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].correct is False and "candidates" not in res.attempts[0].stats
    assert res.summary["sample_accuracy"] is None
    res = await arun(cfg(tmp_path, strategy="self_consistency", strategy_params={"n": 3},
                         limit=1), models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].stats["candidates_correct"] == 1
    assert res.summary["oracle_accuracy"] == 1.0
