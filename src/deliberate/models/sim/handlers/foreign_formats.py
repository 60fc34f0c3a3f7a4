"""The sim following other libraries' output formats, as a real model follows instructions.

Other test-time-compute libraries send prompts of their own, not our templates: the
core would answer them as a generator, in a form they cannot read. Two generic
kinds of request are followed here, so that such libraries can run against the sim
(``bench/peers.py`` runs DSPy and optillm side by side with deliberate):

- **Field prompts** (DSPy's ``ChatAdapter`` and ``JSONAdapter``): inputs in
  ``[[ ## name ## ]]`` blocks and a closing instruction naming the output fields
  ("Respond with the corresponding output fields, starting with the field
  ``[[ ## reasoning ## ]]``, then ``[[ ## answer ## ]]`` …"). The reply fills every
  output field in that format, ending with ``[[ ## completed ## ]]`` (or one JSON
  object for the JSON form). What goes in a field follows its name and type:

  * a *generation* (no input holds a response to judge): the task's solution is
    drawn as the core's generator draws it (right with ``p_correct``, else one of
    the task's recurring wrong solutions; the same draws give the same text). The
    solution goes in reasoning-like fields, its final answer in answer-like ones.
    An input named like a hint or feedback that says something (not "N/A") gives
    a wrong draw a second chance to be right with ``fix_rate``, as a critique
    gives the refiner;
  * a *judgement* (an input named like a response, answer, solution, output …
    and no answer-like output): the judge's call on that response with the
    critic's error rates (:meth:`SimModel.judge_text`): score-like fields get its
    score, verdict-like ones its verdict, text fields its critique; a dict field
    (DSPy ``Refine``'s advice) maps each name of a list input (``module_names``)
    to advice that repeats the critique when the response looks wrong, else "N/A".

- **Rating requests** ("Rate the above response:", "Evaluate the quality of this
  conversation on a scale from 0 to 1 … Respond with only a number.", as optillm's
  best-of-N and MCTS send them): the reply is a bare number on the scale the
  conversation declares ("scale from LO to HI", "score from LO to HI"; else 1 to
  10), the judge's score of the last assistant message when the task is known.

A rating of an earlier assistant message needs the whole conversation; a handler
is given it when :class:`HandlerContext` carries ``messages``. Without them (or
when the task is unknown) the rating is a coin flip between the bands of a right
and a wrong verdict, like the core's judge of an unknown task.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from deliberate.models.base import Message
from deliberate.models.sim.core import Behaviour, HandlerContext
from deliberate.models.sim.protocol import DEFAULT_SCALE
from deliberate.tasks.task import Task
from deliberate.verifiers.answer import extract_answer

FieldKind = Literal["reasoning", "answer", "score", "verdict", "advice", "text"]

_HEADER = re.compile(r"\[\[ ## (?P<name>[^#\]\n]+?) ## \]\]")
_CHAT_TAIL = "Respond with the corresponding output fields"
_JSON_TAIL = "Respond with a JSON object in the following order of fields"
_OUT_CHAT = re.compile(
    r"`\[\[ ## (?P<name>[^#\]\n]+?) ## \]\]`"
    r"(?: \(must be formatted as (?:a )?valid Python (?P<type>[^)\n]*(?:\)[^)\n]*)?)\))?"
)
_OUT_JSON = re.compile(
    r"`(?P<name>[A-Za-z_]\w*)`"
    r"(?: \(must be formatted as (?:a )?valid Python (?P<type>[^)\n]*(?:\)[^)\n]*)?)\))?"
)
_RATE = re.compile(
    r"(?:^|[.!?:\n]\s*)(?:please\s+)?(?:rate|score|grade|evaluate|assess)\s+"
    r"(?:the|this|these|each|how)\b[^.?!\n]{0,80}?"
    r"\b(?:response|answer|conversation|solution|reply|completion|output)s?\b",
    re.IGNORECASE,
)
_SCALE = re.compile(
    r"\b(?:scale|score|rating|rate)\b[^\d\n]{0,60}?\b(?:from|of|between)\s+"
    r"(?P<lo>-?\d+(?:\.\d+)?)\s*(?:to|and|-)\s*(?P<hi>-?\d+(?:\.\d+)?)",
    re.IGNORECASE,
)
_OUR_TAGS = re.compile(r"<(?:task|candidate|critique)>")

_REASONING = (
    "reason",
    "rationale",
    "thought",
    "think",
    "explan",
    "analysis",
    "step",
    "work",
    "discussion",
    "critique",
    "justif",
    "comment",
    "feedback",
)
_ANSWER = (
    "answer",
    "result",
    "solution",
    "output",
    "prediction",
    "response",
    "final",
    "code",
    "program",
)
_SCORE = ("score", "rating", "reward", "grade", "quality", "confidence", "value")
_VERDICT = ("verdict", "correct", "valid", "is_", "pass", "accept", "judg")
_ADVICE = ("advice", "hint", "suggest", "recommend", "fix")
_CANDIDATE_INPUTS = (
    "response",
    "answer",
    "solution",
    "candidate",
    "completion",
    "output",
    "prediction",
    "attempt",
    "draft",
)
_HINT_INPUTS = ("hint", "feedback", "advice", "critique")
_EMPTY_HINTS = frozenset({"", "n/a", "na", "none", "null", "no hint", "-"})


# ---------------------------------------------------------------- reading a field prompt


@dataclass(frozen=True, slots=True)
class OutputField:
    name: str
    type: str = "str"

    @property
    def kind(self) -> FieldKind:
        """What the field asks for, from its name first and its type second."""
        name, typ = self.name.lower(), self.type.lower()
        if any(w in name for w in _ADVICE) or typ.startswith("dict"):
            return "advice"
        if any(w in name for w in _ANSWER):
            return "answer"
        if any(w in name for w in _SCORE) or typ in ("float", "int"):
            return "score"
        if any(w in name for w in _VERDICT) or typ == "bool" or typ.startswith("literal"):
            return "verdict"
        if any(w in name for w in _REASONING):
            return "reasoning"
        return "text"


@dataclass(frozen=True, slots=True)
class FieldPrompt:
    """A field-structured request: its input values and the output fields it wants."""

    inputs: dict[str, str]
    outputs: tuple[OutputField, ...]
    json_reply: bool = False

    def candidate(self) -> str | None:
        """The response the request asks to judge, if an input holds one."""
        for name, value in self.inputs.items():
            if any(w in name.lower() for w in _CANDIDATE_INPUTS):
                return _candidate_text(value)
        return None

    def hint(self) -> str | None:
        """A hint or feedback input that says something."""
        for name, value in self.inputs.items():
            said = value.strip().strip(".").lower() not in _EMPTY_HINTS
            if said and any(w in name.lower() for w in _HINT_INPUTS):
                return value
        return None

    def names(self) -> list[str]:
        """The names listed in an input that holds a JSON list of strings (DSPy's
        ``module_names``), which a dict output is keyed by."""
        for name, value in self.inputs.items():
            if not name.lower().endswith("names"):
                continue
            try:
                items = json.loads(value)
            except ValueError:
                continue
            if isinstance(items, list) and all(isinstance(x, str) for x in items):
                return list(items)
        return []


def read_field_prompt(text: str) -> FieldPrompt | None:
    """The fields of a DSPy-style request, or None when ``text`` is not one."""
    tail = text.rfind(_CHAT_TAIL)
    json_reply = False
    if tail < 0:
        tail = text.rfind(_JSON_TAIL)
        json_reply = tail >= 0
    if tail < 0:
        return None
    pattern = _OUT_JSON if json_reply else _OUT_CHAT
    outputs = tuple(
        OutputField(m.group("name").strip(), (m.group("type") or "str").strip())
        for m in pattern.finditer(text, tail)
        if m.group("name").strip() != "completed"
    )
    if not outputs:
        return None
    head = text[:tail]
    heads = list(_HEADER.finditer(head))
    inputs: dict[str, str] = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(head)
        inputs[m.group("name").strip()] = head[m.end() : end].strip()
    return FieldPrompt(inputs, outputs, json_reply)


def is_rating_request(text: str) -> bool:
    """A request to rate a response with a number, in no template of ours."""
    if _OUR_TAGS.search(text) or _HEADER.search(text):
        return False
    m = _RATE.search(text)
    if m is None:
        return False
    return "only a number" in text.lower() or bool(_SCALE.search(text)) or len(text) < 200


def read_scale(texts: Sequence[str]) -> tuple[float, float]:
    """The first scale declared in ``texts`` (in the order given), else 1 to 10."""
    for t in texts:
        m = _SCALE.search(t)
        if m:
            lo, hi = float(m.group("lo")), float(m.group("hi"))
            if lo != hi:
                return (lo, hi) if lo < hi else (hi, lo)
    return DEFAULT_SCALE


def _candidate_text(value: str) -> str:
    """A response as text: a JSON object of fields (DSPy's program outputs) becomes its
    text fields with the answer-like one last, as ``Answer: …``."""
    try:
        obj = json.loads(value)
    except ValueError:
        return value
    if not isinstance(obj, dict):
        return value
    lines: list[str] = []
    answer: str | None = None
    for k, v in obj.items():
        if not isinstance(v, str | int | float):
            continue
        if answer is None and OutputField(str(k)).kind == "answer":
            answer = str(v)
        else:
            lines.append(str(v))
    if answer is not None:
        lines.append(answer if "answer" in answer.lower() else f"Answer: {answer}")
    return "\n".join(lines) if lines else value


# ---------------------------------------------------------------- the conversation


def conversation(ctx: HandlerContext) -> tuple[Message, ...]:
    """The whole request, when the context carries it; else only the last user message."""
    messages = getattr(ctx, "messages", None)
    if messages:
        return tuple(messages)
    return (Message("user", ctx.parsed.text),)


def rated_response(messages: Sequence[Message]) -> str | None:
    """The last assistant message before the final user message (what is rated)."""
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    for m in reversed(messages[: max(last_user, 0)]):
        if m.role == "assistant" and m.content.strip():
            return m.content
    return None


def _task(
    ctx: HandlerContext, messages: Sequence[Message], extra: Sequence[str] = ()
) -> tuple[Task | None, Behaviour | None]:
    """The task: the core's finding, else the system/user messages, else strings inside
    JSON inputs (a prompt quoted in JSON is escaped and not found as written)."""
    if ctx.task is not None:
        return ctx.task, ctx.behaviour
    texts = [m.content for m in messages if m.role in ("system", "user")]
    for value in extra:
        try:
            texts.extend(_strings(json.loads(value)))
        except ValueError:
            continue
    for text in texts:
        task = ctx.sim.find_task((Message("user", text),))
        if task is not None:
            return task, ctx.sim.behaviour(task)
    return None, None


def _strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in _strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in _strings(v)]
    return []


# ---------------------------------------------------------------- answering


@dataclass(slots=True)
class _Judged:
    verdict: str
    score: float
    critique: str


def _judge(
    ctx: HandlerContext, b: Behaviour | None, candidate: str | None, scale: tuple[float, float]
) -> _Judged:
    if b is not None and candidate is not None:
        said = json.loads(ctx.sim.judge_text(b, candidate, scale, ctx.draws))
        return _Judged(str(said["verdict"]), float(said["score"]), str(said["critique"]))
    rng = ctx.draws.rng("foreign:unknown")
    says_correct = rng.random() < 0.5
    return _Judged(
        "correct" if says_correct else "incorrect",
        _band(says_correct, scale, rng),
        "I cannot check this against the task with confidence.",
    )


def _band(says_correct: bool, scale: tuple[float, float], rng: random.Random) -> float:
    """A score in the band of a verdict: top 30% of the scale, or bottom 40%."""
    lo, hi = scale
    frac = 0.7 + 0.3 * rng.random() if says_correct else 0.4 * rng.random()
    raw = lo + (hi - lo) * frac
    if float(lo).is_integer() and float(hi).is_integer() and hi - lo >= 2:
        return float(math.ceil(raw) if says_correct else math.floor(raw))
    return round(raw, 2)


def _number(value: float, typ: str = "float") -> str:
    if typ.lower() == "int" or float(value).is_integer():
        return str(round(value))
    return f"{value:g}"


def _generate(ctx: HandlerContext, task: Task | None, b: Behaviour | None, hinted: bool) -> str:
    """A solution drawn as the core's generator draws it (same labels, same text)."""
    if task is None or b is None:
        reply: str = ctx.draws.rng("text").choice(
            (
                "I'm not sure I understand the question; could you give more detail?",
                "I don't have enough information to answer that precisely.",
                "That depends on details the question does not give.",
            )
        )
        return reply
    draws, p = ctx.draws, ctx.sim.params
    rng = draws.rng("text")
    right = draws.uniform("correct") < ctx.sim.p_correct(task)
    if not right and hinted:
        right = draws.uniform("foreign:hint") < p.fix_rate
    return b.correct(rng) if right else b.wrong(ctx.sim.mode(draws), rng)


def _final_answer(task: Task | None, solution: str) -> str:
    if task is not None and task.kind in ("code", "findings"):
        return solution
    return extract_answer(solution) or solution.strip()


def _verdict_value(out: OutputField, verdict: str) -> str:
    typ = out.type.lower()
    if typ == "bool":
        return str(verdict == "correct")
    if typ.startswith("literal"):
        options: list[str] = re.findall(r"['\"]([^'\"]+)['\"]", out.type)
        for o in options:
            if o.lower() == verdict:
                return o
        return options[0] if options else verdict
    return verdict


def _field_values(ctx: HandlerContext, fp: FieldPrompt) -> dict[str, str]:
    messages = conversation(ctx)
    task, b = _task(ctx, messages, tuple(fp.inputs.values()))
    candidate = fp.candidate()
    judging = candidate is not None and not any(o.kind == "answer" for o in fp.outputs)
    out: dict[str, str] = {}
    if judging:
        scale = read_scale([ctx.parsed.text, *(m.content for m in reversed(messages))])
        j = _judge(ctx, b, candidate, scale)
        wrong = j.verdict != "correct"
        advice = (
            f"The last answer was wrong: {j.critique} Redo each step and check it."
            if wrong
            else "N/A"
        )
        for o in fp.outputs:
            kind = o.kind
            if kind == "score":
                out[o.name] = _number(j.score, o.type)
            elif kind == "verdict":
                out[o.name] = _verdict_value(o, j.verdict)
            elif kind == "advice":
                out[o.name] = (
                    json.dumps(dict.fromkeys(fp.names(), advice))
                    if o.type.lower().startswith("dict")
                    else advice
                )
            else:
                out[o.name] = j.critique
        return out
    solution = _generate(ctx, task, b, fp.hint() is not None)
    for o in fp.outputs:
        kind = o.kind
        if kind == "answer":
            answer = _final_answer(task, solution)
            out[o.name] = answer
        elif kind == "score":
            out[o.name] = _number(0.9 if o.type.lower() == "float" else 9, o.type)
        elif kind == "verdict":
            out[o.name] = _verdict_value(o, "correct")
        elif kind == "advice":
            out[o.name] = "{}" if o.type.lower().startswith("dict") else "N/A"
        else:
            out[o.name] = solution
    return out


def format_fields(fp: FieldPrompt, values: dict[str, str]) -> str:
    """The reply in the form the prompt asked for."""
    if fp.json_reply:
        obj: dict[str, Any] = {}
        for o in fp.outputs:
            v = values[o.name]
            try:
                obj[o.name] = json.loads(v) if o.kind in ("score", "advice") else v
            except ValueError:
                obj[o.name] = v
        return json.dumps(obj)
    parts = [f"[[ ## {o.name} ## ]]\n{values[o.name]}" for o in fp.outputs]
    return "\n\n".join([*parts, "[[ ## completed ## ]]"])


def rating_reply(ctx: HandlerContext) -> str:
    """A bare number: the judge's score of the rated response on the declared scale."""
    messages = conversation(ctx)
    scale = read_scale([ctx.parsed.text, *(m.content for m in reversed(messages))])
    task, b = _task(ctx, messages)
    j = _judge(ctx, b if task is not None else None, rated_response(messages), scale)
    return _number(j.score)


@dataclass(frozen=True, slots=True)
class ForeignFormatsHandler:
    name: str = "foreign_formats"

    def matches(self, text: str) -> bool:
        return read_field_prompt(text) is not None or is_rating_request(text)

    def respond(self, ctx: HandlerContext) -> str:
        fp = read_field_prompt(ctx.parsed.text)
        if fp is None:
            return rating_reply(ctx)
        return format_fields(fp, _field_values(ctx, fp))


HANDLER = ForeignFormatsHandler()
