"""The sim as a step critic: the first wrong step of a numbered solution, or -1.

Matches the ``<numbered_steps>`` block of the step critic's template. The true first
wrong step comes from the task's ground truth: labelled solutions carried in the
task's metadata (``STEP_LABELS``, e.g. ProcessBench items), else, for math, the first
step where the candidate's numbers leave the reference solution. The sim reports it
with the configured error rates:

- a wrong solution: the true step with probability ``sensitivity``; otherwise -1
  (the error is missed) or a neighbouring step (off by one), half and half;
- a right solution: -1 with probability ``specificity``, otherwise a random step.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

from deliberate.models._matching import normalise_text
from deliberate.models.sim.core import Behaviour, HandlerContext
from deliberate.models.sim.math_errors import first_divergence, normalise_solution, step_results
from deliberate.models.sim.protocol import extract_code
from deliberate.tasks.task import Task

_BLOCK = re.compile(r"<numbered_steps>(.*)</numbered_steps>", re.DOTALL)
_STEP = re.compile(r'<step n="(\d+)">\n?(.*?)\n?</step>', re.DOTALL)
_FENCE_LINE = re.compile(r"^\s*```")
_FINAL = re.compile(r"(?im)^\s*(?:answer\s*:|####)|\\boxed\{")

STEP_LABELS = "step_labels"
"""Task metadata key: solutions whose first wrong step is known, as a list of
``{"steps": [str, ...], "first_wrong_step": k}`` with ``k`` 1-based, -1 for none."""


def read_steps(text: str) -> list[str]:
    """The steps of a step-critic prompt, in their numbered order."""
    block = _BLOCK.search(text)
    if block is None:
        return []
    found = sorted((int(n), body) for n, body in _STEP.findall(block.group(1)))
    return [body for _, body in found]


def _reference(task: Task) -> str:
    if task.solution:
        return normalise_solution(task.solution, task.answer)
    return f"Answer: {task.answer}"


def true_first_wrong(task: Task, behaviour: Behaviour, steps: list[str]) -> tuple[int, str]:
    """The 1-based first wrong step (-1 if none) and a sentence naming the error.

    Math: the first step whose line leaves the reference (``first_divergence``); a
    wrong final answer with no diverging line blames the last step. Other kinds:
    a right candidate has none; a wrong one blames its first line that is not a
    line of the reference solution (code: only lines of the program count, not the
    prose or fences around it), else its last step.
    """
    lines: list[tuple[int, str]] = [
        (k, ln) for k, step in enumerate(steps, start=1) for ln in step.splitlines() if ln.strip()
    ]
    text = "\n".join(ln for _, ln in lines)
    right = behaviour.is_right(text)
    if task.kind == "math" and (task.solution or task.answer is not None):
        found = first_divergence(text, _reference(task))
        if found is not None:
            line, sentence = found
            step = lines[line - 1][0]
            return step, sentence.replace(f"Step {line} ", f"Step {step} ", 1)
        if not _FINAL.search(text):
            return -1, ""  # a partial solution whose every line agrees with the reference
    elif not right and task.solution:
        ref = {ln.strip() for ln in task.solution.splitlines() if ln.strip()}
        code = {ln.strip() for ln in extract_code(text).splitlines()} if task.kind == "code" else None
        for k, ln in lines:
            if code is not None and ln.strip() not in code:
                continue  # prose around a program is not a step of it
            if not _FENCE_LINE.match(ln) and ln.strip() not in ref:
                return k, f"Step {k} does not do what the task needs: {ln.strip()[:80]}"
    if right:
        return -1, ""
    return len(steps), behaviour.explain(text)


def labelled_first_wrong(task: Task, steps: list[str]) -> tuple[int, str] | None:
    """The first wrong step of ``steps`` from the task's labelled solutions, if listed.

    Steps are compared with whitespace normalised, as a reader would. Returns None
    when the task carries no labels or none of its solutions is this one.
    """
    labelled = task.metadata.get(STEP_LABELS)
    if not isinstance(labelled, list):
        return None
    shown = [normalise_text(s) for s in steps]
    for entry in labelled:
        if not isinstance(entry, dict) or not isinstance(entry.get("steps"), list):
            continue
        if [normalise_text(str(s)) for s in entry["steps"]] != shown:
            continue
        k = entry.get("first_wrong_step")
        if not isinstance(k, int) or not (k == -1 or 1 <= k <= len(steps)):
            return None
        return k, ("" if k == -1 else labelled_complaint(k, steps[k - 1]))
    return None


def labelled_complaint(k: int, step: str) -> str:
    """Why step ``k`` is wrong, as far as the sim can say without solving the problem."""
    found = step_results(step)
    if found:
        _, expr, _ = found[0]
        return f"Step {k} goes wrong: {expr} does not follow from the problem and the steps before it."
    return f"Step {k} goes wrong: its claim does not follow from the problem and the steps before it."


def mistaken_complaint(k: int, step: str, rng: random.Random) -> str:
    found = step_results(step)
    if found:
        _, expr, _ = found[0]
        return rng.choice((
            f"Step {k} uses the wrong quantity from the problem in {expr}.",
            f"Step {k} misreads the problem: {expr} should not be computed here.",
        ))
    return rng.choice((
        f"Step {k} does not follow from the steps before it.",
        f"Step {k} makes an unjustified assumption.",
    ))


@dataclass(frozen=True, slots=True)
class StepCriticHandler:
    name: str = "step_critic"

    def matches(self, text: str) -> bool:
        return "<numbered_steps>" in text

    def respond(self, ctx: HandlerContext) -> str:
        steps = read_steps(ctx.parsed.text)
        n = len(steps)
        rng = ctx.draws.rng("step_critic")
        u = ctx.draws.uniform("step_verdict")
        p = ctx.sim.params
        if n == 0:
            return _reply(-1, "There are no steps to check.")
        known: tuple[int, str] | None = None
        if ctx.task is not None:
            known = labelled_first_wrong(ctx.task, steps)
            if known is None and ctx.behaviour is not None and STEP_LABELS not in ctx.task.metadata:
                known = true_first_wrong(ctx.task, ctx.behaviour, steps)
        if known is None:  # no task, or a solution its labels do not cover
            if u < 0.5:
                return _reply(-1, "I cannot check these steps against the task with confidence.")
            k = rng.randint(1, n)
            return _reply(k, mistaken_complaint(k, steps[k - 1], rng))
        truth, sentence = known
        if truth == -1:
            if u < p.specificity:
                return _reply(-1, "Every step follows from the problem and the steps before it, "
                                  "and the arithmetic checks out.")
            k = rng.randint(1, n)
            return _reply(k, mistaken_complaint(k, steps[k - 1], rng))
        if u < p.sensitivity:
            return _reply(truth, sentence)
        if rng.random() < 0.5 or n == 1:
            return _reply(-1, "Every step follows from the problem and the steps before it.")
        near = [k for k in (truth - 1, truth + 1) if 1 <= k <= n]
        k = rng.choice(near)
        return _reply(k, mistaken_complaint(k, steps[k - 1], rng))


def _reply(step: int, reason: str) -> str:
    return json.dumps({"first_wrong_step": step, "reason": reason})


HANDLER = StepCriticHandler()
