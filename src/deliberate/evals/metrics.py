"""Per-run metrics read from the store, each with a bootstrap interval over tasks.

A run's unit of variation is the task, so every interval here resamples tasks
(:mod:`deliberate.evals.stats`), and comparisons between two runs pair them on the
tasks both finished. What counts:

- **accuracy**: the share of graded tasks whose chosen answer the grader passed (for
  code, the pass@1 of the chosen program). Tasks that failed with a model error have no
  grade and are left out, as in the run's own summary; a task stopped by its budget
  counts with whatever it returned (nothing is wrong).
- **sample accuracy** and **oracle**: from the grades of every candidate the strategy
  made (the engine grades them all): the mean share of right candidates, and the share
  of tasks with any right candidate. **pass@k** is the unbiased estimator of Chen et
  al. (2021) per task, averaged; k runs up to the fewest candidates any task has.
- **detection** (suites of findings): precision, recall and F1 micro-averaged over
  the tasks' true/false positive and false negative counts, and false positives per
  task.
- **consumption** per task: tokens (prompt + completion), cost, model calls and the
  model latency the task's calls added up to; per **solved** task: totals over all
  finished tasks divided by the tasks solved (resamples with nothing solved are left
  out of the interval).
- **critic verdicts**: every verdict a model-driven judge or critic gave on a
  candidate the grader also graded, as a confusion matrix (grader's label × critic's
  verdict, an unreadable reply as its own column).

Unfinished attempts (pending or running: an interrupted run) are counted but measured
in nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from deliberate.evals.stats import Estimate, Resampler, pass_at_k, sign_test
from deliberate.store import Store
from deliberate.tree import AttemptRecord, RunRecord

__all__ = [
    "CriticConfusion",
    "CriticVerdict",
    "PairedComparison",
    "RunData",
    "RunMetrics",
    "TaskOutcome",
    "compare_runs",
    "critic_confusions",
    "default_ks",
    "load_run",
    "pareto_front",
    "run_metrics",
]

FINISHED = ("done", "budget_limited", "failed")
VERDICTS = ("correct", "incorrect")
UNREADABLE = "parse_failure"


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    """What one task attempt measured, read off its record."""

    task_id: str
    status: str
    correct: bool | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cost: float = 0.0
    latency_s: float = 0.0
    candidates: int | None = None
    candidates_correct: int | None = None
    detection: tuple[int, int, int] | None = None  # tp, fp, fn

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_attempt(cls, a: AttemptRecord) -> TaskOutcome:
        stats = a.stats or {}
        n = stats.get("candidates")
        c = stats.get("candidates_correct")
        counts = stats.get("metrics")
        detection = None
        if isinstance(counts, dict) and all(isinstance(counts.get(k), int)
                                            for k in ("tp", "fp", "fn")):
            detection = (int(counts["tp"]), int(counts["fp"]), int(counts["fn"]))
        return cls(
            task_id=a.task_id, status=a.status, correct=a.correct,
            prompt_tokens=a.prompt_tokens, completion_tokens=a.completion_tokens,
            calls=a.calls, cost=a.cost, latency_s=a.latency_s,
            candidates=int(n) if isinstance(n, int) and n > 0 else None,
            candidates_correct=int(c) if isinstance(n, int) and n > 0 and isinstance(c, int)
            else None,
            detection=detection)


@dataclass(frozen=True, slots=True)
class CriticVerdict:
    """One model verdict on a candidate the grader graded."""

    task_id: str
    role: str  # the judgement's role: judge, critic, step_critic, …
    source: str  # model:<id>
    verdict: str  # correct, incorrect or parse_failure
    truth: bool  # the grader's label


@dataclass(frozen=True, slots=True)
class RunData:
    """A run as the metrics need it: its record, its task outcomes, its critics' verdicts."""

    run: RunRecord
    outcomes: tuple[TaskOutcome, ...]
    verdicts: tuple[CriticVerdict, ...] = ()

    @property
    def run_id(self) -> str:
        return self.run.id

    def by_task(self) -> dict[str, TaskOutcome]:
        return {o.task_id: o for o in self.outcomes}


