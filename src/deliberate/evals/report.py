"""Reports of a run or a sweep: tables with intervals, paired comparisons, plots.

:func:`build_report` reads a run from the store — a single engine run, or a sweep
(``config["kind"] == "sweep"``: its cells are engine runs with ids
``f"{sweep_id}.{i:03d}"``, grouped by strategy along their budget axis) — and measures
every cell (:mod:`deliberate.evals.metrics`). :func:`write_report` writes it as one
self-contained HTML file (figures embedded as base64 PNG, no external references,
every text escaped), as Markdown with the PNGs beside it, and/or as JSON.

A sweep's comparisons pair each strategy's cell with a baseline strategy's cell on the
same suite and model at a matched budget: the same budget (same parameter or token
cap, same value) when the baseline has it, else the baseline cell nearest in mean
tokens per task. The difference in accuracy comes with a paired bootstrap interval
and the sign test, over the tasks both cells finished.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from jinja2 import Environment, PackageLoader, select_autoescape

from deliberate.errors import DataError, UsageError
from deliberate.evals import plots
from deliberate.evals.metrics import (
    CriticConfusion,
    PairedComparison,
    RunData,
    RunMetrics,
    compare_runs,
    critic_confusions,
    load_run,
    pareto_front,
    run_metrics,
)
from deliberate.evals.plots import VERDICT_COLUMNS, ReportFigure, draw_figures
from deliberate.evals.stats import Estimate, Resampler
from deliberate.store import Store
from deliberate.tree import RunRecord

__all__ = [
    "FORMATS",
    "Budget",
    "CellReport",
    "Comparison",
    "Report",
    "ReportFigure",
    "build_report",
    "critic_eval_report",
    "fmt_cost",
    "fmt_diff_pp",
    "fmt_num",
    "fmt_pct",
    "render_html",
    "render_markdown",
    "write_report",
]

FORMATS = ("html", "md", "json")
Format = Literal["html", "md", "json"]


# ------------------------------------------------------------------ formatting


def _num(x: float) -> str:
    if math.isinf(x):
        return "∞"
    if math.isnan(x):
        return "—"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.1f}"
    return f"{x:.3g}"


def fmt_pct(e: Estimate | None) -> str:
    """``75.0% [50.0, 100.0]``: a share with its interval, in percent."""
    if e is None:
        return "—"
    return f"{100 * e.value:.1f}% [{100 * e.low:.1f}, {100 * e.high:.1f}]"


def fmt_num(e: Estimate | None) -> str:
    """``1234 [1100, 1400]``: a count or amount with its interval."""
    if e is None:
        return "—"
    return f"{_num(e.value)} [{_num(e.low)}, {_num(e.high)}]"


def fmt_cost(e: Estimate | None) -> str:
    """``$0.0123 [0.0101, 0.0150]``: US dollars at the run's prices."""
    if e is None:
        return "—"

    def c(x: float) -> str:
        return "∞" if math.isinf(x) else f"{x:.3g}"

    return f"${c(e.value)} [{c(e.low)}, {c(e.high)}]"


def fmt_diff_pp(e: Estimate | None) -> str:
    """``+12.5 pp [3.1, 21.9]``: a difference of shares in percentage points."""
    if e is None:
        return "—"
    return f"{100 * e.value:+.1f} pp [{100 * e.low:+.1f}, {100 * e.high:+.1f}]"


def fmt_p(p: float | None) -> str:
    return "—" if p is None else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


# ------------------------------------------------------------------ the report's model


@dataclass(frozen=True, slots=True)
class Budget:
    """A sweep cell's budget: ``name`` (``n=4``), its axis, value and parameter."""

    name: str
    axis: str  # "param" or "tokens"
    value: float
    param: str | None

    @classmethod
    def from_cell(cls, raw: Any) -> Budget | None:
        if not isinstance(raw, dict) or not isinstance(raw.get("value"), int | float):
            return None
        return cls(str(raw.get("name") or raw["value"]), str(raw.get("axis") or "param"),
                   float(raw["value"]), raw.get("param") if raw.get("param") else None)

    @property
    def key(self) -> tuple[str, str | None, float]:
        return (self.axis, self.param, self.value)


