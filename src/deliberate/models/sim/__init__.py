"""The ``sim`` backend: a simulated chat model of configurable skill, for offline demos and tests.

It plays generator, critic/judge and refiner over a suite whose answers are known,
with error rates set by :class:`SimParams`; :mod:`.server` serves it over an
OpenAI-compatible HTTP API with fault injection. See ``docs/sim.md``.
"""

from deliberate.models.sim.code_mutate import Mutant, mutate_code, same_program
from deliberate.models.sim.core import SimModel, SimParams, count_tokens, token_pieces
from deliberate.models.sim.math_errors import (
    first_divergence,
    normalise_solution,
    wrong_math_solution,
)
from deliberate.models.sim.protocol import ParsedPrompt, parse_prompt, parse_verdict

__all__ = [
    "Mutant",
    "ParsedPrompt",
    "SimModel",
    "SimParams",
    "count_tokens",
    "first_divergence",
    "mutate_code",
    "normalise_solution",
    "parse_prompt",
    "parse_verdict",
    "same_program",
    "token_pieces",
    "wrong_math_solution",
]
