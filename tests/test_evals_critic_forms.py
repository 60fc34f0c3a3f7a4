"""Critic evaluation forms beside ProcessBench: verdicts on labelled candidates, the
pairwise judge against gold preferences, and the closed loop (RealCritic).

Exact metrics on hand-made items through scripted models, then ``sim`` at configured
rates on the shared data files (measured within the interval of the configured or
derived rate), the same evaluations through the OpenAI client against the sim server
on loopback, and the CLI.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deliberate.cli import main
from deliberate.config import BudgetConfig
from deliberate.errors import DataError, ModelResponseError
from deliberate.evals.critics import (
    CriticEvalConfig,
    LabelledCandidate,
    PairItem,
    RealCriticItem,
    evaluate_pairwise,
    evaluate_realcritic,
    evaluate_verdicts,
    load_labelled_candidates,
    load_pairs,
    load_realcritic,
    pairwise_suite,
    realcritic_suite,
    subsample,
    verdict_metrics,
    verdict_suite,
)
from deliberate.evals.stats import Estimate
from deliberate.models.base import ChatRequest
from deliberate.models.scripted import FunctionModel
from deliberate.models.sim import SimParams
from deliberate.models.sim.handlers.pairwise import PAIR_LABELS, labelled_pair
from deliberate.models.sim.server import SimServer
from tests.conftest import shared_data

GSM8K_SOLUTIONS = "math/gsm8k-model-solutions-dev.jsonl.gz"
LLMBAR = "judge/llmbar-natural.json"
REALCRITIC = "math/realcritic-gsm8k.jsonl.gz"


def block(request: ChatRequest, tag: str) -> str:
    """A block of the role's own prompt (the first user message, also under a repair)."""
    found = re.search(rf"<{tag}>\n(.*?)\n</{tag}>", request.messages[1].content, re.S)
    assert found is not None, tag
    return found.group(1)


def write_rows(path: Path, rows: list[Any], *, jsonl: bool = True) -> Path:
    text = "\n".join(json.dumps(r) for r in rows) if jsonl else json.dumps(rows)
    path.write_bytes(gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode())
    return path


def within(e: Estimate | None, expected: float) -> bool:
    assert e is not None
    return e.low <= expected <= e.high


def verdict(v: str, score: int = 5) -> str:
    return json.dumps({"critique": f"it is {v}", "verdict": v, "score": score})


# ================================================================ verdicts


V_ROWS: list[dict[str, Any]] = [
    {"question": "Add 2 and 3.", "ground_truth": "2 + 3 = <<2+3=5>>5\nA: 5",
     "m1": {"solution": "2 + 3 = 5\nA: 5", "is_correct": True},
     "m2": {"solution": "2 + 3 = 6\nA: 6", "is_correct": False}},
    {"question": "Double 4.", "ground_truth": "4 * 2 = 8\nA: 8",
     "m1": {"solution": "4 * 2 = 9\nA: 9", "is_correct": False},
     "m2": {"solution": "4 * 2 = 8\nA: 8", "is_correct": True}},
    {"id": "h", "question": "Halve 10.", "answer": 5, "solution": "10 / 2 = 5\nA: 5",
     "is_correct": True, "source": "flat"},
    {"id": "t", "question": "Triple 3.", "answer": "9", "solution": "3 * 3 = 10\nA: 10",
     "is_correct": False, "source": "flat"},
    {"id": "s", "question": "Subtract 1 from 4.", "solution": "4 - 1 = 2\nA: 2",
     "is_correct": False, "source": "flat"},
]

# What the scripted critic says about each candidate, in order (the repair sees the next).
V_REPLIES: dict[str, list[str]] = {
    "2 + 3 = 5\nA: 5": [verdict("correct", 9)],                    # passed
    "2 + 3 = 6\nA: 6": [verdict("incorrect", 2)],                  # caught
    "4 * 2 = 9\nA: 9": [verdict("correct", 8)],                    # missed
    "4 * 2 = 8\nA: 8": [verdict("incorrect", 3)],                  # false alarm
    "10 / 2 = 5\nA: 5": ["looks fine to me", verdict("correct")],  # repaired: passed
    "3 * 3 = 10\nA: 10": [verdict("incorrect", 1)],                # caught
    "4 - 1 = 2\nA: 2": ["no idea", "still no idea"],               # unreadable: unanswered
}


