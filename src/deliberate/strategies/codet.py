"""CodeT: choose a program by dual execution agreement with model-written tests.

1. Sample ``n`` programs (the generator) and ``m`` test sets (the ``test_writer``
   role: a request for ``assert`` lines, parsed by :func:`parse_tests`).
2. Pool the tests: the first ``tests_per_set`` asserts of each set, in sample
   order, without duplicates (compared in canonical form), at most ``max_tests``.
3. Run every distinct program once in the sandbox against every pooled test, each
   test separately, and record which it passes.
4. Programs that pass exactly the same tests form a consensus set; a set's score is
   (number of programs in it) × (number of tests they pass) — duplicate samples
   count, as agreement among samples is the signal.
5. Return a program of the best set. Ties: the higher score, then the larger set,
   then more tests passed, then the set whose first program came earliest; within
   the set, the program with the lowest sample index.

Tree: programs are generator nodes under the root; each test set is a node with
role ``test_writer`` and operator ``generate_tests`` (its parsed asserts in
``meta["tests"]``); every program gets a ``discriminator`` judgement with its
consensus score on the scale 0..(programs × tests) and the tests it passed.

Differences from the paper, on purpose: the defaults are small (``n`` 10, ``m``
10; the paper samples 100 of each) so that runs on ``sim`` stay fast; set them as
the budget allows. Test sets without a usable assert are kept as empty sets, with
no repair request (they are an ordinary outcome of sampling). When no usable test
was written, or the budget stopped test writing, every program scores 0 and the
first program is returned, saying so.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import Field

from deliberate.engine.context import TaskContext
from deliberate.errors import BudgetExceeded
from deliberate.roles.test_writer import TestWriter, parse_tests
from deliberate.strategies.base import Strategy, StrategyConfig, StrategyResult
from deliberate.tree import NodeRecord
from deliberate.verifiers.code import CodeExecution, TestReport
from deliberate.verifiers.sandbox import Sandbox, SandboxError, SandboxLimits

SOURCE = "strategy:codet"


class CodeTConfig(StrategyConfig):
    n: int = Field(10, ge=1, le=1024, description="programs to sample (the paper: 100)")
    m: int = Field(10, ge=0, le=1024, description="test sets to sample (the paper: 100)")
    tests_per_set: int = Field(5, ge=1, le=100,
                               description="asserts kept from the start of each test set")
    max_tests: int = Field(200, ge=1, le=10_000, description="distinct generated tests used")
    timeout_s: float = Field(5.0, gt=0, le=600, description="wall-clock limit per program run")
    per_test_timeout_s: float = Field(1.0, gt=0, le=600, description="time limit per test")


@dataclass(frozen=True, slots=True)
class ConsensusSet:
    """Programs (indices into the candidate list) that pass exactly ``passed``."""

    members: tuple[int, ...]
    passed: tuple[int, ...]

    @property
    def score(self) -> int:
        return len(self.members) * len(self.passed)


def consensus_sets(passed: list[tuple[int, ...]]) -> list[ConsensusSet]:
    """Group program indices by identical passed-test sets, in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, tests in enumerate(passed):
        groups.setdefault(tuple(sorted(tests)), []).append(i)
    return [ConsensusSet(tuple(members), tests) for tests, members in groups.items()]


def best_set(sets: list[ConsensusSet]) -> ConsensusSet:
    """The highest score; ties to the larger set, then more tests, then the earliest."""
    return max(sets, key=lambda s: (s.score, len(s.members), len(s.passed), -s.members[0]))


def pool_tests(sets: list[list[str]], per_set: int, limit: int) -> list[str]:
    """The first ``per_set`` tests of each set, in order, unique, at most ``limit``."""
    seen: set[str] = set()
    pool: list[str] = []
    for tests in sets:
        for t in tests[:per_set]:
            if t not in seen and len(pool) < limit:
                seen.add(t)
                pool.append(t)
    return pool


