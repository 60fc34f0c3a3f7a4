"""``deliberate eval``: measure critics (and, later, strategies) against ground truth.

``deliberate eval critic processbench`` asks the step critic for the first wrong step
of each ProcessBench item and prints ProcessBench's scores with bootstrap intervals;
``eval critic verdict``, ``pairwise`` and ``realcritic`` score a critic's verdicts on
labelled candidates, the pairwise judge against gold preferences (with and without
position swap), and critique-then-refine in a closed loop.
``deliberate eval offline`` draws accuracy-vs-N curves from recorded samples (a replay
file), at no model cost.
``deliberate eval sweep`` runs strategies × budgets × suites × models as one resumable
sweep in the store (``evals/sweep.py``) and tabulates its cells.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, cast

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from deliberate.cli.common import console, console_err, fmt_pct, parse_params
from deliberate.config import BudgetConfig, RetryConfig, RoleConfig, RunConfig, load_yaml
from deliberate.engine.runner import new_run_id
from deliberate.errors import (
    ConfigError,
    ModelAuthError,
    ModelConnectionError,
    ModelHTTPError,
    UsageError,
)
from deliberate.evals.critics import (
    CriticEvalConfig,
    EvalUsage,
    LoopResult,
    PairwiseResult,
    ProcessBenchItem,
    ProcessBenchResult,
    VerdictResult,
    VerdictRole,
    evaluate_pairwise,
    evaluate_processbench,
    evaluate_realcritic,
    evaluate_verdicts,
    load_labelled_candidates,
    load_pairs,
    load_processbench,
    load_realcritic,
    subsample,
)
from deliberate.evals.offline import (
    CodeTTests,
    LabelSource,
    OfflineResult,
    evaluate_offline,
    plot_curve,
)
from deliberate.evals.stats import Estimate, mean_ci
from deliberate.evals.sweep import (
    CellState,
    SweepConfig,
    SweepProgress,
    SweepResult,
    arun_sweep,
    load_sweep,
    parse_strategy_spec,
)
from deliberate.store import Store
from deliberate.tasks.task import Suite, TaskKind

eval_app = typer.Typer(help="Measure strategies and critics against ground truth: sweeps "
                            "of strategy × budget, critics through the role code strategies "
                            "use.", no_args_is_help=True)
critic_app = typer.Typer(help="Evaluate a critic on labelled data.", no_args_is_help=True)
eval_app.add_typer(critic_app, name="critic")

T = TypeVar("T")
R = TypeVar("R")


@critic_app.command("processbench")
def processbench_cmd(
    data: Annotated[Path, typer.Option(help="ProcessBench file: JSON array or JSON Lines, optionally .gz, with problem, steps and label (0-based, -1 = no error)")],
    model: Annotated[str | None, typer.Option("--model", "-m", help="model string, e.g. openai:NAME@http://localhost:8000/v1 or sim?sensitivity=0.8&specificity=0.9 (default: sim unless an endpoint is configured)")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N items")] = None,
    sample: Annotated[int | None, typer.Option(min=1, help="a random N items (seeded by --seed), kept in file order: a mixed subset where a file lists its erroneous solutions first")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="items in flight at once")] = 8,
    out: Annotated[Path | None, typer.Option(help="write the scores and every item's record as JSON here")] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="critic's sampling temperature (default: a run's, 0)")] = None,
    max_tokens: Annotated[int | None, typer.Option(min=1, help="critic's reply limit in tokens (default: a run's)")] = None,
    prompts_dir: Annotated[Path | None, typer.Option(help="directory of templates replacing built-in ones (step_critic_*.j2)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the critic's requests and of the bootstrap")] = 0,
    retries: Annotated[int, typer.Option(min=1, max=20, help="attempts per call on retryable errors")] = 5,
    run_tokens: Annotated[int | None, typer.Option(min=1, help="token budget for the whole evaluation")] = None,
    run_calls: Annotated[int | None, typer.Option(min=1, help="model-call budget for the whole evaluation")] = None,
    run_seconds: Annotated[float | None, typer.Option(min=0.001, help="wall-time budget in seconds")] = None,
) -> None:
    """Score the step critic on ProcessBench: accuracy on erroneous and correct solutions, F1."""
    if limit is not None and sample is not None:
        raise UsageError("give --limit or --sample, not both")
    items = load_processbench(data, limit=limit)
    if sample is not None:
        items = subsample(items, sample, seed=seed)
    default_role = RunConfig().role("step_critic")
    role = RoleConfig(
        temperature=default_role.temperature if temperature is None else temperature,
        max_tokens=default_role.max_tokens if max_tokens is None else max_tokens,
    )
    config = CriticEvalConfig(
        model=model, role=role, prompts_dir=str(prompts_dir) if prompts_dir else None,
        concurrency=concurrency, retry=RetryConfig(max_attempts=retries),
        budget=BudgetConfig(max_tokens=run_tokens, max_calls=run_calls, max_wall_s=run_seconds),
        seed=seed,
    )
    if out is not None and out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name")
    try:
        result = asyncio.run(_evaluate(items, config))
    except ModelConnectionError as exc:
        raise ModelConnectionError(
            f"{exc} — is the server running, and is the URL in --model right?") from exc
    except ModelAuthError as exc:
        raise ModelAuthError(
            f"{exc} — set DELIBERATE_API_KEY, or name the variable holding the key with "
            "?api_key_env=VAR in --model") from exc
    except ModelHTTPError as exc:
        if exc.status != 404:
            raise
        raise ModelHTTPError(
            f"{exc} — check the model name (openai:NAME@URL) and that the URL ends in /v1",
            status=exc.status, body=exc.body) from exc
    _print(result, data)
    if out is not None:
        payload = {"data": str(data), **result.as_dict()}
        out.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        console.print(f"wrote {len(result.records)} item records to {escape(str(out))}")


async def _evaluate(items: list[ProcessBenchItem], config: CriticEvalConfig) -> ProcessBenchResult:
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True,
                   disable=not console.is_terminal)
    with bar:
        tid = bar.add_task("step critic on ProcessBench", total=len(items))
        return await evaluate_processbench(
            items, config, progress=lambda done, total: bar.update(tid, completed=done))


def _ci(e: Estimate | None) -> tuple[str, str, str]:
    if e is None:
        return "—", "—", "0"
    return fmt_pct(e.value), f"{fmt_pct(e.low)} – {fmt_pct(e.high)}", str(e.n)


def _print(result: ProcessBenchResult, data: Path) -> None:
    m = result.metrics
    level = f"{round(100 * result.config.level)}% CI"
    t = Table(title=f"step critic on ProcessBench ({escape(data.name)})", title_justify="left",
              header_style="bold")
    t.add_column("solutions")
    t.add_column("accuracy", justify="right")
    t.add_column(level, justify="right")
    t.add_column("items", justify="right")
    t.add_row("erroneous: names the first wrong step", *_ci(m.erroneous_accuracy))
    t.add_row("correct: says no step is wrong", *_ci(m.correct_accuracy))
    f1 = _ci(m.f1)
    t.add_row("F1 (harmonic mean of the two)", f1[0], f1[1], str(m.n))
    console.print(t)

    said = Table(title="what the critic said", title_justify="left", header_style="bold")
    said.add_column("solutions")
    said.add_column("reply")
    said.add_column("items", justify="right")
    e, c = m.erroneous_outcomes, m.correct_outcomes
    rows = ((f"erroneous ({m.n_erroneous})", e, (
        ("exact", "the first wrong step (right)"), ("early", "an earlier step"),
        ("late", "a later step"), ("missed", "no wrong step (missed)"),
        ("unanswered", "no readable answer"))),
        (f"correct ({m.n_correct})", c, (
            ("clean", "no wrong step (right)"), ("flagged", "some step (false alarm)"),
            ("unanswered", "no readable answer"))))
    for group, counts, kinds in rows:
        for i, (key, words) in enumerate(kinds):
            said.add_row(group if i == 0 else "", words, str(counts.get(key, 0)))
    console.print(said)

    u = result.usage
    given = result.config.model_string()
    shown = given if given == result.model else f"{given} ({result.model})"
    console.print(f"model {escape(shown)}: {u.calls} calls, "
                  f"{u.prompt_tokens:,} + {u.completion_tokens:,} tokens, {u.wall_s:.1f} s")
    unreadable, failed, skipped = (result.count(s) for s in ("unreadable", "failed", "skipped"))
    if unreadable:
        console.print(f"[yellow]note:[/] {unreadable} replies could not be read even after "
                      "one repair request; they count as wrong")
    if failed:
        first = next(r.error for r in result.records if r.status == "failed")
        console.print(f"[yellow]note:[/] {failed} items failed (they count as wrong); first: "
                      f"{escape(first or '')}")
    if skipped:
        console.print(f"[yellow]note:[/] the {result.limited_by or 'budget'} budget ran out: "
                      f"{skipped} items were not asked and are not counted")
    if result.model.startswith("sim"):
        console.print("[yellow]note:[/] 'sim' is the simulated model: these scores measure its "
                      "configured sensitivity/specificity, not a real LLM; pass "
                      "--model openai:NAME@URL to evaluate one.")


# ------------------------------------------------ eval critic verdict / pairwise / realcritic

_ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="model string, e.g. openai:NAME@http://localhost:8000/v1 or sim?sensitivity=0.8&specificity=0.9 (default: sim unless an endpoint is configured)")]
_LimitOpt = Annotated[int | None, typer.Option(min=1, help="only the first N items")]
_SampleOpt = Annotated[int | None, typer.Option(min=1, help="a random N items (seeded by --seed), kept in file order")]
_ConcurrencyOpt = Annotated[int, typer.Option(min=1, help="items in flight at once")]
_OutOpt = Annotated[Path | None, typer.Option(help="write the scores and every item's record as JSON here")]
_TemperatureOpt = Annotated[float | None, typer.Option(min=0.0, max=2.0, help="the judging role's sampling temperature (default: a run's, 0)")]
_MaxTokensOpt = Annotated[int | None, typer.Option(min=1, help="the judging role's reply limit in tokens (default: a run's)")]
_PromptsOpt = Annotated[Path | None, typer.Option(help="directory of templates replacing built-in ones by name")]
_SeedOpt = Annotated[int, typer.Option(help="seed of the requests, the item order and the bootstrap")]
_RetriesOpt = Annotated[int, typer.Option(min=1, max=20, help="attempts per call on retryable errors")]
_RunTokensOpt = Annotated[int | None, typer.Option(min=1, help="token budget for the whole evaluation")]
_RunCallsOpt = Annotated[int | None, typer.Option(min=1, help="model-call budget for the whole evaluation")]
_RunSecondsOpt = Annotated[float | None, typer.Option(min=0.001, help="wall-time budget in seconds")]


def _critic_form_config(model: str | None, role: str, temperature: float | None,
                        max_tokens: int | None, prompts_dir: Path | None, concurrency: int,
                        retries: int, run_tokens: int | None, run_calls: int | None,
                        run_seconds: float | None, seed: int,
                        refiner: RoleConfig | None = None) -> CriticEvalConfig:
    """The evaluation's settings from the options every critic form shares."""
    default = RunConfig().role(role)
    role_cfg = RoleConfig(
        temperature=default.temperature if temperature is None else temperature,
        max_tokens=default.max_tokens if max_tokens is None else max_tokens)
    return CriticEvalConfig(
        model=model, role=role_cfg, refiner=refiner,
        prompts_dir=str(prompts_dir) if prompts_dir else None, concurrency=concurrency,
        retry=RetryConfig(max_attempts=retries),
        budget=BudgetConfig(max_tokens=run_tokens, max_calls=run_calls, max_wall_s=run_seconds),
        seed=seed)


