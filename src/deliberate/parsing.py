"""Robust parsing of structured role output, as real models write it.

Models wrap JSON in code fences or prose, leave trailing commas and comments, use
single or typographic quotes, write Python's ``True``/``None``, quote numbers, and
write scores as "7/10". This module finds every JSON value in a reply, reads each
strictly and then leniently, and hands the first that fits the expected shape to
pydantic. A reply that fits nothing is a :class:`ParseError` whose message is shown
to the model on its one repair request — never a silent default.

A closed ``<think>…</think>`` block (reasoning models) is skipped. What is *not*
repaired: truncated JSON (an object cut off mid-way is a failure, not
something to close and guess at), values of the wrong type (a verdict given as
``true``, a score given as a list), missing fields, and scores on another scale.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError

T = TypeVar("T")

# Reasoning models think aloud before answering; drafts in there are not the answer.
_THINKING = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n?(.*?)```", re.DOTALL)
_NUMBER = re.compile(r"-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?")
_RATIO = re.compile(r"-?\d+(?:\.\d+)?\s*(?:/|out\s+of)\s*\d+(?:\.\d+)?")
_WORDS = re.compile(r"[A-Za-z_][\w .'-]*")
_SCORE_TEXT = re.compile(
    r"\s*(-?\d+(?:\.\d+)?)\s*(?:(?:/|out\s+of)\s*(\d+(?:\.\d+)?))?\s*", re.IGNORECASE
)
_PY_LITERALS = {"True": "true", "False": "false", "None": "null",
                "true": "true", "false": "false", "null": "null"}
# Opening quote -> the quotes that may close it.
_QUOTES = {'"': '"', "'": "'", "“": "”“\"", "”": "”“\"", "‘": "’‘'", "’": "’‘'", "„": "“”\""}
_BARE_STOP = set("{}[],:") | set(_QUOTES) | {"\n"}


class ParseError(ValueError):
    """Structured output could not be read; the message is shown to the model on repair."""


# ---------------------------------------------------------------------------------
# Finding JSON values in prose


def _balanced_spans(text: str) -> tuple[list[str], bool]:
    """Every balanced ``{...}`` / ``[...]`` span in order of its start (outer before
    inner), and whether some bracket was left open (the reply looks cut off)."""
    spans: list[tuple[int, int]] = []
    stack: list[tuple[str, int]] = []
    in_str = False
    esc = False
    pairs = {"}": "{", "]": "["}
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"' and stack:
            in_str = True
        elif ch in "{[":
            stack.append((ch, i))
        elif ch in "}]" and stack:
            if stack[-1][0] == pairs[ch]:
                _, start = stack.pop()
                spans.append((start, i + 1))
            else:  # mismatched bracket: whatever was open cannot be JSON
                stack.clear()
    spans.sort(key=lambda s: (s[0], -s[1]))
    open_object = any(ch == "{" for ch, _ in stack)
    return [text[a:b] for a, b in spans], open_object


def _relax(blob: str) -> str:
    """Rewrite JSON-ish text (as models write it) into strict JSON.

    Outside strings: comments (``//``, ``/* */``, ``#``) go, trailing commas go, bare
    keys and bare words are quoted, Python literals become JSON ones, ratios such as
    ``7/10`` become strings (their field decides what they mean). Strings in single
    or typographic quotes become double-quoted; invalid escapes are kept literally.
    """
    out: list[str] = []
    i, n = 0, len(blob)
    while i < n:
        ch = blob[i]
        if ch in _QUOTES:
            closers = _QUOTES[ch]
            j = i + 1
            buf: list[str] = []
            while j < n and blob[j] not in closers:
                c = blob[j]
                if c == "\\" and j + 1 < n:
                    nxt = blob[j + 1]
                    if nxt in "\"\\/bfnrtu":
                        buf.append(c + nxt)
                    elif nxt == "'":
                        buf.append("'")
                    else:
                        buf.append("\\\\" + nxt)
                    j += 2
                    continue
                buf.append('\\"' if c == '"' else c)
                j += 1
            out.append('"' + "".join(buf) + '"')
            i = j + 1
        elif blob.startswith("//", i) or ch == "#":
            j = blob.find("\n", i)
            i = n if j < 0 else j
        elif blob.startswith("/*", i):
            j = blob.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif ch in "}]":
            while out and (out[-1].isspace() or out[-1] == ","):
                out.pop()
            out.append(ch)
            i += 1
        elif ch in "{[,:" or ch.isspace():
            out.append(ch)
            i += 1
        else:
            j = i
            while j < n and blob[j] not in _BARE_STOP and not blob.startswith("//", j) \
                    and not blob.startswith("/*", j) and blob[j] != "#":
                j += 1
            token = blob[i:j].strip()
            rest = blob[j:].lstrip()
            out.append(_bare(token, is_key=rest.startswith(":")))
            out.append(blob[i:j][len(blob[i:j].rstrip()):])  # keep trailing whitespace
            i = j
    return "".join(out)


def _bare(token: str, *, is_key: bool) -> str:
    if is_key and re.fullmatch(r"[A-Za-z_][\w-]*", token):
        return json.dumps(token)
    if token in _PY_LITERALS:
        return _PY_LITERALS[token]
    if _NUMBER.fullmatch(token) or token in ("NaN", "Infinity", "-Infinity"):
        return token
    if _RATIO.fullmatch(token) or re.fullmatch(r"-?\d+(?:\.\d+)?\s*%", token):
        return json.dumps(token)
    if _WORDS.fullmatch(token):
        return json.dumps(token)
    return token


def _loads(blob: str) -> Any:
    """Strict JSON first; else the relaxed rewrite. Raises JSONDecodeError."""
    blob = blob.strip()
    try:
        return json.loads(blob)
    except json.JSONDecodeError:
        pass
    return json.loads(_relax(blob), strict=False)


class _Scan:
    """The JSON values in a reply, parsed lazily in reading order (fenced blocks
    first), with the decode errors met on the way and whether an object was left
    open. Callers stop at the first value that fits."""

    def __init__(self, text: str) -> None:
        text = _THINKING.sub(" ", text or "")
        self.text = text
        blobs: list[str] = [m.group(1) for m in _FENCE.finditer(text)]
        spans, self.cut_off = _balanced_spans(text)
        self._blobs = blobs + spans
        self.errors: list[tuple[str, json.JSONDecodeError]] = []

    def __iter__(self) -> Iterator[Any]:
        seen: set[str] = set()
        for blob in self._blobs:
            key = blob.strip()
            if not key or key in seen or key[0] not in "{[":
                continue
            seen.add(key)
            try:
                value = _loads(key)
            except json.JSONDecodeError as exc:
                self.errors.append((key, exc))
                continue
            yield value


def json_values(text: str) -> Iterator[Any]:
    """Every JSON object or array found in ``text``, in reading order (fences first)."""
    yield from _Scan(text)


def _no_value_error(scan: _Scan, kind: str) -> ParseError:
    if not scan.text.strip():
        return ParseError(f"the reply was empty; expected a JSON {kind}")
    if scan.errors:
        _, exc = max(scan.errors, key=lambda e: len(e[0]))
        return ParseError(f"the reply holds no valid JSON {kind} ({exc.msg} at line "
                          f"{exc.lineno} column {exc.colno})")
    if scan.cut_off:
        return ParseError(f"the JSON {kind} is incomplete (the reply looks cut off)")
    return ParseError(f"the reply holds no JSON {kind}")


def extract_json_object(text: str) -> dict[str, Any]:
    """The first JSON object in ``text`` that parses (leniently)."""
    scan = _Scan(text)
    for value in scan:
        if isinstance(value, dict):
            return value
    raise _no_value_error(scan, "object")


def extract_json_array(text: str) -> list[Any]:
    """The first JSON array in ``text`` that parses (leniently): for list outputs."""
    scan = _Scan(text)
    for value in scan:
        if isinstance(value, list):
            return value
    raise _no_value_error(scan, "array")


# ---------------------------------------------------------------------------------
# Validation


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad field, as a model can act on it."""
    err = exc.errors()[0]
    loc = ".".join(str(x) for x in err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"field {loc!r}: {msg}" if loc else msg


def _expects_array(target: Any) -> bool:
    origin = get_origin(target) or target
    return isinstance(origin, type) and issubclass(origin, list | tuple | set | frozenset)


def parse_structured(text: str, model: type[T], *,
                     context: Mapping[str, Any] | None = None) -> T:
    """The first JSON value in ``text`` that validates as ``model``.

    ``model`` is a pydantic model or any type pydantic validates (``list[Finding]``).
    ``context`` reaches the model's validators (the judge passes its score scale).
    Raises :class:`ParseError` naming the first problem with the likeliest candidate.
    """
    adapter: TypeAdapter[T] = TypeAdapter(model)
    want_array = _expects_array(model)
    kind = "array" if want_array else "object"
    scan = _Scan(text)
    first_invalid: ValidationError | None = None
    for value in scan:
        if isinstance(value, list) != want_array:
            continue
        try:
            return adapter.validate_python(value, context=dict(context or {}))
        except ValidationError as exc:
            first_invalid = first_invalid or exc
    if first_invalid is not None:
        raise ParseError(describe_validation_error(first_invalid))
    raise _no_value_error(scan, kind)


def coerce_score(value: Any, scale: tuple[float, float] | None = None) -> float:
    """A score as a float, accepting 7, "7", "7/10" and "7.5 out of 10".

    A ratio's denominator must be the top of ``scale`` where one is given: "7/100" on
    a 1..10 scale is an error to repair, not a number to guess at.
    """
    if isinstance(value, bool):
        raise ParseError("score must be a number, not true/false")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ParseError(f"score must be a finite number, got {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _SCORE_TEXT.fullmatch(value)
        if m:
            score = float(m.group(1))
            if m.group(2) is not None and scale is not None and float(m.group(2)) != scale[1]:
                raise ParseError(f"score {value!r} is not on the scale "
                                 f"{scale[0]:g} to {scale[1]:g}")
            return score
    raise ParseError(f"score must be a number, got {value!r}")


# ---------------------------------------------------------------------------------
# JSON-schema response format


def strict_json_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema in the strict form OpenAI-style endpoints accept:
    every property required, no additional properties, no defaults or titles."""
    return _strict(model.model_json_schema())  # type: ignore[no-any-return]


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _strict(v) for k, v in node.items() if k not in ("default", "title")}
        if out.get("type") == "object" and isinstance(out.get("properties"), dict):
            out["required"] = list(out["properties"])
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_strict(v) for v in node]
    return node


def json_schema_format(name: str, model: type[BaseModel]) -> dict[str, Any]:
    """A ``response_format`` asking the endpoint for JSON that fits ``model``."""
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": strict_json_schema(model), "strict": True}}


def coerce_step_number(value: Any, *, allow_negative: bool = False) -> Any:
    """A step number as models write it (3, 3.0, "3", "Step 3"); -1 only if allowed.

    Other values pass through for pydantic to reject with its own message.
    """
    if isinstance(value, bool):
        raise ValueError("must be a step number, not true/false")
    if isinstance(value, str):
        sign = "-?" if allow_negative else ""
        m = re.fullmatch(rf"\s*(?:step\s*)?({sign}\d+)\s*", value, re.IGNORECASE)
        if m is None:
            what = "a step number or -1" if allow_negative else "a step number"
            raise ValueError(f"must be {what}, got {value!r}")
        return int(m.group(1))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value