def by_candidate(replies: dict[str, list[str]]) -> Callable[[ChatRequest, int], str]:
    seen: dict[str, int] = {}

    def reply(request: ChatRequest, _i: int) -> str:
        cand = block(request, "candidate")
        k = seen.get(cand, 0)
        seen[cand] = k + 1
        return replies[cand][min(k, len(replies[cand]) - 1)]

    return reply


def v_items(tmp_path: Path) -> list[LabelledCandidate]:
    return load_labelled_candidates(write_rows(tmp_path / "v.jsonl", V_ROWS))


def test_labelled_candidates_load_from_columns_and_flat_rows(tmp_path: Path) -> None:
    items = v_items(tmp_path)
    assert [c.id for c in items] == ["row-1/m1", "row-1/m2", "row-2/m1", "row-2/m2", "h", "t",
                                     "s"]
    assert [c.correct for c in items] == [True, False, False, True, True, False, False]
    assert [c.source for c in items][:2] == ["m1", "m2"] and items[4].source == "flat"
    assert items[0].answer == "5" and items[0].reference == "2 + 3 = <<2+3=5>>5\nAnswer: 5"
    assert items[4].answer == "5" and items[6].answer is None
    only = load_labelled_candidates(tmp_path / "v.jsonl", columns=["m2"], limit=1)
    assert [c.id for c in only] == ["row-1/m2"]
    suite = verdict_suite(items)
    assert len(suite) == 5 and suite.tasks[0].answer == "5" and suite.tasks[0].kind == "math"
    assert suite.tasks[4].kind == "text"  # no reference: nothing for sim to check against


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"solution": "x", "is_correct": True}, "line 2: missing field 'question'"),
        ({"question": "q", "solution": "x", "is_correct": "yes"},
         "line 2: the row: 'is_correct' must be true or false"),
        ({"question": "q", "a": {"solution": "", "is_correct": True}},
         "line 2: column 'a': 'solution' must be a non-empty string"),
        ({"question": "q", "note": "x"}, "line 2: no labelled solution"),
        ({"question": "q", "ground_truth": "no answer here", "solution": "x",
          "is_correct": True}, "line 2: no final answer in 'ground_truth'"),
        ({"id": "h", "question": "q", "solution": "x", "is_correct": True},
         "line 2: id 'h' repeats line 1"),
    ],
)
def test_a_malformed_labelled_row_is_named(tmp_path: Path, bad: Any, message: str) -> None:
    path = write_rows(tmp_path / "v.jsonl", [V_ROWS[2], bad, V_ROWS[0], {"oops": 1}])
    with pytest.raises(DataError, match=re.escape(message) + r".*\(and 1 more malformed\)"):
        load_labelled_candidates(path)


def test_a_missing_column_or_a_clashing_answer_is_named(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "v.jsonl", V_ROWS[:2])
    with pytest.raises(DataError, match="line 1: no column 'm3'"):
        load_labelled_candidates(path, columns=["m1", "m3"])
    clash = write_rows(tmp_path / "clash.jsonl", [V_ROWS[2], {**V_ROWS[2], "id": "h2",
                                                              "answer": 6}])
    with pytest.raises(DataError, match="row 2: 'answer' '6' differs from row 1's '5'"):
        load_labelled_candidates(clash)


def test_verdict_metrics_exact_and_resampled_by_problem() -> None:
    correct = [True, False, False, True, True, False, False]
    said: list[bool | None] = [True, False, True, False, True, False, None]
    groups = ["a", "a", "b", "b", "c", "d", "e"]
    m = verdict_metrics(correct, said, groups, ["x", "y", "x", "y", "x", "y", "y"],
                        resamples=500)
    assert (m.n_wrong, m.n_right) == (4, 3)
    assert m.sensitivity is not None and m.sensitivity.value == pytest.approx(2 / 4)
    assert m.specificity is not None and m.specificity.value == pytest.approx(2 / 3)
    assert m.accuracy is not None and m.accuracy.value == pytest.approx(4 / 7)
    assert m.balanced_accuracy is not None
    assert m.balanced_accuracy.value == pytest.approx((2 / 4 + 2 / 3) / 2)
    assert m.wrong_outcomes == {"caught": 2, "missed": 1, "unanswered": 1}
    assert m.right_outcomes == {"passed": 2, "false_alarm": 1, "unanswered": 0}
    assert m.by_source["x"] == {"n_wrong": 1, "n_right": 2, "sensitivity": 0.0,
                                "specificity": 1.0}
    assert (m.sensitivity.n, m.specificity.n, m.accuracy.n) == (4, 3, 7)
    assert m.accuracy.low < m.accuracy.value < m.accuracy.high
    # One problem holding every candidate: resampling problems cannot move anything.
    one = verdict_metrics(correct, said, ["p"] * 7)
    assert one.accuracy is not None and one.accuracy.low == one.accuracy.high
    only_right = verdict_metrics([True, True], [True, False])
    assert only_right.sensitivity is None and only_right.balanced_accuracy is None
    with pytest.raises(ValueError, match="2 labels but 1"):
        verdict_metrics([True, False], [True])


