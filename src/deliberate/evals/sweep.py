"""Sweeps: strategies × budgets × suites × models, run as one resumable run in the store.

A sweep answers "which strategy, at what budget, for my model and task?". It expands
into **cells**; each cell is one ordinary engine run (its own journal, budgets,
grading and resume) with the deterministic id ``f"{sweep_id}.{i:03d}"``, ``i`` the
cell's place in the expansion order. The sweep itself is a :class:`RunRecord` whose
config is::

    {"kind": "sweep", "sweep": SweepConfig (resolved) dump, "cells": [cell, ...]}
    cell = {"run_id", "label", "strategy", "strategy_params", "suite", "model",
            "budget": {"name", "axis": "param" | "tokens", "value", "param"}}

and whose summary counts the cells (``{"cells": N, "done": k, ...}``).

**Budgets.** Each strategy is swept along one axis: a parameter of its own (the
*knob*: ``best_of_n:n=4,8,16``, ``mcts:iterations=2,4,8``) or the per-task token cap
(``task_tokens``: the cell's ``task_budget.max_tokens``). A strategy named without
values takes the sweep's ``budgets`` (for its default knob: the first of ``n``,
``iterations``, ``max_rounds``, ``rounds`` it has) or else its ``task_tokens``.

**Order.** Suites, then models, then strategies in the order given, then budget
values in the order given (outermost first).

**Running.** Cells run ``concurrency`` at a time; each runs its tasks with the base
config's ``concurrency``. A backend is built once per model string (per suite for
``sim``, which answers from the suite's tasks) and shared by every cell, under one
concurrency limit (``base.max_inflight_calls`` for the whole sweep); each cell adds
its own cache, retry and journal as a lone run would. ``base.run_budget`` applies to
each cell; the sweep's own ``budget`` bounds what the whole sweep pays for (calls not
answered from the cache or a journal) and, when the next call would not fit, stops
the sweep cleanly: cells in flight are cancelled and marked interrupted (their
finished tasks stand, unfinished ones are re-run on resume), no cell is left with
answers degraded by the sweep's limit. Its wall-time limit counts from each start.

**Resume.** Running again with the same sweep id (or :func:`aresume_sweep`) skips
cells whose run is done and resumes the others from their journals, so no answered
call is paid for twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    field_validator,
    model_validator,
)

from deliberate.config import BudgetConfig, FrozenConfig, RunConfig
from deliberate.engine.runner import Engine, new_run_id
from deliberate.engine.runner import Progress as RunProgress
from deliberate.errors import BudgetExceeded, ConfigError, DeliberateError, UsageError
from deliberate.models.base import ChatModel, ChatRequest, ChatResponse, ModelWrapper, Usage
from deliberate.models.budget import Ledger, Limits, PriceTable, Reservation, prompt_token_bound
from deliberate.models.middleware import ConcurrencyLimitModel
from deliberate.models.registry import build_model, default_model_string, parse_model_spec
from deliberate.store import Store
from deliberate.strategies.base import available_strategies, build_strategy
from deliberate.tasks.registry import load_suite
from deliberate.tasks.task import Suite
from deliberate.tree import AttemptRecord, RunRecord, RunStatus
from deliberate.verifiers.base import grading_verifier

__all__ = [
    "KNOBS",
    "TOKENS_AXIS",
    "Cell",
    "CellState",
    "SweepConfig",
    "SweepProgress",
    "SweepResult",
    "SweepRunner",
    "SweepStrategy",
    "aresume_sweep",
    "arun_sweep",
    "default_knob",
    "expand",
    "load_sweep",
    "parse_strategy_spec",
    "run_sweep",
]

TOKENS_AXIS = "task_tokens"
# A strategy named without a knob is swept along the first of these it has.
KNOBS = ("n", "iterations", "max_rounds", "rounds")

Number = StrictInt | StrictFloat


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _number(raw: str, spec: str) -> int | float:
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"strategy spec {spec!r}: budget value {raw!r} is not a number")
    return value


def parse_strategy_spec(spec: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:KNOB=V1,V2,...`` → the mapping form of :class:`SweepStrategy`."""
    name, sep, rest = spec.strip().partition(":")
    if not name.strip():
        raise ValueError(f"strategy spec {spec!r} needs a strategy name: NAME[:KNOB=V1,V2,...]")
    out: dict[str, Any] = {"strategy": name.strip()}
    if not sep:
        return out
    knob, eq, values = rest.partition("=")
    if not eq or not knob.strip() or not values.strip():
        raise ValueError(f"strategy spec {spec!r} must look like NAME:KNOB=V1,V2,... "
                         "(e.g. best_of_n:n=4,8,16 or mcts:task_tokens=2000,4000)")
    out["knob"] = knob.strip()
    out["values"] = [_number(v.strip(), spec) for v in values.split(",")]
    return out


