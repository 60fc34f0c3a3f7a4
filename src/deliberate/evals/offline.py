"""Budget curves from recorded samples: accuracy against N without paying for N runs.

A replay file (``docs/replay-format.md``) holds, per task, a pool of completions a
model once wrote. Each is labelled once — by the file's own ``correct`` field, or by
grading it with the suite's verifier (code: the task's tests in the sandbox), the
grades cached in a file so a second evaluation is instant — and given the vote key
the ``self_consistency`` strategy would give it (:func:`~deliberate.verifiers.base.
parse_answer` then :func:`~deliberate.verifiers.base.vote_key`: math answers by their
normalised value, programs by syntax tree, i.e. identical programs up to formatting
and comments).

For each N of a grid, ``draws`` ordered random subsets of N samples are drawn per task
without replacement, seeded by (seed, task, N). That is the distribution of the first
N samples the ``replay`` model serves under a random seed, so each point is what a run
of the engine would give in expectation. Per subset:

- **sample accuracy**: the share of correct samples (pass@1; what a selection that
  ignores the content gets, whatever N);
- **oracle**: whether any sample is correct (pass@N; best-of-N with a perfect
  verifier);
- **majority**: whether the sample self-consistency returns is correct: the most
  voted answer, ties to the answer that appeared first, its first sample; with no
  parseable answer, the first sample (as the strategy returns).

Per task the mean over draws; over tasks the mean with a percentile-bootstrap
interval resampling tasks (:mod:`deliberate.evals.stats`). Beside each point its
exact expectation: the pool's mean label; the unbiased pass@k estimator
``1 - C(K-c, N)/C(K, N)``; and, where the subsets are few enough to enumerate, the
majority vote averaged over every subset (ties among equally voted answers split
evenly, which is what a random order gives). ``mc_se`` is the Monte Carlo standard
error of the subsampled mean, so a reader can see the draws agree with the exact
values.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from deliberate.errors import ConfigError, DataError, UsageError
from deliberate.evals.stats import Estimate, mean_ci, pass_at_k
from deliberate.models._matching import normalise_text
from deliberate.models.replay import ReplayRecord, read_replay
from deliberate.roles.test_writer import parse_tests
from deliberate.strategies.codet import best_set, consensus_sets, pool_tests
from deliberate.tasks.task import Suite, Task, TaskKind
from deliberate.verifiers.base import Verifier, grading_verifier, parse_answer, vote_key
from deliberate.verifiers.code import CodeExecution
from deliberate.verifiers.sandbox import Sandbox, SandboxError, SandboxLimits

__all__ = [
    "METRICS",
    "CodeTTests",
    "CurvePoint",
    "LabelCache",
    "LabelCounts",
    "LabelSource",
    "MetricPoint",
    "OfflineResult",
    "Pool",
    "PoolFigures",
    "RecordedPools",
    "budget_curve",
    "codet_pick",
    "default_cache_path",
    "default_grid",
    "evaluate_offline",
    "exact_codet",
    "exact_majority",
    "load_pools",
    "majority_pick",
    "plot_curve",
]

LabelSource = Literal["auto", "recorded", "grade"]
METRICS: tuple[str, ...] = ("sample", "oracle", "majority", "codet")
METRIC_NAMES: Mapping[str, str] = {
    "sample": "sample accuracy (pass@1)",
    "oracle": "oracle: any of N right (pass@N)",
    "majority": "majority vote of N",
    "codet": "CodeT: consensus on generated tests",
}
CACHE_FORMAT = "deliberate-offline-labels/1"
ProgressFn = Callable[[str, int, int], None]  # (what is running, done, total)


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True, slots=True)
class Pool:
    """One task's recorded samples: a label and a vote per sample, in recorded order.

    ``votes`` are small integers, equal for samples with the same answer (numbered by
    first appearance); None for a sample with no parseable answer.
    """

    task_id: str
    correct: tuple[bool, ...]
    votes: tuple[int | None, ...]
    passed: tuple[tuple[int, ...], ...] | None = None  # generated tests each sample passes

    def __post_init__(self) -> None:
        if not self.correct:
            raise DataError(f"task {self.task_id}: an empty pool")
        if len(self.votes) != len(self.correct):
            raise DataError(f"task {self.task_id}: {len(self.votes)} votes for "
                            f"{len(self.correct)} samples")
        if self.passed is not None and len(self.passed) != len(self.correct):
            raise DataError(f"task {self.task_id}: test results for {len(self.passed)} of "
                            f"{len(self.correct)} samples")

    @classmethod
    def of(cls, task_id: str, correct: Iterable[bool], keys: Iterable[str | None],
           passed: Iterable[Iterable[int]] | None = None) -> Pool:
        """A pool from labels and vote keys (strings; None = no answer), and optionally
        the indices of the generated tests each sample passes."""
        ids: dict[str, int] = {}
        votes = tuple(None if k is None else ids.setdefault(k, len(ids)) for k in keys)
        tests = None if passed is None else tuple(tuple(sorted(x)) for x in passed)
        return cls(task_id, tuple(bool(c) for c in correct), votes, tests)

    @property
    def size(self) -> int:
        return len(self.correct)

    @property
    def n_correct(self) -> int:
        return sum(self.correct)


def majority_pick(votes: Sequence[int | None], order: Sequence[int]) -> int:
    """The sample self-consistency returns from the samples ``order`` (in that order).

    The most voted answer wins, ties to the answer that appeared first; the winner's
    first sample is returned. With no parseable answer at all, the first sample.
    """
    tally: dict[int, int] = {}
    first: dict[int, int] = {}
    for i in order:
        v = votes[i]
        if v is None:
            continue
        tally[v] = tally.get(v, 0) + 1
        first.setdefault(v, i)
    if not tally:
        return order[0]
    return first[max(first, key=tally.__getitem__)]  # max keeps the earliest of equals


def codet_pick(passed: Sequence[tuple[int, ...]], order: Sequence[int]) -> int:
    """The sample the ``codet`` strategy returns from the samples ``order``: consensus
    sets by identical passed tests, the best set by its rule, the set's first sample."""
    sets = consensus_sets([passed[i] for i in order])
    return order[best_set(sets).members[0]]