def _subset(items: list[T], sample: int | None, seed: int) -> list[T]:
    return subsample(items, sample, seed=seed) if sample is not None else items


def _check_subset_options(limit: int | None, sample: int | None, out: Path | None) -> None:
    if limit is not None and sample is not None:
        raise UsageError("give --limit or --sample, not both")
    if out is not None and out.is_dir():
        raise UsageError(f"--out {out} is a directory; give a file name")


@contextlib.contextmanager
def _endpoint_hints() -> Iterator[None]:
    """Model errors that stop an evaluation, with what to check."""
    try:
        yield
    except ModelConnectionError as exc:
        raise ModelConnectionError(
            f"{exc} — is the server running, and is the URL in --model right?") from exc
    except ModelAuthError as exc:
        raise ModelAuthError(
            f"{exc} — set DELIBERATE_API_KEY, or name the variable holding the key with "
            "?api_key_env=VAR in --model") from exc
    except ModelHTTPError as exc:
        if exc.status != 404:
            raise
        raise ModelHTTPError(
            f"{exc} — check the model name (openai:NAME@URL) and that the URL ends in /v1",
            status=exc.status, body=exc.body) from exc


async def _with_bar(description: str, total: int,
                    run: Callable[[Callable[[int, int], None]], Awaitable[R]]) -> R:
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True,
                   disable=not console.is_terminal)
    with bar:
        tid = bar.add_task(description, total=total)
        return await run(lambda done, _total: bar.update(tid, completed=done))