class SweepStrategy(_Frozen):
    """One strategy of a sweep and the budget axis it is swept along.

    Written ``best_of_n:n=4,8,16`` (CLI and YAML), or as a mapping with ``params``
    (fixed parameters), ``budget: {KNOB: [values]}`` and ``label`` (the name in cell
    labels, to tell apart two entries of one strategy).
    """

    strategy: str
    params: dict[str, Any] = Field(default_factory=dict)
    knob: str | None = Field(None, description=f"parameter swept, or '{TOKENS_AXIS}'")
    values: tuple[Number, ...] = ()
    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _forms(cls, data: Any) -> Any:
        if isinstance(data, str):
            return parse_strategy_spec(data)
        if isinstance(data, dict) and "budget" in data:
            data = dict(data)
            budget = data.pop("budget")
            if (not isinstance(budget, dict) or len(budget) != 1
                    or not isinstance(next(iter(budget.values())), list)):
                raise ValueError("budget must map one parameter to a list of values, "
                                 "e.g. {n: [4, 8, 16]} or {task_tokens: [2000, 4000]}")
            (data["knob"], data["values"]), = budget.items()
        return data

    @field_validator("strategy")
    @classmethod
    def _name(cls, v: str) -> str:
        return v.strip().replace("-", "_")

    @model_validator(mode="after")
    def _axis(self) -> SweepStrategy:
        if self.knob is not None and not self.values:
            raise ValueError(f"strategy {self.strategy}: give values for {self.knob}")
        if self.values and self.knob is None:
            raise ValueError(f"strategy {self.strategy}: name the parameter its values set")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"strategy {self.strategy}: repeated budget values {self.values}")
        if self.knob is not None and self.knob in self.params:
            raise ValueError(f"strategy {self.strategy}: {self.knob} is both swept and fixed")
        return self


