"""Step-wise beam search and DVTS over a step space, scored by a step critic.

Beam (search-and-learn): the root proposes ``n`` first steps; at each later depth
each of the ``width`` (b) kept beams proposes ``n // width`` next steps, so about
``n`` candidates per depth in all. Every new prefix is scored by the step critic
(first wrong step -> per-step scores, aggregated by ``aggregate``); the top b by
score are kept, ties to creation order, unscored prefixes last. A kept terminal
node (an ``Answer:`` step or the depth limit) is finished and leaves the beam; the
search stops at ``max_depth`` or once b beams have finished. The final choice is
the best finished node by score (nodes with an answer first, then creation order);
if none finished, the best live beam.

DVTS (``dvts=true``): the root's ``n`` first steps are split by creation order into
``width`` groups; each group is an independent subtree that keeps only its best
node (beam of width 1) and proposes ``n // width`` next steps from it per depth.
The final choice is the best finished node across subtrees.

On BudgetExceeded the search stops and returns the best so far.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.roles.step_critic import StepCritic
from deliberate.search.step_space import StepScorer, StepSpace, StepSplitter
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import NodeRecord


class BeamConfig(StrategyConfig):
    n: int = Field(8, ge=1, le=1024, description="candidate steps proposed per depth in all")
    width: int = Field(2, ge=1, le=256, description="beams kept per depth (b); DVTS subtrees")
    max_depth: int = Field(8, ge=1, le=64, description="most steps in a solution")
    aggregate: Literal["last", "min", "product"] = Field(
        "last", description="how per-step scores become a prefix score")
    split: Literal["line", "blank", "numbered", "delimiter"] = Field(
        "line", description="how a proposer's reply is cut into steps (the first is kept)")
    delimiter: str = Field("", description="step delimiter for split=delimiter")
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
        space = StepSpace.for_context(ctx, splitter=StepSplitter(cfg.split, cfg.delimiter),
                                      max_depth=cfg.max_depth)
        scorer = StepScorer(ctx.roles.make(StepCritic, "step_critic"), space, cfg.aggregate)
        per = max(1, cfg.n // cfg.width)

        async def scored(kids: list[NodeRecord]) -> bool:
            values = await asyncio.gather(*(scorer.score(ctx, k) for k in kids))
            for k, v in zip(kids, values, strict=True):
                k.value = v
                ctx.tree.update(k)
            return all(v is not None for v in values)

        first = await space.expand(ctx, ctx.tree.root, cfg.n, key=0)
        if not first:
            return StrategyResult(None, "no step: budget exhausted before the first expansion")
        ok = await scored(first)
        finished: list[NodeRecord] = []
        if cfg.dvts:
            groups = [first[i * per:(i + 1) * per] for i in range(cfg.width)]
            beams = [rank(g)[0] for g in groups if g]
            for s, b in enumerate(beams):
                b.meta["subtree"] = s
                ctx.tree.update(b)
        else:
            beams = rank(first)[: cfg.width]
        stopped = "" if ok else "budget"
        depth = 1
        while True:
            live = [b for b in beams if not space.is_terminal(ctx, b)]
            finished += [b for b in beams if space.is_terminal(ctx, b)]
            if stopped or not live or depth >= cfg.max_depth or (
                    not cfg.dvts and len(finished) >= cfg.width):
                break
            groups = await asyncio.gather(*(space.expand(ctx, b, per, key=depth) for b in live))
            kids = [k for g in groups for k in g]
            if sum(len(g) for g in groups) < per * len(live):
                stopped = "budget"
            if kids and not await scored(kids):
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
        chosen = final_choice(finished) or final_choice(beams)
        if chosen is None:
            return StrategyResult(None, "no step could be kept")
        chosen.meta["chosen"] = True
        if chosen.answer is None:
            chosen.meta["candidate"] = space.candidate(ctx, chosen)
        ctx.tree.update(chosen)
        note = "stopped by the budget; best so far" if stopped else ""
        if chosen.answer is None:
            note = note or "no beam reached a final answer"
        return StrategyResult(chosen, note)
