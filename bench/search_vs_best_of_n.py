"""Tree search against best-of-N at the same token budget, on the sim (issue 4, done-when 5).

On the ``sim`` model the generator's skill and the critics' error rates are set by
hand, so whether ``mcts`` and ``beam`` beat ``best_of_n`` at equal spend can be
measured without a real model. For every sim setting × suite × budget B:

1. **Sizing (the headline, "fit").** Each strategy gets the largest size (best_of_n
   ``n``, mcts/best_first ``iterations``, beam ``n`` at width 2) whose mean tokens
   per task is at most B, measured on a calibration seed (1000) that is not one of
   the evaluation seeds. The choice looks at tokens only, never at accuracy.
2. **Budget cap (secondary, "capped").** Each strategy gets a large size and
   ``task_budget.max_tokens = B``, so the engine's ledger stops it; every task's
   tokens are then at most B (checked from the stored figures).
3. Every cell runs over the same tasks and the same evaluation seeds, so
   correctness is paired across strategies. A task's score is its mean correctness
   over the seeds; accuracy has a 95% percentile-bootstrap interval over tasks, and
   the difference from best_of_n (fit) a paired bootstrap interval and an exact
   sign test (``deliberate.evals.stats``).
4. From each stored tree: tokens by role, oracle accuracy (some candidate right),
   how often the choice is right when some candidate is, the critics' measured
   error rates on graded candidates, refinement fix/break rates, budget stops.

Writes ``bench/results/search_vs_best_of_n.json`` (every per-task figure, the
configs, sim parameters, seeds and the commit) and
``docs/reports/search-vs-best-of-n.md`` (rendered from the JSON alone, plus the
hand-written analysis kept in :data:`WHY` below).

Run from the repository root (GSM8K is read from ``../shared/data``)::

    python bench/search_vs_best_of_n.py            # full: ~10 min on 2 cores
    python bench/search_vs_best_of_n.py --quick    # 1 budget, 6 tasks, 1 seed
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from deliberate.config import RoleConfig, RunConfig
from deliberate.engine.runner import CANDIDATE_ROLES, arun
from deliberate.errors import DeliberateError
from deliberate.evals.stats import mean_ci, paired_difference, sign_test
from deliberate.models.sim import SimModel, SimParams, first_divergence, normalise_solution
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Judge
from deliberate.roles.step_critic import NO_ERROR, StepCritic
from deliberate.store import Store
from deliberate.strategies.base import build_strategy
from deliberate.tasks.registry import load_suite
from deliberate.tasks.task import Suite, Task
from deliberate.tree import AttemptRecord, JudgementRecord, ModelCallRecord, NodeRecord
from deliberate.verifiers.base import Verifier, grading_verifier

REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data"  # relative to the repository root, never copied
GSM8K_FILE = "math/gsm8k-model-solutions-dev.jsonl.gz"
OUT_JSON = REPO / "bench" / "results" / "search_vs_best_of_n.json"
OUT_MD = REPO / "docs" / "reports" / "search-vs-best-of-n.md"

CALIBRATION_SEED = 1000
GSM8K_DRAW_SEED = 0
SIMS: dict[str, dict[str, Any]] = {"default": {}, "weak": {"skill": 0.4}}
# Sampling settings of every role in every cell. max_tokens is set below the
# defaults (1024 / 512) only to make the capped runs' reservations less wasteful;
# no sim reply comes near it (the JSON counts truncated replies: 0 expected).
ROLES: dict[str, dict[str, Any]] = {
    "generator": {"temperature": 0.8, "max_tokens": 384},
    "refiner": {"temperature": 0.7, "max_tokens": 384},
    "judge": {"temperature": 0.0, "max_tokens": 256},
}
JUDGING_ROLES = ("judge", "value", "step_critic")


@dataclass(frozen=True, slots=True)
class Variant:
    """One strategy configuration whose size parameter is set per budget."""

    name: str
    strategy: str
    params: dict[str, Any]
    size: str  # the parameter that sets the spend
    ladder: tuple[int, ...]  # sizes tried, cheapest first
    capped_size: int  # the "large" size of the capped runs
    label: str
    needs_space: bool = False  # only once the strategy takes ``space=``
    main: bool = True  # extras run on the first sim only, and never capped

    def config(self, size: int) -> dict[str, Any]:
        return {**self.params, self.size: size}


VARIANTS: tuple[Variant, ...] = (
    Variant("best_of_n", "best_of_n", {}, "n", tuple(range(1, 129)), 64,
            "best_of_n (LLM judge, default selection)"),
    Variant("mcts", "mcts", {}, "iterations", tuple(range(1, 401)), 1000,
            "mcts (answer space, defaults: k=3, UCT, LLM value, threshold 0.975)"),
    Variant("beam", "beam", {"width": 2}, "n", tuple(range(2, 129, 2)), 32,
            "beam (step space, width 2, step critic, aggregate last)"),
    Variant("best_first", "best_first", {}, "iterations", tuple(range(1, 401)), 1000,
            "best_first (answer space, defaults: k=3, LLM value)", main=False),
    Variant("mcts_steps", "mcts", {"space": "steps"}, "iterations", tuple(range(1, 401)), 1000,
            "mcts (step space, step critic as value)", needs_space=True, main=False),
    Variant("beam_answer", "beam", {"space": "answer", "width": 2}, "n",
            tuple(range(2, 129, 2)), 32, "beam (answer space, width 2, LLM value)",
            needs_space=True, main=False),
)
BASELINE = "best_of_n"


def available(v: Variant) -> bool:
    """Whether the installed strategy accepts this variant's parameters."""
    try:
        build_strategy(v.strategy, v.config(v.ladder[0]))
    except DeliberateError:
        return False
    return True


def sim_model(name: str) -> str:
    params = SIMS[name]
    return "sim" + (f"?{urlencode(params)}" if params else "")


# ---------------------------------------------------------------- suites


def load_suites(quick: bool, gsm8k_tasks: int) -> tuple[dict[str, Suite], dict[str, Any]]:
    """The built-in arithmetic suite and a seeded draw of GSM8K problems (if present)."""
    n_quick = 6
    arith = load_suite("arithmetic")
    suites = {"arithmetic": arith.head(n_quick) if quick else arith}
    info: dict[str, Any] = {"arithmetic": {
        "spec": "arithmetic", "selection": "first 6 tasks" if quick else "all tasks"}}
    path = REPO / DATA / GSM8K_FILE
    spec = f"gsm8k:{DATA}/{GSM8K_FILE}"
    if not path.exists():
        info["gsm8k"] = {"spec": spec, "skipped": f"{DATA}/{GSM8K_FILE} not found"}
        return suites, info
    full = load_suite(f"gsm8k:{path}")
    n = min(gsm8k_tasks, len(full))
    picked = sorted(random.Random(GSM8K_DRAW_SEED).sample(range(len(full)), n))
    if quick:
        picked = picked[:n_quick]
    suites["gsm8k"] = Suite.of("gsm8k", [full.tasks[i] for i in picked])
    info["gsm8k"] = {
        "spec": spec,
        "selection": (f"{n} of {len(full)} problems drawn with random.Random("
                      f"{GSM8K_DRAW_SEED}).sample, in file order"
                      + (f"; the first {n_quick} of them" if quick else "")),
        "rows": picked,
    }
    for name, suite in suites.items():
        info[name]["tasks"] = [t.id for t in suite]
        info[name]["p_correct"] = {
            s: statistics.mean(SimModel(suite, SimParams.model_validate(SIMS[s])).p_correct(t)
                               for t in suite) for s in SIMS}
    return suites, info


