"""Verifiers by name: one spec string per verifier, as configs and the CLI give them.

==========================  ===================================================
spec                        verifier
==========================  ===================================================
``answer_match``            number with tolerance, else case-insensitive text
``exact``                   text equal after trimming whitespace
``numeric[:REL_TOL]``       number within a relative tolerance
``math_equiv``              mathematical equivalence (LaTeX + sympy)
``choice``                  option letter
``regex:PATTERN``           the text matches a regular expression
``json_schema[:SCHEMA]``    JSON in the text fits a schema (inline or a file)
``python:mod.path:fn``      a user's callable or verifier class (or ``python:file.py:fn``)
``code_exec``               run the program against the task's tests (sandbox)
``detection``               findings against labelled findings (precision/recall)
any other name              an entry point in the ``deliberate.verifiers`` group
==========================  ===================================================

``grading_verifier`` adds ``auto`` (chosen by task kind) and ``none``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from deliberate.errors import ConfigError, UnknownNameError
from deliberate.tasks.task import Task
from deliberate.verifiers.base import AnswerMatch, Verifier

# Verifiers written in other modules, imported only when asked for.
_LAZY = {
    "code_exec": ("deliberate.verifiers.code", "CodeExecution"),
    "detection": ("deliberate.verifiers.detection", "DetectionVerifier"),
}


def _simple() -> dict[str, Callable[[], Verifier]]:
    from deliberate.verifiers.match import ChoiceMatch, ExactMatch, NumericMatch
    from deliberate.verifiers.math import MathEquivalence

    return {
        "answer_match": AnswerMatch,
        "exact": ExactMatch,
        "numeric": NumericMatch,
        "math_equiv": MathEquivalence,
        "choice": ChoiceMatch,
    }


_WITH_ARGUMENT = ("regex", "json_schema", "python", "numeric")


def known_verifiers() -> list[str]:
    """Every spec name this installation knows (built-in, lazy and entry points)."""
    from deliberate.verifiers.custom import entry_point_names

    names = {*_simple(), *_LAZY, *(f"{n}:…" for n in ("regex", "python")), "json_schema"}
    return sorted(names | set(entry_point_names()))


def _lazy(name: str) -> Verifier:
    module_name, attr = _LAZY[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise UnknownNameError(f"verifier {name!r} is not available in this "
                                   f"installation ({module_name} is missing)") from exc
        raise
    cls = getattr(module, attr)
    verifier: Verifier = cls()
    return verifier


def build_verifier(spec: str) -> Verifier:
    """The verifier a spec names (see the module docstring for the forms)."""
    spec = spec.strip()
    if not spec:
        raise ConfigError("empty verifier spec; known: " + ", ".join(known_verifiers()))
    name, sep, arg = spec.partition(":")
    name = name.strip().replace("-", "_")
    if name == "regex":
        from deliberate.verifiers.match import RegexMatch

        if not arg:
            raise ConfigError("verifier regex needs a pattern: regex:PATTERN")
        return RegexMatch(arg)
    if name == "json_schema":
        from deliberate.verifiers.match import JsonSchemaMatch, load_schema

        if not arg.strip():
            return JsonSchemaMatch()
        label = arg.strip() if not arg.strip().startswith("{") else "inline"
        return JsonSchemaMatch(load_schema(arg), label=label)
    if name == "python":
        from deliberate.verifiers.custom import python_verifier

        return python_verifier(arg.strip())
    if name == "numeric" and sep:
        from deliberate.verifiers.match import NumericMatch

        try:
            tol = float(arg)
        except ValueError:
            raise ConfigError(f"verifier numeric: tolerance {arg!r} is not a number") from None
        return NumericMatch(rel_tol=tol)
    if sep:
        raise ConfigError(f"verifier {name!r} takes no argument (got {spec!r}); "
                          f"only {', '.join(_WITH_ARGUMENT)} do")
    simple = _simple()
    if name in simple:
        return simple[name]()
    if name in _LAZY:
        return _lazy(name)
    from deliberate.verifiers.custom import entry_point_verifier

    found = entry_point_verifier(name)
    if found is not None:
        return found
    raise UnknownNameError(f"unknown verifier {spec!r}; known: auto, none, "
                           + ", ".join(known_verifiers()))


def auto_verifier(task: Task) -> Verifier | None:
    """The grading verifier a task's kind calls for, or None where nothing can grade it.

    math -> math_equiv (numbers compare numerically inside it); choice -> choice;
    code -> code_exec (when the task has tests); findings -> detection (when the
    task carries labelled findings); text with a reference -> answer_match.
    """
    if task.kind == "math":
        return _simple()["math_equiv"]() if task.answer is not None else None
    if task.kind == "choice":
        return _simple()["choice"]() if task.answer is not None else None
    if task.kind == "code":
        return _optional("code_exec") if task.tests else None
    if task.kind == "findings":
        return _optional("detection") if "findings" in task.metadata else None
    if task.answer is not None:
        return AnswerMatch()
    return None


def _optional(name: str) -> Verifier | None:
    """A lazy verifier, or None while its module is not part of this installation."""
    try:
        return _lazy(name)
    except UnknownNameError:
        return None


def grading_verifier(spec: str, task: Task) -> Verifier | None:
    """The verifier that grades final answers: ``none``, ``auto`` (by task kind), or
    any spec :func:`build_verifier` accepts."""
    name = spec.strip()
    if name == "none":
        return None
    if name == "auto":
        return auto_verifier(task)
    return build_verifier(name)
