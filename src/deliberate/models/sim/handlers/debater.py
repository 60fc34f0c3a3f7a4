"""sim as a debater in a later round: the prompt holds ``<other_answers>``.

(Round 0 uses the generator's templates, so the core plays it as a generator.)
A debater whose answer all others share keeps it. Otherwise it looks at the
answer most of the others give (ties: the first shown) and checks both that one
and its own with the critic's error rates (``sensitivity``/``specificity``):

- the other looks right and its own wrong: it adopts the other's solution;
- its own looks right and the other wrong: it keeps its own;
- both look right: it conforms with probability equal to the share of the
  others holding that answer, else keeps its own;
- both look wrong: it solves the task again (right with ``p_correct``).

Answers always come from the task's behaviour (a copy of a real solution or a
fresh sample), so debates converge — sometimes on a wrong answer, when the
checks err. See docs/sim.md.
"""

from __future__ import annotations

import re

from deliberate.models.sim.core import Behaviour, HandlerContext
from deliberate.models.sim.handlers.pairwise import block
from deliberate.tasks.task import Task
from deliberate.verifiers.base import parse_answer, vote_key

_ANSWER = re.compile(r"<answer>\n?(.*?)\n?</answer>", re.DOTALL)


def _key(task: Task, text: str) -> str | None:
    return vote_key(task, parse_answer(task, text))


class DebaterHandler:
    name = "debater"

    def matches(self, text: str) -> bool:
        return "<other_answers>" in text and "<your_answer>" in text

    def respond(self, ctx: HandlerContext) -> str:
        text = ctx.parsed.text
        own = block(text, "your_answer") or ""
        others: list[str] = _ANSWER.findall(block(text, "other_answers") or "")
        task, bh = ctx.task, ctx.behaviour
        if task is None or bh is None or not others:
            return own
        own_key = _key(task, own)
        keys = [_key(task, o) for o in others]
        counts: dict[str, int] = {}
        for k in keys:
            if k is not None:
                counts[k] = counts.get(k, 0) + 1
        if not counts or (own_key is not None and set(counts) == {own_key}
                          and None not in keys):
            return own
        top = max(counts, key=lambda k: (counts[k], -keys.index(k)))
        if top == own_key:
            return own
        other = others[keys.index(top)]
        own_ok = self._looks_right(ctx, bh, own, "own")
        other_ok = self._looks_right(ctx, bh, other, "other")
        if other_ok and not own_ok:
            return other
        if own_ok and not other_ok:
            return own
        if own_ok and other_ok:
            share = counts[top] / len(others)
            return other if ctx.draws.uniform("conform") < share else own
        rng = ctx.draws.rng("text")
        if ctx.draws.uniform("resolve") < ctx.sim.p_correct(task):
            return bh.correct(rng)
        return bh.wrong(ctx.sim.mode(ctx.draws), rng)

    @staticmethod
    def _looks_right(ctx: HandlerContext, bh: Behaviour, candidate: str, label: str) -> bool:
        p = ctx.sim.params
        u = ctx.draws.uniform(f"check-{label}")
        return u < p.specificity if bh.is_right(candidate) else u >= p.sensitivity


HANDLER = DebaterHandler()
