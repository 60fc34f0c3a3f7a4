"""Deterministic judges: answer match, math equivalence, choice letters, regex, JSON
schema, user callables, code execution and detection, built by name with
:func:`build_verifier` (see docs/verifiers.md for every spec).

Submodules import lazily what is heavy (sympy, jsonschema, the sandbox), so
importing this package stays cheap.
"""

from deliberate.verifiers.base import (
    AnswerMatch,
    Verifier,
    VerifierResult,
    answers_equal,
    grading_verifier,
    parse_answer,
    vote_key,
)
from deliberate.verifiers.custom import CallableVerifier
from deliberate.verifiers.match import (
    ChoiceMatch,
    ExactMatch,
    JsonSchemaMatch,
    NumericMatch,
    RegexMatch,
    extract_choice,
)
from deliberate.verifiers.math import MathEquivalence, math_equal
from deliberate.verifiers.registry import build_verifier, known_verifiers

__all__ = [
    "AnswerMatch",
    "CallableVerifier",
    "ChoiceMatch",
    "ExactMatch",
    "JsonSchemaMatch",
    "MathEquivalence",
    "NumericMatch",
    "RegexMatch",
    "Verifier",
    "VerifierResult",
    "answers_equal",
    "build_verifier",
    "extract_choice",
    "grading_verifier",
    "known_verifiers",
    "math_equal",
    "parse_answer",
    "vote_key",
]
