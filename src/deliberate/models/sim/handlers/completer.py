"""The sim as a completer: continues a partial solution to its final answer.

Matches the ``<solution_prefix>`` block of the completer's template (Monte Carlo
step labels, ``strategies/mc_label.py``). For a math task with a worked solution
the prefix's lines are read against the reference (one line per step, as the
sim's own solutions are written):

- **a prefix that agrees with the reference** is continued with the reference's
  remaining lines; each line that can go wrong (one that computes something, and
  the answer line) is right with probability ``q = p_correct(task) ** (1 / r)``,
  ``r`` the number of such lines in the whole reference (the step proposer's
  rate, so a continuation of the empty prefix is right as often as a generator
  sample, and one of a longer right prefix more often). The first line that goes
  wrong gets a plausible wrong value (``wrong_math_solution``) and later lines
  carry it to a wrong final answer;
- **a prefix that already left the reference** (``first_divergence``) is continued
  with its wrong values carried forward, ending on a wrong final answer, except
  with probability :data:`RECOVERY_RATE`: then the continuation notices, redoes the
  work from the first wrong line and ends on the right answer, as a real model
  now and then recovers from its own slip.

Other tasks: the lines after the prefix's length of one whole right (probability
``p_correct``) or wrong sample; the prefix's content is not looked at. Every
choice comes from the sample's own draws, so a continuation is reproducible per
(request, seed, sample index).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

from deliberate.models.sim.core import HandlerContext
from deliberate.models.sim.handlers.step_proposer import carried, continue_line
from deliberate.models.sim.math_errors import (
    find_equation,
    first_divergence,
    normalise_solution,
    wrong_math_solution,
)

RECOVERY_RATE = 0.02
"""P(a continuation of a prefix that already went wrong still ends on the right answer)."""

RECOVERY_LINE = "Checking the steps so far, one of them is wrong; redoing the work from there."

_BLOCK = re.compile(r"<solution_prefix>\n?(.*?)\n?</solution_prefix>", re.DOTALL)
_ANSWER = re.compile(r"^\s*(?:final\s+)?answer\s*:", re.IGNORECASE)


def read_prefix(text: str) -> list[str]:
    """The non-empty lines of the prefix block (the sim's solutions are one step a line)."""
    block = _BLOCK.search(text)
    if block is None:
        return []
    return [ln for ln in block.group(1).splitlines() if ln.strip()]


def can_go_wrong(line: str) -> bool:
    """Whether a reference line is one a model can get wrong: it computes, or it answers."""
    return find_equation(line) is not None or _ANSWER.match(line) is not None


def slip(line: str, answer_line: str, rng: random.Random) -> str:
    """``line`` with a plausible wrong value (the line itself when it cannot be broken)."""
    tail = [line] if _ANSWER.match(line) else [line, answer_line]
    wrong, _ = wrong_math_solution("\n".join(tail), rng)
    return wrong.splitlines()[0]


def continue_math(ref: list[str], prefix: list[str], p: float, ctx: HandlerContext,
                  recovery_rate: float = RECOVERY_RATE) -> list[str]:
    """The continuation's lines of ``prefix`` against the reference lines ``ref``."""
    rng = ctx.draws.rng("completer_text")
    m = len(prefix)
    tail_from = min(m, len(ref) - 1)  # past the reference's length: restate the answer
    went_wrong = first_divergence("\n".join(prefix), "\n".join(ref)) if prefix else None
    if went_wrong is not None:
        if ctx.draws.uniform("recover") < recovery_rate:
            return [RECOVERY_LINE, *ref[min(went_wrong[0], len(ref)) - 1:]]
        carry = carried(ref, prefix)
        out = [continue_line(ref[j], carry) for j in range(tail_from, len(ref))]
        return _end_wrong(prefix, out, ref, ctx)
    risky = sum(1 for ln in ref if can_go_wrong(ln)) or 1
    q = p ** (1.0 / risky)
    out = []
    subs: dict[Fraction, Fraction] = {}
    slipped = False
    for j in range(tail_from, len(ref)):
        line = ref[j]
        if slipped:
            out.append(continue_line(line, subs))
        elif can_go_wrong(line) and ctx.draws.uniform(f"slip:{j}") >= q:
            slipped = True
            bad = slip(line, ref[-1], rng)
            subs.update(carried([line], [bad]))
            out.append(bad)
        else:
            out.append(line)
    return _end_wrong(prefix, out, ref, ctx) if slipped else out


def _end_wrong(prefix: list[str], out: list[str], ref: list[str],
               ctx: HandlerContext) -> list[str]:
    """``out`` with a wrong final answer: a slip that did not reach the answer by
    carrying (the wrong value is not used later) still ends wrong."""
    b = ctx.behaviour
    if b is None or not out or not _ANSWER.match(out[-1]):
        return out
    if b.is_right("\n".join([*prefix, *out])):
        out = [*out[:-1], slip(ref[-1], ref[-1], ctx.draws.rng("completer_answer"))]
    return out


@dataclass(frozen=True, slots=True)
class CompleterHandler:
    name: str = "completer"
    recovery_rate: float = RECOVERY_RATE

    def matches(self, text: str) -> bool:
        return "<solution_prefix>" in text

    def respond(self, ctx: HandlerContext) -> str:
        prefix = read_prefix(ctx.parsed.text)
        task, b = ctx.task, ctx.behaviour
        rng = ctx.draws.rng("completer_text")
        if task is None or b is None:
            return rng.choice(("I cannot tell how this solution should go on.",
                               "Answer: I am not sure."))
        p = ctx.sim.p_correct(task)
        if task.kind == "math" and (task.solution or task.answer is not None):
            ref = normalise_solution(task.solution or "", task.answer).splitlines()
            if ref:
                return "\n".join(continue_math(ref, prefix, p, ctx, self.recovery_rate))
        right = ctx.draws.uniform("correct") < p
        whole = b.correct(rng) if right else b.wrong(ctx.sim.mode(ctx.draws), rng)
        lines = [ln for ln in whole.splitlines() if ln.strip()]
        return "\n".join(lines[len(prefix):] or lines[-1:])


HANDLER = CompleterHandler()