# ---------------------------------------------------------------- one run, analysed


@dataclass(slots=True)
class TaskRun:
    """What one strategy did on one task under one seed."""

    correct: int
    tokens: int
    calls: int
    limited: bool
    answered: bool
    stopped_by: str | None
    cands: int = 0
    cands_right: int = 0
    # role -> [right seen, right accepted, wrong seen, wrong rejected]
    critic: dict[str, list[int]] = field(default_factory=dict)
    by_role: dict[str, int] = field(default_factory=dict)
    refine: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # from wrong, fixed, from right, broken
    truncated: int = 0
    accounted: bool = True
    # a right candidate existed but the answer is wrong: every right one was scored
    # wrong by its scorer ("rejected"), or one was accepted and lost ("outranked")
    miss: str | None = None
    # answered right although the chosen candidate's scorer said wrong (it won a tie
    # among candidates all scored wrong)
    chosen_rejected: bool = False


def _path_text(node: NodeRecord, nodes: dict[str, NodeRecord]) -> str:
    out: list[str] = []
    cur: NodeRecord | None = node
    while cur is not None and cur.parent_id is not None:
        out.append(cur.text)
        cur = nodes.get(cur.parent_id)
    return "\n".join(reversed(out))


def prefix_right(task: Task, text: str) -> bool | None:
    """Whether a partial math solution is right so far, by the sim's own ground truth
    (no line leaves the reference solution); None where that is not defined."""
    if task.kind != "math" or not task.solution:
        return None
    return first_divergence(text, normalise_solution(task.solution, task.answer)) is None


def _says_right(j: JudgementRecord) -> bool | None:
    if j.verdict in ("correct", "incorrect"):
        return j.verdict == "correct"
    s = j.normalised
    return None if s is None else s >= 0.5


async def analyse(task: Task, attempt: AttemptRecord, nodes_l: list[NodeRecord],
                  judgements: list[JudgementRecord], calls: dict[str, ModelCallRecord],
                  grader: Verifier | None) -> TaskRun:
    """Per-task figures from the stored tree, its judgements and its model calls."""
    nodes = {n.id: n for n in nodes_l}
    search = attempt.stats.get("search")
    tr = TaskRun(correct=int(bool(attempt.correct)),
                 tokens=attempt.prompt_tokens + attempt.completion_tokens,
                 calls=attempt.calls, limited=attempt.budget_limited,
                 answered=attempt.answer is not None,
                 stopped_by=search.get("stopped_by") if isinstance(search, dict) else None)
    # truth of every candidate: the engine's grade, else grade the whole path here
    truth: dict[str, bool] = {}
    for j in judgements:
        if j.role == "grader" and j.verdict in ("correct", "incorrect"):
            truth[j.node_id] = j.verdict == "correct"
    cands = [n for n in nodes_l if n.parent_id is not None and (
        (n.role in CANDIDATE_ROLES and n.text) or n.meta.get("final") is True)]
    for n in cands:
        if n.id not in truth and grader is not None:
            whole = n.meta.get("candidate")
            text = whole if isinstance(whole, str) and whole else _path_text(n, nodes)
            res = await grader.verify(task, text, n.answer)
            if res.passed is not None:
                truth[n.id] = res.passed
    known = [truth[n.id] for n in cands if n.id in truth]
    tr.cands, tr.cands_right = len(known), sum(known)
    cand_ids = {n.id for n in cands}
    # unfinished step prefixes: right so far or not (scored separately from candidates)
    prefix: dict[str, bool] = {}
    for n in nodes_l:
        if n.parent_id is not None and n.id not in cand_ids and n.role == "step_proposer":
            ok = prefix_right(task, _path_text(n, nodes))
            if ok is not None:
                prefix[n.id] = ok
    said_right: dict[str, list[bool]] = {}
    for j in judgements:
        if j.role not in JUDGING_ROLES:
            continue
        said = _says_right(j)
        if said is None:
            continue
        if j.node_id in cand_ids and j.node_id in truth:
            right, key = truth[j.node_id], j.role
            said_right.setdefault(j.node_id, []).append(said)
        elif j.node_id in prefix:
            right, key = prefix[j.node_id], f"{j.role} (prefixes)"
        else:
            continue
        c = tr.critic.setdefault(key, [0, 0, 0, 0])
        if right:
            c[0] += 1
            c[1] += int(said)
        else:
            c[2] += 1
            c[3] += int(not said)
    for n in nodes_l:
        if n.operator == "refine" and n.id in truth and n.parent_id in truth:
            if truth[n.parent_id]:
                tr.refine[2] += 1
                tr.refine[3] += int(not truth[n.id])
            else:
                tr.refine[0] += 1
                tr.refine[1] += int(truth[n.id])
        if n.meta.get("finish_reason") == "length":
            tr.truncated += 1
    # tokens by role: every request the strategy made, shared identical ones included
    by_id = {c.id: c for c in calls.values()}
    uses: list[str] = [cid for j in judgements for cid in j.meta.get("call_ids", [])]
    seen: set[tuple[str | None, str, str]] = set()
    for n in nodes_l:
        if n.call_id and (n.parent_id, n.call_id, n.operator) not in seen:
            seen.add((n.parent_id, n.call_id, n.operator))
            uses.append(n.call_id)
    for cid in uses:
        call = by_id.get(cid)
        if call is not None:
            tr.by_role[call.role] = (tr.by_role.get(call.role, 0) + call.prompt_tokens
                                     + call.completion_tokens)
    tr.accounted = sum(tr.by_role.values()) == tr.tokens
    final = attempt.final_node_id
    tr.chosen_rejected = bool(tr.correct and final in said_right
                              and not any(said_right[final]))
    right_ids = [n.id for n in cands if truth.get(n.id)]
    if right_ids and not tr.correct:
        accepted = any(all(said_right.get(i, [False])) for i in right_ids)
        tr.miss = "outranked" if accepted else "rejected"
    return tr


@dataclass(frozen=True, slots=True)
class Job:
    sim: str
    suite: str
    variant: Variant
    size: int
    cap: int | None

    def run_config(self, seed: int, store: str) -> RunConfig:
        data: dict[str, Any] = {
            "model": sim_model(self.sim), "suite": self.suite, "strategy": self.variant.strategy,
            "strategy_params": self.variant.config(self.size), "seed": seed, "cache": False,
            "store": store, **ROLES}
        if self.cap is not None:
            data["task_budget"] = {"max_tokens": self.cap}
        return RunConfig.model_validate(data)


async def run_job(job: Job, suite: Suite, seed: int, tmp: Path) -> list[TaskRun]:
    """Run one cell under one seed in a fresh SQLite store and analyse every task."""
    db = tmp / f"run-{seed}.db"
    store = Store.open(str(db))
    try:
        res = await arun(job.run_config(seed, str(db)), suite=suite, store=store)
        graders: dict[str, Verifier | None] = {}
        out = []
        for task, attempt in zip(suite, res.attempts, strict=True):
            assert task.id == attempt.task_id
            if task.kind not in graders:
                graders[task.kind] = grading_verifier("auto", task)
            nodes, judgements = await store.load_tree(res.run_id, task.id)
            calls = await store.load_calls(res.run_id, task.id)
            out.append(await analyse(task, attempt, nodes, judgements, calls,
                                     graders[task.kind]))
        return out
    finally:
        await store.aclose()
        _remove_runs(tmp)


