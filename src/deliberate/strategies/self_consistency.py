"""Self-consistency: sample N candidates and vote on their parsed final answers.

Optionally each vote is weighted by the judge's normalised score. Candidates with
no parseable answer do not vote. Ties go to the answer that appeared first.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tasks.task import Task
from deliberate.tree import NodeRecord
from deliberate.verifiers.base import vote_key


class SelfConsistencyConfig(StrategyConfig):
    n: int = Field(8, ge=1, le=1024, description="candidates to sample")
    weighted: bool = Field(False, description="weight each vote by the judge's score")


class SelfConsistency(Strategy):
    name: ClassVar[str] = "self_consistency"
    Config: ClassVar[type[StrategyConfig]] = SelfConsistencyConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, SelfConsistencyConfig)
        cands = await ctx.sample_candidates(cfg.n)
        if not cands:
            return StrategyResult(None, "no candidate: budget exhausted before generation")
        weights = [1.0] * len(cands)
        if cfg.weighted:
            for i, j in enumerate(await ctx.judge_nodes(cands)):
                weights[i] = j.normalised if j is not None and j.normalised is not None else 0.0
        winner, tally = majority(ctx.task, cands, weights)
        total = sum(tally.values()) or 1.0
        for c in cands:
            k = vote_key(ctx.task, c.answer)
            c.value = tally.get(k, 0.0) / total if k is not None else 0.0
            c.meta["chosen"] = c is winner
            ctx.tree.update(c)
        if winner is None:
            return StrategyResult(cands[0], "no candidate had a parseable answer")
        won = tally.get(vote_key(ctx.task, winner.answer) or "", 0.0)
        return StrategyResult(winner, f"{won:g} of {total:g} votes")


def majority(
    task: Task, cands: list[NodeRecord], weights: list[float]
) -> tuple[NodeRecord | None, dict[str, float]]:
    """The first candidate carrying the most-voted answer, and the tally."""
    tally: dict[str, float] = {}
    first: dict[str, NodeRecord] = {}
    for c, w in zip(cands, weights, strict=True):
        k = vote_key(task, c.answer)
        if k is None:
            continue
        tally[k] = tally.get(k, 0.0) + w
        first.setdefault(k, c)
    if not tally:
        return None, tally
    order = list(first)  # insertion order = first appearance
    best = max(order, key=lambda k: (tally[k], -order.index(k)))
    return first[best], tally
