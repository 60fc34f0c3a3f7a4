"""Robust parsing of structured role output, as real models write it.

Models wrap JSON in code fences or prose, leave trailing commas, quote numbers,
and write scores as "7/10". :func:`extract_json_object` finds the object; pydantic
validates it. A failure is a :class:`ParseError` — never a silent default.
"""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_FRACTION_SCORE = re.compile(r'("score"\s*:\s*)"?(-?\d+(?:\.\d+)?)\s*/\s*\d+(?:\.\d+)?"?')


class ParseError(ValueError):
    """Structured output could not be read; the message is shown to the model on repair."""


def _candidates(text: str) -> list[str]:
    found = [m.group(1) for m in _FENCE.finditer(text)]
    # Every balanced {...} span, outermost first, scanning left to right.
    depth = 0
    start = -1
    in_str = False
    esc = False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and depth > 0:
            in_str = True
        elif ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
            if depth == 0:
                found.append(text[start : i + 1])
    return found


def _loads_lenient(blob: str) -> Any:
    blob = blob.strip()
    try:
        return json.loads(blob)
    except json.JSONDecodeError:
        pass
    fixed = _FRACTION_SCORE.sub(r"\1\2", _TRAILING_COMMA.sub(r"\1", blob))
    return json.loads(fixed)


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` that parses (leniently)."""
    if not text or not text.strip():
        raise ParseError("the reply was empty; expected a JSON object")
    errors: list[str] = []
    for blob in _candidates(text):
        try:
            value = _loads_lenient(blob)
        except json.JSONDecodeError as exc:
            errors.append(f"{exc.msg} at line {exc.lineno} column {exc.colno}")
            continue
        if isinstance(value, dict):
            return value
    if errors:
        raise ParseError(f"the reply holds no valid JSON object ({errors[0]})")
    raise ParseError("the reply holds no JSON object")


def coerce_score(value: Any) -> float:
    """A score as a float, accepting 7, "7", "7/10" and "7.5 out of 10"."""
    if isinstance(value, bool):
        raise ParseError("score must be a number, not true/false")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        m = re.match(r"\s*(-?\d+(?:\.\d+)?)\s*(?:/|out of)?", value)
        if m:
            return float(m.group(1))
    raise ParseError(f"score must be a number, got {value!r}")