async def load_run(store: Store, run_id: str, *, verdicts: bool = True,
                   page: int = 500) -> RunData | None:
    """Read a run's outcomes (and, unless ``verdicts`` is False, its critics' verdicts
    on graded candidates, which needs every task's tree); None if there is no such run."""
    run = await store.get_run(run_id)
    if run is None:
        return None
    outcomes: list[TaskOutcome] = []
    after: str | None = None
    while True:
        attempts = await store.page_attempts(run_id, after=after, limit=page)
        outcomes += [TaskOutcome.from_attempt(a) for a in attempts]
        if len(attempts) < page:
            break
        after = attempts[-1].task_id
    found: list[CriticVerdict] = []
    if verdicts:
        for o in outcomes:
            if o.finished:
                found += await _task_verdicts(store, run_id, o.task_id)
    return RunData(run, tuple(outcomes), tuple(found))


async def _task_verdicts(store: Store, run_id: str, task_id: str) -> list[CriticVerdict]:
    _, judgements = await store.load_tree(run_id, task_id)
    truth: dict[str, bool] = {}
    for j in judgements:
        if j.role == "grader" and j.verdict in VERDICTS:
            truth[j.node_id] = j.verdict == "correct"
    return [CriticVerdict(task_id, j.role, j.source, str(j.verdict), truth[j.node_id])
            for j in judgements
            if j.source.startswith("model:") and j.node_id in truth
            and j.verdict in (*VERDICTS, UNREADABLE)]


# ------------------------------------------------------------------ one run's metrics


def default_ks(max_k: int) -> tuple[int, ...]:
    """1, 2, 4, … up to ``max_k``, and ``max_k`` itself."""
    ks = [k for k in (2**i for i in range(max(1, max_k).bit_length())) if k <= max_k]
    if max_k >= 1 and ks[-1] != max_k:
        ks.append(max_k)
    return tuple(ks)


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """Every metric of one run; None where the run has nothing to measure it by."""

    run_id: str
    tasks: int
    finished: int
    graded: int
    solved: int
    failed: int
    budget_limited: int
    accuracy: Estimate | None
    sample_accuracy: Estimate | None
    oracle: Estimate | None
    pass_at_k: dict[int, Estimate]
    precision: Estimate | None
    recall: Estimate | None
    f1: Estimate | None
    false_positives: Estimate | None
    tokens: Estimate | None
    cost: Estimate | None
    calls: Estimate | None
    latency_s: Estimate | None
    tokens_per_solved: Estimate | None
    cost_per_solved: Estimate | None
    level: float = 0.95

    @property
    def priced(self) -> bool:
        """Whether any cost was recorded (a run without prices costs 0 throughout)."""
        return self.cost is not None and self.cost.high > 0

    def as_dict(self) -> dict[str, Any]:
        def est(e: Estimate | None) -> dict[str, float | int] | None:
            return None if e is None else e.as_dict()

        return {
            "run_id": self.run_id, "tasks": self.tasks, "finished": self.finished,
            "graded": self.graded, "solved": self.solved, "failed": self.failed,
            "budget_limited": self.budget_limited, "accuracy": est(self.accuracy),
            "sample_accuracy": est(self.sample_accuracy), "oracle": est(self.oracle),
            "pass_at_k": {str(k): e.as_dict() for k, e in self.pass_at_k.items()},
            "precision": est(self.precision), "recall": est(self.recall), "f1": est(self.f1),
            "false_positives": est(self.false_positives), "tokens": est(self.tokens),
            "cost": est(self.cost), "calls": est(self.calls), "latency_s": est(self.latency_s),
            "tokens_per_solved": est(self.tokens_per_solved),
            "cost_per_solved": est(self.cost_per_solved), "level": self.level,
        }


