"""mc_label: Monte Carlo step labels (Math-Shepherd) and the sim as a completer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.runner import Engine, arun
from deliberate.errors import UsageError
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.handlers.completer import (
    RECOVERY_LINE,
    CompleterHandler,
    read_prefix,
)
from deliberate.models.sim.handlers.step_critic import true_first_wrong
from deliberate.models.sim.math_errors import first_divergence, normalise_solution
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.roles.completer import Completer
from deliberate.roles.prompts import Prompts
from deliberate.strategies.mc_label import NO_ERROR, first_zero
from deliberate.tasks import load_suite
from deliberate.tree import JudgementRecord, NodeRecord
from deliberate.verifiers.answer import extract_answer

REPO = Path(__file__).resolve().parents[1]

SUITE = Suite.of("tiny", [
    Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4"),
    Task(id="t2", prompt="What is 3 * 3?", kind="math", answer="9"),
])


def cfg(tmp_path: Path, params: dict[str, Any], **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"model": "scripted", "store": str(tmp_path / "s.db"), "cache": False,
                            "suite": "tiny", "strategy": "mc_label", "strategy_params": params}
    base.update(kw)
    return RunConfig.model_validate(base)


def is_completer(r: ChatRequest) -> bool:
    return "<solution_prefix>" in r.messages[-1].content


def prefix_len(r: ChatRequest) -> int:
    m = re.search(r"stops after (\d+) step", r.messages[-1].content)
    assert m is not None
    return int(m.group(1))


async def load(tmp_path: Path, run_id: str,
               task: str = "t1") -> tuple[list[NodeRecord], list[JudgementRecord]]:
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        return await st.load_tree(run_id, task)


def mc_of(judgements: list[JudgementRecord], node: NodeRecord) -> list[JudgementRecord]:
    return [j for j in judgements if j.node_id == node.id and j.role == "mc_steps"]


# ---------------------------------------------------------------- scripted logic


def test_first_zero_is_hard_estimation() -> None:
    assert first_zero([0.5, 0.0, 0.25, 1.0]) == 2
    assert first_zero([0.1, 0.2, 1.0]) == NO_ERROR
    assert first_zero([1.0, 1.0, 0.0]) == 3
    assert first_zero([0.0]) == 1


async def test_estimates_from_known_rollout_outcomes(tmp_path: Path) -> None:
    # A 4-step solution; from prefix k, the first HITS[k] of 4 rollouts reach 4.
    hits = {1: 2, 2: 0, 3: 1}

    def script(r: ChatRequest, i: int) -> str:
        if is_completer(r):
            k = prefix_len(r)
            return "so on\nAnswer: 4" if i - r.sample_offset < hits[k] else "so on\nAnswer: 5"
        return "first\nsecond\nthird\nAnswer: 4"

    res = await arun(cfg(tmp_path, {"n": 1, "m": 4}, limit=1),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    nodes, judgements = await load(tmp_path, res.run_id)
    sol = next(n for n in nodes if n.operator == "generate")
    [j] = mc_of(judgements, sol)
    assert j.source == "mc:m=4" and j.role == "mc_steps"
    assert j.first_wrong_step == 2  # the first estimate that is 0
    assert j.score == 1.0 and (j.scale_min, j.scale_max) == (0.0, 1.0)
    assert j.meta["steps"] == ["first", "second", "third", "Answer: 4"]
    assert j.meta["estimates"] == [0.5, 0.0, 0.25, 1.0]
    assert j.meta["m"] == 4
    assert j.meta["hits"] == [2, 0, 1, 1] and j.meta["rollouts"] == [4, 4, 4, 1]
    rollouts = [n for n in nodes if n.operator == "rollout"]
    assert len(rollouts) == 12
    assert all(n.parent_id == sol.id and n.role == "completer" for n in rollouts)
    assert sorted(n.meta["prefix_steps"] for n in rollouts) == [1] * 4 + [2] * 4 + [3] * 4
    verdicts = {j.node_id: j.verdict for j in judgements if j.role == "verifier"}
    assert sum(verdicts[n.id] == "correct" for n in rollouts) == 3
    assert all(n.call_id for n in rollouts)
    # each prefix was one request of m samples, each with its own block of indices
    st = [n.sample_index for n in rollouts]
    assert len(set(st)) == 12
    assert res.attempts[0].stats["mc_labelled"] == 1
    assert res.attempts[0].stats["mc_rollouts"] == 12


@pytest.mark.parametrize(("final", "expected"), [("4", NO_ERROR), ("7", 3)])
async def test_no_zero_is_minus_one_and_a_wrong_answer_blames_the_last_step(
        tmp_path: Path, final: str, expected: int) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_completer(r):  # one rollout in four reaches the answer from any prefix
            return "Answer: 4" if (i - r.sample_offset) == 3 else "Answer: 6"
        return f"one\ntwo\nAnswer: {final}"

    res = await arun(cfg(tmp_path, {"n": 1, "m": 4}, limit=1),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    nodes, judgements = await load(tmp_path, res.run_id)
    sol = next(n for n in nodes if n.operator == "generate")
    [j] = mc_of(judgements, sol)
    assert j.first_wrong_step == expected
    assert j.meta["estimates"] == [0.25, 0.25, 1.0 if final == "4" else 0.0]


async def test_chosen_is_the_first_right_solution_and_only_wrong_labels_wrong_ones(
        tmp_path: Path) -> None:
    answers = {0: "5", 1: "4", 2: "4"}

    def script(r: ChatRequest, i: int) -> str:
        if is_completer(r):
            return "Answer: 4"
        return f"step\nAnswer: {answers[i]}"

    res = await arun(cfg(tmp_path, {"n": 3, "m": 2, "only_wrong": True}, limit=1),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    nodes, judgements = await load(tmp_path, res.run_id)
    sols = sorted((n for n in nodes if n.operator == "generate"),
                  key=lambda n: n.sample_index or 0)
    assert [n.meta["chosen"] for n in sols] == [False, True, False]
    assert res.attempts[0].answer == "4"
    assert [len(mc_of(judgements, s)) for s in sols] == [1, 0, 0]
    assert mc_of(judgements, sols[0])[0].first_wrong_step == 2


async def test_solutions_over_max_steps_are_not_labelled(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_completer(r):
            return "Answer: 4"
        return "a\nb\nc\nAnswer: 4" if i == 0 else "a\nAnswer: 4"

    res = await arun(cfg(tmp_path, {"n": 2, "m": 1, "max_steps": 3}, limit=1),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    _, judgements = await load(tmp_path, res.run_id)
    labelled = [j for j in judgements if j.role == "mc_steps"]
    assert len(labelled) == 1 and labelled[0].meta["steps"] == ["a", "Answer: 4"]
    assert res.attempts[0].stats["mc_skipped"] == 1
    assert "more than 3" in res.attempts[0].stats["note"]


async def test_blank_split_keeps_paragraphs_and_joins_the_prefix_with_them(
        tmp_path: Path) -> None:
    seen: list[str] = []

    def script(r: ChatRequest, i: int) -> str:
        if is_completer(r):
            seen.append(r.messages[-1].content)
            return "Answer: 4"
        return "first line\nstill first\n\nsecond\n\nAnswer: 4"

    res = await arun(cfg(tmp_path, {"n": 1, "m": 1, "split": "blank"}, limit=1),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    _, judgements = await load(tmp_path, res.run_id)
    [j] = [j for j in judgements if j.role == "mc_steps"]
    assert j.meta["steps"] == ["first line\nstill first", "second", "Answer: 4"]
    assert any("still first\n\nsecond\n</solution_prefix>" in s for s in seen)


async def test_budget_stop_labels_whole_solutions_only(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        if is_completer(r):
            return "Answer: 4"
        return "a\nb\nAnswer: 4"

    # 1 generation call + 2 prefixes of solution 0 + 1 of solution 1's 2 prefixes
    res = await arun(cfg(tmp_path, {"n": 2, "m": 2}, limit=1, task_budget={"max_calls": 4}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    a = res.attempts[0]
    assert a.status == "budget_limited" and a.answer == "4"
    nodes, judgements = await load(tmp_path, res.run_id)
    sols = sorted((n for n in nodes if n.operator == "generate"),
                  key=lambda n: n.sample_index or 0)
    assert len(mc_of(judgements, sols[0])) == 1
    assert mc_of(judgements, sols[1]) == []
    assert sols[1].meta["mc_label"] == "incomplete"
    assert sum(1 for n in nodes if n.operator == "rollout" and n.parent_id == sols[1].id) == 2
    assert a.stats["mc_incomplete"] == 1 and "budget" in a.stats["note"]


async def test_budget_that_shrinks_n_leaves_the_prefix_incomplete(tmp_path: Path) -> None:
    def script(r: ChatRequest, i: int) -> str:
        return "Answer: 4" if is_completer(r) else "a\nAnswer: 4"

    # room for the generation and a completer call with fewer than m samples
    res = await arun(cfg(tmp_path, {"n": 1, "m": 8}, limit=1,
                         task_budget={"max_tokens": 1000}, generator={"max_tokens": 100}),
                     models={"scripted": FunctionModel(script)}, suite=SUITE)
    nodes, judgements = await load(tmp_path, res.run_id)
    got = sum(1 for n in nodes if n.operator == "rollout")
    assert 0 < got < 8
    assert [j for j in judgements if j.role == "mc_steps"] == []
    assert res.attempts[0].status == "budget_limited"


async def test_no_verifier_is_a_usage_error(tmp_path: Path) -> None:
    model = FunctionModel(lambda r, i: "a\nAnswer: 4")
    with pytest.raises(UsageError, match="mc_label needs a verifier"):
        await arun(cfg(tmp_path, {"n": 1, "m": 1}, limit=1, verifier="none"),
                   models={"scripted": model}, suite=SUITE)
    no_ref = Suite.of("tiny", [Task(id="t1", prompt="Say hi.", kind="text")])
    with pytest.raises(UsageError, match="mc_label needs a verifier"):
        await arun(cfg(tmp_path, {"n": 1, "m": 1}), models={"scripted": model}, suite=no_ref)


async def test_labels_are_deterministic_and_resume_replays_every_call(tmp_path: Path) -> None:
    suite = load_suite("arithmetic").head(4)
    base = {"model": "sim", "suite": "arithmetic", "limit": 4, "strategy": "mc_label",
            "strategy_params": {"n": 3, "m": 4}, "cache": False, "seed": 5}

    async def labels(store: str, run_id: str | None = None) -> list[tuple[Any, ...]]:
        res = await arun(RunConfig.model_validate({**base, "store": store}), suite=suite,
                         run_id=run_id)
        st = Store.open(store)
        out: list[tuple[Any, ...]] = []
        async with st:
            for t in suite:
                nodes, judgements = await st.load_tree(res.run_id, t.id)
                out += [(n.id, n.text) for n in nodes]
                out += [(j.id, j.first_wrong_step, tuple(j.meta.get("estimates", ())))
                        for j in judgements]
        return out

    one = await labels(str(tmp_path / "a.db"), "r")
    two = await labels(str(tmp_path / "b.db"), "r")
    assert one == two and any(x[1] not in (None, -1) for x in one if len(x) == 3)
    cfg_a = RunConfig.model_validate({**base, "store": str(tmp_path / "a.db")})
    st = Store.open(cfg_a.store)
    async with st:
        attempts = await st.get_attempts("r")
        for a in attempts:
            a.status = "running"
            st.put_attempt(a)
        await st.flush()
        engine = Engine(cfg_a, store=st, suite=suite)
        again = await engine.run("r")
    assert engine.recorded_calls == 0 and engine.replayed_calls == sum(a.calls for a in attempts)
    assert [a.answer for a in again.attempts] == [a.answer for a in attempts]


# ---------------------------------------------------------------- the sim as a completer


def sim_reply(sim: SimModel, task: Task, steps: list[str], n: int,
              offset: int = 0) -> list[str]:
    role = Completer(sim, RunConfig.model_validate({}).generator, Prompts(), seed=1)
    req = role.request(role.messages(task, steps), n=n, offset=offset)
    return [c.text for c in sim.respond(req).completions]


def gsm_like() -> tuple[Suite, Task]:
    task = Task(id="g", kind="math", answer="26",
                prompt="Tom has 3 bags of 4 apples and buys 2 more bags. He finds 6 more. How many does he have?",
                solution="Apples in 3 bags: 3 * 4 = 12.\nApples in 2 more bags: 2 * 4 = 8.\n"
                         "All apples: 12 + 8 = 20.\nAfter finding 6 more: 20 + 6 = 26.\nAnswer: 26")
    return Suite.of("g", [task]), task


def test_sim_completer_continues_a_right_prefix_as_often_as_its_skill_says() -> None:
    suite, task = gsm_like()
    ref = normalise_solution(task.solution or "", task.answer).splitlines()
    for skill, lo, hi in ((0.9, 0.75, 1.0), (0.2, 0.0, 0.45)):
        sim = SimModel(suite, SimParams(skill=skill, task_noise=0.0))
        texts = sim_reply(sim, task, ref[:1], 128)
        right = [t for t in texts if extract_answer("\n".join([ref[0], t])) == "26"]
        # a right continuation is the reference's remaining lines
        assert all(t.splitlines() == ref[1:] for t in right)
        # each of the 3 lines that can go wrong still to write is right with p ** (1/4)
        p = sim.p_correct(task)
        assert abs(len(right) / 128 - p ** 0.75) < 0.15  # 3 of 4 risky lines remain
        assert lo <= len(right) / 128 <= hi


def test_sim_completer_carries_a_prefix_error_to_a_wrong_answer_but_sometimes_recovers() -> None:
    suite, task = gsm_like()
    ref = normalise_solution(task.solution or "", task.answer).splitlines()
    bad = [ref[0], "Apples in 2 more bags: 2 * 4 = 9."]
    assert first_divergence("\n".join(bad), "\n".join(ref)) is not None
    sim = SimModel(suite, SimParams(skill=2.0, task_noise=0.0))  # never slips on its own
    texts = sim_reply(sim, task, bad, 128) + sim_reply(sim, task, bad, 128, offset=128)
    wrong = [t for t in texts if RECOVERY_LINE not in t]
    assert all(extract_answer(t) != "26" for t in wrong)
    assert any("12 + 9 = 21" in t for t in wrong)  # the wrong value is carried forward
    recovered = [t for t in texts if RECOVERY_LINE in t]
    assert 0 < len(recovered) < 20  # 2% of 256: about 5
    assert all(extract_answer(t) == "26" for t in recovered)
    # deterministic per request and sample index
    assert sim_reply(sim, task, bad, 8, offset=3) == texts[3:11]
    none = CompleterHandler(recovery_rate=0.0)
    assert none.matches("<solution_prefix>\nx\n</solution_prefix>")
    assert read_prefix("<solution_prefix>\na\n\nb\n</solution_prefix>") == ["a", "b"]


def test_sim_completer_with_unknown_task_still_answers() -> None:
    suite, _ = gsm_like()
    other = Task(id="x", prompt="Something the sim never saw?", kind="math", answer="1")
    [text] = sim_reply(SimModel(suite), other, ["step"], 1)
    assert "cannot tell" in text or "not sure" in text


async def test_sim_labels_agree_with_truth_more_often_at_m8_than_m1(tmp_path: Path) -> None:
    """30 arithmetic tasks x 4 solutions: more rollouts, fewer false alarms."""
    suite = load_suite("arithmetic")
    truth_sim = SimModel(suite, SimParams())

    async def agreement(m: int) -> tuple[float, float, int]:
        res = await arun(RunConfig.model_validate({
            "model": "sim", "suite": "arithmetic", "strategy": "mc_label",
            "strategy_params": {"n": 4, "m": m}, "cache": False, "seed": 3,
            "store": str(tmp_path / f"m{m}.db"), "concurrency": 8}), suite=suite)
        exact = flag = total = 0
        st = Store.open(str(tmp_path / f"m{m}.db"))
        async with st:
            for t in suite:
                _, judgements = await st.load_tree(res.run_id, t.id)
                for j in judgements:
                    if j.role != "mc_steps":
                        continue
                    truth, _ = true_first_wrong(t, truth_sim._behaviours[t.id],
                                                list(j.meta["steps"]))
                    exact += j.first_wrong_step == truth
                    flag += (j.first_wrong_step != -1) == (truth != -1)
                    total += 1
        return exact / total, flag / total, total

    e1, f1, n1 = await agreement(1)
    e8, f8, n8 = await agreement(8)
    assert n1 == n8 == 120  # the same solutions at every m
    assert e8 >= e1 + 0.1 and f8 >= f1 + 0.1
    assert e8 > 0.7


async def test_against_sim_server_on_loopback(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(RunConfig.model_validate({
            "model": f"openai:sim@{srv.base_url}", "suite": "arithmetic", "limit": 3,
            "strategy": "mc_label", "strategy_params": {"n": 2, "m": 3}, "cache": False,
            "store": str(tmp_path / "s.db"), "seed": 1}))
    assert res.summary["failed"] == 0
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        for t in suite.head(3):
            nodes, judgements = await st.load_tree(res.run_id, t.id)
            sols = [n for n in nodes if n.operator == "generate"]
            labels = [j for j in judgements if j.role == "mc_steps"]
            assert len(sols) == 2 and len(labels) == 2
            for j in labels:
                steps = j.meta["steps"]
                assert len(j.meta["estimates"]) == len(steps) and j.meta["m"] == 3
                kids = [n for n in nodes if n.parent_id == j.node_id and n.operator == "rollout"]
                assert len(kids) == 3 * (len(steps) - 1)


def test_cli_run_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "deliberate", "run", "--strategy", "mc_label", "-p", "n=2",
         "-p", "m=2", "--limit", "2", "--model", "sim", "--store", str(tmp_path / "c.db"),
         "--no-cache"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "accuracy" in r.stdout


def test_bench_quick_writes_what_it_documents(tmp_path: Path) -> None:
    out = tmp_path / "agreement.json"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run([sys.executable, str(REPO / "bench" / "mc_label_agreement.py"), "--quick",
                        "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    data = json.loads(out.read_text())
    arith = data["results"]["arithmetic"]
    assert data["m"] == [1, 4] and set(arith) >= {"1", "4", "rows"}
    assert arith["rows"]["columns"] == ["task", "seed", "steps", "truth", "mc"]
    for m in ("1", "4"):
        e = arith[m]
        assert e["solutions"] == 24 and e["unlabelled"] == 0
        assert e["exact"]["low"] <= e["exact"]["value"] <= e["exact"]["high"]
        rows = arith["rows"]["by_m"][m]
        exact = sum(row[4] == row[3] for row in rows) / len(rows)
        assert e["exact"]["value"] == pytest.approx(exact)  # equal tasks: mean of means
    assert arith["4"]["ratio_vs_m1"]["tokens_per_solution"] > 1
    assert "exact_minus_previous" in arith["4"] and "exact - exact(m=1)" in r.stdout