@dataclass(slots=True)
class CellReport:
    """One measured run: a sweep's cell, or the single run of a report."""

    index: int
    run_id: str
    label: str
    group: str  # the strategy as the sweep names it (its label, else its name)
    strategy: str
    params: str  # the strategy parameters, as key=value
    suite: str
    model: str
    budget: Budget | None
    status: str  # the run's status, or "missing" when a sweep's cell never started
    metrics: RunMetrics | None = None
    confusions: list[CriticConfusion] = field(default_factory=list)
    pareto: bool = False
    data: RunData | None = None

    @property
    def panel(self) -> tuple[str, str]:
        return (self.suite, self.model)

    @property
    def budget_name(self) -> str:
        return self.budget.name if self.budget is not None else (self.params or "—")

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "run_id": self.run_id, "label": self.label,
                "group": self.group, "strategy": self.strategy, "params": self.params,
                "suite": self.suite, "model": self.model,
                "budget": None if self.budget is None else {
                    "name": self.budget.name, "axis": self.budget.axis,
                    "value": self.budget.value, "param": self.budget.param},
                "status": self.status, "pareto": self.pareto,
                "metrics": None if self.metrics is None else self.metrics.as_dict(),
                "critics": [c.as_dict() for c in self.confusions]}


@dataclass(frozen=True, slots=True)
class Comparison:
    """A cell against the baseline cell it is matched with."""

    cell: CellReport
    baseline: CellReport
    match: str  # how the baseline cell was chosen
    accuracy: PairedComparison | None
    tokens: PairedComparison | None

    def as_dict(self) -> dict[str, Any]:
        return {"cell": self.cell.run_id, "baseline": self.baseline.run_id,
                "match": self.match,
                "accuracy": None if self.accuracy is None else self.accuracy.as_dict(),
                "tokens": None if self.tokens is None else self.tokens.as_dict()}


@dataclass(slots=True)
class Report:
    kind: Literal["run", "sweep", "critic"]
    run: RunRecord | None
    title: str
    cells: list[CellReport]
    comparisons: list[Comparison]
    baseline: str | None
    figures: list[ReportFigure]
    provenance: dict[str, str]
    level: float = 0.95
    critic_tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def priced(self) -> bool:
        return any(c.metrics is not None and c.metrics.priced for c in self.cells)

    @property
    def many_panels(self) -> bool:
        """Whether the cells span more than one suite or model."""
        return len({c.panel for c in self.cells}) > 1

    @property
    def measured(self) -> list[CellReport]:
        return [c for c in self.cells if c.metrics is not None]

    def has(self, attr: str) -> bool:
        """Whether any cell has a value for metric ``attr`` (hides empty columns)."""
        for c in self.measured:
            value = getattr(c.metrics, attr)
            if value:
                return True
        return False

    def groups(self) -> dict[tuple[str, str, str], list[CellReport]]:
        """Measured cells by (suite, model, strategy), in first-seen order, by budget."""
        return _groups(self.measured)

    @property
    def critic_rows(self) -> list[tuple[CellReport, CriticConfusion]]:
        return [(c, conf) for c in self.measured for conf in c.confusions]

    @property
    def pass_ks(self) -> list[int]:
        ks: set[int] = set()
        for c in self.measured:
            assert c.metrics is not None
            ks |= set(c.metrics.pass_at_k)
        return sorted(ks)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "run_id": None if self.run is None else self.run.id,
                "title": self.title, "baseline": self.baseline, "level": self.level,
                "cells": [c.as_dict() for c in self.cells],
                "comparisons": [c.as_dict() for c in self.comparisons],
                "figures": {f.name: f.data for f in self.figures},
                "critic_tables": self.critic_tables, "provenance": self.provenance}


# ------------------------------------------------------------------ building


def _params_text(params: Any) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _group_of(cell: dict[str, Any], budget: Budget | None) -> str:
    """The strategy entry's own label: the cell label before its budget name."""
    label = str(cell.get("label") or "")
    strategy = str(cell.get("strategy") or "?")
    if budget is not None and f" {budget.name}" in label:
        head = label.split(f" {budget.name}", 1)[0].strip()
        return head or strategy
    return strategy


