"""sim as the pairwise judge: the prompt holds ``<candidate_a>`` and ``<candidate_b>``.

The judge knows which candidate is right (``behaviour.is_right``). Per question it
*discerns* with probability ``(sensitivity + specificity) / 2`` — the sim critic's
balanced accuracy — and then names the right candidate (or "tie" when both are
right or both wrong). When it does not discern it falls back on position and
names candidate A: the sim's position bias is exactly ``1 - discern``, derived
from the critic's error rates rather than a parameter of its own. A judge asked
both orders therefore never makes a consistent wrong pick: its errors show up as
disagreements, which the position swap turns into ties (see docs/sim.md).
"""

from __future__ import annotations

import json

from deliberate.models.sim.core import HandlerContext


def block(text: str, tag: str) -> str | None:
    """The text between the first ``<tag>`` and the last ``</tag>`` after it."""
    start = text.find(f"<{tag}>")
    if start < 0:
        return None
    start += len(tag) + 2
    end = text.rfind(f"</{tag}>")
    if end < start:
        return None
    return text[start:end].strip("\n")


class PairwiseHandler:
    name = "pairwise"

    def matches(self, text: str) -> bool:
        return "<candidate_a>" in text and "<candidate_b>" in text

    def respond(self, ctx: HandlerContext) -> str:
        text = ctx.parsed.text
        a, b = block(text, "candidate_a"), block(text, "candidate_b")
        p = ctx.sim.params
        discern = (p.sensitivity + p.specificity) / 2
        bh = ctx.behaviour
        rng = ctx.draws.rng("reason")
        if bh is None or a is None or b is None:
            return _reply("A", "Both answers look plausible; A reads slightly better.")
        if ctx.draws.uniform("discern") >= discern:
            return _reply("A", "A is the better answer. " + bh.approve(a, rng))
        ra, rb = bh.is_right(a), bh.is_right(b)
        if ra and rb:
            return _reply("tie", "Both answers are right.")
        if not ra and not rb:
            return _reply("tie", "Both answers are wrong. A: " + bh.explain(a))
        loser = "B" if ra else "A"
        return _reply("A" if ra else "B",
                      f"{loser} is wrong: " + bh.explain(b if ra else a))


def _reply(winner: str, reason: str) -> str:
    return json.dumps({"winner": winner, "reason": reason})


HANDLER = PairwiseHandler()
