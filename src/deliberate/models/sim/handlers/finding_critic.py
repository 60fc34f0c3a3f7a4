"""The sim as GPTLens's critic: scores for every finding, keyed by its identifier.

Matches the ``<findings>`` block of the finding critic's template. A finding is real
when it matches one of the task's labelled findings under the detection rule
(:func:`deliberate.verifiers.detection.finding_matches`: same category, and a line
near a labelled one or the same function). The critic calls it right with the sim's
error rates:

- a real finding is scored as real with probability ``specificity``;
- a false finding is scored as false with probability ``sensitivity``.

Scored as real: correctness 7–9 when the call is right (5–7 when it is a false
alarm), profitability near the category's typical value; scored as false:
correctness 0–3 when right (2–4 when it wrongly rejects a real one) and
profitability 0–3. Severity follows the category (reentrancy and access control
high, timestamp dependence low) either way, ±1. Each finding's draws come from the
sim's seed, the task and the finding's content only, so the same finding gets the
same scores whatever its identifier, its position or the other findings beside it
(as a critic at temperature 0 should). The reply is one JSON object keyed by
identifier.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

from deliberate.models.sim.core import HandlerContext
from deliberate.models.sim.handlers.auditor import audited_task, block, stable_rng
from deliberate.models.sim.protocol import extract_json
from deliberate.verifiers.detection import finding_matches, labels_of, prediction_of

# Typical (severity, profitability) of a real finding of each category, on 0–9.
_TYPICAL: Mapping[str, tuple[int, int]] = {
    "reentrancy": (8, 8),
    "access_control": (8, 7),
    "arithmetic": (7, 6),
    "unchecked_low_level_calls": (6, 5),
    "denial_of_service": (6, 4),
    "bad_randomness": (6, 6),
    "front_running": (5, 5),
    "time_manipulation": (5, 4),
    "short_addresses": (5, 4),
    "other": (6, 5),
}


def _clip(x: int) -> int:
    return max(0, min(9, x))


def _criticism(item: Mapping[str, Any], real: bool, says_real: bool, rng: random.Random) -> str:
    fn = item.get("function_name") or "the contract"
    vuln = str(item.get("vulnerability") or "issue").lower()
    if says_real and real:
        return rng.choice((
            f"Correct: the {vuln} in {fn} is real and an attacker can reach it.",
            f"Valid finding: {fn} has the {vuln} the auditor describes; the reasoning holds.",
        ))
    if says_real:
        return rng.choice((
            f"Plausible: {fn} may allow {vuln}, though the exploit path is not fully shown.",
            f"The {vuln} in {fn} looks possible; the reasoning is mostly sound.",
        ))
    if real:
        return rng.choice((
            f"Doubtful: {fn} seems guarded enough that the {vuln} is hard to exploit.",
            f"The {vuln} claimed in {fn} is not convincingly exploitable.",
        ))
    return rng.choice((
        f"Not a vulnerability: {fn} does not have the {vuln} described; the reasoning "
        "misreads the code.",
        f"Wrong: nothing in {fn} allows {vuln}; an attacker gains nothing here.",
    ))


def _scores(ctx: HandlerContext, task_id: str | None, item: Mapping[str, Any],
            real: bool | None) -> dict[str, Any]:
    content = json.dumps({k: v for k, v in item.items() if k != "id"}, sort_keys=True)
    rng = stable_rng("finding-critic", ctx.sim.params.seed, task_id, content)
    p = ctx.sim.params
    u = rng.random()
    if real is None:  # no ground truth: a coin flip, middling scores
        says_real, confident = u < 0.5, False
    else:
        says_real = u < p.specificity if real else u >= p.sensitivity
        confident = says_real == real
    category = prediction_of(item).category or "other"
    sev, prof = _TYPICAL.get(category, (4, 3))
    if says_real:
        correctness = rng.randint(7, 9) if confident else rng.randint(5, 7)
        profitability = _clip(prof + rng.randint(-1, 1))
    else:
        correctness = rng.randint(0, 3) if confident else rng.randint(2, 4)
        profitability = rng.randint(0, 3)
    return {
        "criticism": _criticism(item, bool(real), says_real, rng),
        "correctness": correctness,
        "severity": _clip(sev + rng.randint(-1, 1)),
        "profitability": profitability,
    }


def _respond(ctx: HandlerContext) -> str:
    items = extract_json(block(ctx.parsed.text, "findings") or "")
    if not isinstance(items, list):
        return "{}"
    task = audited_task(ctx, "code")
    labels = labels_of(task) if task is not None else None
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("id"), str):
            continue
        real = None if labels is None else any(
            finding_matches(prediction_of(item), lab) for lab in labels)
        out[item["id"]] = _scores(ctx, task.id if task is not None else None, item, real)
    return json.dumps(out, indent=1)


class _FindingCriticHandler:
    name = "finding_critic"

    def matches(self, text: str) -> bool:
        return "<findings>" in text and "</findings>" in text

    def respond(self, ctx: HandlerContext) -> str:
        return _respond(ctx)


HANDLER = _FindingCriticHandler()
