"""The sim as a step proposer: the next step of a partial worked solution.

Matches the ``<partial_solution>`` block of the step proposer's template. For a
math task with a worked solution, the next right step is the reference's line at
that index (the last one is its ``Answer:`` line). Each step that can go wrong (one
that computes something, and the answer line) is right with probability
``p_correct(task) ** (1 / steps)``, so a whole solution is right about as often as
a generator sample; otherwise the step gets a plausible wrong value (the sim's
``wrong_math_solution`` applied to that step). A prefix that already went wrong is
continued consistently: later steps reuse its wrong values and the final answer
follows them. Other tasks: the line at that index of a whole right or wrong sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from deliberate.models.sim.core import HandlerContext
from deliberate.models.sim.math_errors import (
    _replace_numbers,
    _safe_eval,
    find_equation,
    first_divergence,
    format_number,
    normalise_solution,
    wrong_math_solution,
)

_BLOCK = re.compile(r"<partial_solution>(.*)</partial_solution>", re.DOTALL)
_STEP = re.compile(r'<step n="(\d+)">\n?(.*?)\n?</step>', re.DOTALL)
_ANSWER = re.compile(r"^\s*answer\s*:\s*(.+?)\s*$", re.IGNORECASE)


def read_partial(text: str) -> list[str]:
    """The steps so far, in their numbered order."""
    block = _BLOCK.search(text)
    if block is None:
        return []
    return [body for _, body in sorted((int(n), b) for n, b in _STEP.findall(block.group(1)))]


def _can_err(line: str) -> bool:
    return find_equation(line) is not None or _ANSWER.match(line) is not None


def carried(ref_lines: list[str], prefix: list[str]) -> dict[Fraction, Fraction]:
    """Wrong values of a prefix: reference result -> the prefix's result, line by line."""
    subs: dict[Fraction, Fraction] = {}
    for ref, got in zip(ref_lines, prefix, strict=False):
        a, b = find_equation(ref), find_equation(got)
        if a is not None and b is not None and a.result != b.result:
            subs[a.result] = b.result
    return subs


def continue_line(line: str, subs: dict[Fraction, Fraction]) -> str:
    """A reference line redone with the prefix's wrong values carried into it."""
    m = _ANSWER.match(line)
    if m is not None:
        return _replace_numbers(line, subs)[0]
    eq = find_equation(line)
    if eq is None:
        return _replace_numbers(line, subs)[0]
    expr, changed = _replace_numbers(eq.expr, subs)
    value = _safe_eval(expr) if changed else None
    result = value if value is not None else eq.result
    if value is not None and value != eq.result:
        subs[eq.result] = value
    head = _replace_numbers(line[: eq.expr_start], subs)[0]
    mid = line[eq.expr_start + len(eq.expr): eq.result_start]
    return head + expr + mid + format_number(result) + line[eq.result_end:]


@dataclass(frozen=True, slots=True)
class StepProposerHandler:
    name: str = "step_proposer"

    def matches(self, text: str) -> bool:
        return "<partial_solution>" in text

    def respond(self, ctx: HandlerContext) -> str:
        prefix = read_partial(ctx.parsed.text)
        m = len(prefix)
        rng = ctx.draws.rng("step_proposer")
        task, b = ctx.task, ctx.behaviour
        if task is None or b is None:
            return rng.choice(("I need more detail to take the next step.",
                               "Answer: I am not sure."))
        p = ctx.sim.p_correct(task)
        if task.kind != "math" or not (task.solution or task.answer is not None):
            whole = b.correct(rng) if ctx.draws.uniform("correct") < p else \
                b.wrong(ctx.sim.mode(ctx.draws), rng)
            lines = [ln for ln in whole.splitlines() if ln.strip()]
            return lines[m] if m < len(lines) else (lines[-1] if lines else "Answer:")
        ref = normalise_solution(task.solution or "", task.answer).splitlines()
        ref_text = "\n".join(ref)
        if m >= len(ref):  # past the reference's length: state the answer the prefix reached
            return continue_line(ref[-1], carried(ref, prefix))
        if prefix and first_divergence("\n".join(prefix), ref_text) is not None:
            return continue_line(ref[m], carried(ref, prefix))
        line = ref[m]
        risky = sum(1 for ln in ref if _can_err(ln)) or 1
        q = p ** (1.0 / risky)
        if not _can_err(line) or ctx.draws.uniform("step_correct") < q:
            return line
        tail = [line] if _ANSWER.match(line) else [line, ref[-1]]
        wrong, _ = wrong_math_solution("\n".join(tail), rng)
        return wrong.splitlines()[0]


HANDLER = StepProposerHandler()
