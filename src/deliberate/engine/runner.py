"""Runs a strategy over a suite: one tree per task, every call journalled, resumable.

The model stack for each distinct model string is built once per run::

    Budget(task ledger → run ledger)      per task
      Journal(run, task)                  per task: replay on resume, record before use
        Cache(SQLite, per sample)         shared
          Retry(backoff, Retry-After)     shared
            ConcurrencyLimit              shared
              backend (openai, sim, replay, litellm, …)

Tasks run concurrently up to ``config.concurrency``. Errors a user must fix (the
endpoint is unreachable, the key is refused) stop the whole run with one message;
any other model error fails only its task.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.config import RunConfig
from deliberate.engine.context import RoleFactory, TaskContext, TaskTree
from deliberate.engine.journal import TaskJournal
from deliberate.engine.observe import ObservedModel, RunObserver
from deliberate.errors import (
    BudgetExceeded,
    ConfigError,
    DeliberateError,
    ModelAuthError,
    ModelConnectionError,
    ModelError,
    StoreError,
    UsageError,
)
from deliberate.models.base import ChatModel
from deliberate.models.budget import BudgetedModel, Ledger, PriceTable
from deliberate.models.cache import CachedModel, ResponseCache
from deliberate.models.middleware import ConcurrencyLimitModel, RetryModel
from deliberate.models.registry import build_model, default_model_string
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Generator, Judge
from deliberate.store import Store
from deliberate.strategies.base import Strategy, StrategyResult, build_strategy
from deliberate.tasks.registry import load_suite
from deliberate.tasks.task import Suite, Task
from deliberate.tree import AttemptRecord, NodeRecord, RunRecord, make_id
from deliberate.verifiers.base import Verifier, VerifierResult, grading_verifier

log = logging.getLogger(__name__)

FINISHED = ("done", "budget_limited")
# Roles whose nodes are whole candidate answers: graded for the run's sample accuracy.
CANDIDATE_ROLES = frozenset({"generator", "refiner", "debater"})


def data_home() -> Path:
    return Path(os.environ.get("DELIBERATE_HOME", Path.home() / ".local/share/deliberate"))


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


@dataclass(slots=True)
class Progress:
    total: int
    done: int = 0
    graded: int = 0
    correct: int = 0
    failed: int = 0
    budget_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.graded if self.graded else None


@dataclass(slots=True)
class RunResult:
    run_id: str
    store_url: str
    config: RunConfig
    attempts: list[AttemptRecord]
    summary: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[Progress, AttemptRecord | None], None]


class _FatalError(Exception):
    """Carries an error that stops the whole run out of the task group."""

    def __init__(self, err: DeliberateError) -> None:
        super().__init__(str(err))
        self.err = err


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarise(attempts: list[AttemptRecord], wall_s: float | None = None) -> dict[str, Any]:
    graded = [a for a in attempts if a.correct is not None]
    correct = sum(1 for a in graded if a.correct)
    out: dict[str, Any] = {
        "tasks": len(attempts),
        "done": sum(1 for a in attempts if a.status == "done"),
        "budget_limited": sum(1 for a in attempts if a.status == "budget_limited"),
        "failed": sum(1 for a in attempts if a.status == "failed"),
        "graded": len(graded),
        "correct": correct,
        "accuracy": correct / len(graded) if graded else None,
        "sample_accuracy": _mean([a.stats["candidates_correct"] / a.stats["candidates"]
                                  for a in attempts if a.stats.get("candidates")]),
        "oracle_accuracy": _mean([float(a.stats["candidates_correct"] > 0)
                                  for a in attempts if a.stats.get("candidates")]),
        "prompt_tokens": sum(a.prompt_tokens for a in attempts),
        "completion_tokens": sum(a.completion_tokens for a in attempts),
        "calls": sum(a.calls for a in attempts),
        "cost": sum(a.cost for a in attempts),
    }
    counts = [a.stats["metrics"] for a in attempts if a.stats.get("metrics")]
    if counts and all(k in c for c in counts for k in ("tp", "fp", "fn")):
        tp = sum(c["tp"] for c in counts)
        fp = sum(c["fp"] for c in counts)
        fn = sum(c["fn"] for c in counts)
        p = tp / (tp + fp) if tp + fp else None
        r = tp / (tp + fn) if tp + fn else None
        out["detection"] = {
            "tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "fp_per_task": fp / len(counts),
        }
    if wall_s is not None:
        out["wall_s"] = wall_s
    return out


class Engine:
    """Runs one :class:`RunConfig`; ``models`` overrides backends by model string (tests).

    Embedding programs (the server) may also give the ``strategy`` object to run
    instead of the one the config names, and an ``observer`` that sees every model
    call of the run as it happens (:mod:`deliberate.engine.observe`).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        store: Store | None = None,
        models: dict[str, ChatModel] | None = None,
        suite: Suite | None = None,
        progress: ProgressFn | None = None,
        strategy: Strategy | None = None,
        observer: RunObserver | None = None,
    ) -> None:
        self.config = config
        self._store = store
        self._own_store = store is None
        self._model_overrides = models or {}
        self._suite = suite
        self._progress = progress
        self._strategy = strategy
        self._observer = observer
        self._stacks: dict[str, ChatModel] = {}
        self._cache: ResponseCache | None = None
        self._prompts = Prompts(config.prompts_dir)
        self._graders: dict[str, Verifier] = {}
        self.replayed_calls = 0  # calls answered from the journal on resume
        self.recorded_calls = 0  # calls made and recorded by this process

    # -- set-up -------------------------------------------------------------------

    def _model_string(self, role_model: str | None) -> str:
        return role_model or self.config.model or default_model_string()

    def _stack(self, spec: str, suite: Suite) -> ChatModel:
        if spec in self._stacks:
            return self._stacks[spec]
        model = self._model_overrides.get(spec) or build_model(spec, suite)
        model = ConcurrencyLimitModel(model, self.config.max_inflight_calls)
        model = RetryModel(model, self.config.retry.policy(), seed=self.config.seed)
        if self.config.cache:
            if self._cache is None:
                path = self.config.cache_path or str(data_home() / "cache.db")
                self._cache = ResponseCache(path)
            model = CachedModel(model, self._cache)
        self._stacks[spec] = model
        return model

    def _grader(self, task: Task) -> Verifier | None:
        """The grading verifier for ``task``, one instance per kind for the whole run, so
        that e.g. all code grading shares one sandbox and its concurrency limit."""
        v = grading_verifier(self.config.verifier, task)
        return None if v is None else self._graders.setdefault(v.name, v)

    # -- running ------------------------------------------------------------------

    async def run(self, run_id: str | None = None) -> RunResult:
        store = self._store or Store.open(self.config.store)
        self._store = store
        await store.start()
        try:
            return await self._run(store, run_id)
        finally:
            for m in self._stacks.values():
                await m.aclose()
            if self._cache is not None:
                # the cache's writer may still hold queued entries: wait off the loop
                await asyncio.to_thread(self._cache.close)
            if self._own_store:
                await store.aclose()
            else:
                await store.flush()

    async def _run(self, store: Store, run_id: str | None) -> RunResult:
        cfg = self.config
        suite = self._suite or load_suite(cfg.suite, limit=cfg.limit)
        if cfg.limit is not None:
            suite = suite.head(cfg.limit)
        strategy = self._strategy or build_strategy(cfg.strategy, cfg.strategy_params)
        if len(suite):
            grading_verifier(cfg.verifier, suite.tasks[0])  # a bad spec fails before any call
        prices = cfg.price_table()
        resumed: dict[str, AttemptRecord] = {}
        if run_id is None:
            run_id = new_run_id()
            await store.create_run(RunRecord(id=run_id, config=cfg.model_dump(mode="json")))
        else:
            existing = await store.get_run(run_id)
            if existing is None:
                await store.create_run(RunRecord(id=run_id, config=cfg.model_dump(mode="json")))
            else:
                resumed = {a.task_id: a for a in await store.get_attempts(run_id)}
                await store.update_run(run_id, status="running")

        self._prompts = Prompts(cfg.prompts_dir)
        # Build the generator's model now, so a bad model string or a missing key is
        # reported before any task starts; other roles' models are built on first use.
        self._stack(self._model_string(cfg.generator.model), suite)
        run_ledger = Ledger(limits=cfg.run_budget.limits())

        progress = Progress(total=len(suite))
        attempts: dict[str, AttemptRecord] = {}
        for a in resumed.values():
            if a.status in FINISHED:
                attempts[a.task_id] = a
                self._count(progress, a)
                # A resumed run's ledger starts from what finished tasks consumed.
                run_ledger.prompt_tokens += a.prompt_tokens
                run_ledger.completion_tokens += a.completion_tokens
                run_ledger.calls += a.calls
                run_ledger.cost += a.cost
        if self._progress:
            self._progress(progress, None)

        started = time.monotonic()
        pending = [t for t in suite if t.id not in attempts]
        todo = iter(pending)

        async def worker() -> None:
            # A fixed pool of workers taking tasks in order, rather than an asyncio task
            # per task up front: those cost ~2.5 KiB each while they wait, which grew
            # with the suite (bench/store_scale.py).
            for task in todo:
                attempt = await self._run_task(
                    store, run_id, task, suite, strategy, run_ledger, prices,
                    resume=task.id in resumed,
                )
                attempts[task.id] = attempt
                self._count(progress, attempt)
                if self._progress:
                    self._progress(progress, attempt)

        fatal: DeliberateError | None = None
        interrupted = False
        try:
            async with asyncio.TaskGroup() as tg:
                for _ in range(min(cfg.concurrency, len(pending))):
                    tg.create_task(worker())
        except* _FatalError as group:
            first = group.exceptions[0]
            assert isinstance(first, _FatalError)
            fatal = first.err
        except* (asyncio.CancelledError, KeyboardInterrupt):
            interrupted = True
        if fatal is not None or interrupted:
            await store.update_run(run_id, status="interrupted" if interrupted else "failed")
            await store.flush()
            if interrupted:
                raise asyncio.CancelledError
            assert fatal is not None
            raise fatal
        ordered = [attempts[t.id] for t in suite if t.id in attempts]
        summary = summarise(ordered, time.monotonic() - started)
        summary["paid_calls"] = run_ledger.paid_calls
        summary["cached_calls"] = run_ledger.cached_calls
        await store.update_run(run_id, status="done", summary=summary)
        await store.flush()
        return RunResult(run_id, store.url, cfg, ordered, summary)

    @staticmethod
    async def _grade(tree: TaskTree, grader: Verifier, result: StrategyResult,
                     attempt: AttemptRecord, *, grade_all: bool) -> None:
        """Grade the chosen answer and, for the record, every candidate the strategy made.

        Candidate grades give the sample accuracy and the oracle (any candidate
        right) beside the strategy's own accuracy, at no model cost.
        """
        graded: dict[str, VerifierResult] = {}
        if grade_all:
            for node in list(tree.nodes.values()):
                if node.role in CANDIDATE_ROLES and node.text:
                    graded[node.id] = await _grade_node(tree, grader, node)
        if result.node is None:
            attempt.correct = False
            return
        final = graded.get(result.node.id) or await _grade_node(tree, grader, result.node)
        attempt.correct = final.passed
        if final.metrics:
            attempt.stats["metrics"] = dict(final.metrics)
        known = [v.passed for v in graded.values() if v.passed is not None]
        if known:
            attempt.stats["candidates"] = len(known)
            attempt.stats["candidates_correct"] = sum(known)

    @staticmethod
    def _count(p: Progress, a: AttemptRecord) -> None:
        p.done += 1
        if a.correct is not None:
            p.graded += 1
            p.correct += int(a.correct)
        p.failed += a.status == "failed"
        p.budget_limited += a.status == "budget_limited"
        p.prompt_tokens += a.prompt_tokens
        p.completion_tokens += a.completion_tokens
        p.cost += a.cost

    async def _run_task(
        self,
        store: Store,
        run_id: str,
        task: Task,
        suite: Suite,
        strategy: Strategy,
        run_ledger: Ledger,
        prices: PriceTable,
        *,
        resume: bool,
    ) -> AttemptRecord:
        cfg = self.config
        ledger = Ledger(limits=cfg.task_budget.limits(), parent=run_ledger)
        recorded = await store.load_calls(run_id, task.id) if resume else {}
        journal = TaskJournal(store, run_id=run_id, task_id=task.id, recorded=recorded,
                              prices=prices)

        observer = self._observer

        def bind(name: str) -> ChatModel:
            rc = cfg.role(name)
            stack = self._stack(self._model_string(rc.model), suite)
            if observer is not None:
                stack = ObservedModel(stack, observer, task.id)
            return BudgetedModel(journal.wrap(stack), ledger, prices,
                                 default_max_tokens=rc.max_tokens)

        seed = int(make_id(cfg.seed, task.id)[:8], 16)
        roles = RoleFactory(cfg, self._prompts, bind, seed)
        generator = roles.make(Generator, "generator")
        judge = roles.make(Judge, "judge")
        tree = TaskTree(store, run_id, task)
        grader = self._grader(task)
        ctx = TaskContext(task=task, tree=tree, generator=generator, judge=judge, ledger=ledger,
                          seed=seed, roles=roles, scoring_verifier=grader)
        attempt = AttemptRecord(run_id=run_id, task_id=task.id, status="running",
                                root_id=tree.root.id)
        store.put_attempt(attempt)
        try:
            result = await strategy.run(ctx)
        except BudgetExceeded:
            result = StrategyResult(None, "budget exhausted")
        except (ModelAuthError, ModelConnectionError, UsageError, StoreError) as exc:
            # The user must fix these (endpoint, key, config, database): stop the run.
            raise _FatalError(exc) from exc
        except ModelError as exc:
            attempt.status = "failed"
            attempt.error = f"{type(exc).__name__}: {exc}"
            result = None
        finally:
            self.replayed_calls += journal.replayed
            self.recorded_calls += journal.recorded_now
        if result is not None and observer is not None:
            observer.task_result(task.id, result.node, result.note)
        if result is not None:
            attempt.final_node_id = result.node.id if result.node else None
            attempt.answer = result.answer
            if grader is not None:
                await self._grade(tree, grader, result, attempt,
                                  grade_all=cfg.grade_candidates)
            attempt.status = "budget_limited" if ledger.limited else "done"
            if result.note:
                attempt.stats["note"] = result.note
        attempt.budget_limited = ledger.limited
        if ledger.limited_by:
            attempt.stats["limited_by"] = ledger.limited_by
        attempt.prompt_tokens = ledger.prompt_tokens
        attempt.completion_tokens = ledger.completion_tokens
        attempt.calls = ledger.calls
        attempt.cost = ledger.cost
        attempt.latency_s = ledger.latency_s
        attempt.stats.update(tree.stats())
        attempt.stats.update(ctx.stats)
        if ctx.notes:
            attempt.stats["notes"] = list(ctx.notes)
        attempt.stats["calls_per_node"] = ledger.calls / max(1, len(tree.nodes) - 1)
        attempt.stats["paid_calls"] = ledger.paid_calls
        attempt.stats["cached_calls"] = ledger.cached_calls
        attempt.updated_at = time.time()
        store.put_attempt(attempt)
        return attempt


