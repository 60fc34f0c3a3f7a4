"""The debate discriminator: judges vote over rounds; plurality, tie-breaks, budget, sim."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from deliberate import FunctionModel, RunConfig, Store, Task
from deliberate.config import RoleConfig
from deliberate.engine.context import RoleFactory, TaskContext, TaskTree
from deliberate.engine.runner import arun
from deliberate.models.base import ChatModel, ChatRequest
from deliberate.models.budget import BudgetedModel, Ledger, Limits
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.handlers.debate_judge import SWITCH_RATE, read_finalists
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.parsing import ParseError
from deliberate.roles.debate_judge import DebateJudge, SeenVote, parse_vote
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Generator, Judge
from deliberate.search.debate import DEBATE_TEMPERATURE, DebateOutcome, debate, debate_role
from deliberate.tasks import load_suite
from deliberate.tree import JudgementRecord, NodeRecord

TASK = Task(id="t", prompt="What is 6 * 7?", kind="math", answer="42")


class NullSink:
    def put_node(self, node: NodeRecord) -> None:
        pass

    def put_judgement(self, judgement: JudgementRecord) -> None:
        pass


def make_ctx(model: ChatModel, task: Task = TASK, *, max_calls: int | None = None,
             config: RunConfig | None = None) -> TaskContext:
    """A real task context over ``model``, with a call budget if asked."""
    ledger = Ledger(limits=Limits(max_calls=max_calls))
    bound = BudgetedModel(model, ledger)
    roles = RoleFactory(config or RunConfig(), Prompts(), lambda name: bound, 11)
    return TaskContext(task=task, tree=TaskTree(NullSink(), "run", task),
                       generator=roles.make(Generator, "generator"),
                       judge=roles.make(Judge, "judge"), ledger=ledger, seed=11, roles=roles)


def finalists(ctx: TaskContext, texts: Sequence[str]) -> list[NodeRecord]:
    return [ctx.tree.add(ctx.tree.root, role="generator", operator="generate", key=i, text=t)
            for i, t in enumerate(texts)]


def vote(choice: object, reason: str = "") -> str:
    return json.dumps({"choice": choice, "reason": reason})


def where(r: ChatRequest) -> tuple[int, int]:
    return int(r.tags["round"]), int(r.tags["agent"])


def table(votes: dict[int, list[int]]) -> Callable[[ChatRequest, int], str]:
    """Votes by round (1-based) and agent; the last round's list repeats after it."""
    def script(r: ChatRequest, i: int) -> str:
        if "round" not in r.tags:  # not a debate judge: a plain answer
            return "Answer: 41"
        rnd, agent = where(r)
        row = votes[min(rnd, max(votes))]
        return vote(row[agent], f"reason r{rnd} a{agent}")
    return script


async def run_debate(script: Callable[[ChatRequest, int], str], m: int = 3, *,
                     max_calls: int | None = None, **kw: Any
                     ) -> tuple[DebateOutcome, TaskContext, list[NodeRecord], FunctionModel]:
    model = FunctionModel(script)
    ctx = make_ctx(model, max_calls=max_calls)
    texts = [f"solution {k}\nAnswer: {40 + k}" for k in range(1, m + 1)]
    nodes = finalists(ctx, texts)
    out = await debate(ctx, nodes, texts, **kw)
    return out, ctx, nodes, model


def choices(out: DebateOutcome) -> list[list[int | None]]:
    return [[b.choice for b in rnd] for rnd in out.votes]


def votes_on(ctx: TaskContext, node: NodeRecord) -> list[JudgementRecord]:
    return [j for j in ctx.tree.judgements.get(node.id, []) if j.role == "debate_judge"]


# ---------------------------------------------------------------- the vote's contract


@pytest.mark.parametrize(("text", "choice"), [
    ('{"choice": 2, "reason": "r"}', 2),
    ('Sure. {"choice": "Finalist 3", "reason": "it checks out"}', 3),
    ('```json\n{"reason": "r", "choice": "#1"}\n```', 1),
    ('{"choice": 2.0}', 2),
])
def test_votes_are_read_as_models_write_them(text: str, choice: int) -> None:
    assert parse_vote(text, 3).choice == choice