def _write_result(out: Path | None, data: Path, payload: dict[str, Any]) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": str(data), **payload}, indent=1, ensure_ascii=False)
                   + "\n")
    console.print(f"wrote {len(payload['items'])} item records to {escape(str(out))}")


def _form_notes(model: str, given: str, usage: EvalUsage, counts: dict[str, int],
                first_error: str | None, limited_by: str | None, sim_note: str) -> None:
    shown = given if given == model else f"{given} ({model})"
    console.print(f"model {escape(shown)}: {usage.calls} calls, "
                  f"{usage.prompt_tokens:,} + {usage.completion_tokens:,} tokens, "
                  f"{usage.wall_s:.1f} s")
    if counts.get("unreadable"):
        console.print(f"[yellow]note:[/] {counts['unreadable']} items had a reply that could "
                      "not be read even after one repair request")
    if counts.get("failed"):
        console.print(f"[yellow]note:[/] {counts['failed']} items failed; first: "
                      f"{escape(first_error or '')}")
    if counts.get("skipped"):
        console.print(f"[yellow]note:[/] the {limited_by or 'budget'} budget ran out: "
                      f"{counts['skipped']} items were not asked and are not counted")
    if model.startswith("sim"):
        console.print(f"[yellow]note:[/] 'sim' is the simulated model: {sim_note}; pass "
                      "--model openai:NAME@URL to evaluate a real one.")


def _rows_table(title: str, first: str, rows: list[tuple[str, Estimate | None]],
                level: float) -> Table:
    t = Table(title=title, title_justify="left", header_style="bold")
    t.add_column(first)
    t.add_column("share", justify="right")
    t.add_column(f"{round(100 * level)}% CI", justify="right")
    t.add_column("items", justify="right")
    for words, e in rows:
        t.add_row(words, *_ci(e))
    return t


@critic_app.command("verdict")
def verdict_cmd(
    data: Annotated[Path, typer.Option(help="labelled candidates: JSON array or JSON Lines, optionally .gz; per row a question and either 'solution' + 'is_correct' or columns of {solution, is_correct} (the GSM8K model-solutions file)")],
    columns: Annotated[str | None, typer.Option(help="only these solution columns, comma-separated (default: every column holding {solution, is_correct})")] = None,
    role: Annotated[str, typer.Option(help="critic (templates critic_*.j2, as refine uses it) or judge (judge_*.j2, as best_of_n uses it)")] = "critic",
    model: _ModelOpt = None,
    limit: _LimitOpt = None,
    sample: _SampleOpt = None,
    concurrency: _ConcurrencyOpt = 8,
    out: _OutOpt = None,
    temperature: _TemperatureOpt = None,
    max_tokens: _MaxTokensOpt = None,
    prompts_dir: _PromptsOpt = None,
    seed: _SeedOpt = 0,
    retries: _RetriesOpt = 5,
    run_tokens: _RunTokensOpt = None,
    run_calls: _RunCallsOpt = None,
    run_seconds: _RunSecondsOpt = None,
) -> None:
    """Score a critic's verdicts on labelled candidates: sensitivity, specificity, accuracy."""
    _check_subset_options(limit, sample, out)
    if role not in ("critic", "judge"):
        raise UsageError(f"--role must be critic or judge, not {role!r}")
    picked = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
    items = _subset(load_labelled_candidates(data, columns=picked, limit=limit), sample, seed)
    config = _critic_form_config(model, role, temperature, max_tokens, prompts_dir, concurrency,
                                 retries, run_tokens, run_calls, run_seconds, seed)
    verdict_role: VerdictRole = "critic" if role == "critic" else "judge"
    with _endpoint_hints():
        result = asyncio.run(_with_bar(
            f"{role} on labelled candidates", len(items),
            lambda progress: evaluate_verdicts(items, config, role=verdict_role,
                                               progress=progress)))
    _print_verdicts(result, data)
    _write_result(out, data, result.as_dict())


