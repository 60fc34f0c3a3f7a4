"""Critique, then refine (Self-Refine), with a keep-best guard and optional memory (Reflexion).

One candidate is generated; a critic judges it (critique, verdict, score); a refiner
repairs it given the critique; the repair is judged again; and so on. The loop
stops at the first of:

- the critic **accepts** (verdict "correct", and score >= ``accept_score`` if set);
- the scoring **verifier** passes the version (only with ``stop_on_verifier``: with a
  reference-answer verifier this is an oracle, so it is off by default); that
  version is returned whatever the critic scored;
- ``patience`` refinements in a row without beating the best critic score;
- ``max_rounds`` refinements;
- the **budget** ends (the best version so far is returned).

**Keep-best guard**: refinement can make answers worse, so the version returned is
the one the critic scored highest (ties to the earlier version; a version whose
critique could not be read ranks below every scored one), not the last;
``keep_best=False`` returns the last for comparison.

**Memory** (Reflexion): with ``memory=True`` the refiner also sees the critiques of
all earlier versions, oldest first (``refiner_memory_*.j2``). Reflexion's memory
holds self-reflections the model writes after a failed trial; here the critiques
play that part, which saves one call per round (a deliberate difference).

Each version is a child of the version it repairs (operator ``refine``, role
``refiner``, ``meta["round"]``, and ``meta["feedback_ids"]``: the judgements whose
words the refiner was given; with memory, ``meta["memory_ids"]`` those of the
earlier critiques); each critique is a judgement (role ``critic``) on the version
it judges. Defaults follow the literature: Self-Refine runs up to 4
iterations; ``max_rounds`` 3 refinements gives 4 versions. A critique that cannot be
parsed (after one repair request) is recorded as a parse failure and its raw text
is still handed to the refiner, which is what a person would read.

The loop itself (:func:`refine_loop`) is shared with ``multi_critic`` and ``route``,
which judge versions differently.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.models.base import ChatResponse, Message
from deliberate.roles.roles import Critic, Judge, JudgeResult, Refiner, Verdict
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tasks.task import Task
from deliberate.tree import JudgementRecord, NodeRecord
from deliberate.verifiers.base import parse_answer


@dataclass(frozen=True, slots=True)
class MemoryRefiner(Refiner):
    """A refiner that also sees the reviews of earlier attempts (Reflexion's memory).

    With an empty memory it renders the plain refiner templates, so its first
    round asks exactly what a memoryless refiner asks.
    """

    memory: tuple[str, ...] = ()

    def messages(self, task: Task, candidate: str, critique: str) -> tuple[Message, ...]:
        if not self.memory:
            return Refiner.messages(self, task, candidate, critique)
        ctx = {"task": task, "candidate": candidate, "critique": critique,
               "memory": list(self.memory)}
        return self.chat("refiner_memory", **ctx)

    async def refine_with(self, task: Task, candidate: str, critique: str,
                          memory: Sequence[str] = (), *, node_id: str | None = None,
                          sample: int = 0) -> ChatResponse:
        role = replace(self, memory=tuple(memory)) if tuple(memory) != self.memory else self
        return await Refiner.refine(role, task, candidate, critique, node_id=node_id,
                                    sample=sample)


def format_feedback(v: Verdict, scale: tuple[float, float]) -> str:
    """A critique as the refiner reads it: verdict and score first, then the words."""
    head = f"Verdict: {v.verdict} (score {v.score:g} on a scale from {scale[0]:g} to {scale[1]:g})"
    return f"{head}\n{v.critique}".strip()


def record_critique(ctx: TaskContext, node: NodeRecord, critic: Judge, res: JudgeResult, *,
                    key: object, role: str = "critic",
                    meta: dict[str, Any] | None = None) -> JudgementRecord:
    """Store a critic's verdict on ``node`` (a parse failure without a score)."""
    source = f"model:{critic.model.model_id}"
    m: dict[str, Any] = {"call_ids": res.call_ids, **(meta or {})}
    if res.repaired:
        m["repaired"] = True
    if res.verdict is None:
        m["raw"] = res.raw
        return ctx.tree.judge(node, source=source, role=role, key=key, verdict="parse_failure",
                              critique=res.error, scale=critic.scale, meta=m)
    v = res.verdict
    return ctx.tree.judge(node, source=source, role=role, key=key, score=v.score,
                          scale=critic.scale, verdict=v.verdict, critique=v.critique, meta=m)


# ---------------------------------------------------------------- the shared loop


@dataclass(slots=True)
class Assessment:
    """What a reviewer made of one version.

    ``score`` is normalised to [0, 1] (None: could not be judged) and ranks
    versions for the keep-best guard; ``feedback`` is what the refiner is shown
    (None: nothing to act on, which ends the loop); ``feedback_ids`` are the
    judgements whose words make up ``feedback``, kept on the refinement (when there
    are any) so exports can tell which critique drove it.
    """

    score: float | None
    accepted: bool
    feedback: str | None
    feedback_ids: list[str] = field(default_factory=list)


Assess = Callable[[NodeRecord, int], Awaitable[Assessment]]
"""Judge a version at a round (recording its judgements) and say what to do next."""


@dataclass(frozen=True, slots=True)
class LoopSettings:
    max_rounds: int
    patience: int | None = None
    stop_on_verifier: bool = False
    keep_best: bool = True
    memory: bool = False


@dataclass(slots=True)
class LoopOutcome:
    versions: list[NodeRecord]
    scores: list[float | None]
    chosen: NodeRecord
    stop: str
    notes: list[str] = field(default_factory=list)

    @property
    def note(self) -> str:
        return "; ".join([f"stopped: {self.stop}", *self.notes])


def pick_best(scores: Sequence[float | None]) -> int:
    """Index of the highest score; ties to the earliest; unscored below scored; 0 if none."""
    best: int | None = None
    for i, s in enumerate(scores):
        if s is None:
            continue
        if best is None or s > (scores[best] or 0.0):
            best = i
    return best if best is not None else 0


async def refine_loop(ctx: TaskContext, start: NodeRecord, assess: Assess,
                      refiner: MemoryRefiner, settings: LoopSettings, *,
                      first: Assessment | None = None) -> LoopOutcome:
    """Assess, stop or refine, repeat; returns every version and the chosen one.

    ``first`` is the assessment of ``start`` if the caller already made it.
    """
    versions = [start]
    scores: list[float | None] = []
    feedbacks: list[str] = []
    feedback_ids: list[list[str]] = []
    stale = 0
    best: float | None = None
    stop = "max_rounds"
    notes: list[str] = []
    _mark_round(ctx, start, 0)
    current = start
    rnd = 0
    while True:
        try:
            a = first if (rnd == 0 and first is not None) else await assess(current, rnd)
        except BudgetExceeded:
            scores.append(None)
            stop = "budget"
            break
        scores.append(a.score)
        ids = list(a.feedback_ids)  # the judgements behind the feedback
        if rnd > 0:
            if a.score is not None and (best is None or a.score > best):
                stale = 0
            else:
                stale += 1
        if a.score is not None and (best is None or a.score > best):
            best = a.score
        if a.accepted:
            stop = "accepted"
            break
        if settings.stop_on_verifier and ctx.scoring_verifier is not None:
            j = await ctx.verify_node(current)
            if j is not None and j.verdict == "correct":
                stop = "verifier"
                break
        if rnd >= settings.max_rounds:
            stop = "max_rounds"
            break
        if settings.patience is not None and stale >= settings.patience:
            stop = "patience"
            break
        if a.feedback is None:
            stop = "no_feedback"
            break
        memory = list(feedbacks) if settings.memory else []
        memory_ids = [i for past in feedback_ids for i in past] if settings.memory else []
        try:
            resp = await refiner.refine_with(ctx.task, current.text, a.feedback, memory,
                                             node_id=current.id, sample=rnd)
        except BudgetExceeded:
            stop = "budget"
            break
        feedbacks.append(a.feedback)
        feedback_ids.append(ids)
        if not resp.completions:
            stop = "no_feedback"
            notes.append("the refiner returned nothing")
            break
        c = resp.completions[0]
        rnd += 1
        meta: dict[str, Any] = {"round": rnd}
        if c.finish_reason not in (None, "stop"):
            meta["finish_reason"] = c.finish_reason
        if ids:
            meta["feedback_ids"] = ids
        if settings.memory and memory:
            meta["memory"] = len(memory)
            if memory_ids:
                meta["memory_ids"] = memory_ids
        current = ctx.tree.add(
            current, role="refiner", operator="refine", key=rnd, text=c.text,
            answer=parse_answer(ctx.task, c.text),
            call_id=resp.call_ids[0] if resp.call_ids else None, meta=meta,
        )
        versions.append(current)
    while len(scores) < len(versions):  # a version the budget left unjudged
        scores.append(None)
    if stop == "verifier":
        chosen_at = len(versions) - 1  # the verifier's pass outranks any critic score
    else:
        chosen_at = pick_best(scores) if settings.keep_best else len(versions) - 1
    chosen = versions[chosen_at]
    for v, s in zip(versions, scores, strict=True):
        v.value = s
        v.meta["chosen"] = v is chosen
        ctx.tree.update(v)
    if settings.keep_best and chosen is not versions[-1]:
        notes.append(f"kept version {chosen_at} of {len(versions) - 1}")
    return LoopOutcome(versions, scores, chosen, stop, notes)


def _mark_round(ctx: TaskContext, node: NodeRecord, rnd: int) -> None:
    node.meta["round"] = rnd
    ctx.tree.update(node)


# ---------------------------------------------------------------- the strategy


class RefineConfig(StrategyConfig):
    max_rounds: int = Field(3, ge=0, le=50,
                            description="refinements at most (versions after the first)")
    patience: int | None = Field(
        2, ge=1, description="stop after this many refinements in a row that do not beat the "
        "best critic score; null: never")
    accept_score: float | None = Field(
        None, description="the critic accepts only with verdict correct and a score at least "
        "this (on the critic's scale); null: the verdict alone")
    stop_on_verifier: bool = Field(
        False, description="also stop when the scoring verifier passes a version (an oracle "
        "when the verifier checks the reference answer)")
    keep_best: bool = Field(True, description="return the best-scored version, not the last")
    memory: bool = Field(False, description="the refiner sees all earlier critiques (Reflexion)")


class Refine(Strategy):
    name: ClassVar[str] = "refine"
    Config: ClassVar[type[StrategyConfig]] = RefineConfig

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, RefineConfig)
        critic = ctx.roles.make(Critic, "critic")
        refiner = ctx.roles.make(MemoryRefiner, "refiner")
        cands = await ctx.sample_candidates(1)
        if not cands:
            return StrategyResult(None, "no candidate: budget exhausted before generation")

        async def assess(node: NodeRecord, rnd: int) -> Assessment:
            res = await critic.judge(ctx.task, node.text, node_id=node.id)
            j = record_critique(ctx, node, critic, res, key=rnd, meta={"round": rnd})
            if res.verdict is None:
                return Assessment(None, False, res.raw.strip() or None, [j.id])
            v = res.verdict
            accepted = v.verdict == "correct" and (
                cfg.accept_score is None or v.score >= cfg.accept_score)
            return Assessment(j.normalised, accepted, format_feedback(v, critic.scale), [j.id])

        settings = LoopSettings(max_rounds=cfg.max_rounds, patience=cfg.patience,
                                stop_on_verifier=cfg.stop_on_verifier, keep_best=cfg.keep_best,
                                memory=cfg.memory)
        out = await refine_loop(ctx, cands[0], assess, refiner, settings)
        return StrategyResult(out.chosen, out.note)
