"""Roles for reasoning over retrieved passages (AlignRAG's critique-driven alignment).

A task that carries evidence holds it in ``Task.metadata["passages"]``: a list of
``{"id": str, "text": str}`` objects (an object without an ``id`` gets ``p1``, ``p2``,
… by position). Retrieval is the user's: passages come with the task, or a strategy
gets them from a callable the user registers (see ``strategies/evidence_refine.py``).

- :class:`EvidenceGenerator` answers with the passages in its prompt, one step per
  line, each step citing the passages it uses (``[p2]``).
- :class:`EvidenceCritic` checks **each** step against the passages and replies
  ``{"steps": [{"step", "status", "passage", "note"}], "verdict", "score"}`` with a
  status of ``supported``, ``unsupported`` or ``contradicted`` per step. As with the
  judge, unreadable output gets one repair request, then a recorded parse failure.
- :class:`EvidenceRefiner` rewrites the reasoning to agree with the evidence, given
  the critic's flagged steps, in the generator's format.

Steps are the non-empty lines of a reasoning, numbered from 1; a leading ``Step k:``
label is dropped and the final ``Answer: …`` line is the last step (an answer that
does not follow from right steps is wrong there).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

from deliberate.errors import DataError
from deliberate.models.base import ChatResponse, Message
from deliberate.parsing import (
    ParseError,
    coerce_step_number,
    parse_structured,
)
from deliberate.roles.roles import Generator, RoleBase, ScoredVerdict, ask_structured, node_tags
from deliberate.tasks.task import Task

__all__ = [
    "EvidenceCritic",
    "EvidenceGenerator",
    "EvidenceRefiner",
    "EvidenceReport",
    "EvidenceResult",
    "Passage",
    "StepCheck",
    "coerce_passages",
    "critique_text",
    "parse_evidence_report",
    "passages_of",
    "reasoning_steps",
]

StepStatus = Literal["supported", "unsupported", "contradicted"]
FLAGGED: tuple[StepStatus, ...] = ("unsupported", "contradicted")

_STEP_PREFIX = re.compile(r"^\s*step\s+\d+\s*[:.)]\s*", re.IGNORECASE)
_STATUS_WORDS: dict[str, StepStatus] = {
    "supported": "supported",
    "unsupported": "unsupported",
    "not supported": "unsupported",
    "not_supported": "unsupported",
    "contradicted": "contradicted",
    "contradicts": "contradicted",
    "refuted": "contradicted",
}


# --------------------------------------------------------------------------- passages


@dataclass(frozen=True, slots=True)
class Passage:
    """One retrieved passage, cited by its ``id``."""

    id: str
    text: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "text": self.text}


def coerce_passages(value: object, where: str) -> tuple[Passage, ...]:
    """Passages from a list of ``{"id", "text"}`` objects (or Passages), checked.

    Raises :class:`DataError` naming ``where`` when the shape is wrong or an id repeats.
    """
    if value is None:
        return ()
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise DataError(f"{where}: passages must be a list of {{id, text}} objects, "
                        f"got {type(value).__name__}")
    out: list[Passage] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        if isinstance(item, Passage):
            p = item
        elif isinstance(item, Mapping):
            text = item.get("text")
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{where}: passage {i + 1} has no text")
            pid = item.get("id")
            pid = f"p{i + 1}" if pid is None or str(pid).strip() == "" else str(pid).strip()
            p = Passage(pid, text.strip())
        else:
            raise DataError(f"{where}: passage {i + 1} must be an object with id and text, "
                            f"got {type(item).__name__}")
        if p.id in seen:
            raise DataError(f"{where}: passage id {p.id!r} appears twice")
        seen.add(p.id)
        out.append(p)
    return tuple(out)


def passages_of(task: Task) -> tuple[Passage, ...]:
    """The passages a task carries in ``metadata["passages"]`` (empty if none)."""
    return coerce_passages(task.metadata.get("passages"), f"task {task.id}")


def reasoning_steps(text: str) -> list[str]:
    """The steps of a reasoning: its non-empty lines without ``Step k:`` labels."""
    steps = []
    for line in text.splitlines():
        if line.strip():
            steps.append(_STEP_PREFIX.sub("", line.rstrip()) or line.strip())
    return steps


# --------------------------------------------------------------------------- the report


class StepCheck(BaseModel):
    """The critic's finding on one step."""

    model_config = ConfigDict(frozen=True)

    step: int
    status: StepStatus
    passage: str | None = None
    note: str = ""

    @property
    def flagged(self) -> bool:
        return self.status in FLAGGED

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, v: object) -> object:
        return coerce_step_number(v)

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, v: object) -> object:
        if isinstance(v, str):
            word = re.sub(r"\s+", " ", v.strip().lower())
            return _STATUS_WORDS.get(word, word)
        return v

    @field_validator("passage", mode="before")
    @classmethod
    def _passage(cls, v: object) -> object:
        if v is None:
            return None
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = f"{v:g}"
        if isinstance(v, str):
            s = v.strip().strip("[]()\"'` ").strip()
            return None if s.lower() in ("", "null", "none", "n/a", "-") else s
        return v

    @field_validator("note", mode="before")
    @classmethod
    def _note(cls, v: object) -> object:
        return "" if v is None else v