def run_metrics(data: RunData, *, ks: Sequence[int] | None = None, resamples: int = 2000,
                level: float = 0.95, seed: int = 0,
                resampler: Resampler | None = None) -> RunMetrics:
    """All metrics of one run, each with a percentile-bootstrap interval over tasks
    (``resampler``, if given, supplies the draws and overrides the three settings)."""
    rs = resampler or Resampler(resamples=resamples, level=level, seed=seed)
    outs = data.outcomes
    done = [o for o in outs if o.finished]
    graded = [o for o in done if o.correct is not None]
    sampled = [o for o in done if o.candidates and o.candidates_correct is not None]
    found = [o.detection for o in done if o.detection is not None]

    def mean(values: Sequence[float]) -> Estimate | None:
        return rs.mean(values) if values else None

    def ratio(num: Sequence[float], den: Sequence[float]) -> Estimate | None:
        return rs.ratio(num, den) if num and sum(den) else None

    passk: dict[int, Estimate] = {}
    if sampled:
        top = min(int(o.candidates or 0) for o in sampled)
        for k in (ks if ks is not None else default_ks(top)):
            if 1 <= k <= top:
                est = mean([pass_at_k(int(o.candidates or 0), int(o.candidates_correct or 0), k)
                            for o in sampled])
                if est is not None:
                    passk[k] = est
    solved_flags = [float(bool(o.correct)) for o in done]
    has_grades = bool(graded)
    return RunMetrics(
        run_id=data.run_id, tasks=len(outs), finished=len(done), graded=len(graded),
        solved=sum(1 for o in graded if o.correct),
        failed=sum(1 for o in done if o.status == "failed"),
        budget_limited=sum(1 for o in done if o.status == "budget_limited"),
        accuracy=mean([float(bool(o.correct)) for o in graded]),
        sample_accuracy=mean([(o.candidates_correct or 0) / (o.candidates or 1)
                              for o in sampled]),
        oracle=mean([float((o.candidates_correct or 0) > 0) for o in sampled]),
        pass_at_k=passk,
        precision=ratio([t for t, _, _ in found], [t + fp for t, fp, _ in found]),
        recall=ratio([t for t, _, _ in found], [t + fn for t, _, fn in found]),
        f1=ratio([2 * t for t, _, _ in found], [2 * t + fp + fn for t, fp, fn in found]),
        false_positives=mean([float(fp) for _, fp, _ in found]),
        tokens=mean([float(o.tokens) for o in done]),
        cost=mean([o.cost for o in done]),
        calls=mean([float(o.calls) for o in done]),
        latency_s=mean([o.latency_s for o in done]),
        tokens_per_solved=ratio([float(o.tokens) for o in done], solved_flags)
        if has_grades else None,
        cost_per_solved=ratio([o.cost for o in done], solved_flags) if has_grades else None,
        level=rs.level,
    )


# ------------------------------------------------------------------ paired comparisons

Metric = Literal["accuracy", "tokens", "cost", "calls"]

_VALUE: dict[str, Callable[[TaskOutcome], float | None]] = {
    "accuracy": lambda o: None if o.correct is None else float(o.correct),
    "tokens": lambda o: float(o.tokens),
    "cost": lambda o: o.cost,
    "calls": lambda o: float(o.calls),
}


@dataclass(frozen=True, slots=True)
class PairedComparison:
    """Run ``a`` against run ``b`` on the tasks both measured: ``a - b``."""

    a: str
    b: str
    metric: str
    n: int
    a_mean: float
    b_mean: float
    difference: Estimate
    p_value: float  # two-sided exact sign test
    wins: int  # tasks where a > b
    losses: int
    ties: int

    def as_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "metric": self.metric, "n": self.n,
                "a_mean": self.a_mean, "b_mean": self.b_mean,
                "difference": self.difference.as_dict(), "p_value": self.p_value,
                "wins": self.wins, "losses": self.losses, "ties": self.ties}


def compare_runs(a: RunData, b: RunData, *, metric: Metric = "accuracy",
                 resamples: int = 2000, level: float = 0.95, seed: int = 0,
                 resampler: Resampler | None = None) -> PairedComparison | None:
    """Paired difference ``a - b`` with a bootstrap interval over the common tasks (pairs
    resampled together) and the sign test; None if no task was measured in both."""
    value = _VALUE[metric]
    bs = b.by_task()
    xs: list[float] = []
    ys: list[float] = []
    for o in a.outcomes:
        other = bs.get(o.task_id)
        if other is None or not (o.finished and other.finished):
            continue
        x, y = value(o), value(other)
        if x is None or y is None:
            continue
        xs.append(x)
        ys.append(y)
    if not xs:
        return None
    rs = resampler or Resampler(resamples=resamples, level=level, seed=seed)
    diff = rs.paired_difference(xs, ys)
    wins = sum(x > y for x, y in zip(xs, ys, strict=True))
    losses = sum(x < y for x, y in zip(xs, ys, strict=True))
    return PairedComparison(a.run_id, b.run_id, metric, len(xs), sum(xs) / len(xs),
                            sum(ys) / len(ys), diff, sign_test(xs, ys), wins, losses,
                            len(xs) - wins - losses)