def _remove_runs(tmp: Path) -> None:
    for p in tmp.glob("run-*"):
        p.unlink()


async def mean_tokens(job: Job, suite: Suite, seed: int) -> float:
    """Mean tokens per task of one run (calibration: no analysis, in-memory store)."""
    res = await arun(job.run_config(seed, "sqlite:///:memory:"), suite=suite)
    return statistics.mean(a.prompt_tokens + a.completion_tokens for a in res.attempts)


async def largest_fitting(ladder: Sequence[int], budget: float,
                          probe: Callable[[int], Awaitable[float]]) -> int | None:
    """The largest size in ``ladder`` whose probe is at most ``budget`` (None if none).

    Assumes the probe does not fall as the size grows. Guesses by linear
    extrapolation (a near-linear cost needs two or three probes), gallops where the
    cost is flat (a search that stops by itself), and once the answer is bracketed
    interpolates, keeping each probe inside the middle half of the bracket.
    """
    end = len(ladder) - 1
    lo, t_lo = 0, await probe(ladder[0])
    if t_lo > budget:
        return None
    prev: int | None = None
    t_prev = 0.0
    hi: int | None = None
    t_hi = 0.0
    while hi is None or hi - lo > 1:
        if hi is None:
            if lo == end:
                return ladder[lo]
            if prev is None:
                slope, step = t_lo / max(1, ladder[0]), 1
            else:
                slope = (t_lo - t_prev) / (ladder[lo] - ladder[prev])
                step = 2 * (lo - prev)
            if slope > 0:
                idx = _index_at_most(ladder, ladder[lo] + (budget - t_lo) / slope)
            else:
                idx = lo + step  # flat: gallop
            idx = min(end, max(lo + 1, idx))
        else:
            frac = (budget - t_lo) / max(t_hi - t_lo, 1e-9)
            idx = _index_at_most(ladder, ladder[lo] + frac * (ladder[hi] - ladder[lo]))
            quarter = (hi - lo) // 4
            idx = max(lo + max(1, quarter), min(hi - max(1, quarter), idx))
        t = await probe(ladder[idx])
        if t <= budget:
            prev, t_prev, lo, t_lo = lo, t_lo, idx, t
        else:
            hi, t_hi = idx, t
    return ladder[lo]


@dataclass(slots=True)
class Probe:
    """Mean tokens per task of one variant at a size, on the calibration seed (cached)."""

    sim: str
    suite_name: str
    suite: Suite
    variant: Variant
    seen: dict[int, float] = field(default_factory=dict)

    async def __call__(self, size: int) -> float:
        if size not in self.seen:
            job = Job(self.sim, self.suite_name, self.variant, size, None)
            self.seen[size] = await mean_tokens(job, self.suite, CALIBRATION_SEED)
        return self.seen[size]


def _index_at_most(ladder: Sequence[int], x: float) -> int:
    return max((i for i, s in enumerate(ladder) if s <= x), default=0)


async def reference_verdicts(suite: Suite, sim: str, seeds: Sequence[int]) -> dict[str, Any]:
    """How the step critic and the judge (temperature 0) score each task's *reference*
    solution, under every evaluation seed: a direct check that their mistakes on a
    given text are fixed per task, not redrawn per seed."""
    model = SimModel(suite, SimParams.model_validate(SIMS[sim]))
    cfg = RoleConfig.model_validate(ROLES["judge"])
    step_ok = judge_ok = 0
    same = True
    for task in suite:
        steps = normalise_solution(task.solution or "", task.answer).splitlines()
        text = "\n".join(steps)
        step_said, judge_said = set(), set()
        for seed in seeds:
            review = await StepCritic(model, cfg, Prompts(), seed).review(task, steps)
            step_said.add(review.first_wrong_step == NO_ERROR)
            res = await Judge(model, cfg, Prompts(), seed).judge(task, text)
            judge_said.add(res.verdict is not None and res.verdict.verdict == "correct")
        same = same and len(step_said) == 1 and len(judge_said) == 1
        step_ok += min(step_said)
        judge_ok += min(judge_said)
    n = len(suite)
    return {"tasks": n, "step_critic_accepts": step_ok / n, "judge_accepts": judge_ok / n,
            "same_verdict_every_seed": same}


# ---------------------------------------------------------------- the whole benchmark


@dataclass(slots=True)
class Plan:
    sims: list[str]
    budgets: list[int]
    seeds: list[int]
    capped: bool
    quick: bool
    gsm8k_tasks: int


def summarise_cell(runs: list[list[TaskRun]], budget: int) -> dict[str, Any]:
    """Per-task records (seed-major input) into the cell's JSON figures."""
    n_tasks = len(runs[0])
    per_task = [[runs[s][i] for s in range(len(runs))] for i in range(n_tasks)]
    flat = [r for rs in per_task for r in rs]
    correct = [[r.correct for r in rs] for rs in per_task]
    tokens = [[r.tokens for r in rs] for rs in per_task]
    task_means = [statistics.mean(c) for c in correct]
    acc = mean_ci(task_means)
    with_cands = [r for r in flat if r.cands]
    oracle_true = [r for r in with_cands if r.cands_right]
    critic: dict[str, dict[str, Any]] = {}
    for role in sorted({k for r in flat for k in r.critic}):
        tot = [sum(r.critic[role][i] for r in flat if role in r.critic) for i in range(4)]
        critic[role] = {"right": tot[0], "right_accepted": tot[1], "wrong": tot[2],
                        "wrong_rejected": tot[3],
                        "specificity": tot[1] / tot[0] if tot[0] else None,
                        "sensitivity": tot[3] / tot[2] if tot[2] else None}
    roles = sorted({k for r in flat for k in r.by_role})
    ref = [sum(r.refine[i] for r in flat) for i in range(4)]
    all_tok = [r.tokens for r in flat]
    return {
        "correct": correct,
        "tokens": tokens,
        "accuracy": acc.as_dict(),
        "diagnostics": {
            "mean_tokens": statistics.mean(all_tok),
            "max_tokens": max(all_tok),
            "share_over_budget": sum(t > budget for t in all_tok) / len(all_tok),
            "calls_per_task": statistics.mean(r.calls for r in flat),
            "tokens_by_role": {k: sum(r.by_role.get(k, 0) for r in flat) / len(flat)
                               for k in roles},
            "tokens_accounted_share": sum(r.accounted for r in flat) / len(flat),
            "oracle": (len(oracle_true) / len(with_cands)) if with_cands else None,
            "selection": (statistics.mean(r.correct for r in oracle_true)
                          if oracle_true else None),
            "candidates_per_task": statistics.mean(r.cands for r in flat),
            "sample_accuracy": (sum(r.cands_right for r in flat) / sum(r.cands for r in flat)
                                if with_cands else None),
            "critic": critic,
            "refine": {"from_wrong": ref[0], "fixed": ref[1], "from_right": ref[2],
                       "broken": ref[3],
                       "fix_rate": ref[1] / ref[0] if ref[0] else None,
                       "break_rate": ref[3] / ref[2] if ref[2] else None},
            "misses": dict(Counter(r.miss for r in flat if r.miss)),
            "right_never_accepted_share": never_accepted(per_task),
            "right_but_rejected_share": (sum(r.chosen_rejected for r in flat)
                                         / max(1, sum(r.correct for r in flat))),
            "budget_limited_share": sum(r.limited for r in flat) / len(flat),
            "unanswered_share": sum(not r.answered for r in flat) / len(flat),
            "stopped_by": dict(Counter(r.stopped_by or "-" for r in flat)),
            "truncated_replies": sum(r.truncated for r in flat),
        },
    }


