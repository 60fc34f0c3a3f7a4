"""refine: stopping rules, keep-best, ties, memory, parse failures; on sim, the server and the CLI."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.tasks import load_suite
from deliberate.tree import JudgementRecord, NodeRecord
from tests.test_cli import cli

TASK = Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")
SUITE = Suite.of("tiny", [TASK])


def role(r: ChatRequest) -> str:
    return r.tags.get("role", "")


def candidate_answer(r: ChatRequest) -> str:
    """The final answer inside the <candidate> block of a critic or refiner request."""
    first_user = next(m.content for m in r.messages if m.role == "user")
    m = re.search(r"<candidate>\s*(.*?)\s*</candidate>", first_user, re.S)
    assert m is not None
    ans = re.search(r"Answer: (\S+)", m.group(1))
    assert ans is not None
    return ans.group(1)


def verdict(v: str, score: float, critique: str = "") -> str:
    return json.dumps({"critique": critique or f"it is {v}", "verdict": v, "score": score})


def scripted(first: str, critic: dict[str, tuple[str, float]],
             refine: Callable[[str, int], str]) -> FunctionModel:
    """Generator answers ``first``; critic judges by answer; refiner maps (answer, sample)."""

    def script(r: ChatRequest, i: int) -> str:
        if role(r) == "generator":
            return f"2 + 2 is computed.\nAnswer: {first}"
        if role(r) == "critic":
            v, s = critic[candidate_answer(r)]
            return verdict(v, s)
        if role(r) == "refiner":
            return f"Revised.\nAnswer: {refine(candidate_answer(r), i)}"
        raise AssertionError(f"unexpected request {r.tags}")

    return FunctionModel(script)


def cfg(tmp_path: Path, **params: Any) -> RunConfig:
    return RunConfig.model_validate({
        "model": "scripted", "store": str(tmp_path / "s.db"), "cache": False, "suite": "tiny",
        "strategy": "refine", "strategy_params": params,
    })


async def tree(tmp_path: Path, run_id: str) -> tuple[list[NodeRecord], list[JudgementRecord]]:
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        return await st.load_tree(run_id, "t1")


def versions(nodes: list[NodeRecord]) -> list[NodeRecord]:
    """The chain generate → refine → refine …, in round order."""
    return sorted((n for n in nodes if n.operator in ("generate", "refine")),
                  key=lambda n: n.meta["round"])


def refiner_calls(model: FunctionModel) -> list[ChatRequest]:
    return [r for r in model.requests if role(r) == "refiner"]


async def test_stops_when_the_critic_accepts_and_grows_a_chain(tmp_path: Path) -> None:
    model = scripted("3", {"3": ("incorrect", 2), "4": ("correct", 9)}, lambda a, i: "4")
    res = await arun(cfg(tmp_path), models={"scripted": model}, suite=SUITE)
    a = res.attempts[0]
    assert a.answer == "4" and a.correct
    assert "stopped: accepted" in a.stats["note"]
    assert len(refiner_calls(model)) == 1
    nodes, judgements = await tree(tmp_path, res.run_id)
    chain = versions(nodes)
    assert [n.answer for n in chain] == ["3", "4"]
    assert [n.meta["round"] for n in chain] == [0, 1]
    assert chain[1].parent_id == chain[0].id
    assert (chain[1].operator, chain[1].role) == ("refine", "refiner")
    assert [n.meta["chosen"] for n in chain] == [False, True]
    critiques = [j for j in judgements if j.role == "critic"]
    assert [(j.node_id, j.verdict, j.score) for j in critiques] == [
        (chain[0].id, "incorrect", 2), (chain[1].id, "correct", 9)]
    # the refiner saw the critique with its verdict and score
    shown = refiner_calls(model)[0].messages[-1].content
    assert "Verdict: incorrect (score 2 on a scale from 1 to 10)" in shown


async def test_accept_score_makes_the_critic_stricter(tmp_path: Path) -> None:
    critic = {"3": ("correct", 6), "4": ("correct", 9)}
    model = scripted("3", critic, lambda a, i: "4")
    res = await arun(cfg(tmp_path, accept_score=8), models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].answer == "4"
    assert len(refiner_calls(model)) == 1  # "correct" at 6 < 8 was not enough
    model2 = scripted("3", critic, lambda a, i: "4")
    res2 = await arun(cfg(tmp_path), models={"scripted": model2}, suite=SUITE)
    assert res2.attempts[0].answer == "3" and not refiner_calls(model2)


async def test_stop_on_verifier_is_opt_in(tmp_path: Path) -> None:
    # the critic never accepts and rates every version alike; 4 is right
    critic = {a: ("incorrect", 3) for a in ("3", "4", "5", "6")}
    steps = {"3": "4", "4": "5", "5": "6"}
    model = scripted("3", critic, lambda a, i: steps[a])
    res = await arun(cfg(tmp_path, stop_on_verifier=True, patience=None),
                     models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].answer == "4"
    assert "stopped: verifier" in res.attempts[0].stats["note"]
    nodes, judgements = await tree(tmp_path, res.run_id)
    assert [n.answer for n in versions(nodes)] == ["3", "4"]
    assert [j.verdict for j in judgements if j.role == "verifier"] == ["incorrect", "correct"]
    # without the option the loop runs on to max_rounds and keeps the earliest of equals
    model2 = scripted("3", critic, lambda a, i: steps[a])
    res2 = await arun(cfg(tmp_path, patience=None), models={"scripted": model2}, suite=SUITE)
    assert "stopped: max_rounds" in res2.attempts[0].stats["note"]
    assert len(refiner_calls(model2)) == 3
    assert res2.attempts[0].answer == "3"
    _, j2 = await tree(tmp_path, res2.run_id)
    assert not [j for j in j2 if j.role == "verifier"]


async def test_patience_stops_after_k_rounds_without_improvement(tmp_path: Path) -> None:
    critic = {"3": ("incorrect", 5), "5": ("incorrect", 4), "6": ("incorrect", 5),
              "7": ("incorrect", 8)}
    steps = {"3": "5", "5": "6", "6": "7"}
    model = scripted("3", critic, lambda a, i: steps[a])
    res = await arun(cfg(tmp_path, max_rounds=10, patience=2), models={"scripted": model},
                     suite=SUITE)
    # 5 scored 4 (< 5), 6 scored 5 (not > 5): two rounds without improvement
    assert "stopped: patience" in res.attempts[0].stats["note"]
    assert len(refiner_calls(model)) == 2
    assert res.attempts[0].answer == "3"  # the first of the two 5s
    model2 = scripted("3", critic, lambda a, i: steps[a])
    res2 = await arun(cfg(tmp_path, max_rounds=3, patience=3), models={"scripted": model2},
                      suite=SUITE)
    assert res2.attempts[0].answer == "7"  # one more round found a better version


async def test_max_rounds_bounds_the_refinements(tmp_path: Path) -> None:
    critic = {str(a): ("incorrect", a) for a in range(1, 10)}
    model = scripted("1", critic, lambda a, i: str(int(a) + 1))
    res = await arun(cfg(tmp_path, max_rounds=4), models={"scripted": model}, suite=SUITE)
    assert "stopped: max_rounds" in res.attempts[0].stats["note"]
    assert len(refiner_calls(model)) == 4
    nodes, _ = await tree(tmp_path, res.run_id)
    assert [n.answer for n in versions(nodes)] == ["1", "2", "3", "4", "5"]
    assert res.attempts[0].answer == "5"  # each version scored higher than the last
    model0 = scripted("1", critic, lambda a, i: str(int(a) + 1))
    res0 = await arun(cfg(tmp_path, max_rounds=0), models={"scripted": model0}, suite=SUITE)
    assert res0.attempts[0].answer == "1" and not refiner_calls(model0)


async def test_budget_stops_cleanly_with_the_best_so_far(tmp_path: Path) -> None:
    critic = {"3": ("incorrect", 6), "4": ("incorrect", 2), "5": ("incorrect", 1)}
    steps = {"3": "4", "4": "5"}
    model = scripted("3", critic, lambda a, i: steps[a])
    config = cfg(tmp_path, max_rounds=5, patience=None).merged({"task_budget.max_calls": 4})
    res = await arun(config, models={"scripted": model}, suite=SUITE)
    a = res.attempts[0]
    # calls: generate, critique 3, refine → 4, critique 4; the next refine is refused
    assert a.calls == 4 and a.status == "budget_limited"
    assert "stopped: budget" in a.stats["note"]
    assert a.answer == "3"  # keep-best: 3 scored 6, 4 scored 2


async def test_keep_best_never_returns_a_worse_refinement(tmp_path: Path) -> None:
    # a false alarm on the right answer, then the refiner breaks it
    critic = {"4": ("incorrect", 4), "5": ("incorrect", 2), "6": ("incorrect", 3)}
    steps = {"4": "5", "5": "6"}
    params = {"max_rounds": 2, "patience": None}
    model = scripted("4", critic, lambda a, i: steps[a])
    best = await arun(cfg(tmp_path, **params), models={"scripted": model}, suite=SUITE)
    assert best.attempts[0].answer == "4" and best.attempts[0].correct
    assert "kept version 0 of 2" in best.attempts[0].stats["note"]
    model2 = scripted("4", critic, lambda a, i: steps[a])
    last = await arun(cfg(tmp_path, keep_best=False, **params), models={"scripted": model2},
                      suite=SUITE)
    assert last.attempts[0].answer == "6" and not last.attempts[0].correct
    nodes, _ = await tree(tmp_path, last.run_id)
    assert [n.value for n in versions(nodes)] == pytest.approx([3 / 9, 1 / 9, 2 / 9])


async def test_ties_go_to_the_earlier_version(tmp_path: Path) -> None:
    critic = {"3": ("incorrect", 5), "4": ("incorrect", 5), "5": ("incorrect", 5)}
    steps = {"3": "4", "4": "5"}
    model = scripted("3", critic, lambda a, i: steps[a])
    res = await arun(cfg(tmp_path, max_rounds=2, patience=None), models={"scripted": model},
                     suite=SUITE)
    assert res.attempts[0].answer == "3"
    model2 = scripted("5", {"5": ("incorrect", 5), "4": ("incorrect", 5)}, lambda a, i: "4")
    res2 = await arun(cfg(tmp_path, max_rounds=1), models={"scripted": model2}, suite=SUITE)
    assert res2.attempts[0].answer == "5"  # earlier wins even when the later is right


async def test_memory_passes_earlier_critiques_from_round_two(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if role(r) == "generator":
            return "Answer: 1"
        if role(r) == "critic":
            a = candidate_answer(r)
            return verdict("incorrect", int(a), f"critique of answer {a}")
        return f"Answer: {int(candidate_answer(r)) + 1}"

    model = FunctionModel(script)
    res = await arun(cfg(tmp_path, memory=True, max_rounds=3, patience=None),
                     models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].answer == "4"
    shown = [r.messages[-1].content for r in refiner_calls(model)]
    assert len(shown) == 3
    assert "<reflections>" not in shown[0]  # round 1: nothing earlier to remember
    reflections = [re.search(r"<reflections>(.*)</reflections>", s, re.S) for s in shown[1:]]
    assert all(m is not None for m in reflections)
    r2, r3 = (m.group(1) for m in reflections if m is not None)
    assert "critique of answer 1" in r2 and "critique of answer 2" not in r2
    assert "critique of answer 1" in r3 and "critique of answer 2" in r3
    assert "critique of answer 3" not in r3
    # the current critique stays in its own block, after the candidate
    assert re.search(r"<critique>\s*Verdict: incorrect.*critique of answer 3", shown[2], re.S)
    assert "Reviews of your earlier attempts" in refiner_calls(model)[2].messages[0].content
    nodes, _ = await tree(tmp_path, res.run_id)
    assert [n.meta.get("memory", 0) for n in versions(nodes)] == [0, 0, 1, 2]
    # without memory no refiner request carries reflections
    model2 = FunctionModel(script)
    await arun(cfg(tmp_path, max_rounds=3, patience=None), models={"scripted": model2},
               suite=SUITE)
    assert not any("<reflections>" in r.messages[-1].content for r in refiner_calls(model2))


async def test_unreadable_critique_is_recorded_and_ranks_below_scored(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if role(r) == "generator":
            return "Answer: 3"
        if role(r) == "critic":
            if candidate_answer(r) == "3":
                return "It looks off by one to me."  # no JSON, before and after repair
            return verdict("incorrect", 2)
        return "Answer: 4"

    model = FunctionModel(script)
    res = await arun(cfg(tmp_path, max_rounds=1), models={"scripted": model}, suite=SUITE)
    assert res.attempts[0].answer == "4"  # the only scored version
    _nodes, judgements = await tree(tmp_path, res.run_id)
    first = next(j for j in judgements if j.role == "critic")
    assert first.verdict == "parse_failure" and first.score is None
    assert first.meta["raw"] == "It looks off by one to me."
    assert "It looks off by one to me." in refiner_calls(model)[0].messages[-1].content


# ---------------------------------------------------------------- sim, server, CLI


def sim_cfg(tmp_path: Path, model: str, seed: int, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"suite": "arithmetic", "strategy": "refine", "model": model,
                            "store": str(tmp_path / f"sim-{seed}.db"), "cache": False,
                            "seed": seed}
    base.update(kw)
    return RunConfig.model_validate(base)


async def first_sample_accuracy(path: Path, run_id: str, task_ids: list[str]) -> float:
    st = Store.open(str(path))
    right = 0
    async with st:
        for t in task_ids:
            nodes, judgements = await st.load_tree(run_id, t)
            first = next(n for n in nodes if n.operator == "generate")
            right += any(j.node_id == first.id and j.role == "grader" and j.verdict == "correct"
                         for j in judgements)
    return right / len(task_ids)


async def test_refine_on_sim_is_not_worse_than_one_sample(tmp_path: Path) -> None:
    ours, single = [], []
    for seed in range(3):
        res = await arun(sim_cfg(tmp_path, "sim", seed))
        assert res.summary["failed"] == 0
        ours.append(res.summary["accuracy"])
        single.append(await first_sample_accuracy(tmp_path / f"sim-{seed}.db", res.run_id,
                                                  [a.task_id for a in res.attempts]))
    assert statistics.mean(ours) >= statistics.mean(single)
    # the same seeded run again gives the same answers (no set order, no clock)
    again = await arun(sim_cfg(tmp_path, "sim", 2, store=str(tmp_path / "again.db")))
    assert [a.answer for a in again.attempts] == [a.answer for a in res.attempts]


async def test_refine_through_the_openai_client_against_the_sim_server(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(skill=0.4), ServerConfig()) as srv:
        res = await arun(sim_cfg(tmp_path, f"openai:sim@{srv.base_url}", 0, limit=6,
                                 strategy_params={"max_rounds": 2}))
    assert res.summary["failed"] == 0 and res.summary["graded"] == 6
    st = Store.open(str(tmp_path / "sim-0.db"))
    refined = 0
    async with st:
        for a in res.attempts:
            nodes, judgements = await st.load_tree(res.run_id, a.task_id)
            by_id = {n.id: n for n in nodes}
            for n in nodes:
                if n.operator == "refine":
                    refined += 1
                    assert by_id[n.parent_id or ""].meta["round"] == n.meta["round"] - 1
            assert sum(j.role == "critic" for j in judgements) == sum(
                n.operator in ("generate", "refine") for n in nodes)
    assert refined > 0  # a weak model's answers were critiqued and repaired


def test_refine_from_the_command_line(tmp_path: Path, clean_env: Path) -> None:
    r = cli("run", "--strategy", "refine", "-p", "max_rounds=2", "-p", "memory=true",
            "--limit", "3", env_home=clean_env)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "refine" in r.stdout