class EvidenceReport(ScoredVerdict):
    """What the evidence critic must return: a status per step, a verdict and a score.

    Validated with ``context={"scale": (lo, hi)}``, the score must lie on the scale.
    """

    model_config = ConfigDict(frozen=True)

    steps: list[StepCheck]

    @property
    def flagged(self) -> list[StepCheck]:
        """Steps the critic found unsupported or contradicted, in step order."""
        return sorted((s for s in self.steps if s.flagged), key=lambda s: s.step)

    @property
    def first_flagged(self) -> int | None:
        return self.flagged[0].step if self.flagged else None

    @property
    def accepted(self) -> bool:
        """No step flagged, or the critic judged the answer correct anyway."""
        return not self.flagged or self.verdict == "correct"

    def statuses(self) -> list[dict[str, Any]]:
        """The per-step findings as plain dicts (for the tree's judgement meta)."""
        return [s.model_dump() for s in self.steps]


def _scale(info: ValidationInfo) -> tuple[float, float] | None:
    ctx = info.context
    if isinstance(ctx, Mapping) and ctx.get("scale") is not None:
        lo, hi = ctx["scale"]
        return float(lo), float(hi)
    return None


def _match_passage(value: str, ids: Sequence[str]) -> str | None:
    if value in ids:
        return value
    lowered = {i.lower(): i for i in ids}
    if value.lower() in lowered:
        return lowered[value.lower()]
    # "p2 and p3", "passage p2": the first known id named as a whole word.
    hits = [(m.start(), i) for i in ids
            if (m := re.search(rf"(?<![\w-]){re.escape(i)}(?![\w-])", value, re.IGNORECASE))]
    return min(hits)[1] if hits else None


def parse_evidence_report(text: str, scale: tuple[float, float], n_steps: int,
                          passage_ids: Sequence[str]) -> EvidenceReport:
    """Read an evidence critic's reply, checking steps, passages and the score's scale.

    A step outside ``1..n_steps`` or a passage the prompt did not list is an error
    (the model is asked once to fix it). A step checked twice keeps its first entry;
    steps are returned in order. Steps the critic left out count as not flagged.
    """
    report = parse_structured(text, EvidenceReport, context={"scale": scale})
    if n_steps > 0 and not report.steps:
        raise ParseError(f"'steps' is empty; check each of the {n_steps} steps")
    checks: dict[int, StepCheck] = {}
    for s in report.steps:
        if not 1 <= s.step <= n_steps:
            raise ParseError(f"step {s.step} does not exist; the steps are 1 to {n_steps}")
        if s.step in checks:
            continue
        if s.passage is not None:
            known = _match_passage(s.passage, passage_ids)
            if known is None:
                listed = ", ".join(passage_ids) or "none"
                raise ParseError(f"step {s.step} names passage {s.passage!r}, which is not "
                                 f"one of the passages ({listed}); use an id or null")
            s = s.model_copy(update={"passage": known})
        checks[s.step] = s
    return report.model_copy(update={"steps": [checks[k] for k in sorted(checks)]})


