"""MCTS with a hybrid value (SWE-Search style) over any search space, with parallel rollouts.

The space (``space``: ``answer``, ``steps`` or ``env``; see ``_search.py``) says
what a node is: a whole candidate, one reasoning step, or one environment action.

One rollout: **select** from the root by UCT ``Q/N + c·sqrt(ln N_parent / N)`` (or
PUCT ``Q + c·P·sqrt(N_parent)/(1 + N)`` with the prior ``P`` from
``meta["prior"]``, uniform by default) down to a node not yet expanded;
**expand** it into ``k`` children (the root: fresh samples; below: refinements
told the node's value, explanation and advice plus its siblings' advice);
**evaluate** every child with the value function; **backpropagate** each child's
value as a running mean into ``visits``/``value`` of the child and its ancestors.
A node's own reward is kept in ``meta["reward"]`` (its valuation in
``meta["valuation"]``).

Parallel rollouts (``parallel`` P): up to P rollouts are in flight. A rollout in
flight adds a *virtual loss* on its path (a pending visit with value 0) so other
rollouts spread over the tree; a node being expanded cannot be selected again.
Rollouts complete (backpropagate) in launch order, so the search is the same
whatever the latencies; P=1 is the exact sequential algorithm.

Stops: ``iterations`` rollouts, a reward ``threshold`` reached by some node
(SWE-Search: 95 on -100..100, i.e. 0.975), ``finished`` evaluated candidates, a
budget (best so far is kept) or an exhausted tree (every leaf at ``max_depth``).
Rollouts in flight when a stop fires are completed.

Final choice (``discriminator``): ``mean_trajectory`` (default; highest mean
reward along root→node), ``best_reward`` (highest single reward), ``verifier``
(the highest-reward candidate the scoring verifier passes) or ``judge`` (the LLM
judge scores the top ``judge_top`` candidates by mean trajectory). Ties go to the
earliest-created node. Every node of the chosen path gets ``meta["chosen"]``.

Differences from SWE-Search: with ``space=answer`` nodes are whole answers
refined by an LLM rather than agent actions (``space=env`` has agent actions);
one expansion makes all ``k`` children at once and they are all evaluated in the
same rollout (no separate simulation to the end: the value of a partial step
prefix comes from the step critic). The ``debate`` discriminator has
``debate_agents`` judges argue over ``judge_top`` finalists for
``debate_rounds`` rounds (SWE-Search: 5 agents, 3 rounds).

Agent Q prior (``prior=rank``, use with ``selection=puct``): after an expansion
the generator ranks its ``k`` proposals (the ``rank_actions`` role) and child at
position ``r`` (0 best) gets prior ∝ 1/(r+1). Agent Q also mixes in outcome
reward; here that comes from the value function as usual.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.roles.value import ActionRanker, rank_prior
from deliberate.search.base import SearchSpace, SearchStats, Valuation, ValueFunction
from deliberate.strategies._search import (
    Discriminator,
    SearchConfig,
    finish_search,
    make_space,
    make_value,
    record_valuation,
    reward,
    sibling_feedback,
)
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import NodeRecord


class MCTSConfig(SearchConfig):
    iterations: int = Field(20, ge=1, le=10_000, description="rollouts (SWE-Search: 80-100)")
    k: int = Field(3, ge=1, le=64, description="children per expansion (SWE-Search: 3-5)")
    selection: Literal["uct", "puct"] = Field("uct", description="selection rule")
    c: float = Field(1.41, ge=0, description="exploration constant")
    threshold: float | None = Field(0.975, ge=0, le=1,
                                    description="stop when a finished candidate's value "
                                    "reaches this")
    finished: int | None = Field(None, ge=1, description="stop after this many evaluated "
                                 "finished candidates")
    parallel: int = Field(1, ge=1, le=256, description="rollouts in flight (virtual loss)")
    discriminator: Discriminator = Field("mean_trajectory", description="final choice")
    judge_top: int = Field(3, ge=1, le=64, description="judge/debate discriminator: "
                           "finalists (best by mean trajectory)")
    debate_agents: int = Field(5, ge=1, le=32, description="debate discriminator: judges")
    debate_rounds: int = Field(3, ge=1, le=10, description="debate discriminator: rounds")
    prior: Literal["uniform", "rank"] = Field(
        "uniform", description="PUCT prior: uniform, or the generator's ranking of its "
        "proposed children (Agent Q)")


# ---------------------------------------------------------------- selection


def uct_score(q_sum: float, n: int, parent_n: int, c: float) -> float:
    """UCT of a child with total value ``q_sum`` over ``n`` visits (inf if unvisited)."""
    if n == 0:
        return math.inf
    return q_sum / n + c * math.sqrt(math.log(max(parent_n, 1)) / n)


def puct_score(q_sum: float, n: int, parent_n: int, c: float, prior: float) -> float:
    """PUCT: mean value (0 if unvisited) plus the prior-weighted exploration bonus."""
    q = q_sum / n if n else 0.0
    return q + c * prior * math.sqrt(max(parent_n, 1)) / (1 + n)


@dataclass(slots=True)
class SearchState:
    """Pending visits (virtual loss), nodes being expanded, closed subtrees, rewards."""

    pending: dict[str, int] = field(default_factory=dict)
    expanding: set[str] = field(default_factory=set)
    expanded: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)
    order: dict[str, int] = field(default_factory=dict)

    def n(self, node: NodeRecord) -> int:
        return node.visits + self.pending.get(node.id, 0)

    def q_sum(self, node: NodeRecord) -> float:
        # a pending visit counts with value 0: the virtual loss
        return (node.value or 0.0) * node.visits


def select_child(ctx: TaskContext, state: SearchState, node: NodeRecord, *, rule: str,
                 c: float) -> NodeRecord | None:
    """The open child with the highest UCT/PUCT score; ties to the earliest created."""
    kids = [k for k in ctx.tree.kids(node) if k.id not in state.closed
            and k.id not in state.expanding]
    if not kids:
        return None
    all_kids = ctx.tree.kids(node)
    parent_n = state.n(node)
    best: NodeRecord | None = None
    best_s = -math.inf
    for kid in kids:
        if rule == "puct":
            prior = kid.meta.get("prior")
            p = float(prior) if isinstance(prior, int | float) else 1.0 / len(all_kids)
            s = puct_score(state.q_sum(kid), state.n(kid), parent_n, c, p)
        else:
            s = uct_score(state.q_sum(kid), state.n(kid), parent_n, c)
        if best is None or s > best_s:
            best, best_s = kid, s
    return best


def select_path(ctx: TaskContext, state: SearchState, *, rule: str, c: float,
                max_depth: int) -> list[NodeRecord] | None:
    """Root→leaf path to a node to expand, or None when every open leaf is in flight."""
    node = ctx.tree.root
    path = [node]
    while node.id in state.expanded:
        nxt = select_child(ctx, state, node, rule=rule, c=c)
        if nxt is None:
            return None
        node = nxt
        path.append(node)
    if node.id in state.expanding or node.id in state.closed or node.depth >= max_depth:
        return None
    return path


def backpropagate(ctx: TaskContext, path: list[NodeRecord], value: float) -> None:
    """Add one visit of ``value`` to every node of ``path`` (running mean)."""
    for node in path:
        node.visits += 1
        node.value = (node.value or 0.0) + (value - (node.value or 0.0)) / node.visits
        ctx.tree.update(node)


# ---------------------------------------------------------------- the search


class TreeSearch:
    """Runs the rollouts of one task (kept separate from the config so tests can drive it)."""

    def __init__(self, ctx: TaskContext, space: SearchSpace, value: ValueFunction, *,
                 k: int, max_depth: int, selection: str, c: float, parallel: int,
                 iterations: int, threshold: float | None, finished: int | None,
                 prior: str = "uniform") -> None:
        self.ctx, self.space, self.value = ctx, space, value
        self.k, self.max_depth, self.selection, self.c = k, max_depth, selection, c
        self.parallel, self.iterations = parallel, iterations
        self.threshold, self.finished = threshold, finished
        self.prior = prior
        self.state = SearchState()
        self.stats = SearchStats()
        self.candidates: list[NodeRecord] = []
        self.selected: list[str] = []  # leaf id of every rollout, in launch order

    async def evaluate(self, node: NodeRecord) -> Valuation | None:
        v = await self.value.evaluate(self.ctx, self.space, node)
        self.stats.evaluations += 1
        return v

    async def rollout(self, path: list[NodeRecord], index: int) -> list[tuple[NodeRecord, float]]:
        leaf = path[-1]
        kids = await self.space.expand(self.ctx, leaf, self.k,
                                       feedback=sibling_feedback(self.ctx, leaf), key=0)
        self.stats.expansions += 1
        if self.prior == "rank" and len(kids) > 1:
            await rank_children(self.ctx, leaf, kids)
        vals = await asyncio.gather(*(self.evaluate(kid) for kid in kids))
        out = []
        for kid, v in zip(kids, vals, strict=True):
            if v is None:
                continue
            record_valuation(self.ctx, kid, v, rollout=index)
            out.append((kid, v.value))
        return out

    def finish(self, path: list[NodeRecord], results: list[tuple[NodeRecord, float]]) -> None:
        leaf = path[-1]
        for node in path:
            self.state.pending[node.id] -= 1
        self.state.expanding.discard(leaf.id)
        self.state.expanded.add(leaf.id)
        for kid, v in results:
            backpropagate(self.ctx, [*path, kid], v)
            if self.space.is_terminal(self.ctx, kid):
                self.candidates.append(kid)
        for kid in self.ctx.tree.kids(leaf):
            if (kid.depth >= self.max_depth or reward(kid) is None
                    or not self.space.can_expand(self.ctx, kid)):
                self.state.closed.add(kid.id)
        # close upwards: a node whose children are all closed has nothing left
        for node in reversed(path):
            kids = self.ctx.tree.kids(node)
            if node.id in self.state.expanded and all(x.id in self.state.closed for x in kids):
                self.state.closed.add(node.id)
            else:
                break

    def stop_reason(self) -> str:
        if self.threshold is not None and any(
                (reward(n) or 0.0) >= self.threshold for n in self.candidates):
            return "threshold"
        if self.finished is not None and len(self.candidates) >= self.finished:
            return "finished"
        if self.ctx.budget_limited:
            return "budget"
        return ""

    async def run(self) -> SearchStats:
        inflight: list[tuple[list[NodeRecord], asyncio.Task[list[tuple[NodeRecord, float]]]]] = []
        started = 0
        stopped = ""
        try:
            while True:
                while not stopped and started < self.iterations and len(inflight) < self.parallel:
                    path = select_path(self.ctx, self.state, rule=self.selection, c=self.c,
                                       max_depth=self.max_depth)
                    if path is None:
                        break
                    for node in path:
                        self.state.pending[node.id] = self.state.pending.get(node.id, 0) + 1
                    self.state.expanding.add(path[-1].id)
                    self.selected.append(path[-1].id)
                    inflight.append((path, asyncio.ensure_future(self.rollout(path, started))))
                    started += 1
                if not inflight:
                    break
                path, fut = inflight.pop(0)  # complete in launch order: timing-independent
                self.finish(path, await fut)
                self.stats.iterations += 1
                stopped = stopped or self.stop_reason()
        finally:
            for _, fut in inflight:
                fut.cancel()
        if not stopped:
            if started >= self.iterations:
                stopped = "iterations"
            else:
                stopped = "budget" if self.ctx.budget_limited else "exhausted"
        self.stats.stopped_by = stopped
        return self.stats


async def rank_children(ctx: TaskContext, parent: NodeRecord, kids: list[NodeRecord], *,
                        role: str = "generator") -> None:
    """Agent Q's prior: the generator ranks its proposals; ``meta["prior"]`` ∝ 1/position.

    Recorded as a ``rank_actions`` judgement on the parent. On a budget stop or an
    unreadable ranking the children keep no prior (PUCT then uses a uniform one).
    """
    ranker = ctx.roles.make(ActionRanker, role)
    try:
        res = await ranker.rank(ctx.task, [k.text for k in kids], node_id=parent.id)
    except BudgetExceeded:
        return
    source = f"model:{ranker.model.model_id}"
    meta: dict[str, Any] = {"call_ids": res.call_ids, "children": [k.id for k in kids]}
    if res.value is None:
        ctx.tree.judge(parent, source=source, role="rank_actions", verdict="parse_failure",
                       critique=res.error, meta={**meta, "raw": res.raw})
        return
    priors = rank_prior(res.value.ranking)
    ctx.tree.judge(parent, source=source, role="rank_actions", critique=res.value.reason,
                   meta={**meta, "ranking": res.value.ranking})
    for kid, p in zip(kids, priors, strict=True):
        kid.meta["prior"] = p
        ctx.tree.update(kid)


class MCTS(Strategy):
    name: ClassVar[str] = "mcts"
    Config: ClassVar[type[StrategyConfig]] = MCTSConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, MCTSConfig)
        space = make_space(ctx, cfg)
        search = TreeSearch(ctx, space, make_value(ctx, cfg, space),
                            k=cfg.k, max_depth=cfg.depth, selection=cfg.selection, c=cfg.c,
                            parallel=cfg.parallel, iterations=cfg.iterations,
                            threshold=cfg.threshold, finished=cfg.finished, prior=cfg.prior)
        stats = await search.run()
        return await finish_search(ctx, space, search.candidates, stats, cfg.discriminator,
                                   judge_top=cfg.judge_top, debate_agents=cfg.debate_agents,
                                   debate_rounds=cfg.debate_rounds)
