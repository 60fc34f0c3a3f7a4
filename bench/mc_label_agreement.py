"""Monte Carlo step labels against the true first error, as m grows (issue 5, done-when 3).

On the ``sim`` model the first wrong step of every solution is known: the sim writes
wrong solutions by breaking one step of the reference and carrying the error
forward, and the step critic handler's ``true_first_wrong`` finds that step again
from the text (the first line that leaves the reference). So the labels the
``mc_label`` strategy estimates (Math-Shepherd's hard estimation: the first step
from whose prefix none of ``m`` rollouts reaches the reference answer) can be
checked exactly.

For each suite (the built-in ``arithmetic`` suite, and a seeded draw of GSM8K
training problems read through the ``gsm8k:`` loader from ``../shared/data``), each
m in 1, 2, 4, 8, 16 and each run seed, one run of ``mc_label`` (``n`` = 4
solutions per task, ``split=line``) on the default sim (``SimParams()``), through
the engine as ``deliberate run`` makes it. The solutions are the same for every m
(the generator's request does not depend on m); only the rollouts differ. From
the stored trees, every labelled solution's ``first_wrong_step`` is compared with
the truth on the same steps:

- ``exact``: the same step (or both -1);
- ``flag``: an error is flagged iff there is one (mc != -1 iff truth != -1);
- ``exact | right`` and ``exact | wrong``: exact agreement on solutions with no
  wrong step and on solutions with one; ``late`` is the share of wrong solutions
  whose wrong step got a rollout that still reached the answer (the sim's
  recovery), ``early`` the share flagged at a right step before the true one (all
  m rollouts of a right prefix failed).

A task's figure is the mean over its solutions and the seeds; intervals are 95%
percentile bootstraps over tasks (``deliberate.evals.stats``), and the change from
m = 1 is a paired bootstrap over the same tasks. Cost: model calls and tokens
(prompt + completion) per labelled solution, generation included.

Diagnostic (``--no-ablation`` skips it): the same runs with the sim's completer
recovery rate set to 0 (the handler swapped on a ``SimModel`` passed to the
engine, the only departure from a plain run), which separates the two forces
acting on hard estimation: more rollouts remove false alarms at right steps
(``early``), and a nonzero recovery rate makes a wrong step more likely to get a
lucky rollout (``late``, ``1 - (1 - rate)^m``).

Run from the repository root::

    python bench/mc_label_agreement.py           # full (about 2-3 minutes on 2 cores)
    python bench/mc_label_agreement.py --quick   # 6 tasks per suite, m in 1 and 4

Writes ``bench/results/mc_label_agreement.json`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from deliberate.config import RunConfig
from deliberate.engine.runner import arun
from deliberate.evals.stats import Estimate, bootstrap, mean_ci, paired_difference
from deliberate.models.base import ChatModel
from deliberate.models.sim import SimModel, SimParams
from deliberate.models.sim.core import RoleHandler
from deliberate.models.sim.handlers.completer import RECOVERY_RATE, CompleterHandler
from deliberate.models.sim.handlers.step_critic import true_first_wrong
from deliberate.store import Store
from deliberate.tasks.registry import load_suite
from deliberate.tasks.task import Suite

REPO = Path(__file__).resolve().parents[1]
DATA = "../shared/data"
GSM8K_FILE = "math/gsm8k-train.jsonl.gz"
GSM8K_DRAW_SEED = 0
MS = (1, 2, 4, 8, 16)
SEEDS = (0, 1)
N_SOLUTIONS = 4


@dataclass(slots=True)
class Row:
    """One labelled solution: its Monte Carlo label beside the truth."""

    task_id: str
    seed: int
    steps: int
    truth: int
    mc: int
    estimates: list[float]


@dataclass(slots=True)
class Cell:
    rows: list[Row]
    calls: int
    tokens: int
    solutions: int
    unlabelled: int


def sim_with_recovery(suite: Suite, rate: float) -> SimModel:
    """A default sim whose completer recovers from a wrong prefix at ``rate``.

    Swaps the completer handler on the model (a private attribute): the ablation
    only, never the headline runs.
    """
    sim = SimModel(suite, SimParams())
    # a frozen dataclass's read-only ``name`` does not match the protocol's attribute
    mine = cast(RoleHandler, CompleterHandler(recovery_rate=rate))
    sim._handlers = tuple(mine if h.name == "completer" else h for h in sim._handlers)
    return sim


async def run_cell(suite: Suite, m: int, seed: int, model: ChatModel | None) -> Cell:
    """One mc_label run; every labelled solution compared with the truth."""
    truth_model = SimModel(suite, SimParams())
    with tempfile.TemporaryDirectory() as d:
        cfg = RunConfig.model_validate({
            "suite": suite.name, "strategy": "mc_label",
            "strategy_params": {"n": N_SOLUTIONS, "m": m}, "model": "sim",
            "store": str(Path(d) / "runs.db"), "cache": False, "seed": seed,
            "concurrency": 8,
        })
        res = await arun(cfg, suite=suite, models={"sim": model} if model else None)
        rows: list[Row] = []
        unlabelled = 0
        st = Store.open(cfg.store)
        async with st:
            for task in suite:
                nodes, judgements = await st.load_tree(res.run_id, task.id)
                behaviour = truth_model._behaviours[task.id]
                sols = [n for n in nodes if n.operator == "generate"]
                labels = {j.node_id: j for j in judgements if j.role == "mc_steps"}
                for s in sols:
                    j = labels.get(s.id)
                    if j is None:
                        unlabelled += 1
                        continue
                    steps = [str(x) for x in j.meta["steps"]]
                    truth, _ = true_first_wrong(task, behaviour, steps)
                    assert j.first_wrong_step is not None
                    rows.append(Row(task.id, seed, len(steps), truth, j.first_wrong_step,
                                    [float(e) for e in j.meta["estimates"]]))
        tokens = res.summary["prompt_tokens"] + res.summary["completion_tokens"]
        return Cell(rows, res.summary["calls"], tokens, len(rows) + unlabelled, unlabelled)


# ---------------------------------------------------------------- measures

Pred = Callable[[Row], bool]

MEASURES: dict[str, tuple[Pred, Pred]] = {
    # name: (which solutions count, which of them agree)
    "exact": (lambda r: True, lambda r: r.mc == r.truth),
    "flag": (lambda r: True, lambda r: (r.mc != -1) == (r.truth != -1)),
    "exact_right": (lambda r: r.truth == -1, lambda r: r.mc == -1),
    "exact_wrong": (lambda r: r.truth != -1, lambda r: r.mc == r.truth),
    "late": (lambda r: r.truth != -1, lambda r: r.mc == -1 or r.mc > r.truth),
    "early": (lambda r: r.truth != -1, lambda r: r.mc != -1 and r.mc < r.truth),
}


def by_task(rows: Sequence[Row]) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}
    for r in rows:
        out.setdefault(r.task_id, []).append(r)
    return out


def task_rates(rows: Sequence[Row], tasks: Sequence[str], measure: str) -> list[float]:
    """The measure's rate per task (mean over the task's solutions), in ``tasks`` order."""
    who, ok = MEASURES[measure]
    groups = by_task(rows)
    out = []
    for t in tasks:
        sel = [r for r in groups.get(t, []) if who(r)]
        out.append(sum(ok(r) for r in sel) / len(sel) if sel else float("nan"))
    return out


def pooled(rows: Sequence[Row], tasks: Sequence[str], measure: str) -> Estimate | None:
    """Share over the solutions a measure counts, resampling tasks (ratio of sums)."""
    who, ok = MEASURES[measure]
    groups = by_task(rows)
    counts = [(sum(1 for r in groups.get(t, []) if who(r) and ok(r)),
               sum(1 for r in groups.get(t, []) if who(r))) for t in tasks]
    if sum(c for _, c in counts) == 0:
        return None

    def stat(idx: Sequence[int]) -> float:
        den = sum(counts[i][1] for i in idx)
        return sum(counts[i][0] for i in idx) / den if den else float("nan")

    return bootstrap(len(counts), stat)


def exact_change(rows: Sequence[Row], before: Sequence[Row], tasks: Sequence[str]) -> Estimate:
    """Exact agreement of ``rows`` minus that of ``before``, paired over the same tasks."""
    a, b = task_rates(rows, tasks, "exact"), task_rates(before, tasks, "exact")
    pairs = [(x, y) for x, y in zip(a, b, strict=True) if x == x and y == y]
    return paired_difference([x for x, _ in pairs], [y for _, y in pairs])


def summarise(cells: dict[int, Cell], tasks: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    base_rows = cells[min(cells)].rows
    previous = min(cells)
    for m, cell in sorted(cells.items()):
        rows = cell.rows
        exact = task_rates(rows, tasks, "exact")
        flag = task_rates(rows, tasks, "flag")
        entry: dict[str, Any] = {
            "solutions": cell.solutions,
            "unlabelled": cell.unlabelled,
            "wrong_solutions": sum(1 for r in rows if r.truth != -1),
            "exact": mean_ci([x for x in exact if x == x]).as_dict(),
            "flag": mean_ci([x for x in flag if x == x]).as_dict(),
            "calls_per_solution": cell.calls / max(1, cell.solutions),
            "tokens_per_solution": cell.tokens / max(1, cell.solutions),
        }
        for name in ("exact_right", "exact_wrong", "late", "early"):
            est = pooled(rows, tasks, name)
            entry[name] = est.as_dict() if est is not None else None
        if m != min(cells):
            entry["exact_minus_m1"] = exact_change(rows, base_rows, tasks).as_dict()
            entry["exact_minus_previous"] = exact_change(rows, cells[previous].rows,
                                                         tasks).as_dict()
        previous = m
        out[str(m)] = entry
    base = out[str(min(cells))]
    for entry in out.values():
        entry["ratio_vs_m1"] = {
            k: (entry[k]["value"] / base[k]["value"] if base[k]["value"] else None)
            for k in ("exact", "flag")
        } | {
            k: entry[k] / base[k] for k in ("calls_per_solution", "tokens_per_solution")
        }
    return out


# ---------------------------------------------------------------- suites and main


def load_suites(quick: bool, gsm8k_tasks: int) -> tuple[dict[str, Suite], dict[str, Any]]:
    n_quick = 6
    arith = load_suite("arithmetic")
    suites = {"arithmetic": arith.head(n_quick) if quick else arith}
    info: dict[str, Any] = {"arithmetic": {"spec": "arithmetic"}}
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
    info["gsm8k"] = {"spec": spec, "selection": f"{len(picked)} of {len(full)} problems, "
                     f"random.Random({GSM8K_DRAW_SEED}).sample, in file order", "rows": picked}
    return suites, info


async def measure(suites: dict[str, Suite], ms: Sequence[int], seeds: Sequence[int],
                  recovery: float | None, *, keep_rows: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, suite in suites.items():
        cells: dict[int, Cell] = {}
        for m in ms:
            rows: list[Row] = []
            calls = tokens = sols = unl = 0
            for seed in seeds:
                model = sim_with_recovery(suite, recovery) if recovery is not None else None
                c = await run_cell(suite, m, seed, model)
                rows += c.rows
                calls += c.calls
                tokens += c.tokens
                sols += c.solutions
                unl += c.unlabelled
            cells[m] = Cell(rows, calls, tokens, sols, unl)
        out[name] = summarise(cells, [t.id for t in suite])
        if keep_rows:
            ids = [t.id for t in suite]
            at = {t: i for i, t in enumerate(ids)}
            out[name]["rows"] = {
                "columns": ["task", "seed", "steps", "truth", "mc"], "tasks": ids,
                "by_m": {str(m): [[at[r.task_id], r.seed, r.steps, r.truth, r.mc]
                                  for r in c.rows] for m, c in cells.items()}}
    return out


def table(name: str, res: dict[str, Any], ms: Sequence[int]) -> str:
    head = (f"{'m':>3} {'exact':>22} {'flag':>22} {'exact|right':>12} {'exact|wrong':>12} "
            f"{'late':>6} {'early':>6} {'calls/sol':>10} {'tok/sol':>9} "
            f"{'x exact':>8} {'x tok':>6} {'exact - exact(m=1)':>24}")
    lines = [f"{name}: {res[str(ms[0])]['solutions']} solutions per m "
             f"({res[str(ms[0])]['wrong_solutions']} with a wrong step)", head]

    def ci(d: dict[str, float]) -> str:
        return f"{d['value']:.3f} [{d['low']:.3f},{d['high']:.3f}]"

    def pct(d: dict[str, float] | None) -> str:
        return f"{d['value']:.3f}" if d else "-"

    for m in ms:
        e = res[str(m)]
        r = e["ratio_vs_m1"]
        lines.append(
            f"{m:>3} {ci(e['exact']):>22} {ci(e['flag']):>22} {pct(e['exact_right']):>12} "
            f"{pct(e['exact_wrong']):>12} {pct(e['late']):>6} {pct(e['early']):>6} "
            f"{e['calls_per_solution']:>10.2f} {e['tokens_per_solution']:>9.0f} "
            f"{r['exact']:>8.2f} {r['tokens_per_solution']:>6.2f} "
            f"{(ci(e['exact_minus_m1']) if 'exact_minus_m1' in e else '-'):>24}")
    return "\n".join(lines)


def dump(data: dict[str, Any]) -> str:
    """Indented JSON with each list of rows on one line (the file stays small)."""
    rows: list[str] = []

    def swap(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: (_mark(rows, v) if k == "by_m" else swap(v)) for k, v in obj.items()}
        return obj

    text = json.dumps(swap(data), indent=1)
    for i, r in enumerate(rows):
        text = text.replace(f'"@rows{i}@"', r)
    return text


def _mark(rows: list[str], by_m: dict[str, Any]) -> dict[str, str]:
    out = {}
    for m, value in by_m.items():
        out[m] = f"@rows{len(rows)}@"
        rows.append(json.dumps(value, separators=(",", ":")))
    return out


def git_head() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=False).stdout.strip()
    except OSError:
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="6 tasks per suite, m in 1 and 4, "
                    "one seed, no ablation")
    ap.add_argument("--gsm8k-tasks", type=int, default=150)
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--out", default=str(REPO / "bench/results/mc_label_agreement.json"))
    args = ap.parse_args(argv)
    ms = (1, 4) if args.quick else MS
    seeds = SEEDS[:1] if args.quick else SEEDS
    suites, info = load_suites(args.quick, args.gsm8k_tasks)
    started = time.monotonic()
    results = asyncio.run(measure(suites, ms, seeds, None))
    ablation = None
    if not (args.quick or args.no_ablation):
        ablation = asyncio.run(measure(suites, ms, seeds, 0.0, keep_rows=False))
    for name in suites:
        print(table(name, results[name], ms))
        if ablation is not None:
            print(table(f"{name}, recovery rate 0 (ablation)", ablation[name], ms))
        print()
    data = {
        "what": "mc_label first_wrong_step vs the sim's true first wrong step",
        "command": "python bench/mc_label_agreement.py" + (" --quick" if args.quick else ""),
        "sim": SimParams().model_dump(), "completer_recovery_rate": RECOVERY_RATE,
        "strategy_params": {"n": N_SOLUTIONS, "split": "line"}, "m": list(ms),
        "seeds": list(seeds), "suites": info, "results": results, "ablation_recovery_0": ablation,
        "commit": git_head(), "wall_s": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dump(data) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
