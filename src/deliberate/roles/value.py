"""The value role: the SWE-Search hybrid value of a whole candidate.

The model replies ``{"score": <int on the declared scale>, "explanation": "...",
"advice": "..."}``: a number for the search, why it has that number, and what a
different branch should try instead (passed to the next expansion of a sibling).
The scale defaults to -100..100 as in SWE-Search. Like every structured role it
asks once more on an unreadable reply; a second failure is a recorded failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationInfo, field_validator

from deliberate.models.base import Message
from deliberate.parsing import ParseError, coerce_score, parse_structured
from deliberate.roles.roles import RoleBase, Structured, ask_structured, node_tags
from deliberate.tasks.task import Task


class ValueReply(BaseModel):
    """What the value role must return."""

    score: float
    explanation: str = ""
    advice: str = ""

    @field_validator("score", mode="before")
    @classmethod
    def _score(cls, v: object, info: ValidationInfo) -> float:
        scale = _scale(info)
        try:
            s = coerce_score(v, scale)
        except ParseError as exc:
            raise ValueError(str(exc)) from exc
        if scale is not None and not scale[0] <= s <= scale[1]:
            raise ValueError(f"score {s:g} is outside the scale {scale[0]:g}..{scale[1]:g}")
        return s


def _scale(info: ValidationInfo) -> tuple[float, float] | None:
    ctx = info.context
    if isinstance(ctx, dict) and ctx.get("scale") is not None:
        lo, hi = ctx["scale"]
        return float(lo), float(hi)
    return None


def parse_value(text: str, scale: tuple[float, float]) -> ValueReply:
    """The first JSON object in ``text`` that is a value reply on ``scale``; else ParseError."""
    return parse_structured(text, ValueReply, context={"scale": scale})


@dataclass(frozen=True, slots=True)
class ValueRole(RoleBase):
    """Scores a candidate on ``scale`` with an explanation and advice for a sibling."""

    scale: tuple[float, float] = (-100.0, 100.0)

    def messages(self, task: Task, candidate: str) -> tuple[Message, ...]:
        ctx: dict[str, Any] = {"task": task, "candidate": candidate,
                               "scale_min": f"{self.scale[0]:g}",
                               "scale_max": f"{self.scale[1]:g}"}
        return self.chat("value", **ctx)

    async def value(self, task: Task, candidate: str, *, node_id: str | None = None,
                    sample: int = 0) -> Structured[ValueReply]:
        tags = node_tags("value", node_id)
        lo, hi = f"{self.scale[0]:g}", f"{self.scale[1]:g}"
        return await ask_structured(
            self, self.messages(task, candidate), lambda t: parse_value(t, self.scale),
            tags=tags, sample=sample, response_format=self.schema_format("value", ValueReply),
            hint=f"Reply again with only the JSON object, with a score from {lo} to {hi}.",
        )


# ---------------------------------------------------------------- Agent Q ranking prior


class Ranking(BaseModel):
    """What the ranking role must return: candidate numbers, best first."""

    ranking: list[int]
    reason: str = ""


def parse_ranking(text: str, n: int) -> Ranking:
    """A ranking that is a permutation of 1..n; else ParseError."""
    r = parse_structured(text, Ranking)
    if sorted(r.ranking) != list(range(1, n + 1)):
        raise ParseError(f"ranking must list each of the candidates 1..{n} once, "
                         f"got {r.ranking}")
    return r


def rank_prior(ranking: list[int]) -> list[float]:
    """Prior per candidate (in candidate order) from a 1-based ranking: ∝ 1/(position+1)."""
    weight = {c: 1.0 / (pos + 1) for pos, c in enumerate(ranking)}
    total = sum(weight.values())
    return [weight[c] / total for c in range(1, len(ranking) + 1)]


@dataclass(frozen=True, slots=True)
class ActionRanker(RoleBase):
    """Ranks proposed candidates best first (Agent Q's self-critique prior for PUCT)."""

    def messages(self, task: Task, candidates: list[str]) -> tuple[Message, ...]:
        ctx: dict[str, Any] = {"task": task, "candidates": candidates}
        return self.chat("rank_actions", **ctx)

    async def rank(self, task: Task, candidates: list[str], *,
                   node_id: str | None = None) -> Structured[Ranking]:
        tags = node_tags("rank_actions", node_id)
        n = len(candidates)
        return await ask_structured(
            self, self.messages(task, candidates), lambda t: parse_ranking(t, n), tags=tags,
            response_format=self.schema_format("ranking", Ranking),
            hint=f"Reply again with only the JSON object ranking each of 1..{n} once.",
        )