def _print_verdicts(result: VerdictResult, data: Path) -> None:
    m = result.metrics
    console.print(_rows_table(f"{result.role} verdicts on labelled candidates "
                              f"({escape(data.name)})", "candidates", [
        ("incorrect: called incorrect (sensitivity)", m.sensitivity),
        ("correct: called correct (specificity)", m.specificity),
        ("all: verdict agrees with the label (accuracy)", m.accuracy),
        ("mean of sensitivity and specificity", m.balanced_accuracy),
    ], result.config.level))
    cm = Table(title="confusion matrix (candidates)", title_justify="left", header_style="bold")
    for col in ("label", "said incorrect", "said correct", "no readable verdict"):
        cm.add_column(col, justify="left" if col == "label" else "right")
    w, r = m.wrong_outcomes, m.right_outcomes
    cm.add_row(f"incorrect ({m.n_wrong})", str(w.get("caught", 0)), str(w.get("missed", 0)),
               str(w.get("unanswered", 0)))
    cm.add_row(f"correct ({m.n_right})", str(r.get("false_alarm", 0)), str(r.get("passed", 0)),
               str(r.get("unanswered", 0)))
    console.print(cm)
    if len(m.by_source) > 1:
        bs = Table(title="by source", title_justify="left", header_style="bold")
        for col in ("source", "incorrect", "sensitivity", "correct", "specificity"):
            bs.add_column(col, justify="left" if col == "source" else "right")
        for src, v in m.by_source.items():
            bs.add_row(escape(src or "—"), str(v["n_wrong"]), fmt_pct(v["sensitivity"]),
                       str(v["n_right"]), fmt_pct(v["specificity"]))
        console.print(bs)
    failed = next((r.error for r in result.records if r.status == "failed"), None)
    _form_notes(result.model, result.config.model_string(), result.usage,
                {s: result.count(s) for s in ("unreadable", "failed", "skipped")}, failed,
                result.limited_by, "these scores measure its configured sensitivity and "
                "specificity, not a real LLM")


@critic_app.command("pairwise")
def pairwise_cmd(
    data: Annotated[Path, typer.Option(help="pairs with a gold preference (LLMBar form): JSON array or JSON Lines, optionally .gz, with input, output_1, output_2 and label (1 or 2, the better output)")],
    no_swap: Annotated[bool, typer.Option("--no-swap", help="ask one order only (output 1 first): half the calls, no swap figures")] = False,
    model: _ModelOpt = None,
    limit: _LimitOpt = None,
    sample: _SampleOpt = None,
    concurrency: _ConcurrencyOpt = 8,
    out: _OutOpt = None,
    temperature: _TemperatureOpt = None,
    max_tokens: _MaxTokensOpt = None,
    prompts_dir: _PromptsOpt = None,
    seed: _SeedOpt = 0,
    retries: _RetriesOpt = 5,
    run_tokens: _RunTokensOpt = None,
    run_calls: _RunCallsOpt = None,
    run_seconds: _RunSecondsOpt = None,
) -> None:
    """Score the pairwise judge against gold preferences, with and without position swap."""
    _check_subset_options(limit, sample, out)
    items = _subset(load_pairs(data, limit=limit), sample, seed)
    config = _critic_form_config(model, "pairwise_judge", temperature, max_tokens, prompts_dir,
                                 concurrency, retries, run_tokens, run_calls, run_seconds, seed)
    with _endpoint_hints():
        result = asyncio.run(_with_bar(
            "pairwise judge on gold preferences", len(items),
            lambda progress: evaluate_pairwise(items, config, swap=not no_swap,
                                               progress=progress)))
    _print_pairwise(result, data)
    _write_result(out, data, result.as_dict())


def _print_pairwise(result: PairwiseResult, data: Path) -> None:
    m = result.metrics
    rows: list[tuple[str, Estimate | None]] = [
        ("one order, output 1 shown first (no swap)", m.accuracy_no_swap)]
    if result.swap:
        rows += [("one order, output 2 shown first", m.accuracy_reversed),
                 ("mean of the two orders", m.accuracy_single),
                 ("both orders must agree (swap)", m.accuracy_swap)]
    console.print(_rows_table(f"pairwise judge picks the gold output ({escape(data.name)}; "
                              f"output 1 better in {m.n_first_better} of {m.n})", "asked",
                              rows, result.config.level))
    bias: list[tuple[str, Estimate | None]] = [
        ("verdicts naming the output shown first", m.first_position)]
    if result.swap:
        bias = [("both orders name the same output (position consistency)", m.consistency),
                ("ties after the swap (the orders disagree)", m.ties), *bias]
    console.print(_rows_table("position bias", "pairs", bias, result.config.level))
    failed = next((r.error for r in result.records if r.status == "failed"), None)
    _form_notes(result.model, result.config.model_string(), result.usage,
                {s: result.count(s) for s in ("unreadable", "failed", "skipped")}, failed,
                result.limited_by, "its pairwise skill is derived from its sensitivity and "
                "specificity (docs/evaluation.md)")


@critic_app.command("realcritic")
def realcritic_cmd(
    data: Annotated[Path, typer.Option(help="RealCritic items: JSON array or JSON Lines, optionally .gz, with question, reasoning (the solution to critique) and gt (the gold answer)")],
    model: _ModelOpt = None,
    limit: _LimitOpt = None,
    sample: _SampleOpt = None,
    concurrency: _ConcurrencyOpt = 8,
    out: _OutOpt = None,
    temperature: _TemperatureOpt = None,
    max_tokens: _MaxTokensOpt = None,
    refiner_temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0, help="the refiner's sampling temperature (default: a run's, 0.7)")] = None,
    refiner_max_tokens: Annotated[int | None, typer.Option(min=1, help="the refiner's reply limit in tokens (default: a run's)")] = None,
    prompts_dir: _PromptsOpt = None,
    seed: _SeedOpt = 0,
    retries: _RetriesOpt = 5,
    run_tokens: _RunTokensOpt = None,
    run_calls: _RunCallsOpt = None,
    run_seconds: _RunSecondsOpt = None,
) -> None:
    """Closed loop: critique then refine each recorded solution; the share of wrong answers
    fixed and of right answers broken."""
    _check_subset_options(limit, sample, out)
    items = _subset(load_realcritic(data, limit=limit), sample, seed)
    default = RunConfig().role("refiner")
    refiner = RoleConfig(
        temperature=default.temperature if refiner_temperature is None else refiner_temperature,
        max_tokens=default.max_tokens if refiner_max_tokens is None else refiner_max_tokens)
    config = _critic_form_config(model, "critic", temperature, max_tokens, prompts_dir,
                                 concurrency, retries, run_tokens, run_calls, run_seconds, seed,
                                 refiner)
    with _endpoint_hints():
        result = asyncio.run(_with_bar(
            "critic then refiner", len(items),
            lambda progress: evaluate_realcritic(items, config, progress=progress)))
    _print_realcritic(result, data)
    _write_result(out, data, result.as_dict())


