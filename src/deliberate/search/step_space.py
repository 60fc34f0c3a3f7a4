"""Step-wise reasoning as a search space: a node is one step, a path is a solution.

Expanding a node asks the :class:`~deliberate.roles.step_proposer.StepProposer` for
``k`` next steps given the steps root→node; a node is terminal when its step is a
final ``Answer:`` line or the depth limit is reached. Prefixes are scored with the
:class:`~deliberate.roles.step_critic.StepCritic` (ProcessBench form): steps before
the first wrong one score 1, the rest 0, and the per-step scores are aggregated by
``last``, ``min`` or ``product`` (search-and-learn's three PRM aggregations).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.models.base import Completion
from deliberate.roles.step_critic import NO_ERROR, StepCritic, StepReview
from deliberate.roles.step_proposer import StepProposer
from deliberate.search.base import Feedback, SearchSpace, Valuation
from deliberate.tree import JudgementRecord, NodeRecord
from deliberate.verifiers.base import parse_answer

SplitMode = Literal["line", "blank", "numbered", "delimiter"]
Aggregate = Literal["last", "min", "product"]

_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*:", re.IGNORECASE | re.MULTILINE)
_NUMBERED = re.compile(r"^\s*(?:step\s+)?\d+\s*[:.)]\s*", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class StepSplitter:
    """How a text is cut into steps.

    ``line``: one step per non-empty line; ``blank``: paragraphs separated by blank
    lines (search-and-learn's convention); ``numbered``: a step starts at each
    ``1.`` / ``Step 2:`` label (the label is dropped; text before the first label is a
    step of its own); ``delimiter``: split on a fixed string.
    """

    mode: SplitMode = "line"
    delimiter: str = ""

    def __post_init__(self) -> None:
        if self.mode == "delimiter" and not self.delimiter:
            raise ValueError("split mode 'delimiter' needs a non-empty delimiter")

    @property
    def joiner(self) -> str:
        """What goes between steps when they are joined back into a solution."""
        return {"blank": "\n\n", "delimiter": self.delimiter}.get(self.mode, "\n")

    def split(self, text: str) -> list[str]:
        if self.mode == "line":
            parts = text.splitlines()
        elif self.mode == "blank":
            parts = re.split(r"\n\s*\n", text)
        elif self.mode == "delimiter":
            parts = text.split(self.delimiter)
        else:
            marks = list(_NUMBERED.finditer(text))
            ends = [m.start() for m in marks[1:]] + [len(text)]
            parts = [text[: marks[0].start()] if marks else text]
            parts += [text[m.end():e] for m, e in zip(marks, ends, strict=True)]
        return [p.strip() for p in parts if p.strip()]

    def first(self, text: str) -> str:
        """The first step of a reply ("" if it has none)."""
        steps = self.split(text)
        return steps[0] if steps else ""

    def join(self, steps: Sequence[str]) -> str:
        return self.joiner.join(steps)


def is_final_step(step: str) -> bool:
    """Whether a step states the final answer (an ``Answer:`` line)."""
    return _ANSWER_LINE.search(step) is not None


def prefix_step_scores(first_wrong_step: int, n_steps: int) -> list[float]:
    """Per-step scores from a first-error verdict: 1 before the error, 0 at and after it."""
    if first_wrong_step == NO_ERROR:
        return [1.0] * n_steps
    if not 1 <= first_wrong_step <= n_steps:
        raise ValueError(f"first wrong step {first_wrong_step} is not -1 or in 1..{n_steps}")
    return [1.0] * (first_wrong_step - 1) + [0.0] * (n_steps - first_wrong_step + 1)


def aggregate(scores: Sequence[float], how: Aggregate) -> float:
    """One value from per-step scores: the last one, the smallest, or their product."""
    if not scores:
        raise ValueError("no step scores to aggregate")
    if how == "last":
        return float(scores[-1])
    if how == "min":
        return float(min(scores))
    if how == "product":
        out = 1.0
        for s in scores:
            out *= s
        return out
    raise ValueError(f"unknown aggregation {how!r}; use last, min or product")


@dataclass(slots=True)
class StepSpace:
    """Grow a solution one step at a time (the SearchSpace of step-wise reasoning)."""

    proposer: StepProposer
    splitter: StepSplitter = StepSplitter()
    max_depth: int = 10
    name: str = "steps"

    @classmethod
    def for_context(cls, ctx: TaskContext, *, splitter: StepSplitter | None = None,
                    max_depth: int = 10, role: str = "step_proposer") -> StepSpace:
        return cls(ctx.roles.make(StepProposer, role), splitter or StepSplitter(), max_depth)

    def steps(self, ctx: TaskContext, node: NodeRecord) -> list[str]:
        """The steps root→node (the root itself holds the task, not a step)."""
        out: list[str] = []
        cur: NodeRecord | None = node
        while cur is not None and cur.parent_id is not None:
            out.append(cur.text)
            cur = ctx.tree.nodes.get(cur.parent_id)
        return out[::-1]

    def candidate(self, ctx: TaskContext, node: NodeRecord) -> str:
        return self.splitter.join(self.steps(ctx, node))

    def is_terminal(self, ctx: TaskContext, node: NodeRecord) -> bool:
        if node.parent_id is None:
            return False
        return is_final_step(node.text) or node.depth >= self.max_depth

    def can_expand(self, ctx: TaskContext, node: NodeRecord) -> bool:
        return not self.is_terminal(ctx, node)

    async def expand(self, ctx: TaskContext, node: NodeRecord, k: int, *,
                     feedback: Feedback | None = None, key: object = 0,
                     offset: int = 0) -> list[NodeRecord]:
        """Up to ``k`` next steps of ``node`` from one request of ``k`` samples; [] when
        the budget ends.

        Identical steps (after splitting) are merged into one child, and a step
        equal to an existing child's is dropped: a tree never holds the same
        prefix twice. ``meta["proposed"]`` counts the samples that proposed a
        step and ``meta["prior"]`` is their share (a PUCT prior, like
        self-consistency over next steps).
        """
        if k < 1 or self.is_terminal(ctx, node):
            return []
        steps = self.steps(ctx, node)
        fb = feedback or Feedback()
        try:
            resp = await self.proposer.propose(ctx.task, steps, k, offset=offset,
                                               node_id=node.id, advice=fb.advice,
                                               siblings=fb.siblings)
        except BudgetExceeded:
            return []
        call_id = resp.call_ids[0] if resp.call_ids else None
        # identical proposals become one child; how many proposed it is its prior
        known = {k.text for k in ctx.tree.kids(node)}
        found: dict[str, list[Completion]] = {}
        for c in sorted(resp.completions, key=lambda c: c.sample_index):
            step = self.splitter.first(c.text)
            if step and step not in known:
                found.setdefault(step, []).append(c)
        total = sum(len(v) for v in found.values())
        out = []
        for step, same in found.items():
            c = same[0]
            final = is_final_step(step)
            meta: dict[str, Any] = {"final": final, "proposed": len(same),
                                    "prior": len(same) / total}
            if c.finish_reason != "stop":
                meta["finish_reason"] = c.finish_reason
            text = self.splitter.join([*steps, step])
            out.append(ctx.tree.add(
                node, role="step_proposer", operator="step", key=(key, c.sample_index),
                text=step, answer=parse_answer(ctx.task, text) if final else None,
                call_id=call_id, sample_index=c.sample_index, meta=meta))
        return out


@dataclass(slots=True)
class StepScorer:
    """Scores a node's prefix with the step critic, aggregated over its steps."""

    critic: StepCritic
    space: StepSpace
    how: Aggregate = "last"
    name: str = "step_critic"

    async def score(self, ctx: TaskContext, node: NodeRecord) -> float | None:
        """The aggregated step score in [0, 1]; None on a parse failure or the budget."""
        j = await self.review(ctx, node)
        return None if j is None else j.score

    async def review(self, ctx: TaskContext, node: NodeRecord) -> JudgementRecord | None:
        """Review the node's prefix; recorded as a ``step_critic`` judgement on the node.

        None when the budget stopped the review.
        """
        steps = self.space.steps(ctx, node)
        try:
            review = await self.critic.review(ctx.task, steps, node_id=node.id)
        except BudgetExceeded:
            return None
        return record_prefix_review(ctx, node, self.critic, review, self.how)


@dataclass(slots=True)
class StepCriticValue:
    """The step critic as a search value (a ValueFunction over a step space).

    The value is the aggregated prefix score; the critic's reason is the
    explanation, and a named wrong step becomes advice for the siblings that are
    proposed next (the words half of a hybrid value).
    """

    scorer: StepScorer
    name: str = "critic"

    async def evaluate(self, ctx: TaskContext, space: SearchSpace,
                       node: NodeRecord) -> Valuation | None:
        j = await self.scorer.review(ctx, node)
        if j is None or j.score is None:
            return None
        advice = ""
        if j.first_wrong_step is not None and j.first_wrong_step != NO_ERROR:
            advice = (f"Step {j.first_wrong_step} looks wrong ({j.critique or 'no reason given'}); "
                      "take a different step there.")
        return Valuation(j.score, j.critique or "", advice, j.id)


def record_prefix_review(ctx: TaskContext, node: NodeRecord, critic: StepCritic,
                         review: StepReview, how: Aggregate) -> JudgementRecord:
    """A prefix review as a judgement: score = aggregated per-step scores on 0..1."""
    meta: dict[str, Any] = {"call_ids": review.call_ids, "steps": len(review.steps),
                            "aggregate": how}
    if review.repaired:
        meta["repaired"] = True
    source = f"model:{critic.model.model_id}"
    step = review.first_wrong_step
    if step is None:
        meta["raw"] = review.raw
        return ctx.tree.judge(node, source=source, role="step_critic",
                              verdict="parse_failure", critique=review.error, meta=meta)
    scores = prefix_step_scores(step, len(review.steps))
    meta["step_scores"] = scores
    reason = review.verdict.reason if review.verdict is not None else ""
    return ctx.tree.judge(node, source=source, role="step_critic",
                          score=aggregate(scores, how), scale=(0.0, 1.0),
                          verdict="correct" if step == NO_ERROR else "incorrect",
                          critique=reason, first_wrong_step=step, meta=meta)