async def _grade_node(tree: TaskTree, grader: Verifier, node: NodeRecord) -> VerifierResult:
    """Grade what the node stands for: its whole candidate when a search kept one
    (a step or an action node holds only its last piece)."""
    whole = node.meta.get("candidate")
    if isinstance(whole, str) and whole:
        res = await grader.verify(tree.task, whole, node.answer)
    else:
        res = await grader.verify(tree.task, node.text, node.answer)
    verdict = None if res.passed is None else ("correct" if res.passed else "incorrect")
    tree.judge(node, source=f"verifier:{grader.name}", role="grader", score=res.score,
               scale=(0.0, 1.0), verdict=verdict, critique=res.details,
               meta={"metrics": dict(res.metrics)} if res.metrics else None)
    return res


async def arun(
    config: RunConfig,
    *,
    run_id: str | None = None,
    store: Store | None = None,
    models: dict[str, ChatModel] | None = None,
    suite: Suite | None = None,
    progress: ProgressFn | None = None,
    strategy: Strategy | None = None,
    observer: RunObserver | None = None,
) -> RunResult:
    """Run (or, given the id of an existing run, resume) a configured run."""
    return await Engine(config, store=store, models=models, suite=suite, progress=progress,
                        strategy=strategy, observer=observer).run(run_id)


async def resume_config(store: Store, run_id: str) -> RunConfig:
    """The stored configuration of a run, for resuming it."""
    rec = await store.get_run(run_id)
    if rec is None:
        raise UsageError(f"no run {run_id!r} in {store.url}; see 'deliberate runs'")
    try:
        return RunConfig.from_mapping(rec.config, source=f"stored config of run {run_id}")
    except ConfigError as exc:
        raise UsageError(str(exc)) from exc


def run(config: RunConfig, **kwargs: Any) -> RunResult:
    """Synchronous convenience around :func:`arun` for scripts and notebooks."""
    return asyncio.run(arun(config, **kwargs))
