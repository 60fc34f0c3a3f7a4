"""Critic evaluation: a critic measured against ground truth, through the role code
that strategies use.

A critic is only as useful as it is right, so each form here asks the same role
class a strategy would (same templates, same parser, same one repair request) over
labelled data and scores the replies. The model goes through the same middleware as
a run's (concurrency limit, retry with backoff, hard budget), so an evaluation on
``sim`` and one on a real endpoint differ only in the model string.

Forms:

- **ProcessBench** (first wrong step): :func:`load_processbench`,
  :func:`evaluate_processbench`. Each item is a problem, its solution's ``steps`` and
  a 0-based ``label`` (index of the earliest wrong step, -1 if none). The
  :class:`~deliberate.roles.step_critic.StepCritic` names a 1-based step (or -1),
  converted with :func:`~deliberate.roles.step_critic.to_processbench_label`.
  Scored as ProcessBench does: accuracy on erroneous items (the exact first wrong
  step), accuracy on correct items (says -1), and their harmonic mean (F1).
- **Verdicts** on labelled candidates: :func:`load_labelled_candidates`,
  :func:`evaluate_verdicts`. The critic (or judge) calls each candidate correct or
  incorrect; scored by sensitivity, specificity and accuracy, with intervals that
  resample problems (a problem's candidates stay together).
- **Pairwise** against gold preferences (LLMBar): :func:`load_pairs`,
  :func:`evaluate_pairwise`. ``PairwiseJudge.compare`` on every pair, both orders; scored
  without the swap (each order alone), with it (both must agree), and by position
  consistency.
- **Closed loop** (RealCritic): :func:`load_realcritic`, :func:`evaluate_realcritic`.
  One round of ``refine``'s critic then refiner on a recorded solution, graded before
  and after: the share of wrong answers fixed and of right answers broken.

Each form builds a suite from its items (``processbench_suite``, ``verdict_suite``,
``pairwise_suite``, ``realcritic_suite``): that is how ground truth reaches ``sim``, as
it reaches it for any task, while the prompt shows only what a real model would see.

What counts: a reply that cannot be read even after the repair request, and an item
whose model call failed (after retries), count as **wrong** and are reported apart
(in the closed loop a failed item keeps its answer: the loop could not change it).
Items left unasked because a budget ran out are **not** counted (the metrics cover
the items asked) and are reported as skipped; items are asked in a seeded shuffled
order, so those asked are a random subset, not the head of a file sorted by label.
An unreachable endpoint, a refused key or an unknown model stops the evaluation with
that error.

Intervals are percentile bootstraps (``evals.stats``). ProcessBench: each accuracy
with :func:`~deliberate.evals.stats.mean_ci` over its own items; F1 by resampling the
erroneous and the correct items (each group keeps its size, as the benchmark fixes
its composition) and recomputing both accuracies. Verdicts: problems resampled.
Pairwise and closed loop: items resampled within each figure's group.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from deliberate.config import BudgetConfig, RetryConfig, RoleConfig, RunConfig
from deliberate.errors import (
    BudgetExceeded,
    DataError,
    DeliberateError,
    ModelAuthError,
    ModelConnectionError,
    ModelError,
    ModelHTTPError,
    UsageError,
)
from deliberate.evals.stats import Estimate, _percentile, mean_ci, paired_difference
from deliberate.models.base import ChatModel
from deliberate.models.budget import BudgetedModel, Ledger
from deliberate.models.middleware import ConcurrencyLimitModel, RetryModel
from deliberate.models.registry import build_model, default_model_string
from deliberate.models.sim.handlers.pairwise import PAIR_LABELS
from deliberate.models.sim.handlers.step_critic import STEP_LABELS
from deliberate.roles.pairwise import PairwiseJudge
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Critic, Judge, Refiner
from deliberate.roles.step_critic import (
    NO_ERROR,
    StepCritic,
    from_processbench_label,
    to_processbench_label,
)
from deliberate.strategies.refine import format_feedback
from deliberate.tasks.task import Suite, Task, TaskKind
from deliberate.tree import make_id
from deliberate.verifiers.answer import answers_match, extract_answer, normalise_number
from deliberate.verifiers.base import grading_verifier, parse_answer

__all__ = [
    "CriticEvalConfig",
    "EvalUsage",
    "LabelledCandidate",
    "LoopMetrics",
    "LoopRecord",
    "LoopResult",
    "Outcome",
    "PairItem",
    "PairRecord",
    "PairwiseMetrics",
    "PairwiseResult",
    "ProcessBenchItem",
    "ProcessBenchMetrics",
    "ProcessBenchRecord",
    "ProcessBenchResult",
    "RealCriticItem",
    "VerdictMetrics",
    "VerdictRecord",
    "VerdictResult",
    "ask_in_seeded_order",
    "evaluate_pairwise",
    "evaluate_processbench",
    "evaluate_realcritic",
    "evaluate_verdicts",
    "harmonic_mean",
    "load_labelled_candidates",
    "load_pairs",
    "load_processbench",
    "load_realcritic",
    "loop_metrics",
    "pairwise_metrics",
    "pairwise_suite",
    "processbench_metrics",
    "processbench_suite",
    "realcritic_suite",
    "run_items",
    "subsample",
    "verdict_metrics",
    "verdict_suite",
]

T = TypeVar("T")
R = TypeVar("R")


# ---------------------------------------------------------------- settings and the model


class CriticEvalConfig(BaseModel):
    """How a critic evaluation runs: the model, its role settings, limits and intervals."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str | None = Field(None, description="model string; None: sim unless an endpoint is set")
    role: RoleConfig | None = Field(
        None, description="sampling settings of the critic role; None: a run's defaults for it")
    refiner: RoleConfig | None = Field(
        None, description="sampling settings of the refiner (closed-loop form); None: a run's")
    prompts_dir: str | None = Field(
        None, description="directory of Jinja2 templates that replace built-in ones by name")
    concurrency: int = Field(8, ge=1, le=4096, description="items (and calls) in flight at once")
    retry: RetryConfig = RetryConfig()
    budget: BudgetConfig = BudgetConfig()
    seed: int = Field(0, description="seed of the role's requests and of the bootstrap")
    resamples: int = Field(2000, ge=1, description="bootstrap resamples per interval")
    level: float = Field(0.95, gt=0, lt=1, description="confidence level of the intervals")

    def role_config(self, name: str) -> RoleConfig:
        """The role's settings: explicit, else what a run gives a role of that name."""
        return self.role if self.role is not None else RunConfig().role(name)

    def refiner_config(self) -> RoleConfig:
        """The refiner's settings (closed-loop form): explicit, else a run's."""
        return self.refiner if self.refiner is not None else RunConfig().role("refiner")

    def model_string(self) -> str:
        return self.model or default_model_string()


@dataclass(frozen=True, slots=True)
class EvalUsage:
    """What an evaluation consumed."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost: float = 0.0
    wall_s: float = 0.0

    @classmethod
    def of(cls, ledger: Ledger, wall_s: float) -> EvalUsage:
        return cls(ledger.prompt_tokens, ledger.completion_tokens, ledger.calls, ledger.cost,
                   wall_s)


RoleT = TypeVar("RoleT")


class _Session:
    """What every form sets up alike: the items' suite, the model wrapped like a run's
    (concurrency limit, retry, then budget and accounting per role), one ledger.

    The model is ``config.model`` built with the suite (so ``sim`` knows the items'
    labels), or the caller's ``model``, which the session does not close.
    """

    def __init__(self, config: CriticEvalConfig, suite: Suite, model: ChatModel | None) -> None:
        self.config = config
        self.task_of = {t.prompt: t for t in suite}
        self._owned = model is None
        self.backend = model if model is not None else build_model(config.model_string(),
                                                                    suite)
        self.ledger = Ledger(limits=config.budget.limits())
        self._limited: ChatModel = RetryModel(ConcurrencyLimitModel(self.backend,
                                                                    config.concurrency),
                                              config.retry.policy(), seed=config.seed)
        self._prompts = Prompts(config.prompts_dir)
        self._started = time.monotonic()

    def role(self, cls: Callable[[ChatModel, RoleConfig, Prompts, int], RoleT], name: str,
             role_cfg: RoleConfig) -> RoleT:
        """A role as a run builds it, on this session's model and ledger."""
        model = BudgetedModel(self._limited, self.ledger, default_max_tokens=role_cfg.max_tokens)
        return cls(model, role_cfg, self._prompts, _role_seed(self.config, name))

    async def ask(self, items: Sequence[T], one: Callable[[T], Awaitable[R]],
                  progress: Callable[[int, int], None] | None) -> list[Outcome[R]]:
        """:func:`ask_in_seeded_order`, closing a model the session built."""
        self._started = time.monotonic()
        try:
            return await ask_in_seeded_order(items, one, self.config, progress)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.backend.aclose()

    def usage(self) -> EvalUsage:
        return EvalUsage.of(self.ledger, time.monotonic() - self._started)