class CodeT(Strategy):
    name: ClassVar[str] = "codet"
    Config: ClassVar[type[StrategyConfig]] = CodeTConfig

    def __init__(self, config: StrategyConfig) -> None:
        super().__init__(config)
        assert isinstance(config, CodeTConfig)
        # One sandbox for every task of the run, so its concurrency limit is shared.
        self.executor = CodeExecution(
            Sandbox(SandboxLimits(timeout_s=config.timeout_s)),
            timeout_s=config.timeout_s, per_test_timeout_s=config.per_test_timeout_s)

    async def run(self, ctx: TaskContext) -> StrategyResult:
        cfg = self.config
        assert isinstance(cfg, CodeTConfig)
        programs = await ctx.sample_candidates(cfg.n)
        if not programs:
            return StrategyResult(None, "no candidate: budget exhausted before generation")
        test_sets = await self._write_tests(ctx, cfg)
        pool = pool_tests(test_sets, cfg.tests_per_set, cfg.max_tests)
        passed, errors = await self._execute(ctx, programs, pool)
        sets = consensus_sets(passed)
        best = best_set(sets)
        chosen = programs[best.members[0]]
        scale_max = float(max(1, len(programs) * len(pool)))
        for s_index, s in enumerate(sets):
            for i in s.members:
                node = programs[i]
                failing = [pool[t] for t in range(len(pool)) if t not in s.passed]
                critique = (f"passes {len(s.passed)} of {len(pool)} generated tests; consensus "
                            f"set of {len(s.members)} programs, score {s.score}")
                if failing:
                    critique += "; fails: " + "; ".join(failing[:3])
                meta: dict[str, Any] = {"passed_tests": list(s.passed), "set": s_index,
                                        "set_size": len(s.members), "tests": len(pool)}
                if i in errors:
                    meta["error"] = errors[i]
                ctx.tree.judge(node, source=SOURCE, role="discriminator", score=float(s.score),
                               scale=(0.0, scale_max), critique=critique, meta=meta)
                node.value = s.score / scale_max
                node.meta["chosen"] = node is chosen
                ctx.tree.update(node)
        if not pool:
            return StrategyResult(chosen, "no usable generated test: returned the first program")
        return StrategyResult(
            chosen, f"consensus set of {len(best.members)} of {len(programs)} programs passing "
                    f"{len(best.passed)} of {len(pool)} generated tests (score {best.score})")

    async def _write_tests(self, ctx: TaskContext, cfg: CodeTConfig) -> list[list[str]]:
        """Sample the test sets and add them to the tree; [] when the budget stops it."""
        if cfg.m == 0:
            return []
        writer = ctx.roles.make(TestWriter, "test_writer", max_tests=cfg.tests_per_set)
        try:
            resp = await writer.write_tests(ctx.task, cfg.m, node_id=ctx.tree.root.id)
        except BudgetExceeded:
            ctx.notes.append("budget exhausted before test writing")
            return []
        call_id = resp.call_ids[0] if resp.call_ids else None
        sets: list[list[str]] = []
        for c in sorted(resp.completions, key=lambda c: c.sample_index):
            tests = parse_tests(c.text, ctx.task.entry_point)
            ctx.tree.add(ctx.tree.root, role="test_writer", operator="generate_tests",
                         key=c.sample_index, text=c.text, call_id=call_id,
                         sample_index=c.sample_index,
                         meta={"tests": tests, "used": tests[:cfg.tests_per_set]})
            sets.append(tests)
        return sets

    async def _execute(self, ctx: TaskContext, programs: list[NodeRecord],
                       pool: list[str]) -> tuple[list[tuple[int, ...]], dict[int, str]]:
        """Which pooled tests each program passes; each distinct program runs once."""
        if not pool:
            return [() for _ in programs], {}
        distinct: dict[str, int] = {}
        for p in programs:
            distinct.setdefault(p.answer or "", len(distinct))

        async def run(program: str) -> TestReport | str:
            if not program:
                return "no program found in the candidate"
            try:
                return await self.executor.run_tests(ctx.task, program, pool)
            except SandboxError as exc:
                return f"sandbox error: {exc}"

        reports = await asyncio.gather(*(run(p) for p in distinct))
        passed: list[tuple[int, ...]] = []
        errors: dict[int, str] = {}
        for i, p in enumerate(programs):
            rep = reports[distinct[p.answer or ""]]
            if isinstance(rep, str):
                passed.append(())
                errors[i] = rep
                continue
            passed.append(tuple(t for t, ok in enumerate(rep.passed_mask) if ok))
            if rep.load_error:
                errors[i] = rep.load_error
        return passed, errors
