"""Deterministic judges shared by strategies (as scorers) and by the engine (grading).

A verifier answers "does this candidate solve the task?" without a model. Issue-3
verifiers (code execution in the sandbox, symbolic math, schemas) implement the same
protocol.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from deliberate.errors import UnknownNameError
from deliberate.tasks.task import Task
from deliberate.verifiers.answer import answers_match, extract_answer

_CODE_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
_CHOICE = re.compile(r"(?:answer\s*(?:is|:)\s*)\(?([A-Ja-j])\)?\b", re.IGNORECASE)


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

    math: the final number; choice: the option letter; code: the program (from a
    fenced block where there is one); other kinds: the stripped text.
    """
    if task.kind == "math":
        return extract_answer(text)
    if task.kind == "choice":
        matches = _CHOICE.findall(text)
        return matches[-1].upper() if matches else None
    if task.kind == "code":
        blocks = _CODE_FENCE.findall(text)
        return (blocks[-1] if blocks else text).strip() or None
    stripped = text.strip()
    return stripped or None


def vote_key(task: Task, answer: str | None) -> str | None:
    """What counts as 'the same answer' for voting: programs compare by syntax tree."""
    if answer is None or task.kind != "code":
        return answer
    try:
        return ast.dump(ast.parse(answer))
    except SyntaxError:
        return answer


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
        ok = answers_match(answer, task.answer, rel_tol=self.rel_tol)
        return VerifierResult(ok, 1.0 if ok else 0.0,
                              f"answer {answer} {'matches' if ok else 'differs from'} reference")


VERIFIERS: dict[str, type[AnswerMatch]] = {"answer_match": AnswerMatch}


def grading_verifier(name: str, task: Task) -> Verifier | None:
    """The verifier that grades final answers; ``auto`` picks by task kind."""
    if name == "none":
        return None
    if name == "auto":
        if task.kind in ("math", "choice", "text") and task.answer is not None:
            return AnswerMatch()
        return None
    if name not in VERIFIERS:
        raise UnknownNameError(
            f"unknown verifier {name!r}; known: auto, none, {', '.join(sorted(VERIFIERS))}"
        )
    return VERIFIERS[name]()