def _expected_vote(pool: Pool, subset: Sequence[int]) -> float:
    """Majority-vote correctness of ``subset`` averaged over every order of it."""
    labels: dict[int, list[bool]] = {}
    for i in subset:
        v = pool.votes[i]
        if v is not None:
            labels.setdefault(v, []).append(pool.correct[i])
    if not labels:  # the first sample is returned: any one of them, evenly
        return sum(pool.correct[i] for i in subset) / len(subset)
    top = max(len(x) for x in labels.values())
    tied = [x for x in labels.values() if len(x) == top]
    # Each tied answer is equally likely to appear first, and its first sample is
    # equally likely to be any of its samples.
    return sum(sum(x) / len(x) for x in tied) / len(tied)


def _expected_codet(pool: Pool, subset: Sequence[int]) -> float:
    """CodeT's pick's correctness on ``subset`` averaged over every order of it."""
    assert pool.passed is not None
    groups: dict[tuple[int, ...], list[bool]] = {}
    for i in subset:
        groups.setdefault(pool.passed[i], []).append(pool.correct[i])
    ranked = [(len(x) * len(t), len(x), len(t)) for t, x in groups.items()]
    top = max(ranked)
    # Sets tied on (score, size, tests) have equal sizes: each is equally likely to hold
    # the earliest sample, and the set's first sample is any of its members evenly.
    tied = [x for x, r in zip(groups.values(), ranked, strict=True) if r == top]
    return sum(sum(x) / len(x) for x in tied) / len(tied)


def _exact(pool: Pool, n: int, limit: int, expected: Callable[[Pool, Sequence[int]], float]
           ) -> float | None:
    if not 1 <= n <= pool.size:
        raise ValueError(f"n must be in 1..{pool.size}, got {n}")
    count = math.comb(pool.size, n)
    if count > limit:
        return None
    return sum(expected(pool, s) for s in combinations(range(pool.size), n)) / count


def exact_majority(pool: Pool, n: int, limit: int = 5000) -> float | None:
    """Expected majority-vote correctness over all size-``n`` subsets in random order.

    None when there are more than ``limit`` subsets to enumerate.
    """
    return _exact(pool, n, limit, _expected_vote)


