"""Several critics, one merged critique (MultiCritique), driving critique-then-refine.

Each round, every critic in ``critics`` (role names: each has its own model and
settings from ``RunConfig.role(name)``, and its own persona in the system prompt)
critiques the same version and lists its **points** as JSON:
``{"verdict", "score", "points": [{"step": int | null, "issue": str}]}``
(template ``critic_points_*.j2``). The points are merged by :func:`merge_points`:

- two points are **the same point** when both name a step and the steps are equal,
  or, when at least one names no step, when their issue texts are similar: the
  Jaccard overlap of their word sets (lower-cased letters and digits, a few
  function words dropped) is at least ``similarity`` (default 0.5);
- points are grouped greedily in critic order, each joining the first group whose
  first point it matches; a group is **kept** when at least ``min_agree`` different
  critics raised it (default 2: "raised by more than one");
- with ``use_verifier``, a scoring verifier that fails the version adds its details
  as a **confirmed** point (off by default: with a reference-answer verifier that is
  an oracle).

A merged critique with no point accepts the version; otherwise it is what the
refiner is shown. Rounds, stopping rules and the keep-best guard are those of
``refine`` (:func:`~deliberate.strategies.refine.refine_loop`); a version's score
is the mean of its critics' normalised scores.

Judgements: each critic's critique (role ``critic``, ``meta["critic"]`` its role
name, ``meta["points"]`` its points) and the merged one (role ``merged_critique``,
source ``strategy:multi_critic``, score on 0..1). A refinement's
``meta["feedback_ids"]`` names the merged critique and the critiques of the critics
that raised its points (their words are what the refiner reads). MultiCritique
merges with a model; this merge is a deterministic rule, so it costs nothing and
can be tested exactly (a deliberate difference).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, Field, field_validator, model_validator

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.models.base import Message
from deliberate.parsing import (
    ParseError,
    parse_structured,
)
from deliberate.roles.roles import Judge, Structured, Verdict, ask_structured, node_tags
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.strategies.refine import (
    Assessment,
    LoopSettings,
    MemoryRefiner,
    refine_loop,
)
from deliberate.tasks.task import Task
from deliberate.tree import NodeRecord

DEFAULT_PERSONAS: tuple[str, ...] = (
    "You check every calculation and every quantity taken from the problem.",
    "You check that the solution answers exactly the question that was asked.",
    "You check the reasoning: that each step follows from the steps before it.",
)


# ---------------------------------------------------------------- the points critic


class Point(BaseModel):
    """One problem a critic raises: the step it is in (1-based; None: no single step)."""

    step: int | None = None
    issue: str

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, v: object) -> object:
        if v is None or isinstance(v, bool):
            return None
        if isinstance(v, str):
            m = re.search(r"-?\d+", v)
            if m is None:
                return None
            v = int(m.group(0))
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, int) and v < 1:
            return None  # 0 / -1: "no particular step"
        return v


class PointsVerdict(Verdict):
    """What a points critic must return: a verdict, a score and the points behind them."""

    points: list[Point] = Field(default_factory=list)

    @field_validator("points", mode="before")
    @classmethod
    def _points(cls, v: object) -> object:
        if v is None:
            return []
        if isinstance(v, list):
            return [{"step": None, "issue": p} if isinstance(p, str) else p for p in v]
        return v


def parse_points(text: str, scale: tuple[float, float]) -> PointsVerdict:
    """Read a points critic's reply; the score must lie on ``scale``."""
    v = parse_structured(text, PointsVerdict, context={"scale": scale})
    if not scale[0] <= v.score <= scale[1]:
        raise ParseError(f"score {v.score:g} is outside the scale {scale[0]:g}..{scale[1]:g}")
    return v


@dataclass(frozen=True, slots=True)
class PointsCritic(Judge):
    """A critic that lists its points, each tied to a step where it can be."""

    template: ClassVar[str] = "critic_points"
    persona: str = ""

    def messages(self, task: Task, candidate: str) -> tuple[Message, ...]:
        ctx = {"task": task, "candidate": candidate, "persona": self.persona,
               "scale_min": f"{self.scale[0]:g}", "scale_max": f"{self.scale[1]:g}"}
        return self.chat(self.template, **ctx)

    async def critique(self, task: Task, candidate: str, *, node_id: str | None = None,
                       sample: int = 0) -> Structured[PointsVerdict]:
        tags = node_tags(self.template, node_id)

        lo, hi = self.scale
        return await ask_structured(
            self, self.messages(task, candidate), lambda text: parse_points(text, self.scale),
            tags=tags, sample=sample,
            response_format=self.schema_format("points_verdict", PointsVerdict),
            hint=(f"Reply again with only the JSON object: verdict, a score from {lo:g} "
                  f"to {hi:g}, and points, a list of {{\"step\", \"issue\"}}."),
        )


