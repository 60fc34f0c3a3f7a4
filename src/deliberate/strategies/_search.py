"""What the tree-search strategies share: the space and value a config names, and the end.

``mcts``, ``best_first`` and ``beam`` all grow one of three spaces (``answer``:
whole candidates refined; ``steps``: one reasoning step per node; ``env``: one
action of a user's environment per node) and score nodes with one value function.
The value ``auto`` picks the natural one per space: the LLM hybrid value for
answers, the step critic for steps, the environment's reward for environments.
``mix`` weighs the model's value (LLM, or the step critic on steps) against the
verifier (or the environment's reward); a part that has nothing to say about a
node (the verifier on an unfinished step prefix) is left out of its mean.

The final choice is made among the *finished* candidates (``is_terminal``) by a
discriminator; a search that finished none returns its best-valued node with a
note, and its whole candidate text is kept in ``meta["candidate"]`` so it is
graded as what it is.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from deliberate.engine.context import TaskContext
from deliberate.roles.step_critic import StepCritic
from deliberate.search.answer_space import AnswerSpace
from deliberate.search.base import Feedback, SearchSpace, SearchStats, Valuation, ValueFunction
from deliberate.search.step_space import StepCriticValue, StepScorer, StepSpace, StepSplitter
from deliberate.search.value import LLMValue, MixedValue, VerifierValue
from deliberate.strategies.base import StrategyConfig, StrategyResult
from deliberate.tree import NodeRecord

SpaceKind = Literal["answer", "steps", "env"]
ValueKind = Literal["auto", "llm", "critic", "verifier", "mix"]
Discriminator = Literal["mean_trajectory", "best_reward", "verifier", "judge", "debate"]

DEFAULT_DEPTH: dict[str, int] = {"answer": 4, "steps": 8, "env": 20}
"""Deepest node per space when ``max_depth`` is not set (the root is depth 0)."""


class SearchConfig(StrategyConfig):
    """The space and the value of a tree search (fields shared by every search)."""

    space: SpaceKind = Field("answer", description="answer (whole candidates refined), "
                             "steps (one step per node) or env (a user's environment)")
    env: str = Field("", description="space=env: the environment, 'package.module:Name' or "
                     "'path/to/file.py:Name'")
    split: Literal["line", "blank", "numbered", "delimiter"] = Field(
        "line", description="space=steps: how a proposer's reply is cut into steps")
    delimiter: str = Field("", description="space=steps: the delimiter for split=delimiter")
    aggregate: Literal["last", "min", "product"] = Field(
        "last", description="space=steps: how per-step critic scores become a prefix score")
    max_depth: int | None = Field(None, ge=1, le=256, description="deepest node, the root "
                                  "being 0 (default: answer 4, steps 8, env 20)")
    value: ValueKind = Field("auto", description="value function: auto (llm for answer, "
                             "critic for steps, the env reward for env), llm, critic, "
                             "verifier or mix")
    w_llm: float = Field(0.5, ge=0, description="mix: weight of the model's value")
    w_verifier: float = Field(0.5, ge=0, description="mix: weight of the verifier / env reward")
    scale_min: float = Field(-100.0, description="LLM value scale, low end")
    scale_max: float = Field(100.0, description="LLM value scale, high end")
    fresh_rate: float = Field(0.0, ge=0, le=1, description="space=answer: share of non-root "
                              "children sampled fresh instead of refined")

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.scale_min >= self.scale_max:
            raise ValueError("scale_min must be below scale_max")
        if self.space == "env" and not self.env:
            raise ValueError("space=env needs env=MODULE:NAME or env=path/to/file.py:NAME")
        if self.env and self.space != "env":
            raise ValueError(f"env is only read with space=env (space is {self.space})")
        if self.split == "delimiter" and not self.delimiter:
            raise ValueError("split=delimiter needs a non-empty delimiter")
        if self.value == "critic" and self.space != "steps":
            raise ValueError("value=critic scores step prefixes: use it with space=steps")
        if self.value == "verifier" and self.space == "steps":
            raise ValueError("value=verifier on the step space scores only finished "
                             "solutions, so no prefix could be valued; use critic or mix")
        if self.value == "mix" and self.w_llm + self.w_verifier <= 0:
            raise ValueError("mix weights must have a positive sum")
        if self.space == "env":
            # found up front, so a bad path is a one-line usage error before any call
            from deliberate.search.env import load_environment

            load_environment(self.env)
        return self

    @property
    def depth(self) -> int:
        return self.max_depth if self.max_depth is not None else DEFAULT_DEPTH[self.space]

    @property
    def value_kind(self) -> str:
        """The value actually used (``auto`` resolved by space)."""
        if self.value != "auto":
            return self.value
        return {"answer": "llm", "steps": "critic", "env": "verifier"}[self.space]


def make_space(ctx: TaskContext, cfg: SearchConfig) -> SearchSpace:
    """The search space a config names, bound to this task's roles."""
    if cfg.space == "answer":
        return AnswerSpace(fresh_rate=cfg.fresh_rate)
    if cfg.space == "steps":
        return StepSpace.for_context(ctx, splitter=StepSplitter(cfg.split, cfg.delimiter),
                                     max_depth=cfg.depth)
    from deliberate.search.env import EnvSpace, load_environment

    return EnvSpace.for_context(ctx, load_environment(cfg.env), max_depth=cfg.depth)