def _print_realcritic(result: LoopResult, data: Path) -> None:
    m = result.metrics
    level = result.config.level
    console.print(_rows_table(f"critique, then refine ({escape(data.name)})", "answers", [
        ("right before", m.accuracy_before),
        ("right after one critique and revision", m.accuracy_after),
        ("change (after − before)", m.change),
        (f"wrong answers fixed ({m.n_wrong})", m.fix_rate),
        (f"right answers broken ({m.n_right})", m.break_rate),
    ], level))
    console.print(_rows_table("the critic and the refiner apart", "answers", [
        ("wrong: the critic does not accept", m.flagged_wrong),
        ("right: the critic accepts", m.accepted_right),
        ("wrong and revised: fixed", m.fix_when_revised),
        ("right and revised: broken", m.break_when_revised),
    ], level))
    o = m.outcomes
    console.print(f"fixed {o.get('fixed', 0)}, still wrong {o.get('still_wrong', 0)}, "
                  f"kept right {o.get('kept', 0)}, broken {o.get('broken', 0)}")
    failed = next((r.error for r in result.records if r.status == "failed"), None)
    _form_notes(result.model, result.config.model_string(), result.usage,
                {s: result.count(s) for s in ("unreadable", "failed", "skipped")}, failed,
                result.limited_by, "these rates measure its configured sensitivity, "
                "specificity, fix_rate and break_rate, not a real LLM")


# --------------------------------------------------------------------------- eval offline

_KINDS = ("math", "code", "choice", "text", "findings")
_LABELS = ("auto", "recorded", "grade")


def _grid(text: str | None) -> list[int] | None:
    if text is None or not text.strip():
        return None
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError as exc:
        raise UsageError(f"--n {text!r}: give sample counts like 1,2,4,8") from exc


@eval_app.command("offline")
def offline_cmd(
    replay: Annotated[Path, typer.Argument(help="replay file (JSONL, optionally .gz) holding each task's recorded completions; see docs/replay-format.md and 'deliberate replay convert'")],
    suite: Annotated[str | None, typer.Option(help="suite of the recorded tasks (e.g. humaneval:PATH, gsm8k:PATH): needed to grade unlabelled samples; records match its tasks by id, else prompt")] = None,
    kind: Annotated[str, typer.Option(help="without --suite: task kind for reading answers to vote on (math, code, choice, text)")] = "math",
    labels: Annotated[str, typer.Option(help="auto (the file's 'correct' labels where every sample has one, else grade), recorded, or grade")] = "auto",
    verifier: Annotated[str, typer.Option(help="grading verifier spec (see docs/verifiers.md)")] = "auto",
    n: Annotated[str | None, typer.Option("--n", help="sample counts N, comma-separated (default: 1..K for pools up to 10, else powers of two and K)")] = None,
    draws: Annotated[int, typer.Option(min=1, help="random subsets drawn per task and N")] = 200,
    seed: Annotated[int, typer.Option(help="seed of the subsets and of the bootstrap")] = 0,
    resamples: Annotated[int, typer.Option(min=10, help="bootstrap resamples of the tasks")] = 2000,
    level: Annotated[float, typer.Option(min=0.5, max=0.999, help="confidence level of the intervals")] = 0.95,
    labels_cache: Annotated[Path | None, typer.Option(help="where grades are kept (default: REPLAY.labels.json beside the file)")] = None,
    no_labels_cache: Annotated[bool, typer.Option("--no-labels-cache", help="grade again and keep nothing")] = False,
    tests: Annotated[Path | None, typer.Option(help="replay file of recorded model-written tests per task (e.g. from codet_tests_to_replay): adds CodeT selection to the curve; needs --suite")] = None,
    test_sets: Annotated[int | None, typer.Option(min=1, help="with --tests: use each task's first M recorded test sets (default: all)")] = None,
    tests_per_set: Annotated[int, typer.Option(min=1, help="with --tests: asserts kept from the start of each set, as the codet strategy")] = 5,
    max_tests: Annotated[int, typer.Option(min=1, help="with --tests: distinct tests pooled per task, as the codet strategy")] = 200,
    concurrency: Annotated[int, typer.Option(min=1, help="samples graded at once (the sandbox has its own limit)")] = 16,
    out: Annotated[Path | None, typer.Option(help="write the curve, pool figures and per-task counts as JSON here (and the plot beside it, as .png)")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the accuracy-vs-N plot here (PNG)")] = None,
    title: Annotated[str | None, typer.Option(help="the plot's title (default: the file name)")] = None,
) -> None:
    """Accuracy against N from recorded samples: sample accuracy, oracle pass@N and majority
    vote, subsampled from each task's pool, at no model cost."""
    from deliberate.tasks.registry import load_suite

    if kind not in _KINDS:
        raise UsageError(f"--kind must be one of {', '.join(_KINDS)}, not {kind!r}")
    if labels not in _LABELS:
        raise UsageError(f"--labels must be one of {', '.join(_LABELS)}, not {labels!r}")
    if labels_cache is not None and no_labels_cache:
        raise UsageError("give --labels-cache or --no-labels-cache, not both")
    for target, flag in ((out, "--out"), (plot, "--plot")):
        if target is not None and target.is_dir():
            raise UsageError(f"{flag} {target} is a directory; give a file name")
    grid = _grid(n)
    if tests is not None and suite is None:
        raise UsageError("--tests needs --suite: CodeT runs the programs on the suite's tasks")
    codet = None if tests is None else CodeTTests(
        tests, sets=test_sets, tests_per_set=tests_per_set, max_tests=max_tests)
    tasks = load_suite(suite) if suite is not None else None
    cache: Path | Literal["default"] | None = (
        None if no_labels_cache else labels_cache if labels_cache is not None else "default")
    label_source: LabelSource = "auto" if labels == "auto" else (
        "recorded" if labels == "recorded" else "grade")
    result = asyncio.run(_offline(replay, tasks, kind, label_source, verifier, cache, grid,
                                  draws, seed, resamples, level, codet, concurrency))
    _print_offline(result)
    png = plot if plot is not None else out.with_suffix(".png") if out is not None else None
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        shown = None if png is None else png.name if png.parent == out.parent else str(png)
        payload = {**result.as_dict(), "plot": shown}
        out.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        console.print(f"wrote the curve to {escape(str(out))}")
    if png is not None:
        plot_curve(result, png, title=title)
        console.print(f"wrote the plot to {escape(str(png))}")


async def _offline(replay: Path, suite: Suite | None, kind: str, labels: LabelSource,
                   verifier: str, cache: Path | Literal["default"] | None,
                   grid: list[int] | None, draws: int, seed: int, resamples: int, level: float,
                   codet: CodeTTests | None, concurrency: int) -> OfflineResult:
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True,
                   disable=not console.is_terminal)
    with bar:
        tid = bar.add_task("reading recorded samples", total=None)

        def progress(what: str, done: int, total: int) -> None:
            bar.update(tid, description=what, completed=done, total=total)

        return await evaluate_offline(
            replay, suite=suite, kind=cast(TaskKind, kind), labels=labels, verifier=verifier,
            cache=cache, ns=grid, draws=draws, seed=seed, resamples=resamples, level=level,
            codet=codet, concurrency=concurrency, progress=progress)


