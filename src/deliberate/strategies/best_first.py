"""Best-first search: always expand the best frontier node, over any search space.

The root is expanded into ``k`` children; each is valued. Then, repeatedly, the
frontier node (valued, expandable, above the depth limit) with the highest value
(ties to the deeper node, then the earliest created: on steps a sound prefix that
is further along is closer to an answer) is expanded into ``k`` children (answers:
refinements told its value, explanation and advice plus its siblings' advice, or
fresh samples at ``fresh_rate``; steps: next steps; env: next actions), and the
children are valued and join the frontier. Stops on ``iterations`` expansions, a
finished candidate valued at or above ``threshold``, an empty frontier, or the
budget. The answer is the finished candidate with the best value (ties to the
earliest), and its path is marked ``meta["chosen"]``. A node's value is its own
valuation (no backpropagation).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.search.base import SearchStats
from deliberate.strategies._search import (
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


class BestFirstConfig(SearchConfig):
    iterations: int = Field(8, ge=1, le=10_000, description="expansions after the root")
    k: int = Field(3, ge=1, le=64, description="children per expansion")
    threshold: float | None = Field(0.975, ge=0, le=1, description="stop when a finished "
                                    "candidate's value reaches this")


class BestFirst(Strategy):
    name: ClassVar[str] = "best_first"
    Config: ClassVar[type[StrategyConfig]] = BestFirstConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, BestFirstConfig)
        space = make_space(ctx, cfg)
        value = make_value(ctx, cfg, space)
        stats = SearchStats()
        cands: list[NodeRecord] = []
        frontier: list[NodeRecord] = []

        async def grow(node: NodeRecord) -> None:
            kids = await space.expand(ctx, node, cfg.k, feedback=sibling_feedback(ctx, node))
            stats.expansions += 1
            vals = await asyncio.gather(*(value.evaluate(ctx, space, k) for k in kids))
            stats.evaluations += len(kids)
            for kid, v in zip(kids, vals, strict=True):
                if v is None:
                    continue
                kid.value = v.value
                kid.visits = 1
                record_valuation(ctx, kid, v)
                if space.is_terminal(ctx, kid):
                    cands.append(kid)
                if kid.depth < cfg.depth and space.can_expand(ctx, kid):
                    frontier.append(kid)

        await grow(ctx.tree.root)
        stopped = ""
        while not stopped:
            if cfg.threshold is not None and any((reward(n) or 0.0) >= cfg.threshold
                                                 for n in cands):
                stopped = "threshold"
            elif ctx.budget_limited:
                stopped = "budget"
            elif stats.iterations >= cfg.iterations:
                stopped = "iterations"
            elif not frontier:
                stopped = "exhausted"
            else:
                best = max(range(len(frontier)), key=lambda i: (
                    reward(frontier[i]) or 0.0, frontier[i].depth, -i))
                await grow(frontier.pop(best))
                stats.iterations += 1
        stats.stopped_by = stopped
        return await finish_search(ctx, space, cands, stats, "best_reward")