def _is_fatal(exc: DeliberateError) -> bool:
    """Errors no later item can escape: fix the endpoint, key, model name or config."""
    if isinstance(exc, ModelHTTPError):
        return exc.status == 404  # wrong path or model name: every call would fail alike
    return isinstance(exc, (ModelAuthError, ModelConnectionError, UsageError))


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """One item's result: a value, a model error for this item only, or not asked."""

    value: R | None = None
    error: str | None = None
    skipped: bool = False


async def run_items(
    items: Sequence[T],
    one: Callable[[T], Awaitable[R]],
    *,
    concurrency: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome[R]]:
    """``one(item)`` for every item, ``concurrency`` at a time, in any order.

    A :class:`BudgetExceeded` stops asking new items (those left are ``skipped``);
    a model error fails only its item, except those :func:`_is_fatal` names, which
    stop everything and are raised. ``progress(done, total)`` follows each item.
    """
    outcomes: list[Outcome[R]] = [Outcome(skipped=True) for _ in items]
    total = len(items)
    next_i = done = 0
    stop = False

    async def worker() -> None:
        nonlocal next_i, done, stop
        while not stop and next_i < total:
            i = next_i
            next_i += 1
            try:
                outcomes[i] = Outcome(value=await one(items[i]))
            except BudgetExceeded:
                stop = True
                continue
            except ModelError as exc:
                if _is_fatal(exc):
                    raise
                outcomes[i] = Outcome(error=f"{type(exc).__name__}: {exc}")
            done += 1
            if progress is not None:
                progress(done, total)

    fatal: DeliberateError | None = None
    try:
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(concurrency, total)):
                tg.create_task(worker())
    except* DeliberateError as group:
        first = group.exceptions[0]
        assert isinstance(first, DeliberateError)
        fatal = first
    if fatal is not None:
        raise fatal
    return outcomes


async def ask_in_seeded_order(
    items: Sequence[T],
    one: Callable[[T], Awaitable[R]],
    config: CriticEvalConfig,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome[R]]:
    """:func:`run_items` over ``items`` in a seeded shuffled order, outcomes in file order.

    Shuffled so that a budget that runs out leaves a random subset asked rather than
    the head of a file sorted by label.
    """
    order = list(range(len(items)))
    random.Random(make_id(config.seed, "order")).shuffle(order)
    shuffled = await run_items([items[i] for i in order], one,
                               concurrency=config.concurrency, progress=progress)
    outcomes: list[Outcome[R]] = [Outcome(skipped=True)] * len(items)
    for i, o in zip(order, shuffled, strict=True):
        outcomes[i] = o
    return outcomes


class _Recorded(Protocol):
    @property
    def status(self) -> str: ...


M = TypeVar("M")
Rec = TypeVar("Rec", bound=_Recorded)


@dataclass(frozen=True, slots=True)
class FormResult(Generic[M, Rec]):
    """What every form returns: its scores, a record per item (file order), what it
    consumed, the config, and the budget that stopped it early if one did."""

    model: str
    metrics: M
    records: tuple[Rec, ...]
    usage: EvalUsage
    config: CriticEvalConfig
    limited_by: str | None = None

    FORM: ClassVar[str] = ""

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    def as_dict(self) -> dict[str, Any]:
        return _result_dict(self, self.FORM, **self._extra())

    def _extra(self) -> dict[str, Any]:
        return {}


# ---------------------------------------------------------------- ProcessBench: data


@dataclass(frozen=True, slots=True)
class ProcessBenchItem:
    """One labelled solution. ``label`` is ProcessBench's: 0-based, -1 for no error."""

    id: str
    problem: str
    steps: tuple[str, ...]
    label: int
    generator: str = ""
    row: int = 0

    @property
    def erroneous(self) -> bool:
        return self.label != NO_ERROR

    @property
    def first_wrong_step(self) -> int:
        """The label as the step critic numbers steps: 1-based, -1 for none."""
        return from_processbench_label(self.label)


def _read_rows(path: Path) -> tuple[list[Any], str]:
    """The rows of a JSON array or JSON Lines file (gzipped or not), and what a row is called."""
    if not path.is_file():
        raise DataError(f"cannot read {path}: no such file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable gzip file: {exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text: {exc}") from exc
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: not valid JSON: {exc}") from exc
        return rows, "item"
    out: list[Any] = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            out.append(None)  # keeps line numbers; blank lines are skipped below
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {n}: not valid JSON: {exc.msg}") from exc
    return out, "line"


def _item(row: Any, n: int) -> ProcessBenchItem:
    """One row checked; raises ValueError saying what is wrong with it."""
    if not isinstance(row, Mapping):
        raise ValueError("expected a JSON object with problem, steps and label")
    missing = [k for k in ("problem", "steps", "label") if k not in row]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(k) for k in missing)}")
    problem, steps, label = row["problem"], row["steps"], row["label"]
    if not isinstance(problem, str) or not problem.strip():
        raise ValueError("'problem' must be a non-empty string")
    if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
        raise ValueError("'steps' must be a non-empty list of strings")
    if not all(s.strip() for s in steps):
        raise ValueError("'steps' holds an empty step")
    if isinstance(label, bool) or not isinstance(label, int):
        raise ValueError(f"'label' must be an integer, got {label!r}")
    if not (label == NO_ERROR or 0 <= label < len(steps)):
        raise ValueError(f"'label' {label} is not -1 or a 0-based index into its "
                         f"{len(steps)} steps")
    item_id = row.get("id", f"row-{n}")
    generator = row.get("generator", "")
    return ProcessBenchItem(id=str(item_id), problem=problem, steps=tuple(steps), label=label,
                            generator=str(generator or ""), row=n)


