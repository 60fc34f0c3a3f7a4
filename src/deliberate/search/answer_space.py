"""Answer refinement as a search space: a node is a whole candidate.

The root's children are fresh samples from the generator. Expanding any other
node makes ``k`` children, each either a **refinement** of the node (the Refiner
role, told the node's verdict, the value's explanation and advice, advice from
siblings and which sibling answers were already tried) or a **fresh** sample
(operator ``generate``). Which one is decided per child by a deterministic rule:
child ``i`` of expansion ``key`` is fresh when a draw from
``ctx.rng("fresh", node.id, key, i)`` falls below ``fresh_rate`` (0 by default:
always refine). Every node is a finished candidate.

A refinement keeps the critique it was given (``meta["critique"]``) and the
judgements whose words are in it (``meta["feedback_ids"]``: the node's own
valuation judgements, then the siblings' whose advice is passed on), so exports can
tell which critique drove which refinement.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.models.base import ChatResponse
from deliberate.roles.roles import Refiner
from deliberate.search.base import Feedback
from deliberate.tree import NodeRecord
from deliberate.verifiers.base import parse_answer

VALUATION_ROLES = ("value", "verifier", "step_critic")
"""Roles of the judgements a value function records (their words become a valuation)."""


def critique_text(node: NodeRecord, feedback: Feedback | None) -> str:
    """What the refiner is told: the node's verdict and valuation plus the feedback."""
    value = node.meta.get("valuation")
    lines: list[str] = []
    if node.value is not None:
        verdict = "correct" if node.value >= 0.5 else "incorrect"
        lines.append(f"Verdict: {verdict} (estimated value {node.value:.2f}).")
    if isinstance(value, dict):
        if value.get("explanation"):
            lines.append(str(value["explanation"]))
        if value.get("advice"):
            lines.append(f"Advice: {value['advice']}")
    if feedback is not None:
        lines += [f"Advice from another attempt: {a}" for a in feedback.advice if a]
        if feedback.siblings:
            lines.append("Other attempts already tried (do something different):")
            lines += [f"- {s[:200]}" for s in feedback.siblings]
    return "\n".join(lines) or "No critique is available; check the candidate carefully."


def feedback_ids(ctx: TaskContext, node: NodeRecord, feedback: Feedback | None) -> list[str]:
    """The judgements whose words :func:`critique_text` passes on: the node's own
    valuation (when it has one) and the siblings' valuations whose advice it repeats."""
    ids: list[str] = []
    if isinstance(node.meta.get("valuation"), dict):
        ids += [j.id for j in ctx.tree.judgements.get(node.id, [])
                if j.role in VALUATION_ROLES and j.verdict != "parse_failure"]
    if feedback is not None and feedback.advice and node.parent_id is not None:
        wanted = set(feedback.advice)
        for s in ctx.tree.kids(ctx.tree.nodes[node.parent_id]):
            if s.id != node.id:
                ids += [j.id for j in ctx.tree.judgements.get(s.id, [])
                        if j.role in VALUATION_ROLES and j.meta.get("advice") in wanted]
    return list(dict.fromkeys(ids))


@dataclass(slots=True)
class AnswerSpace:
    """Whole-candidate search: fresh samples at the root, refinements below."""

    fresh_rate: float = 0.0
    refiner_role: str = "refiner"
    name: str = "answer"

    async def expand(self, ctx: TaskContext, node: NodeRecord, k: int, *,
                     feedback: Feedback | None = None, key: object = 0) -> list[NodeRecord]:
        if node.parent_id is None:
            return await ctx.sample_candidates(k, parent=node, offset=_offset(key, k))
        fresh = [ctx.rng("fresh", node.id, key, i).random() < self.fresh_rate for i in range(k)]
        refiner = ctx.roles.make(Refiner, self.refiner_role)
        critique = critique_text(node, feedback)
        driven_by = feedback_ids(ctx, node, feedback)

        async def call(i: int, fresh_sample: bool) -> ChatResponse | None:
            try:
                if fresh_sample:
                    return await ctx.generator.generate(
                        ctx.task, 1, offset=_fresh_offset(node, key, i), node_id=node.id)
                return await refiner.refine(ctx.task, node.text, critique, node_id=node.id,
                                            sample=_offset(key, k) + i)
            except BudgetExceeded:
                return None

        replies = await asyncio.gather(*(call(i, f) for i, f in enumerate(fresh)))
        made = []
        for i, (f, resp) in enumerate(zip(fresh, replies, strict=True)):
            if resp is None or not resp.completions:
                continue
            text = resp.texts[0]
            made.append(ctx.tree.add(
                node, role="generator" if f else "refiner",
                operator="generate" if f else "refine", key=f"{key}:{i}", text=text,
                answer=parse_answer(ctx.task, text),
                call_id=resp.call_ids[0] if resp.call_ids else None,
                meta={} if f else {"critique": critique, "feedback_ids": driven_by}))
        return made

    def is_terminal(self, ctx: TaskContext, node: NodeRecord) -> bool:
        return node.parent_id is not None

    def can_expand(self, ctx: TaskContext, node: NodeRecord) -> bool:
        return True

    def candidate(self, ctx: TaskContext, node: NodeRecord) -> str:
        return node.text


def _offset(key: object, k: int) -> int:
    """Sample offset of an expansion: distinct expansions of a node draw distinct samples."""
    return key * k if isinstance(key, int) else 0


def _fresh_offset(node: NodeRecord, key: object, i: int) -> int:
    """A fresh sample's offset: past the root's samples, distinct per node and child."""
    base = int(node.id[:6], 16)
    return 1000 + (base * 97 + (key if isinstance(key, int) else 0) * 13 + i) % 1_000_000
