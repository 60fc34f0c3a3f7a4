"""``deliberate run``: run a strategy over a suite, with a progress bar and a results table."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deliberate.cli.common import console, fmt_pct, parse_params
from deliberate.config import RunConfig, load_yaml
from deliberate.engine.runner import Engine, RunResult, resume_config
from deliberate.engine.runner import Progress as RunProgress
from deliberate.errors import UsageError
from deliberate.models.registry import default_model_string
from deliberate.store import Store
from deliberate.strategies.base import build_strategy
from deliberate.tree import AttemptRecord


def _params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items()))


def build_config(
    config_file: Path | None, overrides: dict[str, Any], params: dict[str, Any]
) -> RunConfig:
    base: dict[str, Any] = load_yaml(config_file) if config_file else {}
    cfg = RunConfig.from_mapping(base, source=str(config_file) if config_file else "defaults")
    cfg = cfg.merged(overrides)
    if params:
        cfg = cfg.merged({"strategy_params": {**cfg.strategy_params, **params}})
    return cfg


def run_cmd(
    config_file: Annotated[Path | None, typer.Option("--config", "-c", help="YAML run config; flags override it")] = None,
    suite: Annotated[str | None, typer.Option(help="built-in suite name or SCHEME:PATH (see README)")] = None,
    strategy: Annotated[str | None, typer.Option("--strategy", "-s", help="strategy name (list them: deliberate strategies)")] = None,
    n: Annotated[int | None, typer.Option("--n", "-n", help="candidates per task (strategy's n)")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="strategy parameter KEY=VALUE (repeatable)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="model string, e.g. openai:gpt-4o-mini (default: sim unless an endpoint is configured)")] = None,
    judge_model: Annotated[str | None, typer.Option(help="model string for the judge (default: --model)")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N tasks")] = None,
    seed: Annotated[int | None, typer.Option(help="seed for every random choice")] = None,
    store: Annotated[str | None, typer.Option(help="database URL or SQLite path")] = None,
    task_tokens: Annotated[int | None, typer.Option(help="token budget per task")] = None,
    run_tokens: Annotated[int | None, typer.Option(help="token budget for the whole run")] = None,
    task_calls: Annotated[int | None, typer.Option(help="model-call budget per task")] = None,
    run_cost: Annotated[float | None, typer.Option(help="cost budget for the run (USD)")] = None,
    task_seconds: Annotated[float | None, typer.Option(help="wall-time budget per task")] = None,
    concurrency: Annotated[int | None, typer.Option(help="tasks in flight at once")] = None,
    verifier: Annotated[str | None, typer.Option(help="grading verifier spec: auto, none, answer_match, math_equiv, code_exec, … (see docs/verifiers.md)")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not use the response cache")] = False,
    resume: Annotated[str | None, typer.Option(help="resume the run with this id (its stored config is used)")] = None,
    run_id: Annotated[str | None, typer.Option(help="id for a new run (default: generated)")] = None,
) -> None:
    """Run a strategy over a suite and print the results."""
    asyncio.run(_run(config_file, suite, strategy, n, param, model, judge_model, limit, seed,
                     store, task_tokens, run_tokens, task_calls, run_cost, task_seconds,
                     concurrency, verifier, no_cache, resume, run_id))


async def _run(config_file: Path | None, suite: str | None, strategy: str | None, n: int | None,
               param: list[str] | None, model: str | None, judge_model: str | None,
               limit: int | None, seed: int | None, store_url: str | None,
               task_tokens: int | None, run_tokens: int | None, task_calls: int | None,
               run_cost: float | None, task_seconds: float | None, concurrency: int | None,
               verifier: str | None, no_cache: bool, resume: str | None, new_id: str | None) -> None:
    params = parse_params(param)
    if n is not None:
        params["n"] = n
    overrides: dict[str, Any] = {
        "suite": suite, "strategy": strategy, "model": model, "judge.model": judge_model,
        "limit": limit, "seed": seed, "store": store_url, "concurrency": concurrency,
        "task_budget.max_tokens": task_tokens, "run_budget.max_tokens": run_tokens,
        "task_budget.max_calls": task_calls, "run_budget.max_cost": run_cost,
        "task_budget.max_wall_s": task_seconds, "verifier": verifier,
    }
    if no_cache:
        overrides["cache"] = False
    if resume:
        changed = [k for k, v in overrides.items() if v is not None and k != "store"]
        if changed or params or config_file:
            raise UsageError(
                "--resume uses the run's stored config; drop "
                + ", ".join(sorted({"--" + k.split(".")[0] for k in changed} | (
                    {"--param"} if params else set()) | ({"--config"} if config_file else set())))
            )
        st = Store.open(store_url)
        try:
            cfg = await resume_config(st, resume)
            result = await _execute(cfg, st, resume)
        finally:
            await st.aclose()
    else:
        cfg = build_config(config_file, overrides, params)
        st = Store.open(cfg.store)
        try:
            if new_id is not None:
                if not new_id.replace("-", "").replace("_", "").isalnum():
                    raise UsageError("--run-id may hold only letters, digits, '-' and '_'")
                if await st.get_run(new_id) is not None:
                    raise UsageError(f"run {new_id} already exists; resume it with --resume {new_id}")
            result = await _execute(cfg, st, new_id)
        finally:
            await st.aclose()
    _print_result(result)


async def _execute(cfg: RunConfig, store: Store, run_id: str | None) -> RunResult:
    model_string = cfg.model or default_model_string()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("tok {task.fields[tokens]}"),
        TextColumn("${task.fields[cost]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    with bar:
        tid = bar.add_task(f"{cfg.strategy} on {cfg.suite}", total=None, acc="—", tokens="0",
                           cost="0.00")

        def on_progress(p: RunProgress, _a: AttemptRecord | None) -> None:
            bar.update(tid, total=p.total, completed=p.done, acc=fmt_pct(p.accuracy),
                       tokens=f"{p.prompt_tokens + p.completion_tokens:,}", cost=f"{p.cost:.4f}")

        engine = Engine(cfg, store=store, progress=on_progress)
        result = await engine.run(run_id)
    result.summary["model"] = model_string
    result.summary["replayed_calls"] = engine.replayed_calls
    return result


def _print_result(result: RunResult) -> None:
    s = result.summary
    t = Table(title=f"run {result.run_id}", show_header=False, title_justify="left")
    t.add_column("metric", style="bold")
    t.add_column("value", justify="right")
    strategy = build_strategy(result.config.strategy, result.config.strategy_params)
    t.add_row("strategy", f"{result.config.strategy} {_params(strategy.config.model_dump())}")
    t.add_row("suite", result.config.suite)
    t.add_row("model", str(s.get("model", "")))
    t.add_row("tasks", f"{s['tasks']} ({s['done']} done, {s['budget_limited']} budget-limited, "
                       f"{s['failed']} failed)")
    if s["graded"]:
        t.add_row("accuracy", f"{fmt_pct(s['accuracy'])} ({s['correct']}/{s['graded']})")
        if s.get("sample_accuracy") is not None:
            t.add_row("single-sample accuracy", fmt_pct(s["sample_accuracy"]))
            t.add_row("oracle (any candidate right)", fmt_pct(s["oracle_accuracy"]))
    else:
        t.add_row("accuracy", "n/a (no grading verifier for this suite)")
    det = s.get("detection")
    if det:
        t.add_row("detection precision / recall / F1",
                  " / ".join(fmt_pct(det[k]) for k in ("precision", "recall", "f1")))
        t.add_row("false positives per task", f"{det['fp_per_task']:.2f}")
    t.add_row("tokens (prompt + completion)",
              f"{s['prompt_tokens']:,} + {s['completion_tokens']:,}")
    t.add_row("model calls (paid / reused)", f"{s['calls']} ({s['paid_calls']} / "
                                             f"{s['cached_calls']})")
    t.add_row("cost", f"${s['cost']:.4f}")
    t.add_row("wall time", f"{s.get('wall_s', 0):.1f} s")
    console.print(t)
    console.print(f"stored in {result.store_url} as run [bold]{result.run_id}[/]"
                  f" — see: deliberate show {result.run_id}")
    if str(s.get("model", "")).startswith("sim"):
        console.print("[yellow]note:[/] these outputs come from the simulated model 'sim', "
                      "not a real LLM; set DELIBERATE_BASE_URL and DELIBERATE_MODEL, or "
                      "pass --model, to use a real one.")