@pytest.mark.parametrize(("text", "message"), [
    ('{"choice": 4, "reason": "r"}', "names no finalist"),
    ('{"choice": 0}', "names no finalist"),
    ('{"choice": true}', "not true/false"),
    ('{"choice": "the second"}', "finalist number"),
    ("I like the second one.", "no JSON object"),
])
def test_unreadable_votes_are_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_vote(text, 3)


# ---------------------------------------------------------------- the count


async def test_plurality_wins_and_every_vote_is_a_judgement_on_its_choice() -> None:
    out, ctx, nodes, model = await run_debate(table({1: [2, 2, 1, 3, 2]}), rounds=1)
    assert out.winner == 1
    assert out.tallies == [[1, 3, 1]] and out.final == [1, 3, 1]
    assert "finalist 2 of 3 with 3 of 5 votes" in out.note
    assert [len(votes_on(ctx, n)) for n in nodes] == [1, 3, 1]
    j = votes_on(ctx, nodes[2])[0]
    assert (j.verdict, j.critique, j.source) == ("vote", "reason r1 a3", "model:scripted")
    assert j.meta["round"] == 1 and j.meta["agent"] == 3 and j.meta["choice"] == 3
    assert j.meta["finalists"] == [n.id for n in nodes]
    assert {b.judgement_id for rnd in out.votes for b in rnd} == {
        j.id for n in nodes for j in votes_on(ctx, n)}
    # Round 1: one prompt for all, but every judge is its own sample.
    assert len({tuple(m.content for m in r.messages) for r in model.requests}) == 1
    assert sorted(r.sample_offset for r in model.requests) == [0, 1, 2, 3, 4]
    assert all(r.tags["node"] == nodes[0].id for r in model.requests)