async def test_verdicts_through_the_critic_role(tmp_path: Path) -> None:
    model = FunctionModel(by_candidate(V_REPLIES))
    result = await evaluate_verdicts(v_items(tmp_path), CriticEvalConfig(concurrency=2),
                                     model=model)
    by_id = {r.id: r for r in result.records}
    assert [by_id[i].outcome for i in ("row-1/m1", "row-1/m2", "row-2/m1", "row-2/m2", "h",
                                       "t", "s")] == [
        "passed", "caught", "missed", "false_alarm", "passed", "caught", "unanswered"]
    assert by_id["h"].repaired and by_id["h"].status == "ok" and by_id["h"].score == 5
    assert by_id["s"].status == "unreadable" and by_id["s"].raw == "still no idea"
    assert by_id["row-1/m2"].critique == "it is incorrect" and by_id["row-1/m2"].score == 2
    m = result.metrics
    assert m.sensitivity is not None and m.sensitivity.value == pytest.approx(2 / 4)
    assert m.specificity is not None and m.specificity.value == pytest.approx(2 / 3)
    assert result.count("unreadable") == 1
    assert len(model.requests) == 9 and result.usage.calls == 9  # 7 items, 2 of them twice
    first = model.requests[0]
    assert first.tags.get("role") == "critic" and first.temperature == 0.0
    assert "meticulous reviewer" in first.messages[0].content
    # The critic never sees the label or the reference answer.
    assert all("is_correct" not in r.messages[1].content and "<<" not in r.messages[1].content
               for r in model.requests)

    judged = FunctionModel(by_candidate(V_REPLIES))
    as_judge = await evaluate_verdicts(v_items(tmp_path), role="judge", model=judged)
    assert judged.requests[0].tags.get("role") == "judge"
    assert "strict, fair judge" in judged.requests[0].messages[0].content
    assert as_judge.metrics == result.metrics and as_judge.role == "judge"


async def test_verdict_failures_count_wrong_and_a_budget_skips(tmp_path: Path) -> None:
    def flaky(request: ChatRequest, i: int) -> str:
        if block(request, "candidate") == "2 + 3 = 6\nA: 6":
            raise ModelResponseError("the endpoint sent an empty choice list")
        return verdict("incorrect")

    result = await evaluate_verdicts(v_items(tmp_path), model=FunctionModel(flaky))
    failed = [r for r in result.records if r.status == "failed"]
    assert [r.id for r in failed] == ["row-1/m2"] and failed[0].outcome == "unanswered"
    assert result.metrics.wrong_outcomes == {"caught": 3, "missed": 0, "unanswered": 1}

    cfg = CriticEvalConfig(concurrency=1, budget=BudgetConfig(max_calls=3))
    limited = await evaluate_verdicts(v_items(tmp_path), cfg, model=FunctionModel(flaky))
    assert limited.limited_by == "calls" and limited.count("skipped") == 7 - limited.metrics.n
    assert limited.count("skipped") >= 4


async def test_sim_verdicts_match_the_configured_rates() -> None:
    items = load_labelled_candidates(shared_data(GSM8K_SOLUTIONS))
    assert len(items) == 2640
    perfect = await evaluate_verdicts(items, CriticEvalConfig(
        model="sim?sensitivity=1&specificity=1"))
    # The sim learns right and wrong from the task's reference answer; on this file
    # that agrees with every recorded label.
    assert all(r.hit for r in perfect.records)
    for sens, spec in ((0.6, 0.7), (0.95, 0.5)):
        result = await evaluate_verdicts(items, CriticEvalConfig(
            model=f"sim?sensitivity={sens}&specificity={spec}"))
        m = result.metrics
        assert (m.n_wrong, m.n_right) == (1632, 1008)
        assert within(m.sensitivity, sens) and within(m.specificity, spec)
        assert within(m.balanced_accuracy, (sens + spec) / 2)
        assert m.sensitivity is not None and m.sensitivity.high - m.sensitivity.low < 0.08


