"""The checklist judge (TICK): yes/no questions written for the task, answered per candidate.

A writer turns the task into a few yes/no questions once per task; an answerer
answers every question for one candidate. The score is the share of "yes" — the
same checklist for every candidate of a task, so scores compare — and the "no"
items, with the answerer's reasons, make a critique a refiner can act on
(:meth:`ChecklistScore.critique`).

Answers are matched to questions by their number (or, failing that, by the
question's text), never by list position. Both replies get one repair request
and are then recorded as parse failures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from deliberate.models.base import Message
from deliberate.parsing import (
    ParseError,
    describe_validation_error,
    extract_json_array,
    json_values,
    parse_structured,
)
from deliberate.roles.roles import RoleBase, Structured, ask_structured, node_tags
from deliberate.tasks.task import Task

MAX_QUESTIONS = 20
_NUMBERING = re.compile(r"^\s*(?:Q?\d+[.):]\s*)")


# ---------------------------------------------------------------- the checklist


class ChecklistQuestions(BaseModel):
    """What the writer must return (a bare JSON list of questions is accepted too)."""

    questions: list[str] = Field(min_length=1, max_length=MAX_QUESTIONS)

    @field_validator("questions", mode="before")
    @classmethod
    def _questions(cls, v: object) -> object:
        if not isinstance(v, list):
            return v
        out: list[object] = []
        for item in v:
            if isinstance(item, dict):
                item = item.get("question", item)
            if isinstance(item, str):
                item = _NUMBERING.sub("", item).strip()
                if not item or item in out:
                    continue
            out.append(item)
        return out



def parse_questions(text: str) -> list[str]:
    """The writer's questions from ``{"questions": [...]}`` or a bare JSON list."""
    try:
        return parse_structured(text, ChecklistQuestions).questions
    except ParseError as exc:
        if any(isinstance(v, dict) for v in json_values(text)):
            raise  # an object of the wrong shape: say what is wrong with it
        try:
            items = extract_json_array(text)
        except ParseError:
            raise exc from None
    try:
        return ChecklistQuestions.model_validate({"questions": items}).questions
    except ValidationError as exc:
        raise ParseError(describe_validation_error(exc)) from exc


@dataclass(frozen=True, slots=True)
class ChecklistWriter(RoleBase):
    """Writes yes/no questions for a task (templates ``checklist_writer_{system,user}.j2``)."""

    hint: ClassVar[str] = ('Reply again with only the JSON object {"questions": ["<yes/no '
                           'question>", ...]}.')

    def messages(self, task: Task) -> tuple[Message, ...]:
        return self.chat("checklist_writer", task=task)

    async def write(self, task: Task, *, node_id: str | None = None) -> Structured[list[str]]:
        tags = node_tags("checklist_writer", node_id)
        return await ask_structured(self, self.messages(task), parse_questions, tags=tags,
                                    hint=self.hint,
                                    response_format=self.schema_format("checklist_questions", ChecklistQuestions))


# ---------------------------------------------------------------- the answers


class ChecklistItem(BaseModel):
    id: int | None = None
    question: str = ""
    answer: Literal["yes", "no"]
    why: str = ""

    @field_validator("answer", mode="before")
    @classmethod
    def _answer(cls, v: object) -> object:
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, str):
            return v.strip().strip(".!").lower()
        return v

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: object) -> object:
        if isinstance(v, str):
            m = re.fullmatch(r"\s*Q?(\d+)\s*", v)
            return int(m.group(1)) if m else v
        return v


class ChecklistReply(BaseModel):
    answers: list[ChecklistItem]


@dataclass(frozen=True, slots=True)
class ChecklistAnswer:
    question: str
    yes: bool
    why: str


def _norm(q: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", q.lower()).strip()


def parse_answers(text: str, questions: list[str]) -> list[ChecklistAnswer]:
    """One answer per question, matched by number, else by question text."""
    reply = parse_structured(text, ChecklistReply)
    by_text = {_norm(q): k for k, q in enumerate(questions)}
    got: dict[int, ChecklistItem] = {}
    for item in reply.answers:
        if item.id is not None and 1 <= item.id <= len(questions):
            k: int | None = item.id - 1
        else:
            k = by_text.get(_norm(item.question))
        if k is None:
            raise ParseError(f"answer {item.question or item.id!r} matches no question; "
                             "give each answer the question's id")
        if k in got and got[k].answer != item.answer:
            raise ParseError(f"question {k + 1} is answered both yes and no")
        got[k] = item
    missing = [k + 1 for k in range(len(questions)) if k not in got]
    if missing:
        raise ParseError(f"no answer for question(s) {', '.join(map(str, missing))}")
    return [ChecklistAnswer(questions[k], got[k].answer == "yes", got[k].why)
            for k in range(len(questions))]


@dataclass(slots=True)
class ChecklistScore:
    """One candidate's answers; ``answers`` None is a recorded parse failure."""

    reply: Structured[list[ChecklistAnswer]]

    @property
    def answers(self) -> list[ChecklistAnswer] | None:
        return self.reply.value

    @property
    def score(self) -> float | None:
        """Share of "yes" in [0, 1]; None if the answers could not be read."""
        a = self.answers
        return sum(x.yes for x in a) / len(a) if a else None

    @property
    def failed(self) -> list[ChecklistAnswer]:
        return [x for x in self.answers or [] if not x.yes]

    def critique(self) -> str:
        """The "no" items as a critique for a refiner ("" when every check passed)."""
        if not self.failed:
            return ""
        lines = ["The answer fails these checks:"]
        for x in self.failed:
            lines.append(f"- {x.question}" + (f" {x.why.strip()}" if x.why.strip() else ""))
        return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class ChecklistAnswerer(RoleBase):
    """Answers a checklist for one candidate (templates ``checklist_answer_{system,user}.j2``)."""

    hint: ClassVar[str] = ('Reply again with only the JSON object {"answers": [{"id": <question '
                           'number>, "question": "...", "answer": "yes" or "no", "why": "..."}, '
                           '...]} with one answer per question.')

    def messages(self, task: Task, questions: list[str], candidate: str) -> tuple[Message, ...]:
        ctx = {"task": task, "questions": questions, "candidate": candidate}
        return self.chat("checklist_answer", **ctx)

    async def answer(self, task: Task, questions: list[str], candidate: str, *,
                     node_id: str | None = None, sample: int = 0) -> ChecklistScore:
        tags = node_tags("checklist_judge", node_id)
        reply = await ask_structured(
            self, self.messages(task, questions, candidate),
            lambda text: parse_answers(text, questions), tags=tags, sample=sample,
            hint=self.hint, response_format=self.schema_format("checklist_answers", ChecklistReply))
        return ChecklistScore(reply)


@dataclass(frozen=True, slots=True)
class ChecklistJudge:
    """Writer and answerer together: write once per task, then score candidates.

    Role names by convention: ``checklist_writer`` (settings default to the
    generator's unless set in ``RunConfig.roles``) and ``checklist_judge`` (the
    judge's settings by default).
    """

    writer: ChecklistWriter
    answerer: ChecklistAnswerer

    async def checklist(self, task: Task, *, node_id: str | None = None
                        ) -> Structured[list[str]]:
        return await self.writer.write(task, node_id=node_id)

    async def score(self, task: Task, questions: list[str], candidate: str, *,
                    node_id: str | None = None) -> ChecklistScore:
        return await self.answerer.answer(task, questions, candidate, node_id=node_id)
