"""Reading our own role prompts back out of a conversation, as the sim model must.

The sim sees only messages, like any model. It recognises which role it is asked to
play from the tags of the built-in templates (``roles/templates/*.j2``): a user
message with ``<candidate>`` and ``<critique>`` blocks asks for a refinement, one
with ``<candidate>`` only asks for a judgement, anything else asks for an answer.
Everything here is plain text parsing with no knowledge of tasks, so it is cheap
and testable on its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from deliberate.models.base import Message

RoleKind = Literal["generator", "critic", "refiner"]
Verdict = Literal["correct", "incorrect"]

DEFAULT_SCALE: tuple[float, float] = (1.0, 10.0)
"""Score scale assumed when a judging prompt does not declare one."""

_SCALE_RE = re.compile(
    r"score\s+from\s+(?P<lo>-?\d+(?:\.\d+)?)\s+to\s+(?P<hi>-?\d+(?:\.\d+)?)", re.IGNORECASE
)
_FENCE_RE = re.compile(r"```[ \t]*(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)(?:\n[ \t]*```|\Z)", re.S)
_VERDICT_FIELD_RE = re.compile(r"verdict\W{0,4}(?P<word>[a-z ]{0,16})", re.IGNORECASE)
_NEGATIVE_RE = re.compile(
    r"\b(incorrect|not correct|wrong|mistake|mistaken|error|erroneous|flawed|fails?|invalid|bug|buggy)\b",
    re.IGNORECASE,
)
_POSITIVE_RE = re.compile(r"\b(correct|right|valid|sound|accurate)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ParsedPrompt:
    """What a conversation asks for: the role, and the blocks the role templates fill."""

    role: RoleKind
    text: str
    """The last user message, where the templates put everything."""
    task_text: str | None = None
    candidate: str | None = None
    critique: str | None = None
    scale: tuple[float, float] = DEFAULT_SCALE


def _strip_block(text: str) -> str:
    """Block contents without the newline the templates put after/before the tags."""
    if text.startswith("\n"):
        text = text[1:]
    if text.endswith("\n"):
        text = text[:-1]
    return text


def _block(text: str, tag: str, start: int, end: int) -> tuple[str, int, int] | None:
    """The first ``<tag>`` in [start, end) up to the last ``</tag>`` before ``end``.

    Taking the last closing tag keeps a candidate that itself mentions the tag whole.
    """
    open_at = text.find(f"<{tag}>", start, end)
    if open_at < 0:
        return None
    body_start = open_at + len(tag) + 2
    close_at = text.rfind(f"</{tag}>", body_start, end)
    if close_at < 0:
        return None
    return _strip_block(text[body_start:close_at]), open_at, close_at + len(tag) + 3


def parse_scale(text: str) -> tuple[float, float] | None:
    """The ``Use a score from LO to HI`` scale a judging prompt declares, if any."""
    m = _SCALE_RE.search(text)
    if not m:
        return None
    lo, hi = float(m.group("lo")), float(m.group("hi"))
    if lo == hi:
        return None
    return (lo, hi) if lo < hi else (hi, lo)


def parse_prompt(messages: Sequence[Message]) -> ParsedPrompt:
    """Detect the role from the last user message and pull out its blocks."""
    text = next((m.content for m in reversed(messages) if m.role == "user"), "")
    n = len(text)
    cand_open = text.find("<candidate>")
    crit_open = text.rfind("<critique>")
    task_end = cand_open if cand_open >= 0 else n
    task = _block(text, "task", 0, task_end)
    task_text = task[0] if task else None
    if cand_open < 0:
        return ParsedPrompt(role="generator", text=text, task_text=task_text)
    critique = None
    cand_end = n
    if crit_open > cand_open:
        crit = _block(text, "critique", crit_open, n)
        if crit is not None:
            critique = crit[0]
            cand_end = crit_open
    cand = _block(text, "candidate", cand_open, cand_end)
    if cand is None:
        return ParsedPrompt(role="generator", text=text, task_text=task_text)
    scale = parse_scale(text[cand[2] :]) or DEFAULT_SCALE
    if critique is not None:
        return ParsedPrompt(
            role="refiner",
            text=text,
            task_text=task_text,
            candidate=cand[0],
            critique=critique,
            scale=scale,
        )
    return ParsedPrompt(
        role="critic", text=text, task_text=task_text, candidate=cand[0], scale=scale
    )


def extract_json(text: str) -> Any | None:
    """The JSON value in ``text``: the whole of it, a fenced block, or the outermost braces."""
    stripped = text.strip()
    candidates = [stripped]
    for m in _FENCE_RE.finditer(text):
        candidates.append(m.group("body").strip())
    for opener, closer in (("{", "}"), ("[", "]")):
        i, j = text.find(opener), text.rfind(closer)
        if 0 <= i < j:
            candidates.append(text[i : j + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except ValueError:
            continue
    return None


def _word_verdict(text: str) -> Verdict | None:
    if _NEGATIVE_RE.search(text):
        return "incorrect"
    if _POSITIVE_RE.search(text):
        return "correct"
    return None


def parse_verdict(critique: str) -> Verdict | None:
    """What a critique concluded: a JSON ``verdict`` field, a ``verdict:`` line, or its words.

    Negative words win over positive ones because critiques that find a mistake
    usually also praise what was right.
    """
    obj = extract_json(critique)
    if isinstance(obj, dict):
        v = obj.get("verdict")
        if isinstance(v, str):
            word = _word_verdict(v)
            if word is not None:
                return word
        if isinstance(v, bool):
            return "correct" if v else "incorrect"
        text = obj.get("critique")
        if isinstance(text, str):
            return _word_verdict(text)
    m = _VERDICT_FIELD_RE.search(critique)
    if m:
        word = _word_verdict(m.group("word"))
        if word is not None:
            return word
    return _word_verdict(critique)


def extract_code(text: str) -> str:
    """The program in a reply: the first ``python`` fence, else the first fence, else all."""
    fences = list(_FENCE_RE.finditer(text))
    for m in fences:
        if m.group("lang").lower() in ("python", "py", "python3"):
            return m.group("body")
    if fences:
        return fences[0].group("body")
    return text
