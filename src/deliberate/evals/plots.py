"""The report's figures: what to draw from a report, and drawing it with matplotlib.

:func:`draw_figures` turns a :class:`~deliberate.evals.report.Report` into plain series
(also embedded in the report as JSON, so the plotted numbers can be read back) and
renders each figure. The drawing functions take those series and return a
:class:`~matplotlib.figure.Figure`, so a test can check what was drawn; :func:`png`
renders one. matplotlib's object API on the Agg canvas: no pyplot, no global state,
any number of figures per process.

Readability rules kept by every figure: a title, axes labelled with their units, a
legend outside the data, long labels wrapped, constrained layout so no text overlaps.
"""

from __future__ import annotations

import base64
import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
    NullLocator,
    PercentFormatter,
)

from deliberate.evals.metrics import CriticConfusion, critic_confusions
from deliberate.evals.stats import Estimate, Resampler

if TYPE_CHECKING:
    from deliberate.evals.report import Report

__all__ = [
    "VERDICT_COLUMNS",
    "VERDICT_NAMES",
    "ConfusionPanel",
    "Panel",
    "Point",
    "ReportFigure",
    "Series",
    "accuracy_vs_budget",
    "accuracy_vs_tokens",
    "confusion_matrices",
    "draw_figures",
    "pass_at_k_curve",
    "per_solved_bars",
    "png",
    "wrap",
]

# Okabe–Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000",
           "#999999")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
DPI = 110
VERDICT_COLUMNS = ("correct", "incorrect", "parse_failure")
VERDICT_NAMES = {"correct": "says correct", "incorrect": "says incorrect",
                 "parse_failure": "unreadable"}


@dataclass(frozen=True, slots=True)
class Point:
    """One cell: ``x`` and ``y`` with ``y``'s interval (and ``x``'s when known)."""

    x: float
    y: float
    y_low: float
    y_high: float
    label: str = ""
    pareto: bool = False
    x_low: float | None = None
    x_high: float | None = None


@dataclass(frozen=True, slots=True)
class Series:
    """One strategy: its cells in budget order."""

    name: str
    points: tuple[Point, ...]
    note: str = ""  # e.g. the budget parameter, shown in the legend


@dataclass(frozen=True, slots=True)
class Panel:
    """One axes' worth of series (a suite and model, or one budget axis)."""

    title: str
    series: tuple[Series, ...]
    xlabel: str = ""


@dataclass(frozen=True, slots=True)
class ConfusionPanel:
    """A confusion matrix: ``counts[r][c]`` for row labels × column labels."""

    title: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    counts: tuple[tuple[int, ...], ...]
    row_title: str = "grader's label"
    column_title: str = "critic's verdict"
    summary: str = ""
    highlight: tuple[tuple[int, int], ...] = field(default_factory=tuple)


def wrap(text: str, width: int = 28) -> str:
    """Wrap a label onto lines of at most ``width`` characters, keeping ``$`` literal."""
    safe = text.replace("$", r"\$")
    return "\n".join(textwrap.wrap(safe, width, break_long_words=True,
                                   break_on_hyphens=False)) or safe


def png(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(i: int) -> tuple[str, str]:
    return PALETTE[i % len(PALETTE)], MARKERS[i % len(MARKERS)]


def _grid(n: int, per_row: int) -> tuple[int, int]:
    cols = min(n, per_row)
    return math.ceil(n / cols), cols


def _percent_axis(ax: Axes, lows: Sequence[float], highs: Sequence[float]) -> None:
    """Accuracy in percent, zoomed on the data but never beyond 0–100."""
    lo = min(lows, default=0.0)
    hi = max(highs, default=1.0)
    pad = max(0.05, 0.08 * (hi - lo))
    ax.set_ylim(100 * max(0.0, lo - pad), 100 * min(1.0, hi + pad) + 0.5)
    ax.yaxis.set_major_formatter(PercentFormatter(decimals=0))


def _log_if_wide(ax: Axes, xs: Sequence[float], ratio: float = 10.0, base: int = 10) -> bool:
    pos = [x for x in xs if x > 0]
    if len(pos) > 1 and max(pos) / min(pos) >= ratio:
        ax.set_xscale("log", base=base)
        return True
    return False


def _amount(x: float, _pos: object = None) -> str:
    """Tick label for a count: 150, 1.5k, 20k, 1.2M."""
    if x >= 1e6:
        return f"{x / 1e6:g}M"
    if x >= 1e3:
        return f"{x / 1e3:g}k"
    return f"{x:g}"


def _token_axis(ax: Axes, xs: Sequence[float]) -> None:
    """Tokens on a log axis when they span a decade, ticked at 1-2-5 with short labels."""
    if _log_if_wide(ax, xs):
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(1, 10))))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_formatter(FuncFormatter(_amount))


