"""Beam search and DVTS over a search space (by default steps, scored by a step critic).

Beam (search-and-learn): the root proposes ``n`` children; at each later depth
each of the ``width`` (b) kept beams proposes ``n // width`` children, so about
``n`` candidates per depth in all. Every new node is valued (steps: the step
critic's first wrong step -> per-step scores, aggregated by ``aggregate``;
answers: the LLM hybrid value; env: the environment's reward; or as ``value``
says); the top b by value are kept, ties to creation order, unvalued nodes last.
A kept node that cannot grow (a final ``Answer:`` step, a finished environment
episode) is finished and leaves the beam; the search stops at the depth limit
or once b beams have finished. The final choice is the best kept finished
candidate by value (nodes with an answer first, then creation order); if none
finished, the best live beam.

On the answer space every node is a finished candidate that can still be
refined: beams are refined ``n // width`` times each per depth until the depth
limit, and the best kept candidate of any depth is chosen.

DVTS (``dvts=true``): the root's ``n`` children are split by creation order into
``width`` groups; each group is an independent subtree that keeps only its best
node (beam of width 1) and proposes ``n // width`` children from it per depth.
The final choice is the best finished candidate across subtrees.

On BudgetExceeded the search stops and returns the best so far.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.search.base import SearchStats
from deliberate.strategies._search import (
    SearchConfig,
    SpaceKind,
    make_space,
    make_value,
    mark_chosen,
    record_valuation,
    sibling_feedback,
)
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import NodeRecord


class BeamConfig(SearchConfig):
    space: SpaceKind = Field("steps", description="steps (one step per node), answer "
                             "(whole candidates refined) or env (a user's environment)")
    n: int = Field(8, ge=1, le=1024, description="children proposed per depth in all")
    width: int = Field(2, ge=1, le=256, description="beams kept per depth (b); DVTS subtrees")
    dvts: bool = Field(False, description="diverse verifier tree search: width independent "
                       "greedy subtrees")


def rank(nodes: list[NodeRecord]) -> list[NodeRecord]:
    """Best first: higher value, then earlier creation (list order); unscored last."""
    order = {n.id: i for i, n in enumerate(nodes)}
    return sorted(nodes, key=lambda n: (n.value is None, -(n.value or 0.0), order[n.id]))


def final_choice(nodes: list[NodeRecord]) -> NodeRecord | None:
    """The best node: one with an answer before one without, then by :func:`rank`."""
    if not nodes:
        return None
    ranked = rank(nodes)
    return next((n for n in ranked if n.answer is not None), ranked[0])


class Beam(Strategy):
    name: ClassVar[str] = "beam"
    Config: ClassVar[type[StrategyConfig]] = BeamConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, BeamConfig)
        space = make_space(ctx, cfg)
        value = make_value(ctx, cfg, space)
        per = max(1, cfg.n // cfg.width)
        stats = SearchStats()

        async def scored(kids: list[NodeRecord]) -> None:
            values = await asyncio.gather(*(value.evaluate(ctx, space, k) for k in kids))
            stats.evaluations += len(kids)
            for k, v in zip(kids, values, strict=True):
                if v is not None:
                    k.value = v.value
                    record_valuation(ctx, k, v)

        async def grow(node: NodeRecord, count: int, depth: int) -> list[NodeRecord]:
            stats.expansions += 1
            return await space.expand(ctx, node, count, key=depth,
                                      feedback=sibling_feedback(ctx, node))

        first = await grow(ctx.tree.root, cfg.n, 0)
        if not first:
            return StrategyResult(None, "no child: budget exhausted before the first expansion")
        await scored(first)
        finished: list[NodeRecord] = []  # kept, and cannot grow: they leave the beam
        cands: list[NodeRecord] = []  # kept finished candidates (answers: every kept node)
        if cfg.dvts:
            groups = [first[i * per:(i + 1) * per] for i in range(cfg.width)]
            beams = [rank(g)[0] for g in groups if g]
            for s, b in enumerate(beams):
                b.meta["subtree"] = s
                ctx.tree.update(b)
        else:
            beams = rank(first)[: cfg.width]
        stopped = "budget" if ctx.budget_limited else ""
        depth = 1
        while True:
            stats.iterations += 1
            cands += [b for b in beams if space.is_terminal(ctx, b) and b.value is not None]
            live = [b for b in beams if space.can_expand(ctx, b)]
            finished += [b for b in beams if not space.can_expand(ctx, b)]
            if stopped or not live or depth >= cfg.depth or (
                    not cfg.dvts and len(finished) >= cfg.width):
                break
            groups = await asyncio.gather(*(grow(b, per, depth) for b in live))
            kids = [k for g in groups for k in g]
            if kids:
                await scored(kids)
            if ctx.budget_limited:
                stopped = "budget"
            if cfg.dvts:
                beams = []
                for b, g in zip(live, groups, strict=True):
                    if g:
                        best = rank(g)[0]
                        best.meta["subtree"] = b.meta.get("subtree")
                        ctx.tree.update(best)
                        beams.append(best)
                    else:
                        finished.append(b)
            else:
                beams = rank(kids)[: max(0, cfg.width - len(finished))]
            depth += 1
        stats.stopped_by = stopped or ("depth" if depth >= cfg.depth else "finished")
        ctx.stats["search"] = {"space": space.name, "iterations": stats.iterations,
                               "expansions": stats.expansions,
                               "evaluations": stats.evaluations, "candidates": len(cands),
                               "stopped_by": stats.stopped_by}
        chosen = final_choice(cands) or final_choice(beams) or final_choice(finished)
        if chosen is None:
            return StrategyResult(None, "no node could be kept")
        mark_chosen(ctx, space, chosen)
        note = "stopped by the budget; best so far" if stopped else ""
        if not space.is_terminal(ctx, chosen):
            note = note or "no beam reached a final answer"
        return StrategyResult(chosen, note)