def never_accepted(per_task: list[list[TaskRun]]) -> float:
    """Share of tasks where the scorer judged some right finished candidate (in any
    seed) and never accepted one: a critic at temperature 0 says the same of the same
    text every time, so such errors are fixed per task rather than averaged out."""
    never = 0
    for rs in per_task:
        seen = sum(c[0] for r in rs for k, c in r.critic.items() if "(prefixes)" not in k)
        ok = sum(c[1] for r in rs for k, c in r.critic.items() if "(prefixes)" not in k)
        never += seen > 0 and ok == 0
    return never / len(per_task)


def compare(cell: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Paired difference (cell - baseline) over tasks, with the sign test."""
    a = [statistics.mean(c) for c in cell["correct"]]
    b = [statistics.mean(c) for c in base["correct"]]
    d = paired_difference(a, b)
    wins = sum(x > y for x, y in zip(a, b, strict=True))
    losses = sum(x < y for x, y in zip(a, b, strict=True))
    return {"difference": d.as_dict(), "sign_p": sign_test(a, b), "tasks_better": wins,
            "tasks_worse": losses, "significant": d.low > 0 or d.high < 0}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def run_all(plan: Plan) -> dict[str, Any]:
    started = time.monotonic()
    commit = git_state()  # the code that runs, not what is checked in by the end
    suites, suite_info = load_suites(plan.quick, plan.gsm8k_tasks)
    variants = [v for v in VARIANTS if available(v)]
    skipped = [v.name for v in VARIANTS if v not in variants]
    cells: list[dict[str, Any]] = []
    calibration: list[dict[str, Any]] = []
    reference = {sim: {name: await reference_verdicts(suite, sim, plan.seeds)
                       for name, suite in suites.items()} for sim in plan.sims}
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp_s:
        tmp = Path(tmp_s)
        for sim in plan.sims:
            for suite_name, suite in suites.items():
                first_sim = sim == plan.sims[0]
                for v in variants:
                    if not (v.main or first_sim):
                        continue
                    probe = Probe(sim, suite_name, suite, v)
                    for budget in plan.budgets:
                        size = await largest_fitting(v.ladder, budget, probe)
                        calibration.append({
                            "sim": sim, "suite": suite_name, "variant": v.name, "budget": budget,
                            "size": size,
                            "probes": {str(k): t for k, t in sorted(probe.seen.items())}})
                        modes: list[tuple[str, int | None, int | None]] = [("fit", size, None)]
                        if plan.capped and v.main and first_sim:
                            modes.append(("capped", v.capped_size, budget))
                        for mode, sz, cap in modes:
                            if sz is None:
                                log(f"{sim} {suite_name} B={budget} {v.name}: nothing fits")
                                continue
                            t0 = time.monotonic()
                            job = Job(sim, suite_name, v, sz, cap)
                            runs = [await run_job(job, suite, s, tmp) for s in plan.seeds]
                            cell = {"sim": sim, "suite": suite_name, "budget": budget,
                                    "variant": v.name, "mode": mode, "strategy": v.strategy,
                                    "params": v.config(sz), "size": sz, "cap": cap,
                                    **summarise_cell(runs, budget),
                                    "wall_s": time.monotonic() - t0}
                            cells.append(cell)
                            log(f"{sim:8s} {suite_name:10s} B={budget:<6d} {v.name:12s} "
                                f"{mode:6s} {v.size}={sz:<5d} "
                                f"acc={cell['accuracy']['value']:.3f} "
                                f"tok={cell['diagnostics']['mean_tokens']:.0f} "
                                f"({cell['wall_s']:.1f}s)")
    for cell in cells:
        base = next((c for c in cells if c["variant"] == BASELINE and c["mode"] == "fit"
                     and c["sim"] == cell["sim"] and c["suite"] == cell["suite"]
                     and c["budget"] == cell["budget"]), None)
        cell["vs_best_of_n"] = None if base is None or base is cell else compare(cell, base)
    return {
        "schema": 1,
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/search_vs_best_of_n.py" + (" --quick" if plan.quick else ""),
        "commit": commit,
        "wall_s": time.monotonic() - started,
        "plan": {"sims": plan.sims, "budgets": plan.budgets, "seeds": plan.seeds,
                 "calibration_seed": CALIBRATION_SEED, "capped": plan.capped,
                 "quick": plan.quick},
        "sims": {s: {"model": sim_model(s),
                     "params": SimParams.model_validate(SIMS[s]).model_dump()}
                 for s in plan.sims},
        "roles": ROLES,
        "suites": suite_info,
        "variants": {v.name: {**asdict(v), "ladder": [v.ladder[0], v.ladder[-1]]}
                     for v in variants},
        "variants_unavailable": skipped,
        "baseline": BASELINE,
        "calibration": calibration,
        "reference_check": reference,
        "cells": cells,
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "src").splitlines()]
    return {"head": git("rev-parse", "HEAD"), "src_uncommitted": dirty}


# ---------------------------------------------------------------- the report


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def est(e: dict[str, Any]) -> str:
    """An accuracy as ``83.3% [70.0, 93.3]``."""
    return f"{100 * e['value']:.1f}% [{100 * e['low']:.1f}, {100 * e['high']:.1f}]"


def diff(e: dict[str, Any]) -> str:
    """A difference in points as ``+8.0 [+2.0, +14.0]``."""
    return f"{100 * e['value']:+.1f} [{100 * e['low']:+.1f}, {100 * e['high']:+.1f}]"


def pval(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _cells(data: dict[str, Any], **match: Any) -> list[dict[str, Any]]:
    return [c for c in data["cells"] if all(c[k] == v for k, v in match.items())]


def _cell(data: dict[str, Any], **match: Any) -> dict[str, Any] | None:
    found = _cells(data, **match)
    return found[0] if found else None


def verdict(cell: dict[str, Any]) -> str:
    cmp = cell["vs_best_of_n"]
    if cmp is None:
        return ""
    d = cmp["difference"]
    if d["low"] > 0:
        return "**better**"
    if d["high"] < 0:
        return "**worse**"
    return "no significant difference"


def render(data: dict[str, Any]) -> str:
    """The Markdown report, from the JSON data alone."""
    plan = data["plan"]
    suites = [s for s in data["suites"] if "skipped" not in data["suites"][s]]
    out: list[str] = []
    w = out.append
    w("# Tree search against best-of-N at the same token budget (sim)\n")
    w("> Written by `bench/search_vs_best_of_n.py` from "
      "`bench/results/search_vs_best_of_n.json`; rerun the script rather than editing. "
      "The section *Why* is hand-written analysis kept in the script (`WHY`), its numbers "
      "filled in from the same data.\n")
    head = data["commit"]["head"][:10] or "unknown"
    dirty = data["commit"]["src_uncommitted"]
    w(f"Command: `{data['command']}` · run time {data['wall_s'] / 60:.1f} min · "
      f"commit `{head}`" + (f" with uncommitted changes in {len(dirty)} src files"
                            if dirty else "") + f" · {data['generated']}.\n")
    if plan["quick"]:
        w("**Quick mode** (1 budget, 6 tasks, 1 seed): a smoke test, not a measurement.\n")
    w("## Answer (issue 4, done-when 5)\n")
    w("Each strategy against best_of_n at the same budget, fit sizes. *Significantly* "
      "better or worse: the 95% bootstrap interval of the paired difference (Δ, in "
      "points) excludes 0. The sign-test p beside each Δ in the tables counts only which "
      "tasks improve, not by how much, and is the stricter test here.\n")
    for line in answer_lines(data, suites):
        w(f"- {line}")
    w("")
    w("## Setup\n")
    setup(data, suites, w)
    w("## Headline: accuracy at matched budgets (fit)\n")
    w("Accuracy with 95% bootstrap interval over tasks (a task's score is its mean "
      "correctness over the seeds); Δ = paired difference from best_of_n (fit) in "
      "points with its interval, p = exact sign test over tasks; tok = mean tokens per "
      "task actually used.\n")
    shown = [v for v in ("best_of_n", "mcts", "beam") if v in data["variants"]]
    for sim in plan["sims"]:
        w(f"**sim `{sim}`** (`{data['sims'][sim]['model']}`)\n")
        hdr = "| suite | B |" + "".join(f" {v} |" for v in shown)
        w(hdr)
        w("|---|---|" + "---|" * len(shown))
        for suite in suites:
            for b in plan["budgets"]:
                row = f"| {suite} | {b:,} |"
                for v in shown:
                    c = _cell(data, sim=sim, suite=suite, budget=b, variant=v, mode="fit")
                    row += f" {short(c, data)} |"
                w(row)
        w("")
    w("## Every cell\n")
    w("`fit`: size chosen so that mean tokens per task ≤ B (no cap). `capped`: a large "
      "size and `task_budget.max_tokens = B`. Δ and p are against best_of_n (fit) in the "
      "same sim, suite and budget. max tok: the largest task; >B: share of task runs "
      "over B; lim: share stopped by the budget; no ans: share with no final answer.\n")
    w("| sim | suite | B | variant | mode | size | accuracy | Δ vs best_of_n | p | "
      "verdict | tok | max tok | >B | lim | no ans |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in data["cells"]:
        cmp = c["vs_best_of_n"]
        dg = c["diagnostics"]
        size = f"{data['variants'][c['variant']]['size']}={c['size']}"
        w(f"| {c['sim']} | {c['suite']} | {c['budget']:,} | {c['variant']} | {c['mode']} | "
          f"{size} | {est(c['accuracy'])} | {diff(cmp['difference']) if cmp else '–'} | "
          f"{pval(cmp['sign_p']) if cmp else '–'} | {verdict(c) if cmp else 'baseline'} | "
          f"{dg['mean_tokens']:,.0f} | {dg['max_tokens']:,} | "
          f"{pct(dg['share_over_budget'])}% | {pct(dg['budget_limited_share'])}% | "
          f"{pct(dg['unanswered_share'])}% |")
    w("")
    missing = [(r["sim"], r["suite"], r["variant"], r["budget"]) for r in data["calibration"]
               if r["size"] is None]
    if missing:
        w("No size fits the budget (so no fit cell) for: " + "; ".join(
            f"{v} on {su} at B={b:,} ({s}; its smallest size uses "
            f"{cheapest(data, s, su, v):,.0f} tokens/task)" for s, su, v, b in missing) + ".\n")
    w("## Measured diagnostics (fit cells)\n")
    w("oracle: share of task runs where some finished candidate was right (beam: any "
      "finished path generated, kept or not); choice: accuracy among those; misses: share "
      "of task runs answered wrong although a right candidate existed, because every right "
      "candidate was scored wrong or not scored (rej) or one was accepted but another won "
      "(out); tok/cand: tokens per finished candidate (mean tokens over candidates per "
      "task); scorer spec/sens: the scorer's measured acceptance of right and rejection "
      "of wrong finished candidates, and for the step critic also of unfinished prefixes "
      "(right so far by the sim's ground truth; sim settings in Setup); right never acc.: "
      "share of tasks where right finished candidates were judged but none was ever "
      "accepted in any seed; right by tie: share of right answers whose chosen candidate "
      "its scorer had called wrong (it won a tie among candidates all scored wrong); "
      "fix/break: "
      "refinements of a wrong parent that are right / of a right parent that are wrong; "
      "scoring share: tokens spent by judge, value and step-critic calls.\n")
    w("| sim | suite | B | variant | size | oracle | choice | misses rej / out | cands/task "
      "| tok/cand | scorer spec / sens | right never acc. | right by tie | fix / break "
      "| scoring share | stopped by |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for c in data["cells"]:
        if c["mode"] != "fit":
            continue
        dg = c["diagnostics"]
        crit = ", ".join(f"{r} {pct(v['specificity'])}/{pct(v['sensitivity'])}"
                         for r, v in dg["critic"].items()) or "–"
        ref = dg["refine"]
        fb = (f"{pct(ref['fix_rate'])} / {pct(ref['break_rate'])}"
              if ref["from_wrong"] or ref["from_right"] else "–")
        stops = ", ".join(f"{k} {v}" for k, v in sorted(dg["stopped_by"].items()) if k != "-")
        runs = sum(len(x) for x in c["correct"])
        miss = dg["misses"]
        misses = (f"{pct(miss.get('rejected', 0) / runs)} / "
                  f"{pct(miss.get('outranked', 0) / runs)}")
        w(f"| {c['sim']} | {c['suite']} | {c['budget']:,} | {c['variant']} | {c['size']} | "
          f"{pct(dg['oracle'])} | {pct(dg['selection'])} | {misses} | "
          f"{dg['candidates_per_task']:.1f} | {tok_per_cand(dg):,.0f} | "
          f"{crit} | {pct(dg['right_never_accepted_share'])}% | "
          f"{pct(dg['right_but_rejected_share'])}% | {fb} | "
          f"{pct(scoring_share(dg))}% | {stops or '–'} |")
    w("")
    w("## Why (hand-written analysis; numbers from this run)\n")
    w(WHY.format(**why_numbers(data, suites)))
    return "\n".join(out) + "\n"


def cheapest(data: dict[str, Any], sim: str, suite: str, variant: str) -> float:
    for r in data["calibration"]:
        if r["sim"] == sim and r["suite"] == suite and r["variant"] == variant:
            probes = r["probes"]
            return float(probes[min(probes, key=int)]) if probes else float("nan")
    return float("nan")


def tok_per_cand(dg: dict[str, Any]) -> float:
    return float(dg["mean_tokens"] / dg["candidates_per_task"]) if dg["candidates_per_task"] \
        else float("nan")


def scoring_share(dg: dict[str, Any]) -> float | None:
    by = dg["tokens_by_role"]
    total = sum(by.values())
    return sum(by.get(r, 0.0) for r in JUDGING_ROLES) / total if total else None


def short(c: dict[str, Any] | None, data: dict[str, Any]) -> str:
    if c is None:
        return "does not fit"
    size = f"{data['variants'][c['variant']]['size']}={c['size']}"
    cell = f"{est(c['accuracy'])}, {size}, tok {c['diagnostics']['mean_tokens']:,.0f}"
    cmp = c["vs_best_of_n"]
    if cmp is not None:
        cell += f"; Δ {diff(cmp['difference'])}, p {pval(cmp['sign_p'])}"
    return cell


def setup(data: dict[str, Any], suites: list[str], w: Callable[[str], None]) -> None:
    plan = data["plan"]
    w("**Sim settings** (`SimParams`; everything else at its default):\n")
    keys = ["skill", "sharpness", "task_noise", "sensitivity", "specificity", "fix_rate",
            "fix_rate_wrong_critique", "break_rate", "seed"]
    w("| setting | " + " | ".join(keys) + " |")
    w("|---|" + "---|" * len(keys))
    for s in plan["sims"]:
        p = data["sims"][s]["params"]
        w(f"| `{s}` | " + " | ".join(str(p[k]) for k in keys) + " |")
    w("")
    w("The same error rates drive every scorer: the best-of-N judge, the mcts/best_first "
      "value (score in the top 30% of its scale when it thinks a candidate right, the "
      "bottom 40% otherwise) and the step critic (the true first wrong step with "
      "probability `sensitivity`; on a right prefix, no error with probability "
      "`specificity`). See docs/sim.md.\n")
    w("**Suites.**")
    for s in suites:
        info = data["suites"][s]
        pc = ", ".join(f"`{k}` {100 * v:.0f}%" for k, v in info["p_correct"].items()
                       if k in plan["sims"])
        w(f"- `{s}`: {len(info['tasks'])} tasks, {info['selection']} (`{info['spec']}`). "
          f"Mean P(one generator sample is right), from the sim's own model: {pc}.")
    for s, info in data["suites"].items():
        if "skipped" in info:
            w(f"- `{s}`: skipped ({info['skipped']}).")
    w("")
    w(f"**Budgets** B = {', '.join(f'{b:,}' for b in plan['budgets'])} tokens (prompt + "
      "completion) per task. *Fit*: each strategy at the largest size whose mean tokens "
      f"per task on calibration seed {plan['calibration_seed']} (not an evaluation seed) "
      "is ≤ B, chosen by tokens alone; the cell's actual mean on the evaluation seeds is "
      "reported beside it and can differ slightly. No cap is applied, so single tasks "
      "may exceed B (the *>B* column). *Capped*" + (
          f" (sim `{plan['sims'][0]}` only): each of the three main strategies at a large "
          "size (" + ", ".join(
              f"{v} {d['size']}={d['capped_size']}" for v, d in data["variants"].items()
              if d["main"])
          + ") with `task_budget.max_tokens = B`, so the engine's ledger stops it and "
          "every task stays within B." if plan["capped"] else ": not run.") + "\n")
    w("**Strategies.** " + "; ".join(f"`{v}`: {d['label']}, extra params "
                                     f"`{json.dumps(d['params'])}`"
                                     for v, d in data["variants"].items()) + ".")
    extras = [v for v, d in data["variants"].items() if not d["main"]]
    if extras:
        w(f" The extra variants ({', '.join(extras)}) run on sim `{plan['sims'][0]}` only.")
    if data["variants_unavailable"]:
        w(f" Not run (the installed strategies do not take their parameters yet): "
          f"{', '.join(data['variants_unavailable'])}.")
    w("")
    roles = ", ".join(f"{r} T={c['temperature']} max_tokens={c['max_tokens']}"
                      for r, c in data["roles"].items())
    w(f"**Roles**: {roles} (value and step critic take the judge's settings, the step "
      "proposer the generator's). Cache off; a fresh temporary SQLite store per run; "
      "the sim in-process.\n")
    w(f"**Seeds**: evaluation seeds {plan['seeds']} (`RunConfig.seed`: which samples the "
      "sim draws; the sim's own seed, which fixes each task's difficulty offset and "
      "wrong answers, stays 0). Intervals: 2,000 bootstrap resamples of tasks "
      "(`deliberate.evals.stats`). With many cells some intervals will exclude 0 by "
      "chance; read single borderline cells with care.\n")


def answer_lines(data: dict[str, Any], suites: list[str]) -> list[str]:
    out = []
    for v in ("mcts", "beam", "best_first", "mcts_steps", "beam_answer"):
        fits = [c for c in _cells(data, variant=v, mode="fit") if c["vs_best_of_n"]]
        if not fits:
            if v in data["variants"]:
                out.append(f"`{v}`: no budget fits it.")
            continue
        better = [c for c in fits if c["vs_best_of_n"]["difference"]["low"] > 0]
        worse = [c for c in fits if c["vs_best_of_n"]["difference"]["high"] < 0]
        ds = [100 * c["vs_best_of_n"]["difference"]["value"] for c in fits]
        total = sum(1 for r in data["calibration"] if r["variant"] == v)
        s = (f"`{v}` vs best_of_n at matched budgets: significantly better in "
             f"{len(better)} of {len(fits)} cells, worse in {len(worse)}, no significant "
             f"difference in {len(fits) - len(better) - len(worse)}")
        if len(fits) < total:
            s += f" (it fits no size in {total - len(fits)} more)"
        s += f"; Δ from {min(ds):+.1f} to {max(ds):+.1f} points."
        if better:
            s += " Better: " + "; ".join(
                f"{c['sim']}/{c['suite']}/B={c['budget']:,} {diff(c['vs_best_of_n']['difference'])}"
                for c in better) + "."
        if worse:
            s += " Worse: " + "; ".join(
                f"{c['sim']}/{c['suite']}/B={c['budget']:,} {diff(c['vs_best_of_n']['difference'])}"
                for c in worse) + "."
        level = [c for c in fits if c not in better and c not in worse]
        if level:
            s += " Not significant: " + "; ".join(
                f"{c['sim']}/{c['suite']}/B={c['budget']:,} {diff(c['vs_best_of_n']['difference'])}"
                for c in level) + "."
        out.append(s)
    capped = [c for c in _cells(data, mode="capped")]
    if capped:
        used = [c["diagnostics"]["mean_tokens"] / c["budget"] for c in capped]
        out.append(f"Under a hard per-task cap (capped cells) the strategies use only "
                   f"{100 * min(used):.0f}–{100 * max(used):.0f}% of B on average and mostly "
                   "do worse than at the fitted size; see *Why*.")
    return out


def _mean(xs: Sequence[float | None]) -> float | None:
    ys = [x for x in xs if x is not None]
    return statistics.mean(ys) if ys else None


def why_numbers(data: dict[str, Any], suites: list[str]) -> dict[str, str]:
    """The figures the hand-written analysis quotes, computed from the cells."""
    budgets = sorted(data["plan"]["budgets"])
    small, mid, large = budgets[0], budgets[len(budgets) // 2], budgets[-1]

    def fit(v: str, **match: Any) -> list[dict[str, Any]]:
        return _cells(data, variant=v, mode="fit", **match)

    def avg(v: str, f: Callable[[dict[str, Any]], float | None], **match: Any) -> float | None:
        return _mean([f(c) for c in fit(v, **match)])

    def p(x: float | None) -> str:
        return pct(x)

    def dg(key: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda c: c["diagnostics"][key]

    def crit(role: str, what: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda c: c["diagnostics"]["critic"].get(role, {}).get(what)

    def miss(kind: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda c: (c["diagnostics"]["misses"].get(kind, 0)
                          / sum(len(x) for x in c["correct"]))

    def delta(c: dict[str, Any]) -> float | None:
        return c["vs_best_of_n"]["difference"]["value"] if c["vs_best_of_n"] else None

    def pts(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:+.1f}"

    def sizes(v: str, b: int) -> str:
        return ", ".join(sorted({str(c["size"]) for c in fit(v, budget=b)}, key=int)) or "–"

    arith = {"b": "–", "better": "–", "worse": "–", "hard": "–", "sig": "–", "n": "–",
             "deltas": "–"}
    a_cells = [c for c in fit("mcts", suite="arithmetic") if c["vs_best_of_n"]]
    if a_cells:
        arith["deltas"] = ", ".join(pts(delta(c)) for c in a_cells)
        arith["sig"] = str(sum(c["vs_best_of_n"]["significant"] for c in a_cells))
        arith["n"] = str(len(a_cells))
        first = data["plan"]["sims"][0]
        m = _cell(data, sim=first, suite="arithmetic", budget=small, variant="mcts", mode="fit")
        b = _cell(data, sim=first, suite="arithmetic", budget=small, variant=BASELINE,
                  mode="fit")
        if m is not None and b is not None and m["vs_best_of_n"]:
            arith["b"] = f"{small:,}"
            arith["better"] = str(m["vs_best_of_n"]["tasks_better"])
            arith["worse"] = str(m["vs_best_of_n"]["tasks_worse"])
            arith["hard"] = str(sum(1 for x, y in zip(b["correct"], m["correct"], strict=True)
                                    if sum(x) == 0 and sum(y) > 0))
    gains = {s: _mean([delta(c) for c in fit("mcts", sim=s)]) for s in data["plan"]["sims"]}
    steps_cells = fit("mcts_steps")
    steps_end = data["variants"].get("mcts_steps", {}).get("ladder", [0, 0])[1]
    ref = [r for by_suite in data["reference_check"].values() for r in by_suite.values()]
    return {
        "bon_oracle": p(avg("best_of_n", dg("oracle"))),
        "bon_choice": p(avg("best_of_n", dg("selection"))),
        "mcts_oracle": p(avg("mcts", dg("oracle"))),
        "mcts_choice": p(avg("mcts", dg("selection"))),
        "bon_oracle_small": p(avg("best_of_n", dg("oracle"), budget=small)),
        "mcts_oracle_small": p(avg("mcts", dg("oracle"), budget=small)),
        "beam_oracle_small": p(avg("beam", dg("oracle"), budget=small)),
        "fix_rate": p(avg("mcts", lambda c: c["diagnostics"]["refine"]["fix_rate"])),
        "break_rate": p(avg("mcts", lambda c: c["diagnostics"]["refine"]["break_rate"])),
        "bon_tpc": f"{avg('best_of_n', lambda c: tok_per_cand(c['diagnostics'])) or 0:,.0f}",
        "mcts_tpc": f"{avg('mcts', lambda c: tok_per_cand(c['diagnostics'])) or 0:,.0f}",
        "beam_tpc": f"{avg('beam', lambda c: tok_per_cand(c['diagnostics'])) or 0:,.0f}",
        "bon_out_small": p(avg("best_of_n", miss("outranked"), budget=small)),
        "bon_out_large": p(avg("best_of_n", miss("outranked"), budget=large)),
        "mcts_out_small": p(avg("mcts", miss("outranked"), budget=small)),
        "mcts_out_large": p(avg("mcts", miss("outranked"), budget=large)),
        "judge_spec": p(avg("best_of_n", crit("judge", "specificity"))),
        "judge_sens": p(avg("best_of_n", crit("judge", "sensitivity"))),
        "value_spec": p(avg("mcts", crit("value", "specificity"))),
        "value_sens": p(avg("mcts", crit("value", "sensitivity"))),
        "step_spec": p(avg("beam", crit("step_critic", "specificity"))),
        "step_sens": p(avg("beam", crit("step_critic", "sensitivity"))),
        "step_prefix_spec": p(avg("beam", crit("step_critic (prefixes)", "specificity"))),
        "beam_never": p(avg("beam", dg("right_never_accepted_share"))),
        "bon_never": p(avg("best_of_n", dg("right_never_accepted_share"))),
        "mcts_never": p(avg("mcts", dg("right_never_accepted_share"))),
        "mcts_gsm_small": pts(avg("mcts", delta, suite="gsm8k", budget=small)),
        "mcts_gsm_large": pts(avg("mcts", delta, suite="gsm8k", budget=large)),
        "arith_b": arith["b"], "arith_better": arith["better"], "arith_worse": arith["worse"],
        "arith_hard": arith["hard"], "arith_sig": arith["sig"], "arith_n": arith["n"],
        "arith_deltas": arith["deltas"],
        "weak_gain": pts(gains.get("weak")), "default_gain": pts(gains.get("default")),
        "beam_min": ", ".join(f"{cheapest(data, s, su, 'beam'):,.0f}"
                              for s in data["plan"]["sims"] for su in suites) or "–",
        "beam_delta_small": pts(avg("beam", delta, budget=small)),
        "beam_delta_mid": pts(avg("beam", delta, budget=mid)),
        "beam_delta_large": pts(avg("beam", delta, budget=large)),
        "beam_sizes_mid": sizes("beam", mid), "beam_sizes_large": sizes("beam", large),
        "beam_cands_mid": f"{avg('beam', dg('candidates_per_task'), budget=mid) or 0:.1f}",
        "beam_cands_large": f"{avg('beam', dg('candidates_per_task'), budget=large) or 0:.1f}",
        "beam_rej_mid": p(avg("beam", miss("rejected"), budget=mid)),
        "beam_tie_mid": p(avg("beam", dg("right_but_rejected_share"), budget=mid)),
        "beam_tie_large": p(avg("beam", dg("right_but_rejected_share"), budget=large)),
        "beam_rej_large": p(avg("beam", miss("rejected"), budget=large)),
        "steps_tokens": ", ".join(sorted({f"{c['diagnostics']['mean_tokens']:,.0f}"
                                          for c in steps_cells if c["size"] == steps_end}))
        or "–",
        "ref_step": p(_mean([r["step_critic_accepts"] for r in ref])),
        "ref_judge": p(_mean([r["judge_accepts"] for r in ref])),
        "ref_same": ("the same verdict under every seed" if ref and all(
            r["same_verdict_every_seed"] for r in ref) else "not always the same verdict "
            "under every seed"),
        "steps_tpc": f"{_mean([tok_per_cand(c['diagnostics']) for c in steps_cells]) or 0:,.0f}",
        "steps_never": p(avg("mcts_steps", dg("right_never_accepted_share"))),
        "capped_bon_used": p(_mean([c["diagnostics"]["mean_tokens"] / c["budget"]
                                    for c in _cells(data, variant="best_of_n", mode="capped")])),
        "capped_mcts_used": p(_mean([c["diagnostics"]["mean_tokens"] / c["budget"]
                                     for c in _cells(data, variant="mcts", mode="capped")])),
        "capped_beam_used": p(_mean([c["diagnostics"]["mean_tokens"] / c["budget"]
                                     for c in _cells(data, variant="beam", mode="capped")])),
        "capped_beam_noans": p(_mean([c["diagnostics"]["unanswered_share"]
                                      for c in _cells(data, variant="beam", mode="capped")])),
    }


WHY = """\
*Written by hand from the measurements of the full run; the script fills in the figures
(means over the fit cells unless stated), so they are those of the data this report was
rendered from. If a rerun changes the picture, revise this text in the script.*

**mcts wins on reach, not on choosing.** Best-of-N can only return one of its samples:
some sample is right in {bon_oracle}% of task runs (its oracle) and the judge picks a
right one in {bon_choice}% of those. mcts *refines* its candidates: on the sim a
refinement of a wrong answer is right {fix_rate}% of the time and a refinement of a
right answer is wrong {break_rate}% of the time (`fix_rate` 0.6 when the critique is
right, 0.15 when not; `break_rate` 0.1, only when told "incorrect"). So its oracle is
{mcts_oracle}%, at the smallest budget already {mcts_oracle_small}% against best-of-N's
{bon_oracle_small}%, while a finished candidate costs it {mcts_tpc} tokens against
{bon_tpc} for a judged best-of-N sample. Its choice rate, {mcts_choice}%, is no better
than best-of-N's.

**Why its lead shrinks with the budget, and why arithmetic shows little.** Both methods
choose worse the more candidates they hold: runs lost although a right candidate was
*accepted* (a wrong one, also accepted, won) rise from {bon_out_small}% to
{bon_out_large}% of task runs for best-of-N and from {mcts_out_small}% to
{mcts_out_large}% for mcts between the smallest and the largest budget. Every scorer has
the sim's error rates (measured on finished candidates: the judge accepts {judge_spec}% of
right and rejects {judge_sens}% of wrong ones, mcts's value {value_spec}% and
{value_sens}%), and a score inside the "right" band carries little information, so more
candidates mean more wrong ones that look right; meanwhile best-of-N's oracle keeps
rising with N. mcts's gain on GSM8K goes from {mcts_gsm_small} points at the smallest
budget to {mcts_gsm_large} at the largest. On the built-in arithmetic suite (30 tasks)
mcts's Δ is {arith_deltas} points, significant in {arith_sig} of {arith_n} cells. At
B = {arith_b} (first sim setting) mcts is better on {arith_better} tasks and worse on
{arith_worse}: its gain comes from the {arith_hard} tasks where best-of-N is wrong in
every seed (its samples share the same recurring wrong answers, which refinement
repairs), and it gives some back on tasks best-of-N always gets right (a choice among more
candidates). Thirty tasks are too few to separate that from noise. With the weaker
generator the lead is larger (mean Δ {weak_gain} against {default_gain} points), since
best-of-N's oracle falls with the generator's skill while the refiner's repair rate does
not depend on it. The gain therefore measures the sim's refiner as much as the search:
with a refiner that rarely repairs, mcts would be best-of-N with fewer candidates.
best_first and beam over the answer space use the same refiner and value and behave like
mcts (see *Every cell*).

