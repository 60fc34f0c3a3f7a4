"""Easy/hard routing (MAgICoRe): a vote for easy tasks, step-targeted refinement for hard ones.

``k`` candidates are sampled and their parsed answers counted. **Agreement** is
the share of all ``k`` samples that carry the most common answer (samples with no
parseable answer count against it).

- agreement >= ``threshold``: **easy**, the majority answer wins (as in
  ``self_consistency``; ties to the answer that appeared first);
- otherwise **hard**: one candidate is refined in rounds with a reviewer that
  localises errors, the step critic
  (:class:`~deliberate.roles.step_critic.StepCritic`): it names the first wrong
  step and why, the refiner is told to keep the steps before it and redo it and
  everything after, and the new version is reviewed again (re-scored every round),
  until the reviewer finds no error or ``max_rounds`` refinements are done. The
  best-reviewed version is returned (keep-best by step score, the share of steps
  before the first error, 1 when none is wrong; ties to the earlier version).

Which candidate a hard task refines (``select``): ``vote`` (default), the first
sample of the majority answer; or ``step_critic``, one review per distinct answer
and the best by step score × votes (ties to the higher step score, then the
earlier sample). On the ``sim`` suite the vote pick was as accurate and cheaper:
picking the best-reviewed candidate favours exactly the wrong ones whose errors
the reviewer missed, which are then accepted unrefined (docs/strategies.md).

Defaults: ``k`` 5 and ``threshold`` 0.8, i.e. easy when at least 4 of 5 samples
agree. MAgICoRe decides difficulty from agreement together with reward-model
scores of the samples; here agreement alone decides, so routing costs no call.
MAgICoRe refines several solutions and ends with a weighted vote; this refines
one candidate, which keeps a hard task near ``k + 2·max_rounds`` calls (a
deliberate simplification).

Records: ``root.meta["route"]`` (decision, agreement, samples, votes) and a
judgement on the root (role ``router``, source ``strategy:route``, score =
agreement, verdict ``easy``/``hard``); the chosen and refined nodes carry
``meta["route"]``. Step reviews are judgements with role ``step_critic`` and
``first_wrong_step`` (1-based, -1 for none); refinements are children of the
version they repair (operator ``refine``, ``meta["round"]``).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Literal

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.roles.step_critic import NO_ERROR, StepCritic, StepReview
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.strategies.refine import Assessment, LoopSettings, MemoryRefiner, refine_loop
from deliberate.strategies.self_consistency import majority
from deliberate.tree import JudgementRecord, NodeRecord
from deliberate.verifiers.base import vote_key


def record_step_review(ctx: TaskContext, node: NodeRecord, critic: StepCritic,
                       review: StepReview, *, key: object,
                       meta: dict[str, Any] | None = None) -> JudgementRecord:
    """Store a step critic's review of ``node`` as a judgement.

    Score is the step score on 0..1; verdict ``correct`` when no step is wrong,
    ``incorrect`` otherwise, ``parse_failure`` when the reply could not be read.
    """
    m: dict[str, Any] = {"call_ids": review.call_ids, "steps": len(review.steps), **(meta or {})}
    if review.repaired:
        m["repaired"] = True
    source = f"model:{critic.model.model_id}"
    if review.verdict is None:
        m["raw"] = review.raw
        return ctx.tree.judge(node, source=source, role="step_critic", key=key,
                              verdict="parse_failure", critique=review.error, meta=m)
    step = review.verdict.first_wrong_step
    return ctx.tree.judge(node, source=source, role="step_critic", key=key, score=review.score,
                          scale=(0.0, 1.0), verdict="correct" if step == NO_ERROR else "incorrect",
                          critique=review.verdict.reason, first_wrong_step=step, meta=m)


def targeted_feedback(review: StepReview) -> str | None:
    """What the refiner is told: which step is wrong, why, and what to keep."""
    if review.verdict is None:
        return None
    step = review.verdict.first_wrong_step
    reason = review.verdict.reason.strip()
    if step == NO_ERROR:
        return f"Verdict: correct\nNo step is wrong. {reason}".strip()
    keep = (f"Steps 1 to {step - 1} are right: keep them. " if step > 1 else "")
    return (f"Verdict: incorrect\nStep {step} is the first wrong step: {reason}\n"
            f"{keep}Redo step {step} and every step after it.")


def _assessment(review: StepReview, judgement: JudgementRecord) -> Assessment:
    return Assessment(review.score, review.first_wrong_step == NO_ERROR,
                      targeted_feedback(review), [judgement.id])


class RouteConfig(StrategyConfig):
    k: int = Field(5, ge=1, le=1024, description="samples that decide easy or hard")
    threshold: float = Field(0.8, ge=0.0, le=1.0,
                             description="agreement (majority share of the k samples) at or "
                             "above which a task is easy")
    max_rounds: int = Field(3, ge=0, le=50, description="refinements at most on a hard task")
    select: Literal["vote", "step_critic"] = Field(
        "vote", description="which candidate a hard task refines: the majority's first sample, "
        "or the best of one review per distinct answer (step score × votes)")
    patience: int | None = Field(None, ge=1, description="stop after this many refinements "
                                 "without a better step score; null: never")
    keep_best: bool = Field(True, description="return the best-reviewed version, not the last")


class Route(Strategy):
    name: ClassVar[str] = "route"
    Config: ClassVar[type[StrategyConfig]] = RouteConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, RouteConfig)
        cands = await ctx.sample_candidates(cfg.k)
        if not cands:
            return StrategyResult(None, "no candidate: budget exhausted before generation")
        winner, tally = majority(ctx.task, cands, [1.0] * len(cands))
        top = max(tally.values(), default=0.0)
        agreement = top / len(cands)
        decision = "easy" if agreement >= cfg.threshold else "hard"
        root = ctx.tree.root
        root.meta["route"] = {"decision": decision, "agreement": agreement,
                              "samples": len(cands), "votes": dict(tally)}
        ctx.tree.update(root)
        ctx.tree.judge(root, source="strategy:route", role="router", score=agreement,
                       scale=(0.0, 1.0), verdict=decision,
                       critique=f"{top:g} of {len(cands)} samples agree; threshold "
                                f"{cfg.threshold:g}",
                       meta={"votes": dict(tally), "samples": len(cands)})
        for c in cands:
            k = vote_key(ctx.task, c.answer)
            c.value = tally.get(k, 0.0) / len(cands) if k is not None else 0.0
        vote_pick = winner or cands[0]
        if decision == "easy":
            return self._finish(ctx, cands, vote_pick, "easy",
                                f"easy: {top:g} of {len(cands)} samples agree")

        critic = ctx.roles.make(StepCritic, "step_critic")
        refiner = ctx.roles.make(MemoryRefiner, "refiner")
        start, first = vote_pick, None
        if cfg.select == "step_critic":
            try:
                start, first = await self._select(ctx, critic, cands, tally)
            except BudgetExceeded:
                return self._finish(ctx, cands, vote_pick, "hard",
                                    "hard; budget ended while reviewing: majority answer")
        for c in cands:
            c.meta["chosen"] = False  # the loop marks the version it keeps
            ctx.tree.update(c)

        async def assess(node: NodeRecord, rnd: int) -> Assessment:
            review = await critic.review(ctx.task, node.text, node_id=node.id)
            j = record_step_review(ctx, node, critic, review, key=rnd, meta={"round": rnd})
            return _assessment(review, j)

        settings = LoopSettings(max_rounds=cfg.max_rounds, patience=cfg.patience,
                                keep_best=cfg.keep_best)
        out = await refine_loop(ctx, start, assess, refiner, settings, first=first)
        for v in out.versions:
            v.meta["route"] = "hard"
            ctx.tree.update(v)
        return StrategyResult(out.chosen, f"hard: {top:g} of {len(cands)} samples agree; "
                                          f"{out.note}")

    @staticmethod
    def _finish(ctx: TaskContext, cands: list[NodeRecord], chosen: NodeRecord, decision: str,
                note: str) -> StrategyResult:
        for c in cands:
            c.meta["chosen"] = c is chosen
            if c is chosen:
                c.meta["route"] = decision
            ctx.tree.update(c)
        return StrategyResult(chosen, note)

    @staticmethod
    async def _select(ctx: TaskContext, critic: StepCritic, cands: list[NodeRecord],
                      tally: dict[str, float]) -> tuple[NodeRecord, Assessment | None]:
        """Review one candidate per distinct answer; the best step score wins."""
        reps: dict[str, NodeRecord] = {}
        for c in cands:
            k = vote_key(ctx.task, c.answer)
            if k is not None:
                reps.setdefault(k, c)
        pool = list(reps.items()) or [("", cands[0])]
        results = await asyncio.gather(
            *(critic.review(ctx.task, c.text, node_id=c.id) for _, c in pool),
            return_exceptions=True,
        )
        budget: BudgetExceeded | None = None
        best: tuple[tuple[float, float, int], NodeRecord, StepReview, JudgementRecord] | None = None
        for i, ((key, node), res) in enumerate(zip(pool, results, strict=True)):
            if isinstance(res, BudgetExceeded):
                budget = budget or res
                continue
            if isinstance(res, BaseException):
                raise res
            j = record_step_review(ctx, node, critic, res, key=0,
                                   meta={"round": 0, "select": True})
            score = res.score if res.score is not None else -1.0
            rank = (score * tally.get(key, 1.0), score, -i)
            if best is None or rank > best[0]:
                best = (rank, node, res, j)
        if budget is not None:
            raise budget
        assert best is not None
        return best[1], _assessment(best[2], best[3])