# ---------------------------------------------------------------- merging


_STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "in",
    "is", "it", "its", "of", "on", "or", "so", "than", "that", "the", "their", "then", "there",
    "this", "to", "was", "were", "which", "with",
))


def issue_words(text: str) -> frozenset[str]:
    """The words an issue is compared by: lower-cased letters/digits, function words dropped."""
    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOPWORDS)


def issue_similarity(a: str, b: str) -> float:
    """Jaccard overlap of the two issues' word sets (0 when either has none)."""
    wa, wb = issue_words(a), issue_words(b)
    if not wa or not wb:
        return 0.0
    return len(wa & wb) / len(wa | wb)


def same_point(a: Point, b: Point, similarity: float) -> bool:
    """Same step if both name one; otherwise similar issue text."""
    if a.step is not None and b.step is not None:
        return a.step == b.step
    return issue_similarity(a.issue, b.issue) >= similarity


@dataclass(slots=True)
class MergedPoint:
    """A point of the merged critique and who stands behind it."""

    step: int | None
    issue: str
    raised_by: list[str] = field(default_factory=list)
    confirmed_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "issue": self.issue, "raised_by": list(self.raised_by),
                "confirmed_by": self.confirmed_by}


def merge_points(critiques: Sequence[tuple[str, Sequence[Point]]], *, min_agree: int = 2,
                 similarity: float = 0.5) -> list[MergedPoint]:
    """Points raised by at least ``min_agree`` different critics, in step order.

    ``critiques`` pairs each critic's name with its points, in critic order. A
    group keeps the wording of its first point; a critic repeating itself counts
    once. Kept points come sorted by step (points without a step last), ties in
    order of first appearance.
    """
    groups: list[tuple[Point, MergedPoint]] = []
    for name, points in critiques:
        for p in points:
            for rep, merged in groups:
                if same_point(rep, p, similarity):
                    if name not in merged.raised_by:
                        merged.raised_by.append(name)
                    break
            else:
                groups.append((p, MergedPoint(p.step, p.issue, [name])))
    kept = [(i, m) for i, (_, m) in enumerate(groups) if len(m.raised_by) >= min_agree]
    kept.sort(key=lambda im: (im[1].step is None, im[1].step or 0, im[0]))
    return [m for _, m in kept]


def format_merged(points: Sequence[MergedPoint], n_critics: int) -> str:
    """The merged critique as the refiner reads it."""
    if not points:
        return ("Verdict: correct\nNo problem was raised by more than one reviewer or "
                "confirmed by a check.")
    lines = [f"Verdict: incorrect ({len(points)} problem(s) confirmed, {n_critics} reviewers)"]
    for p in points:
        where = f"Step {p.step}: " if p.step is not None else ""
        who = (f"confirmed by {p.confirmed_by}" if p.confirmed_by
               else f"raised by {len(p.raised_by)} reviewers")
        lines.append(f"- {where}{p.issue} ({who})")
    return "\n".join(lines)