def load_processbench(path: str | Path, *, limit: int | None = None) -> list[ProcessBenchItem]:
    """ProcessBench items from a JSON array or JSON Lines file, optionally gzipped.

    Fields per item: ``problem``, ``steps`` (list of strings), ``label`` (0-based index
    of the earliest wrong step, -1 if none); ``id`` and ``generator`` are optional.
    Every row is checked: a malformed one stops the load with a :class:`DataError`
    naming its row (1-based) and how many others are malformed; none is dropped.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    p = Path(path)
    rows, unit = _read_rows(p)
    if not isinstance(rows, list):
        raise DataError(f"{p}: expected a JSON array of items or one JSON object per line")
    items: list[ProcessBenchItem] = []
    problems: list[str] = []
    first_row: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        if row is None and unit == "line":
            continue
        try:
            item = _item(row, n)
            if item.id in first_row:
                raise ValueError(f"id {item.id!r} repeats {unit} {first_row[item.id]}")
        except ValueError as exc:
            problems.append(f"{unit} {n}: {exc}")
            continue
        first_row[item.id] = n
        items.append(item)
    if problems:
        more = f" (and {len(problems) - 1} more malformed)" if len(problems) > 1 else ""
        raise DataError(f"{p}: {problems[0]}{more}")
    if not items:
        raise DataError(f"{p}: no items")
    return items[:limit] if limit is not None else items


def subsample(items: Sequence[T], n: int, *, seed: int = 0) -> list[T]:
    """A seeded random ``n`` of ``items`` (all if fewer), kept in their order.

    For a quick mixed subset of a file sorted by label, where the first ``n`` would
    all be alike.
    """
    if n < 1:
        raise UsageError(f"a sample needs at least 1 item, got {n}")
    if n >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def processbench_suite(items: Sequence[ProcessBenchItem], name: str = "processbench") -> Suite:
    """One math task per distinct problem, carrying its labelled solutions.

    The labels ride in ``metadata[STEP_LABELS]`` (1-based, -1 for none): that is how
    ground truth reaches a model that knows its tasks (``sim``); the critic's prompt
    shows only the problem and the steps. A task's id is its first item's id.
    """
    groups: dict[str, list[ProcessBenchItem]] = {}
    for item in items:
        groups.setdefault(item.problem, []).append(item)
    tasks = []
    for problem, group in groups.items():
        labels = [{"steps": list(it.steps), "first_wrong_step": it.first_wrong_step}
                  for it in group]
        tasks.append(Task(id=group[0].id, prompt=problem, kind="math",
                          metadata={STEP_LABELS: labels, "items": [it.id for it in group]}))
    return Suite(name, tuple(tasks), "ProcessBench items: problems with labelled solutions")


# ---------------------------------------------------------------- ProcessBench: metrics


Status = Literal["ok", "unreadable", "failed", "skipped"]


@dataclass(frozen=True, slots=True)
class ProcessBenchRecord:
    """What the critic said about one item. ``label`` and ``predicted`` are 0-based
    (ProcessBench's form), -1 for no wrong step; ``predicted`` is None without an answer."""

    id: str
    generator: str
    n_steps: int
    label: int
    predicted: int | None
    status: Status
    reason: str = ""
    raw: str = ""
    error: str | None = None
    repaired: bool = False

    @property
    def hit(self) -> bool:
        """Counted right: the exact first wrong step, or -1 on a correct solution."""
        return self.status == "ok" and self.predicted == self.label

    @property
    def outcome(self) -> str:
        """exact / early / late / missed on erroneous items, clean / flagged on correct
        ones, unanswered (unreadable or failed) or skipped."""
        return _outcome(self.label, self.predicted) if self.status != "skipped" else "skipped"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "generator": self.generator, "n_steps": self.n_steps,
                "label": self.label, "predicted": self.predicted, "status": self.status,
                "outcome": self.outcome, "hit": self.hit, "reason": self.reason,
                "raw": self.raw, "error": self.error, "repaired": self.repaired}


def _outcome(label: int, predicted: int | None) -> str:
    if predicted is None:
        return "unanswered"
    if label == NO_ERROR:
        return "clean" if predicted == NO_ERROR else "flagged"
    if predicted == NO_ERROR:
        return "missed"
    if predicted == label:
        return "exact"
    return "early" if predicted < label else "late"


ERRONEOUS_OUTCOMES = ("exact", "early", "late", "missed", "unanswered")
CORRECT_OUTCOMES = ("clean", "flagged", "unanswered")


@dataclass(frozen=True, slots=True)
class ProcessBenchMetrics:
    """ProcessBench's scores with bootstrap intervals, and what the critic said.

    An accuracy is None when its group is empty; F1 then too.
    """

    erroneous_accuracy: Estimate | None
    correct_accuracy: Estimate | None
    f1: Estimate | None
    n_erroneous: int
    n_correct: int
    erroneous_outcomes: dict[str, int] = field(default_factory=dict)
    correct_outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.n_erroneous + self.n_correct

    def as_dict(self) -> dict[str, Any]:
        def est(e: Estimate | None) -> dict[str, float | int] | None:
            return None if e is None else e.as_dict()

        return {"erroneous_accuracy": est(self.erroneous_accuracy),
                "correct_accuracy": est(self.correct_accuracy), "f1": est(self.f1),
                "n_erroneous": self.n_erroneous, "n_correct": self.n_correct,
                "erroneous_outcomes": dict(self.erroneous_outcomes),
                "correct_outcomes": dict(self.correct_outcomes)}


def harmonic_mean(a: float, b: float) -> float:
    """ProcessBench's F1 of the two accuracies (0 when both are 0)."""
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _f1_ci(err: Sequence[float], cor: Sequence[float], *, resamples: int, level: float,
           seed: int) -> Estimate:
    """F1 with a percentile interval, resampling each group within itself."""
    point = harmonic_mean(sum(err) / len(err), sum(cor) / len(cor))
    n = len(err) + len(cor)
    if n <= 2:
        return Estimate(point, point, point, n, level)
    rng = random.Random(seed)
    draws = []
    for _ in range(resamples):
        a = sum(err[rng.randrange(len(err))] for _ in err) / len(err)
        b = sum(cor[rng.randrange(len(cor))] for _ in cor) / len(cor)
        draws.append(harmonic_mean(a, b))
    draws.sort()
    alpha = (1 - level) / 2
    return Estimate(point, _percentile(draws, alpha), _percentile(draws, 1 - alpha), n, level)


def processbench_metrics(labels: Sequence[int], predicted: Sequence[int | None], *,
                         resamples: int = 2000, level: float = 0.95,
                         seed: int = 0) -> ProcessBenchMetrics:
    """ProcessBench's scores of ``predicted`` against ``labels`` (both 0-based, -1 none).

    A None prediction (no readable answer) counts as wrong.
    """
    if len(labels) != len(predicted):
        raise ValueError(f"{len(labels)} labels but {len(predicted)} predictions")
    err = [float(p == y) for y, p in zip(labels, predicted, strict=True) if y != NO_ERROR]
    cor = [float(p == y) for y, p in zip(labels, predicted, strict=True) if y == NO_ERROR]
    outcomes = [_outcome(y, p) for y, p in zip(labels, predicted, strict=True)]
    err_out = {k: 0 for k in ERRONEOUS_OUTCOMES}
    cor_out = {k: 0 for k in CORRECT_OUTCOMES}
    for y, o in zip(labels, outcomes, strict=True):
        (cor_out if y == NO_ERROR else err_out)[o] += 1
    acc_err = mean_ci(err, resamples=resamples, level=level, seed=seed) if err else None
    acc_cor = mean_ci(cor, resamples=resamples, level=level, seed=seed) if cor else None
    f1 = _f1_ci(err, cor, resamples=resamples, level=level, seed=seed) if err and cor else None
    return ProcessBenchMetrics(acc_err, acc_cor, f1, len(err), len(cor), err_out, cor_out)


# ---------------------------------------------------------------- ProcessBench: evaluation


@dataclass(frozen=True, slots=True)
class ProcessBenchResult(FormResult[ProcessBenchMetrics, ProcessBenchRecord]):
    """A step critic's ProcessBench evaluation."""

    FORM: ClassVar[str] = "processbench"


def _record(item: ProcessBenchItem, outcome: Outcome[ProcessBenchRecord]) -> ProcessBenchRecord:
    if outcome.value is not None:
        return outcome.value
    status: Status = "skipped" if outcome.skipped else "failed"
    return ProcessBenchRecord(item.id, item.generator, len(item.steps), item.label, None, status,
                              error=outcome.error)


