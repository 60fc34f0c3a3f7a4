"""Evidence refinement (AlignRAG's critique-driven alignment): answer from retrieved
passages, check every step against them, rewrite what they do not support, repeat.

The loop, per task:

1. the generator answers with the passages in its prompt (``evidence_generator_*.j2``),
   one step per line, each step citing its passages;
2. the evidence critic checks **each** step against the passages (``supported``,
   ``unsupported`` or ``contradicted``, with the passage it rests on) and gives a
   verdict and a score;
3. if no step is flagged, or the critic judges the answer correct, stop; otherwise
   the evidence refiner rewrites the reasoning given the flagged steps, and the new
   version goes back to step 2 — for at most ``rounds`` refinements. Each round asks
   the refiner for a new sample (sample index = round), so a round that fails to
   change anything is not simply repeated; the critic asks with sample index 0, so
   re-checking an unchanged reasoning is answered by the response cache.

The result is the version with the highest critic score (keep-best guard; ties go to
the earlier version, so a refinement must score strictly higher to replace what it
revises), or the last version with ``keep_best=false``. A version whose critique
could not be read, even after one repair request, ranks below every scored one and
ends the loop, since there is nothing to refine with.

Passages come from ``Task.metadata["passages"]`` (a list of ``{"id", "text"}``), or,
with ``retriever="python:MODULE:FUNCTION"``, from the user's callable ``(task) ->
list of {"id", "text"}`` (sync or async; a sync one runs in a worker thread). The
retriever replaces the task's own passages; it is loaded when the strategy is built,
so a bad path is one configuration error before any task runs; if it raises or
returns a malformed list for a task, that task ends without an answer and its note
says why. Retrieved passages are stored on the root node (``meta["passages"]``); the
retriever is not journalled, so a resumed run calls it again.

Tree: the first answer is a ``generate`` child of the root, each refinement a
``refine`` child of the version it revises (``meta["round"]``, and
``meta["feedback_ids"]``: the critique it was given); each critique is a
``critic`` judgement on the version it checks, with the per-step findings in
``meta["steps"]`` and the first flagged step in ``first_wrong_step`` (-1 when none).

Where this differs from AlignRAG: the paper trains a dedicated critic model
(critique-driven alignment); here the critic is any chat model prompted to check
each step, and the stopping rule and the keep-best guard are ours (the refine loop's
rules, METHODS.md §3).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import Field, field_validator

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded, ConfigError, UsageError
from deliberate.roles.evidence import (
    EvidenceCritic,
    EvidenceGenerator,
    EvidenceRefiner,
    EvidenceReport,
    Passage,
    coerce_passages,
    critique_text,
    passages_of,
)
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tasks.task import Task
from deliberate.tree import JudgementRecord, NodeRecord
from deliberate.verifiers.base import parse_answer

log = logging.getLogger(__name__)

Retriever = Callable[[Task], Any]


class EvidenceRefineConfig(StrategyConfig):
    rounds: int = Field(3, ge=0, le=50,
                        description="refinements at most (0: answer and critique once)")
    retriever: str | None = Field(
        None, description="python:MODULE:FUNCTION giving a task's passages; "
                          "default: the task's metadata['passages']")
    keep_best: bool = Field(True, description="return the best-scored version (false: the last)")
    scale: tuple[float, float] = Field((1.0, 10.0), description="the critic's score scale")

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] >= v[1]:
            raise ValueError("the scale's low end must be below its high end")
        return v


def load_retriever(spec: str) -> Retriever:
    """The callable named by ``python:MODULE:FUNCTION``; a bad spec is a ConfigError."""
    prefix, _, rest = spec.strip().partition(":")
    module, _, attr = rest.partition(":")
    if prefix != "python" or not module or not attr:
        raise ConfigError(f"retriever {spec!r}: expected python:MODULE:FUNCTION, "
                          "e.g. python:mypackage.search:passages_for")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"retriever {spec!r}: cannot import module {module!r} ({exc})") from exc
    except Exception as exc:
        raise ConfigError(f"retriever {spec!r}: importing {module!r} failed: "
                          f"{type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"retriever {spec!r}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"retriever {spec!r}: {attr!r} is not callable")
    fn: Retriever = obj
    return fn


class EvidenceRefine(Strategy):
    name: ClassVar[str] = "evidence_refine"
    Config: ClassVar[type[StrategyConfig]] = EvidenceRefineConfig

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)
        assert isinstance(config, EvidenceRefineConfig)
        self._retriever = load_retriever(config.retriever) if config.retriever else None

    async def passages(self, task: Task) -> tuple[Passage, ...]:
        """The task's passages, from the retriever when one is set; UsageError on failure."""
        fn = self._retriever
        if fn is None:
            return passages_of(task)
        cfg = self.config
        assert isinstance(cfg, EvidenceRefineConfig)
        where = f"retriever {cfg.retriever} on task {task.id}"
        try:
            if inspect.iscoroutinefunction(fn):
                out = await fn(task)
            else:
                out = await asyncio.to_thread(fn, task)
                if inspect.isawaitable(out):
                    out = await out
        except Exception as exc:
            raise UsageError(f"{where} failed: {type(exc).__name__}: {exc}") from exc
        return coerce_passages(out, where)

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, EvidenceRefineConfig)
        task, tree = ctx.task, ctx.tree
        try:
            passages = await self.passages(task)
        except UsageError as exc:
            log.warning("%s", exc)
            return StrategyResult(None, str(exc))
        tree.root.meta["passages"] = [p.to_dict() for p in passages]
        if cfg.retriever:
            tree.root.meta["retriever"] = cfg.retriever
        tree.update(tree.root)

        generator = ctx.roles.make(EvidenceGenerator, "generator", passages=passages)
        critic = ctx.roles.make(EvidenceCritic, "critic", scale=cfg.scale, passages=passages)
        refiner = ctx.roles.make(EvidenceRefiner, "refiner", passages=passages)

        try:
            resp = await generator.generate(task, 1, node_id=tree.root.id)
        except BudgetExceeded:
            return StrategyResult(None, "no candidate: budget exhausted before generation")
        if not resp.completions:
            return StrategyResult(None, "no candidate: the generator returned nothing")
        c = resp.completions[0]
        node = tree.add(tree.root, role="generator", operator="generate", key=c.sample_index,
                        text=c.text, answer=parse_answer(task, c.text),
                        call_id=resp.call_ids[0] if resp.call_ids else None,
                        sample_index=c.sample_index, meta={"round": 0})
        versions: list[tuple[NodeRecord, JudgementRecord | None]] = []
        stop = ""
        for r in range(cfg.rounds + 1):
            try:
                judgement, report = await self._critique(ctx, critic, node)
            except BudgetExceeded:
                versions.append((node, None))
                stop = "budget exhausted before the critique"
                break
            versions.append((node, judgement))
            if report is None:
                stop = "the critic's reply could not be read"
                break
            if report.accepted:
                stop = f"accepted after {r} refinement{'s' if r != 1 else ''}"
                break
            if r == cfg.rounds:
                stop = (f"not accepted after {r} refinement{'s' if r != 1 else ''}" if r
                        else "not accepted (rounds=0: no refinement)")
                break
            try:
                resp = await refiner.refine(task, node.text, report, node_id=node.id, sample=r)
            except BudgetExceeded:
                stop = "budget exhausted before the refinement"
                break
            if not resp.completions:
                stop = "the refiner returned nothing"
                break
            c = resp.completions[0]
            node = tree.add(node, role="refiner", operator="refine", key=r + 1, text=c.text,
                            answer=parse_answer(task, c.text),
                            call_id=resp.call_ids[0] if resp.call_ids else None,
                            sample_index=c.sample_index,
                            meta={"round": r + 1, "feedback_ids": [judgement.id]})

        chosen = choose_version(versions, keep_best=cfg.keep_best)
        for v, j in versions:
            v.value = j.normalised if j is not None else None
            v.meta["chosen"] = v is chosen
            tree.update(v)
        return StrategyResult(chosen, f"{stop}; chose round {chosen.meta.get('round', 0)}")

    @staticmethod
    async def _critique(ctx: TaskContext, critic: EvidenceCritic,
                        node: NodeRecord) -> tuple[JudgementRecord, EvidenceReport | None]:
        """Check ``node`` and record the critique as a judgement (raises BudgetExceeded)."""
        res = await critic.check(ctx.task, node.text, node_id=node.id)
        source = f"model:{critic.model.model_id}"
        meta: dict[str, Any] = {"call_ids": res.call_ids}
        if res.repaired:
            meta["repaired"] = True
        if res.report is None:
            meta["raw"] = res.raw
            j = ctx.tree.judge(node, source=source, role="critic", verdict="parse_failure",
                               critique=res.error, scale=critic.scale, meta=meta)
            return j, None
        report = res.report
        meta["steps"] = report.statuses()
        meta["flagged"] = [s.step for s in report.flagged]
        first = report.first_flagged
        j = ctx.tree.judge(node, source=source, role="critic", score=report.score,
                           scale=critic.scale, verdict=report.verdict,
                           critique=critique_text(report),
                           first_wrong_step=first if first is not None else -1, meta=meta)
        return j, report


def choose_version(versions: list[tuple[NodeRecord, JudgementRecord | None]], *,
                   keep_best: bool = True) -> NodeRecord:
    """The highest-scored version (ties to the earlier), else the last one.

    Versions without a score (a parse failure, or no critique before the budget
    ran out) rank below every scored one; with no score at all, the last is kept.
    """
    if not versions:
        raise ValueError("no versions to choose from")
    if keep_best:
        best: tuple[float, int] | None = None
        chosen: NodeRecord | None = None
        for i, (node, j) in enumerate(versions):
            s = j.normalised if j is not None else None
            if s is not None and (best is None or (s, -i) > best):
                best, chosen = (s, -i), node
        if chosen is not None:
            return chosen
    return versions[-1][0]