def exact_codet(pool: Pool, n: int, limit: int = 5000) -> float | None:
    """Expected correctness of CodeT's pick over all size-``n`` subsets in random order;
    None when there are more than ``limit`` subsets, or the pool has no test results."""
    return None if pool.passed is None else _exact(pool, n, limit, _expected_codet)


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True, slots=True)
class LabelCounts:
    """Where the labels came from: the file, grading now, the cache; undecided ones
    (the verifier could not tell, e.g. a sandbox failure) count as wrong."""

    recorded: int = 0
    graded: int = 0
    cached: int = 0
    undecided: int = 0

    def as_dict(self) -> dict[str, int]:
        return {"recorded": self.recorded, "graded": self.graded, "cached": self.cached,
                "undecided": self.undecided}


class LabelCache:
    """Grades of recorded samples kept in a JSON file, so a sample is graded once.

    A key covers the verifier, the task's id, answer and tests, and the sample's
    text: change any and the sample is graded again. Undecided grades are not kept.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._labels: dict[str, bool] = {}
        self._passed: dict[str, tuple[int, ...]] = {}
        self._dirty = False
        if path is not None and path.exists():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise DataError(f"cannot read the label cache {path}: {exc}; "
                                "delete it to grade again") from exc
            if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
                raise DataError(f"{path} is not a label cache ({CACHE_FORMAT})")
            labels = data.get("labels")
            if isinstance(labels, dict):
                self._labels = {str(k): bool(v) for k, v in labels.items()
                                if isinstance(v, bool)}
            passed = data.get("passed")
            if isinstance(passed, dict):
                self._passed = {str(k): tuple(int(i) for i in v) for k, v in passed.items()
                                if isinstance(v, list)}

    def __len__(self) -> int:
        return len(self._labels) + len(self._passed)

    @staticmethod
    def key(verifier: str, task: Task, text: str) -> str:
        blob = json.dumps([verifier, task.id, task.kind, task.answer, task.tests,
                           task.entry_point, text], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def get(self, key: str) -> bool | None:
        return self._labels.get(key)

    def put(self, key: str, value: bool) -> None:
        self._labels[key] = value
        self._dirty = True

    def get_passed(self, key: str) -> tuple[int, ...] | None:
        """The generated tests a program passed (CodeT), by :meth:`passed_key`."""
        return self._passed.get(key)

    def put_passed(self, key: str, value: tuple[int, ...]) -> None:
        self._passed[key] = value
        self._dirty = True

    @staticmethod
    def passed_key(task: Task, program: str, tests: Sequence[str], limits: str) -> str:
        blob = json.dumps(["codet", task.id, task.entry_point, task.prompt, program,
                           list(tests), limits], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def save(self) -> None:
        """Write the file (atomically) if anything was added."""
        if self.path is None or not self._dirty:
            return
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        data = {"format": CACHE_FORMAT, "labels": self._labels,
                "passed": {k: list(v) for k, v in self._passed.items()}}
        tmp.write_text(json.dumps(data), encoding="utf-8")
        tmp.replace(self.path)
        self._dirty = False


def default_cache_path(replay: str | Path) -> Path:
    """Beside the replay file: ``NAME.labels.json``."""
    p = Path(replay)
    return p.with_name(p.name + ".labels.json")


@dataclass(frozen=True, slots=True)
class CodeTTests:
    """Recorded model-written tests for CodeT selection, and how the strategy uses them.

    ``path`` is a replay file of test sets (one record per task, e.g. from
    ``codet_tests_to_replay``); the first ``sets`` of each task's record (all by
    default), in recorded order, are pooled as the ``codet`` strategy pools them.
    """

    path: str | Path
    sets: int | None = None
    tests_per_set: int = 5
    max_tests: int = 200
    timeout_s: float = 5.0
    per_test_timeout_s: float = 1.0


@dataclass(frozen=True, slots=True)
class RecordedPools:
    """The labelled pools of a replay file, and how they were labelled."""

    pools: tuple[Pool, ...]
    source: str
    labels: LabelCounts
    unmatched: tuple[str, ...] = ()  # records with no task in the suite (left out)
    cache: str | None = None
    codet: Mapping[str, Any] | None = None  # CodeT settings and counts, when tests were given


def _match(records: Sequence[ReplayRecord], suite: Suite | None,
           kind: TaskKind) -> tuple[list[tuple[ReplayRecord, Task]], list[str]]:
    """Each record with its task: by task id, else by prompt; without a suite, a bare
    task of ``kind`` made from the record (enough to parse answers, not to grade)."""
    if suite is None:
        return [(r, Task(id=r.key, prompt=r.prompt or "", kind=kind)) for r in records], []
    by_id = {t.id: t for t in suite}
    by_prompt: dict[str, Task] = {}
    for t in suite:
        by_prompt.setdefault(normalise_text(t.prompt), t)
    pairs: list[tuple[ReplayRecord, Task]] = []
    unmatched: list[str] = []
    for r in records:
        task = by_id.get(r.task_id) if r.task_id is not None else None
        if task is None and r.prompt is not None:
            task = by_prompt.get(normalise_text(r.prompt))
        if task is None:
            unmatched.append(r.label)
        else:
            pairs.append((r, task))
    return pairs, unmatched


async def load_pools(
    path: str | Path,
    *,
    suite: Suite | None = None,
    kind: TaskKind = "math",
    labels: LabelSource = "auto",
    verifier: str = "auto",
    cache: Path | Literal["default"] | None = "default",
    codet: CodeTTests | None = None,
    concurrency: int = 16,
    progress: ProgressFn | None = None,
) -> RecordedPools:
    """Read a replay file and label every recorded sample once.

    ``labels``: ``recorded`` takes the file's ``correct`` fields (all must be set);
    ``grade`` grades every sample with ``verifier`` on the suite's task; ``auto``
    takes a record's labels when all its samples have one, else grades the record.
    Records are matched to the suite's tasks by task id, else by prompt; records
    with no task are left out (listed in ``unmatched``). Without a suite, tasks of
    ``kind`` are made from the records, for vote keys only. Identical texts of a
    task are graded once; grades go to ``cache`` (default: beside the file).
    With ``codet``, every distinct program also runs once against its task's pooled
    generated tests (results cached the same way), for CodeT selection.
    """
    if labels not in ("auto", "recorded", "grade"):
        raise ConfigError(f"labels must be auto, recorded or grade, not {labels!r}")
    records = read_replay(path)
    if not records:
        raise DataError(f"{path}: no records")
    pairs, unmatched = _match(records, suite, kind)
    if not pairs:
        raise DataError(f"{path}: none of its {len(records)} records matches a task of the "
                        f"suite {suite.name if suite else ''!r} (by task id or prompt)")

    def needs_grading(r: ReplayRecord) -> bool:
        known = all(c.correct is not None for c in r.completions)
        if labels == "recorded" and not known:
            raise DataError(f"{path}: record {r.label} has samples without a 'correct' "
                            "label; grade them (labels=grade or auto, with a suite)")
        return labels == "grade" or (labels == "auto" and not known)

    to_grade = [(r, t) for r, t in pairs if needs_grading(r)]
    if to_grade and suite is None:
        raise UsageError(f"{path}: {len(to_grade)} records have unlabelled samples; give the "
                         "suite whose tests or answers grade them")
    if codet is not None and suite is None:
        raise UsageError("CodeT selection runs programs against the task: give the suite")
    cache_path = default_cache_path(path) if cache == "default" else cache
    store = LabelCache(cache_path if to_grade or codet is not None else None)
    graded = await _grade(to_grade, verifier, store, concurrency, progress)
    passed: dict[str, list[tuple[int, ...]]] = {}
    codet_info: dict[str, Any] | None = None
    if codet is not None:
        passed, codet_info = await _codet_results(pairs, codet, store, concurrency, progress)

    pools: list[Pool] = []
    counts = {"recorded": 0, "graded": 0, "cached": 0, "undecided": 0}
    for r, task in pairs:
        texts = [c.text for c in r.completions]
        if (r.key, task.id) in graded:
            correct_or_none, how = graded[(r.key, task.id)]
            for h in how:
                counts[h] += 1
            correct = [bool(x) for x in correct_or_none]
        else:
            correct = [bool(c.correct) for c in r.completions]
            counts["recorded"] += len(texts)
        keys = [vote_key(task, parse_answer(task, t)) for t in texts]
        pools.append(Pool.of(task.id, correct, keys, passed.get(task.id)))
    used_cache = (to_grade or codet is not None) and cache_path is not None
    return RecordedPools(tuple(pools), str(path), LabelCounts(**counts), tuple(unmatched),
                         str(cache_path) if used_cache else None, codet_info)


async def _codet_results(
    pairs: Sequence[tuple[ReplayRecord, Task]], codet: CodeTTests, cache: LabelCache,
    concurrency: int, progress: ProgressFn | None,
) -> tuple[dict[str, list[tuple[int, ...]]], dict[str, Any]]:
    """Per task, the pooled generated tests each sample passes; each distinct program
    runs once in the sandbox (as the strategy runs it), results cached."""
    tests_records = read_replay(codet.path)
    by_task, _ = _match(tests_records, Suite.of("tasks", [t for _, t in pairs]), "code")
    tests_of = {task.id: r for r, task in by_task}
    executor = CodeExecution(Sandbox(SandboxLimits(timeout_s=codet.timeout_s)),
                             timeout_s=codet.timeout_s,
                             per_test_timeout_s=codet.per_test_timeout_s)
    limits = f"{codet.timeout_s}/{codet.per_test_timeout_s}"
    pools: dict[str, list[str]] = {}
    jobs: dict[str, tuple[Task, str, list[str]]] = {}
    plan: list[tuple[Task, list[str]]] = []
    hits: set[str] = set()
    for r, task in pairs:
        record = tests_of.get(task.id)
        if record is None:
            raise DataError(f"{codet.path}: no recorded tests for task {task.id}")
        sets = record.completions[: codet.sets] if codet.sets else record.completions
        pool = pool_tests([parse_tests(c.text, task.entry_point) for c in sets],
                          codet.tests_per_set, codet.max_tests)
        pools[task.id] = pool
        keys = []
        for c in r.completions:
            program = parse_answer(task, c.text) or ""
            key = LabelCache.passed_key(task, program, pool, limits)
            if pool and cache.get_passed(key) is None and key not in jobs:
                jobs[key] = (task, program, pool)
            elif pool:
                hits.add(key)
            keys.append(key)
        plan.append((task, keys))

    fresh: dict[str, tuple[int, ...]] = {}
    errors = 0
    done = 0
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(key: str, task: Task, program: str, tests: list[str]) -> None:
        nonlocal done, errors
        result: tuple[int, ...] = ()
        if program:
            try:
                async with gate:
                    report = await executor.run_tests(task, program, tests)
                result = tuple(i for i, ok in enumerate(report.passed_mask) if ok)
            except SandboxError:
                errors += 1
            else:
                cache.put_passed(key, result)
        else:
            cache.put_passed(key, result)
        fresh[key] = result
        done += 1
        if progress is not None:
            progress("running programs on generated tests", done, len(jobs))
        if done % 256 == 0:
            cache.save()

    try:
        await asyncio.gather(*(one(k, *job) for k, job in jobs.items()))
    finally:
        cache.save()
    out: dict[str, list[tuple[int, ...]]] = {}
    for task, keys in plan:
        out[task.id] = [fresh[k] if k in fresh else cache.get_passed(k) or () for k in keys]
    sizes = [len(p) for p in pools.values()]
    info = {"tests": str(codet.path), "sets": codet.sets, "tests_per_set": codet.tests_per_set,
            "max_tests": codet.max_tests, "timeout_s": codet.timeout_s,
            "per_test_timeout_s": codet.per_test_timeout_s,
            "pooled_tests": {"min": min(sizes), "max": max(sizes),
                             "mean": sum(sizes) / len(sizes)},
            "tasks_without_tests": sum(s == 0 for s in sizes),
            "run_now": len(jobs) - errors, "cached": len(hits), "sandbox_errors": errors}
    return out, info


async def _grade(
    pairs: Sequence[tuple[ReplayRecord, Task]], spec: str, cache: LabelCache,
    concurrency: int, progress: ProgressFn | None,
) -> dict[tuple[str, str], tuple[list[bool | None], list[str]]]:
    """Labels of every sample of ``pairs`` (and how each was obtained), by record."""
    graders: dict[str, Verifier] = {}
    jobs: dict[str, tuple[Verifier, Task, str]] = {}  # cache key -> what to grade
    plan: list[tuple[ReplayRecord, Task, list[str]]] = []
    for r, task in pairs:
        v = grading_verifier(spec, task)
        if v is None:
            raise ConfigError(f"verifier {spec!r} does not grade task {task.id}")
        v = graders.setdefault(v.name, v)
        keys = [LabelCache.key(v.name, task, c.text) for c in r.completions]
        for k, c in zip(keys, r.completions, strict=True):
            if cache.get(k) is None and k not in jobs:
                jobs[k] = (v, task, c.text)
        plan.append((r, task, keys))

    fresh: dict[str, bool | None] = {}
    done = 0
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(key: str, v: Verifier, task: Task, text: str) -> None:
        nonlocal done
        async with gate:
            res = await v.verify(task, text, parse_answer(task, text))
        fresh[key] = res.passed
        if res.passed is not None:
            cache.put(key, res.passed)
        done += 1
        if progress is not None:
            progress("grading recorded samples", done, len(jobs))
        if done % 256 == 0:
            cache.save()

    try:
        await asyncio.gather(*(one(k, *job) for k, job in jobs.items()))
    finally:
        cache.save()

    out: dict[tuple[str, str], tuple[list[bool | None], list[str]]] = {}
    for r, task, keys in plan:
        values: list[bool | None] = []
        how: list[str] = []
        for k in keys:
            if k in fresh:
                value = fresh[k]
                how.append("graded" if value is not None else "undecided")
            else:
                value = cache.get(k)
                how.append("cached")
            values.append(value)
        out[(r.key, task.id)] = (values, how)
    return out


# --------------------------------------------------------------------------- curves


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One metric at one N: the subsampled mean with its interval over tasks, the
    exact expectation where known, and the Monte Carlo standard error of the mean."""

    estimate: Estimate
    exact: float | None
    mc_se: float

    def as_dict(self) -> dict[str, Any]:
        return {**self.estimate.as_dict(), "exact": self.exact, "mc_se": self.mc_se}


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """Every metric at one N."""

    n: int
    metrics: Mapping[str, MetricPoint]

    def __getitem__(self, metric: str) -> MetricPoint:
        return self.metrics[metric]

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, **{m: p.as_dict() for m, p in self.metrics.items()}}


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """The whole pool of every task, no subsampling: what an independent count checks."""

    sample_accuracy: Estimate  # mean label
    oracle: Estimate  # any sample correct
    majority: Estimate  # vote over the whole pool in recorded order (ties: first recorded)
    majority_any_order: Estimate  # the same vote averaged over random orders
    codet: Estimate | None = None  # CodeT's pick from the whole pool in recorded order

    def as_dict(self) -> dict[str, Any]:
        return {"sample_accuracy": self.sample_accuracy.as_dict(),
                "oracle": self.oracle.as_dict(), "majority": self.majority.as_dict(),
                "majority_any_order": self.majority_any_order.as_dict(),
                "codet": self.codet.as_dict() if self.codet is not None else None}


