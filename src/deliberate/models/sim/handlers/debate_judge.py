"""sim as a debate judge: the prompt holds ``<finalists>`` (and later ``<other_votes>``).

The judge knows which finalists are right (``behaviour.is_right``).

- **First vote** (no vote of its own in the prompt): with probability
  ``sensitivity`` it votes for a right finalist, uniformly among them; otherwise
  for a wrong one. When the finalists are all right or all wrong it votes for any,
  uniformly.
- **Later rounds**: it keeps its previous vote unless the plurality of the other
  judges' votes (ties: the lower finalist number) names another finalist; then it
  switches to that one with probability :data:`SWITCH_RATE`, whatever is right —
  a judge of this skill cannot tell a good argument from a confident one, so the
  debate sharpens the first round's majority, right or wrong. A judge whose own
  previous vote is missing votes afresh as in round one.

Its reason names the finalist and says why in a sentence (the behaviour's approval,
and the first wrong finalist's error when it picked a right one). Without a known
task it votes uniformly. Every choice comes from the sample's own draws.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from deliberate.models.sim.core import Behaviour, HandlerContext
from deliberate.models.sim.handlers.pairwise import block

SWITCH_RATE = 0.3
"""P(a judge adopts the other judges' plurality choice when it differs from its own)."""

_FINALIST = re.compile(r'<finalist n="(\d+)">\n?(.*?)\n?</finalist>', re.DOTALL)
_OWN = re.compile(r'<your_vote choice="(\d+)">')
_VOTE = re.compile(r'<vote judge="\d+" choice="(\d+)">')


def read_finalists(text: str) -> list[str]:
    """The finalists' texts in number order."""
    inner = block(text, "finalists") or ""
    return [body for _, body in sorted((int(n), b) for n, b in _FINALIST.findall(inner))]


@dataclass(frozen=True, slots=True)
class DebateJudgeHandler:
    name: str = "debate_judge"

    def matches(self, text: str) -> bool:
        return "<finalists>" in text

    def respond(self, ctx: HandlerContext) -> str:
        text = ctx.parsed.text
        finalists = read_finalists(text)
        m = len(finalists)
        if m == 0:
            return _reply(1, "There is only one answer to choose.")
        own = _own(text, m)
        others = [int(c) for c in _VOTE.findall(block(text, "other_votes") or "")]
        others = [c for c in others if 1 <= c <= m]
        bh = ctx.behaviour
        if own is not None:
            top = _plurality(others) if others else own
            if top != own and ctx.draws.uniform("switch") < SWITCH_RATE:
                return _reply(top, f"I now side with the other judges: finalist {top} "
                              f"holds up. " + _why(ctx, bh, finalists, top))
            return _reply(own, f"I keep my vote for finalist {own}. "
                          + _why(ctx, bh, finalists, own))
        choice = self._first_vote(ctx, bh, finalists)
        return _reply(choice, f"Finalist {choice} is the best answer. "
                      + _why(ctx, bh, finalists, choice))

    @staticmethod
    def _first_vote(ctx: HandlerContext, bh: Behaviour | None, finalists: list[str]) -> int:
        numbers = list(range(1, len(finalists) + 1))
        rng = ctx.draws.rng("choice")
        if bh is None:
            return rng.choice(numbers)
        right = [n for n in numbers if bh.is_right(finalists[n - 1])]
        wrong = [n for n in numbers if n not in right]
        if not right or not wrong:
            return rng.choice(numbers)
        if ctx.draws.uniform("discern") < ctx.sim.params.sensitivity:
            return rng.choice(right)
        return rng.choice(wrong)


def _own(text: str, m: int) -> int | None:
    found = _OWN.search(text)
    if found is None:
        return None
    n = int(found.group(1))
    return n if 1 <= n <= m else None


def _plurality(choices: list[int]) -> int:
    counts: dict[int, int] = {}
    for c in choices:
        counts[c] = counts.get(c, 0) + 1
    return min(counts, key=lambda c: (-counts[c], c))


def _why(ctx: HandlerContext, bh: Behaviour | None, finalists: list[str], choice: int) -> str:
    """A sentence for the vote: approval of the choice, and a wrong rival's error."""
    if bh is None:
        return "It reads as the most complete answer."
    rng = ctx.draws.rng("reason")
    said = bh.approve(finalists[choice - 1], rng)
    if bh.is_right(finalists[choice - 1]):
        wrong = [n for n in range(1, len(finalists) + 1) if not bh.is_right(finalists[n - 1])]
        if wrong:
            said += f" Finalist {wrong[0]} is wrong: " + bh.explain(finalists[wrong[0] - 1])
    return said


def _reply(choice: int, reason: str) -> str:
    return json.dumps({"choice": choice, "reason": reason})


HANDLER = DebateJudgeHandler()
