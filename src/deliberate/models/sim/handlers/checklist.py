"""sim as the checklist writer (``<checklist_request>``) and answerer (``<checklist>``).

The writer returns 3–5 generic yes/no questions for the task's kind that do not
reveal the answer. Each question either checks the *form* of an answer (is a
final answer stated, is the program complete) or its *substance* (is it right).
The answerer knows the truth: a form question is true when the candidate has a
parseable answer of the task's kind, a substance question when the candidate is
right (``behaviour.is_right``); questions it did not write count as substance.
It answers each question truthfully with the critic's error rates — "no" to a
false item with probability ``sensitivity``, "yes" to a true one with
``specificity`` — each question an independent draw (see docs/sim.md).
"""

from __future__ import annotations

import ast
import json
import re

from deliberate.models.sim.core import HandlerContext
from deliberate.models.sim.handlers.pairwise import block
from deliberate.models.sim.protocol import extract_code, extract_json
from deliberate.tasks.task import Task
from deliberate.verifiers.base import parse_answer

# (question, checks form?) per task kind; the writer takes the first 3–5.
QUESTIONS: dict[str, tuple[tuple[str, bool], ...]] = {
    "math": (
        ("Is the final answer stated on its own last line as a single number?", True),
        ("Is every arithmetic step correct?", False),
        ("Does each step use the quantities given in the problem correctly?", False),
        ("Does the final answer follow from the last step?", False),
        ("Does the final answer respond to exactly what the question asks?", False),
    ),
    "code": (
        ("Does the reply contain a complete Python function with the requested name?", True),
        ("Does the function return the right result for the examples in the docstring?", False),
        ("Does it handle edge cases such as empty inputs and boundary values?", False),
        ("Is every condition and loop bound in the function correct?", False),
    ),
    "findings": (
        ("Is the reply a JSON list of findings, each with a category and lines?", True),
        ("Is every reported finding a real, exploitable flaw?", False),
        ("Are all the vulnerable lines of the contract reported?", False),
    ),
    "choice": (
        ("Does the answer name exactly one option letter?", True),
        ("Is the chosen option consistent with the facts in the question?", False),
        ("Does the reasoning rule out the other options?", False),
    ),
    "text": (
        ("Does the response address what the task asks?", False),
        ("Is the content of the response accurate?", False),
        ("Does the response follow the format the task asks for?", True),
    ),
}
FORM_QUESTIONS = {q for qs in QUESTIONS.values() for q, form in qs if form}

_NUMBERED = re.compile(r"^\s*(\d+)[.)]\s*(.+?)\s*$")


def questions_for(kind: str, count: int) -> list[str]:
    pool = QUESTIONS.get(kind, QUESTIONS["text"])
    return [q for q, _ in pool[: max(3, min(count, len(pool)))]]


def has_form(task: Task, candidate: str) -> bool:
    """Whether ``candidate`` has an answer of the task's kind at all."""
    if task.kind == "code":
        try:
            ast.parse(extract_code(candidate))
        except SyntaxError:
            return False
        return "def " in candidate
    if task.kind == "findings":
        return isinstance(extract_json(candidate), list)
    return parse_answer(task, candidate) is not None


class ChecklistHandler:
    name = "checklist"

    def matches(self, text: str) -> bool:
        return "<checklist_request>" in text or "<checklist>" in text

    def respond(self, ctx: HandlerContext) -> str:
        if "<checklist_request>" in ctx.parsed.text:
            return self._write(ctx)
        return self._answer(ctx)

    def _write(self, ctx: HandlerContext) -> str:
        kind = ctx.task.kind if ctx.task is not None else "text"
        count = ctx.draws.rng("count").randint(3, 5)
        return json.dumps({"questions": questions_for(kind, count)})

    def _answer(self, ctx: HandlerContext) -> str:
        text = ctx.parsed.text
        body = block(text, "checklist") or ""
        questions = [(int(m.group(1)), m.group(2)) for line in body.splitlines()
                     if (m := _NUMBERED.match(line))]
        candidate = ctx.parsed.candidate or ""
        p = ctx.sim.params
        bh, task = ctx.behaviour, ctx.task
        answers = []
        explained = False
        for k, q in questions:
            u = ctx.draws.uniform(f"q{k}")
            rng = ctx.draws.rng(f"why{k}")
            if bh is None or task is None:
                yes, why = u < 0.5, "I cannot check this with confidence."
            else:
                truth = has_form(task, candidate) if q in FORM_QUESTIONS else bh.is_right(
                    candidate)
                yes = u < p.specificity if truth else u >= p.sensitivity
                if yes:
                    why = "Yes: " + bh.approve(candidate, rng)
                elif q in FORM_QUESTIONS:
                    why = "The answer is not given in the requested form."
                elif not truth and not explained:
                    why, explained = bh.explain(candidate), True
                elif not truth:
                    why = "This follows from the mistake above."
                else:
                    why = bh.complain(candidate, rng)
            answers.append({"id": k, "question": q, "answer": "yes" if yes else "no",
                            "why": why})
        return json.dumps({"answers": answers})


HANDLER = ChecklistHandler()