@dataclass(frozen=True, slots=True)
class OfflineResult:
    """Budget curves of one recorded dataset, with the settings that made them."""

    source: str
    pools: RecordedPools
    pool: PoolFigures
    curve: tuple[CurvePoint, ...]
    draws: int
    seed: int
    resamples: int
    level: float
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tasks(self) -> int:
        return len(self.pools.pools)

    def point(self, n: int) -> CurvePoint:
        for p in self.curve:
            if p.n == n:
                return p
        raise KeyError(f"N = {n} is not on the curve ({[p.n for p in self.curve]})")

    def as_dict(self) -> dict[str, Any]:
        sizes = [p.size for p in self.pools.pools]
        return {
            "source": self.source,
            **dict(self.meta),
            "tasks": self.tasks,
            "pool_size": {"min": min(sizes), "max": max(sizes), "mean": sum(sizes) / len(sizes)},
            "labels": self.pools.labels.as_dict(),
            "label_cache": self.pools.cache,
            "codet": dict(self.pools.codet) if self.pools.codet is not None else None,
            "unmatched": list(self.pools.unmatched),
            "settings": {"draws": self.draws, "seed": self.seed, "resamples": self.resamples,
                         "level": self.level},
            "pool": self.pool.as_dict(),
            "curve": [p.as_dict() for p in self.curve],
            "per_task": [
                {"task_id": p.task_id, "pool": p.size, "correct": p.n_correct,
                 "answers": len({v for v in p.votes if v is not None}),
                 "unparsed": sum(v is None for v in p.votes),
                 "majority_correct": p.correct[majority_pick(p.votes, range(p.size))]}
                for p in self.pools.pools],
        }


