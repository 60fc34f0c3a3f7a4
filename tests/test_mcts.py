"""MCTS: selection rules, virtual loss, backpropagation, stops, discriminators, runs on sim."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.engine.context import TaskContext, TaskTree
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.parsing import ParseError
from deliberate.roles.prompts import Prompts
from deliberate.roles.value import ActionRanker, parse_ranking, rank_prior
from deliberate.search.base import Feedback, SearchSpace, Valuation
from deliberate.strategies._search import discriminate
from deliberate.strategies.mcts import (
    SearchState,
    TreeSearch,
    backpropagate,
    select_child,
    select_path,
)
from deliberate.tasks import load_suite
from deliberate.tree import JudgementRecord, NodeRecord

REPO = Path(__file__).resolve().parents[1]


class NullSink:
    def put_node(self, node: NodeRecord) -> None:
        pass

    def put_judgement(self, judgement: JudgementRecord) -> None:
        pass


@dataclass
class FakeCtx:
    """Just what the search reads: the tree, the budget flag, verifier/judge hooks."""

    tree: TaskTree
    budget_limited: bool = False
    passes: set[str] = field(default_factory=set)
    judge_scores: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scoring_verifier: object | None = None

    async def verify_node(self, node: NodeRecord, *, text: str | None = None
                          ) -> JudgementRecord:
        seen = node.text if text is None else text
        return self.tree.judge(node, source="verifier:fake", role="verifier",
                               verdict="correct" if seen in self.passes else "incorrect")

    async def judge_nodes(self, nodes: list[NodeRecord], *, texts: list[str] | None = None
                          ) -> list[JudgementRecord | None]:
        seen = texts if texts is not None else [n.text for n in nodes]
        return [self.tree.judge(n, source="model:fake", role="judge",
                                score=self.judge_scores.get(t, 0.0), scale=(0.0, 1.0))
                for n, t in zip(nodes, seen, strict=True)]


def fake_ctx() -> FakeCtx:
    return FakeCtx(TaskTree(NullSink(), "run", Task(id="t", prompt="p", kind="math", answer="1")))


def as_ctx(ctx: FakeCtx) -> TaskContext:
    return cast(TaskContext, ctx)


def kid(ctx: FakeCtx, parent: NodeRecord, text: str, visits: int = 0, value: float | None = None,
        **meta: Any) -> NodeRecord:
    n = ctx.tree.add(parent, role="generator", operator="x", key=text, text=text, meta=meta)
    n.visits, n.value = visits, value
    return n


@dataclass
class ScriptSpace:
    """Children named parent/i; values come from a table; optional per-node delays."""

    delays: dict[str, float] = field(default_factory=dict)
    name: str = "script"
    expanded: list[str] = field(default_factory=list)

    async def expand(self, ctx: TaskContext, node: NodeRecord, k: int, *,
                     feedback: Feedback | None = None, key: object = 0) -> list[NodeRecord]:
        self.expanded.append(node.text)
        await asyncio.sleep(self.delays.get(node.text, 0.0))
        return [ctx.tree.add(node, role="generator", operator="x", key=i,
                             text=f"{node.text}/{i}") for i in range(k)]

    def is_terminal(self, ctx: TaskContext, node: NodeRecord) -> bool:
        return node.parent_id is not None

    def can_expand(self, ctx: TaskContext, node: NodeRecord) -> bool:
        return True

    def candidate(self, ctx: TaskContext, node: NodeRecord) -> str:
        return node.text


@dataclass
class TableValue:
    table: dict[str, float]
    default: float = 0.5
    name: str = "table"

    async def evaluate(self, ctx: TaskContext, space: SearchSpace,
                       node: NodeRecord) -> Valuation | None:
        return Valuation(self.table.get(node.text, self.default), "e", f"advice {node.text}")


def search(ctx: FakeCtx, value: dict[str, float], **kw: Any) -> TreeSearch:
    opts: dict[str, Any] = {"k": 2, "max_depth": 4, "selection": "uct", "c": 1.41,
                            "parallel": 1, "iterations": 10, "threshold": None,
                            "finished": None}
    space = kw.pop("space", ScriptSpace())
    opts.update(kw)
    return TreeSearch(as_ctx(ctx), space, TableValue(value), **opts)


# ---------------------------------------------------------------- selection rules


def hand_tree() -> tuple[FakeCtx, NodeRecord, NodeRecord, NodeRecord]:
    ctx = fake_ctx()
    root = ctx.tree.root
    root.visits = 10
    a = kid(ctx, root, "A", 4, 0.5, prior=0.6)
    b = kid(ctx, root, "B", 2, 0.25, prior=0.1)
    c = kid(ctx, root, "C", 4, 0.75, prior=0.3)
    return ctx, a, b, c


def test_uct_order_by_hand() -> None:
    ctx, _, b, c = hand_tree()
    st = SearchState()
    # c=1.41, ln 10 = 2.3026: A .5+1.41*sqrt(.5756)=1.570, B .25+1.41*sqrt(1.1513)=1.763,
    # C .75+1.41*sqrt(.5756)=1.820 -> C
    assert select_child(as_ctx(ctx), st, ctx.tree.root, rule="uct", c=1.41) is c
    # c=2: A 2.017, B 2.396, C 2.267 -> B (exploration wins)
    assert select_child(as_ctx(ctx), st, ctx.tree.root, rule="uct", c=2.0) is b
    # c=0: pure exploitation -> C
    assert select_child(as_ctx(ctx), st, ctx.tree.root, rule="uct", c=0.0) is c
    # an unvisited child comes first
    d = kid(ctx, ctx.tree.root, "D")
    assert select_child(as_ctx(ctx), st, ctx.tree.root, rule="uct", c=1.41) is d


def test_puct_order_by_hand() -> None:
    ctx, a, b, c = hand_tree()
    st = SearchState()
    # sqrt(10)=3.1623: A .5+1.41*.6*3.1623/5=1.035, B .25+1.41*.1*3.1623/3=0.399,
    # C .75+1.41*.3*3.1623/5=1.018 -> A (the prior outweighs C's higher mean)
    assert select_child(as_ctx(ctx), st, ctx.tree.root, rule="puct", c=1.41) is a
    for n in (a, b, c):
        del n.meta["prior"]
    # uniform prior 1/3: A .797, B .745, C 1.047 -> C
    assert select_child(as_ctx(ctx), st, ctx.tree.root, rule="puct", c=1.41) is c


def test_virtual_loss_spreads_three_rollouts_over_three_leaves() -> None:
    ctx = fake_ctx()
    root = ctx.tree.root
    root.visits = 3
    leaves = [kid(ctx, root, t, 1, 0.5) for t in "ABC"]
    st = SearchState(expanded={root.id})
    picked = []
    for _ in range(3):
        path = select_path(as_ctx(ctx), st, rule="uct", c=1.41, max_depth=4)
        assert path is not None
        for n in path:  # the virtual loss, as the search applies it (but not "expanding")
            st.pending[n.id] = st.pending.get(n.id, 0) + 1
        picked.append(path[-1])
    assert picked == leaves  # three different leaves
    plain = SearchState(expanded={root.id})
    same = [select_path(as_ctx(ctx), plain, rule="uct", c=1.41, max_depth=4) for _ in range(3)]
    assert all(p is not None and p[-1] is leaves[0] for p in same)  # without it: A thrice


async def test_parallel_search_launches_distinct_leaves_and_ignores_timing() -> None:
    values = {"p/0": 0.5, "p/1": 0.5, "p/2": 0.5}
    runs = []
    for delays in ({}, {"p/0": 0.02, "p/1": 0.0, "p/2": 0.01}):
        ctx = fake_ctx()
        s = search(ctx, values, k=3, parallel=3, iterations=7, space=ScriptSpace(delays=delays))
        await s.run()
        assert s.selected[0] == ctx.tree.root.id
        texts = [ctx.tree.nodes[i].text for i in s.selected]
        assert texts[1:4] == ["p/0", "p/1", "p/2"]  # in flight together, spread by virtual loss
        runs.append((texts, sorted((n.text, n.visits, n.value) for n in ctx.tree.nodes.values())))
    assert runs[0] == runs[1]  # completion in launch order: latencies change nothing
    seq_ctx = fake_ctx()
    seq = search(seq_ctx, {"p/0": 0.9, "p/1": 0.1, "p/2": 0.1}, k=3, parallel=1, iterations=3)
    await seq.run()
    # sequential: rollout 2 takes p/0 (highest value, all visited once); then root N=6,
    # p/0 N=4 mean (.9+3*.5)/4=.6 -> .6+1.41*sqrt(ln6/4)=1.544; p/1 .1+1.41*sqrt(ln6)=1.987
    assert [seq_ctx.tree.nodes[i].text for i in seq.selected] == ["p", "p/0", "p/1"]


# ---------------------------------------------------------------- backpropagation


async def test_backpropagated_means_exactly() -> None:
    ctx = fake_ctx()
    s = search(ctx, {"p/0": 0.2, "p/1": 0.6, "p/1/0": 1.0, "p/1/1": 0.0}, iterations=2)
    await s.run()
    by = {n.text: n for n in ctx.tree.nodes.values()}
    # rollout 2 picks p/1: UCT .6+1.41*sqrt(ln2) = 1.774 > .2+1.174 = 1.374
    assert [ctx.tree.nodes[i].text for i in s.selected] == ["p", "p/1"]
    assert by["p/1"].visits == 3 and by["p/1"].value == pytest.approx((0.6 + 1.0 + 0.0) / 3)
    assert by["p"].visits == 4 and by["p"].value == pytest.approx((0.2 + 0.6 + 1.0 + 0.0) / 4)
    assert by["p/0"].visits == 1 and by["p/0"].value == pytest.approx(0.2)
    assert by["p/1/0"].meta["reward"] == 1.0


def test_backpropagate_running_mean() -> None:
    ctx = fake_ctx()
    a = kid(ctx, ctx.tree.root, "A")
    for v in (0.3, 0.9, 0.0):
        backpropagate(as_ctx(ctx), [ctx.tree.root, a], v)
    assert a.visits == 3 and a.value == pytest.approx(0.4)


# ---------------------------------------------------------------- stopping rules


async def test_stop_on_iterations() -> None:
    ctx = fake_ctx()
    stats = await search(ctx, {}, iterations=3).run()
    assert stats.stopped_by == "iterations" and stats.iterations == 3 and stats.expansions == 3


async def test_stop_on_threshold() -> None:
    ctx = fake_ctx()
    stats = await search(ctx, {"p/1/0": 0.99}, iterations=50, threshold=0.975).run()
    assert stats.stopped_by == "threshold"
    assert any(n.meta.get("reward") == 0.99 for n in ctx.tree.nodes.values())
    assert stats.iterations < 50


async def test_stop_on_finished_count() -> None:
    ctx = fake_ctx()
    s = search(ctx, {}, iterations=50, finished=5)
    stats = await s.run()
    assert stats.stopped_by == "finished" and len(s.candidates) == 6  # 3 expansions of 2
    assert stats.iterations == 3


async def test_stop_on_budget_and_on_exhausted_tree() -> None:
    ctx = fake_ctx()

    class Budget(ScriptSpace):
        async def expand(self, ctx: TaskContext, node: NodeRecord, k: int, *,
                         feedback: Feedback | None = None,
                         key: object = 0) -> list[NodeRecord]:
            made = await super().expand(ctx, node, k, feedback=feedback, key=key)
            if len(self.expanded) == 2:
                cast(FakeCtx, ctx).budget_limited = True
            return made

    stats = await search(ctx, {}, iterations=50, space=Budget()).run()
    assert stats.stopped_by == "budget" and stats.iterations == 2
    ctx2 = fake_ctx()
    stats2 = await search(ctx2, {}, iterations=50, max_depth=1, k=2).run()
    assert stats2.stopped_by == "exhausted" and stats2.iterations == 1


# ---------------------------------------------------------------- discriminators


def disc_tree() -> tuple[FakeCtx, list[NodeRecord]]:
    ctx = fake_ctx()
    root = ctx.tree.root
    a = kid(ctx, root, "A", reward=0.9)
    a0 = kid(ctx, a, "A0", reward=0.9)
    b = kid(ctx, root, "B", reward=0.1)
    b0 = kid(ctx, b, "B0", reward=0.95)
    return ctx, [a, a0, b, b0]


async def test_each_discriminator() -> None:
    ctx, cands = disc_tree()
    a, a0, _, b0 = cands
    # mean trajectory: A .9, A0 .9, B .1, B0 .525 -> A (tie with A0 to the earlier)
    assert (await discriminate(as_ctx(ctx), ScriptSpace(), cands, "mean_trajectory"))[0] is a
    assert (await discriminate(as_ctx(ctx), ScriptSpace(), cands, "best_reward"))[0] is b0
    ctx.scoring_verifier = object()
    ctx.passes = {"A0"}
    # by reward B0 .95, A .9, A0 .9: the first that passes is A0
    assert (await discriminate(as_ctx(ctx), ScriptSpace(), cands, "verifier"))[0] is a0
    ctx.passes = set()
    chosen, note = await discriminate(as_ctx(ctx), ScriptSpace(), cands, "verifier")
    assert chosen is b0 and "no candidate passed" in note
    # judge sees the top 3 by mean trajectory (A, A0, B0), not B
    ctx.judge_scores = {"B0": 0.8, "A": 0.3, "A0": 0.5, "B": 1.0}
    assert (await discriminate(as_ctx(ctx), ScriptSpace(), cands, "judge", judge_top=3))[0] is b0
    assert (await discriminate(as_ctx(ctx), ScriptSpace(), cands, "judge", judge_top=2))[0] is a0


# ---------------------------------------------------------------- runs on sim


def config(tmp_path: Path, model: str = "sim", **kw: Any) -> RunConfig:
    base: dict[str, Any] = {"suite": "arithmetic", "limit": 4, "strategy": "mcts",
                            "strategy_params": {"iterations": 4, "k": 2}, "model": model,
                            "store": str(tmp_path / "runs.db"), "cache": False, "seed": 3}
    base.update(kw)
    return RunConfig.model_validate(base)


async def tree_of(tmp_path: Path, run_id: str, task_id: str) -> list[tuple[Any, ...]]:
    st = Store.open(str(tmp_path / "runs.db"))
    async with st:
        nodes, _ = await st.load_tree(run_id, task_id)
    text = {n.id: n.text for n in nodes}  # ids embed the run id; compare by content
    return sorted((text.get(n.parent_id or "", ""), n.depth, n.text, n.visits, n.value,
                   bool(n.meta.get("chosen"))) for n in nodes)


@pytest.mark.parametrize("parallel", [1, 3])
async def test_deterministic_under_a_seed_on_sim(tmp_path: Path, parallel: int) -> None:
    params = {"iterations": 6, "k": 2, "parallel": parallel}
    r1 = await arun(config(tmp_path / "a", strategy_params=params))
    r2 = await arun(config(tmp_path / "b", strategy_params=params))
    assert [(a.answer, a.correct) for a in r1.attempts] == [(a.answer, a.correct)
                                                             for a in r2.attempts]
    t1 = await tree_of(tmp_path / "a", r1.run_id, "arith-01")
    t2 = await tree_of(tmp_path / "b", r2.run_id, "arith-01")
    assert t1 == t2
    assert sum(x[5] for x in t1) >= 2  # a chosen path: root and at least one node
    assert len(t1) > 3


async def test_runs_through_sim_server(tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(config(tmp_path, f"openai:sim@{srv.base_url}", limit=2))
    assert all(a.answer is not None for a in res.attempts)
    st = Store.open(str(tmp_path / "runs.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "arith-01")
    assert any(n.operator == "refine" for n in nodes)
    values = [j for j in judgements if j.role == "value"]
    assert values and all(j.scale_min == -100 and j.scale_max == 100 for j in values)
    assert all("advice" in j.meta for j in values if j.verdict != "parse_failure")


@pytest.mark.parametrize("budget", [1500, 4000])
async def test_task_token_budget_never_exceeded(tmp_path: Path, budget: int) -> None:
    res = await arun(config(tmp_path, task_budget={"max_tokens": budget},
                            strategy_params={"iterations": 30, "k": 3, "parallel": 2,
                                             "threshold": None}))
    for a in res.attempts:
        assert a.prompt_tokens + a.completion_tokens <= budget
    assert any(a.status == "budget_limited" for a in res.attempts)
    assert all(a.answer is not None for a in res.attempts)  # best so far kept


def test_cli_run_subprocess(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "deliberate", "run", "--strategy", "mcts", "-p", "iterations=5",
         "--limit", "2", "--model", "sim", "--store", str(tmp_path / "c.db"), "--no-cache"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "accuracy" in r.stdout


# ---------------------------------------------------------------- Agent Q ranking prior


def test_rank_prior_and_parse() -> None:
    # ranking [3, 1, 2]: weights 1, 1/2, 1/3 for 3, 1, 2 -> sum 11/6
    assert rank_prior([3, 1, 2]) == pytest.approx([3 / 11, 2 / 11, 6 / 11])
    with pytest.raises(ParseError, match="each of the candidates"):
        parse_ranking('{"ranking": [1, 1, 2]}', 3)


async def test_generator_ranking_becomes_the_puct_prior(tmp_path: Path) -> None:
    suite = Suite.of("tiny", [Task(id="t1", prompt="What is 2 + 2?", kind="math", answer="4")])
    ranked: list[str] = []

    def script(r: ChatRequest, i: int) -> str:
        user = r.messages[-1].content
        if "<rank_actions>" in user:
            ranked.append(user)
            return json.dumps({"reason": "r", "ranking": [3, 1, 2]})
        if "<value_request>" in user:
            return json.dumps({"score": 0, "explanation": "e", "advice": "a"})
        if "<critique>" in user:
            return "Answer: 4"
        return f"Answer: {r.sample_offset + i}"

    rc = RunConfig.model_validate({
        "model": "scripted", "store": str(tmp_path / "s.db"), "cache": False, "suite": "tiny",
        "strategy": "mcts", "strategy_params": {"iterations": 2, "k": 3, "selection": "puct",
                                                "prior": "rank", "threshold": None}})
    res = await arun(rc, models={"scripted": FunctionModel(script)}, suite=suite)
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t1")
    root_kids = sorted((n for n in nodes if n.depth == 1), key=lambda n: n.sample_index or 0)
    assert [n.meta["prior"] for n in root_kids] == pytest.approx([3 / 11, 2 / 11, 6 / 11])
    # ranking [3, 1, 2] (1-based) puts candidate 3 (sample 2) first: 6/11. With equal values
    # (0.5 each) PUCT follows the prior, so sample 2 is expanded next
    expanded = [n for n in nodes if n.depth == 2]
    assert expanded and all(n.parent_id == root_kids[2].id for n in expanded)
    rankings = [j.meta["ranking"] for j in judgements if j.role == "rank_actions"]
    assert rankings and rankings[0] == [3, 1, 2]
    assert len(ranked) == 2


def test_sim_ranks_right_before_wrong() -> None:
    suite = load_suite("arithmetic")
    task = suite.tasks[0]
    sim = SimModel(suite, SimParams(sensitivity=1.0, specificity=1.0))
    role = ActionRanker(sim, RunConfig.model_validate({}).role("generator"), Prompts(), seed=1)
    wrong = f"Answer: {int(str(task.answer)) + 3}"
    req = role.request(role.messages(task, [wrong, f"Answer: {task.answer}", wrong]))
    assert parse_ranking(sim.respond(req).texts[0], 3).ranking == [2, 1, 3]


async def test_search_statistics_are_recorded_on_the_attempt(tmp_path: Path) -> None:
    from deliberate import RunConfig
    from deliberate.engine.runner import arun

    res = await arun(RunConfig(suite="arithmetic", limit=1, strategy="mcts",
                               strategy_params={"iterations": 3}, model="sim", cache=False,
                               store=str(tmp_path / "s.db")))
    search = res.attempts[0].stats["search"]
    assert search["iterations"] >= 1 and search["stopped_by"]
    assert res.attempts[0].stats["nodes"] > 1
