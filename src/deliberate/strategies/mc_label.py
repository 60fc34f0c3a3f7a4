"""Monte Carlo step labels (Math-Shepherd): how far each prefix of a solution gets.

Samples ``n`` whole solutions, cuts each into steps (``split``: one per line, per
blank-line paragraph, or per ``1.``/``Step 2:`` label, as the step-wise search cuts
them), and for each prefix of steps 1..k (k below the number of steps) asks the
completer for ``m`` continuations in one request. Each continuation is joined to
its prefix and graded against the reference with the run's grading verifier; the
share that reach the reference answer is step k's **estimate** (soft
estimation). The last step's estimate is the grade of the whole solution itself
(the solution is its own one rollout of the full prefix).

The tree:

- every solution is a ``generate`` node under the root (graded by the engine, as
  for best-of-N) and gets a ``verifier`` judgement here (its last step);
- every continuation is a node under its solution: role ``completer``, operator
  ``rollout``, text the continuation alone (the prefix is the first
  ``meta["prefix_steps"]`` steps of the parent's ``mc_steps`` judgement), answer
  parsed from prefix + continuation, with a ``verifier`` judgement on the whole;
- every fully labelled solution gets ONE judgement: role ``mc_steps``, source
  ``mc:m=<m>``, ``first_wrong_step`` the first step whose estimate is 0 (hard
  estimation: no rollout from that prefix reached the answer), -1 when none is;
  ``score`` the last step's estimate on 0..1; meta ``steps`` (as cut), ``estimates``
  (one per step), ``m``, ``hits`` and ``rollouts`` (per step), ``split``.

The chosen node is the solution with the highest last-step estimate, ties to the
first. That estimate is the reference grade, so this strategy's accuracy is the
oracle's (is any sample right): it is a labelling strategy, not a way to answer.

Where it differs from Math-Shepherd, on purpose:

- no early stop at the first zero: every prefix is rolled out, so every step has
  a soft estimate for PRM training (Math-Shepherd also labels every step);
- ``max_steps``: a solution with more steps is not labelled (noted), rather than
  merging steps;
- ``only_wrong`` (off by default) labels only solutions the verifier fails: a
  right final answer does not prove every step right, so the default labels all.

Requests: each (solution, prefix) gets its own block of ``m`` sample indices
(``offset = (sample_index · max_steps + k - 1) · m``), so two solutions sharing a
prefix get independent rollouts, as if labelled separately. Without a budget
every prefix of every solution is asked at once; under any budget (task or run)
solutions are labelled one after another, each one's prefixes at once, so a budget
ends with whole solutions labelled rather than fragments of all of them.

Budget: a solution whose rollouts were cut short (a refused request, or fewer
than ``m`` samples granted) gets no ``mc_steps`` judgement, only
``meta["mc_label"] = "incomplete"``; its rollouts stay in the tree. A judgement
always stands for ``m`` rollouts at every prefix.

Grading needs a verifier that can judge the task (a reference answer, tests):
without one the run stops with a UsageError saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded, UsageError
from deliberate.models.base import Completion
from deliberate.models.budget import Ledger
from deliberate.roles.completer import Completer
from deliberate.search.step_space import StepSplitter
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import JudgementRecord, NodeRecord
from deliberate.verifiers.base import parse_answer

NO_ERROR = -1
"""``first_wrong_step`` when every step has a rollout that reached the answer."""


class MCLabelConfig(StrategyConfig):
    n: int = Field(4, ge=1, le=1024, description="solutions to sample and label")
    m: int = Field(8, ge=1, le=128, description="rollouts (continuations) per prefix")
    split: Literal["line", "blank", "numbered"] = Field(
        "line", description="how a solution is cut into steps: one per line, per "
        "blank-line paragraph, or per '1.' / 'Step 2:' label")
    max_steps: int = Field(20, ge=1, le=1000, description="solutions with more steps "
                           "are not labelled")
    only_wrong: bool = Field(False, description="label only solutions the verifier "
                             "fails (a right answer does not prove every step right)")


@dataclass(slots=True)
class PrefixRollouts:
    """What the rollouts of one prefix gave: how many reached the answer, of how many."""

    k: int
    hits: int
    rollouts: int
    complete: bool


def first_zero(estimates: Sequence[float]) -> int:
    """Hard estimation: the 1-based first step whose estimate is 0, or -1."""
    return next((i for i, e in enumerate(estimates, start=1) if e == 0), NO_ERROR)


def bounded(ledger: Ledger | None) -> bool:
    """Whether any budget (the task's or a parent's) limits this ledger."""
    while ledger is not None:
        if not ledger.limits.empty:
            return True
        ledger = ledger.parent
    return False


class MCLabel(Strategy):
    name: ClassVar[str] = "mc_label"
    Config: ClassVar[type[StrategyConfig]] = MCLabelConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, MCLabelConfig)
        if ctx.scoring_verifier is None:
            raise UsageError(
                f"mc_label needs a verifier that grades task {ctx.task.id!r} against its "
                "reference (a reference answer or tests, and --verifier other than none)")
        sols = await ctx.sample_candidates(cfg.n)
        if not sols:
            return StrategyResult(None, "no candidate: budget exhausted before generation")
        finals = list(await asyncio.gather(*(ctx.verify_node(s) for s in sols)))
        grades = [_grade(ctx, j) for j in finals]

        splitter = StepSplitter(cfg.split)
        plan: list[tuple[NodeRecord, list[str], float]] = []
        skipped = 0
        for s, g in zip(sols, grades, strict=True):
            steps = splitter.split(s.text)
            if not steps or len(steps) > cfg.max_steps:
                skipped += 1
                continue
            if cfg.only_wrong and g > 0:
                continue
            plan.append((s, steps, g))

        labeller = _Labeller(ctx, cfg, splitter, ctx.roles.make(Completer, "completer"))
        if bounded(ctx.ledger):
            done = [await labeller.label(s, steps) for s, steps, _ in plan]
        else:
            done = list(await asyncio.gather(*(labeller.label(s, steps)
                                               for s, steps, _ in plan)))
        labelled = incomplete = 0
        for (s, steps, g), prefixes in zip(plan, done, strict=True):
            if any(not p.complete for p in prefixes):
                incomplete += 1
                s.meta["mc_label"] = "incomplete"
                ctx.tree.update(s)
                continue
            record_label(ctx, s, steps, prefixes, g, cfg.m, cfg.split)
            labelled += 1

        best = max(range(len(sols)), key=lambda i: (grades[i], -i))
        chosen = sols[best]
        for s, g in zip(sols, grades, strict=True):
            s.value = g
            s.meta["chosen"] = s is chosen
            ctx.tree.update(s)
        ctx.stats["mc_labelled"] = labelled
        ctx.stats["mc_rollouts"] = labeller.rollouts
        notes = []
        if incomplete:
            ctx.stats["mc_incomplete"] = incomplete
            notes.append(f"{incomplete} solution(s) left unlabelled by the budget")
        if skipped:
            ctx.stats["mc_skipped"] = skipped
            notes.append(f"{skipped} solution(s) with no steps or more than "
                         f"{cfg.max_steps} not labelled")
        return StrategyResult(chosen, "; ".join(notes))


def _grade(ctx: TaskContext, j: JudgementRecord | None) -> float:
    """A grade on 0..1 from a verifier judgement; a UsageError when it could not grade."""
    if j is None or j.verdict not in ("correct", "incorrect"):
        name = ctx.scoring_verifier.name if ctx.scoring_verifier else "none"
        why = j.critique if j is not None and j.critique else "no verdict"
        raise UsageError(f"mc_label: verifier {name} cannot grade task {ctx.task.id!r} "
                         f"({why}); Monte Carlo labels need a reference to reach")
    return 1.0 if j.verdict == "correct" else 0.0


def record_label(ctx: TaskContext, node: NodeRecord, steps: list[str],
                 prefixes: Sequence[PrefixRollouts], grade: float, m: int,
                 split: str) -> JudgementRecord:
    """The one ``mc_steps`` judgement of a fully labelled solution."""
    estimates = [p.hits / p.rollouts for p in prefixes] + [grade]
    first = first_zero(estimates)
    shown = ", ".join(f"{e:.2f}" for e in estimates)
    where = ("every step has a rollout that reaches the reference answer" if first == NO_ERROR
             else f"first step from which no rollout reaches the reference answer: {first}")
    meta: dict[str, Any] = {
        "steps": steps, "estimates": estimates, "m": m,
        "hits": [p.hits for p in prefixes] + [int(grade)],
        "rollouts": [p.rollouts for p in prefixes] + [1],
        "split": split,
    }
    return ctx.tree.judge(node, source=f"mc:m={m}", role="mc_steps", score=grade,
                          scale=(0.0, 1.0), first_wrong_step=first,
                          critique=f"Monte Carlo estimates per step ({m} rollouts per "
                                   f"prefix; the last step is the solution's own grade): "
                                   f"{shown}; {where}.",
                          meta=meta)


class _Labeller:
    """Rolls out every prefix of one solution and grades the rollouts."""

    def __init__(self, ctx: TaskContext, cfg: MCLabelConfig, splitter: StepSplitter,
                 completer: Completer) -> None:
        self.ctx = ctx
        self.cfg = cfg
        self.splitter = splitter
        self.completer = completer
        self.rollouts = 0

    async def label(self, sol: NodeRecord, steps: list[str]) -> list[PrefixRollouts]:
        """One entry per prefix 1..len(steps)-1, in order; incomplete ones flagged."""
        ks = range(1, len(steps))
        replies = await asyncio.gather(*(self._ask(sol, steps, k) for k in ks))
        # Nodes are added in (prefix, sample) order whatever order the replies came in.
        added: list[tuple[int, NodeRecord, str]] = []
        complete: dict[int, bool] = {}
        for k, reply in zip(ks, replies, strict=True):
            if reply is None:
                complete[k] = False
                continue
            comps, call_id = reply
            complete[k] = len(comps) == self.cfg.m
            prefix = self.splitter.join(steps[:k])
            for c in comps:
                whole = prefix + self.splitter.joiner + c.text
                meta: dict[str, Any] = {"prefix_steps": k}
                if c.finish_reason != "stop":
                    meta["finish_reason"] = c.finish_reason
                node = self.ctx.tree.add(
                    sol, role="completer", operator="rollout", key=(k, c.sample_index),
                    text=c.text, answer=parse_answer(self.ctx.task, whole), call_id=call_id,
                    sample_index=c.sample_index, meta=meta)
                added.append((k, node, whole))
        self.rollouts += len(added)
        judged = await asyncio.gather(*(self.ctx.verify_node(node, text=whole)
                                        for _, node, whole in added))
        hits = dict.fromkeys(ks, 0)
        counts = dict.fromkeys(ks, 0)
        for (k, _, _), j in zip(added, judged, strict=True):
            hits[k] += int(_grade(self.ctx, j) > 0)
            counts[k] += 1
        return [PrefixRollouts(k, hits[k], counts[k], complete[k] and counts[k] > 0)
                for k in ks]

    async def _ask(self, sol: NodeRecord, steps: list[str],
                   k: int) -> tuple[list[Completion], str | None] | None:
        cfg = self.cfg
        index = sol.sample_index if sol.sample_index is not None else 0
        offset = (index * cfg.max_steps + k - 1) * cfg.m
        try:
            resp = await self.completer.continue_from(
                self.ctx.task, steps[:k], cfg.m, offset=offset, node_id=sol.id,
                joiner=self.splitter.joiner)
        except BudgetExceeded:
            return None
        call_id = resp.call_ids[0] if resp.call_ids else None
        return sorted(resp.completions, key=lambda c: c.sample_index), call_id