async def evaluate_processbench(
    items: Sequence[ProcessBenchItem],
    config: CriticEvalConfig | None = None,
    *,
    model: ChatModel | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ProcessBenchResult:
    """Ask the step critic for the first wrong step of every item and score it.

    The model is ``config.model`` built with the items as its suite (so ``sim``
    knows their labels), or ``model`` when given (which this function does not
    close). Either way it is wrapped like a run's: concurrency limit, retry, budget.
    """
    cfg = config or CriticEvalConfig()
    if not items:
        raise UsageError("no ProcessBench items to evaluate")
    session = _Session(cfg, processbench_suite(items), model)
    critic = session.role(StepCritic, "step_critic", cfg.role_config("step_critic"))

    async def one(item: ProcessBenchItem) -> ProcessBenchRecord:
        review = await critic.review(session.task_of[item.problem], item.steps)
        step = review.first_wrong_step
        reason = review.verdict.reason if review.verdict is not None else ""
        if step is None:
            return ProcessBenchRecord(item.id, item.generator, len(item.steps), item.label, None,
                                      "unreadable", reason, review.raw, review.error,
                                      review.repaired)
        return ProcessBenchRecord(item.id, item.generator, len(item.steps), item.label,
                                  to_processbench_label(step), "ok", reason, review.raw,
                                  None, review.repaired)

    outcomes = await session.ask(items, one, progress)
    records = tuple(_record(it, o) for it, o in zip(items, outcomes, strict=True))
    asked = [r for r in records if r.status != "skipped"]
    metrics = processbench_metrics([r.label for r in asked], [r.predicted for r in asked],
                                   resamples=cfg.resamples, level=cfg.level, seed=cfg.seed)
    return ProcessBenchResult(model=session.backend.model_id, metrics=metrics, records=records,
                              usage=session.usage(), config=cfg,
                              limited_by=session.ledger.limited_by)


# ================================================================ shared by the forms below


def _role_seed(config: CriticEvalConfig, name: str) -> int:
    return int(make_id(config.seed, name)[:8], 16)


def _load(path: str | Path, parse: Callable[[Any, int], Sequence[T]], ident: Callable[[T], str],
          *, limit: int | None) -> list[T]:
    """Items from every row of a JSON array or JSON Lines file (gzipped or not).

    ``parse(row, n)`` turns row ``n`` (1-based) into its items or raises ValueError
    saying what is wrong; a malformed row stops the load with a :class:`DataError`
    naming it and counting the others. Item ids must be unique.
    """
    if limit is not None and limit < 1:
        raise UsageError(f"limit must be at least 1, got {limit}")
    p = Path(path)
    rows, unit = _read_rows(p)
    if not isinstance(rows, list):
        raise DataError(f"{p}: expected a JSON array of items or one JSON object per line")
    items: list[T] = []
    problems: list[str] = []
    first_row: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        if row is None and unit == "line":
            continue
        try:
            got = parse(row, n)
            for it in got:
                if ident(it) in first_row:
                    raise ValueError(f"id {ident(it)!r} repeats {unit} {first_row[ident(it)]}")
        except ValueError as exc:
            problems.append(f"{unit} {n}: {exc}")
            continue
        for it in got:
            first_row[ident(it)] = n
            items.append(it)
    if problems:
        more = f" (and {len(problems) - 1} more malformed)" if len(problems) > 1 else ""
        raise DataError(f"{p}: {problems[0]}{more}")
    if not items:
        raise DataError(f"{p}: no items")
    return items[:limit] if limit is not None else items


def _text_field(row: Mapping[str, Any], *names: str) -> str:
    """The first of ``names`` present in ``row``, as a non-empty string."""
    key = next((k for k in names if k in row), None)
    if key is None:
        raise ValueError(f"missing field {names[0]!r}")
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _final_answer(value: Any, name: str) -> str:
    """A reference final answer (a string or a number), numbers normalised."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{name!r} must be a string or a number, got {value!r}")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{name!r} is empty")
    return normalise_number(text) or text


_A_LINE = re.compile(r"(?m)^\s*A:\s*(.+?)\s*$")


def _ratio_bootstrap(
    rows: Sequence[Sequence[float]],
    stats: Mapping[str, tuple[Callable[[Sequence[float]], float | None], int]],
    *, resamples: int, level: float, seed: int,
) -> dict[str, Estimate | None]:
    """Statistics of column sums over ``rows`` (the units: problems), with intervals
    from resampling the rows.

    ``stats[name] = (fn, n)``: ``fn`` maps the column sums to the statistic (None when
    its denominator is empty), ``n`` is what the estimate counts. A statistic None on
    the data is None; resamples where it is None are left out of its interval.
    """
    if not rows:
        return {name: None for name in stats}
    columns = [list(col) for col in zip(*rows, strict=True)]
    points = {name: fn([sum(col) for col in columns]) for name, (fn, _) in stats.items()}
    draws: dict[str, list[float]] = {name: [] for name in stats}
    n = len(rows)
    if n > 1:
        rng = random.Random(seed)
        units = range(n)
        for _ in range(resamples):
            idx = rng.choices(units, k=n)
            sums = [sum(map(col.__getitem__, idx)) for col in columns]
            for name, (fn, _) in stats.items():
                v = fn(sums)
                if v is not None and points[name] is not None:
                    draws[name].append(v)
    alpha = (1 - level) / 2
    out: dict[str, Estimate | None] = {}
    for name, (_, count) in stats.items():
        point = points[name]
        if point is None:
            out[name] = None
            continue
        ds = sorted(draws[name])
        low, high = (_percentile(ds, alpha), _percentile(ds, 1 - alpha)) if ds else (point, point)
        out[name] = Estimate(point, low, high, count, level)
    return out


def _share(num: int, den: int) -> Callable[[Sequence[float]], float | None]:
    """The statistic sums[num] / sums[den] (None when the denominator is 0)."""
    return lambda s: s[num] / s[den] if s[den] else None


def _est(e: Estimate | None) -> dict[str, float | int] | None:
    return None if e is None else e.as_dict()


def _usage_dict(u: EvalUsage) -> dict[str, Any]:
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "calls": u.calls, "cost": u.cost, "wall_s": u.wall_s}


def _result_dict(result: Any, form: str, **extra: Any) -> dict[str, Any]:
    """What ``--out`` writes for any form's result: the form, the model, the form's own
    fields, the config, the scores, what went unanswered, consumption, every item."""
    return {"form": form, "model": result.model, **extra,
            "config": result.config.model_dump(mode="json"),
            "metrics": result.metrics.as_dict(),
            "unreadable": result.count("unreadable"), "failed": result.count("failed"),
            "skipped": result.count("skipped"), "limited_by": result.limited_by,
            "usage": _usage_dict(result.usage),
            "items": [r.as_dict() for r in result.records]}


def _mean(values: Sequence[float], config: CriticEvalConfig) -> Estimate | None:
    return mean_ci(values, resamples=config.resamples, level=config.level,
                   seed=config.seed) if values else None


# ================================================================ verdicts on labelled candidates


@dataclass(frozen=True, slots=True)
class LabelledCandidate:
    """A candidate solution labelled correct or incorrect, for the verdict form.

    ``answer`` and ``reference`` (the reference final answer and worked solution) are
    never shown to the critic; they reach only a model that knows its tasks (``sim``).
    """

    id: str
    question: str
    solution: str
    correct: bool
    source: str = ""
    answer: str | None = None
    reference: str | None = None
    row: int = 0


def _candidate(obj: Any, where: str, **fields: Any) -> LabelledCandidate:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where} must be an object with 'solution' and 'is_correct'")
    solution, correct = obj.get("solution"), obj.get("is_correct")
    if not isinstance(solution, str) or not solution.strip():
        raise ValueError(f"{where}: 'solution' must be a non-empty string")
    if not isinstance(correct, bool):
        raise ValueError(f"{where}: 'is_correct' must be true or false, got {correct!r}")
    return LabelledCandidate(solution=solution, correct=correct, **fields)


def _labelled_row(row: Any, n: int, columns: Sequence[str] | None) -> list[LabelledCandidate]:
    if not isinstance(row, Mapping):
        raise ValueError("expected a JSON object with a question and labelled solutions")
    question = _text_field(row, "question", "problem")
    answer: str | None = None
    reference: str | None = None
    if row.get("answer") is not None:
        answer = _final_answer(row["answer"], "answer")
    if row.get("ground_truth") is not None:
        gt = row["ground_truth"]
        if not isinstance(gt, str) or not gt.strip():
            raise ValueError("'ground_truth' must be a non-empty string")
        reference = _A_LINE.sub(r"Answer: \1", gt)
        if answer is None:
            found = extract_answer(gt)
            if found is None:
                raise ValueError("no final answer in 'ground_truth'")
            answer = found
    pid = str(row.get("id", f"row-{n}"))
    common = {"question": question, "answer": answer, "reference": reference, "row": n}
    if "solution" in row or "is_correct" in row:
        source = str(row.get("source") or "")
        if columns and source not in columns:
            return []  # a flat row's source plays the part of a column
        return [_candidate(row, "the row", id=pid, source=source, **common)]
    named = [k for k, v in row.items()
             if isinstance(v, Mapping) and ("solution" in v or "is_correct" in v)]
    if columns:
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"no column {', '.join(repr(c) for c in missing)}")
        named = list(columns)
    if not named:
        raise ValueError("no labelled solution: give 'solution' and 'is_correct', or columns "
                         "holding {'solution', 'is_correct'}")
    return [_candidate(row[c], f"column {c!r}", id=f"{pid}/{c}", source=c, **common)
            for c in named]


def load_labelled_candidates(path: str | Path, *, columns: Sequence[str] | None = None,
                             limit: int | None = None) -> list[LabelledCandidate]:
    """Labelled candidates from a JSON array or JSON Lines file, optionally gzipped.

    Per row: ``question`` (or ``problem``); the candidates, either ``solution`` and
    ``is_correct`` on the row itself (and an optional ``source``), or columns each
    holding ``{"solution", "is_correct"}`` (the GSM8K model-solutions form: every such
    column is a candidate unless ``columns`` names some, which must then be on every
    such row; a flat row is kept when ``columns`` names its ``source``); optionally the
    reference,
    ``answer`` (a final answer) or ``ground_truth`` (a worked solution ending
    ``A: N`` or ``#### N``), and ``id``. ``limit`` keeps the first N candidates.
    """
    items = _load(path, lambda row, n: _labelled_row(row, n, columns), lambda c: c.id,
                  limit=limit)
    _same_answer(path, [(c.question, c.answer, c.row) for c in items], "answer")
    return items


def _same_answer(path: str | Path, rows: Sequence[tuple[str, str | None, int]],
                 name: str) -> None:
    """Rows asking the same question must give it the same reference answer."""
    first: dict[str, tuple[str, int]] = {}
    for question, answer, row in rows:
        if answer is None:
            continue
        seen = first.setdefault(question, (answer, row))
        if not answers_match(seen[0], answer):
            raise DataError(f"{path}: row {row}: {name!r} {answer!r} differs from row "
                            f"{seen[1]}'s {seen[0]!r} for the same question")


def verdict_suite(items: Sequence[LabelledCandidate], name: str = "labelled") -> Suite:
    """One task per distinct question, with its reference answer and solution.

    That is how ground truth reaches ``sim``: it judges a candidate right when its
    final answer matches the task's (as it judges any candidate), so the file's
    labels must agree with its answers for a sim check to mean anything (they do on
    the GSM8K model solutions: 2,640 of 2,640).
    """
    groups: dict[str, list[LabelledCandidate]] = {}
    for item in items:
        groups.setdefault(item.question, []).append(item)
    tasks = []
    for question, group in groups.items():
        first = group[0]
        answer = next((c.answer for c in group if c.answer is not None), None)
        reference = next((c.reference for c in group if c.reference is not None), None)
        kind: TaskKind = "math" if answer is not None else "text"
        tasks.append(Task(id=first.id, prompt=question, kind=kind, answer=answer, solution=reference,
                          metadata={"items": [c.id for c in group]}))
    return Suite(name, tuple(tasks), "labelled candidate solutions")


VerdictStatus = Literal["ok", "unreadable", "failed", "skipped"]
WRONG_OUTCOMES = ("caught", "missed", "unanswered")
RIGHT_OUTCOMES = ("passed", "false_alarm", "unanswered")


@dataclass(frozen=True, slots=True)
class VerdictRecord:
    """What the critic said about one labelled candidate. ``said`` is its verdict
    (None without a readable one), ``score`` its score on the role's scale."""

    id: str
    source: str
    correct: bool
    said: Literal["correct", "incorrect"] | None
    status: VerdictStatus
    score: float | None = None
    critique: str = ""
    raw: str = ""
    error: str | None = None
    repaired: bool = False

    @property
    def hit(self) -> bool:
        """The verdict agrees with the label."""
        return self.status == "ok" and (self.said == "correct") == self.correct

    @property
    def outcome(self) -> str:
        """caught / missed on incorrect candidates, passed / false_alarm on correct
        ones, unanswered (unreadable or failed) or skipped."""
        if self.status == "skipped":
            return "skipped"
        if self.said is None:
            return "unanswered"
        if self.correct:
            return "passed" if self.said == "correct" else "false_alarm"
        return "caught" if self.said == "incorrect" else "missed"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "source": self.source, "correct": self.correct,
                "said": self.said, "score": self.score, "status": self.status,
                "outcome": self.outcome, "hit": self.hit, "critique": self.critique,
                "raw": self.raw, "error": self.error, "repaired": self.repaired}


@dataclass(frozen=True, slots=True)
class VerdictMetrics:
    """A critic's verdicts against labels, with intervals that resample problems.

    ``sensitivity``: share of incorrect candidates it calls incorrect; ``specificity``:
    share of correct ones it calls correct; ``balanced_accuracy`` their mean. None
    where the group is empty. ``by_source`` has the point values per column/source.
    """

    accuracy: Estimate | None
    sensitivity: Estimate | None
    specificity: Estimate | None
    balanced_accuracy: Estimate | None
    n_wrong: int
    n_right: int
    wrong_outcomes: dict[str, int] = field(default_factory=dict)
    right_outcomes: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.n_wrong + self.n_right

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy": _est(self.accuracy), "sensitivity": _est(self.sensitivity),
                "specificity": _est(self.specificity),
                "balanced_accuracy": _est(self.balanced_accuracy),
                "n_wrong": self.n_wrong, "n_right": self.n_right,
                "wrong_outcomes": dict(self.wrong_outcomes),
                "right_outcomes": dict(self.right_outcomes),
                "by_source": {k: dict(v) for k, v in self.by_source.items()}}


