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

What counts: a reply that cannot be read even after the repair request, and an item
whose model call failed (after retries), count as **wrong** and are reported apart.
Items left unasked because a budget ran out are **not** counted (the metrics cover
the items asked) and are reported as skipped; items are asked in a seeded shuffled
order, so those asked are a random subset, not the head of a file sorted by label. An unreachable endpoint, a refused key
or an unknown model stops the evaluation with that error.

Intervals are percentile bootstraps over items (``evals.stats``): each accuracy with
:func:`~deliberate.evals.stats.mean_ci` over its own items; F1 by resampling the
erroneous and the correct items (each group keeps its size, as the benchmark fixes
its composition) and recomputing both accuracies.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

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
from deliberate.evals.stats import Estimate, _percentile, mean_ci
from deliberate.models.base import ChatModel
from deliberate.models.budget import BudgetedModel, Ledger
from deliberate.models.middleware import ConcurrencyLimitModel, RetryModel
from deliberate.models.registry import build_model, default_model_string
from deliberate.models.sim.handlers.step_critic import STEP_LABELS
from deliberate.roles.prompts import Prompts
from deliberate.roles.step_critic import (
    NO_ERROR,
    StepCritic,
    from_processbench_label,
    to_processbench_label,
)
from deliberate.tasks.task import Suite, Task
from deliberate.tree import make_id

__all__ = [
    "CriticEvalConfig",
    "EvalUsage",
    "Outcome",
    "ProcessBenchItem",
    "ProcessBenchMetrics",
    "ProcessBenchRecord",
    "ProcessBenchResult",
    "evaluate_processbench",
    "harmonic_mean",
    "load_processbench",
    "processbench_metrics",
    "processbench_suite",
    "run_items",
    "subsample",
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


def _stack(backend: ChatModel, config: CriticEvalConfig, ledger: Ledger,
           default_max_tokens: int) -> ChatModel:
    """The run's middleware, innermost first: limit, retry, then budget and accounting."""
    model: ChatModel = ConcurrencyLimitModel(backend, config.concurrency)
    model = RetryModel(model, config.retry.policy(), seed=config.seed)
    return BudgetedModel(model, ledger, default_max_tokens=default_max_tokens)


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
class ProcessBenchResult:
    """A step critic's ProcessBench evaluation: scores, per-item records, consumption."""

    model: str
    metrics: ProcessBenchMetrics
    records: tuple[ProcessBenchRecord, ...]
    usage: EvalUsage
    config: CriticEvalConfig
    limited_by: str | None = None

    def count(self, status: Status) -> int:
        return sum(r.status == status for r in self.records)

    def as_dict(self) -> dict[str, Any]:
        return {"form": "processbench", "model": self.model,
                "config": self.config.model_dump(mode="json"),
                "metrics": self.metrics.as_dict(),
                "unreadable": self.count("unreadable"), "failed": self.count("failed"),
                "skipped": self.count("skipped"), "limited_by": self.limited_by,
                "usage": {"prompt_tokens": self.usage.prompt_tokens,
                          "completion_tokens": self.usage.completion_tokens,
                          "calls": self.usage.calls, "cost": self.usage.cost,
                          "wall_s": self.usage.wall_s},
                "items": [r.as_dict() for r in self.records]}


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
    suite = processbench_suite(items)
    task_of = {t.prompt: t for t in suite}
    backend = model if model is not None else build_model(cfg.model_string(), suite)
    role_cfg = cfg.role_config("step_critic")
    ledger = Ledger(limits=cfg.budget.limits())
    stacked = _stack(backend, cfg, ledger, role_cfg.max_tokens)
    critic = StepCritic(stacked, role_cfg, Prompts(cfg.prompts_dir),
                        int(make_id(cfg.seed, "step_critic")[:8], 16))

    async def one(item: ProcessBenchItem) -> ProcessBenchRecord:
        review = await critic.review(task_of[item.problem], item.steps)
        step = review.first_wrong_step
        reason = review.verdict.reason if review.verdict is not None else ""
        if step is None:
            return ProcessBenchRecord(item.id, item.generator, len(item.steps), item.label, None,
                                      "unreadable", reason, review.raw, review.error,
                                      review.repaired)
        return ProcessBenchRecord(item.id, item.generator, len(item.steps), item.label,
                                  to_processbench_label(step), "ok", reason, review.raw,
                                  None, review.repaired)

    # Asked in a seeded shuffled order, so that a budget that runs out leaves a random
    # subset asked rather than the head of a file sorted by label.
    order = list(range(len(items)))
    random.Random(make_id(cfg.seed, "order")).shuffle(order)
    started = time.monotonic()
    try:
        shuffled = await run_items([items[i] for i in order], one,
                                   concurrency=cfg.concurrency, progress=progress)
    finally:
        if model is None:
            await backend.aclose()
    outcomes: list[Outcome[ProcessBenchRecord]] = [Outcome(skipped=True)] * len(items)
    for i, o in zip(order, shuffled, strict=True):
        outcomes[i] = o
    records = tuple(_record(it, o) for it, o in zip(items, outcomes, strict=True))
    asked = [r for r in records if r.status != "skipped"]
    metrics = processbench_metrics([r.label for r in asked], [r.predicted for r in asked],
                                   resamples=cfg.resamples, level=cfg.level, seed=cfg.seed)
    return ProcessBenchResult(model=backend.model_id, metrics=metrics, records=records,
                              usage=EvalUsage.of(ledger, time.monotonic() - started),
                              config=cfg, limited_by=ledger.limited_by)