def critique_text(report: EvidenceReport) -> str:
    """The critic's findings as the refiner reads them: flagged steps first."""
    lines = []
    for s in report.flagged:
        if s.status == "contradicted":
            where = f" by [{s.passage}]" if s.passage else " by the passages"
        else:
            where = " by the passages"
        note = f": {s.note}" if s.note else "."
        lines.append(f"Step {s.step} is {s.status}{where}{note}")
    supported = [str(s.step) for s in report.steps if not s.flagged]
    if supported:
        lines.append(f"Supported by the passages: step{'s' if len(supported) > 1 else ''} "
                     f"{', '.join(supported)}.")
    lines.append(f"Verdict: {report.verdict}.")
    return "\n".join(lines)


# --------------------------------------------------------------------------- roles


def _passages_ctx(passages: Sequence[Passage]) -> list[dict[str, str]]:
    return [p.to_dict() for p in passages]


@dataclass(frozen=True, slots=True)
class EvidenceGenerator(Generator):
    """A generator whose prompt lists the passages (``evidence_generator_*.j2``)."""

    passages: tuple[Passage, ...] = ()

    def messages(self, task: Task) -> tuple[Message, ...]:
        ctx = {"task": task, "passages": _passages_ctx(self.passages)}
        return self.chat("evidence_generator", **ctx)


@dataclass(slots=True)
class EvidenceResult:
    """A parsed report, or a recorded parse failure (``report`` None, ``error`` set)."""

    report: EvidenceReport | None
    raw: str
    error: str | None = None
    call_ids: list[str] = field(default_factory=list)
    repaired: bool = False


@dataclass(frozen=True, slots=True)
class EvidenceCritic(RoleBase):
    """Checks each step of a reasoning against the passages (``evidence_critic_*.j2``)."""

    scale: tuple[float, float] = (1.0, 10.0)
    passages: tuple[Passage, ...] = ()
    template: ClassVar[str] = "evidence_critic"

    def messages(self, task: Task, reasoning: str) -> tuple[Message, ...]:
        ctx = {"task": task, "passages": _passages_ctx(self.passages),
               "steps": reasoning_steps(reasoning),
               "scale_min": f"{self.scale[0]:g}", "scale_max": f"{self.scale[1]:g}"}
        return self.chat(self.template, **ctx)

    def response_format(self) -> dict[str, Any] | None:
        """The report's JSON schema where the model's profile says it can honour one."""
        return self.schema_format("evidence_report", EvidenceReport)

    def _parse(self, text: str, n_steps: int) -> EvidenceReport:
        return parse_evidence_report(text, self.scale, n_steps, [p.id for p in self.passages])

    async def check(self, task: Task, reasoning: str, *, node_id: str | None = None,
                    sample: int = 0) -> EvidenceResult:
        """One report on ``reasoning``; one repair request if the reply cannot be read."""
        tags = node_tags("critic", node_id)
        n_steps = len(reasoning_steps(reasoning))
        res = await ask_structured(
            self, self.messages(task, reasoning), lambda t: self._parse(t, n_steps), tags=tags,
            sample=sample, response_format=self.response_format(),
            hint=(f"Reply again with only the JSON object: one entry per step from 1 to "
                  f"{n_steps}, and a score from {self.scale[0]:g} to {self.scale[1]:g}."),
        )
        return EvidenceResult(res.value, res.raw, res.error, res.call_ids, res.repaired)


@dataclass(frozen=True, slots=True)
class EvidenceRefiner(RoleBase):
    """Rewrites a reasoning to agree with the passages (``evidence_refiner_*.j2``)."""

    passages: tuple[Passage, ...] = ()

    def messages(self, task: Task, reasoning: str, report: EvidenceReport) -> tuple[Message, ...]:
        ctx = {"task": task, "passages": _passages_ctx(self.passages),
               "steps": reasoning_steps(reasoning), "report": report,
               "critique": critique_text(report)}
        return self.chat("evidence_refiner", **ctx)

    async def refine(self, task: Task, reasoning: str, report: EvidenceReport, *,
                     node_id: str | None = None, sample: int = 0) -> ChatResponse:
        tags = node_tags("refiner", node_id)
        return await self.model.complete(
            self.request(self.messages(task, reasoning, report), offset=sample, tags=tags)
        )
