"""Best-of-N: sample N candidates, score each, keep the best.

Scores come from the LLM judge on its declared scale, or from the scoring
verifier. A candidate whose judgement could not be parsed has no score and ranks
below every scored one; ties go to the earliest sample. If nothing could be scored
the first candidate is returned and the result says so.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import JudgementRecord, NodeRecord


class BestOfNConfig(StrategyConfig):
    n: int = Field(8, ge=1, le=1024, description="candidates to sample")
    scorer: Literal["judge", "verifier"] = Field(
        "judge", description="who scores: the LLM judge, or the scoring verifier"
    )


class BestOfN(Strategy):
    name: ClassVar[str] = "best_of_n"
    Config: ClassVar[type[StrategyConfig]] = BestOfNConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, BestOfNConfig)
        cands = await ctx.sample_candidates(cfg.n)
        if not cands:
            return StrategyResult(None, "no candidate: budget exhausted before generation")
        judgements: list[JudgementRecord | None]
        if cfg.scorer == "judge":
            judgements = await ctx.judge_nodes(cands)
        else:
            judgements = list(await asyncio.gather(*(ctx.verify_node(c) for c in cands)))
        best = choose_best(cands, judgements)
        if best is None:
            chosen, note = cands[0], "no candidate could be scored; returned the first"
        else:
            chosen, note = best, ""
        for c, j in zip(cands, judgements, strict=True):
            c.value = j.normalised if j is not None else None
            c.meta["chosen"] = c is chosen
            ctx.tree.update(c)
        return StrategyResult(chosen, note)


def choose_best(
    cands: list[NodeRecord], judgements: list[JudgementRecord | None]
) -> NodeRecord | None:
    """Highest normalised score; ties to the lowest sample index; None if none scored."""
    best: tuple[float, int] | None = None
    chosen = None
    for i, (c, j) in enumerate(zip(cands, judgements, strict=True)):
        s = j.normalised if j is not None else None
        if s is None:
            continue
        rank = (s, -(c.sample_index if c.sample_index is not None else i))
        if best is None or rank > best:
            best, chosen = rank, c
    return chosen