def verdict_metrics(correct: Sequence[bool], said_correct: Sequence[bool | None],
                    groups: Sequence[str] | None = None, sources: Sequence[str] | None = None,
                    *, resamples: int = 2000, level: float = 0.95,
                    seed: int = 0) -> VerdictMetrics:
    """Scores of verdicts (``said_correct``: True for "correct", None for no readable
    verdict, which counts as wrong) against labels.

    Intervals resample ``groups`` (candidates of one problem stay together, as a hard
    problem fools a critic on all of them); each candidate its own group by default.
    """
    n = len(correct)
    if len(said_correct) != n:
        raise ValueError(f"{n} labels but {len(said_correct)} verdicts")
    keys = list(groups) if groups is not None else [str(i) for i in range(n)]
    srcs = list(sources) if sources is not None else [""] * n
    if len(keys) != n or len(srcs) != n:
        raise ValueError("groups and sources must match the labels in length")
    # per group: [wrong, caught, right, passed]
    rows: dict[str, list[float]] = {}
    wrong_out = {k: 0 for k in WRONG_OUTCOMES}
    right_out = {k: 0 for k in RIGHT_OUTCOMES}
    per_source: dict[str, list[int]] = {}
    for y, s, g, src in zip(correct, said_correct, keys, srcs, strict=True):
        r = rows.setdefault(g, [0.0, 0.0, 0.0, 0.0])
        c = per_source.setdefault(src, [0, 0, 0, 0])
        if y:
            r[2] += 1
            c[2] += 1
            r[3] += s is True
            c[3] += s is True
            right_out["unanswered" if s is None else "passed" if s else "false_alarm"] += 1
        else:
            r[0] += 1
            c[0] += 1
            r[1] += s is False
            c[1] += s is False
            wrong_out["unanswered" if s is None else "missed" if s else "caught"] += 1
    n_wrong, n_right = sum(1 for y in correct if not y), sum(1 for y in correct if y)

    def balanced(s: Sequence[float]) -> float | None:
        return (s[1] / s[0] + s[3] / s[2]) / 2 if s[0] and s[2] else None

    est = _ratio_bootstrap(list(rows.values()), {
        "accuracy": (lambda s: (s[1] + s[3]) / (s[0] + s[2]) if s[0] + s[2] else None, n),
        "sensitivity": (_share(1, 0), n_wrong),
        "specificity": (_share(3, 2), n_right),
        "balanced": (balanced, n),
    }, resamples=resamples, level=level, seed=seed)
    by_source = {
        src: {"n_wrong": c[0], "n_right": c[2],
              "sensitivity": c[1] / c[0] if c[0] else None,
              "specificity": c[3] / c[2] if c[2] else None}
        for src, c in per_source.items()} if sources is not None else {}
    return VerdictMetrics(est["accuracy"], est["sensitivity"], est["specificity"],
                          est["balanced"], n_wrong, n_right, wrong_out, right_out, by_source)