def default_grid(smallest_pool: int) -> tuple[int, ...]:
    """Every N up to a pool of 10; beyond, powers of two and the pool size itself."""
    if smallest_pool < 1:
        raise ValueError("a pool needs at least one sample")
    if smallest_pool <= 10:
        return tuple(range(1, smallest_pool + 1))
    grid = [1 << i for i in range(smallest_pool.bit_length()) if 1 << i < smallest_pool]
    return (*grid, smallest_pool)


def _subsample(pool: Pool, n: int, draws: int, seed: int,
               codet: bool) -> tuple[list[float], list[float]]:
    """Per metric, the mean over ``draws`` random ordered subsets and its variance."""
    rng = random.Random(f"deliberate-offline:{seed}:{pool.task_id}:{n}")
    k = 4 if codet else 3
    sums = [0.0] * k
    squares = [0.0] * k
    population = range(pool.size)
    correct, votes, passed = pool.correct, pool.votes, pool.passed
    for _ in range(draws):
        order = rng.sample(population, n)
        hits = sum(correct[i] for i in order)
        values = [hits / n, float(hits > 0), float(correct[majority_pick(votes, order)])]
        if codet:
            assert passed is not None
            values.append(float(correct[codet_pick(passed, order)]))
        for m, x in enumerate(values):
            sums[m] += x
            squares[m] += x * x
    means = [s / draws for s in sums]
    var = [max(0.0, (q - draws * mu * mu) / (draws - 1)) if draws > 1 else 0.0
           for q, mu in zip(squares, means, strict=True)]
    return means, var