def _cells_of(run: RunRecord) -> list[CellReport]:
    cfg = run.config
    if cfg.get("kind") == "sweep":
        out = []
        for i, raw in enumerate(cfg.get("cells") or []):
            if not isinstance(raw, dict) or not raw.get("run_id"):
                raise DataError(f"sweep {run.id}: cell {i} has no run id")
            budget = Budget.from_cell(raw.get("budget"))
            out.append(CellReport(
                index=i, run_id=str(raw["run_id"]), label=str(raw.get("label") or raw["run_id"]),
                group=_group_of(raw, budget), strategy=str(raw.get("strategy") or "?"),
                params=_params_text(raw.get("strategy_params")),
                suite=str(raw.get("suite") or "?"), model=str(raw.get("model") or "default"),
                budget=budget, status="missing"))
        return out
    strategy = str(cfg.get("strategy") or "?")
    label = str(cfg.get("name") or strategy)
    return [CellReport(index=0, run_id=run.id, label=label, group=label, strategy=strategy,
                       params=_params_text(cfg.get("strategy_params")),
                       suite=str(cfg.get("suite") or "?"),
                       model=str(cfg.get("model") or "default"), budget=None,
                       status=run.status)]


async def _measure(store: Store, cell: CellReport, *, verdicts: bool, rs: Resampler) -> None:
    data = await load_run(store, cell.run_id, verdicts=verdicts)
    if data is None:
        return
    cell.status = data.run.status
    cell.data = data
    cell.metrics = run_metrics(data, resampler=rs)
    cell.confusions = critic_confusions(data.verdicts, resampler=rs)


def _budget_order(c: CellReport) -> tuple[float, int]:
    return (c.budget.value if c.budget is not None else 0.0, c.index)


def _groups(cells: Sequence[CellReport]) -> dict[tuple[str, str, str], list[CellReport]]:
    """Cells by (suite, model, strategy group), groups in first-seen order, cells by budget."""
    out: dict[tuple[str, str, str], list[CellReport]] = {}
    for c in cells:
        out.setdefault((c.suite, c.model, c.group), []).append(c)
    return {k: sorted(v, key=_budget_order) for k, v in out.items()}


def _mark_pareto(cells: Sequence[CellReport]) -> None:
    panels: dict[tuple[str, str], list[CellReport]] = {}
    for c in cells:
        m = c.metrics
        if m is not None and m.accuracy is not None and m.tokens is not None:
            panels.setdefault(c.panel, []).append(c)
    for members in panels.values():
        pts = []
        for c in members:
            assert c.metrics is not None and c.metrics.tokens and c.metrics.accuracy
            pts.append((c.metrics.tokens.value, c.metrics.accuracy.value))
        for c, on in zip(members, pareto_front(pts), strict=True):
            c.pareto = on


def _pick_baseline(cells: Sequence[CellReport], wanted: str | None) -> str | None:
    names = list(dict.fromkeys(c.group for c in cells))
    if not names:
        return None
    if wanted is not None:
        for c in cells:
            if wanted in (c.group, c.strategy):
                return c.group
        raise UsageError(f"baseline {wanted!r} is not a strategy of this sweep; its "
                         f"strategies: {', '.join(names)}")
    for c in cells:
        if c.strategy == "best_of_n":
            return c.group
    return names[0]


def _tokens(c: CellReport) -> float | None:
    m = c.metrics
    return None if m is None or m.tokens is None else m.tokens.value


def _match(cell: CellReport, candidates: Sequence[CellReport]) -> tuple[CellReport, str] | None:
    """The baseline cell at the same budget, else the one nearest in tokens per task."""
    if cell.budget is not None:
        for b in candidates:
            if b.budget is not None and b.budget.key == cell.budget.key:
                return b, "same budget"
    mine = _tokens(cell)
    if mine is None or mine <= 0:
        return None
    best: tuple[float, CellReport] | None = None
    for b in candidates:
        theirs = _tokens(b)
        if theirs is None or theirs <= 0:
            continue
        gap = abs(math.log(theirs / mine))
        if best is None or gap < best[0]:
            best = (gap, b)
    if best is None:
        return None
    return best[1], "nearest in tokens"