class SweepConfig(FrozenConfig):
    """Everything that determines a sweep; the cells are derived from it (:func:`expand`)."""

    config_source: ClassVar[str] = "sweep"

    name: str | None = None
    base: RunConfig = Field(default_factory=RunConfig,
                            description="settings every cell shares (limit, seed, roles, "
                            "task and run budgets, store, cache, task concurrency, …)")
    strategies: tuple[SweepStrategy, ...] = Field(min_length=1)
    budgets: tuple[Number, ...] = Field(
        (), description="values of the default knob for strategies named without values")
    task_tokens: tuple[StrictInt, ...] = Field(
        (), description="per-task token caps for strategies named without values")
    suites: tuple[str, ...] = Field((), description="empty: base.suite")
    models: tuple[str, ...] = Field((), description="empty: base.model or the default model")
    concurrency: int = Field(2, ge=1, le=256, description="cells in flight at once")
    budget: BudgetConfig = Field(default_factory=BudgetConfig,
                                 description="limits on what the whole sweep pays for")

    @field_validator("strategies", mode="before")
    @classmethod
    def _listed(cls, v: Any) -> Any:
        return [v] if isinstance(v, str | dict) else v

    @field_validator("suites", "models", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        default = RunConfig()
        if self.base.strategy != default.strategy or self.base.strategy_params:
            raise ValueError("base.strategy/strategy_params: list strategies under 'strategies'")
        if self.base.name is not None:
            raise ValueError("base.name: each cell is named by its label; name the sweep "
                             "with 'name'")
        for what, xs in (("budgets", self.budgets), ("task_tokens", self.task_tokens),
                         ("suites", self.suites), ("models", self.models)):
            if len(set(xs)) != len(xs):
                raise ValueError(f"{what} has repeated entries")
        return self

    def resolved(self) -> SweepConfig:
        """This config with its suites and models filled in (the default model is read
        from the environment once, here, so a resumed sweep asks the same model)."""
        suites = self.suites or (self.base.suite,)
        models = self.models or (self.base.model or default_model_string(),)
        return self.model_copy(update={"suites": suites, "models": models})


@dataclass(frozen=True, slots=True)
class Cell:
    """One strategy at one budget on one suite with one model: one engine run."""

    index: int
    run_id: str
    label: str
    strategy: str
    strategy_params: dict[str, Any]
    suite: str
    model: str
    budget: dict[str, Any]
    config: RunConfig

    def record(self) -> dict[str, Any]:
        """The cell as the sweep's stored config lists it."""
        return {"run_id": self.run_id, "label": self.label, "strategy": self.strategy,
                "strategy_params": dict(self.strategy_params), "suite": self.suite,
                "model": self.model, "budget": dict(self.budget)}


def default_knob(strategy: str) -> str:
    """The parameter a strategy named without one is swept along."""
    table = available_strategies()
    if strategy not in table:
        raise ConfigError(f"unknown strategy {strategy!r}; known: {', '.join(sorted(table))}")
    fields = table[strategy].Config.model_fields
    for knob in KNOBS:
        if knob in fields:
            return knob
    raise ConfigError(f"strategy {strategy} has none of {', '.join(KNOBS)}: name the "
                      f"parameter to sweep ({strategy}:PARAM=V1,V2) or use {TOKENS_AXIS}")


def _axis(entry: SweepStrategy, config: SweepConfig) -> tuple[str, tuple[int | float, ...]]:
    if entry.knob is not None:
        return entry.knob, entry.values
    if config.budgets and config.task_tokens:
        raise ConfigError(f"strategy {entry.strategy}: give it one budget axis — budgets "
                          f"or task_tokens, not both (or list it twice with explicit values)")
    if config.budgets:
        return default_knob(entry.strategy), config.budgets
    if config.task_tokens:
        return TOKENS_AXIS, config.task_tokens
    raise ConfigError(f"strategy {entry.strategy} has no budget values: write "
                      f"{entry.strategy}:KNOB=V1,V2,... or give budgets or task_tokens")


def _fmt(v: int | float) -> str:
    return str(v) if isinstance(v, int) else f"{v:g}"


def expand(config: SweepConfig, sweep_id: str) -> list[Cell]:
    """The sweep's cells in order; every cell's strategy and run config are validated."""
    config = config.resolved()
    base = config.base.model_dump(mode="json")
    table = available_strategies()
    cells: list[Cell] = []
    seen: dict[str, int] = {}
    for suite in config.suites:
        for model in config.models:
            for entry in config.strategies:
                if entry.strategy not in table:
                    raise ConfigError(f"unknown strategy {entry.strategy!r}; known: "
                                      f"{', '.join(sorted(table))}")
                knob, values = _axis(entry, config)
                tokens = knob == TOKENS_AXIS
                if not tokens and knob not in table[entry.strategy].Config.model_fields:
                    raise ConfigError(
                        f"strategy {entry.strategy} has no parameter {knob!r}; its "
                        f"parameters: {', '.join(table[entry.strategy].Config.model_fields)}"
                        f" (or sweep {TOKENS_AXIS})")
                for value in values:
                    params = dict(entry.params) if tokens else {**entry.params, knob: value}
                    name = f"{knob}={_fmt(value)}"
                    label = f"{entry.label or entry.strategy} {name} @ {suite} / {model}"
                    if label in seen:
                        raise ConfigError(f"two cells are labelled {label!r}: give the "
                                          "strategy entries different labels")
                    seen[label] = len(cells)
                    try:
                        build_strategy(entry.strategy, params)  # a bad value fails here
                    except ConfigError as exc:
                        raise ConfigError(f"cell {label!r}: {exc}") from exc
                    data = {**base, "suite": suite, "model": model, "strategy": entry.strategy,
                            "strategy_params": params, "name": label}
                    if tokens:
                        data["task_budget"] = {**base["task_budget"], "max_tokens": value}
                    run_config = RunConfig.from_mapping(data, source=f"cell {label!r}")
                    i = len(cells)
                    cells.append(Cell(
                        index=i, run_id=f"{sweep_id}.{i:03d}", label=label,
                        strategy=entry.strategy, strategy_params=params, suite=suite,
                        model=model, config=run_config,
                        budget={"name": name, "axis": "tokens" if tokens else "param",
                                "value": value, "param": None if tokens else knob}))
    return cells


# -- progress and results ------------------------------------------------------------

CellStatus = Literal["pending", "running", "done", "failed", "interrupted"]


@dataclass(slots=True)
class CellState:
    """Where one cell stands, for progress displays and the final table."""

    cell: Cell
    status: CellStatus = "pending"
    tasks: int = 0
    done: int = 0
    graded: int = 0
    correct: int = 0
    tokens: int = 0
    cost: float = 0.0
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.graded if self.graded else None


@dataclass(slots=True)
class SweepProgress:
    cells: list[CellState]

    @property
    def tasks(self) -> int:
        return sum(c.tasks for c in self.cells)

    @property
    def tasks_done(self) -> int:
        return sum(c.done for c in self.cells)

    @property
    def cells_done(self) -> int:
        return sum(c.status == "done" for c in self.cells)


SweepProgressFn = Callable[[SweepProgress, CellState], None]


@dataclass(slots=True)
class SweepResult:
    sweep_id: str
    store_url: str
    config: SweepConfig
    status: RunStatus
    cells: list[CellState]
    summary: dict[str, Any]
    replayed_calls: int = 0  # calls answered from the cells' journals on resume
    recorded_calls: int = 0  # calls made and recorded by this process


# -- the sweep's shared models and its own budget --------------------------------------


class _SweepLimit:
    """The sweep-wide hard limit on paid usage. A call that would not fit is not made:
    the sweep is told to stop and the call waits to be cancelled with its cell."""

    def __init__(self, limits: Limits, prices: PriceTable) -> None:
        self.ledger = Ledger(limits=Limits(limits.max_tokens, limits.max_calls,
                                           limits.max_cost))
        self.prices = prices
        self.stopped = asyncio.Event()
        self.reason: str | None = None

    def stop(self, reason: str) -> None:
        self.reason = self.reason or reason
        self.stopped.set()


class _SharedModel(ModelWrapper):
    """A backend shared by every cell: counts paid calls against the sweep's limit; the
    sweep, not a cell's engine, closes it."""

    def __init__(self, inner: ChatModel, limit: _SweepLimit) -> None:
        super().__init__(inner)
        self._limit = limit

    async def complete(self, request: ChatRequest) -> ChatResponse:
        lim = self._limit
        price = lim.prices.for_model(self.model_id)
        bound = prompt_token_bound(request)
        max_tokens = request.max_tokens or 1024
        prompt_cost = price.cost(Usage(bound, 0))
        sample_cost = price.cost(Usage(0, max_tokens))
        k, why = lim.ledger.affordable(bound, max_tokens, sample_cost, prompt_cost, request.n)
        if lim.stopped.is_set() or k < request.n:
            lim.stop(why or "tokens")
            await asyncio.Event().wait()  # the sweep cancels every cell once stopped
            raise BudgetExceeded("sweep budget used up", limit=lim.reason or "tokens")
        reservation = Reservation(tokens=bound + request.n * max_tokens, calls=1,
                                  cost=prompt_cost + request.n * sample_cost)
        lim.ledger.reserve(reservation)
        try:
            response = await self.inner.complete(request)
        except BaseException:
            lim.ledger.settle(reservation, Usage(), 0.0, 0.0, cached=False)
            raise
        lim.ledger.settle(reservation, response.usage, price.cost(response.usage),
                          response.latency_s, cached=response.cached)
        return response

    async def aclose(self) -> None:
        """Shared: closed by the sweep once every cell is over."""


def _model_strings(cfg: RunConfig) -> list[str]:
    """Every model string a cell's roles can ask (the engine's resolution)."""
    default = cfg.model or default_model_string()
    roles = [cfg.generator, cfg.judge, cfg.critic, cfg.refiner, *cfg.roles.values()]
    return sorted({default, *(r.model for r in roles if r.model)})


class _Backends:
    """One backend per model string (per suite for ``sim``, which answers from the
    suite's tasks), each under the sweep's concurrency limit and budget."""

    def __init__(self, limit: _SweepLimit, inflight: int,
                 overrides: dict[str, ChatModel]) -> None:
        self._limit = limit
        self._inflight = inflight
        self._overrides = overrides
        self._shared: dict[tuple[str, str], ChatModel] = {}
        self._built: list[ChatModel] = []

    @staticmethod
    def _key(spec: str, suite: str) -> tuple[str, str]:
        parsed = parse_model_spec(spec)
        return (spec, suite if parsed.scheme == "sim" and not parsed.name else "")

    def for_cell(self, cfg: RunConfig, suite: Suite) -> dict[str, ChatModel]:
        out: dict[str, ChatModel] = {}
        for spec in _model_strings(cfg):
            key = self._key(spec, cfg.suite)
            if key not in self._shared:
                backend = self._overrides.get(spec)
                if backend is None:
                    backend = build_model(spec, suite)
                    self._built.append(backend)
                self._shared[key] = _SharedModel(
                    ConcurrencyLimitModel(backend, self._inflight), self._limit)
            out[spec] = self._shared[key]
        return out

    async def aclose(self) -> None:
        for m in self._built:
            await m.aclose()


# -- running -------------------------------------------------------------------------


class SweepRunner:
    """Runs (or resumes) one sweep; ``models`` overrides backends by model string."""

    def __init__(self, config: SweepConfig, *, store: Store | None = None,
                 models: dict[str, ChatModel] | None = None,
                 progress: SweepProgressFn | None = None) -> None:
        self.config = config.resolved()
        self._store = store
        self._models = models or {}
        self._progress = progress
        self.replayed_calls = 0
        self.recorded_calls = 0

    async def run(self, sweep_id: str | None = None) -> SweepResult:
        own = self._store is None
        store = (self._store if self._store is not None
                 else await asyncio.to_thread(Store.open, self.config.base.store))
        await store.start()
        try:
            return await self._run(store, sweep_id or new_run_id())
        finally:
            if own:
                await store.aclose()
            else:
                await store.flush()

    async def _run(self, store: Store, sweep_id: str) -> SweepResult:
        cfg = self.config
        cells = expand(cfg, sweep_id)
        suites = {name: load_suite(name, limit=cfg.base.limit) for name in cfg.suites}
        for suite in suites.values():
            if len(suite):
                grading_verifier(cfg.base.verifier, suite.tasks[0])  # a bad spec fails now
        limit = _SweepLimit(cfg.budget.limits(), cfg.base.price_table())
        backends = _Backends(limit, cfg.base.max_inflight_calls, self._models)
        try:
            overrides = [backends.for_cell(c.config, suites[c.suite]) for c in cells]
            return await self._run_cells(store, sweep_id, cells, suites, overrides, limit)
        finally:
            await backends.aclose()

    async def _run_cells(self, store: Store, sweep_id: str, cells: list[Cell],
                         suites: dict[str, Suite], overrides: list[dict[str, ChatModel]],
                         limit: _SweepLimit) -> SweepResult:
        cfg = self.config
        config = {"kind": "sweep", "sweep": cfg.model_dump(mode="json"),
                  "cells": [c.record() for c in cells]}
        existing = await store.get_run(sweep_id)
        previous_wall = 0.0
        if existing is None:
            await store.create_run(RunRecord(id=sweep_id, config=config,
                                             summary={"cells": len(cells), "done": 0}))
        else:
            if existing.config.get("kind") != "sweep":
                raise UsageError(f"run {sweep_id} in {store.url} is not a sweep")
            if _comparable(existing.config) != _comparable(config):
                raise UsageError(f"sweep {sweep_id} exists with a different configuration; "
                                 f"continue it with --resume {sweep_id}")
            previous_wall = float(existing.summary.get("wall_s", 0.0))
            await store.update_run(sweep_id, status="running")

        states = [CellState(c, tasks=len(suites[c.suite])) for c in cells]
        for s in states:
            rec = await store.get_run(s.cell.run_id)
            if rec is not None and rec.status == "done":
                self._finished(s, rec.summary)
        # What earlier sessions paid for counts against the sweep's budget.
        calls, prompt, completion, cost = await store.call_totals(
            [c.run_id for c in cells], cached=False)
        limit.ledger.calls, limit.ledger.prompt_tokens = calls, prompt
        limit.ledger.completion_tokens, limit.ledger.cost = completion, cost
        progress = SweepProgress(states)
        for s in states:
            self._notify(progress, s)

        started = time.monotonic()
        status: RunStatus = "done"
        fatal: Exception | None = None
        todo = [s for s in states if s.status != "done"]
        work = asyncio.create_task(self._all(store, todo, suites, overrides, progress))
        stop = asyncio.create_task(limit.stopped.wait())
        try:
            await asyncio.wait({work, stop}, timeout=cfg.budget.max_wall_s,
                               return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                limit.stop("wall_time")
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                status = "interrupted"
            else:
                work.result()
        except asyncio.CancelledError:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
            status = "interrupted"
        except Exception as exc:  # a run-stopping error (or a bug): recorded, then raised
            fatal, status = exc, "failed"
        finally:
            stop.cancel()
        await self._settle(store, states)
        summary = self._summary(states, previous_wall + time.monotonic() - started)
        if status == "interrupted" and limit.reason is not None:
            summary["stopped_by"] = limit.reason
        led = limit.ledger
        summary["paid"] = {"calls": led.calls, "prompt_tokens": led.prompt_tokens,
                           "completion_tokens": led.completion_tokens, "cost": led.cost}
        await store.update_run(sweep_id, status=status, summary=summary)
        await store.flush()
        if fatal is not None:
            raise fatal
        if status == "interrupted" and limit.reason is None:
            raise asyncio.CancelledError
        return SweepResult(sweep_id, store.url, cfg, status, states, summary,
                           self.replayed_calls, self.recorded_calls)

    async def _all(self, store: Store, todo: list[CellState], suites: dict[str, Suite],
                   overrides: list[dict[str, ChatModel]], progress: SweepProgress) -> None:
        """Every unfinished cell, ``concurrency`` at a time; the first error that stops
        a run (endpoint, key, store) stops them all and is raised."""
        sem = asyncio.Semaphore(self.config.concurrency)

        async def one(state: CellState) -> None:
            async with sem:
                await self._cell(store, state, suites[state.cell.suite],
                                 overrides[state.cell.index], progress)

        try:
            async with asyncio.TaskGroup() as tg:
                for s in todo:
                    tg.create_task(one(s))
        except* DeliberateError as group:
            raise group.exceptions[0] from None

    async def _cell(self, store: Store, state: CellState, suite: Suite,
                    models: dict[str, ChatModel], progress: SweepProgress) -> None:
        state.status = "running"
        self._notify(progress, state)

        def on_progress(p: RunProgress, _a: AttemptRecord | None) -> None:
            state.tasks, state.done = p.total, p.done
            state.graded, state.correct = p.graded, p.correct
            state.tokens, state.cost = p.prompt_tokens + p.completion_tokens, p.cost
            self._notify(progress, state)

        engine = Engine(state.cell.config, store=store, models=models, suite=suite,
                        progress=on_progress)
        try:
            result = await engine.run(state.cell.run_id)
        except asyncio.CancelledError:
            state.status = "interrupted"
            self._notify(progress, state)
            raise
        except BaseException:
            state.status = "failed"
            self._notify(progress, state)
            raise
        finally:
            self.replayed_calls += engine.replayed_calls
            self.recorded_calls += engine.recorded_calls
        self._finished(state, result.summary)
        self._notify(progress, state)

    async def _settle(self, store: Store, states: Sequence[CellState]) -> None:
        """Make the cells' records agree once they are over: a cell cancelled just after
        its run finished is done; one cancelled before its engine could mark it is marked
        here. Best effort: a record write the cancel interrupted finishes in its worker
        thread, so a disagreement is looked at again after a moment."""
        for attempt in range(2):
            unsure = False
            for s in states:
                if s.status not in ("interrupted", "failed"):
                    continue
                rec = await store.get_run(s.cell.run_id)
                if rec is not None and rec.status == "done":
                    self._finished(s, rec.summary)
                elif rec is None or rec.status == "running":
                    unsure = True
                    if rec is not None and attempt:
                        await store.update_run(s.cell.run_id, status=s.status)
            if not unsure:
                return
            if not attempt:
                await asyncio.sleep(0.05)

    @staticmethod
    def _finished(state: CellState, summary: dict[str, Any]) -> None:
        state.status = "done"
        state.summary = dict(summary)
        state.tasks = state.done = int(summary.get("tasks", 0))
        state.graded, state.correct = int(summary.get("graded", 0)), int(summary.get("correct", 0))
        state.tokens = int(summary.get("prompt_tokens", 0)) + int(
            summary.get("completion_tokens", 0))
        state.cost = float(summary.get("cost", 0.0))

    def _notify(self, progress: SweepProgress, state: CellState) -> None:
        if self._progress is not None:
            self._progress(progress, state)

    @staticmethod
    def _summary(states: Sequence[CellState], wall_s: float) -> dict[str, Any]:
        """Counts of cells by status, and totals over the finished ones."""
        done = [s.summary for s in states if s.status == "done"]

        def total(key: str) -> Any:
            return sum(d.get(key, 0) for d in done)

        return {
            "cells": len(states),
            **{k: sum(s.status == k for s in states)
               for k in ("done", "failed", "interrupted", "pending")},
            "tasks": total("tasks"), "graded": total("graded"), "correct": total("correct"),
            "prompt_tokens": total("prompt_tokens"),
            "completion_tokens": total("completion_tokens"),
            "calls": total("calls"), "paid_calls": total("paid_calls"), "cost": total("cost"),
            "wall_s": wall_s,
        }


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    """A stored sweep config without what may change on resume (the sweep's own budget
    and cell concurrency: neither changes any cell's results)."""
    sweep = {k: v for k, v in config.get("sweep", {}).items()
             if k not in ("budget", "concurrency")}
    return {**config, "sweep": sweep}


# -- entry points --------------------------------------------------------------------


async def load_sweep(store: Store, sweep_id: str) -> SweepConfig:
    """The stored (resolved) configuration of a sweep."""
    rec = await store.get_run(sweep_id)
    if rec is None:
        raise UsageError(f"no sweep {sweep_id!r} in {store.url}; see 'deliberate runs'")
    if rec.config.get("kind") != "sweep":
        raise UsageError(f"run {sweep_id} in {store.url} is not a sweep")
    return SweepConfig.from_mapping(rec.config["sweep"], source=f"stored sweep {sweep_id}")


async def arun_sweep(config: SweepConfig, *, sweep_id: str | None = None,
                     store: Store | None = None, models: dict[str, ChatModel] | None = None,
                     progress: SweepProgressFn | None = None) -> SweepResult:
    """Run a sweep (or continue the one stored under ``sweep_id`` with this config)."""
    return await SweepRunner(config, store=store, models=models,
                             progress=progress).run(sweep_id)


async def aresume_sweep(sweep_id: str, *, store: Store,
                        models: dict[str, ChatModel] | None = None,
                        progress: SweepProgressFn | None = None) -> SweepResult:
    """Continue a stored sweep with its stored configuration."""
    config = await load_sweep(store, sweep_id)
    return await arun_sweep(config, sweep_id=sweep_id, store=store, models=models,
                            progress=progress)


def run_sweep(config: SweepConfig, **kwargs: Any) -> SweepResult:
    """Synchronous convenience around :func:`arun_sweep` for scripts and notebooks."""
    return asyncio.run(arun_sweep(config, **kwargs))