def format_points(v: PointsVerdict) -> str:
    """One critic's critique as text, for its judgement record."""
    lines = [v.critique] if v.critique else []
    for p in v.points:
        lines.append(f"- Step {p.step}: {p.issue}" if p.step is not None else f"- {p.issue}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the strategy


class MultiCriticConfig(StrategyConfig):
    critics: tuple[str, ...] = Field(
        ("critic", "critic_2", "critic_3"), min_length=1,
        description="role names of the critics (each with its own model and settings)")
    personas: tuple[str, ...] = Field(
        DEFAULT_PERSONAS, description="persona sentence per critic (cycled); empty: none")
    min_agree: int = Field(2, ge=1, description="critics that must raise a point to keep it")
    similarity: float = Field(0.5, ge=0.0, le=1.0,
                              description="Jaccard overlap at which two step-less issues match")
    use_verifier: bool = Field(
        False, description="a failing scoring verifier adds a confirmed point (an oracle with "
        "a reference-answer verifier)")
    max_rounds: int = Field(3, ge=0, le=50, description="refinements at most")
    patience: int | None = Field(2, ge=1, description="stop after this many refinements "
                                 "without a better score; null: never")
    stop_on_verifier: bool = Field(False, description="stop when the scoring verifier passes")
    keep_best: bool = Field(True, description="return the best-scored version, not the last")
    memory: bool = Field(False, description="the refiner sees all earlier merged critiques")

    @field_validator("critics", mode="before")
    @classmethod
    def _critics(cls, v: object) -> object:
        if isinstance(v, str):  # "critic,critic_2" from a command line
            return tuple(s.strip() for s in v.split(",") if s.strip())
        return v

    @field_validator("personas", mode="before")
    @classmethod
    def _personas(cls, v: object) -> object:
        return (v,) if isinstance(v, str) else v

    @model_validator(mode="after")
    def _enough_critics(self) -> MultiCriticConfig:
        if len(set(self.critics)) != len(self.critics):
            raise ValueError("critics must be distinct role names")
        if self.min_agree > len(self.critics) and not self.use_verifier:
            raise ValueError(f"min_agree {self.min_agree} is more than the "
                             f"{len(self.critics)} critics")
        return self


class MultiCritic(Strategy):
    name: ClassVar[str] = "multi_critic"
    Config: ClassVar[type[StrategyConfig]] = MultiCriticConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, MultiCriticConfig)
        critics = [
            ctx.roles.make(PointsCritic, name,
                           persona=cfg.personas[i % len(cfg.personas)] if cfg.personas else "")
            for i, name in enumerate(cfg.critics)
        ]
        refiner = ctx.roles.make(MemoryRefiner, "refiner")
        cands = await ctx.sample_candidates(1)
        if not cands:
            return StrategyResult(None, "no candidate: budget exhausted before generation")

        async def assess(node: NodeRecord, rnd: int) -> Assessment:
            return await self._assess(ctx, critics, node, rnd)

        settings = LoopSettings(max_rounds=cfg.max_rounds, patience=cfg.patience,
                                stop_on_verifier=cfg.stop_on_verifier, keep_best=cfg.keep_best,
                                memory=cfg.memory)
        out = await refine_loop(ctx, cands[0], assess, refiner, settings)
        return StrategyResult(out.chosen, out.note)

    async def _assess(self, ctx: TaskContext, critics: list[PointsCritic], node: NodeRecord,
                      rnd: int) -> Assessment:
        cfg = self.config
        assert isinstance(cfg, MultiCriticConfig)
        results = await asyncio.gather(
            *(c.critique(ctx.task, node.text, node_id=node.id) for c in critics),
            return_exceptions=True,
        )
        out_of_budget: BudgetExceeded | None = None
        parsed: list[tuple[str, PointsVerdict, float | None]] = []
        judged: dict[str, str] = {}  # critic name -> its judgement's id
        confirmed: list[str] = []  # a failing verifier's judgement, when it adds a point
        for name, critic, res in zip(cfg.critics, critics, results, strict=True):
            if isinstance(res, BudgetExceeded):
                out_of_budget = out_of_budget or res
                continue
            if isinstance(res, BaseException):
                raise res
            meta: dict[str, Any] = {"critic": name, "round": rnd, "call_ids": res.call_ids}
            if res.repaired:
                meta["repaired"] = True
            source = f"model:{critic.model.model_id}"
            key = f"{rnd}:{name}"
            if res.value is None:
                meta["raw"] = res.raw
                ctx.tree.judge(node, source=source, role="critic", key=key,
                               verdict="parse_failure", critique=res.error, scale=critic.scale,
                               meta=meta)
                continue
            v = res.value
            meta["points"] = [p.model_dump() for p in v.points]
            j = ctx.tree.judge(node, source=source, role="critic", key=key, score=v.score,
                               scale=critic.scale, verdict=v.verdict, critique=format_points(v),
                               meta=meta)
            parsed.append((name, v, j.normalised))
            judged[name] = j.id
        if out_of_budget is not None:
            raise out_of_budget  # the version's critiques are partial: it stays unscored
        if not parsed:
            return Assessment(None, False, None)
        merged = merge_points([(name, v.points) for name, v, _ in parsed],
                              min_agree=cfg.min_agree, similarity=cfg.similarity)
        if cfg.use_verifier and ctx.scoring_verifier is not None:
            vj = await ctx.verify_node(node)
            if vj is not None and vj.verdict == "incorrect":
                merged.append(MergedPoint(None, vj.critique or "the check failed", [],
                                          confirmed_by=vj.source))
                confirmed.append(vj.id)
        scores = [s for _, _, s in parsed if s is not None]
        score = sum(scores) / len(scores) if scores else None
        text = format_merged(merged, len(parsed))
        mj = ctx.tree.judge(node, source="strategy:multi_critic", role="merged_critique",
                            key=rnd, score=score, scale=(0.0, 1.0),
                            verdict="incorrect" if merged else "correct", critique=text,
                            meta={"round": rnd, "points": [m.to_dict() for m in merged],
                                  "critics": [name for name, _, _ in parsed]})
        # the refiner reads the merged critique, worded from the critics behind its points
        behind = [judged[name] for name, _, _ in parsed
                  if any(name in m.raised_by for m in merged)]
        return Assessment(score, not merged, text, [mj.id, *behind, *confirmed])