async def test_verdicts_through_the_openai_client_match_the_sim() -> None:
    items = subsample(load_labelled_candidates(shared_data(GSM8K_SOLUTIONS)), 60, seed=3)
    local = await evaluate_verdicts(items, CriticEvalConfig(
        model="sim?sensitivity=0.7&specificity=0.8"))
    with SimServer(verdict_suite(items), SimParams(sensitivity=0.7, specificity=0.8)) as srv:
        remote = await evaluate_verdicts(items, CriticEvalConfig(
            model=f"openai:sim@{srv.base_url}", concurrency=4))
    assert remote.model.startswith("openai:sim@http://127.0.0.1")
    assert [r.said for r in remote.records] == [r.said for r in local.records]
    assert remote.metrics == local.metrics and remote.usage.calls == 60


# ================================================================ pairwise


P_ROWS: list[dict[str, Any]] = [
    {"id": "p1", "input": "Say hi.", "output_1": "Hi!", "output_2": "Bye.", "label": 1},
    {"id": "p2", "input": "Count to 3.", "output_1": "1 2", "output_2": "1 2 3", "label": 2},
    {"id": "p3", "input": "Name a color.", "output_1": "Blue", "output_2": "Seven",
     "label": 1},
    {"id": "p4", "input": "Add 1 and 1.", "output_1": "2", "output_2": "3", "label": 1},
    {"id": "p5", "input": "Pick yes.", "output_1": "yes", "output_2": "no", "label": 1},
]


def p_items(tmp_path: Path) -> list[PairItem]:
    return load_pairs(write_rows(tmp_path / "pairs.json", P_ROWS, jsonl=False))


def pick(winner: str) -> str:
    return json.dumps({"winner": winner, "reason": "because"})


def by_shown(replies: dict[tuple[str, str], str]) -> Callable[[ChatRequest, int], str]:
    """Replies by (input, candidate shown as A)."""
    return lambda request, _i: replies[(block(request, "task"),
                                        block(request, "candidate_a"))]


# p1 consistent right; p2 the orders disagree; p3 a tie both ways; p4 consistent wrong;
# p5 first order wrong, second unreadable (twice).
P_REPLIES = {
    ("Say hi.", "Hi!"): pick("A"), ("Say hi.", "Bye."): pick("B"),
    ("Count to 3.", "1 2"): pick("A"), ("Count to 3.", "1 2 3"): pick("A"),
    ("Name a color.", "Blue"): pick("tie"), ("Name a color.", "Seven"): pick("tie"),
    ("Add 1 and 1.", "2"): pick("B"), ("Add 1 and 1.", "3"): pick("A"),
    ("Pick yes.", "yes"): pick("B"), ("Pick yes.", "no"): "I like both",
}


def test_pairs_load_and_carry_their_labels_to_the_sim(tmp_path: Path) -> None:
    items = p_items(tmp_path)
    assert [(i.id, i.better, i.worse) for i in items][:2] == [
        ("p1", "Hi!", "Bye."), ("p2", "1 2 3", "1 2")]
    suite = pairwise_suite(items)
    task = suite.tasks[1]
    assert task.metadata[PAIR_LABELS] == [{"better": "1 2 3", "worse": "1 2"}]
    assert labelled_pair(task, "1 2", " 1  2 3\n") == (False, True)
    assert labelled_pair(task, "1 2 3", "1 2") == (True, False)
    assert labelled_pair(task, "1 2 3", "4") is None
    bad = write_rows(tmp_path / "bad.jsonl", [P_ROWS[0], {**P_ROWS[1], "label": 0},
                                              {"input": "x", "output_1": "a"}])
    with pytest.raises(DataError, match=r"line 2: 'label' must be 1 or 2 .*\(and 1 more"):
        load_pairs(bad)


