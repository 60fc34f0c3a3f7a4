"""Small suites written for this project, shipped as JSONL package data.

They exist so that every strategy can be run, tested and demonstrated offline on
tasks with known ground truth, with no download: ``arithmetic`` (worked solutions one
step per line, for step critics), ``python`` (functions with assert tests, for the
sandbox), ``solidity`` (contracts with labelled flaws, for auditor-critic runs) and
``evidence`` (questions about a fictional world with their passages in
``metadata["passages"]``, for evidence refinement).
The content is original; each file is in :class:`~deliberate.tasks.task.Task`'s own
shape, so the generic JSONL loader reads it with no field mapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from types import MappingProxyType

from deliberate.errors import UnknownNameError
from deliberate.tasks.loaders import FieldMapping, _check_kind, _jsonl_rows, _rows_to_suite
from deliberate.tasks.task import Suite

__all__ = ["BUILTIN_SUITES", "BuiltinSuite", "load_builtin"]


@dataclass(frozen=True, slots=True)
class BuiltinSuite:
    """Where a built-in suite's data lives and what it is for."""

    name: str
    file: str
    kind: str
    description: str


BUILTIN_SUITES = MappingProxyType(
    {
        s.name: s
        for s in (
            BuiltinSuite(
                "arithmetic",
                "arithmetic.jsonl",
                "math",
                "30 arithmetic word problems with step-by-step solutions",
            ),
            BuiltinSuite(
                "python",
                "python.jsonl",
                "code",
                "30 small Python functions with assert-based tests",
            ),
            BuiltinSuite(
                "solidity",
                "solidity.jsonl",
                "findings",
                "6 short Solidity contracts with labelled flaws (SmartBugs categories)",
            ),
            BuiltinSuite(
                "evidence",
                "evidence.jsonl",
                "math",
                "20 questions about a fictional valley, each answered from 3-5 passages "
                "(some distractors), with cited worked solutions",
            ),
        )
    }
)


def load_builtin(name: str) -> Suite:
    """Read a built-in suite from the installed package data."""
    spec = BUILTIN_SUITES.get(name)
    if spec is None:
        raise UnknownNameError(
            f"unknown built-in suite {name!r}; expected one of {', '.join(BUILTIN_SUITES)}"
        )
    text = files(__name__).joinpath(spec.file).read_text(encoding="utf-8")
    rows = _jsonl_rows(text, f"builtin/{spec.file}")
    return _rows_to_suite(
        rows,
        mapping=FieldMapping(),
        kind=_check_kind(spec.kind),
        name=spec.name,
        description=spec.description,
    )
