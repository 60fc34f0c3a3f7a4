"""``deliberate report``: a run's or a sweep's metrics, comparisons and plots as HTML/Markdown."""

from __future__ import annotations

import asyncio
import webbrowser
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from deliberate.cli.common import console
from deliberate.errors import UsageError
from deliberate.evals.stats import Estimate
from deliberate.store import Store

if TYPE_CHECKING:
    from deliberate.evals.report import Report

# The report module brings matplotlib (a third of a second): imported when the command
# runs, not whenever the CLI starts.
FORMATS = ("html", "md", "json")


def report_cmd(
    run_id: Annotated[str, typer.Argument(
        help="run or sweep id (see: deliberate runs), or a critic evaluation's JSON "
             "(deliberate eval critic … --out FILE)")],
    store: Annotated[str | None, typer.Option(help="database URL or SQLite path")] = None,
    out: Annotated[Path | None, typer.Option(
        help="directory to write into (default: ./report-RUN)")] = None,
    format: Annotated[str, typer.Option(
        "--format", help=f"comma-separated: {', '.join(FORMATS)}")] = "html,md",
    baseline: Annotated[str | None, typer.Option(
        help="sweep: the strategy the others are compared with (default best_of_n, else the "
             "first); single run: another run's id to compare with")] = None,
    resamples: Annotated[int, typer.Option(min=100, help="bootstrap resamples per interval")]
    = 2000,
    seed: Annotated[int, typer.Option(help="seed of the bootstrap")] = 0,
    critics: Annotated[bool, typer.Option(
        "--critics/--no-critics", help="read every task's tree for the critics' verdicts "
        "(the confusion matrices); --no-critics is faster on large runs")] = True,
    open_: Annotated[bool, typer.Option("--open", help="open the HTML in a browser")] = False,
) -> None:
    """Write a report of a run or a sweep: tables with 95% intervals, paired comparisons
    with a baseline, plots (accuracy vs tokens with the Pareto front, accuracy vs budget,
    cost per solved task, critic confusion matrices), as one self-contained HTML file and
    Markdown with PNGs beside it; print a summary table."""
    from deliberate.evals.report import critic_eval_report, write_report

    formats = [f.strip() for f in format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UsageError(f"--format {format!r}: use any of {', '.join(FORMATS)}, "
                         "comma-separated")
    path = Path(run_id)
    if run_id.endswith(".json") and path.is_file():
        report = critic_eval_report(path)
        stem = path.stem
    else:
        report = asyncio.run(_build(run_id, store, baseline, resamples, seed, critics))
        stem = run_id
    target = out or Path(f"report-{stem}")
    written = write_report(report, target, formats)
    print_summary(report)
    for p in written:
        if p.suffix != ".png":
            console.print(f"wrote {escape(str(p))}")
    pngs = sum(p.suffix == ".png" for p in written)
    if pngs:
        console.print(f"wrote {pngs} figure{'s' if pngs > 1 else ''} as PNG beside the Markdown "
                      f"in {escape(str(target))}")
    html = next((p for p in written if p.suffix == ".html"), None)
    if open_ and html is not None:
        webbrowser.open(html.resolve().as_uri())


async def _build(run_id: str, store_url: str | None, baseline: str | None, resamples: int,
                 seed: int, critics: bool) -> Report:
    from deliberate.evals.report import build_report

    st = await Store.aopen(store_url)
    try:
        return await build_report(st, run_id, baseline=baseline, resamples=resamples, seed=seed,
                                  verdicts=critics)
    finally:
        await st.aclose()


def _mean(e: Estimate | None, money: bool = False) -> str:
    """Just the point value (the HTML has the intervals): 678, 1.2k, $0.00121."""
    if e is None:
        return "—"
    if money:
        return f"${e.value:.3g}"
    return f"{e.value:.0f}" if abs(e.value) >= 100 else f"{e.value:.3g}"


def _share(e: Estimate | None, signed: bool = False) -> str:
    """``66.7 [50.0, 83.3]``: percent (or percentage points) with the interval."""
    if e is None:
        return "—"
    f = "+.1f" if signed else ".1f"
    return f"{100 * e.value:{f}} [{100 * e.low:{f}}, {100 * e.high:{f}}]"


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD,
                 pad_edge=False, padding=(0, 1, 0, 0))


def _print_run(report: Report) -> None:
    """One run: every metric it has, one per line."""
    from deliberate.evals.report import fmt_cost, fmt_num, fmt_pct

    cell = report.cells[0]
    m = cell.metrics
    if m is None:
        return
    table = _table(escape(report.title))
    table.add_column("metric", style="bold")
    table.add_column("value [95% interval]", justify="right", no_wrap=True)
    tasks = f"{m.finished}" + (f" of {m.tasks}" if m.finished != m.tasks else "")
    extras = [f"{n} {what}" for n, what in ((m.failed, "failed"),
                                            (m.budget_limited, "cut by budget")) if n]
    table.add_row("tasks", tasks + (f" ({', '.join(extras)})" if extras else ""))
    shares = [("accuracy", m.accuracy), ("sample accuracy", m.sample_accuracy),
              ("oracle (any candidate right)", m.oracle),
              *((f"pass@{k}", e) for k, e in m.pass_at_k.items()),
              ("precision", m.precision), ("recall", m.recall), ("F1", m.f1)]
    for name, e in shares:
        if e is not None:
            table.add_row(name, fmt_pct(e))
    amounts = [("false positives / task", m.false_positives), ("tokens / task", m.tokens),
               ("tokens / solved task", m.tokens_per_solved), ("calls / task", m.calls),
               ("model latency / task (s)", m.latency_s)]
    for name, e in amounts:
        if e is not None:
            table.add_row(name, fmt_num(e))
    if m.priced:
        table.add_row("cost / task", fmt_cost(m.cost))
        table.add_row("cost / solved task", fmt_cost(m.cost_per_solved))
    console.print(table)