async def test_pairwise_with_and_without_swap_exact(tmp_path: Path) -> None:
    model = FunctionModel(by_shown(P_REPLIES))
    result = await evaluate_pairwise(p_items(tmp_path), model=model)
    by_id = {r.id: r for r in result.records}
    assert [(by_id[i].first, by_id[i].second, by_id[i].winner) for i in
            ("p1", "p2", "p3", "p4", "p5")] == [
        ("A", "B", 1), ("A", "A", 0), ("tie", "tie", 0), ("B", "A", 2), ("B", None, 0)]
    assert [by_id[i].outcome for i in ("p1", "p2", "p3", "p4", "p5")] == [
        "right", "tie", "tie", "wrong", "unanswered"]
    assert [by_id[i].consistent for i in ("p1", "p2", "p3", "p4", "p5")] == [
        True, False, True, True, False]
    assert by_id["p5"].status == "unreadable" and by_id["p5"].repaired
    m = result.metrics
    values = {k: getattr(m, k).value for k in (
        "accuracy_no_swap", "accuracy_reversed", "accuracy_single", "accuracy_swap",
        "consistency", "ties", "first_position")}
    assert values == pytest.approx({
        "accuracy_no_swap": 1 / 5, "accuracy_reversed": 2 / 5, "accuracy_single": 1.5 / 5,
        "accuracy_swap": 1 / 5, "consistency": 3 / 5, "ties": 2 / 5,
        "first_position": 4 / 7})
    assert m.outcomes == {"right": 1, "wrong": 1, "tie": 2, "unanswered": 1}
    assert m.n_first_better == 4
    assert len(model.requests) == 11  # both orders of 5 pairs, one repair
    shown = {(block(r, "candidate_a"), block(r, "candidate_b")) for r in model.requests
             if block(r, "task") == "Say hi."}
    assert shown == {("Hi!", "Bye."), ("Bye.", "Hi!")}
    assert model.requests[0].tags.get("role") == "pairwise_judge"
    assert model.requests[0].temperature == 0.0

    once = FunctionModel(by_shown(P_REPLIES))
    single = await evaluate_pairwise(p_items(tmp_path), swap=False, model=once)
    assert len(once.requests) == 5
    assert all(block(r, "candidate_a") == row["output_1"]
               for r in once.requests for row in P_ROWS if row["input"] == block(r, "task"))
    s = single.metrics
    assert s.accuracy_no_swap is not None and s.accuracy_no_swap.value == pytest.approx(1 / 5)
    assert s.accuracy_swap is None and s.consistency is None
    assert [r.second for r in single.records] == [None] * 5
    assert s.outcomes == {"right": 1, "wrong": 3, "tie": 1, "unanswered": 0}


async def test_a_judge_that_always_names_a_is_caught_by_the_swap(tmp_path: Path) -> None:
    result = await evaluate_pairwise(p_items(tmp_path),
                                     model=FunctionModel(lambda r, i: pick("A")))
    m = result.metrics
    assert m.accuracy_no_swap is not None and m.accuracy_no_swap.value == pytest.approx(4 / 5)
    assert m.accuracy_reversed is not None and m.accuracy_reversed.value == pytest.approx(1 / 5)
    assert m.accuracy_swap is not None and m.accuracy_swap.value == 0.0
    assert m.consistency is not None and m.consistency.value == 0.0
    assert m.first_position is not None and m.first_position.value == 1.0


def pairwise_expected(n1: int, n: int, d: float) -> dict[str, float]:
    """What the sim pairwise judge should score on pairs with one better output.

    It discerns with probability d = (sensitivity + specificity) / 2 and then names
    the better output; otherwise it names A. So: better shown first, always right;
    shown second, right with d; both orders agree (on the better one) with d.
    """
    n2 = n - n1
    return {"accuracy_no_swap": (n1 + n2 * d) / n, "accuracy_reversed": (n2 + n1 * d) / n,
            "accuracy_single": (1 + d) / 2, "accuracy_swap": d, "consistency": d,
            "ties": 1 - d, "first_position": 1 - d / 2}


@pytest.mark.parametrize(("sens", "spec"), [(0.7, 0.8), (0.9, 0.9)])
async def test_sim_pairwise_matches_the_derived_rates(sens: float, spec: float) -> None:
    items = load_pairs(shared_data(LLMBAR))
    result = await evaluate_pairwise(items, CriticEvalConfig(
        model=f"sim?sensitivity={sens}&specificity={spec}"))
    m = result.metrics
    assert (m.n, m.n_first_better) == (100, 42)
    assert m.outcomes["wrong"] == 0  # the sim's errors are disagreements, never both wrong
    for name, value in pairwise_expected(42, 100, (sens + spec) / 2).items():
        assert within(getattr(m, name), value), (name, getattr(m, name), value)