# ------------------------------------------------------------------ critics


@dataclass(frozen=True, slots=True)
class CriticConfusion:
    """A critic's verdicts against the grader's labels, over the candidates both judged.

    ``counts[(truth, verdict)]`` with truth ``"correct"``/``"incorrect"`` (the grader)
    and verdict ``"correct"``/``"incorrect"``/``"parse_failure"`` (the critic).
    Sensitivity is the share of wrong candidates the critic called incorrect;
    specificity the share of right ones it called correct; an unreadable reply counts
    against both.
    """

    role: str
    source: str
    counts: dict[tuple[str, str], int]
    accuracy: Estimate | None
    sensitivity: Estimate | None
    specificity: Estimate | None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, truth: str, verdict: str) -> int:
        return self.counts.get((truth, verdict), 0)

    def row_total(self, truth: str) -> int:
        return sum(v for (t, _), v in self.counts.items() if t == truth)

    def as_dict(self) -> dict[str, Any]:
        def est(e: Estimate | None) -> dict[str, float | int] | None:
            return None if e is None else e.as_dict()

        return {"role": self.role, "source": self.source,
                "counts": {f"{t}/{v}": n for (t, v), n in sorted(self.counts.items())},
                "accuracy": est(self.accuracy), "sensitivity": est(self.sensitivity),
                "specificity": est(self.specificity)}


def critic_confusions(verdicts: Iterable[CriticVerdict], *, resamples: int = 2000,
                      level: float = 0.95, seed: int = 0,
                      resampler: Resampler | None = None) -> list[CriticConfusion]:
    """One confusion matrix per (role, source), with rates whose intervals resample
    tasks (a task's verdicts stay together: they share its difficulty)."""
    rs = resampler or Resampler(resamples=resamples, level=level, seed=seed)
    groups: dict[tuple[str, str], list[CriticVerdict]] = {}
    for v in verdicts:
        groups.setdefault((v.role, v.source), []).append(v)
    out = []
    for (role, source), vs in groups.items():
        counts: dict[tuple[str, str], int] = {}
        for v in vs:
            key = ("correct" if v.truth else "incorrect", v.verdict)
            counts[key] = counts.get(key, 0) + 1
        out.append(CriticConfusion(
            role, source, counts,
            _clustered_rate(vs, lambda v: True, rs),
            _clustered_rate(vs, lambda v: not v.truth, rs),
            _clustered_rate(vs, lambda v: v.truth, rs)))
    return out


def _clustered_rate(vs: Sequence[CriticVerdict], keep: Callable[[CriticVerdict], bool],
                    rs: Resampler) -> Estimate | None:
    """Share of kept verdicts that agree with the grader, tasks resampled."""
    per_task: dict[str, list[float]] = {}
    for v in vs:
        if keep(v):
            agree = v.verdict == ("correct" if v.truth else "incorrect")
            per_task.setdefault(v.task_id, []).append(float(agree))
    if not per_task:
        return None
    tasks = list(per_task.values())
    return rs.ratio([sum(t) for t in tasks], [float(len(t)) for t in tasks])


# ------------------------------------------------------------------ Pareto front


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """Which (cost, accuracy) points no other point dominates (costs no more and is
    at least as accurate, strictly better in one); NaN points are never on it."""
    flags = []
    for i, (x, y) in enumerate(points):
        if math.isnan(x) or math.isnan(y):
            flags.append(False)
            continue
        dominated = any(
            (x2 <= x and y2 >= y and (x2 < x or y2 > y))
            for j, (x2, y2) in enumerate(points) if j != i and not (math.isnan(x2)
                                                                    or math.isnan(y2)))
        flags.append(not dominated)
    return flags

