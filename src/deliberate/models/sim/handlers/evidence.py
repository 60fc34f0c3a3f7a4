"""The sim as evidence critic and evidence refiner (AlignRAG-style refinement).

Matches the evidence critic's template by its ``<reasoning>`` and ``<passages>``
blocks together, and the evidence refiner's by ``<evidence_critique>``. The true
first wrong step comes from the task's ground truth (math: the first line where the
candidate leaves the reference solution, as for the step critic); the sim reports it
with the configured rates:

- **critic**: the real first wrong step of a wrong reasoning is flagged with
  probability ``sensitivity`` (``contradicted`` with the passage it cites, else
  ``unsupported``); the later steps that are not lines of the reference are flagged
  ``unsupported`` with it, as they carry the error. Independently, with probability
  ``1 - specificity`` one right step (before the first wrong one) is flagged
  ``unsupported`` by mistake, so a right reasoning passes untouched with probability
  ``specificity``, as with the plain critic. Every other step is ``supported``. The verdict is ``incorrect`` when
  anything is flagged; the score lies in the top 30% of the scale if nothing is
  flagged, otherwise in the lower 60%, in proportion to the share of supported steps.
- **refiner**: a wrong reasoning is repaired with ``fix_rate`` when the first
  flagged step is the real first wrong one, else with ``fix_rate_wrong_critique``;
  a right one is broken with ``break_rate`` when a step was flagged, else returned
  unchanged.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass
from typing import Any

from deliberate.models.sim.core import Behaviour, HandlerContext
from deliberate.models.sim.math_errors import first_divergence, normalise_solution
from deliberate.models.sim.protocol import DEFAULT_SCALE, parse_scale
from deliberate.tasks.task import Task

_STEP_LABEL = re.compile(r"^\s*step\s+\d+\s*[:.)]\s*", re.IGNORECASE)
_PASSAGE_LINE = re.compile(r"^\s*\[([^\[\]]+)\]\s")
_CITATION = re.compile(r"\[([^\[\]\s]+)\]")
_FLAG_LINE = re.compile(r"(?im)^\s*step\s+(\d+)\s+is\s+(?:unsupported|contradicted)\b")


def _block(text: str, tag: str) -> str | None:
    start = text.find(f"<{tag}>")
    end = text.rfind(f"</{tag}>")
    if start < 0 or end < start:
        return None
    return text[start + len(tag) + 2 : end]


def read_steps(text: str) -> list[str]:
    """The steps inside ``<reasoning>``, without their ``Step k:`` labels."""
    block = _block(text, "reasoning") or ""
    return [_STEP_LABEL.sub("", ln.strip()) for ln in block.splitlines() if ln.strip()]


def read_passage_ids(text: str) -> list[str]:
    """Ids of the passages listed as ``[id] text`` inside ``<passages>``."""
    block = _block(text, "passages") or ""
    return [m.group(1).strip() for ln in block.splitlines() if (m := _PASSAGE_LINE.match(ln))]


def read_flagged(text: str) -> list[int]:
    """Step numbers the critique inside ``<evidence_critique>`` flags, in order."""
    block = _block(text, "evidence_critique") or ""
    return sorted({int(m.group(1)) for m in _FLAG_LINE.finditer(block)})


def _reference(task: Task) -> str:
    if task.solution:
        return normalise_solution(task.solution, task.answer)
    return f"Answer: {task.answer}"


def first_wrong(task: Task, behaviour: Behaviour, steps: list[str]) -> tuple[int | None, str]:
    """The real first wrong step (1-based; None if the reasoning is right) and why."""
    text = "\n".join(steps)
    right = behaviour.is_right(text)
    if task.kind == "math" and (task.solution or task.answer is not None):
        found = first_divergence(text, _reference(task))
        if found is not None:
            return found
    elif not right and task.solution:
        ref = {ln.strip() for ln in task.solution.splitlines() if ln.strip()}
        for k, step in enumerate(steps, start=1):
            if step.strip() not in ref:
                return k, f"Step {k} is not what the passages support."
    if right or not steps:
        return None, ""
    return len(steps), behaviour.explain(text)


def _cited(step: str, ids: list[str]) -> str | None:
    return next((c for c in _CITATION.findall(step) if c in ids), None)


def _score(flagged: int, n: int, scale: tuple[float, float], rng: random.Random) -> float | int:
    lo, hi = scale
    u = rng.random()
    if flagged == 0:
        frac = 0.7 + 0.3 * max(u, rng.random())
    else:
        frac = 0.6 * (n - flagged) / max(1, n) * (0.5 + 0.5 * u)
    raw = lo + (hi - lo) * frac
    if float(lo).is_integer() and float(hi).is_integer() and hi - lo >= 2:
        value = math.ceil(raw) if flagged == 0 else math.floor(raw)
        return int(min(hi, max(lo, value)))
    return round(min(hi, max(lo, raw)), 2)


def _reply(steps: list[str], status: dict[int, tuple[str, str | None, str]], ids: list[str],
           scale: tuple[float, float], rng: random.Random) -> str:
    out: list[dict[str, Any]] = []
    for k, step in enumerate(steps, start=1):
        if k in status:
            s, passage, note = status[k]
        else:
            passage = _cited(step, ids)
            s, note = "supported", (f"Stated in [{passage}]." if passage
                                    else "Follows from the earlier steps.")
        out.append({"step": k, "status": s, "passage": passage, "note": note})
    flagged = sum(1 for o in out if o["status"] != "supported")
    return json.dumps({"steps": out, "verdict": "incorrect" if flagged else "correct",
                       "score": _score(flagged, len(steps), scale, rng)})


def critic_reply(ctx: HandlerContext) -> str:
    text = ctx.parsed.text
    steps = read_steps(text)
    ids = read_passage_ids(text)
    scale = parse_scale(text[max(0, text.rfind("</reasoning>")):]) or DEFAULT_SCALE
    rng = ctx.draws.rng("evidence_critic")
    p = ctx.sim.params
    if not steps:
        return json.dumps({"steps": [], "verdict": "incorrect", "score": scale[0]})
    status: dict[int, tuple[str, str | None, str]] = {}
    if ctx.task is None or ctx.behaviour is None:
        if ctx.draws.uniform("evidence_verdict") >= 0.5:
            k = rng.randint(1, len(steps))
            status[k] = ("unsupported", None, "I cannot find this in the passages.")
        return _reply(steps, status, ids, scale, ctx.draws.rng("score"))
    wrong_at, why = first_wrong(ctx.task, ctx.behaviour, steps)
    if wrong_at is not None and ctx.draws.uniform("evidence_verdict") < p.sensitivity:
        passage = _cited(steps[wrong_at - 1], ids)
        kind = "contradicted" if passage else "unsupported"
        status[wrong_at] = (kind, passage, why)
        ref_lines = {re.sub(r"\s+", "", ln) for ln in _reference(ctx.task).splitlines()}
        for k in range(wrong_at + 1, len(steps) + 1):
            if re.sub(r"\s+", "", steps[k - 1]) not in ref_lines:
                status[k] = ("unsupported", None, f"Depends on step {wrong_at}, which is wrong.")
    right_steps = [k for k in range(1, len(steps) + 1)
                   if k not in status and (wrong_at is None or k < wrong_at)]
    if right_steps and ctx.draws.uniform("evidence_false_alarm") >= p.specificity:
        k = rng.choice(right_steps)
        status[k] = ("unsupported", None, "The passages do not say this.")
    return _reply(steps, status, ids, scale, ctx.draws.rng("score"))


def refiner_reply(ctx: HandlerContext) -> str:
    text = ctx.parsed.text
    steps = read_steps(text)
    candidate = "\n".join(steps)
    if ctx.task is None or ctx.behaviour is None:
        return candidate
    b = ctx.behaviour
    rng = ctx.draws.rng("text")
    p = ctx.sim.params
    flagged = read_flagged(text)
    wrong_at, _ = first_wrong(ctx.task, b, steps)
    u = ctx.draws.uniform("refine")
    if wrong_at is not None:
        fix = p.fix_rate if flagged and flagged[0] == wrong_at else p.fix_rate_wrong_critique
        return b.correct(rng) if u < fix else b.wrong(ctx.sim.mode(ctx.draws), rng)
    if flagged and u < p.break_rate:
        return b.wrong(ctx.sim.mode(ctx.draws), rng)
    return candidate


@dataclass(frozen=True, slots=True)
class EvidenceHandler:
    name: str = "evidence"

    def matches(self, text: str) -> bool:
        return "<evidence_critique>" in text or ("<reasoning>" in text and "<passages>" in text)

    def respond(self, ctx: HandlerContext) -> str:
        if "<evidence_critique>" in ctx.parsed.text:
            return refiner_reply(ctx)
        return critic_reply(ctx)


HANDLER = EvidenceHandler()