**beam is not better at any budget, for three measured reasons.**

1. *A finished candidate costs far more.* Beam proposes one step at a time and calls the
   step critic on every new prefix, each call re-reading the task and all the steps so
   far: a finished solution costs {beam_tpc} tokens against {bon_tpc} for a judged
   best-of-N sample. At the smallest budget only n = 2 fits (the smallest beam costs
   {beam_min} tokens per task, by sim and suite), its finished paths hold a right answer
   in {beam_oracle_small}% of runs against best-of-N's {bon_oracle_small}%, and its Δ is
   {beam_delta_small} points.
2. *The step critic's mistakes are fixed per task.* The critic runs at temperature 0 and
   the sim's step proposer reproduces the reference steps verbatim, so every right path
   of a task is the same text and gets the same verdict in every seed and at every
   budget. Checked directly: given each task's reference solution, the step critic
   accepts it for {ref_step}% of tasks ({ref_same}; the judge accepts the reference text
   for {ref_judge}%), where the setting `specificity` = 0.85 is only the expected share.
   In beam it accepted {step_spec}% of right finished solutions, and in {beam_never}% of tasks it
   never accepted a right one, against {bon_never}% for best-of-N's judge, whose samples
   differ in wording and so get independent verdicts ({mcts_never}% for mcts's value).
   On those tasks no budget helps beam. Right prefixes meet the same fate
   ({step_prefix_spec}% of right-so-far prefixes accepted), and a right path must pass
   the critic at every depth.
3. *More proposals make it worse, not better.* Identical proposed steps are merged into
   one child, so a large n costs little more: the middle budget buys n = {beam_sizes_mid}
   and the largest n = {beam_sizes_large}. More samples bring more distinct wrong steps
   and final answers ({beam_cands_mid} → {beam_cands_large} finished candidates per task
   from the middle to the largest budget), each a chance to fool the critic, while the
   right answer is one node with its one fixed verdict. Where the critic rejects the right
   answer, a small beam often still returns it: every finished answer then scores 0 and
   the tie goes to the earliest-created node, usually the one most samples proposed
   ({beam_tie_mid}% of beam's right answers at the middle budget were won that way,
   {beam_tie_large}% at the largest). With many proposals one of the distinct wrong
   answers is accepted and wins instead: runs lost with every right finished answer
   rejected go from {beam_rej_mid}% to {beam_rej_large}%, and beam's Δ against
   best-of-N from {beam_delta_mid} to {beam_delta_large} points.

mcts over the step space (extra variant) inherits these: the step critic is its value
(a right solution never accepted in {steps_never}% of tasks), a finished candidate costs
{steps_tpc} tokens, and because merged steps leave few distinct children its tree is
soon exhausted, so it stops at {steps_tokens} tokens per task whatever the budget.

**Why the headline does not use a hard per-task cap.** In the capped cells the
strategies use on average {capped_bon_used}% (best-of-N), {capped_mcts_used}% (mcts) and
{capped_beam_used}% (beam) of B. Before each call the engine's ledger reserves the
prompt's byte count (about four times its tokens) plus `max_tokens` per sample, for
every call in flight at once, refuses a call that might not fit, and from then on the
task counts as budget-limited. best-of-N at n = 64 gets as many samples as the
reservation allows and then too little room to judge them all (it picks among the
judged ones); beam scores all its prefixes concurrently, the reservations of one level
exceed B, it stops at the first refusal and has no final answer in {capped_beam_noans}%
of task runs; mcts degrades most gracefully because each rollout's calls are few. So a
cap measures how a strategy copes with the ledger's reservations, not what it does with
B tokens, and the headline compares sizes fitted to the budget instead.
"""


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 budget, 6 tasks, 1 seed, "
                    "default sim only: a smoke test")
    ap.add_argument("--seeds", type=int, default=5, help="evaluation seeds 0..N-1")
    ap.add_argument("--budgets", default="4000,8000,16000", help="tokens per task, comma-separated")
    ap.add_argument("--gsm8k-tasks", type=int, default=80, help="GSM8K problems drawn")
    ap.add_argument("--no-capped", action="store_true", help="skip the capped runs")
    ap.add_argument("--out-json", type=Path, default=OUT_JSON)
    ap.add_argument("--out-md", type=Path, default=OUT_MD)
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the report from an existing JSON")
    args = ap.parse_args(argv)
    if args.render_only:
        data = json.loads(args.out_json.read_text())
    else:
        if args.quick:
            plan = Plan(sims=["default"], budgets=[8000], seeds=[0], capped=True, quick=True,
                        gsm8k_tasks=args.gsm8k_tasks)
        else:
            plan = Plan(sims=list(SIMS), budgets=[int(b) for b in args.budgets.split(",")],
                        seeds=list(range(args.seeds)), capped=not args.no_capped, quick=False,
                        gsm8k_tasks=args.gsm8k_tasks)
        data = asyncio.run(run_all(plan))
        args.out_json.parent.mkdir(parents=True, exist_ok=True)
        args.out_json.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(render(data))
    if args.render_only:
        log(f"wrote {args.out_md} from {args.out_json}")
    else:
        log(f"wrote {args.out_json} and {args.out_md} ({data['wall_s'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
