"""The sim as a value function (SWE-Search hybrid value).

Matches the ``<value_request>`` block of the value role's template. Whether the
sim thinks the candidate is right follows the critic's error rates
(``sensitivity`` for wrong candidates, ``specificity`` for right ones, through
:meth:`SimModel.judge_text`); the score lies in the upper 30% of the declared
scale when it thinks so and the lower 40% otherwise. The explanation is the
behaviour's own explanation/approval; the advice names the mistake to avoid when
it thinks the candidate wrong, and a check to make otherwise.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from deliberate.models.sim.core import HandlerContext


@dataclass(frozen=True, slots=True)
class ValueHandler:
    name: str = "value"

    def matches(self, text: str) -> bool:
        return "<value_request>" in text

    def respond(self, ctx: HandlerContext) -> str:
        scale = ctx.parsed.scale
        candidate = ctx.parsed.candidate or ""
        if ctx.behaviour is None:
            mid = (scale[0] + scale[1]) / 2
            return _reply(mid, "I cannot check this against the task with confidence.",
                          "Solve the task again from the start, checking each step.")
        said = json.loads(ctx.sim.judge_text(ctx.behaviour, candidate, scale, ctx.draws))
        critique = str(said["critique"])
        if said["verdict"] == "correct":
            advice = "A different attempt could verify the result another way."
        else:
            advice = f"Avoid this mistake: {critique} Redo the computation carefully."
        return _reply(float(said["score"]), critique, advice)


def _reply(score: float, explanation: str, advice: str) -> str:
    return json.dumps({"explanation": explanation, "advice": advice,
                       "score": math.floor(score)})


HANDLER = ValueHandler()