def _est(e: Estimate) -> str:
    return f"{fmt_pct(e.value)} [{fmt_pct(e.low)}, {fmt_pct(e.high)}]"


def _pct(e: Estimate) -> str:
    return f"{100 * e.value:.1f} ({100 * e.low:.1f}–{100 * e.high:.1f})"


def _exact(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _print_offline(result: OfflineResult) -> None:
    pools = result.pools.pools
    sizes = sorted({p.size for p in pools})
    pool_text = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}–{sizes[-1]}"
    level = f"{round(100 * result.level)}% interval"
    t = Table(title=f"{escape(Path(result.source).name)}: {result.tasks} tasks, "
                    f"{pool_text} recorded samples each", title_justify="left",
              header_style="bold",
              caption=f"% of tasks ({level}, tasks resampled); {result.draws} random subsets "
                      "per task and N. pass@1: mean sample accuracy; oracle: any of the N "
                      "right; majority: self-consistency's pick; "
                      + ("CodeT: the codet strategy's pick on the recorded tests; "
                         if "codet" in result.curve[0].metrics else "")
                      + "exact: expectation over all subsets (— where too many)",
              caption_justify="left")
    t.add_column("N", justify="right")
    t.add_column("pass@1", justify="right")
    t.add_column("oracle", justify="right")
    t.add_column("exact", justify="right")
    t.add_column("majority", justify="right")
    t.add_column("exact", justify="right")
    codet = "codet" in result.curve[0].metrics
    if codet:
        t.add_column("CodeT", justify="right")
    for p in result.curve:
        row = [str(p.n), _pct(p["sample"].estimate), _pct(p["oracle"].estimate),
               _exact(p["oracle"].exact), _pct(p["majority"].estimate),
               _exact(p["majority"].exact)]
        if codet:
            row.append(_pct(p["codet"].estimate))
        t.add_row(*row)
    console.print(t)
    f = result.pool
    console.print(
        f"whole pool: sample accuracy {_est(f.sample_accuracy)}, oracle (any sample right) "
        f"{_est(f.oracle)}, majority vote in recorded order {_est(f.majority)} "
        f"(in random order {fmt_pct(f.majority_any_order.value)})"
        + (f", CodeT {_est(f.codet)}" if f.codet is not None else ""))
    info = result.pools.codet
    if info is not None:
        pooled = info["pooled_tests"]
        console.print(f"CodeT: {pooled['mean']:.0f} generated tests pooled per task on average "
                      f"({pooled['min']}–{pooled['max']}; {info['tasks_without_tests']} tasks "
                      f"without any); programs run on them: {info['run_now']:,} now, "
                      f"{info['cached']:,} from the cache")
        if info["sandbox_errors"]:
            console.print(f"[yellow]note:[/] {info['sandbox_errors']} programs failed in the "
                          "sandbox itself; they pass no test (not cached: run again)")
    lc = result.pools.labels
    how = [f"{k} {v:,}" for k, v in lc.as_dict().items() if v]
    console.print(f"labels: {', '.join(how)}"
                  + (f" (cache {escape(result.pools.cache)})" if result.pools.cache else ""))
    if lc.undecided:
        console.print(f"[yellow]note:[/] {lc.undecided} samples could not be graded "
                      "(the verifier could not tell); they count as wrong")
    if result.pools.unmatched:
        console.print(f"[yellow]note:[/] {len(result.pools.unmatched)} records match no task "
                      "of the suite and are left out")


# -- eval sweep: strategies × budgets × suites × models ---------------------------------