def print_summary(report: Report) -> None:
    """The report's main numbers as terminal tables (intervals on accuracy only, to fit
    a terminal; the files have them all)."""
    from deliberate.evals.report import fmt_diff_pp, fmt_p, fmt_pct

    if report.kind == "critic":
        for t in report.critic_tables:
            table = _table(escape(str(t["title"])))
            table.add_column("metric")
            table.add_column("value [95% interval]", justify="right")
            for name, e in t["scores"]:
                table.add_row(str(name).replace("_", " "),
                              fmt_diff_pp(e) if name == "change" else fmt_pct(e))
            console.print(table)
        return
    if report.kind == "run":
        _print_run(report)
        return
    counts = {(c.metrics.finished, c.metrics.tasks) for c in report.measured if c.metrics}
    same = len(counts) == 1
    title = report.title
    if same:
        finished, total = next(iter(counts))
        title += f" ({finished} tasks" + (f" of {total})" if finished != total else ")")
    table = _table(escape(title))
    table.caption = ("accuracy in % with its 95% interval; tokens per task; "
                     + ("US$" if report.priced else "tokens") + " per solved task"
                     + ("; ★ on the Pareto front" if report.kind == "sweep" else ""))
    table.caption_justify = "left"
    table.add_column("strategy", overflow="fold", min_width=10, style="bold")
    if report.many_panels:
        table.add_column("suite · model", overflow="fold", min_width=10)
    table.add_column("budget", overflow="fold", min_width=6)
    if not same:
        table.add_column("tasks", justify="right", no_wrap=True)
    table.add_column("accuracy %", justify="right", no_wrap=True)
    table.add_column("tokens", justify="right", no_wrap=True)
    priced = report.priced
    table.add_column("$/solved" if priced else "tok/solved", justify="right", no_wrap=True)
    sweep = report.kind == "sweep"
    if sweep:
        table.add_column("★", justify="center", no_wrap=True)
    for c in report.cells:
        m = c.metrics
        head = [escape(c.group), *([escape(f"{c.suite} · {c.model}")]
                                   if report.many_panels else []), escape(c.budget_name)]
        if m is None:
            table.add_row(*head, *([] if same else ["—"]), "not run yet", "—", "—",
                          *([""] if sweep else []), style="dim")
            continue
        tasks = [] if same else [f"{m.finished}" + (f"/{m.tasks}" if m.finished != m.tasks
                                                    else "")]
        table.add_row(
            *head, *tasks, _share(m.accuracy), _mean(m.tokens),
            _mean(m.cost_per_solved, money=True) if priced else _mean(m.tokens_per_solved),
            *(["★" if c.pareto else ""] if sweep else []))
    console.print(table)
    if report.comparisons:
        ns = {cmp.accuracy.n for cmp in report.comparisons if cmp.accuracy}
        one_n = len(ns) == 1
        comp = _table(f"paired with {escape(report.baseline or 'the baseline')}"
                      + (f" on {next(iter(ns))} common tasks" if one_n else ""))
        comp.caption = ("vs: the baseline's budget matched; Δ: strategy − baseline, accuracy "
                        "in percentage points with its 95% interval, mean tokens per task; "
                        "p: two-sided sign test")
        comp.caption_justify = "left"
        comp.add_column("strategy", overflow="fold", min_width=10, style="bold")
        if report.many_panels:
            comp.add_column("suite · model", overflow="fold", min_width=10)
        comp.add_column("budget", overflow="fold", min_width=6)
        comp.add_column("vs", overflow="fold", min_width=4)
        if not one_n:
            comp.add_column("tasks", justify="right", no_wrap=True)
        comp.add_column("Δ accuracy", justify="right", no_wrap=True)
        comp.add_column("p", justify="right", no_wrap=True)
        comp.add_column("Δ tokens", justify="right", no_wrap=True)
        for cmp in report.comparisons:
            a = cmp.accuracy
            comp.add_row(escape(cmp.cell.group),
                         *([escape(f"{cmp.cell.suite} · {cmp.cell.model}")]
                           if report.many_panels else []),
                         escape(cmp.cell.budget_name),
                         escape(cmp.baseline.budget_name),
                         *([] if one_n else [str(a.n) if a else "—"]),
                         _share(a.difference if a else None, signed=True),
                         fmt_p(a.p_value if a else None),
                         _mean(cmp.tokens.difference if cmp.tokens else None))
        console.print(comp)
    for note in report.notes:
        console.print(f"[yellow]note:[/] {escape(note)}")