def _mean_or_none(values: Iterable[float | None], count: int) -> float | None:
    total = 0.0
    for v in values:
        if v is None:
            return None
        total += v
    return total / count


def budget_curve(
    pools: RecordedPools,
    ns: Sequence[int] | None = None,
    *,
    draws: int = 200,
    seed: int = 0,
    resamples: int = 2000,
    level: float = 0.95,
    exact_limit: int = 5000,
    meta: Mapping[str, Any] | None = None,
) -> OfflineResult:
    """Accuracy against N from subsampling each task's pool (see the module doc).

    The ``codet`` metric is drawn when every pool carries generated-test results.
    """
    if draws < 1:
        raise ConfigError("draws must be at least 1")
    items = pools.pools
    smallest = min(p.size for p in items)
    grid = tuple(sorted(set(ns))) if ns else default_grid(smallest)
    if grid[0] < 1:
        raise ConfigError(f"N must be at least 1, got {grid[0]}")
    if grid[-1] > smallest:
        raise ConfigError(f"N = {grid[-1]} is more than the smallest pool ({smallest} samples); "
                          f"use N up to {smallest}")
    codet = all(p.passed is not None for p in items)
    metrics = METRICS if codet else METRICS[:3]
    tasks = len(items)

    def ci(values: Sequence[float]) -> Estimate:
        return mean_ci(values, resamples=resamples, level=level, seed=seed)

    curve: list[CurvePoint] = []
    for n in grid:
        per_task: list[list[float]] = [[] for _ in metrics]
        var_sum = [0.0] * len(metrics)
        for p in items:
            means, var = _subsample(p, n, draws, seed, codet)
            for m in range(len(metrics)):
                per_task[m].append(means[m])
                var_sum[m] += var[m]
        exact: dict[str, float | None] = {
            "sample": sum(p.n_correct / p.size for p in items) / tasks,
            "oracle": sum(pass_at_k(p.size, p.n_correct, n) for p in items) / tasks,
            "majority": _mean_or_none((exact_majority(p, n, exact_limit) for p in items),
                                      tasks),
            "codet": _mean_or_none((exact_codet(p, n, exact_limit) for p in items), tasks),
        }
        curve.append(CurvePoint(n, {
            name: MetricPoint(ci(per_task[m]), exact[name],
                              math.sqrt(var_sum[m] / draws) / tasks)
            for m, name in enumerate(metrics)}))

    whole = [range(p.size) for p in items]
    figures = PoolFigures(
        sample_accuracy=ci([p.n_correct / p.size for p in items]),
        oracle=ci([float(p.n_correct > 0) for p in items]),
        majority=ci([float(p.correct[majority_pick(p.votes, w)])
                     for p, w in zip(items, whole, strict=True)]),
        majority_any_order=ci([_expected_vote(p, w) for p, w in zip(items, whole, strict=True)]),
        codet=ci([float(p.correct[codet_pick(p.passed, w)]) for p, w in zip(
            items, whole, strict=True) if p.passed is not None]) if codet else None,
    )
    return OfflineResult(pools.source, pools, figures, tuple(curve), draws, seed, resamples,
                         level, dict(meta or {}))