@dataclass(frozen=True, slots=True)
class VerdictResult(FormResult[VerdictMetrics, VerdictRecord]):
    """A critic's (or judge's: ``role``) verdicts on labelled candidates."""

    role: str = "critic"

    FORM: ClassVar[str] = "verdict"

    def _extra(self) -> dict[str, Any]:
        return {"role": self.role}


VerdictRole = Literal["critic", "judge"]


async def evaluate_verdicts(
    items: Sequence[LabelledCandidate],
    config: CriticEvalConfig | None = None,
    *,
    role: VerdictRole = "critic",
    model: ChatModel | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerdictResult:
    """Ask the critic (``role="critic"``, as ``refine`` does) or the judge (as
    ``best_of_n`` does) for a verdict on every candidate, and score the verdicts.

    The model is ``config.model`` built with the items' suite (so ``sim`` knows
    their answers), or ``model`` when given (not closed here); wrapped like a run's.
    """
    cfg = config or CriticEvalConfig()
    if not items:
        raise UsageError("no labelled candidates to evaluate")
    session = _Session(cfg, verdict_suite(items), model)
    judge = session.role(Critic if role == "critic" else Judge, role, cfg.role_config(role))

    async def one(item: LabelledCandidate) -> VerdictRecord:
        res = await judge.judge(session.task_of[item.question], item.solution)
        v = res.verdict
        if v is None:
            return VerdictRecord(item.id, item.source, item.correct, None, "unreadable",
                                 raw=res.raw, error=res.error, repaired=res.repaired)
        return VerdictRecord(item.id, item.source, item.correct, v.verdict, "ok", v.score,
                             v.critique, res.raw, None, res.repaired)

    outcomes = await session.ask(items, one, progress)
    records = []
    for item, o in zip(items, outcomes, strict=True):
        if o.value is not None:
            records.append(o.value)
        else:
            records.append(VerdictRecord(item.id, item.source, item.correct, None,
                                         "skipped" if o.skipped else "failed", error=o.error))
    asked = [(it, r) for it, r in zip(items, records, strict=True) if r.status != "skipped"]
    metrics = verdict_metrics(
        [r.correct for _, r in asked],
        [None if r.said is None else r.said == "correct" for _, r in asked],
        [it.question for it, _ in asked], [r.source for _, r in asked],
        resamples=cfg.resamples, level=cfg.level, seed=cfg.seed)
    return VerdictResult(session.backend.model_id, metrics, tuple(records), session.usage(),
                         cfg, session.ledger.limited_by, role=role)


# ================================================================ pairwise judge (LLMBar)


@dataclass(frozen=True, slots=True)
class PairItem:
    """An instruction, two outputs and the gold preference (``label`` 1 or 2: the better)."""

    id: str
    input: str
    output_1: str
    output_2: str
    label: int
    row: int = 0

    @property
    def better(self) -> str:
        return self.output_1 if self.label == 1 else self.output_2

    @property
    def worse(self) -> str:
        return self.output_2 if self.label == 1 else self.output_1


def _pair_row(row: Any, n: int) -> list[PairItem]:
    if not isinstance(row, Mapping):
        raise ValueError("expected a JSON object with input, output_1, output_2 and label")
    missing = [k for k in ("input", "output_1", "output_2", "label") if k not in row]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(k) for k in missing)}")
    text = _text_field(row, "input")
    out1, out2 = _text_field(row, "output_1"), _text_field(row, "output_2")
    label = row["label"]
    if isinstance(label, bool) or label not in (1, 2):
        raise ValueError(f"'label' must be 1 or 2 (the better output), got {label!r}")
    return [PairItem(str(row.get("id", f"row-{n}")), text, out1, out2, int(label), n)]


def load_pairs(path: str | Path, *, limit: int | None = None) -> list[PairItem]:
    """Pairs with a gold preference (the LLMBar form) from a JSON array or JSON Lines
    file, optionally gzipped: ``input``, ``output_1``, ``output_2``, ``label`` (1 or 2,
    the better output), optional ``id``."""
    return _load(path, _pair_row, lambda it: it.id, limit=limit)


def pairwise_suite(items: Sequence[PairItem], name: str = "pairs") -> Suite:
    """One text task per distinct input, carrying its labelled pairs.

    The gold preferences ride in ``metadata[PAIR_LABELS]`` (``{"better", "worse"}``):
    that is how ground truth reaches ``sim``; the judge's prompt shows only the input
    and the two outputs.
    """
    groups: dict[str, list[PairItem]] = {}
    for item in items:
        groups.setdefault(item.input, []).append(item)
    tasks = [Task(id=group[0].id, prompt=text, kind="text",
                  metadata={PAIR_LABELS: [{"better": it.better, "worse": it.worse}
                                          for it in group],
                            "items": [it.id for it in group]})
             for text, group in groups.items()]
    return Suite(name, tuple(tasks), "instructions with pairs of outputs and gold preferences")


_FIRST_PICK: dict[str, int] = {"A": 1, "B": 2, "tie": 0}
_SECOND_PICK: dict[str, int] = {"A": 2, "B": 1, "tie": 0}
PAIR_OUTCOMES = ("right", "wrong", "tie", "unanswered")


@dataclass(frozen=True, slots=True)
class PairRecord:
    """What the pairwise judge said about one pair.

    ``first`` is its verdict (A, B or tie) with output 1 shown as A (the file's
    order, the question without swap); ``second`` with output 2 shown as A (None
    without the swap); either is None when unreadable. ``winner`` is what
    ``PairwiseJudge.compare`` decided: 1 or 2, 0 for a tie, None if not asked.
    """

    id: str
    label: int
    first: str | None
    second: str | None
    winner: int | None
    status: VerdictStatus
    swapped: bool = True
    reasons: tuple[str, ...] = ()
    raws: tuple[str, ...] = ()
    error: str | None = None
    repaired: bool = False

    @property
    def first_pick(self) -> int | None:
        """The output (1, 2; 0 a tie) the first order named."""
        return _FIRST_PICK[self.first] if self.first is not None else None

    @property
    def second_pick(self) -> int | None:
        return _SECOND_PICK[self.second] if self.second is not None else None

    @property
    def consistent(self) -> bool:
        """Both orders named the same output (or both a tie); False if either is missing."""
        return (self.first_pick is not None and self.second_pick is not None
                and self.first_pick == self.second_pick)

    @property
    def outcome(self) -> str:
        """right / wrong / tie of the decision (with the swap: both orders agreeing),
        unanswered or skipped."""
        if self.status == "skipped":
            return "skipped"
        pick = self.winner if self.swapped else self.first_pick
        if self.swapped and self.status != "ok":
            pick = None
        if pick is None:
            return "unanswered"
        return "tie" if pick == 0 else "right" if pick == self.label else "wrong"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "label": self.label, "first": self.first,
                "second": self.second, "winner": self.winner, "status": self.status,
                "swapped": self.swapped, "consistent": self.consistent,
                "outcome": self.outcome, "reasons": list(self.reasons),
                "raws": list(self.raws), "error": self.error, "repaired": self.repaired}


