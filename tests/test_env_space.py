"""A user's environment as a search space: loading, replay, expansion, the policy role,
the environment's reward, the Blocksworld example and the sim policy."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from deliberate import FunctionModel, RunConfig, Store, Task, arun, build_model
from deliberate.engine.context import RoleFactory, TaskContext, TaskTree
from deliberate.errors import ConfigError, UnknownNameError
from deliberate.models.base import ChatModel, ChatRequest
from deliberate.models.budget import BudgetedModel, Ledger, Limits
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.handlers.env_policy import read_legal, read_taken, wanted
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.parsing import ParseError
from deliberate.roles.env_policy import EnvPolicy, choice_prior, parse_choice
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Generator, Judge
from deliberate.search.base import Feedback
from deliberate.search.env import EnvReward, EnvSpace, checked_reward, load_environment
from deliberate.search.step_space import StepSpace
from deliberate.tasks import load_suite
from deliberate.tree import JudgementRecord, NodeRecord

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "blocksworld"
BW_ENV = f"{EXAMPLE / 'blocksworld.py'}:Blocksworld"
BW_TASKS = f"jsonl:{EXAMPLE / 'tasks.jsonl'}"


# ---------------------------------------------------------------- a tiny environment


@dataclass(frozen=True)
class Count:
    value: int
    target: int


class Counter:
    """Reach ``target`` from ``start`` by adding 1, 2 or 3 or doubling, never overshooting;
    ``jump`` falls to -1, a dead end with no action. Reward: 1 at the target, else a
    share of the way there (0 below zero)."""

    name = "counter"
    moves = ("add 1", "add 2", "add 3", "double", "jump")

    def __init__(self) -> None:
        self.applied = 0

    def initial_state(self, task: Task) -> Count:
        return Count(int(task.metadata["start"]), int(task.metadata["target"]))

    def _next(self, s: Count, action: str) -> int:
        if action == "double":
            return s.value * 2
        if action == "jump":
            return -1
        return s.value + int(action.split()[1])

    def actions(self, state: Count) -> list[str]:
        if state.value < 0 or state.value == state.target:
            return []
        return [a for a in self.moves if self._next(state, a) <= state.target]

    def apply(self, state: Count, action: str) -> Count:
        self.applied += 1
        return Count(self._next(state, action), state.target)

    def is_terminal(self, state: Count) -> bool:
        return state.value == state.target

    def reward(self, state: Count) -> float | None:
        if state.value == state.target:
            return 1.0
        return max(0.0, 0.5 * state.value / state.target)

    def render(self, state: Count) -> str:
        return f"The counter shows {state.value}; the target is {state.target}."


def make_counter() -> Counter:
    return Counter()


class NoReward(Counter):
    def reward(self, state: Count) -> float | None:
        return None


class BadReward(Counter):
    def reward(self, state: Count) -> float | None:
        return 1.5


class NullSink:
    def put_node(self, node: NodeRecord) -> None:
        pass

    def put_judgement(self, judgement: JudgementRecord) -> None:
        pass


TASK = Task(id="count", prompt="Count from 1 to 10.", metadata={"start": 1, "target": 10})


def make_ctx(model: ChatModel, task: Task = TASK, *, max_calls: int | None = None,
             seed: int = 11) -> TaskContext:
    ledger = Ledger(limits=Limits(max_calls=max_calls))
    bound = BudgetedModel(model, ledger)
    roles = RoleFactory(RunConfig(), Prompts(), lambda name: bound, seed)
    return TaskContext(task=task, tree=TaskTree(NullSink(), "run", task),
                       generator=roles.make(Generator, "generator"),
                       judge=roles.make(Judge, "judge"), ledger=ledger, seed=seed, roles=roles)


def scripted(*replies: str) -> FunctionModel:
    """A model giving ``replies`` in turn (the last one again when they run out)."""
    count = [0]

    def script(request: ChatRequest, i: int) -> str:
        count[0] += 1
        return replies[min(count[0], len(replies)) - 1]

    return FunctionModel(script)


def refuse() -> FunctionModel:
    def script(request: ChatRequest, i: int) -> str:
        raise AssertionError("the model must not be asked")

    return FunctionModel(script)


def space_for(ctx: TaskContext, env: Any = None, **kw: Any) -> EnvSpace:
    return EnvSpace.for_context(ctx, env if env is not None else Counter(), **kw)


def choice(*nums: int, reason: str = "closest to the target") -> str:
    return json.dumps({"reason": reason, "actions": list(nums)})


def last_user(model: FunctionModel, i: int = -1) -> str:
    return model.requests[i].messages[-1].content


# ---------------------------------------------------------------- loading an environment


ENV_FILE = """
from dataclasses import dataclass

