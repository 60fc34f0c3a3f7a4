"""The sim as a critic that lists its points (``multi_critic``'s critics).

Matches the ``<critique_points>`` block of the ``critic_points`` template. The
verdict and score are the plain critic's (same ``sensitivity`` / ``specificity``
and score bands); the points follow from the verdict:

- a wrong candidate caught: one point at the true first wrong step (math: where the
  candidate leaves the reference; other kinds: ``step`` null) explaining the error,
  plus, 30% of the time, a second mistaken point at another step;
- a right candidate falsely rejected: one mistaken point at a random step;
- "correct": no points.

Critics that differ only in their persona (system prompt) draw independently, so
true points tend to be raised by several of them and mistaken ones rarely agree.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from deliberate.models.sim.core import HandlerContext
from deliberate.models.sim.handlers.step_critic import mistaken_complaint, true_first_wrong

SECOND_POINT_RATE = 0.3
"""How often a caught wrong candidate also gets a mistaken second point."""


def _mistaken(steps: list[str], avoid: int | None, kind: str, complaint: str,
              rng: random.Random) -> dict[str, Any]:
    choices = [k for k in range(1, len(steps) + 1) if k != avoid]
    if kind != "math" or not choices:
        return {"step": None, "issue": complaint}
    k = rng.choice(choices)
    return {"step": k, "issue": mistaken_complaint(k, steps[k - 1], rng)}


@dataclass(frozen=True, slots=True)
class CriticPointsHandler:
    name: str = "critic_points"

    def matches(self, text: str) -> bool:
        return "<critique_points>" in text

    def respond(self, ctx: HandlerContext) -> str:
        candidate = ctx.parsed.candidate or ""
        steps = [ln for ln in candidate.splitlines() if ln.strip()]  # the template's steps
        rng = ctx.draws.rng("points")
        if ctx.task is None or ctx.behaviour is None:
            says_correct = rng.random() < 0.5
            return json.dumps({
                "critique": "I cannot check this against the task with confidence.",
                "verdict": "correct" if says_correct else "incorrect",
                "score": ctx.parsed.scale[1] if says_correct else ctx.parsed.scale[0],
                "points": [],
            })
        b = ctx.behaviour
        reply: dict[str, Any] = json.loads(ctx.sim.judge_text(b, candidate, ctx.parsed.scale,
                                                              ctx.draws))
        points: list[dict[str, Any]] = []
        if reply["verdict"] == "incorrect" and steps:
            kind = ctx.task.kind
            if b.is_right(candidate):
                points.append(_mistaken(steps, None, kind, b.complain(candidate, rng), rng))
            else:
                step, sentence = true_first_wrong(ctx.task, b, steps)
                on_step = kind in ("math",) and step > 0
                points.append({"step": step if on_step else None,
                               "issue": sentence or b.explain(candidate)})
                if rng.random() < SECOND_POINT_RATE:
                    points.append(_mistaken(steps, step, kind, b.complain(candidate, rng), rng))
        reply["points"] = points
        return json.dumps(reply)


HANDLER = CriticPointsHandler()