@dataclass(frozen=True, slots=True)
class PairwiseMetrics:
    """A pairwise judge against gold preferences, with bootstrap intervals over pairs.

    - ``accuracy_no_swap``: one order, output 1 shown first (the file's order);
    - ``accuracy_reversed``: one order, output 2 shown first;
    - ``accuracy_single``: the mean of the two (LLMBar's average over both orders);
    - ``accuracy_swap``: both orders asked, a pick counted only when they agree
      (``PairwiseJudge.compare``); a disagreement is a tie, which is not right;
    - ``consistency``: share of pairs where both orders name the same output;
    - ``ties``: share of swapped decisions that are ties;
    - ``first_position``: share of single-order A/B verdicts naming the output shown
      first (0.5 when the judge has no position preference, over both orders).

    Without the swap only ``accuracy_no_swap`` and ``first_position`` are measured.
    An unreadable or failed pair counts as wrong and inconsistent.
    """

    accuracy_no_swap: Estimate | None
    accuracy_reversed: Estimate | None
    accuracy_single: Estimate | None
    accuracy_swap: Estimate | None
    consistency: Estimate | None
    ties: Estimate | None
    first_position: Estimate | None
    n: int
    n_first_better: int
    outcomes: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"accuracy_no_swap": _est(self.accuracy_no_swap),
                "accuracy_reversed": _est(self.accuracy_reversed),
                "accuracy_single": _est(self.accuracy_single),
                "accuracy_swap": _est(self.accuracy_swap),
                "consistency": _est(self.consistency), "ties": _est(self.ties),
                "first_position": _est(self.first_position), "n": self.n,
                "n_first_better": self.n_first_better, "outcomes": dict(self.outcomes)}


def pairwise_metrics(records: Sequence[PairRecord], config: CriticEvalConfig | None = None
                     ) -> PairwiseMetrics:
    """The scores of asked pairs (skipped ones are left out by the caller)."""
    cfg = config or CriticEvalConfig()
    recs = [r for r in records if r.status != "skipped"]
    swapped = bool(recs) and all(r.swapped for r in recs)
    first = [float(r.first_pick == r.label) for r in recs]
    outcomes = {k: 0 for k in PAIR_OUTCOMES}
    for r in recs:
        outcomes[r.outcome] += 1
    named_first: list[float] = []
    for r in recs:
        if r.first in ("A", "B"):
            named_first.append(float(r.first == "A"))
        if r.second in ("A", "B"):
            named_first.append(float(r.second == "A"))
    n1 = sum(r.label == 1 for r in recs)
    if not swapped:
        return PairwiseMetrics(_mean(first, cfg), None, None, None, None, None,
                               _mean(named_first, cfg), len(recs), n1, outcomes)
    second = [float(r.second_pick == r.label) for r in recs]
    both = [(a + b) / 2 for a, b in zip(first, second, strict=True)]
    swap = [float(r.outcome == "right") for r in recs]
    ties = [float(r.outcome == "tie") for r in recs]
    consistent = [float(r.consistent) for r in recs]
    return PairwiseMetrics(_mean(first, cfg), _mean(second, cfg), _mean(both, cfg),
                           _mean(swap, cfg), _mean(consistent, cfg), _mean(ties, cfg),
                           _mean(named_first, cfg), len(recs), n1, outcomes)


@dataclass(frozen=True, slots=True)
class PairwiseResult(FormResult[PairwiseMetrics, PairRecord]):
    """A pairwise judge's evaluation (``swap``: both orders asked)."""

    swap: bool = True

    FORM: ClassVar[str] = "pairwise"

    def _extra(self) -> dict[str, Any]:
        return {"swap": self.swap}


async def evaluate_pairwise(
    items: Sequence[PairItem],
    config: CriticEvalConfig | None = None,
    *,
    swap: bool = True,
    model: ChatModel | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PairwiseResult:
    """Ask the pairwise judge which output of every pair is better, and score it.

    Each pair goes through :meth:`PairwiseJudge.compare` with output 1 as ``x``: with
    ``swap`` both orders are asked (the first of them is exactly the question asked
    without the swap), so one pass measures the judge with and without the swap.
    """
    cfg = config or CriticEvalConfig()
    if not items:
        raise UsageError("no pairs to evaluate")
    session = _Session(cfg, pairwise_suite(items), model)
    judge = session.role(PairwiseJudge, "pairwise_judge", cfg.role_config("pairwise_judge"))

    async def one(item: PairItem) -> PairRecord:
        cmp = await judge.compare(session.task_of[item.input], item.output_1, item.output_2,
                                  swap=swap)
        asked = [cmp.first] if cmp.second is None else [cmp.first, cmp.second]
        said = [r.value.winner if r.value is not None else None for r in asked]
        winner = {"x": 1, "y": 2, "tie": 0}[cmp.winner]
        status: VerdictStatus = "unreadable" if cmp.parse_failure else "ok"
        return PairRecord(
            item.id, item.label, said[0], said[1] if swap else None, winner, status, swap,
            tuple(r.value.reason if r.value is not None else "" for r in asked),
            tuple(r.raw for r in asked),
            "; ".join(r.error for r in asked if r.error) or None,
            any(r.repaired for r in asked))

    outcomes = await session.ask(items, one, progress)
    records = tuple(
        o.value if o.value is not None else PairRecord(
            item.id, item.label, None, None, None, "skipped" if o.skipped else "failed", swap,
            error=o.error)
        for item, o in zip(items, outcomes, strict=True))
    return PairwiseResult(session.backend.model_id, pairwise_metrics(records, cfg), records,
                          session.usage(), cfg, session.ledger.limited_by, swap=swap)


# ================================================================ closed loop (RealCritic)


@dataclass(frozen=True, slots=True)
class RealCriticItem:
    """A problem, one model's solution and the gold answer (the RealCritic form)."""

    id: str
    question: str
    solution: str
    answer: str
    reference: str | None = None
    generator: str = ""
    row: int = 0


def _realcritic_row(row: Any, n: int) -> list[RealCriticItem]:
    if not isinstance(row, Mapping):
        raise ValueError("expected a JSON object with question, reasoning and gt")
    missing = [k for k in ("question", "reasoning", "gt") if k not in row]
    if missing:
        raise ValueError(f"missing field {', '.join(repr(k) for k in missing)}")
    question, solution = _text_field(row, "question"), _text_field(row, "reasoning")
    answer = _final_answer(row["gt"], "gt")
    reference = row.get("gt_cot")
    if reference is not None and (not isinstance(reference, str) or not reference.strip()):
        raise ValueError("'gt_cot' must be a non-empty string")
    item_id = row.get("id", row.get("idx", f"row-{n}"))
    return [RealCriticItem(str(item_id), question, solution, answer, reference,
                           str(row.get("model") or ""), n)]


def load_realcritic(path: str | Path, *, limit: int | None = None) -> list[RealCriticItem]:
    """RealCritic items from a JSON array or JSON Lines file, optionally gzipped:
    ``question``, ``reasoning`` (the solution to critique), ``gt`` (the gold final
    answer); optional ``gt_cot`` (a reference solution), ``model``, ``id`` or ``idx``."""
    items = _load(path, _realcritic_row, lambda it: it.id, limit=limit)
    _same_answer(path, [(it.question, it.answer, it.row) for it in items], "gt")
    return items


def realcritic_suite(items: Sequence[RealCriticItem], name: str = "realcritic") -> Suite:
    """One math task per distinct question with its gold answer (and reference
    solution): what grades the answers, and how ``sim`` knows which are right."""
    groups: dict[str, list[RealCriticItem]] = {}
    for item in items:
        groups.setdefault(item.question, []).append(item)
    tasks = [Task(id=group[0].id, prompt=question, kind="math", answer=group[0].answer,
                  solution=next((it.reference for it in group if it.reference), None),
                  metadata={"items": [it.id for it in group]})
             for question, group in groups.items()]
    return Suite(name, tuple(tasks), "problems with a model's solution and the gold answer")


LoopStatus = Literal["ok", "unreadable", "failed", "skipped"]
LOOP_OUTCOMES = ("fixed", "still_wrong", "kept", "broken")


@dataclass(frozen=True, slots=True)
class LoopRecord:
    """One closed loop: was the answer right before and after critique and refinement.

    ``said`` is the critic's verdict (None: unreadable or failed); ``revised`` whether
    the refiner was asked (the critic did not accept, as in ``refine``). A failed item
    keeps its answer (``after == before``): the loop could not change it.
    """

    id: str
    generator: str
    before: bool
    after: bool
    said: Literal["correct", "incorrect"] | None
    revised: bool
    status: LoopStatus
    critique: str = ""
    revision: str | None = None
    raw: str = ""
    error: str | None = None
    repaired: bool = False

    @property
    def outcome(self) -> str:
        """fixed / still_wrong for wrong answers, kept / broken for right ones; skipped."""
        if self.status == "skipped":
            return "skipped"
        if self.before:
            return "kept" if self.after else "broken"
        return "fixed" if self.after else "still_wrong"

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "generator": self.generator, "before": self.before,
                "after": self.after, "outcome": self.outcome, "said": self.said,
                "revised": self.revised, "status": self.status, "critique": self.critique,
                "revision": self.revision, "raw": self.raw, "error": self.error,
                "repaired": self.repaired}