def make_value(ctx: TaskContext, cfg: SearchConfig, space: SearchSpace) -> ValueFunction:
    """The value function a config names for ``space``."""
    kind = cfg.value_kind
    model_value: ValueFunction
    if isinstance(space, StepSpace) and kind in ("critic", "mix"):
        critic = ctx.roles.make(StepCritic, "step_critic")
        model_value = StepCriticValue(StepScorer(critic, space, cfg.aggregate))
    else:
        model_value = LLMValue(scale=(cfg.scale_min, cfg.scale_max))
    reward: ValueFunction = VerifierValue()
    if cfg.space == "env":
        from deliberate.search.env import EnvReward

        reward = EnvReward()
    if kind in ("llm", "critic"):
        return model_value
    if kind == "verifier":
        return reward
    return MixedValue([model_value, reward], [cfg.w_llm, cfg.w_verifier])


# ---------------------------------------------------------------- node values


def reward(node: NodeRecord) -> float | None:
    """The node's own valuation (not the backed-up mean)."""
    r = node.meta.get("reward")
    return float(r) if isinstance(r, int | float) else None


def record_valuation(ctx: TaskContext, node: NodeRecord, v: Valuation, **extra: Any) -> None:
    """Keep a valuation on the node: its reward, and the words that feed refinements."""
    node.meta["reward"] = v.value
    node.meta["valuation"] = {"value": v.value, "explanation": v.explanation,
                              "advice": v.advice}
    node.meta.update(extra)
    ctx.tree.update(node)


def sibling_feedback(ctx: TaskContext, node: NodeRecord) -> Feedback:
    """Advice from the valuations of ``node``'s siblings and their texts."""
    if node.parent_id is None:
        return Feedback()
    sibs = [s for s in ctx.tree.kids(ctx.tree.nodes[node.parent_id]) if s.id != node.id]
    advice = []
    for s in sibs:
        v = s.meta.get("valuation")
        if isinstance(v, dict) and v.get("advice"):
            advice.append(str(v["advice"]))
    return Feedback(advice=tuple(advice[-3:]), siblings=tuple(s.text for s in sibs[-3:]))


def path_to(ctx: TaskContext, node: NodeRecord) -> list[NodeRecord]:
    """Root→node, inclusive."""
    out = [node]
    while out[-1].parent_id is not None:
        out.append(ctx.tree.nodes[out[-1].parent_id])
    return out[::-1]


def mean_trajectory(ctx: TaskContext, node: NodeRecord) -> float:
    """Mean reward of the evaluated nodes on root→node."""
    rs = [r for n in path_to(ctx, node) if (r := reward(n)) is not None]
    return sum(rs) / len(rs) if rs else 0.0


def _argmax(nodes: list[NodeRecord], key: Any) -> NodeRecord:
    best = nodes[0]
    best_k = key(best)
    for n in nodes[1:]:
        kk = key(n)
        if kk > best_k:
            best, best_k = n, kk
    return best


# ---------------------------------------------------------------- the final choice


