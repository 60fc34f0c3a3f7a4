"""The checklist judge (TICK): questions, answers matched by id, score, critique, best-of-N."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.config import RoleConfig
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.parsing import ParseError
from deliberate.roles.checklist import (
    ChecklistAnswerer,
    ChecklistJudge,
    ChecklistWriter,
    parse_answers,
    parse_questions,
)
from deliberate.roles.prompts import Prompts
from deliberate.tasks import load_suite

QUESTIONS = ["Is a final answer stated?", "Is the arithmetic right?", "Is the answer 4?"]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("reply", [
    json.dumps({"questions": QUESTIONS}),
    "Here is the checklist:\n```json\n" + json.dumps(QUESTIONS) + "\n```",
    json.dumps({"questions": [{"question": q} for q in QUESTIONS]}),
    json.dumps({"questions": [f"{k}. {q}" for k, q in enumerate(QUESTIONS, 1)] + [QUESTIONS[0]]}),
])
def test_questions_from_objects_lists_and_numbered_items(reply: str) -> None:
    assert parse_questions(reply) == QUESTIONS


@pytest.mark.parametrize("reply", ["1. Is it right?", '{"questions": []}', '{"items": ["a"]}',
                                   '{"questions": [1, 2]}'])
def test_unusable_checklists_are_parse_errors(reply: str) -> None:
    with pytest.raises(ParseError):
        parse_questions(reply)


def test_answers_are_matched_by_id_or_text_not_position() -> None:
    reply = {"answers": [
        {"id": 3, "question": "?", "answer": "No", "why": "it is 5"},
        {"question": "is a FINAL answer stated", "answer": "yes", "why": ""},
        {"id": "2", "answer": True, "why": "fine"},
    ]}
    answers = parse_answers(json.dumps(reply), QUESTIONS)
    assert [(a.question, a.yes) for a in answers] == list(zip(QUESTIONS, [True, True, False],
                                                              strict=True))
    assert answers[2].why == "it is 5"


@pytest.mark.parametrize(("answers", "error"), [
    ([{"id": 1, "answer": "yes"}, {"id": 2, "answer": "yes"}], "question(s) 3"),
    ([{"id": 1, "answer": "yes"}, {"id": 1, "answer": "no"}, {"id": 2, "answer": "yes"},
      {"id": 3, "answer": "yes"}], "both yes and no"),
    ([{"question": "something else", "answer": "yes"}], "matches no question"),
    ([{"id": 1, "answer": "maybe"}], "answer"),
])
def test_incomplete_or_contradictory_answers_are_parse_errors(
        answers: list[dict[str, Any]], error: str) -> None:
    with pytest.raises(ParseError, match=re.escape(error)):
        parse_answers(json.dumps({"answers": answers}), QUESTIONS)


# ---------------------------------------------------------------- the role


def checklist_script(r: ChatRequest, i: int) -> str:
    """Writer: QUESTIONS. Answerer: "yes" to question k when the candidate's answer
    is at least k + 2, so "Answer: 4" passes all three and "Answer: 3" two."""
    role = r.tags.get("role")
    if role == "checklist_writer":
        return json.dumps({"questions": QUESTIONS})
    if role == "checklist_judge":
        text = r.messages[-1].content
        m = re.search(r"<candidate>\n.*?Answer: (\d+)", text, re.DOTALL)
        value = int(m.group(1)) if m else 0
        ids = [int(x) for x in re.findall(r"(?m)^(\d+)\. ", text)]
        return json.dumps({"answers": [
            {"id": k, "question": "", "answer": "yes" if value >= k + 1 else "no",
             "why": f"value {value} < {k + 1}" if value < k + 1 else "ok"}
            for k in reversed(ids)]})
    return f"Working.\nAnswer: {i + 1}"


def make_judge(model: FunctionModel) -> ChecklistJudge:
    return ChecklistJudge(
        ChecklistWriter(model, RoleConfig(temperature=0.0), Prompts(), 0),
        ChecklistAnswerer(model, RoleConfig(temperature=0.0), Prompts(), 0))


TASK = Task(id="t", prompt="What is 2 + 2?", kind="math", answer="4")


async def test_score_is_the_share_of_yes_and_the_no_items_make_the_critique() -> None:
    model = FunctionModel(checklist_script)
    judge = make_judge(model)
    written = await judge.checklist(TASK)
    assert written.value == QUESTIONS
    full = await judge.score(TASK, QUESTIONS, "2 + 2 = 4\nAnswer: 4")
    assert full.score == 1.0 and full.critique() == "" and not full.failed
    part = await judge.score(TASK, QUESTIONS, "Answer: 2")
    assert part.score == pytest.approx(1 / 3)
    assert part.critique() == ("The answer fails these checks:\n"
                               "- Is the arithmetic right? value 2 < 3\n"
                               "- Is the answer 4? value 2 < 4")
    shown = model.requests[-1].messages[-1].content
    assert "<checklist>\n1. Is a final answer stated?\n2. Is the arithmetic right?" in shown


async def test_a_bad_answer_reply_is_repaired_once_then_recorded() -> None:
    attempts: list[int] = []

    def script(r: ChatRequest, i: int) -> str:
        attempts.append(len(r.messages))
        if len(r.messages) == 2:
            return json.dumps({"answers": [{"id": 1, "answer": "yes"}]})  # two missing
        return "sorry"

    judge = make_judge(FunctionModel(script))
    res = await judge.score(TASK, QUESTIONS, "Answer: 4")
    assert attempts == [2, 4]  # the repair shows the reply and the error
    assert res.answers is None and res.score is None and res.reply.repaired
    assert res.reply.error and res.critique() == ""


# ---------------------------------------------------------------- best-of-N with it

SUITE = Suite.of("tiny", [TASK])


def cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "scripted", "store": str(tmp_path / "s.db"),
                            "cache": False, "suite": "tiny", "strategy": "best_of_n"}
    base.update(kw)
    return RunConfig.model_validate(base)


async def test_best_of_n_checklist_scores_candidates_and_records_the_tree(
        tmp_path: Path) -> None:
    model = FunctionModel(checklist_script)
    res = await arun(cfg(tmp_path, strategy_params={"n": 5, "scorer": "checklist"}),
                     models={"scripted": model}, suite=SUITE)
    # answers 1..5: 4 and 5 both pass every check; ties go to the earlier sample
    assert res.attempts[0].answer == "4" and res.attempts[0].correct
    writes = [r for r in model.requests if r.tags.get("role") == "checklist_writer"]
    assert len(writes) == 1  # one checklist per task, shared by every candidate
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t")
    root = next(n for n in nodes if n.parent_id is None)
    on_root = [j for j in judgements if j.node_id == root.id and j.role == "checklist"]
    assert len(on_root) == 1 and on_root[0].meta["questions"] == QUESTIONS
    scores = {n.answer: j.score for n in nodes for j in judgements
              if j.node_id == n.id and j.role == "checklist" and n is not root}
    assert scores == {"1": 0.0, "2": pytest.approx(1 / 3), "3": pytest.approx(2 / 3),
                      "4": 1.0, "5": 1.0}
    verdicts = {j.verdict for j in judgements if j.role == "checklist" and j.node_id != root.id}
    assert verdicts == {"correct", "incorrect"}
    chosen = [n for n in nodes if n.meta.get("chosen")]
    assert [n.answer for n in chosen] == ["4"]


async def test_best_of_n_checklist_that_cannot_be_written_returns_the_first(
        tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if r.tags.get("role") == "checklist_writer":
            return "I would ask whether it is right."
        return checklist_script(r, i)

    res = await arun(cfg(tmp_path, strategy_params={"n": 3, "scorer": "checklist"}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer == "1" and "checklist could not be read" in a.stats["note"]
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        _, judgements = await st.load_tree(res.run_id, "t")
    failed = [j for j in judgements if j.role == "checklist"]
    assert len(failed) == 1 and failed[0].verdict == "parse_failure" and failed[0].score is None


async def test_checklist_roles_take_their_own_models(tmp_path: Path) -> None:
    gen = FunctionModel(checklist_script, model_id="gen")
    writer = FunctionModel(checklist_script, model_id="writer")
    answerer = FunctionModel(checklist_script, model_id="answerer")
    res = await arun(cfg(tmp_path, model="gen", strategy_params={"n": 2, "scorer": "checklist"},
                         roles={"checklist_writer": {"model": "writer"},
                                "checklist_judge": {"model": "answerer", "temperature": 0}}),
                     models={"gen": gen, "writer": writer, "answerer": answerer}, suite=SUITE)
    assert res.summary["failed"] == 0
    assert {r.tags["role"] for r in writer.requests} == {"checklist_writer"}
    assert {r.tags["role"] for r in answerer.requests} == {"checklist_judge"}
    assert all(r.temperature == 0 for r in answerer.requests)


# ---------------------------------------------------------------- on the sim


def sim_judge(params: SimParams) -> ChecklistJudge:
    sim = SimModel(load_suite("arithmetic"), params)
    return ChecklistJudge(ChecklistWriter(sim, RoleConfig(temperature=0.0), Prompts(), 0),
                          ChecklistAnswerer(sim, RoleConfig(temperature=0.0), Prompts(), 0))


async def test_sim_checklist_is_generic_and_a_perfect_answerer_tells_the_truth() -> None:
    judge = sim_judge(SimParams(sensitivity=1.0, specificity=1.0))
    for task in list(load_suite("arithmetic"))[:6]:
        assert task.solution is not None and task.answer is not None
        written = await judge.checklist(task)
        assert written.value is not None and 3 <= len(written.value) <= 5
        assert not any(task.answer in q for q in written.value)  # does not leak the answer
        right = await judge.score(task, written.value, task.solution)
        assert right.score == 1.0
        wrong_text = task.solution.replace(f"Answer: {task.answer}", "Answer: 1234")
        wrong = await judge.score(task, written.value, wrong_text)
        # the stated-answer question passes, every substance question fails
        assert wrong.answers is not None and wrong.answers[0].yes
        assert wrong.score == pytest.approx(1 / len(written.value))
        assert "fails these checks" in wrong.critique()
        no_answer = await judge.score(task, written.value, "I am not sure.")
        assert no_answer.score == 0.0


async def test_sim_checklist_scores_separate_right_from_wrong(tmp_path: Path) -> None:
    res = await arun(RunConfig.model_validate({
        "suite": "arithmetic", "strategy": "best_of_n",
        "strategy_params": {"n": 4, "scorer": "checklist"}, "model": "sim",
        "store": str(tmp_path / "s.db"), "cache": False, "seed": 1}))
    right: list[float] = []
    wrong: list[float] = []
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        for a in res.attempts:
            _, judgements = await st.load_tree(res.run_id, a.task_id)
            graded = {j.node_id: j.verdict for j in judgements if j.role == "grader"}
            for j in judgements:
                if j.role == "checklist" and j.node_id in graded and j.score is not None:
                    (right if graded[j.node_id] == "correct" else wrong).append(j.score)
    assert right and wrong
    assert sum(right) / len(right) > sum(wrong) / len(wrong) + 0.3
    assert res.summary["accuracy"] > res.summary["sample_accuracy"]


async def test_best_of_n_checklist_through_the_openai_client_on_loopback(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "limit": 4, "strategy": "best_of_n",
            "strategy_params": {"n": 3, "scorer": "checklist"},
            "model": f"openai:sim@{srv.base_url}", "store": str(tmp_path / "s.db"),
            "cache": False, "seed": 2}))
    assert res.summary["failed"] == 0 and all(a.answer for a in res.attempts)
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        _, judgements = await st.load_tree(res.run_id, res.attempts[0].task_id)
    scored = [j for j in judgements if j.role == "checklist" and j.score is not None]
    assert len(scored) == 3 and all(0.0 <= (j.score or 0) <= 1.0 for j in scored)