async def test_judges_see_each_others_votes_and_revise() -> None:
    def follow(r: ChatRequest, i: int) -> str:
        """Round 1 from a table; later, the plurality of the votes shown (ties: lower)."""
        rnd, agent = where(r)
        if rnd == 1:
            return vote([1, 2, 2, 1, 3][agent], f"because r1 a{agent}")
        shown = [int(c) for c in re.findall(r'<vote judge="\d+" choice="(\d)">',
                                            r.messages[-1].content)]
        best = min(set(shown), key=lambda c: (-shown.count(c), c))
        return vote(best, f"follow r{rnd} a{agent}")

    out, _, _, model = await run_debate(follow, rounds=4)
    assert choices(out) == [[0, 1, 1, 0, 2], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    assert out.winner == 0 and out.stopped_by == "agreement"
    assert "stopped early: unanimous" in out.note
    assert len(model.requests) == 15  # three rounds of five; the fourth was not needed
    first = [r for r in model.requests if where(r)[0] == 1]
    assert not any("<other_votes>" in r.messages[-1].content for r in first)
    r2a0 = next(r for r in model.requests if where(r) == (2, 0)).messages[-1].content
    assert '<your_vote choice="1">\nbecause r1 a0\n</your_vote>' in r2a0
    shown = re.findall(r'<vote judge="(\d)" choice="(\d)">\n(.*?)\n</vote>', r2a0)
    assert shown == [("2", "2", "because r1 a1"), ("3", "2", "because r1 a2"),
                     ("4", "1", "because r1 a3"), ("5", "3", "because r1 a4")]
    r3a4 = next(r for r in model.requests if where(r) == (3, 4)).messages[-1].content
    assert "follow r2 a0" in r3a4 and "because" not in r3a4  # only the latest votes
    assert len({r.sample_offset for r in model.requests}) == 15


async def test_a_unanimous_panel_stops_unless_told_to_run_every_round() -> None:
    out, _, _, model = await run_debate(table({1: [3] * 5}), rounds=3)
    assert (out.winner, len(model.requests), out.stopped_by) == (2, 5, "agreement")
    out, _, _, model = await run_debate(table({1: [3] * 5}), rounds=3,
                                        stop_on_agreement=False)
    assert (out.winner, len(model.requests), out.stopped_by) == (2, 15, None)
    assert out.tallies == [[0, 0, 5]] * 3


@pytest.mark.parametrize(("votes", "agents", "winner"), [
    ({1: [2, 2, 2, 1, 3], 2: [1, 1, 2, 2, 3]}, 5, 1),  # tied at the end: round 1 says 2
    ({1: [1, 1, 1, 2, 3], 2: [1, 1, 2, 2, 3]}, 5, 0),  # tied at the end: round 1 says 1
    ({1: [3, 2, 3, 2]}, 4, 1),                         # one round, tied: earlier finalist
    ({1: [3, 3, 2, 2], 2: [3, 3, 2, 2]}, 4, 1),        # tied throughout: earlier finalist
    ({1: [3, 3, 2, 1], 2: [2, 3, 1, 1], 3: [2, 2, 3, 3]}, 4, 2),  # back two rounds
])
async def test_ties_go_to_earlier_rounds_then_to_the_earlier_finalist(
        votes: dict[int, list[int]], agents: int, winner: int) -> None:
    out, _, _, _ = await run_debate(table(votes), agents=agents, rounds=max(votes),
                                    stop_on_agreement=False)
    assert out.winner == winner


async def test_an_unreadable_vote_is_repaired_once_then_recorded_as_a_failure() -> None:
    def script(r: ChatRequest, i: int) -> str:
        rnd, agent = where(r)
        if agent == 1:
            return "I like the second one."
        if agent == 2 and "repair" not in r.tags:
            return vote(7, "out of range")
        return vote(1 if agent != 4 else 2, f"r{rnd} a{agent}")

    out, ctx, nodes, model = await run_debate(script, rounds=1)
    asked = [where(r)[1] for r in model.requests]
    assert sorted(asked) == [0, 1, 1, 2, 2, 3, 4]  # agents 1 and 2 asked twice
    repairs = [r for r in model.requests if r.tags.get("repair") == "1"]
    assert {where(r)[1] for r in repairs} == {1, 2}
    fix2 = next(r for r in repairs if where(r)[1] == 2).messages
    assert fix2[-2].content == vote(7, "out of range")
    assert "names no finalist" in fix2[-1].content and "from 1 to 3" in fix2[-1].content
    failed = [j for j in votes_on(ctx, nodes[0]) if j.verdict == "parse_failure"]
    assert len(failed) == 1 and failed[0].meta["agent"] == 1
    assert failed[0].meta["raw"] == "I like the second one." and failed[0].critique
    repaired = [j for n in nodes for j in votes_on(ctx, n) if j.meta.get("repaired")]
    assert sorted(j.meta["agent"] for j in repaired) == [1, 2]
    assert out.final == [3, 1, 0] and out.winner == 0
    assert "1 unreadable" in out.note


async def test_no_readable_vote_means_no_winner() -> None:
    out, ctx, nodes, _ = await run_debate(lambda r, i: "no idea", rounds=2, agents=3)
    assert out.winner is None and "no readable vote" in out.note
    assert len(out.votes) == 2 and all(b.choice is None for rnd in out.votes for b in rnd)
    assert len(votes_on(ctx, nodes[0])) == 6


async def test_a_failed_last_round_falls_back_on_the_round_before() -> None:
    def script(r: ChatRequest, i: int) -> str:
        return vote(3) if where(r)[0] == 1 else "no idea"

    out, _, _, _ = await run_debate(script, rounds=2, agents=3, stop_on_agreement=False)
    assert out.final == [0, 0, 0] and out.winner == 2


async def test_the_budget_stops_the_debate_and_the_votes_so_far_decide() -> None:
    script = table({1: [1, 1, 2, 2, 3], 2: [3, 3, 3, 3, 3]})
    out, ctx, _, model = await run_debate(script, max_calls=7, rounds=3)
    assert len(model.requests) == 7 and ctx.ledger.limited
    assert choices(out) == [[0, 0, 1, 1, 2], [2, 2]]
    # judges 0 and 1 changed to finalist 3; 2..4 keep their round-1 votes
    assert out.final == [0, 2, 3] and out.winner == 2
    assert out.stopped_by == "budget" and "stopped by the budget" in out.note
    assert out.tallies == [[2, 2, 1], [0, 0, 2]]


async def test_a_budget_spent_before_the_debate_gives_no_winner() -> None:
    model = FunctionModel(table({1: [1, 1, 1]}))
    ctx = make_ctx(model, max_calls=1)
    await ctx.sample_candidates(1)  # spends the only call
    nodes = finalists(ctx, ["a", "b"])
    out = await debate(ctx, nodes, ["a", "b"], agents=3)
    assert out.winner is None and out.votes == [] and "budget" in out.note
    assert len(model.requests) == 1


async def test_a_single_finalist_wins_without_a_call() -> None:
    out, _, _, model = await run_debate(table({1: [1] * 5}), m=1)
    assert out.winner == 0 and model.requests == []


async def test_bad_arguments_are_errors() -> None:
    model = FunctionModel(table({1: [1] * 5}))
    ctx = make_ctx(model)
    nodes = finalists(ctx, ["a", "b"])
    with pytest.raises(ValueError, match="one text per finalist"):
        await debate(ctx, nodes, ["a"])
    with pytest.raises(ValueError, match="at least one finalist"):
        await debate(ctx, [], [])
    with pytest.raises(ValueError, match="at least one judge"):
        await debate(ctx, nodes, ["a", "b"], agents=0)


def test_judges_sample_unless_their_own_settings_say_otherwise() -> None:
    model = FunctionModel(lambda r, i: "")
    assert debate_role(make_ctx(model)).config.temperature == DEBATE_TEMPERATURE
    warm = RunConfig.model_validate({"judge": {"temperature": 0.3}})
    assert debate_role(make_ctx(model, config=warm)).config.temperature == 0.3
    greedy = RunConfig.model_validate({"roles": {"debate_judge": {"temperature": 0.0}}})
    assert debate_role(make_ctx(model, config=greedy)).config.temperature == 0.0


# ---------------------------------------------------------------- the sim as a judge


def arithmetic() -> tuple[SimModel, list[Task]]:
    suite = load_suite("arithmetic")
    return SimModel(suite, SimParams()), list(suite)


def with_answer(task: Task, value: str) -> str:
    assert task.solution is not None and task.answer is not None
    return task.solution.replace(f"Answer: {task.answer}", f"Answer: {value}")


def sim_judge(params: SimParams) -> tuple[DebateJudge, Task]:
    suite = load_suite("arithmetic")
    model = SimModel(suite, params)
    return DebateJudge(model, RoleConfig(temperature=0.7), Prompts(), 0), next(iter(suite))


async def first_votes(judge: DebateJudge, task: Task, texts: list[str], n: int) -> list[int]:
    out = []
    for k in range(n):
        res = await judge.vote(task, texts, sample=k)
        assert res.value is not None
        out.append(res.value.choice)
    return out


async def test_sim_first_votes_follow_its_sensitivity() -> None:
    perfect, task = sim_judge(SimParams(sensitivity=1.0))
    right, w1, w2 = (with_answer(task, v) for v in (task.answer or "", "9991", "9992"))
    assert set(await first_votes(perfect, task, [w1, right, w2], 30)) == {2}
    blind, _ = sim_judge(SimParams(sensitivity=0.0))
    assert set(await first_votes(blind, task, [w1, right, w2], 30)) == {1, 3}
    usual, _ = sim_judge(SimParams(sensitivity=0.8))
    got = await first_votes(usual, task, [right, w1], 200)
    assert 0.7 <= got.count(1) / 200 <= 0.9
    # all wrong: no signal, any finalist
    assert set(await first_votes(usual, task, [w1, w2], 40)) == {1, 2}
    # the reading of the prompt is the role's own template
    prompt = usual.messages(task, [right, w1])[-1].content
    assert read_finalists(prompt) == [right, w1]


async def test_sim_later_votes_keep_or_switch_to_the_others_plurality() -> None:
    judge, task = sim_judge(SimParams(sensitivity=1.0))
    right, wrong = with_answer(task, task.answer or ""), with_answer(task, "9991")
    own = SeenVote(0, 2, "finalist 2 is right")
    against = [SeenVote(1, 1, "no, 1"), SeenVote(2, 1, "1 again"), SeenVote(3, 2, "2")]
    switched = 0
    for k in range(200):
        res = await judge.vote(task, [right, wrong], round=2, own=own, others=against,
                               sample=k)
        assert res.value is not None and res.value.choice in (1, 2)
        switched += res.value.choice == 1
        assert f"finalist {res.value.choice}" in res.value.reason
    assert abs(switched / 200 - SWITCH_RATE) < 0.1
    agreeing = [SeenVote(1, 2, "2"), SeenVote(2, 1, "1"), SeenVote(3, 2, "2")]
    for k in range(20):
        res = await judge.vote(task, [right, wrong], round=2, own=own, others=agreeing,
                               sample=k)
        assert res.value is not None and res.value.choice == 2  # the plurality is its own
    again = await judge.vote(task, [right, wrong], round=2, own=own, others=against, sample=3)
    once = await judge.vote(task, [right, wrong], round=2, own=own, others=against, sample=3)
    assert again.raw == once.raw


async def test_sim_debate_picks_a_right_finalist_far_more_often_than_chance() -> None:
    sim, tasks = arithmetic()

    async def run(seed_tasks: list[Task]) -> list[tuple[int | None, int]]:
        out = []
        for k, task in enumerate(seed_tasks):
            ctx = make_ctx(sim, task)
            texts = [with_answer(task, "9991"), with_answer(task, "9992")]
            at = k % 3
            texts.insert(at, with_answer(task, task.answer or ""))
            res = await debate(ctx, finalists(ctx, texts), texts)
            out.append((res.winner, at))
        return out

    results = await run(tasks[:30])
    right = sum(w == at for w, at in results) / len(results)
    assert right > 0.65  # chance is 1/3, and the right one moves between positions
    assert results == await run(tasks[:30])  # deterministic


async def test_debate_discriminator_through_the_openai_client_on_loopback(
        tmp_path: Path) -> None:
    suite = load_suite("arithmetic")
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(RunConfig.model_validate({
            "suite": "arithmetic", "limit": 3, "strategy": "mcts",
            "strategy_params": {"discriminator": "debate", "iterations": 3,
                                "debate_agents": 3, "debate_rounds": 2},
            "model": f"openai:sim@{srv.base_url}", "store": str(tmp_path / "s.db"),
            "cache": False, "seed": 2}))
    assert res.summary["failed"] == 0
    debated = 0
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        for a in res.attempts:
            _, judgements = await st.load_tree(res.run_id, a.task_id)
            calls = await st.load_calls(res.run_id, a.task_id)
            votes = [j for j in judgements if j.role == "debate_judge"]
            if not votes:  # a single finalist needs no debate
                continue
            debated += 1
            assert {j.meta["agent"] for j in votes} == {0, 1, 2}
            ids = {c.id for c in calls.values()}
            assert all(set(j.meta["call_ids"]) <= ids for j in votes)
            assert all(j.meta["call_ids"] for j in votes)
            last = max(j.meta["round"] for j in votes)
            counts: dict[str, int] = {}
            for j in votes:
                if j.meta["round"] == last and j.verdict == "vote":
                    counts[j.node_id] = counts.get(j.node_id, 0) + 1
            assert a.final_node_id in counts
            assert counts[a.final_node_id] == max(counts.values())
    assert debated >= 2
