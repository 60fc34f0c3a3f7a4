"""Answer and format checks that need no model: exact text, numbers with tolerance,
choice letters, a regular expression, a JSON schema.

Numbers reuse :mod:`deliberate.verifiers.answer` (one normaliser for the whole
project); math expressions live in :mod:`deliberate.verifiers.math`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

from deliberate.errors import ConfigError
from deliberate.parsing import json_values
from deliberate.tasks.task import Task
from deliberate.verifiers.answer import normalise_number
from deliberate.verifiers.base import VerifierResult

_LETTERS = "ABCDEFGHIJ"
_ANS = r"(?i:answer)\s*(?i:is)?[\s:*(]*"
_OPT = r"(?i:choice|option)\s*(?i:is)?[\s:*(]*"
_LOWER_END = r"(?:[)*.,;:!]|\s*$)"
# Explicit statements: the last occurrence wins (models restate their answer).
_STRONG = (
    re.compile(r"\\boxed\{\s*\(?([A-J])\)?\s*\}"),
    re.compile(_ANS + r"([A-J])\b"),
    re.compile(_ANS + r"([a-j])" + _LOWER_END, re.M),
    re.compile(_OPT + r"([A-J])\b"),
    re.compile(_OPT + r"([a-j])" + _LOWER_END, re.M),
    re.compile(r"^\W*([A-Ja-j])\W*$"),
)
# Weak signs count only when they name one letter: a reply that walks through the
# options, "(A) ... (B) ...", names several and settles on none of them this way.
_WEAK = (
    re.compile(r"(?:^|\s)\(([A-J])\)"),
    re.compile(r"(?m)^\s*\**\(?([A-J])[.):]\**(?:\s|$)"),
)


def _result(ok: bool, details: str) -> VerifierResult:
    return VerifierResult(ok, 1.0 if ok else 0.0, details)


def _no_reference() -> VerifierResult:
    return VerifierResult(None, None, "task has no reference answer")


class ExactMatch:
    """The final answer equals the reference after trimming and collapsing whitespace.

    ``ignore_case`` makes the comparison case-insensitive (off by default: exact
    means exact).
    """

    name = "exact"

    def __init__(self, ignore_case: bool = False) -> None:
        self.ignore_case = ignore_case

    def _norm(self, s: str) -> str:
        s = " ".join(s.split())
        return s.lower() if self.ignore_case else s

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        if task.answer is None:
            return _no_reference()
        got = answer if answer is not None else text
        if not got or not got.strip():
            return VerifierResult(False, 0.0, "no final answer found in the candidate")
        ok = self._norm(got) == self._norm(task.answer)
        return _result(ok, f"answer {got.strip()!r} {'equals' if ok else 'differs from'} "
                           f"the reference")


class NumericMatch:
    """The final answer is a number within ``rel_tol`` (relative) or ``abs_tol`` of
    the reference.

    The tolerance is applied as given, to whole numbers too (``numeric:0.05`` accepts
    an estimate within 5%); the default only absorbs float noise. Unlike
    ``answer_match`` a non-number never matches by text: a candidate with no number
    fails, and a reference that is no number is reported as undecidable.
    """

    name = "numeric"

    def __init__(self, rel_tol: float = 1e-9, abs_tol: float = 1e-9) -> None:
        if rel_tol < 0 or abs_tol < 0:
            raise ConfigError("numeric tolerance must not be negative")
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        if task.answer is None:
            return _no_reference()
        ref = normalise_number(task.answer)
        if ref is None:
            return VerifierResult(None, None, f"reference {task.answer!r} is not a number")
        got = normalise_number(answer) if answer is not None else None
        if got is None:
            return VerifierResult(False, 0.0, "no number found in the candidate's answer")
        ok = math.isclose(float(Fraction(got)), float(Fraction(ref)),
                          rel_tol=self.rel_tol, abs_tol=self.abs_tol)
        return _result(ok, f"answer {got} {'matches' if ok else 'differs from'} reference {ref}")


def extract_choice(text: str | None, letters: str = _LETTERS) -> str | None:
    """The option letter a reply settles on: "(B)", "B.", "answer is b", "Option B",
    ``\\boxed{B}``, or a reply that is just the letter. None when it names none."""
    if not text:
        return None
    for pattern in _STRONG:
        found = [m.upper() for m in pattern.findall(text) if m.upper() in letters]
        if found:
            return str(found[-1])
    distinct = {m for pattern in _WEAK for m in pattern.findall(text) if m in letters}
    return distinct.pop() if len(distinct) == 1 else None


class ChoiceMatch:
    """The option letter in the candidate equals the reference letter.

    Where the task lists its options as ``metadata["choices"]`` (texts in letter
    order), a reply that names no letter but ends with one option's exact text
    counts as that option.
    """

    name = "choice"

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        if task.answer is None:
            return _no_reference()
        ref = extract_choice(task.answer)
        if ref is None:
            return VerifierResult(None, None, f"reference {task.answer!r} names no option letter")
        got = extract_choice(text) or extract_choice(answer) or _by_option_text(task, text)
        if got is None:
            return VerifierResult(False, 0.0, "no option letter found in the candidate")
        ok = got == ref
        return _result(ok, f"chose {got}; the reference is {ref}")


def _by_option_text(task: Task, text: str) -> str | None:
    options = task.metadata.get("choices")
    if not isinstance(options, list) or not text.strip():
        return None
    last = text.strip().splitlines()[-1].strip().strip(".").lower()
    for letter, option in zip(_LETTERS, options, strict=False):
        if isinstance(option, str) and option.strip().lower() == last:
            return letter
    return None


class RegexMatch:
    """The candidate's text matches a regular expression (``re.search``; anchor it
    with ``^…$`` and inline flags such as ``(?s)`` to demand the whole text)."""

    def __init__(self, pattern: str) -> None:
        try:
            self.pattern = re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"regex verifier: invalid pattern {pattern!r}: {exc}") from exc
        self.name = f"regex:{pattern}"

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        m = self.pattern.search(text or "")
        if m is None:
            return _result(False, f"text does not match {self.pattern.pattern!r}")
        return _result(True, f"text matches {self.pattern.pattern!r} at {m.start()}")


def load_schema(source: str) -> dict[str, Any]:
    """A JSON schema from inline JSON (starting with ``{``) or a ``.json`` file path."""
    text = source.strip()
    where = "inline schema"
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ConfigError(f"json_schema verifier: no schema file {path}")
        where = str(path)
        text = path.read_text(encoding="utf-8")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"json_schema verifier: {where} is not JSON: {exc}") from exc
    if not isinstance(schema, dict):
        raise ConfigError(f"json_schema verifier: {where} is not a JSON object")
    _validator_for(schema, where)
    return schema


def _validator_for(schema: Mapping[str, Any], where: str) -> Any:
    import jsonschema  # type: ignore[import-untyped]

    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(f"json_schema verifier: {where} is not a valid schema: "
                          f"{exc.message}") from exc
    return cls(schema)


class JsonSchemaMatch:
    """The candidate holds a JSON value (in fences or prose, read leniently as role
    output is) that validates against a schema.

    The schema is given inline or as a file; without one, the task's
    ``metadata["json_schema"]`` is used. The first JSON value in the text that
    validates passes; otherwise the error of the first candidate value is reported.
    """

    def __init__(self, schema: Mapping[str, Any] | None = None, *, label: str = "") -> None:
        self.schema = dict(schema) if schema is not None else None
        self._validator = _validator_for(self.schema, "schema") if self.schema else None
        self.name = f"json_schema:{label}" if label else "json_schema"

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        validator = self._validator
        if validator is None:
            schema = task.metadata.get("json_schema")
            if not isinstance(schema, Mapping):
                return VerifierResult(None, None, "no schema: give one in the spec or in the "
                                                  "task's metadata['json_schema']")
            try:
                validator = _validator_for(schema, f"task {task.id} schema")
            except ConfigError as exc:
                return VerifierResult(None, None, str(exc))
        first_error: str | None = None
        seen = 0
        for value in json_values(text or ""):
            seen += 1
            errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
            if not errors:
                return _result(True, "JSON validates against the schema")
            if first_error is None:
                err = errors[0]
                where = "/".join(str(p) for p in err.path) or "(root)"
                first_error = f"at {where}: {err.message}"
        if not seen:
            return _result(False, "no JSON object or array found in the candidate")
        return _result(False, f"JSON does not fit the schema {first_error}")
