"""``deliberate eval``: measure critics (and, later, strategies) against ground truth.

``deliberate eval critic processbench`` asks the step critic for the first wrong step
of each ProcessBench item and prints ProcessBench's scores with bootstrap intervals.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deliberate.cli.common import console, fmt_pct
from deliberate.config import BudgetConfig, RetryConfig, RoleConfig, RunConfig
from deliberate.errors import ModelAuthError, ModelConnectionError, ModelHTTPError, UsageError
from deliberate.evals.critics import (
    CriticEvalConfig,
    ProcessBenchItem,
    ProcessBenchResult,
    evaluate_processbench,
    load_processbench,
    subsample,
)
from deliberate.evals.stats import Estimate

eval_app = typer.Typer(help="Measure critics against ground truth, through the role code "
                            "strategies use.", no_args_is_help=True)
critic_app = typer.Typer(help="Evaluate a critic on labelled data.", no_args_is_help=True)
eval_app.add_typer(critic_app, name="critic")


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