def _numbers(raw: str | None, flag: str) -> list[int | float] | None:
    if raw is None:
        return None
    out: list[int | float] = []
    for part in raw.split(","):
        value = parse_params([f"v={part.strip()}"])["v"]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{flag}: {part.strip()!r} is not a number (give V1,V2,...)")
        out.append(value)
    return out


def _with_params(entries: list[Any], params: dict[str, Any]) -> list[Any]:
    """Apply ``STRATEGY.KEY=VALUE`` fixed parameters to the strategy entries they name."""
    out = [parse_strategy_spec(e) if isinstance(e, str) else dict(e) for e in entries]
    for dotted, value in params.items():
        name, dot, key = dotted.partition(".")
        name = name.strip().replace("-", "_")
        hits = [e for e in out if str(e.get("strategy", "")).replace("-", "_") == name]
        if not dot or not key or not hits:
            raise ConfigError(f"--param {dotted}={value}: write STRATEGY.KEY=VALUE for a "
                              "strategy of the sweep (e.g. best_of_n.scorer=verifier)")
        for e in hits:
            e["params"] = {**e.get("params", {}), key: value}
    return out


def build_sweep_config(config_file: Path | None, options: dict[str, Any],
                       params: dict[str, Any]) -> SweepConfig:
    """Defaults, then the YAML file, then flags (dotted keys; None = not given)."""
    data: dict[str, Any] = load_yaml(config_file) if config_file else {}
    for key, value in options.items():
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for p in parents:
            child = node.get(p)
            node[p] = dict(child) if isinstance(child, dict) else {}
            node = node[p]
        node[last] = value
    if params:
        strategies = data.get("strategies")
        entries = strategies if isinstance(strategies, list) else (
            [strategies] if strategies else [])
        data["strategies"] = _with_params(entries, params)
    source = f"{config_file} and options" if config_file else "options"
    if "strategies" not in data:
        raise ConfigError(f"{source}: name the strategies to sweep "
                          "(--strategy best_of_n:n=4,8,16, repeatable, or 'strategies:')")
    return SweepConfig.from_mapping(data, source=source)


@contextlib.contextmanager
def _model_error_hints() -> Iterator[None]:
    """Model errors that stop a sweep, with what to check."""
    try:
        yield
    except ModelConnectionError as exc:
        raise ModelConnectionError(
            f"{exc} — is the server running, and is the URL in --model right?") from exc
    except ModelAuthError as exc:
        raise ModelAuthError(
            f"{exc} — set DELIBERATE_API_KEY, or name the variable holding the key with "
            "?api_key_env=VAR in --model") from exc


@eval_app.command("sweep")
def sweep_cmd(
    config_file: Annotated[Path | None, typer.Option("--config", "-c", help="YAML sweep file (docs/evaluation.md, Sweeps); flags override it")] = None,
    strategy: Annotated[list[str] | None, typer.Option("--strategy", "-s", help="NAME[:KNOB=V1,V2,...], e.g. best_of_n:n=4,8,16 or mcts:iterations=2,4,8 or refine:task_tokens=2000,4000 (repeatable)")] = None,
    budgets: Annotated[str | None, typer.Option(help="V1,V2,...: values of the default knob (n, iterations, max_rounds or rounds) for strategies named without values")] = None,
    task_tokens: Annotated[str | None, typer.Option(help="V1,V2,...: per-task token caps as the budget axis of strategies named without values")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="fixed strategy parameter STRATEGY.KEY=VALUE (repeatable)")] = None,
    suite: Annotated[list[str] | None, typer.Option(help="suite (repeatable; default: arithmetic)")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="model string (repeatable; default: sim unless an endpoint is configured)")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N tasks of each suite")] = None,
    seed: Annotated[int | None, typer.Option(help="seed of every cell (the same tasks and draws for all)")] = None,
    concurrency: Annotated[int | None, typer.Option(help="cells in flight at once (default 2)")] = None,
    task_concurrency: Annotated[int | None, typer.Option(help="tasks in flight at once within a cell")] = None,
    store: Annotated[str | None, typer.Option(help="database URL or SQLite path")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="do not use the response cache")] = False,
    sweep_tokens: Annotated[int | None, typer.Option(help="token budget for the whole sweep (paid calls)")] = None,
    sweep_calls: Annotated[int | None, typer.Option(help="model-call budget for the whole sweep (paid calls)")] = None,
    sweep_cost: Annotated[float | None, typer.Option(help="cost budget for the whole sweep (USD)")] = None,
    sweep_seconds: Annotated[float | None, typer.Option(help="wall-time budget of this invocation")] = None,
    name: Annotated[str | None, typer.Option(help="a name for the sweep")] = None,
    sweep_id: Annotated[str | None, typer.Option(help="id for the sweep (default: generated); an existing sweep's id continues it")] = None,
    resume: Annotated[str | None, typer.Option(help="continue the sweep with this id (its stored config; --concurrency and --sweep-* budgets may change)")] = None,
) -> None:
    """Run strategies × budgets × suites × models as one resumable sweep, then tabulate it."""
    budget = {"budget.max_tokens": sweep_tokens, "budget.max_calls": sweep_calls,
              "budget.max_cost": sweep_cost, "budget.max_wall_s": sweep_seconds,
              "concurrency": concurrency}
    options: dict[str, Any] = {
        "strategies": strategy or None, "budgets": _numbers(budgets, "--budgets"),
        "task_tokens": _numbers(task_tokens, "--task-tokens"), "suites": suite or None,
        "models": model or None, "base.limit": limit, "base.seed": seed,
        "base.concurrency": task_concurrency, "base.store": store,
        "base.cache": False if no_cache else None, "name": name,
    }
    params = parse_params(param)
    if resume is not None:
        given = sorted(k for k, v in options.items() if v is not None and k != "base.store")
        if given or params or config_file or sweep_id:
            flags = {"--" + k.split(".")[-1].replace("_", "-") for k in given}
            flags |= {"--param"} if params else set()
            flags |= {"--config"} if config_file else set()
            flags |= {"--sweep-id"} if sweep_id else set()
            raise UsageError("--resume uses the sweep's stored config; drop "
                             + ", ".join(sorted(flags)))
        if not resume.replace("-", "").replace("_", "").isalnum():
            raise UsageError("--resume takes a sweep id: letters, digits, '-' and '_'")
        config, the_id, store_url = None, resume, store
    else:
        config = build_sweep_config(config_file, {**options, **budget}, params)
        if sweep_id is not None and not sweep_id.replace("-", "").replace("_", "").isalnum():
            raise UsageError("--sweep-id may hold only letters, digits, '-' and '_'")
        the_id, store_url = sweep_id or new_run_id(), config.base.store
    changes = {k: v for k, v in budget.items() if v is not None}
    try:
        with _model_error_hints():
            result = asyncio.run(_sweep(config, the_id, store_url, changes))
    except KeyboardInterrupt:
        where = f" --store {store_url}" if store_url else ""
        console_err.print(f"interrupted; continue with: deliberate eval sweep --resume "
                          f"{the_id}{where}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    print_sweep(result, store_url)


async def _sweep(config: SweepConfig | None, sweep_id: str, store_url: str | None,
                 changes: dict[str, Any]) -> SweepResult:
    st = await asyncio.to_thread(Store.open, store_url)
    try:
        if config is None:
            stored = await load_sweep(st, sweep_id)
            if changes:
                data = stored.model_dump(mode="json")
                for key, value in changes.items():
                    *parents, last = key.split(".")
                    node = data
                    for p in parents:
                        node = node[p]
                    node[last] = value
                stored = SweepConfig.from_mapping(data, source="options")
            config = stored
        with _SweepBar(sweep_id) as bar:
            return await arun_sweep(config, sweep_id=sweep_id, store=st, progress=bar.update)
    finally:
        await st.aclose()


class _SweepBar:
    """One bar over every cell's tasks, plus one per running cell; shown from the first
    progress report, so a sweep refused before it starts shows none."""

    def __init__(self, sweep_id: str) -> None:
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                             TimeElapsedColumn(), console=console, transient=False)
        self._total = self._bar.add_task(f"[bold]sweep {escape(sweep_id)}", total=None,
                                         info="")
        self._cells: dict[int, TaskID] = {}
        self._shown = False

    def __enter__(self) -> _SweepBar:
        return self

    def __exit__(self, *exc: object) -> None:
        for tid in self._cells.values():
            self._bar.remove_task(tid)
        if self._shown:
            self._bar.stop()

    def update(self, p: SweepProgress, state: CellState) -> None:
        if not self._shown:
            self._shown = True
            self._bar.start()
        bar, i = self._bar, state.cell.index
        bar.update(self._total, total=p.tasks, completed=p.tasks_done,
                   info=f"cells {p.cells_done}/{len(p.cells)}")
        if state.status == "running":
            if i not in self._cells:
                self._cells[i] = bar.add_task(f"  {escape(state.cell.label)}",
                                              total=state.tasks, info="")
            bar.update(self._cells[i], total=state.tasks, completed=state.done,
                       info=f"acc {fmt_pct(state.accuracy)}  tok {state.tokens:,}")
        elif i in self._cells:
            bar.remove_task(self._cells.pop(i))