def _legend_outside(fig: Figure, handles: Sequence[Line2D | Patch], labels: list[str],
                    *, where: str = "right") -> None:
    """The legend beside (``right``) or under (``below``) the axes, never over data."""
    if where == "below":
        fig.legend(handles, labels, loc="outside lower center", fontsize=8.5, frameon=False,
                   ncol=min(len(labels), 4))
    else:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8.5, frameon=False)


def accuracy_vs_tokens(panels: Sequence[Panel], *, level: float = 0.95) -> Figure:
    """Accuracy (y, %) against mean tokens per task (x), one marker set per strategy in
    budget order, ``level`` intervals as error bars, the Pareto front marked."""
    rows, cols = _grid(len(panels), 2)
    fig = _figure(max(7.5, 5.6 * cols), 4.2 * rows + 0.9)
    axes = fig.subplots(rows, cols, squeeze=False)
    handles: dict[str, Line2D] = {}
    names = [s.name for p in panels for s in p.series]
    order = list(dict.fromkeys(names))
    for k, panel in enumerate(panels):
        ax = axes[k // cols][k % cols]
        pts = [pt for s in panel.series for pt in s.points]
        for s in panel.series:
            colour, marker = _style(order.index(s.name))
            xs = [p.x for p in s.points]
            ys = [100 * p.y for p in s.points]
            err = [[100 * (p.y - p.y_low) for p in s.points],
                   [100 * (p.y_high - p.y) for p in s.points]]
            bars = ax.errorbar(xs, ys, yerr=err, color=colour, marker=marker, markersize=6,
                               linewidth=1.4, capsize=3, elinewidth=1, label=s.name)
            bars.lines[0].set_gid(s.name)  # the data line, for tests and SVG readers
            handles.setdefault(s.name, Line2D([], [], color=colour, marker=marker,
                                              linewidth=1.4))
        front = sorted((p for p in pts if p.pareto), key=lambda p: p.x)
        if front:
            # a staircase: for a given spend, the best accuracy any cell reached within it
            ax.plot([p.x for p in front], [100 * p.y for p in front], linestyle=(0, (4, 3)),
                    color="black", linewidth=1, zorder=1, gid="pareto",
                    drawstyle="steps-post")
            ax.scatter([p.x for p in front], [100 * p.y for p in front], s=190,
                       facecolors="none", edgecolors="black", linewidths=1.3, zorder=3)
            handles.setdefault("Pareto front", Line2D(
                [], [], color="black", linestyle=(0, (4, 3)), marker="o", markersize=11,
                markerfacecolor="none", linewidth=1))
        _token_axis(ax, [p.x for p in pts])
        _percent_axis(ax, [p.y_low for p in pts], [p.y_high for p in pts])
        ax.set_xlabel(panel.xlabel or "mean tokens per task (prompt + completion)")
        ax.set_ylabel("accuracy (% of tasks)")
        ax.set_title(wrap(panel.title, 60), fontsize=10)
        ax.grid(True, alpha=0.3)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    labels = [wrap(n) for n in handles]
    _legend_outside(fig, list(handles.values()), labels, where="below")
    pct = round(100 * level)
    fig.suptitle(f"Accuracy against tokens spent (bars: {pct}% intervals, tasks resampled)",
                 fontsize=11)
    return fig


def accuracy_vs_budget(panels: Sequence[Panel], *, level: float = 0.95) -> Figure:
    """Accuracy (y, %) against the budget value (x): one small panel per strategy (its
    first series), sharing the y axis, with the interval as a band. Strategies' budget
    parameters differ in meaning and cost, so each gets its own x axis."""
    rows, cols = _grid(len(panels), 4)
    fig = _figure(max(7.5, 3.4 * cols), 3.1 * rows + 1.0)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    lows = [p.y_low for panel in panels for s in panel.series for p in s.points]
    highs = [p.y_high for panel in panels for s in panel.series for p in s.points]
    order = list(dict.fromkeys(s.name for p in panels for s in p.series))
    for k, panel in enumerate(panels):
        ax = axes[k // cols][k % cols]
        for s in panel.series:
            colour, marker = _style(order.index(s.name))  # one colour per strategy
            xs = [p.x for p in s.points]
            ax.fill_between(xs, [100 * p.y_low for p in s.points],
                            [100 * p.y_high for p in s.points], color=colour, alpha=0.18,
                            linewidth=0)
            ax.plot(xs, [100 * p.y for p in s.points], color=colour, marker=marker,
                    markersize=6, linewidth=1.6, gid=s.name)
        xs_all = sorted({p.x for s in panel.series for p in s.points})
        if _log_if_wide(ax, xs_all, ratio=8, base=2):
            ax.xaxis.set_minor_locator(NullLocator())
        if len(xs_all) <= 8:
            ax.xaxis.set_major_locator(FixedLocator(xs_all))
        ax.xaxis.set_major_formatter(FuncFormatter(_amount))
        if len(xs_all) > 1:
            lo, hi = xs_all[0], xs_all[-1]
            if ax.get_xscale() == "log":
                ax.set_xlim(lo / 1.25, hi * 1.25)
            else:
                pad = 0.1 * (hi - lo)
                ax.set_xlim(lo - pad, hi + pad)
        ax.set_xlabel(wrap(panel.xlabel or "budget value", 30), fontsize=9)
        if k % cols == 0:
            ax.set_ylabel("accuracy (% of tasks)")
        ax.set_title(wrap(panel.title, 30), fontsize=10)
        ax.grid(True, alpha=0.3)
    _percent_axis(axes[0][0], lows, highs)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    handles: list[Line2D | Patch] = [Line2D([], [], color="#444444", marker="o", linewidth=1.6),
                                     Patch(color="#444444", alpha=0.18, linewidth=0)]
    _legend_outside(fig, handles, ["accuracy", f"{round(100 * level)}% interval (tasks "
                                   "resampled)"], where="below")
    fig.suptitle("Accuracy against budget, per strategy", fontsize=11)
    return fig


def per_solved_bars(series: Sequence[Series], *, xlabel: str, title: str,
                    level: float = 0.95) -> Figure:
    """Horizontal bars, one per cell (``point.label``), coloured by strategy, with
    interval whiskers; a cell that solved nothing gets a note instead of a bar."""
    bars = [(s, p) for s in series for p in s.points]
    labels = [wrap(f"{s.name} {p.label}".strip(), 34) for s, p in bars]
    lines = max((lab.count("\n") + 1 for lab in labels), default=1)
    fig = _figure(8.6, 1.3 + (0.2 + 0.16 * lines) * max(1, len(bars)))
    ax = fig.subplots()
    order = list(dict.fromkeys(s.name for s in series))
    handles: dict[str, Line2D] = {}
    ys = list(range(len(bars)))[::-1]
    top = max((p.y_high for _, p in bars if math.isfinite(p.y_high)), default=1.0) or 1.0
    for y, (s, p) in zip(ys, bars, strict=True):
        colour, _ = _style(order.index(s.name))
        if math.isnan(p.y):
            ax.text(0.01 * top, y, "nothing solved", va="center", fontsize=8, color="#555555")
            continue
        ax.barh(y, p.y, color=colour, alpha=0.85, height=0.65)
        ax.errorbar(p.y, y, xerr=[[p.y - p.y_low], [p.y_high - p.y]], color="black",
                    capsize=3, linewidth=1)
        handles.setdefault(s.name, Line2D([], [], color=colour, linewidth=8))
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8.5)
    ax.set_ylim(-0.6, len(bars) - 0.4)
    ax.set_xlim(0, top * 1.08)
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    ax.set_title(f"{title} (whiskers: {round(100 * level)}% intervals, tasks resampled)",
                 fontsize=10.5)
    _legend_outside(fig, list(handles.values()), [wrap(n) for n in handles])
    return fig


def pass_at_k_curve(passk: Series, chosen: Point | None, *, title: str,
                    level: float = 0.95) -> Figure:
    """pass@k against k with its band, and the strategy's own accuracy as a line."""
    fig = _figure(8.2, 4.4)
    ax = fig.subplots()
    colour, marker = _style(0)
    xs = [p.x for p in passk.points]
    ax.fill_between(xs, [100 * p.y_low for p in passk.points],
                    [100 * p.y_high for p in passk.points], color=colour, alpha=0.15,
                    linewidth=0)
    ax.plot(xs, [100 * p.y for p in passk.points], color=colour, marker=marker,
            linewidth=1.6, gid="pass@k")
    handles: list[Line2D | Patch] = [Line2D([], [], color=colour, marker=marker, linewidth=1.6),
                                     Patch(color=colour, alpha=0.15, linewidth=0)]
    labels = ["unbiased pass@k of the candidates", "its interval"]
    lows = [p.y_low for p in passk.points]
    highs = [p.y_high for p in passk.points]
    if chosen is not None:
        c2 = PALETTE[3]
        ax.axhline(100 * chosen.y, color=c2, linestyle="--", linewidth=1.4, gid="chosen")
        for edge in (chosen.y_low, chosen.y_high):
            ax.axhline(100 * edge, color=c2, linestyle=":", linewidth=1.0, alpha=0.8)
        handles += [Line2D([], [], color=c2, linestyle="--", linewidth=1.4),
                    Line2D([], [], color=c2, linestyle=":", linewidth=1.0)]
        labels += ["accuracy of the chosen answer", "its interval"]
        lows.append(chosen.y_low)
        highs.append(chosen.y_high)
    if _log_if_wide(ax, xs, ratio=8, base=2):
        ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_locator(FixedLocator(xs))
    ax.set_xticklabels([f"{x:g}" for x in xs])
    _percent_axis(ax, lows, highs)
    ax.set_xlabel("k: candidates drawn per task (count)")
    ax.set_ylabel("tasks solved (%)")
    ax.set_title(wrap(f"{title} (bands: {round(100 * level)}% intervals, tasks resampled)",
                      80), fontsize=10.5)
    ax.grid(True, alpha=0.3)
    _legend_outside(fig, handles, [wrap(x, 24) for x in labels])
    return fig


def confusion_matrices(panels: Sequence[ConfusionPanel], *, title: str) -> Figure:
    """One heatmap per panel: counts with row shares, shaded by the row share."""
    rows, cols = _grid(len(panels), 3)
    width = max(3.1 + 0.95 * max(len(p.columns) for p in panels), 4.3)
    per_row = 1.5 + 0.95 * max(len(p.rows) for p in panels)
    fig = _figure(width * cols, per_row * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, panel in enumerate(panels):
        ax = axes[k // cols][k % cols]
        shares = []
        for r in panel.counts:
            total = sum(r)
            shares.append([v / total if total else 0.0 for v in r])
        ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
        for i, r in enumerate(panel.counts):
            total = sum(r)
            for j, v in enumerate(r):
                share = v / total if total else 0.0
                text = f"{v}\n({100 * share:.0f}%)" if total else "0"
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="white" if share > 0.6 else "black",
                        fontweight="bold" if (i, j) in panel.highlight else "normal")
        ax.set_xticks(range(len(panel.columns)))
        ax.set_xticklabels([wrap(c, 16) for c in panel.columns], fontsize=8.5)
        ax.set_yticks(range(len(panel.rows)))
        ax.set_yticklabels([wrap(r, 12) for r in panel.rows], fontsize=8.5)
        ax.set_xlabel(panel.column_title, fontsize=9)
        ax.set_ylabel(panel.row_title, fontsize=9)
        head = wrap(panel.title, int(9 * width))
        if panel.summary:
            head += "\n" + wrap(panel.summary, int(9 * width))
        ax.set_title(head, fontsize=8.5)
    for k in range(len(panels), rows * cols):
        axes[k // cols][k % cols].set_visible(False)
    fig.suptitle(wrap(title, 110), fontsize=11)
    return fig


# ------------------------------------------------------------------ a report's figures


@dataclass(frozen=True, slots=True)
class ReportFigure:
    """A rendered figure, the caption that says how to read it, and the numbers drawn."""

    name: str  # file stem: accuracy-vs-tokens, …
    title: str
    caption: str
    png: bytes
    data: dict[str, Any]

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")




def _point(x: float, e: Estimate, label: str, pareto: bool = False) -> Point:
    return Point(x=x, y=e.value, y_low=e.low, y_high=e.high, label=label, pareto=pareto)


def _points_data(panels: Sequence[Panel]) -> dict[str, Any]:
    return {"panels": [{"title": p.title, "xlabel": p.xlabel, "series": [
        {"name": s.name, "note": s.note, "points": [
            {"x": q.x, "y": q.y, "low": q.y_low, "high": q.y_high, "label": q.label,
             "pareto": q.pareto} for q in s.points]} for s in p.series]} for p in panels]}


def _panel_title(suite: str, model: str, many: bool) -> str:
    return f"{suite} · {model}" if many else f"suite {suite}, model {model}"


def _tokens_panels(report: Report) -> list[Panel]:
    groups = report.groups()
    panels: dict[tuple[str, str], list[Series]] = {}
    for (suite, model, group), members in groups.items():
        pts = []
        for c in members:
            m = c.metrics
            if m is None or m.accuracy is None or m.tokens is None:
                continue
            p = _point(m.tokens.value, m.accuracy, c.budget_name, c.pareto)
            pts.append(Point(p.x, p.y, p.y_low, p.y_high, p.label, p.pareto,
                                   m.tokens.low, m.tokens.high))
        if pts:
            panels.setdefault((suite, model), []).append(Series(group, tuple(pts)))
    many = len(panels) > 1
    return [Panel(_panel_title(s, m, many), tuple(series))
            for (s, m), series in panels.items()]


def _budget_panels(report: Report) -> list[Panel]:
    """One panel per strategy (per suite and model): its cells along its budget axis."""
    many = report.many_panels
    out = []
    for (suite, model, group), members in report.groups().items():
        pts = []
        xlabel = ""
        for c in members:
            m = c.metrics
            if m is None or m.accuracy is None or c.budget is None:
                continue
            xlabel = ("per-task token cap (tokens)" if c.budget.axis == "tokens"
                      else f"{c.budget.param or 'budget'} (count per task)")
            pts.append(_point(c.budget.value, m.accuracy, c.budget.name))
        if pts:
            title = f"{group} · {suite} · {model}" if many else group
            out.append(Panel(title, (Series(group, tuple(pts)),), xlabel))
    return out


def _solved_series(report: Report, priced: bool) -> list[Series]:
    out = []
    for (_, _, group), members in report.groups().items():
        pts = []
        for c in members:
            m = c.metrics
            if m is None or m.accuracy is None:
                continue
            e = m.cost_per_solved if priced else m.tokens_per_solved
            label = c.budget_name if c.budget is not None else ""
            if len({x.panel for x in report.measured}) > 1:
                label = f"{label} @ {c.suite} / {c.model}".strip()
            if e is None:
                pts.append(Point(math.nan, math.nan, math.nan, math.nan, label))
            else:
                pts.append(_point(math.nan, e, label))
        if pts:
            out.append(Series(group, tuple(pts)))
    return out


def _confusion_panels(report: Report, rs: Resampler) -> list[ConfusionPanel]:
    merged: dict[tuple[str, str, str], list[Any]] = {}
    for (suite, model, group), members in report.groups().items():
        verdicts = [v for c in members if c.data is not None for v in c.data.verdicts]
        for conf in critic_confusions(verdicts, resampler=rs):
            merged.setdefault((group, conf.role, conf.source), []).append((suite, model, conf))
    out = []
    many_panels = len({c.panel for c in report.measured}) > 1
    for (group, role, source), entries in merged.items():
        for suite, model, conf in entries:
            rows = ("correct", "incorrect")
            counts = tuple(tuple(conf.count(r, v) for v in VERDICT_COLUMNS) for r in rows)
            where = f" on {suite} / {model}" if many_panels else ""
            summary = (f"sensitivity {_share(conf, 'incorrect', 'incorrect')}, "
                       f"specificity {_share(conf, 'correct', 'correct')}, "
                       f"n={conf.total}")
            out.append(ConfusionPanel(
                title=f"{group}: {role} ({source.removeprefix('model:')}){where}",
                rows=("right (grader)", "wrong (grader)"),
                columns=tuple(VERDICT_NAMES[v] for v in VERDICT_COLUMNS), counts=counts,
                summary=summary, highlight=((0, 0), (1, 1))))
    return out


def _share(conf: CriticConfusion, truth: str, verdict: str) -> str:
    total = conf.row_total(truth)
    return "—" if not total else f"{100 * conf.count(truth, verdict) / total:.0f}%"


def draw_figures(report: Report, rs: Resampler | None = None) -> list[ReportFigure]:
    """Every figure the report's data supports, rendered to PNG."""
    out: list[ReportFigure] = []
    pct = round(100 * report.level)

    def add(name: str, title: str, caption: str, fig: Any, data: dict[str, Any]) -> None:
        out.append(ReportFigure(name, title, caption, png(fig), data))

    if report.kind == "sweep":
        panels = _tokens_panels(report)
        if panels:
            add("accuracy-vs-tokens", "Accuracy against tokens per task",
                f"Each marker is one cell (a strategy at one budget), joined in budget order; "
                f"bars are {pct}% intervals over tasks. Circled markers joined by the dashed "
                "line form the Pareto front: no other cell is as accurate for fewer tokens.",
                accuracy_vs_tokens(panels, level=report.level), _points_data(panels))
        bpanels = _budget_panels(report)
        if bpanels:
            add("accuracy-vs-budget", "Accuracy against budget",
                f"Accuracy of each strategy at each budget value it was swept at, with {pct}% "
                "interval bands, one panel per strategy on a shared accuracy axis. Budget "
                "parameters (samples, search iterations, rounds) mean different amounts of "
                "work: compare spending on the figure of accuracy against tokens.", accuracy_vs_budget(bpanels, level=report.level),
                _points_data(bpanels))
        priced = report.priced
        series = _solved_series(report, priced)
        if series:
            what = "cost per solved task (US$)" if priced else "tokens per solved task (tokens)"
            add("per-solved", "Cost per solved task" if priced else "Tokens per solved task",
                f"Everything the cell spent divided by the tasks it solved, with {pct}% "
                "intervals over tasks." + ("" if priced else
                                           " No prices were set, so tokens stand for cost."),
                per_solved_bars(series, xlabel=what, title=what.split(" (")[0].capitalize(),
                                      level=report.level),
                _points_data([Panel(what, tuple(series))]))
    else:
        cell = report.cells[0]
        m = cell.metrics
        if m is not None and len(m.pass_at_k) >= 2:
            pts = tuple(_point(float(k), e, f"k={k}") for k, e in m.pass_at_k.items())
            chosen = None if m.accuracy is None else _point(0.0, m.accuracy, "chosen")
            curve = Series("pass@k", pts)
            add("pass-at-k", "pass@k of the candidates",
                "The unbiased pass@k of the candidates each task's strategy made (the chance "
                "that k of them, drawn at random, include a right one) against the accuracy "
                f"of the answer the strategy chose; {pct}% intervals over tasks.",
                pass_at_k_curve(curve, chosen, title=f"{cell.label} on {cell.suite}",
                                      level=report.level),
                {"pass_at_k": _points_data([Panel("pass@k", (curve,))]),
                 "chosen": None if chosen is None else {"y": chosen.y, "low": chosen.y_low,
                                                        "high": chosen.y_high}})
    cpanels = _confusion_panels(report, rs or Resampler(resamples=200))
    if cpanels:
        add("critic-confusion", "Critic verdicts against the grader",
            "Rows: the grader's label of a candidate; columns: what the model critic or judge "
            "said about it. Counts with the share of the row; the diagonal is agreement. "
            "Sensitivity: wrong candidates called incorrect; specificity: right ones called "
            "correct.",
            confusion_matrices(cpanels, title="Critic verdicts against the grader"),
            {"panels": [{"title": p.title, "rows": list(p.rows), "columns": list(p.columns),
                         "counts": [list(r) for r in p.counts]} for p in cpanels]})
    return out