async def evaluate_offline(
    path: str | Path,
    *,
    suite: Suite | None = None,
    kind: TaskKind = "math",
    labels: LabelSource = "auto",
    verifier: str = "auto",
    cache: Path | Literal["default"] | None = "default",
    ns: Sequence[int] | None = None,
    draws: int = 200,
    seed: int = 0,
    resamples: int = 2000,
    level: float = 0.95,
    codet: CodeTTests | None = None,
    concurrency: int = 16,
    progress: ProgressFn | None = None,
) -> OfflineResult:
    """Label a replay file's pools (:func:`load_pools`), then draw the budget curve."""
    pools = await load_pools(path, suite=suite, kind=kind, labels=labels, verifier=verifier,
                             cache=cache, codet=codet, concurrency=concurrency,
                             progress=progress)
    meta: dict[str, Any] = {"suite": suite.name if suite is not None else None,
                            "kind": None if suite is not None else kind}
    return budget_curve(pools, ns, draws=draws, seed=seed, resamples=resamples, level=level,
                        meta=meta)


# --------------------------------------------------------------------------- plot

_STYLE: Mapping[str, tuple[str, str]] = {
    "oracle": ("#1b7837", "o"),
    "codet": ("#762a83", "D"),
    "majority": ("#2166ac", "s"),
    "sample": ("#b2182b", "^"),
}