@dataclass(frozen=True, slots=True)
class LoopMetrics:
    """Closed-loop effectiveness with bootstrap intervals over items.

    The decomposition (METHODS.md §7): ``fix_rate`` is the share of wrong answers the
    loop turns right (critique), ``break_rate`` the share of right answers it turns
    wrong (1 − confidence); accuracy after = before·(1 − break) + (1 − before)·fix.
    ``change`` is accuracy after minus before (paired). Of the critic alone:
    ``flagged_wrong`` (wrong answers it does not accept) and ``accepted_right``. Of
    the refiner given a revision: ``fix_when_revised`` and ``break_when_revised``.
    """

    accuracy_before: Estimate | None
    accuracy_after: Estimate | None
    change: Estimate | None
    fix_rate: Estimate | None
    break_rate: Estimate | None
    flagged_wrong: Estimate | None
    accepted_right: Estimate | None
    fix_when_revised: Estimate | None
    break_when_revised: Estimate | None
    n_wrong: int
    n_right: int
    outcomes: dict[str, int] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.n_wrong + self.n_right

    def as_dict(self) -> dict[str, Any]:
        names = ("accuracy_before", "accuracy_after", "change", "fix_rate", "break_rate",
                 "flagged_wrong", "accepted_right", "fix_when_revised", "break_when_revised")
        return {**{k: _est(getattr(self, k)) for k in names}, "n_wrong": self.n_wrong,
                "n_right": self.n_right, "outcomes": dict(self.outcomes)}


def loop_metrics(records: Sequence[LoopRecord], config: CriticEvalConfig | None = None
                 ) -> LoopMetrics:
    """The closed-loop scores of asked items (skipped ones are left out)."""
    cfg = config or CriticEvalConfig()
    recs = [r for r in records if r.status != "skipped"]
    wrong = [r for r in recs if not r.before]
    right = [r for r in recs if r.before]
    outcomes = {k: 0 for k in LOOP_OUTCOMES}
    for r in recs:
        outcomes[r.outcome] += 1
    before = [float(r.before) for r in recs]
    after = [float(r.after) for r in recs]
    change = paired_difference(after, before, resamples=cfg.resamples, level=cfg.level,
                               seed=cfg.seed) if recs else None
    return LoopMetrics(
        _mean(before, cfg), _mean(after, cfg), change,
        _mean([float(r.after) for r in wrong], cfg),
        _mean([float(not r.after) for r in right], cfg),
        _mean([float(r.said == "incorrect") for r in wrong], cfg),
        _mean([float(r.said == "correct") for r in right], cfg),
        _mean([float(r.after) for r in wrong if r.revised], cfg),
        _mean([float(not r.after) for r in right if r.revised], cfg),
        len(wrong), len(right), outcomes)


@dataclass(frozen=True, slots=True)
class LoopResult(FormResult[LoopMetrics, LoopRecord]):
    """A critic-then-refiner closed-loop evaluation."""

    FORM: ClassVar[str] = "realcritic"


async def _graded(task: Task, text: str) -> bool:
    """Whether ``text`` answers ``task`` right, by the grading verifier a run uses."""
    verifier = grading_verifier("auto", task)
    if verifier is None:
        raise UsageError(f"task {task.id!r} has no reference answer to grade against")
    result = await verifier.verify(task, text, parse_answer(task, text))
    return result.passed is True


async def evaluate_realcritic(
    items: Sequence[RealCriticItem],
    config: CriticEvalConfig | None = None,
    *,
    model: ChatModel | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> LoopResult:
    """One round of ``refine`` on every item's recorded solution, graded before and after.

    The critic judges the solution; if it accepts (verdict "correct") the answer
    stands, else the refiner revises it with the critique as ``refine`` words it (an
    unreadable critique is passed on raw, as ``refine`` does). Both answers are graded
    against the gold answer with the grading verifier a run uses.
    """
    cfg = config or CriticEvalConfig()
    if not items:
        raise UsageError("no RealCritic items to evaluate")
    session = _Session(cfg, realcritic_suite(items), model)
    task_of = session.task_of
    critic = session.role(Critic, "critic", cfg.role_config("critic"))
    refiner = session.role(Refiner, "refiner", cfg.refiner_config())
    try:
        before_of = {it.id: await _graded(task_of[it.question], it.solution) for it in items}
    except BaseException:
        await session.aclose()
        raise

    async def one(item: RealCriticItem) -> LoopRecord:
        task = task_of[item.question]
        before = before_of[item.id]
        res = await critic.judge(task, item.solution)
        v = res.verdict
        status: LoopStatus = "ok" if v is not None else "unreadable"
        said = v.verdict if v is not None else None
        feedback = format_feedback(v, critic.scale) if v is not None else res.raw.strip()
        record = LoopRecord(item.id, item.generator, before, before, said, False, status,
                            v.critique if v is not None else "", None, res.raw, res.error,
                            res.repaired)
        if said == "correct" or not feedback:
            return record  # accepted (or nothing to act on): the answer stands
        resp = await refiner.refine(task, item.solution, feedback)
        if not resp.completions:  # nothing came back: the answer stands, as in refine
            return replace(record, revised=True)
        text = resp.texts[0]
        return replace(record, revised=True, revision=text, after=await _graded(task, text))

    outcomes = await session.ask(items, one, progress)
    records = tuple(
        o.value if o.value is not None else LoopRecord(
            item.id, item.generator, before_of[item.id], before_of[item.id], None, False,
            "skipped" if o.skipped else "failed", error=o.error)
        for item, o in zip(items, outcomes, strict=True))
    return LoopResult(session.backend.model_id, loop_metrics(records, cfg), records,
                      session.usage(), cfg, session.ledger.limited_by)
