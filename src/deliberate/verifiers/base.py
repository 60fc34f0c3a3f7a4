"""Deterministic judges shared by strategies (as scorers) and by the engine (grading).

A verifier answers "does this candidate solve the task?" without a model. This
module holds the protocol, answer parsing by task kind and ``answer_match``; the
other verifiers (math equivalence, choice letters, regex, JSON schema, user
callables, code execution, detection) live beside it and are built by name in
:mod:`deliberate.verifiers.registry`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from deliberate.tasks.task import Task
from deliberate.verifiers.answer import answers_match, extract_answer, normalise_number

_CODE_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


@dataclass(frozen=True, slots=True)
class VerifierResult:
    """A verdict (None: undecidable), a score in [0, 1], what the critic may see, and
    counts a run aggregates (detection suites report ``tp``, ``fp`` and ``fn``)."""

    passed: bool | None  # None: the verifier could not decide (no reference, no answer)
    score: float | None
    details: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)


class Verifier(Protocol):
    name: str

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult: ...


def parse_answer(task: Task, text: str) -> str | None:
    """The part of a candidate that answers the task, by task kind.

    math: the final number, or the final expression as written where it is not one
    number (``\\sqrt{3}/2``, ``(1, 2)``: cutting those to their first number would
    lose the answer); choice: the option letter; code: the program (from a fenced
    block where there is one); other kinds: the stripped text.
    """
    if task.kind == "math":
        from deliberate.verifiers.math import final_answer_text, is_symbolic

        raw = final_answer_text(text)
        if raw is not None and is_symbolic(raw):
            return raw
        return extract_answer(text)
    if task.kind == "choice":
        from deliberate.verifiers.match import extract_choice

        return extract_choice(text)
    if task.kind == "code":
        blocks = _CODE_FENCE.findall(text)
        return (blocks[-1] if blocks else text).strip() or None
    stripped = text.strip()
    return stripped or None


def vote_key(task: Task, answer: str | None) -> str | None:
    """What counts as 'the same answer' for voting: programs compare by syntax tree,
    math expressions by their normalised text (``\\dfrac{1}{\\sqrt3}`` and
    ``\\frac1{\\sqrt{3}}`` are one vote; equivalent but differently written forms
    are not merged: that would need sympy on the hot path)."""
    if answer is None:
        return answer
    if task.kind == "math":
        from deliberate.verifiers.math import math_shape

        shape = math_shape(answer)
        return shape.key() if shape is not None and not shape.is_plain_number else answer
    if task.kind != "code":
        return answer
    try:
        return ast.dump(ast.parse(answer))
    except SyntaxError:
        return answer


def answers_equal(candidate: str | None, reference: str | None, *,
                  rel_tol: float = 1e-6) -> bool:
    """``answers_match``, except that two different whole numbers never match: a
    relative tolerance is for decimals and fractions, and would otherwise call
    3500001 equal to 3500000."""
    if candidate is None or reference is None:
        return False
    a, b = normalise_number(candidate), normalise_number(reference)
    if a is not None and b is not None and _is_int(a) and _is_int(b):
        return int(a) == int(b)
    return answers_match(candidate, reference, rel_tol=rel_tol)


def _is_int(canonical: str) -> bool:
    return canonical.lstrip("-").isdigit()


class AnswerMatch:
    """Final answer equals the reference (numeric with tolerance, else exact)."""

    name = "answer_match"

    def __init__(self, rel_tol: float = 1e-6) -> None:
        self.rel_tol = rel_tol

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        if task.answer is None:
            return VerifierResult(None, None, "task has no reference answer")
        if answer is None:
            return VerifierResult(False, 0.0, "no final answer found in the candidate")
        ok = answers_equal(answer, task.answer, rel_tol=self.rel_tol)
        return VerifierResult(ok, 1.0 if ok else 0.0,
                              f"answer {answer} {'matches' if ok else 'differs from'} reference")



def grading_verifier(name: str, task: Task) -> Verifier | None:
    """The verifier that grades final answers: ``none``, ``auto`` (by task kind) or
    any spec of :func:`deliberate.verifiers.registry.build_verifier`."""
    from deliberate.verifiers.registry import grading_verifier as build

    return build(name, task)