def plot_curve(result: OfflineResult, path: str | Path, *, title: str | None = None) -> Path:
    """Accuracy against N with interval bands, one line per metric, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, PercentFormatter

    ns = [p.n for p in result.curve]
    fig, ax = plt.subplots(figsize=(7.5, 5.2), dpi=120)
    try:
        for metric in _STYLE:
            if metric not in result.curve[0].metrics:
                continue
            colour, marker = _STYLE[metric]
            pts = [p[metric] for p in result.curve]
            ax.fill_between(ns, [100 * q.estimate.low for q in pts],
                            [100 * q.estimate.high for q in pts], color=colour, alpha=0.15,
                            linewidth=0)
            label = METRIC_NAMES[metric]
            if metric == "codet" and result.pools.codet is not None:
                sets = result.pools.codet.get("sets")
                label += f" ({sets or 'all recorded'} test sets)"
            ax.plot(ns, [100 * q.estimate.value for q in pts], color=colour, marker=marker,
                    markersize=5, linewidth=1.8, label=label)
        exact = [(p.n, p["oracle"].exact) for p in result.curve if p["oracle"].exact is not None]
        if exact:
            ax.plot([n for n, _ in exact], [100 * float(v or 0) for _, v in exact],
                    linestyle="none", marker="x", color="black", markersize=6,
                    label="unbiased pass@k (exact)")
        if len(ns) > 1 and ns[-1] / ns[0] >= 16:
            ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(ns))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(n) for n in ns])
        ax.set_xlim(ns[0] * 0.9 if len(ns) > 1 else ns[0] - 1, ns[-1] * 1.05 + 0.1)
        ax.set_ylim(0, 100)
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))
        ax.set_xlabel("N: samples drawn per task from the recorded pool")
        ax.set_ylabel("accuracy (% of tasks)")
        level = round(100 * result.level)
        ax.set_title(title or Path(result.source).name, fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=9,
                  frameon=False)
        ax.text(0.99, 0.98, f"{result.tasks} tasks, {result.draws} random subsets per task "
                f"and N\nbands: {level}% interval, tasks resampled", transform=ax.transAxes,
                ha="right", va="top", fontsize=8, color="#444444",
                bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9})
        fig.tight_layout()
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out)
    finally:
        plt.close(fig)
    return out