async def discriminate(ctx: TaskContext, space: SearchSpace, cands: list[NodeRecord],
                       how: Discriminator, *, judge_top: int = 3, debate_agents: int = 5,
                       debate_rounds: int = 3) -> tuple[NodeRecord, str]:
    """The chosen candidate (``cands`` non-empty; ties to the earlier) and a note.

    Verifier, judge and debate see each candidate's whole text
    (``space.candidate``), which for steps and actions is the path, not the node.
    """
    if how == "best_reward":
        return _argmax(cands, lambda n: reward(n) or 0.0), ""
    if how == "mean_trajectory":
        return _argmax(cands, lambda n: mean_trajectory(ctx, n)), ""
    if how == "verifier":
        if ctx.scoring_verifier is None:
            best = _argmax(cands, lambda n: mean_trajectory(ctx, n))
            return best, "no scoring verifier; chose by mean trajectory"
        ranked = sorted(cands, key=lambda n: -(reward(n) or 0.0))  # stable: creation order
        for n in ranked:
            j = await ctx.verify_node(n, text=space.candidate(ctx, n))
            if j is not None and j.verdict == "correct":
                return n, ""
        return ranked[0], "no candidate passed the verifier; chose the highest reward"
    ranked = sorted(cands, key=lambda n: -mean_trajectory(ctx, n))[:judge_top]
    texts = [space.candidate(ctx, n) for n in ranked]
    if how == "debate":
        from deliberate.search.debate import debate

        outcome = await debate(ctx, ranked, texts, agents=debate_agents, rounds=debate_rounds)
        if outcome.winner is None:
            return ranked[0], outcome.note or "the debate chose nothing; chose by mean trajectory"
        return ranked[outcome.winner], outcome.note
    judged = await ctx.judge_nodes(ranked, texts=texts)
    scored = [(j.normalised, n) for n, j in zip(ranked, judged, strict=True)
              if j is not None and j.normalised is not None]
    if not scored:
        return ranked[0], "the judge scored nothing; chose by mean trajectory"
    best_s, best = scored[0]
    for s, n in scored[1:]:
        if s is not None and best_s is not None and s > best_s:
            best_s, best = s, n
    return best, ""


def mark_chosen(ctx: TaskContext, space: SearchSpace, node: NodeRecord) -> None:
    """Mark root→node as the chosen path; keep the whole candidate on the chosen node
    when the node holds only its last step or action."""
    for n in path_to(ctx, node):
        n.meta["chosen"] = True
        ctx.tree.update(n)
    text = space.candidate(ctx, node)
    if text != node.text:
        node.meta["candidate"] = text
        ctx.tree.update(node)


async def finish_search(ctx: TaskContext, space: SearchSpace, cands: list[NodeRecord],
                        stats: SearchStats, how: Discriminator, *, judge_top: int = 3,
                        debate_agents: int = 5, debate_rounds: int = 3) -> StrategyResult:
    """Choose among the finished candidates, mark the path, record the search's stats.

    ``cands`` come in the order the search valued them (launch order, then child
    index), which ties follow: it does not depend on call latencies. With no
    finished candidate the best-valued node (by mean trajectory) is returned.
    """
    ctx.notes.append(f"search: {stats.iterations} iterations, {stats.expansions} expansions, "
                     f"{stats.evaluations} evaluations, stopped by {stats.stopped_by}")
    ctx.stats["search"] = {"space": space.name, "iterations": stats.iterations,
                           "expansions": stats.expansions, "evaluations": stats.evaluations,
                           "candidates": len(cands), "stopped_by": stats.stopped_by,
                           **stats.extra}
    if not cands:
        valued = [n for n in ctx.tree.nodes.values() if reward(n) is not None]
        kids = valued or [n for n in ctx.tree.nodes.values() if n.parent_id is not None]
        if not kids:
            return StrategyResult(None, f"no candidate (stopped by {stats.stopped_by})")
        best = _argmax(kids, lambda n: mean_trajectory(ctx, n))
        mark_chosen(ctx, space, best)
        what = "the best-valued node" if valued else "the first node (none could be valued)"
        return StrategyResult(best, f"no finished candidate (stopped by {stats.stopped_by}); "
                                    f"returned {what}")
    chosen, note = await discriminate(ctx, space, cands, how, judge_top=judge_top,
                                      debate_agents=debate_agents, debate_rounds=debate_rounds)
    mark_chosen(ctx, space, chosen)
    return StrategyResult(chosen, note or f"stopped by {stats.stopped_by}")