def _compare(cell: CellReport, base: CellReport, match: str, rs: Resampler
             ) -> Comparison | None:
    if cell.data is None or base.data is None:
        return None
    acc = compare_runs(cell.data, base.data, metric="accuracy", resampler=rs)
    tok = compare_runs(cell.data, base.data, metric="tokens", resampler=rs)
    if acc is None and tok is None:
        return None
    return Comparison(cell, base, match, acc, tok)


def _comparisons(cells: Sequence[CellReport], baseline: str, rs: Resampler
                 ) -> list[Comparison]:
    out = []
    for (suite, model, group), members in _groups(cells).items():
        if group == baseline:
            continue
        base_cells = [c for c in cells if c.group == baseline and c.panel == (suite, model)
                      and c.metrics is not None]
        for c in members:
            if c.metrics is None:
                continue
            found = _match(c, base_cells)
            if found is None:
                continue
            comp = _compare(c, found[0], found[1], rs)
            if comp is not None:
                out.append(comp)
    return out


def _git_commit() -> str:
    """The commit of the source tree this code runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, timeout=5,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=here, timeout=5, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"{sha} (with uncommitted changes)" if dirty else sha


def _version() -> str:
    try:
        return metadata.version("deliberate")
    except metadata.PackageNotFoundError:
        return "unknown"


def _provenance(store_url: str, ids: Sequence[str], run: RunRecord | None, *,
                resamples: int, seed: int, level: float) -> dict[str, str]:
    out = {"store": store_url, "runs": ", ".join(ids),
           "deliberate": _version(), "commit": _git_commit(),
           "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
           "intervals": f"{round(100 * level)}% percentile bootstrap over tasks, "
                        f"{resamples} resamples, seed {seed}"}
    if run is not None:
        out["run created"] = time.strftime("%Y-%m-%d %H:%M:%S %Z",
                                           time.localtime(run.created_at))
        out["run status"] = run.status
    return out


async def build_report(store: Store, run_id: str, *, baseline: str | None = None,
                       resamples: int = 2000, level: float = 0.95, seed: int = 0,
                       figures: bool = True, verdicts: bool = True) -> Report:
    """Measure a run or a sweep from the store and draw its figures.

    ``baseline``: for a sweep, the strategy the others are compared with (default
    ``best_of_n`` if swept, else the first strategy); for a single run, the id of
    another run to compare it with on their common tasks.
    """
    run = await store.get_run(run_id)
    if run is None:
        raise UsageError(f"no run {run_id!r} in {store.url}; see 'deliberate runs'")
    sweep = run.config.get("kind") == "sweep"
    cells = _cells_of(run)
    rs = Resampler(resamples=resamples, level=level, seed=seed)
    for c in cells:
        await _measure(store, c, verdicts=verdicts, rs=rs)
    comparisons: list[Comparison] = []
    chosen: str | None = None
    notes: list[str] = []
    if sweep:
        _mark_pareto(cells)
        chosen = _pick_baseline(cells, baseline)
        if chosen is not None:
            comparisons = _comparisons(cells, chosen, rs)
        missing = [c for c in cells if c.metrics is None]
        if missing:
            notes.append(f"{len(missing)} of {len(cells)} cells have not run yet; continue "
                         f"the sweep to fill them in")
        title = f"Sweep {run.config.get('sweep', {}).get('name') or run_id}"
    else:
        title = f"Run {run_id}: {cells[0].label} on {cells[0].suite}"
        if baseline is not None:
            other = await store.get_run(baseline)
            if other is None:
                raise UsageError(f"no baseline run {baseline!r} in {store.url}")
            if other.config.get("kind") == "sweep":
                raise UsageError(f"baseline {baseline} is a sweep; give a single run's id")
            base = _cells_of(other)[0]
            base.index = 1
            await _measure(store, base, verdicts=False, rs=rs)
            chosen = base.label if base.label != cells[0].label else baseline
            comp = _compare(cells[0], base, "the run given as baseline", rs)
            if comp is not None:
                comparisons.append(comp)
            else:
                notes.append(f"run {baseline} shares no finished task with {run_id}")
    unfinished = sum(c.metrics.tasks - c.metrics.finished for c in cells if c.metrics)
    if unfinished:
        notes.append(f"{unfinished} task attempts are unfinished (an interrupted run) and are "
                     "not measured")
    ids = [run_id, *(c.run_id for c in cells if c.run_id != run_id)]
    report = Report(kind="sweep" if sweep else "run", run=run, title=title, cells=cells,
                    comparisons=comparisons, baseline=chosen, figures=[],
                    provenance=_provenance(store.url, ids if len(ids) <= 3 else
                                           [run_id, f"{ids[1]} … {ids[-1]}"], run,
                                           resamples=resamples, seed=seed, level=level),
                    level=level, notes=notes)
    if figures:
        report.figures = draw_figures(report, rs)
    return report


# ------------------------------------------------------------------ critic evaluations


# What each form's outcome counts mean as a matrix: rows, columns, and for each cell the
# counts (group, outcome) it adds up; bold cells are the critic being right.
_FORMS: dict[str, dict[str, Any]] = {
    "processbench": {
        "title": "Step critic against ProcessBench labels", "row_title": "the solution",
        "column_title": "what the step critic said",
        "rows": ("has an error", "no error"),
        "columns": ("first wrong step", "another step", "says no error", "unreadable"),
        "cells": ((("erroneous_outcomes", ("exact",)), ("erroneous_outcomes", ("early", "late")),
                   ("erroneous_outcomes", ("missed",)), ("erroneous_outcomes", ("unanswered",))),
                  (None, ("correct_outcomes", ("flagged",)), ("correct_outcomes", ("clean",)),
                   ("correct_outcomes", ("unanswered",)))),
        "highlight": ((0, 0), (1, 2))},
    "verdict": {
        "title": "Critic verdicts against the candidates' labels", "row_title": "the candidate",
        "column_title": "what the critic said",
        "rows": ("wrong", "right"), "columns": ("incorrect", "correct", "unreadable"),
        "cells": ((("wrong_outcomes", ("caught",)), ("wrong_outcomes", ("missed",)),
                   ("wrong_outcomes", ("unanswered",))),
                  (("right_outcomes", ("false_alarm",)), ("right_outcomes", ("passed",)),
                   ("right_outcomes", ("unanswered",)))),
        "highlight": ((0, 0), (1, 1))},
    "realcritic": {
        "title": "Critique-driven refinement: answers before and after",
        "row_title": "before", "column_title": "after the critique and refinement",
        "rows": ("wrong", "right"), "columns": ("right", "wrong"),
        "cells": ((("outcomes", ("fixed",)), ("outcomes", ("still_wrong",))),
                  (("outcomes", ("kept",)), ("outcomes", ("broken",)))),
        "highlight": ((0, 0), (1, 0))},
    "pairwise": {
        "title": "Pairwise judge against gold preferences", "row_title": "pairs",
        "column_title": "the judge's pick", "rows": ("all",),
        "columns": ("the better one", "the worse one", "a tie", "unreadable"),
        "cells": ((("outcomes", ("right",)), ("outcomes", ("wrong",)), ("outcomes", ("tie",)),
                   ("outcomes", ("unanswered",))),),
        "highlight": ((0, 0),)},
}


def critic_eval_report(path: str | Path) -> Report:
    """A report of a critic evaluation written by ``deliberate eval critic … --out``:
    its scores with their intervals, its outcome counts, and the counts as a matrix."""
    p = Path(path)
    try:
        payload = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot read a critic evaluation: {exc}") from exc
    form = payload.get("form") if isinstance(payload, dict) else None
    if form not in _FORMS or not isinstance(payload.get("metrics"), dict):
        raise DataError(f"{p}: not a critic evaluation this report knows (form {form!r}; "
                        f"known: {', '.join(_FORMS)})")
    spec = _FORMS[form]
    metrics: dict[str, Any] = payload["metrics"]
    scores = [(k, e) for k, e in ((k, _est_from(v)) for k, v in metrics.items())
              if e is not None]
    counts = [(k, [(name, int(n)) for name, n in v.items() if isinstance(n, int)])
              for k, v in metrics.items()
              if isinstance(v, dict) and v and all(isinstance(n, int) for n in v.values())]
    model = str(payload.get("model", "?"))

    def cell(ref: Any) -> int:
        if ref is None:
            return 0
        group, names = ref
        got = metrics.get(group) or {}
        return sum(int(got.get(n, 0)) for n in names)

    panel = plots.ConfusionPanel(
        title=f"{form}, {model}", rows=spec["rows"], columns=spec["columns"],
        counts=tuple(tuple(cell(ref) for ref in row) for row in spec["cells"]),
        row_title=spec["row_title"], column_title=spec["column_title"],
        highlight=spec["highlight"])
    figure = ReportFigure(
        "critic-confusion", spec["title"],
        f"Rows: {spec['row_title']}; columns: {spec['column_title']}. Counts with the share "
        "of the row; bold cells are where the critic was right.",
        plots.png(plots.confusion_matrices([panel], title=spec["title"])),
        {"panels": [{"title": panel.title, "rows": list(panel.rows),
                     "columns": list(panel.columns),
                     "counts": [list(r) for r in panel.counts]}]})
    table = {"title": f"{spec['title']}: {model}", "scores": scores, "counts": counts}
    prov = {"file": str(p), "form": str(form), "data": str(payload.get("data", "?")),
            "deliberate": _version(), "commit": _git_commit(),
            "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    return Report(kind="critic", run=None, title=f"Critic evaluation: {p.name}", cells=[],
                  comparisons=[], baseline=None, figures=[figure], provenance=prov,
                  critic_tables=[table])


def _est_from(raw: Any) -> Estimate | None:
    if not isinstance(raw, dict):
        return None
    try:
        return Estimate(float(raw["value"]), float(raw["low"]), float(raw["high"]),
                        int(raw.get("n", 0)), float(raw.get("level", 0.95)))
    except (KeyError, TypeError, ValueError):
        return None


# ------------------------------------------------------------------ rendering


def _md_cell(text: object) -> str:
    """Text safe in Markdown (and inside a table cell): angle brackets as entities (so
    no text can open an HTML tag), pipes escaped, lines joined."""
    flat = " ".join(str(text).split())
    flat = flat.replace("<", "&lt;").replace(">", "&gt;")
    return flat.replace("|", "\\|")


def _environment(*, markdown: bool = False) -> Environment:
    """HTML escapes everything; Markdown escapes what passes its ``md`` filter (every
    text that comes from a run or a file), so apostrophes stay readable in the source."""
    env = Environment(loader=PackageLoader("deliberate.evals", "templates"),
                      autoescape=False if markdown else select_autoescape(
                          default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(md=_md_cell, pct=fmt_pct, num=fmt_num, cost=fmt_cost, pp=fmt_diff_pp,
                       p=fmt_p)
    return env


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page."""
    return _environment().get_template("report.html.j2").render(
        r=report, verdicts=VERDICT_COLUMNS)


