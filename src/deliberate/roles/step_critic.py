"""The step critic: finds the first wrong step of a solution (ProcessBench's form).

A candidate is split into steps (:func:`split_steps`), shown numbered from 1, and
the step critic replies ``{"first_wrong_step": k, "reason": "..."}`` with ``k`` the
1-based number of the earliest wrong step, or -1 when every step is right.

Indexing: everything here is **1-based** (step 1 is the first step), as the model
sees it and as ``JudgementRecord.first_wrong_step`` stores it; -1 means "no wrong
step". ProcessBench labels are 0-based indexes into its ``steps`` array (-1 for
none); :func:`to_processbench_label` and :func:`from_processbench_label` convert.

The role is generic: any strategy (refinement with a step-localising reviewer,
tree search over steps) or evaluation (ProcessBench) gives it a task and a list of
steps. On unreadable output it asks once more with the parse error; a second
failure is returned as a recorded failure, never as a default step.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from pydantic import BaseModel, field_validator

from deliberate.models.base import Message
from deliberate.parsing import ParseError, coerce_step_number, parse_structured
from deliberate.roles.roles import RoleBase, ask_structured, node_tags
from deliberate.tasks.task import Task

NO_ERROR = -1
"""``first_wrong_step`` when every step is right (ProcessBench's convention)."""

_STEP_PREFIX = re.compile(r"^\s*step\s+\d+\s*[:.)]\s*", re.IGNORECASE)


def split_steps(text: str) -> list[str]:
    """One step per non-empty line, as the generator templates ask solutions to be written.

    A leading ``Step k:`` label is dropped (the critic sees its own numbering). The
    final ``Answer: ...`` line is **kept** as the last step: a solution whose steps
    are right but whose stated answer is wrong has its error there, and ProcessBench
    counts the final answer as part of the last step too.
    """
    steps = []
    for line in text.splitlines():
        if not line.strip():
            continue
        steps.append(_STEP_PREFIX.sub("", line.rstrip()) or line.strip())
    return steps


def to_processbench_label(first_wrong_step: int) -> int:
    """1-based step (or -1) to ProcessBench's 0-based label (or -1)."""
    if first_wrong_step == NO_ERROR:
        return NO_ERROR
    if first_wrong_step < 1:
        raise ValueError(f"steps are numbered from 1, got {first_wrong_step}")
    return first_wrong_step - 1


def from_processbench_label(label: int) -> int:
    """ProcessBench's 0-based label (or -1) to a 1-based step (or -1)."""
    if label == NO_ERROR:
        return NO_ERROR
    if label < 0:
        raise ValueError(f"ProcessBench labels are -1 or 0-based indexes, got {label}")
    return label + 1


def step_score(first_wrong_step: int, n_steps: int) -> float:
    """Share of the steps before the first error: 1.0 if none is wrong.

    A process-reward-like score in [0, 1] that ranks a solution going wrong late
    above one going wrong early.
    """
    if first_wrong_step == NO_ERROR:
        return 1.0
    return (first_wrong_step - 1) / max(1, n_steps)


class StepVerdict(BaseModel):
    """What a step critic must return."""

    first_wrong_step: int
    reason: str = ""

    @field_validator("first_wrong_step", mode="before")
    @classmethod
    def _step(cls, v: object) -> object:
        if v is None:
            return NO_ERROR  # "no wrong step" written as null
        return coerce_step_number(v, allow_negative=True)


def parse_step_verdict(text: str, n_steps: int) -> StepVerdict:
    """Read a step critic's reply; the step must be -1 or within 1..n_steps."""
    v = parse_structured(text, StepVerdict)
    if v.first_wrong_step != NO_ERROR and not 1 <= v.first_wrong_step <= n_steps:
        raise ParseError(
            f"first_wrong_step {v.first_wrong_step} is not -1 or a step from 1 to {n_steps}"
        )
    return v


@dataclass(slots=True)
class StepReview:
    """A step critic's review of one solution: the steps it saw and what it said."""

    steps: list[str]
    verdict: StepVerdict | None
    raw: str
    error: str | None = None
    call_ids: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def first_wrong_step(self) -> int | None:
        """1-based step, -1 for none, None if the reply could not be read."""
        return self.verdict.first_wrong_step if self.verdict is not None else None

    @property
    def score(self) -> float | None:
        """:func:`step_score` of the review, None on a parse failure."""
        step = self.first_wrong_step
        return None if step is None else step_score(step, len(self.steps))


@dataclass(frozen=True, slots=True)
class StepCritic(RoleBase):
    """Finds the earliest wrong step of a solution, or says none is wrong."""

    template: ClassVar[str] = "step_critic"

    def messages(self, task: Task, steps: Sequence[str]) -> tuple[Message, ...]:
        ctx = {"task": task, "steps": list(steps)}
        return self.chat(self.template, **ctx)

    async def review(self, task: Task, solution: str | Sequence[str], *,
                     node_id: str | None = None, sample: int = 0) -> StepReview:
        """Review ``solution`` (text, split by :func:`split_steps`, or a list of steps)."""
        steps = split_steps(solution) if isinstance(solution, str) else list(solution)
        if not steps:
            return StepReview(steps, None, "", error="the solution has no steps")
        tags = node_tags(self.template, node_id)

        res = await ask_structured(
            self, self.messages(task, steps),
            lambda text: parse_step_verdict(text, len(steps)), tags=tags, sample=sample,
            response_format=self.schema_format("step_verdict", StepVerdict),
            hint=("Reply again with only the JSON object: first_wrong_step is -1 or a "
                  f"step number from 1 to {len(steps)}, and reason is a string."),
        )
        return StepReview(steps, res.value, res.raw, res.error, res.call_ids, res.repaired)
