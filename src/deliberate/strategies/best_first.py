"""Best-first search over whole candidates: always expand the best frontier node.

The root is expanded into ``k`` fresh samples; each is valued. Then, repeatedly,
the frontier node (valued, not expanded, above ``max_depth``) with the highest
value (ties to the earliest created) is expanded into ``k`` children (refinements
told its value, explanation and advice, plus its siblings' advice; or fresh
samples at ``fresh_rate``), and the children are valued and join the frontier.
Stops on ``iterations`` expansions, a value at or above ``threshold``, an empty
frontier, or the budget. The answer is the node with the best value (ties to the
earliest), and its path is marked ``meta["chosen"]``. A node's value is its own
valuation (no backpropagation).
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.search.answer_space import AnswerSpace
from deliberate.search.base import SearchStats
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.strategies.mcts import (
    MCTSConfig,
    finish_search,
    make_value,
    reward,
    sibling_feedback,
)
from deliberate.tree import NodeRecord


class BestFirstConfig(StrategyConfig):
    iterations: int = Field(8, ge=1, le=10_000, description="expansions after the root")
    k: int = Field(3, ge=1, le=64, description="children per expansion")
    max_depth: int = Field(4, ge=1, le=64, description="deepest node (the root is depth 0)")
    value: Literal["llm", "verifier", "mix"] = Field("llm", description="value function")
    w_llm: float = Field(0.5, ge=0, description="mix: weight of the LLM value")
    w_verifier: float = Field(0.5, ge=0, description="mix: weight of the verifier reward")
    scale_min: float = Field(-100.0, description="LLM value scale, low end")
    scale_max: float = Field(100.0, description="LLM value scale, high end")
    threshold: float | None = Field(0.975, ge=0, le=1,
                                    description="stop when a node's value reaches this")
    fresh_rate: float = Field(0.0, ge=0, le=1, description="share of non-root children "
                              "sampled fresh instead of refined")


class BestFirst(Strategy):
    name: ClassVar[str] = "best_first"
    Config: ClassVar[type[StrategyConfig]] = BestFirstConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, BestFirstConfig)
        value = make_value(MCTSConfig(value=cfg.value, w_llm=cfg.w_llm,
                                      w_verifier=cfg.w_verifier, scale_min=cfg.scale_min,
                                      scale_max=cfg.scale_max))
        space = AnswerSpace(fresh_rate=cfg.fresh_rate)
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
                kid.meta["reward"] = v.value
                kid.meta["valuation"] = {"value": v.value, "explanation": v.explanation,
                                         "advice": v.advice}
                ctx.tree.update(kid)
                cands.append(kid)
                if kid.depth < cfg.max_depth:
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
                best = max(range(len(frontier)),
                           key=lambda i: (reward(frontier[i]) or 0.0, -i))
                await grow(frontier.pop(best))
                stats.iterations += 1
        stats.stopped_by = stopped
        return await finish_search(ctx, cands, stats, "best_reward")
