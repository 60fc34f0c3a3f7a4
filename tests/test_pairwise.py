"""The pairwise judge: position swap, parsing and repair, tournaments, and best-of-N with it."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
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
from deliberate.roles.pairwise import (
    Outcome,
    PairwiseJudge,
    knockout,
    parse_pair_verdict,
    round_robin,
)
from deliberate.roles.prompts import Prompts
from deliberate.tasks import load_suite

TASK = Task(id="t", prompt="What is 2 + 2?", kind="math", answer="4")


def between(text: str, tag: str) -> str:
    m = re.search(f"<{tag}>\n(.*?)\n</{tag}>", text, re.DOTALL)
    assert m is not None, tag
    return m.group(1)


def judge_of(script: Callable[[ChatRequest, int], str]) -> tuple[PairwiseJudge, FunctionModel]:
    model = FunctionModel(script)
    return PairwiseJudge(model, RoleConfig(temperature=0.0), Prompts(), 0), model


def prefers(better: Callable[[str, str], str | None]) -> Callable[[ChatRequest, int], str]:
    """A judge script: ``better(a, b)`` names "A", "B" or None (tie)."""
    def script(r: ChatRequest, i: int) -> str:
        text = r.messages[-1].content
        w = better(between(text, "candidate_a"), between(text, "candidate_b"))
        return json.dumps({"winner": w or "tie", "reason": "because"})
    return script


def number(text: str) -> int:
    m = re.search(r"Answer: (-?\d+)", text)
    assert m is not None, text
    return int(m.group(1))


# ---------------------------------------------------------------- the role


async def test_consistent_judge_wins_in_both_orders_and_records_both_verdicts() -> None:
    judge, model = judge_of(prefers(lambda a, b: "A" if "good" in a else "B"))
    cmp = await judge.compare(TASK, "good answer", "poor answer")
    assert cmp.winner == "x" and cmp.consistent is True
    assert len(model.requests) == 2  # both orders asked
    shown_first = [between(r.messages[-1].content, "candidate_a") for r in model.requests]
    assert sorted(shown_first) == ["good answer", "poor answer"]
    meta = cmp.meta()
    assert meta["x_first"]["winner"] == "A" and meta["y_first"]["winner"] == "B"
    assert json.loads(meta["x_first"]["raw"])["winner"] == "A"
    flipped = await judge.compare(TASK, "poor answer", "good answer")
    assert flipped.winner == "y" and flipped.consistent is True


async def test_position_biased_judge_gives_a_tie_with_swap_and_a_win_without() -> None:
    judge, model = judge_of(prefers(lambda a, b: "A"))  # always the first shown
    cmp = await judge.compare(TASK, "one", "two")
    assert cmp.winner == "tie" and cmp.consistent is False and not cmp.parse_failure
    assert cmp.meta()["x_first"]["winner"] == cmp.meta()["y_first"]["winner"] == "A"
    single = await judge.compare(TASK, "one", "two", swap=False)
    assert single.winner == "x" and single.consistent is None and len(model.requests) == 3


async def test_agreed_tie_is_a_tie_and_consistent() -> None:
    judge, _ = judge_of(prefers(lambda a, b: None))
    cmp = await judge.compare(TASK, "one", "two")
    assert cmp.winner == "tie" and cmp.consistent is True


@pytest.mark.parametrize(("reply", "winner"), [
    ('```json\n{"winner": "B", "reason": "B is right"}\n```', "B"),
    ('After comparing both, my verdict: {"winner": "Candidate A", "reason": "x",}', "A"),
    ('{"winner": "a", "reason": "lower case"}', "A"),
    ('{"winner": "Tie", "reason": "same"}', "tie"),
    ('{"winner": "(B)"}', "B"),
])
def test_verdicts_survive_real_model_output(reply: str, winner: str) -> None:
    assert parse_pair_verdict(reply).winner == winner


@pytest.mark.parametrize("reply", ["B is better.", '{"winner": "C"}', '{"reason": "no winner"}',
                                   '{"winner": "A", "reason": "cut'])
def test_unreadable_verdicts_are_parse_errors(reply: str) -> None:
    with pytest.raises(ParseError):
        parse_pair_verdict(reply)


async def test_one_repair_then_a_recorded_failure_which_counts_as_a_tie() -> None:
    seen: list[bool] = []

    def script(r: ChatRequest, i: int) -> str:
        repair = any(m.role == "assistant" for m in r.messages)
        seen.append(repair)
        a = between(r.messages[1].content, "candidate_a")
        if a == "x":  # x shown first: readable only after the repair
            return '{"winner": "A", "reason": "ok"}' if repair else "A wins, clearly."
        return "I refuse." if not repair else "still no JSON"

    judge, _ = judge_of(script)
    cmp = await judge.compare(TASK, "x", "y")
    assert sorted(seen) == [False, False, True, True]  # one repair per order, no more
    assert cmp.first.repaired and cmp.first.value is not None
    assert cmp.second is not None and cmp.second.value is None and cmp.second.error
    assert cmp.parse_failure and cmp.winner == "tie" and cmp.consistent is None
    assert cmp.meta()["y_first"]["raw"] == "still no JSON"


async def test_compare_takes_a_plain_input_text() -> None:
    """For judge benchmarks (LLMBar): an instruction and two outputs, no suite."""
    judge, model = judge_of(prefers(lambda a, b: "A" if len(a) > len(b) else "B"))
    cmp = await judge.compare("Summarise the text.", "short", "a longer output")
    assert cmp.winner == "y"
    assert "Summarise the text." in model.requests[0].messages[1].content


async def test_json_schema_response_format_where_supported() -> None:
    from deliberate.models.base import ModelProfile

    model = FunctionModel(prefers(lambda a, b: "A"),
                          profile=ModelProfile(supports_json_schema=True))
    judge = PairwiseJudge(model, RoleConfig(temperature=0.0), Prompts(), 0)
    await judge.ask(TASK, "a", "b")
    fmt = model.requests[0].response_format
    assert fmt is not None and fmt["type"] == "json_schema"
    assert set(fmt["json_schema"]["schema"]["properties"]) == {"winner", "reason"}
    plain, m2 = judge_of(prefers(lambda a, b: "A"))
    await plain.ask(TASK, "a", "b")
    assert m2.requests[0].response_format is None


# ---------------------------------------------------------------- tournaments


def by_strength(strength: list[float], log: list[tuple[int, int]]) -> Any:
    async def play(rnd: int, i: int, j: int) -> Outcome | None:
        log.append((i, j))
        if strength[i] == strength[j]:
            return "tie"
        return "x" if strength[i] > strength[j] else "y"
    return play


@pytest.mark.parametrize("n", [1, 2, 5, 8])
async def test_knockout_finds_the_strongest_in_n_minus_one_matches(n: int) -> None:
    strength = [float((7 * k) % n) for k in range(n)]
    log: list[tuple[int, int]] = []
    st = await knockout(n, by_strength(strength, log))
    assert st.winner == strength.index(max(strength))
    assert len(log) == n - 1 and st.complete
    assert st.played[st.winner] == max(st.played)


async def test_knockout_ties_send_the_earlier_entrant_through() -> None:
    log: list[tuple[int, int]] = []
    st = await knockout(4, by_strength([1, 1, 1, 1], log))
    assert st.winner == 0 and log == [(0, 1), (2, 3), (0, 2)]


async def test_round_robin_counts_points_and_breaks_ties_to_the_earlier() -> None:
    log: list[tuple[int, int]] = []
    st = await round_robin(4, by_strength([1, 3, 3, 0], log))
    assert len(log) == 6
    assert st.points == [1.0, 2.5, 2.5, 0.0]
    assert st.winner == 1
    assert st.share(1) == pytest.approx(2.5 / 3)


async def test_an_unplayable_match_ends_the_tournament_with_standings_so_far() -> None:
    async def play(rnd: int, i: int, j: int) -> Outcome | None:
        return None if rnd == 1 else "y"

    st = await knockout(4, play)
    assert not st.complete and st.winner == 1  # 1 and 3 survived round 0; 1 is earlier
    rr = await round_robin(3, lambda r, i, j: play(1, i, j))
    assert not rr.complete and rr.winner == 0


# ---------------------------------------------------------------- best-of-N with it

SUITE = Suite.of("tiny", [TASK, Task(id="t2", prompt="What is 3 * 3?", kind="math", answer="9")])


def cfg(tmp_path: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "scripted", "store": str(tmp_path / "s.db"),
                            "cache": False, "suite": "tiny", "strategy": "best_of_n"}
    base.update(kw)
    return RunConfig.model_validate(base)


def closest_to_four(r: ChatRequest, i: int) -> str:
    """Generator: Answer 1, 2, 3, 4, 5, …; pairwise judge: prefers the answer nearest 4."""
    if r.tags.get("role") == "pairwise_judge":
        text = r.messages[-1].content
        a, b = (abs(number(between(text, t)) - 4) for t in ("candidate_a", "candidate_b"))
        return json.dumps({"winner": "tie" if a == b else ("A" if a < b else "B"),
                           "reason": "nearer 4"})
    return f"Answer: {i + 1}"


@pytest.mark.parametrize(("tournament", "matches"), [("knockout", 5), ("round_robin", 15)])
async def test_best_of_n_pairwise_tournament_picks_and_records(
        tmp_path: Path, tournament: str, matches: int) -> None:
    model = FunctionModel(closest_to_four)
    res = await arun(cfg(tmp_path, limit=1, strategy_params={
        "n": 6, "scorer": "pairwise", "tournament": tournament}),
        models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].answer == "4" and res.attempts[0].correct
    judge_calls = [r for r in model.requests if r.tags.get("role") == "pairwise_judge"]
    assert len(judge_calls) == 2 * matches
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t")
    pw = [j for j in judgements if j.role == "pairwise"]
    assert len(pw) == 2 * matches  # one per side per match
    assert all(j.meta["consistent"] is True and j.meta["swapped"] for j in pw)
    assert all({"x_first", "y_first", "opponent"} <= set(j.meta) for j in pw)
    chosen = [n for n in nodes if n.meta.get("chosen")]
    assert len(chosen) == 1 and chosen[0].answer == "4"
    assert chosen[0].value == 1.0  # won every match it played
    winner_verdicts = {j.verdict for j in pw if j.node_id == chosen[0].id}
    assert winner_verdicts == {"win"}


async def test_best_of_n_pairwise_with_a_biased_judge_falls_back_to_the_first(
        tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if r.tags.get("role") == "pairwise_judge":
            return '{"winner": "A", "reason": "first is best"}'
        return f"Answer: {9 - i}"

    res = await arun(cfg(tmp_path, limit=1, strategy_params={"n": 4, "scorer": "pairwise"}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    assert res.attempts[0].answer == "9"  # every match a tie → the earliest sample
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        _, judgements = await st.load_tree(res.run_id, "t")
    assert {j.verdict for j in judgements if j.role == "pairwise"} == {"tie"}
    assert all(j.meta["consistent"] is False for j in judgements if j.role == "pairwise")


# ---------------------------------------------------------------- on the sim


def sim_judge(params: SimParams | None = None) -> tuple[PairwiseJudge, SimModel]:
    suite = load_suite("arithmetic")
    sim = SimModel(suite, params or SimParams())
    return PairwiseJudge(sim, RoleConfig(temperature=0.0), Prompts(), 0), sim


def right_and_wrong(task: Task) -> tuple[str, str]:
    assert task.solution is not None and task.answer is not None
    wrong = task.solution.replace(f"Answer: {task.answer}", f"Answer: {float(task.answer) + 7:g}")
    return task.solution, wrong


async def test_sim_judge_with_swap_never_picks_the_wrong_answer_consistently() -> None:
    judge, _ = sim_judge()
    suite = load_suite("arithmetic")
    outcomes: dict[str, int] = {"right": 0, "wrong": 0, "tie": 0}
    single_right = 0
    for task in suite:
        right, wrong = right_and_wrong(task)
        for x, y, right_is in ((right, wrong, "x"), (wrong, right, "y")):
            cmp = await judge.compare(task, x, y)
            outcomes["tie" if cmp.winner == "tie" else
                     ("right" if cmp.winner == right_is else "wrong")] += 1
            assert cmp.first.value is not None
            single_right += _as_pick(cmp.first.value.winner) == right_is
    total = 2 * len(suite)
    assert outcomes["wrong"] == 0  # its errors are position errors, which the swap exposes
    assert 0.6 * total <= outcomes["right"] < total and outcomes["tie"] > 0
    assert single_right < total  # one order alone is fooled when the right one is second


def _as_pick(position: str) -> str:
    return {"A": "x", "B": "y"}.get(position, "tie")


async def test_sim_judge_skill_follows_the_critic_error_rates() -> None:
    suite = load_suite("arithmetic")
    perfect, _ = sim_judge(SimParams(sensitivity=1.0, specificity=1.0))
    blind, _ = sim_judge(SimParams(sensitivity=0.0, specificity=0.0))
    for task in list(suite)[:8]:
        right, wrong = right_and_wrong(task)
        assert (await perfect.compare(task, wrong, right)).winner == "y"
        blind_cmp = await blind.compare(task, wrong, right)
        assert blind_cmp.winner == "tie" and blind_cmp.consistent is False
    # two right answers: a discerning judge calls it a tie
    t = next(iter(suite))
    assert t.solution is not None
    assert (await perfect.compare(t, t.solution, f"{t.solution}\n")).winner == "tie"


async def test_best_of_n_pairwise_on_sim_beats_a_single_sample(tmp_path: Path) -> None:
    accs: dict[str, float] = {}
    for name, params in (("single", {"n": 1, "scorer": "pairwise"}),
                         ("pairwise", {"n": 4, "scorer": "pairwise"})):
        total = 0.0
        for seed in range(3):
            res = await arun(RunConfig.model_validate({
                "suite": "arithmetic", "strategy": "best_of_n", "strategy_params": params,
                "model": "sim", "store": str(tmp_path / "s.db"), "cache": False, "seed": seed}))
            total += res.summary["accuracy"]
        accs[name] = total / 3
    assert accs["pairwise"] > accs["single"]


async def test_best_of_n_pairwise_through_the_openai_client_on_loopback(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "limit": 4, "strategy": "best_of_n",
            "strategy_params": {"n": 3, "scorer": "pairwise", "tournament": "round_robin"},
            "model": f"openai:sim@{srv.base_url}", "store": str(tmp_path / "s.db"),
            "cache": False, "seed": 3}))
    assert res.summary["failed"] == 0 and all(a.answer for a in res.attempts)
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        _, judgements = await st.load_tree(res.run_id, res.attempts[0].task_id)
        calls = await st.load_calls(res.run_id, res.attempts[0].task_id)
    assert sum(j.role == "pairwise" for j in judgements) == 6  # 3 matches, 2 sides
    # identical prompts (two identical candidates) share one call, so count links instead
    ids = {c.id for c in calls.values() if c.role == "pairwise_judge"}
    pw = [j for j in judgements if j.role == "pairwise"]
    assert ids and all(j.meta["call_ids"] and set(j.meta["call_ids"]) <= ids for j in pw)
    assert all(j.meta["x_first"]["raw"] and j.meta["y_first"]["raw"] for j in pw)


async def test_llmbar_rows_run_through_compare_with_and_without_swap() -> None:
    """The API issue 6 evaluates with: real LLMBar rows (instruction, two outputs)."""
    from tests.conftest import shared_data

    rows = json.loads(shared_data("judge/llmbar-natural.json").read_text())[:20]
    better = {r["output_1"] if r["label"] == 1 else r["output_2"] for r in rows}
    oracle, _ = judge_of(prefers(lambda a, b: "A" if a in better else "B"))
    biased, _ = judge_of(prefers(lambda a, b: "A"))
    for r in rows:
        want = "x" if r["label"] == 1 else "y"
        assert (await oracle.compare(r["input"], r["output_1"], r["output_2"])).winner == want
        assert (await biased.compare(r["input"], r["output_1"], r["output_2"])).winner == "tie"
        single = await biased.compare(r["input"], r["output_1"], r["output_2"], swap=False)
        assert single.winner == "x"  # without the swap the bias passes for a verdict