async def test_sim_pairwise_at_full_skill_knows_every_gold_preference() -> None:
    result = await evaluate_pairwise(load_pairs(shared_data(LLMBAR)), CriticEvalConfig(
        model="sim?sensitivity=1&specificity=1"))
    assert all(r.outcome == "right" for r in result.records)
    assert result.metrics.first_position is not None
    assert result.metrics.first_position.value == 0.5


async def test_pairwise_through_the_openai_client_matches_the_sim() -> None:
    items = load_pairs(shared_data(LLMBAR), limit=30)
    local = await evaluate_pairwise(items, CriticEvalConfig(
        model="sim?sensitivity=0.7&specificity=0.8"))
    with SimServer(pairwise_suite(items), SimParams(sensitivity=0.7, specificity=0.8)) as srv:
        remote = await evaluate_pairwise(items, CriticEvalConfig(
            model=f"openai:sim@{srv.base_url}", concurrency=4))
    assert [(r.first, r.second) for r in remote.records] == [
        (r.first, r.second) for r in local.records]
    assert remote.metrics == local.metrics and remote.usage.calls == 60


# ================================================================ closed loop (RealCritic)


R_ROWS: list[dict[str, Any]] = [
    {"idx": 1, "question": "Add 2 and 3.", "reasoning": "2 + 3 = 6\nAnswer: 6", "gt": "5",
     "model": "m"},
    {"idx": 2, "question": "Double 4.", "reasoning": "4 * 2 = 9\nAnswer: 9", "gt": 8},
    {"idx": 3, "question": "Halve 10.", "reasoning": "10 / 2 = 5\nAnswer: 5", "gt": "5"},
    {"idx": 4, "question": "Triple 3.", "reasoning": "3 * 3 = 9\nAnswer: 9", "gt": "9"},
    {"idx": 5, "question": "Subtract 1 from 4.", "reasoning": "4 - 1 = 2\nAnswer: 2",
     "gt": "3"},
    {"idx": 6, "question": "Add 1 and 1.", "reasoning": "1 + 1 = 2\nAnswer: 2", "gt": "2"},
]

# question -> (what the critic says, what the refiner returns)
R_SCRIPT: dict[str, tuple[list[str], str | None]] = {
    "Add 2 and 3.": ([verdict("incorrect", 2)], "2 + 3 = 5\nAnswer: 5"),   # fixed
    "Double 4.": ([verdict("correct", 9)], None),                          # still wrong
    "Halve 10.": ([verdict("incorrect", 3)], "10 / 2 = 4\nAnswer: 4"),     # broken
    "Triple 3.": ([verdict("correct", 9)], None),                          # kept
    "Subtract 1 from 4.": (["hmm", "hmm, no"], "4 - 1 = 3\nAnswer: 3"),    # unreadable, fixed
    "Add 1 and 1.": ([verdict("incorrect", 4)], "1 + 1 = 2\nAnswer: 2"),   # revised, kept
}


def loop_script() -> Callable[[ChatRequest, int], str]:
    seen: dict[str, int] = {}

    def reply(request: ChatRequest, _i: int) -> str:
        question = block(request, "task")
        said, revision = R_SCRIPT[question]
        if request.tags.get("role") == "refiner":
            assert revision is not None, f"{question}: the refiner should not be asked"
            return revision
        k = seen.get(question, 0)
        seen[question] = k + 1
        return said[min(k, len(said) - 1)]

    return reply


def r_items(tmp_path: Path) -> list[RealCriticItem]:
    return load_realcritic(write_rows(tmp_path / "rc.jsonl.gz", R_ROWS))


