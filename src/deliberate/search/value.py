"""Value functions for tree search: the LLM hybrid value, verifier reward, a weighted mix.

Every value function records what it said as a judgement on the node (role
``value`` or ``verifier``) and returns a :class:`Valuation` normalised to [0, 1].
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.roles.value import ValueRole
from deliberate.search.base import SearchSpace, Valuation, ValueFunction
from deliberate.tree import NodeRecord
from deliberate.verifiers.base import parse_answer


@dataclass(slots=True)
class LLMValue:
    """The SWE-Search hybrid value: a score on a declared scale, an explanation, advice.

    The score is recorded on its own scale (default -100..100) in a ``value``
    judgement whose critique is the explanation and whose meta holds the advice.
    """

    role_name: str = "value"
    scale: tuple[float, float] = (-100.0, 100.0)
    name: str = "llm"

    async def evaluate(self, ctx: TaskContext, space: SearchSpace,
                       node: NodeRecord) -> Valuation | None:
        role = ctx.roles.make(ValueRole, self.role_name, scale=self.scale)
        text = space.candidate(ctx, node)
        try:
            res = await role.value(ctx.task, text, node_id=node.id)
        except BudgetExceeded:
            return None
        source = f"model:{role.model.model_id}"
        meta: dict[str, Any] = {"call_ids": res.call_ids}
        if res.repaired:
            meta["repaired"] = True
        if res.value is None:
            ctx.tree.judge(node, source=source, role="value", verdict="parse_failure",
                           critique=res.error, scale=self.scale, meta={**meta, "raw": res.raw})
            return None
        v = res.value
        lo, hi = self.scale
        j = ctx.tree.judge(node, source=source, role="value", score=v.score, scale=self.scale,
                           critique=v.explanation, meta={**meta, "advice": v.advice})
        return Valuation((v.score - lo) / (hi - lo), v.explanation, v.advice, j.id)


@dataclass(slots=True)
class VerifierValue:
    """Reward from the scoring verifier: passed 1, failed 0, else its score in [0, 1].

    Only a finished candidate is verified: an unfinished step prefix has no
    answer to check, so it gets no value (rather than a misleading 0).
    """

    name: str = "verifier"

    async def evaluate(self, ctx: TaskContext, space: SearchSpace,
                       node: NodeRecord) -> Valuation | None:
        v = ctx.scoring_verifier
        if v is None or not space.is_terminal(ctx, node):
            return None
        text = space.candidate(ctx, node)
        answer = node.answer if text == node.text else parse_answer(ctx.task, text)
        res = await v.verify(ctx.task, text, answer)
        if res.passed is not None:
            value = 1.0 if res.passed else 0.0
        elif res.score is not None:
            value = min(1.0, max(0.0, float(res.score)))
        else:
            return None
        verdict = None if res.passed is None else ("correct" if res.passed else "incorrect")
        j = ctx.tree.judge(node, source=f"verifier:{v.name}", role="verifier", score=value,
                           scale=(0.0, 1.0), verdict=verdict, critique=res.details)
        return Valuation(value, res.details or "", "", j.id)


@dataclass(slots=True)
class MixedValue:
    """A weighted mean of several values; parts that gave nothing are left out.

    Explanations and advice are joined in part order.
    """

    parts: Sequence[ValueFunction]
    weights: Sequence[float]
    name: str = "mix"

    def __post_init__(self) -> None:
        if len(self.parts) != len(self.weights) or not self.parts:
            raise ValueError("a mixed value needs one weight per part, and at least one part")
        if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
            raise ValueError("mix weights must be non-negative with a positive sum")

    async def evaluate(self, ctx: TaskContext, space: SearchSpace,
                       node: NodeRecord) -> Valuation | None:
        got = await asyncio.gather(*(p.evaluate(ctx, space, node) for p in self.parts))
        pairs = [(w, v) for w, v in zip(self.weights, got, strict=True) if v is not None]
        total = sum(w for w, _ in pairs)
        if not pairs or total <= 0:
            return None
        value = sum(w * v.value for w, v in pairs) / total
        expl = "\n".join(v.explanation for _, v in pairs if v.explanation)
        advice = "\n".join(v.advice for _, v in pairs if v.advice)
        return Valuation(value, expl, advice, pairs[0][1].judgement_id)
