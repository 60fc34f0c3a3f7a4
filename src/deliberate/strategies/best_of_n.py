"""Best-of-N: sample N candidates, score each, keep the best.

Scorers:

- ``judge``: the LLM judge on its declared scale;
- ``verifier``: the scoring verifier;
- ``checklist`` (TICK): a checklist of yes/no questions is written once for the
  task, every candidate is scored by the share of "yes";
- ``pairwise``: a tournament with the pairwise judge, each match asked in both
  orders (a win only if both agree). ``tournament=knockout`` (default, N - 1
  matches: 0 v 1, 2 v 3, … a tie sends the earlier sample through) or
  ``round_robin`` (N(N-1)/2 matches, 1 point a win and 0.5 a tie, ties to the
  earlier sample).

A candidate whose judgement could not be parsed has no score and ranks below
every scored one; ties go to the earliest sample. If nothing could be scored
the first candidate is returned and the result says so.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.roles.checklist import (
    ChecklistAnswerer,
    ChecklistJudge,
    ChecklistScore,
    ChecklistWriter,
)
from deliberate.roles.pairwise import Outcome, PairwiseJudge, Standing, Tournament, run_tournament
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import JudgementRecord, NodeRecord


class BestOfNConfig(StrategyConfig):
    n: int = Field(8, ge=1, le=1024, description="candidates to sample")
    scorer: Literal["judge", "verifier", "pairwise", "checklist"] = Field(
        "judge", description="who scores: the LLM judge, the scoring verifier, a pairwise "
        "tournament or a TICK checklist"
    )
    tournament: Tournament = Field(
        "knockout", description="pairwise scorer: knockout (N-1 matches) or round_robin"
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
        if cfg.scorer == "pairwise":
            standing = await pairwise_tournament(ctx, cands, kind=cfg.tournament)
            chosen = cands[standing.winner]
            for i, c in enumerate(cands):
                c.value = standing.share(i)
                c.meta["chosen"] = c is chosen
                ctx.tree.update(c)
            note = "" if standing.complete else "tournament cut short by the budget"
            return StrategyResult(chosen, note)
        judgements: list[JudgementRecord | None]
        note = ""
        if cfg.scorer == "judge":
            judgements = await ctx.judge_nodes(cands)
        elif cfg.scorer == "checklist":
            judgements, note = await checklist_scores(ctx, cands)
        else:
            judgements = list(await asyncio.gather(*(ctx.verify_node(c) for c in cands)))
        best = choose_best(cands, judgements)
        if best is None:
            chosen = cands[0]
            note = note or "no candidate could be scored; returned the first"
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


# ---------------------------------------------------------------- pairwise tournament

_POINTS: dict[str, float] = {"win": 1.0, "tie": 0.5, "loss": 0.0}


async def pairwise_tournament(ctx: TaskContext, nodes: list[NodeRecord], *,
                              kind: Tournament = "knockout",
                              role: str = "pairwise_judge") -> Standing:
    """A tournament among ``nodes`` (in the given order) with the pairwise judge.

    Every match is asked in both orders; each side gets a ``pairwise`` judgement
    (win 1, tie 0.5, loss 0 on a 0..1 scale; ``parse_failure`` without a score)
    holding both raw verdicts and whether the orders agreed. A match the budget
    stops ends the tournament with the standings so far.
    """
    judge = ctx.roles.make(PairwiseJudge, role)
    source = f"model:{judge.model.model_id}"

    async def play(rnd: int, i: int, j: int) -> Outcome | None:
        x, y = nodes[i], nodes[j]
        try:
            cmp = await judge.compare(ctx.task, x.text, y.text, node_id=x.id)
        except BudgetExceeded:
            return None
        meta = {**cmp.meta(), "tournament": kind, "round": rnd}
        first = cmp.first.value
        reason = first.reason if first is not None else cmp.first.error
        for me, other, mine in ((x, y, "x"), (y, x, "y")):
            if cmp.parse_failure:
                verdict, score = "parse_failure", None
            else:
                verdict = ("tie" if cmp.winner == "tie"
                           else "win" if cmp.winner == mine else "loss")
                score = _POINTS[verdict]
            ctx.tree.judge(me, source=source, role="pairwise", key=f"{kind}:{rnd}:{other.id}",
                           score=score, scale=(0.0, 1.0), verdict=verdict, critique=reason,
                           meta={**meta, "opponent": other.id, "as": mine})
        return cmp.winner

    return await run_tournament(kind, len(nodes), play)


# ---------------------------------------------------------------- checklist (TICK)


def checklist_judge(ctx: TaskContext, *, writer: str = "checklist_writer",
                    answerer: str = "checklist_judge") -> ChecklistJudge:
    """The checklist judge of this task, its two roles bound by name."""
    return ChecklistJudge(ctx.roles.make(ChecklistWriter, writer),
                          ctx.roles.make(ChecklistAnswerer, answerer))


async def checklist_scores(
    ctx: TaskContext, nodes: list[NodeRecord], *, judge: ChecklistJudge | None = None
) -> tuple[list[JudgementRecord | None], str]:
    """Write one checklist for the task, then score every node by its share of "yes".

    The checklist is a ``checklist`` judgement on the root (its questions in the
    critique and meta); each node gets a ``checklist`` judgement on 0..1 whose
    critique is the failed items (:meth:`ChecklistScore.critique`). Returns the
    judgements (None where the budget stopped it) and a note when no checklist
    could be written.
    """
    judge = judge or checklist_judge(ctx)
    source = f"model:{judge.answerer.model.model_id}"
    root = ctx.tree.root
    try:
        written = await judge.checklist(ctx.task, node_id=root.id)
    except BudgetExceeded:
        return [None] * len(nodes), "budget exhausted before the checklist was written"
    meta: dict[str, Any] = {"call_ids": written.call_ids}
    if written.repaired:
        meta["repaired"] = True
    if written.value is None:
        ctx.tree.judge(root, source=f"model:{judge.writer.model.model_id}", role="checklist",
                       verdict="parse_failure", critique=written.error,
                       meta={**meta, "raw": written.raw})
        return [None] * len(nodes), "the checklist could not be read; returned the first"
    questions = written.value
    ctx.tree.judge(root, source=f"model:{judge.writer.model.model_id}", role="checklist",
                   critique="\n".join(f"{k}. {q}" for k, q in enumerate(questions, 1)),
                   meta={**meta, "questions": questions})

    async def one(node: NodeRecord) -> JudgementRecord | None:
        try:
            res = await judge.score(ctx.task, questions, node.text, node_id=node.id)
        except BudgetExceeded:
            return None
        return record_checklist(ctx, node, res, source)

    return list(await asyncio.gather(*(one(n) for n in nodes))), ""


def record_checklist(ctx: TaskContext, node: NodeRecord, res: ChecklistScore, source: str,
                     *, key: object = 0) -> JudgementRecord:
    """A node's checklist answers as a judgement (score = share of "yes")."""
    meta: dict[str, Any] = {"call_ids": res.reply.call_ids}
    if res.reply.repaired:
        meta["repaired"] = True
    if res.answers is None:
        return ctx.tree.judge(node, source=source, role="checklist", key=key,
                              verdict="parse_failure", critique=res.reply.error,
                              scale=(0.0, 1.0), meta={**meta, "raw": res.reply.raw})
    meta["answers"] = [{"question": a.question, "answer": "yes" if a.yes else "no",
                        "why": a.why} for a in res.answers]
    return ctx.tree.judge(node, source=source, role="checklist", key=key, score=res.score,
                          scale=(0.0, 1.0), verdict="incorrect" if res.failed else "correct",
                          critique=res.critique() or "Every check passed.", meta=meta)