async def test_closed_loop_counts_fixes_and_breaks(tmp_path: Path) -> None:
    model = FunctionModel(loop_script())
    result = await evaluate_realcritic(r_items(tmp_path), model=model)
    rec = {r.id: r for r in result.records}
    assert [rec[str(i)].outcome for i in range(1, 7)] == [
        "fixed", "still_wrong", "broken", "kept", "fixed", "kept"]
    assert [rec[str(i)].revised for i in range(1, 7)] == [True, False, True, False, True, True]
    assert rec["5"].status == "unreadable" and rec["5"].said is None and rec["5"].repaired
    assert rec["1"].generator == "m" and rec["1"].revision == "2 + 3 = 5\nAnswer: 5"
    m = result.metrics
    values = {k: getattr(m, k).value for k in (
        "accuracy_before", "accuracy_after", "change", "fix_rate", "break_rate",
        "flagged_wrong", "accepted_right", "fix_when_revised", "break_when_revised")}
    assert values == pytest.approx({
        "accuracy_before": 3 / 6, "accuracy_after": 4 / 6, "change": 1 / 6,
        "fix_rate": 2 / 3, "break_rate": 1 / 3, "flagged_wrong": 1 / 3,
        "accepted_right": 1 / 3, "fix_when_revised": 1.0, "break_when_revised": 1 / 2})
    # The decomposition holds exactly on the point values.
    before = values["accuracy_before"]
    assert values["accuracy_after"] == pytest.approx(
        before * (1 - values["break_rate"]) + (1 - before) * values["fix_rate"])
    assert m.outcomes == {"fixed": 2, "still_wrong": 1, "kept": 2, "broken": 1}
    critic = [r for r in model.requests if r.tags.get("role") == "critic"]
    refiner = [r for r in model.requests if r.tags.get("role") == "refiner"]
    assert (len(critic), len(refiner)) == (7, 4) and result.usage.calls == 11
    # The refiner reads the critique as refine words it; an unreadable one raw.
    first = next(r for r in refiner if block(r, "task") == "Add 2 and 3.")
    assert block(first, "critique") == (
        "Verdict: incorrect (score 2 on a scale from 1 to 10)\nit is incorrect")
    assert block(first, "candidate") == "2 + 3 = 6\nAnswer: 6"
    raw = next(r for r in refiner if block(r, "task") == "Subtract 1 from 4.")
    assert block(raw, "critique") == "hmm, no"
    assert critic[0].temperature == 0.0 and refiner[0].temperature == 0.7


async def test_closed_loop_failure_keeps_the_answer(tmp_path: Path) -> None:
    script = loop_script()

    def flaky(request: ChatRequest, i: int) -> str:
        if block(request, "task") == "Add 2 and 3." and request.tags.get("role") == "refiner":
            raise ModelResponseError("the endpoint sent an empty choice list")
        return script(request, i)

    result = await evaluate_realcritic(r_items(tmp_path), model=FunctionModel(flaky))
    failed = next(r for r in result.records if r.id == "1")
    assert failed.status == "failed" and not failed.after and failed.outcome == "still_wrong"
    assert result.metrics.fix_rate is not None
    assert result.metrics.fix_rate.value == pytest.approx(1 / 3)


def test_realcritic_rows_are_checked(tmp_path: Path) -> None:
    items = r_items(tmp_path)
    assert [(i.id, i.answer) for i in items][:2] == [("1", "5"), ("2", "8")]
    suite = realcritic_suite(items)
    assert suite.tasks[1].answer == "8" and suite.tasks[1].kind == "math"
    clash = write_rows(tmp_path / "clash.jsonl", [R_ROWS[0], {**R_ROWS[1], "idx": 9,
                                                              "question": "Add 2 and 3."}])
    with pytest.raises(DataError, match="'gt' '8' differs from row 1's '5'"):
        load_realcritic(clash)
    bad = write_rows(tmp_path / "bad.jsonl", [R_ROWS[0], {"question": "q", "gt": 1}])
    with pytest.raises(DataError, match="line 2: missing field 'reasoning'"):
        load_realcritic(bad)


async def test_sim_closed_loop_matches_the_configured_rates() -> None:
    items = load_realcritic(shared_data(REALCRITIC))
    sens, spec, fix, brk = 0.8, 0.6, 0.6, 0.3
    result = await evaluate_realcritic(items, CriticEvalConfig(
        model=f"sim?sensitivity={sens}&specificity={spec}&fix_rate={fix}&break_rate={brk}"))
    m = result.metrics
    assert (m.n_wrong, m.n_right) == (137, 136)  # graded as the file's own 'pred' says
    assert within(m.flagged_wrong, sens) and within(m.accepted_right, spec)
    assert within(m.fix_when_revised, fix) and within(m.break_when_revised, brk)
    assert within(m.fix_rate, sens * fix) and within(m.break_rate, (1 - spec) * brk)
    before = 136 / 273
    assert within(m.accuracy_after, before * (1 - (1 - spec) * brk) + (1 - before) * sens * fix)