def render_markdown(report: Report, *, figure_dir: str = ".") -> str:
    """The report as Markdown; figures are referenced as ``{figure_dir}/{name}.png``."""
    return _environment(markdown=True).get_template("report.md.j2").render(
        r=report, verdicts=VERDICT_COLUMNS, figure_dir=figure_dir.rstrip("/"))


def write_report(report: Report, out_dir: str | Path,
                 formats: Sequence[str] = ("html", "md")) -> list[Path]:
    """Write the report into ``out_dir`` (created): ``report.html`` (self-contained),
    ``report.md`` with its PNGs beside it, ``report.json``. Returns the files written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UsageError(f"unknown report format {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(FORMATS)}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if "html" in formats:
        path = out / "report.html"
        path.write_text(render_html(report), encoding="utf-8")
        written.append(path)
    if "md" in formats:
        for f in report.figures:
            png_path = out / f"{f.name}.png"
            png_path.write_bytes(f.png)
            written.append(png_path)
        path = out / "report.md"
        path.write_text(render_markdown(report), encoding="utf-8")
        written.append(path)
    if "json" in formats:
        path = out / "report.json"
        path.write_text(json.dumps(report.as_dict(), indent=1, ensure_ascii=False) + "\n",
                        encoding="utf-8")
        written.append(path)
    return written