@dataclass(frozen=True)
class S:
    n: int

class Tiny:
    name = "tiny"
    def initial_state(self, task): return S(0)
    def actions(self, state): return ["up"] if state.n < 2 else []
    def apply(self, state, action): return S(state.n + 1)
    def is_terminal(self, state): return state.n == 2
    def reward(self, state): return state.n / 2
    def render(self, state): return str(state.n)

def factory():
    return Tiny()

class Half:
    name = "half"
    def initial_state(self, task): return 0

class Broken:
    def __init__(self):
        raise RuntimeError("no config")

class Nameless(Tiny):
    name = ""
"""


def test_load_environment_by_file_dotted_path_and_factory(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    (tmp_path / "tiny_env.py").write_text(textwrap.dedent(ENV_FILE))
    monkeypatch.chdir(tmp_path)
    env = load_environment("tiny_env.py:Tiny")
    assert env.name == "tiny" and env.actions(env.initial_state(TASK)) == ["up"]
    assert load_environment(f"{tmp_path / 'tiny_env.py'}:factory").name == "tiny"
    # the same file twice is one module: its classes are the same objects
    assert type(load_environment("tiny_env.py:Tiny")) is type(env)
    monkeypatch.chdir(REPO)
    assert isinstance(load_environment("tests.test_env_space:Counter"), Counter)
    assert isinstance(load_environment("tests.test_env_space:make_counter"), Counter)
    assert load_environment(BW_ENV).name == "blocksworld"


@pytest.mark.parametrize(("spec", "error", "words"), [
    ("tiny_env.py:Half", ConfigError, "lacks actions, apply, is_terminal, reward, render"),
    ("tiny_env.py:Broken", ConfigError, "Broken() failed: RuntimeError: no config"),
    ("tiny_env.py:Nameless", ConfigError, "needs a non-empty string 'name'"),
    ("tiny_env.py:Nope", UnknownNameError, "has no attribute 'Nope'"),
    ("missing_env.py:Tiny", UnknownNameError, "no file 'missing_env.py'"),
    ("no_such_module_xyz:Env", UnknownNameError, "no module 'no_such_module_xyz'"),
    ("tiny_env.py", ConfigError, "expected package.module:Name or path/to/file.py:Name"),
])
def test_load_environment_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              spec: str, error: type[Exception],
                                              words: str) -> None:
    (tmp_path / "tiny_env.py").write_text(textwrap.dedent(ENV_FILE))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        load_environment(spec)
    assert words in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- replay and structure


async def test_states_are_replayed_from_node_texts() -> None:
    ctx = make_ctx(scripted(choice(4, 3)))
    space = space_for(ctx)
    kids = await space.expand(ctx, ctx.tree.root, 2)
    # 1 -> double (2) -> add 3 (5): a path of texts
    assert [k.text for k in kids] == ["double", "add 3"]
    grand = ctx.tree.add(kids[0], role="env", operator="act", key="x", text="add 3")
    fresh = space_for(ctx)  # an empty cache: everything comes from the texts
    assert fresh.state(ctx, grand) == Count(5, 10)
    assert fresh.state(ctx, kids[1]) == Count(4, 10)
    assert fresh.candidate(ctx, grand) == "double\nadd 3"
    assert fresh.plan(ctx, ctx.tree.root) == [] and fresh.candidate(ctx, ctx.tree.root) == ""
    # cached: asking again applies nothing
    env = fresh.env
    assert isinstance(env, Counter)
    before = env.applied
    assert fresh.state(ctx, grand) == Count(5, 10) and env.applied == before
    # a text the environment does not allow there fails loudly
    bad = ctx.tree.add(kids[0], role="env", operator="act", key="y", text="add 9")
    with pytest.raises(ConfigError, match="not legal in its parent's state"):
        fresh.state(ctx, bad)


async def test_all_legal_actions_without_a_model_call_when_few() -> None:
    task = Task(id="near", prompt="Count from 8 to 10.", metadata={"start": 8, "target": 10})
    ctx = make_ctx(refuse(), task)
    space = space_for(ctx)
    kids = await space.expand(ctx, ctx.tree.root, 3)
    assert [k.text for k in kids] == ["add 1", "add 2", "jump"]  # the env's order
    assert all(k.role == "env" and k.operator == "act" and k.call_id is None for k in kids)
    assert [k.meta["prior"] for k in kids] == pytest.approx([1 / 3] * 3)
    assert [k.meta["action_index"] for k in kids] == [0, 1, 2]
    assert [k.meta["terminal"] for k in kids] == [False, True, False]
    assert [k.meta["env_reward"] for k in kids] == [0.45, 1.0, 0.0]
    assert [k.answer for k in kids] == [None, "add 2", None]
    assert ctx.tree.judgements == {}
    # ids derive from the expansion key and the action index: the same in a rerun
    again = make_ctx(refuse(), task)
    assert [k.id for k in await space_for(again).expand(again, again.tree.root, 3)] == \
        [k.id for k in kids]
    other = await space_for(again).expand(again, again.tree.root, 3, key=1)
    assert other == []  # every legal action is already a child of the root


async def test_policy_ranking_becomes_the_prior() -> None:
    model = scripted(choice(4, 1, 3), choice(2, 1), choice(2, 1))
    ctx = make_ctx(model)
    space = space_for(ctx)
    kids = await space.expand(ctx, ctx.tree.root, 3, feedback=Feedback(
        advice=("doubling early pays",), siblings=("jump",)))
    assert [k.text for k in kids] == ["double", "add 1", "add 3"]
    assert [k.meta["action_index"] for k in kids] == [3, 0, 2]
    assert [k.meta["prior"] for k in kids] == pytest.approx([6 / 11, 3 / 11, 2 / 11])
    assert all(k.role == "env_policy" for k in kids)
    prompt = last_user(model)
    assert "The counter shows 1; the target is 10." in prompt
    assert '<action n="5">jump</action>' in prompt and "Choose 3 of the 5" in prompt
    assert "doubling early pays" in prompt and "- jump" in prompt
    assert "(none yet)" in prompt
    (j,) = ctx.tree.judgements[ctx.tree.root.id]
    assert j.role == "env_policy" and j.critique == "closest to the target"
    assert j.meta["choice"] == ["double", "add 1", "add 3"] and j.verdict is None
    # deeper, the actions taken so far are shown; a repeated expansion offers only
    # the actions not yet taken from that state
    first = await space.expand(ctx, kids[0], 2)  # at 2: add 1/2/3, double, jump
    assert [k.text for k in first] == ["add 2", "add 1"]
    assert '<taken n="1">double</taken>' in last_user(model)
    more = await space.expand(ctx, kids[0], 2, key=1)
    prompt = last_user(model)
    assert '<action n="1">add 3</action>' in prompt and "add 2</action>" not in prompt
    assert "Actions already taken from this state" in prompt
    assert [k.text for k in more] == ["double", "add 3"]
    assert len({k.id for k in [*first, *more]}) == 4
    assert len(model.requests) == 3 and model.requests[2].sample_offset == 1


def test_parse_choice_and_prior() -> None:
    assert parse_choice('{"actions": [2, 1]}', 3, 2).actions == [2, 1]
    assert parse_choice('Sure: {"actions": [3, 1, 2], "reason": "r"}', 3, 2).actions == [3, 1]
    for bad, words in [('{"actions": [1, 1]}', "listed once"),
                       ('{"actions": [0, 2]}', "between 1 and 3"),
                       ('{"actions": [4]}', "between 1 and 3"),
                       ('{"actions": [1]}', "list 2 distinct"),
                       ("no idea", "no JSON|JSON")]:
        with pytest.raises(ParseError, match=words):
            parse_choice(bad, 3, 2)
    assert choice_prior(1) == [1.0]
    assert choice_prior(2) == pytest.approx([2 / 3, 1 / 3])
    assert sum(choice_prior(5)) == pytest.approx(1.0)


async def test_repair_then_success() -> None:
    model = scripted("I would double.", choice(4, 1))
    ctx = make_ctx(model)
    kids = await space_for(ctx).expand(ctx, ctx.tree.root, 2)
    assert len(model.requests) == 2 and model.requests[1].tags.get("repair") == "1"
    assert "could not be read" in last_user(model)
    assert [k.text for k in kids] == ["double", "add 1"]
    assert all(k.role == "env_policy" for k in kids)
    (j,) = ctx.tree.judgements[ctx.tree.root.id]
    assert j.meta["repaired"] is True


async def test_unreadable_twice_is_recorded_and_falls_back_to_a_seeded_choice() -> None:
    async def run(seed: int) -> tuple[list[str], TaskContext]:
        model = scripted("I would double.", "still thinking")
        ctx = make_ctx(model, seed=seed)
        kids = await space_for(ctx).expand(ctx, ctx.tree.root, 2)
        assert len(model.requests) == 2
        assert all(k.role == "env" and k.meta["fallback"] and k.call_id is None for k in kids)
        assert [k.meta["prior"] for k in kids] == [0.5, 0.5]
        return [k.text for k in kids], ctx

    picked, ctx = await run(11)
    (j,) = ctx.tree.judgements[ctx.tree.root.id]
    assert j.verdict == "parse_failure" and j.role == "env_policy" and j.score is None
    assert j.meta["raw"] == "still thinking" and "JSON" in (j.critique or "")
    assert len(set(picked)) == 2 and set(picked) <= set(Counter.moves)
    assert (await run(11))[0] == picked  # seeded: the same choice again
    seen = {tuple((await run(s))[0]) for s in range(8)}
    assert len(seen) > 1  # and it does depend on the seed


async def test_budget_stops_the_policy_but_not_a_free_expansion() -> None:
    ctx = make_ctx(scripted(choice(1, 2)), max_calls=0)
    space = space_for(ctx)
    assert await space.expand(ctx, ctx.tree.root, 2) == []
    assert ctx.tree.kids(ctx.tree.root) == [] and ctx.budget_limited
    kids = await space.expand(ctx, ctx.tree.root, 5)  # every action fits: no call needed
    assert len(kids) == 5


async def test_terminal_depth_and_dead_ends() -> None:
    task = Task(id="near", prompt="Count from 8 to 10.", metadata={"start": 8, "target": 10})
    ctx = make_ctx(refuse(), task)
    space = space_for(ctx, max_depth=2)
    root = ctx.tree.root
    assert not space.is_terminal(ctx, root) and space.can_expand(ctx, root)
    add1, add2, jump = await space.expand(ctx, root, 3)
    assert space.is_terminal(ctx, add2) and not space.can_expand(ctx, add2)
    assert await space.expand(ctx, add2, 3) == []
    assert not space.is_terminal(ctx, jump) and not space.can_expand(ctx, jump)  # dead end
    assert space.can_expand(ctx, add1)
    (last, *_) = await space.expand(ctx, add1, 3)
    assert last.depth == 2 and not space.can_expand(ctx, last)  # the depth limit
    assert space.reward(ctx, add2) == 1.0 and space.reward(ctx, jump) == 0.0
    assert await space.expand(ctx, add1, 0) == []
    # the initial state already at the goal: the root is still no candidate
    done = Task(id="done", prompt="Count from 3 to 3.", metadata={"start": 3, "target": 3})
    dctx = make_ctx(refuse(), done)
    dspace = space_for(dctx)
    assert not dspace.is_terminal(dctx, dctx.tree.root)
    assert not dspace.can_expand(dctx, dctx.tree.root)


async def test_env_reward_judgements() -> None:
    task = Task(id="near", prompt="Count from 8 to 10.", metadata={"start": 8, "target": 10})
    ctx = make_ctx(refuse(), task)
    space = space_for(ctx)
    add1, add2, jump = await space.expand(ctx, ctx.tree.root, 3)
    value = EnvReward()
    got = {n.text: await value.evaluate(ctx, space, n) for n in (add1, add2, jump)}
    v1, v2, vj = got["add 1"], got["add 2"], got["jump"]
    assert v1 is not None and v2 is not None and vj is not None
    assert (v1.value, v2.value, vj.value) == (0.45, 1.0, 0.0)
    js = {n.text: ctx.tree.judgements[n.id][0] for n in (add1, add2, jump)}
    assert {j.role for j in js.values()} == {"env_reward"}
    assert {j.source for j in js.values()} == {"env:counter"}
    assert [js[t].verdict for t in ("add 1", "add 2", "jump")] == [None, "correct", "incorrect"]
    assert all((j.scale_min, j.scale_max) == (0.0, 1.0) for j in js.values())
    assert js["jump"].meta["dead_end"] and "dead end" in vj.advice
    assert v2.judgement_id == js["add 2"].id and v1.advice == ""
    # a terminal state short of full reward is incorrect
    short = Task(id="s", prompt="Reach 4.", metadata={"start": 2, "target": 4})

    class Stingy(Counter):
        def reward(self, state: Count) -> float | None:
            return 0.6 if state.value == state.target else 0.1

    sctx = make_ctx(refuse(), short)
    sspace = space_for(sctx, Stingy())
    fin = next(k for k in await sspace.expand(sctx, sctx.tree.root, 5) if k.meta["terminal"])
    sv = await value.evaluate(sctx, sspace, fin)
    assert sv is not None and sv.value == 0.6
    assert sctx.tree.judgements[fin.id][0].verdict == "incorrect"
    # unknown reward: no value and no judgement
    nctx = make_ctx(refuse(), task)
    nspace = space_for(nctx, NoReward())
    kids = await nspace.expand(nctx, nctx.tree.root, 3)
    assert "env_reward" not in kids[0].meta
    assert await value.evaluate(nctx, nspace, kids[0]) is None
    assert nctx.tree.judgements == {}


async def test_reward_outside_the_unit_interval_and_wrong_space_are_usage_errors() -> None:
    ctx = make_ctx(refuse())
    space = space_for(ctx, BadReward())
    with pytest.raises(ConfigError, match=r"reward must be None or a number in \[0, 1\]"):
        space.reward(ctx, ctx.tree.root)
    for bad in (float("nan"), -0.1, True, "1"):
        with pytest.raises(ConfigError):
            checked_reward(Counter(), bad)
    assert checked_reward(Counter(), 1) == 1.0
    step_space = StepSpace.for_context(ctx)
    with pytest.raises(ConfigError, match="only the env space"):
        await EnvReward().evaluate(ctx, step_space, ctx.tree.root)


# ---------------------------------------------------------------- Blocksworld


def bw() -> Any:
    return load_environment(BW_ENV)


def bw_module() -> Any:
    return __import__(type(bw()).__module__, fromlist=["check_plan"])


def bw_task(**meta: Any) -> Task:
    return Task(id="bw", prompt="Blocksworld.", metadata=meta)


def test_blocksworld_moves_apply_goal_and_reward() -> None:
    env = bw()
    start = env.initial_state(bw_task(initial=[["red", "blue"], ["green"]],
                                      goal=[["red", "green"]]))
    assert env.actions(start) == ["unstack the blue block from the red block",
                                  "pick up the green block"]
    held = env.apply(start, "unstack the blue block from the red block")
    assert held.holding == "blue" and start.holding is None  # apply leaves start alone
    assert env.actions(held) == ["put down the blue block",
                                 "stack the blue block on the green block",
                                 "stack the blue block on the red block"]
    with pytest.raises(ValueError, match="the hand already holds the blue block"):
        env.apply(held, "pick up the green block")
    down = env.apply(held, "put down the blue block")
    # equal worlds compare equal however they were reached
    assert env.apply(env.apply(down, "pick up the blue block"), "put down the blue block") == down
    assert "The hand is empty." in env.render(down)
    assert "Not yet true: the red block on the green block." in env.render(down)
    picked = env.apply(down, "pick up the red block")
    goal = env.apply(picked, "stack the red block on the green block")
    assert env.is_terminal(goal) and env.reward(goal) == 1.0
    rewards = [env.reward(s) for s in (start, held, down, picked)]
    assert not any(env.is_terminal(s) for s in (start, held, down, picked))
    assert all(0.0 <= r < 0.8 for r in rewards)
    assert rewards[2] > rewards[0]  # clearing the red block is progress
    assert "You are holding the red block." in env.render(picked)


def test_blocksworld_tasks_are_solvable_as_stated() -> None:
    mod = bw_module()
    suite = load_suite(BW_TASKS)
    assert 10 <= len(suite) <= 20
    lengths = set()
    for task in suite:
        world = mod.world_of(task.metadata)
        best = mod.shortest_plan(world)
        assert best is not None and len(best) == task.metadata["optimal_steps"], task.id
        assert 2 <= len(best) <= 6
        lengths.add(len(best))
        assert task.solution is not None and len(task.solution.splitlines()) == len(best)
        res = mod.check_plan(task, task.solution, None)
        assert res.passed is True and res.score == 1.0, (task.id, res.details)
        # every prefix of the reference plan is legal but unfinished, and the reward
        # of the reference path never falls
        env = bw()
        state, seen = env.initial_state(task), []
        for action in task.solution.splitlines():
            seen.append(env.reward(state))
            state = env.apply(state, action)
        assert env.reward(state) == 1.0 and seen == sorted(seen) and seen[-1] < 0.8
    assert lengths == {2, 4, 6}


def test_check_plan_verdicts() -> None:
    mod = bw_module()
    task = bw_task(initial=[["red", "blue"], ["green"]], goal=[["red", "green"]])
    good = ("1. Unstack the blue block from the red block.\n\n2. put down the blue block\n"
            "- pick up the red block\nStep 4: stack the red block on the green block")
    assert mod.check_plan(task, good, None).passed is True
    assert mod.check_plan(task, "ignored", good).passed is True  # the answer wins
    illegal = mod.check_plan(task, "pick up the red block\nput down the red block", None)
    assert illegal.passed is False and illegal.score == 0.0
    assert illegal.details == ("step 1 'pick up the red block' is illegal: the red block "
                               "is not clear")
    unfinished = mod.check_plan(task, "unstack the blue block from the red block\n"
                                      "put down the blue block", None)
    assert unfinished.passed is False and 0.0 < (unfinished.score or 0.0) < 0.8
    assert "not yet: the red block on the green block" in unfinished.details
    prose = mod.check_plan(task, "Let me think about it.", None)
    assert prose.passed is False and "not an action" in prose.details
    ghost = mod.check_plan(task, "pick up the purple block", None)
    assert "there is no purple block" in ghost.details
    assert mod.check_plan(Task(id="x", prompt="p"), "pick up", None).passed is None


async def test_blocksworld_verifier_by_file_path() -> None:
    from deliberate.verifiers.registry import build_verifier

    v = build_verifier(f"python:{EXAMPLE / 'blocksworld.py'}:check_plan")
    task = load_suite(BW_TASKS).tasks[0]
    assert task.solution is not None
    assert (await v.verify(task, task.solution, None)).passed is True
    assert (await v.verify(task, "put down the red block", None)).passed is False


# ---------------------------------------------------------------- the sim as the policy


def policy_prompt(model: ChatModel, task: Task, space_env: Any, taken: Sequence[str],
                  k: int) -> tuple[EnvPolicy, str, list[str]]:
    policy = EnvPolicy(model, RunConfig().role("env_policy"), Prompts(), seed=5)
    state = space_env.initial_state(task)
    for a in taken:
        state = space_env.apply(state, a)
    legal = list(space_env.actions(state))
    return policy, space_env.render(state), legal


async def sim_choose(model: ChatModel, task: Task, taken: Sequence[str], k: int,
                     sample: int = 0) -> list[str]:
    env = bw()
    policy, rendered, legal = policy_prompt(model, task, env, taken, k)
    res = await policy.choose(task, rendered, legal, k, history=taken, sample=sample)
    assert res.value is not None and not res.repaired, res.raw
    return [legal[i - 1] for i in res.value.actions]


def test_sim_handler_reads_its_template() -> None:
    prompts = Prompts()
    text = prompts.render("env_policy_user.j2", task=TASK, state="s", actions=["a b", "c"],
                          k=1, history=["x"], tried=[], advice=[], siblings=[])
    assert read_legal(text) == ["a b", "c"] and read_taken(text) == ["x"]
    assert wanted(text, 2) == 1 and wanted("no instruction", 4) == 1


async def test_sim_policy_follows_the_reference_plan_by_skill() -> None:
    suite = load_suite(BW_TASKS)
    rich = [t for t in suite if len([*bw().actions(bw().initial_state(t))]) >= 3]
    assert rich

    async def follow_rate(skill: float) -> float:
        sim = SimModel(suite, SimParams(skill=skill, seed=3, task_noise=0.0))
        hits = total = 0
        for task in suite:
            assert task.solution is not None
            plan = task.solution.splitlines()
            for sample in range(6):
                picks = await sim_choose(sim, task, plan[:1], 1, sample)
                hits += picks[0] == plan[1]
                total += 1
        return hits / total

    high, low = await follow_rate(0.95), await follow_rate(0.0)
    assert high > 0.85 and high > low + 0.2
    # the same request, the same choice; other samples may choose otherwise
    sim = SimModel(suite, SimParams())
    task = rich[0]
    a = await sim_choose(sim, task, [], 2)
    assert a == await sim_choose(sim, task, [], 2)
    assert len(set(a)) == 2


async def test_sim_policy_off_the_reference_orders_by_hash() -> None:
    suite = load_suite(BW_TASKS)
    bare = [Task(id=t.id, prompt=t.prompt, kind=t.kind, metadata=t.metadata) for t in suite]
    from deliberate import Suite

    sim = SimModel(Suite.of("bare", bare), SimParams(skill=1.0, task_noise=0.0))
    task = next(t for t in bare if t.id == "bw-08")
    firsts = {tuple(await sim_choose(sim, task, [], 1, s)) for s in range(12)}
    assert len(firsts) == 2  # both legal first moves come up: no preference without a plan


async def test_env_space_on_sim_in_process_and_through_the_server() -> None:
    suite = load_suite(BW_TASKS)
    task = suite.get("bw-16")

    async def grow(model: ChatModel) -> list[tuple[str, str]]:
        ctx = make_ctx(model, task)
        space = EnvSpace.for_context(ctx, bw())
        first = await space.expand(ctx, ctx.tree.root, 2)
        held = next(k for k in first if k.text.startswith("unstack the red"))
        second = await space.expand(ctx, held, 2)  # holding red: 3 actions > k
        assert len(second) == 2 and all(k.role == "env_policy" for k in second)
        assert not any(j.verdict == "parse_failure"
                       for js in ctx.tree.judgements.values() for j in js)
        return [(k.text, k.id) for k in [*first, *second]]

    local = await grow(SimModel(suite, SimParams()))
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        client = build_model(f"openai:sim@{srv.base_url}", suite)
        try:
            remote = await grow(client)
        finally:
            await client.aclose()
    assert [t for t, _ in remote] == [t for t, _ in local]



# ---------------------------------------------------------------- whole runs


def bw_config(tmp_path: Path, model: str, strategy: str, **params: Any) -> RunConfig:
    return RunConfig.model_validate({
        "suite": BW_TASKS, "strategy": strategy, "model": model, "seed": 5, "cache": False,
        "store": str(tmp_path / "runs.db"),
        "verifier": f"python:{EXAMPLE / 'blocksworld.py'}:check_plan",
        "strategy_params": {"space": "env", "env": BW_ENV, **params}})


async def check_run(tmp_path: Path, run_id: str) -> list[tuple[str, bool | None, str | None]]:
    """Every attempt's outcome, after checking it against an independent replay of its
    plan; and that its tree holds only action nodes the environment allows."""
    mod = bw_module()
    suite = load_suite(BW_TASKS)
    st = Store.open(str(tmp_path / "runs.db"))
    out = []
    async with st:
        for a in await st.get_attempts(run_id):
            task = suite.get(a.task_id)
            nodes, judgements = await st.load_tree(run_id, a.task_id)
            if a.correct:
                assert a.answer is not None
                assert mod.check_plan(task, a.answer, None).passed is True
                assert len(a.answer.splitlines()) >= task.metadata["optimal_steps"]
            elif a.answer is not None:
                assert mod.check_plan(task, a.answer, None).passed is False
            assert {n.operator for n in nodes} <= {"root", "act"}
            assert {j.role for j in judgements} <= {"env_reward", "env_policy", "grader"}
            terminal = [n for n in nodes if n.meta.get("terminal")]
            assert all(mod.check_plan(task, n.answer, None).passed for n in terminal)
            out.append((a.task_id, a.correct, a.answer))
    return out


def served(srv: SimServer) -> int:
    """Requests the server answered."""
    return int(httpx.get(srv.url + "/stats").json()["completed"])


async def test_best_first_over_blocksworld_through_the_sim_server(tmp_path: Path) -> None:
    suite = load_suite(BW_TASKS)
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        res = await arun(bw_config(tmp_path, f"openai:sim@{srv.base_url}", "best_first",
                                   k=2, iterations=12))
        calls = served(srv)
    assert res.summary["failed"] == 0 and calls > 0
    outcome = await check_run(tmp_path, res.run_id)
    solved = sum(1 for _, ok, _ in outcome if ok)
    assert solved >= len(suite) // 2, outcome


def test_cli_mcts_over_blocksworld(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-m", "deliberate", "run", "--suite",
         "jsonl:examples/blocksworld/tasks.jsonl", "--strategy", "mcts",
         "-p", "space=env", "-p", "env=examples/blocksworld/blocksworld.py:Blocksworld",
         "-p", "value=verifier", "-p", "iterations=30", "-p", "selection=puct",
         "--verifier", "python:examples/blocksworld/blocksworld.py:check_plan",
         "--model", "sim", "--seed", "2", "--store", str(tmp_path / "runs.db"),
         "--run-id", "bw-cli", "--no-cache"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "accuracy" in r.stdout
    outcome = asyncio.run(check_run(tmp_path, "bw-cli"))
    assert len(outcome) == 16 and sum(1 for _, ok, _ in outcome if ok) >= 8, outcome


async def test_mcts_over_blocksworld_is_deterministic_under_a_seed(tmp_path: Path) -> None:
    async def tree(where: Path) -> list[tuple[Any, ...]]:
        cfg = bw_config(where, "sim", "mcts", k=2, iterations=12, parallel=3,
                        selection="puct")
        res = await arun(cfg.model_copy(update={"limit": 4}))
        st = Store.open(str(where / "runs.db"))
        rows: list[tuple[Any, ...]] = []
        async with st:
            for a in res.attempts:
                nodes, _ = await st.load_tree(res.run_id, a.task_id)
                text = {n.id: n.text for n in nodes}  # ids embed the run id
                rows += sorted((a.task_id, text.get(n.parent_id or "", ""), n.depth, n.text,
                                n.visits, n.value, n.meta.get("prior")) for n in nodes)
        return rows

    first, second = await tree(tmp_path / "a"), await tree(tmp_path / "b")
    assert first == second and len(first) > 4 * 5


async def test_beam_over_blocksworld_on_sim(tmp_path: Path) -> None:
    cfg = bw_config(tmp_path, "sim", "beam", n=4, width=2)
    res = await arun(cfg.model_copy(update={"limit": 6}))
    assert res.summary["failed"] == 0 and res.summary["calls"] > 0  # the policy was asked
    outcome = await check_run(tmp_path, res.run_id)
    assert sum(1 for _, ok, _ in outcome if ok) >= 4, outcome