async def test_closed_loop_through_the_openai_client_matches_the_sim() -> None:
    items = subsample(load_realcritic(shared_data(REALCRITIC)), 40, seed=1)
    query = "sensitivity=0.8&specificity=0.7&fix_rate=0.5&break_rate=0.4"
    local = await evaluate_realcritic(items, CriticEvalConfig(model=f"sim?{query}"))
    with SimServer(realcritic_suite(items), SimParams.from_query(query)) as srv:
        remote = await evaluate_realcritic(items, CriticEvalConfig(
            model=f"openai:sim@{srv.base_url}", concurrency=4))
    assert [(r.said, r.revision, r.after) for r in remote.records] == [
        (r.said, r.revision, r.after) for r in local.records]
    assert remote.metrics == local.metrics


# ================================================================ CLI


def test_cli_verdict_against_a_server(tmp_path: Path, clean_env: Path) -> None:
    path = shared_data(GSM8K_SOLUTIONS)
    out = tmp_path / "verdicts.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "DELIBERATE_"))}
    env.update(DELIBERATE_HOME=str(clean_env), COLUMNS="200")
    with SimServer(verdict_suite(load_labelled_candidates(path)),
                   SimParams(sensitivity=0.8, specificity=0.9)) as srv:
        r = subprocess.run(
            [sys.executable, "-m", "deliberate", "eval", "critic", "verdict", "--data",
             str(path), "--model", f"openai:sim@{srv.base_url}", "--sample", "40",
             "--columns", "175b_finetuning,6b_verification", "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "called incorrect (sensitivity)" in r.stdout and "by source" in r.stdout
    saved = json.loads(out.read_text())
    assert saved["form"] == "verdict" and len(saved["items"]) == 40
    assert {i["source"] for i in saved["items"]} <= {"175b_finetuning", "6b_verification"}
    wrong = [i for i in saved["items"] if not i["correct"]]
    sens = saved["metrics"]["sensitivity"]
    assert sens["n"] == len(wrong) and sens["value"] == pytest.approx(
        sum(i["said"] == "incorrect" for i in wrong) / len(wrong))
    assert f"{100 * sens['value']:.1f}%" in r.stdout


def test_cli_pairwise_and_realcritic_on_sim(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    pairs = write_rows(tmp_path / "pairs.json", P_ROWS, jsonl=False)
    out = tmp_path / "p.json"
    main(["eval", "critic", "pairwise", "--data", str(pairs), "--model",
          "sim?sensitivity=1&specificity=1", "--out", str(out)])
    text = capsys.readouterr().out
    assert "both orders must agree (swap)" in text and "position consistency" in text
    assert "100.0%" in text and "simulated model" in text
    assert json.loads(out.read_text())["metrics"]["accuracy_swap"]["value"] == 1.0
    main(["eval", "critic", "pairwise", "--data", str(pairs), "--no-swap", "--limit", "2"])
    text = capsys.readouterr().out
    assert "no swap" in text and "both orders must agree" not in text

    rc = write_rows(tmp_path / "rc.jsonl", R_ROWS)
    main(["eval", "critic", "realcritic", "--data", str(rc), "--model",
          "sim?sensitivity=1&specificity=1&fix_rate=1&break_rate=1"])
    text = capsys.readouterr().out
    assert "wrong answers fixed (3)" in text and "fixed 3, still wrong 0" in text


@pytest.mark.parametrize(("form", "rows", "message"), [
    ("verdict", [{"question": "q", "solution": "s", "is_correct": 1}],
     "line 1: the row: 'is_correct' must be true or false"),
    ("pairwise", [{"input": "i", "output_1": "a", "output_2": "b", "label": 3}],
     "line 1: 'label' must be 1 or 2"),
    ("realcritic", [{"question": "q", "reasoning": "r", "gt": None}],
     "line 1: 'gt' must be a string or a number"),
])
def test_cli_malformed_data_is_one_line_with_exit_code_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], form: str,
        rows: list[dict[str, Any]], message: str) -> None:
    bad = write_rows(tmp_path / "bad.jsonl", rows)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "critic", form, "--data", str(bad)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert message in err and "Traceback" not in err


def test_cli_unreachable_endpoint_is_one_actionable_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pairs = write_rows(tmp_path / "pairs.json", P_ROWS, jsonl=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "critic", "pairwise", "--data", str(pairs), "--model",
              "openai:judge@http://127.0.0.1:9/v1", "--retries", "1"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1
    assert "cannot reach http://127.0.0.1:9/v1" in err and "is the server running" in err