def _accuracy_ci(state: CellState) -> tuple[str, str]:
    if not state.graded:
        return "—", "—"
    ci = mean_ci([1.0] * state.correct + [0.0] * (state.graded - state.correct))
    return fmt_pct(ci.value), f"{fmt_pct(ci.low)} – {fmt_pct(ci.high)}"


def print_sweep(result: SweepResult, store_url: str | None) -> None:
    """The cells as a table, and what to do next."""
    cells = result.cells
    many_suites = len({c.cell.suite for c in cells}) > 1
    many_models = len({c.cell.model for c in cells}) > 1
    t = Table(header_style="bold")
    for col, right in (("cell", True), ("strategy", False), ("budget", False),
                       *((("suite", False),) if many_suites else ()),
                       *((("model", False),) if many_models else ()),
                       ("accuracy", True), ("95% CI", True), ("tokens/task", True),
                       ("cost", True), ("status", False)):
        t.add_column(col, justify="right" if right else "left")
    for s in cells:
        acc, ci = _accuracy_ci(s)
        per_task = f"{s.tokens / s.done:,.0f}" if s.done else "—"
        strategy = s.cell.label.rsplit(f" {s.cell.budget['name']} @ ", 1)[0]
        t.add_row(str(s.cell.index), escape(strategy),
                  escape(s.cell.budget["name"]),
                  *((escape(s.cell.suite),) if many_suites else ()),
                  *((escape(s.cell.model),) if many_models else ()),
                  acc, ci, per_task, f"${s.cost:.4f}", s.status)
    console.print(t)
    sm = result.summary
    where = f" --store {store_url}" if store_url else ""
    console.print(f"stored in {escape(result.store_url)} as sweep [bold]"
                  f"{escape(result.sweep_id)}[/] ({sm['done']}/{sm['cells']} cells done, "
                  f"{sm['wall_s']:.1f} s) — report: deliberate report {escape(result.sweep_id)}"
                  f"{escape(where)}", highlight=False)
    if result.status == "interrupted":
        console.print(f"[yellow]note:[/] the sweep's {sm.get('stopped_by', '')} budget ran "
                      f"out; {sm['cells'] - sm['done']} cells are unfinished. Continue with: "
                      f"deliberate eval sweep --resume {escape(result.sweep_id)}{escape(where)}"
                      " (raise the --sweep-* budget)", highlight=False)
    if any(c.cell.model.startswith("sim") for c in cells):
        console.print("[yellow]note:[/] 'sim' is the simulated model: these numbers measure "
                      "its configured skill, not a real LLM; pass --model openai:NAME@URL.")
