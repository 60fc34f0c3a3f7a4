"""sim as the pairwise judge: the prompt holds ``<candidate_a>`` and ``<candidate_b>``.

The judge knows which candidate is right (``behaviour.is_right``). Per question it
*discerns* with probability ``(sensitivity + specificity) / 2`` — the sim critic's
balanced accuracy — and then names the right candidate (or "tie" when both are
right or both wrong). When it does not discern it falls back on position and
names candidate A: the sim's position bias is exactly ``1 - discern``, derived
from the critic's error rates rather than a parameter of its own. A judge asked
both orders therefore never makes a consistent wrong pick: its errors show up as
disagreements, which the position swap turns into ties (see docs/sim.md).

Which candidate is right comes from the task: a pair labelled in the task's
metadata (``PAIR_LABELS``, e.g. LLMBar items with their gold preference) decides by
the label; any other pair by ``behaviour.is_right``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from deliberate.models._matching import normalise_text
from deliberate.models.sim.core import HandlerContext
from deliberate.tasks.task import Task

PAIR_LABELS = "pair_labels"
"""Task metadata key: pairs of outputs whose better one is known (gold preferences),
as a list of ``{"better": str, "worse": str}``."""


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
        labelled = labelled_pair(ctx.task, a, b)
        if labelled is not None:
            better = "A" if labelled[0] else "B"
            worse = "B" if labelled[0] else "A"
            return _reply(better, f"{worse} follows the instruction less closely than {better}.")
        ra, rb = bh.is_right(a), bh.is_right(b)
        if ra and rb:
            return _reply("tie", "Both answers are right.")
        if not ra and not rb:
            return _reply("tie", "Both answers are wrong. A: " + bh.explain(a))
        loser = "B" if ra else "A"
        return _reply("A" if ra else "B",
                      f"{loser} is wrong: " + bh.explain(b if ra else a))


def labelled_pair(task: Task | None, a: str, b: str) -> tuple[bool, bool] | None:
    """Whether ``a`` and ``b`` are the better output, if the task labels this pair
    (in either order, whitespace normalised); None if it does not."""
    labels = task.metadata.get(PAIR_LABELS) if task is not None else None
    if not isinstance(labels, list):
        return None
    shown = (normalise_text(a), normalise_text(b))
    for entry in labels:
        if not isinstance(entry, Mapping):
            continue
        better, worse = entry.get("better"), entry.get("worse")
        if not isinstance(better, str) or not isinstance(worse, str):
            continue
        pair = (normalise_text(better), normalise_text(worse))
        if shown == pair:
            return True, False
        if shown == pair[::-1]:
            return False, True
    return None


def _reply(winner: str, reason: str) -> str:
    return json.dumps({"winner": winner, "reason": reason})


HANDLER = PairwiseHandler()
