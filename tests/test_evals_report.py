"""Reports: every number and figure checked against the stored runs, computed here anew.

A sweep is built as the sweep runner stores one (a RunRecord with kind "sweep" listing
its cells, each an ordinary engine run with id ``SWEEP.NNN``) from real ``sim`` runs,
then reported; the tests recount accuracy, tokens, costs, pass@k, detection counts,
critic verdicts and paired differences straight from the attempts and trees and compare
them with what the HTML, the Markdown and the figures' data show.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from deliberate.config import RunConfig
from deliberate.engine.runner import arun
from deliberate.errors import DataError, UsageError
from deliberate.evals import plots
from deliberate.evals.report import (
    Report,
    build_report,
    critic_eval_report,
    render_html,
    render_markdown,
    write_report,
)
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.store import Store
from deliberate.tasks import load_suite
from deliberate.tree import AttemptRecord, RunRecord
from tests.conftest import REPO, shared_data

MODEL = "sim?skill=0.45&seed=3"
PRICES = {"*": {"input": 0.5, "output": 1.5}}
SWEEP: list[tuple[str, str, tuple[int, ...]]] = [("best_of_n", "n", (2, 4)), ("self_consistency", "n", (2, 4)),
         ("refine", "max_rounds", (1, 2)), ("mcts", "iterations", (2, 4))]


# ------------------------------------------------------------------ building stores


async def make_sweep(db: str, sweep_id: str, *, suite: str = "arithmetic", limit: int = 4,
                     spec: Sequence[tuple[str, str, tuple[int, ...]]] = SWEEP,
                     skip: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """Run each cell with the engine and store the sweep record as the runner does."""
    store = Store.open(db)
    await store.start()
    cells: list[dict[str, Any]] = []
    try:
        for strategy, knob, values in spec:
            for v in values:
                i = len(cells)
                label = f"{strategy} {knob}={v} @ {suite} / {MODEL}"
                cell = {"run_id": f"{sweep_id}.{i:03d}", "label": label,
                        "strategy": strategy, "strategy_params": {knob: v}, "suite": suite,
                        "model": MODEL, "budget": {"name": f"{knob}={v}", "axis": "param",
                                                   "value": v, "param": knob}}
                cells.append(cell)
                if i in skip:
                    continue
                cfg = RunConfig(suite=suite, limit=limit, strategy=strategy,
                                strategy_params={knob: v}, model=MODEL, name=label,
                                cache=False, prices=PRICES)
                await arun(cfg, run_id=str(cell["run_id"]), store=store)
        await store.create_run(RunRecord(
            id=sweep_id, config={"kind": "sweep", "sweep": {"name": "test sweep"},
                                 "cells": cells},
            status="done", summary={"cells": len(cells), "done": len(cells) - len(skip)}))
    finally:
        await store.aclose()
    return cells


@dataclass
class Built:
    db: str
    sweep_id: str
    cells: list[dict[str, Any]]
    report: Report
    html: str
    md: str


async def _report(db: str, run_id: str, **kw: Any) -> Report:
    store = Store.open(db)
    await store.start()
    try:
        return await build_report(store, run_id, resamples=300, **kw)
    finally:
        await store.aclose()


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Built:
    db = str(tmp_path_factory.mktemp("sweep") / "store.db")
    cells = asyncio.run(make_sweep(db, "sw"))
    report = asyncio.run(_report(db, "sw"))
    return Built(db, "sw", cells, report, render_html(report), render_markdown(report))


async def read_runs(db: str, run_ids: list[str]) -> dict[str, list[AttemptRecord]]:
    store = Store.open(db)
    await store.start()
    try:
        return {r: await store.get_attempts(r) for r in run_ids}
    finally:
        await store.aclose()


# ------------------------------------------------------------------ reading the outputs


class Tables(HTMLParser):
    """Rows of every table with an id: {table id: [(row attributes, [cell texts])]}."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[tuple[dict[str, str], list[str]]]] = {}
        self.refs: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self._table: str | None = None
        self._row: tuple[dict[str, str], list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        for k, v in a.items():
            if k in ("src", "href", "action", "data", "poster", "srcset"):
                self.refs.append((tag, k, v))
        if tag == "table" and "id" in a:
            self._table = a["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = (a, [])
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row[1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            if self._row[1]:
                self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def html_tables(html: str) -> Tables:
    p = Tables()
    p.feed(html)
    return p


def md_table(md: str, heading: str) -> list[dict[str, str]]:
    """The first table under ``## heading`` as dicts by column name."""
    lines = md.splitlines()
    start = lines.index(f"## {heading}")
    rows: list[dict[str, str]] = []
    header: list[str] | None = None
    for line in lines[start + 1:]:
        if line.startswith("## "):
            break
        if not line.startswith("|"):
            if header is not None and rows:
                break
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if header is None:
            header = cells
        elif not set("".join(cells)) <= set("-:"):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def amount(x: float) -> str:
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def finished(attempts: list[AttemptRecord]) -> list[AttemptRecord]:
    return [a for a in attempts if a.status in ("done", "budget_limited", "failed")]


def accuracy(attempts: list[AttemptRecord]) -> float:
    graded = [a for a in finished(attempts) if a.correct is not None]
    return sum(bool(a.correct) for a in graded) / len(graded)


def mean_tokens(attempts: list[AttemptRecord]) -> float:
    done = finished(attempts)
    return sum(a.prompt_tokens + a.completion_tokens for a in done) / len(done)


def binomial_sign_p(wins: int, losses: int) -> float:
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


# ------------------------------------------------------------------ the sweep report


def test_sweep_tables_show_what_the_attempts_say(sweep: Built) -> None:
    runs = asyncio.run(read_runs(sweep.db, [c["run_id"] for c in sweep.cells]))
    md_rows = {(r["strategy"], r["budget"]): r for r in md_table(sweep.md, "Accuracy")}
    md_cost = {(r["strategy"], r["budget"]): r for r in md_table(sweep.md, "What it cost")}
    tables = html_tables(sweep.html)
    html_acc = {a["data-run"]: cells for a, cells in tables.tables["table-accuracy"]}
    html_cost = {a["data-run"]: cells for a, cells in tables.tables["table-consumption"]}
    html_money = {a["data-run"]: cells for a, cells in tables.tables["table-cost"]}
    assert len(md_rows) == len(html_acc) == len(sweep.cells) == 8
    for cell in sweep.cells:
        atts = runs[cell["run_id"]]
        assert len(atts) == 4
        key = (cell["strategy"], cell["budget"]["name"])
        acc = accuracy(atts)
        assert md_rows[key]["accuracy"].startswith(pct(acc) + " ["), key
        assert md_rows[key]["tasks"] == "4"
        candidates = [a for a in atts if a.stats.get("candidates")]
        oracle = sum(a.stats["candidates_correct"] > 0 for a in candidates) / len(candidates)
        sample = sum(a.stats["candidates_correct"] / a.stats["candidates"]
                     for a in candidates) / len(candidates)
        assert md_rows[key]["oracle"].startswith(pct(oracle) + " [")
        assert md_rows[key]["sample accuracy"].startswith(pct(sample) + " [")
        tokens = mean_tokens(atts)
        assert md_cost[key]["tokens / task"].startswith(amount(tokens) + " [")
        row = html_acc[cell["run_id"]]
        assert row[0] == cell["strategy"] and row[1] == cell["budget"]["name"]
        assert row[4].startswith(pct(acc) + " [")
        assert html_cost[cell["run_id"]][2].startswith(amount(tokens) + " [")
        solved = sum(bool(a.correct) for a in atts)
        calls = sum(a.calls for a in atts) / len(atts)
        assert html_cost[cell["run_id"]][4].startswith(amount(calls) + " [")
        if solved:
            cost = sum(a.cost for a in atts) / solved
            assert cost > 0
            assert html_money[cell["run_id"]][3].startswith(f"${cost:.3g} [")
            per_solved = sum(a.prompt_tokens + a.completion_tokens for a in atts) / solved
            assert html_cost[cell["run_id"]][3].startswith(amount(per_solved) + " [")


def test_sweep_figures_plot_the_stored_numbers(sweep: Built) -> None:
    runs = asyncio.run(read_runs(sweep.db, [c["run_id"] for c in sweep.cells]))
    figs = {f.name: f for f in sweep.report.figures}
    assert set(figs) == {"accuracy-vs-tokens", "accuracy-vs-budget", "per-solved",
                         "critic-confusion"}
    expected = {(c["strategy"], c["budget"]["name"]):
                (mean_tokens(runs[c["run_id"]]), accuracy(runs[c["run_id"]]), c)
                for c in sweep.cells}
    # accuracy against tokens, with the Pareto front recomputed here
    pts = [v[:2] for v in expected.values()]
    front = {k for k, (x, y, _) in expected.items()
             if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for x2, y2 in pts)}
    drawn = figs["accuracy-vs-tokens"].data["panels"]
    assert len(drawn) == 1
    seen = set()
    for series in drawn[0]["series"]:
        xs = [p["x"] for p in series["points"]]
        budgets = [expected[(series["name"], p["label"])][2]["budget"]["value"]
                   for p in series["points"]]
        assert budgets == sorted(budgets)  # joined in budget order
        for p in series["points"]:
            key = (series["name"], p["label"])
            x, y, _ = expected[key]
            assert p["x"] == pytest.approx(x) and p["y"] == pytest.approx(y)
            assert p["low"] <= p["y"] <= p["high"]
            assert p["pareto"] == (key in front), key
            seen.add(key)
        assert len(xs) == 2
    assert seen == set(expected) and front
    # accuracy against budget: x is the budget value
    for panel in figs["accuracy-vs-budget"].data["panels"]:
        (series,) = panel["series"]
        for p in series["points"]:
            x, y, cell = expected[(series["name"], p["label"])]
            assert p["x"] == cell["budget"]["value"] and p["y"] == pytest.approx(y)
        assert panel["xlabel"].startswith(series["points"][0]["label"].split("=")[0])
    # cost per solved task (prices are set)
    (bars,) = figs["per-solved"].data["panels"]
    for series in bars["series"]:
        for p in series["points"]:
            cell = expected[(series["name"], p["label"])][2]
            atts = runs[cell["run_id"]]
            solved = sum(bool(a.correct) for a in atts)
            assert p["y"] == pytest.approx(sum(a.cost for a in atts) / solved)
    # the HTML embeds exactly these numbers, and the images are these figures
    for name, fig in figs.items():
        m = re.search(rf'<script type="application/json" id="data-{name}">(.*?)</script>',
                      sweep.html, re.S)
        assert m is not None and json.loads(m.group(1)) == json.loads(json.dumps(fig.data))
        assert fig.png.startswith(b"\x89PNG\r\n\x1a\n")
        assert base64.b64encode(fig.png).decode() in sweep.html


def test_critic_confusion_counts_the_stored_verdicts(sweep: Built) -> None:
    async def count() -> dict[tuple[str, str], dict[tuple[str, str], int]]:
        store = Store.open(sweep.db)
        await store.start()
        out: dict[tuple[str, str], dict[tuple[str, str], int]] = {}
        try:
            for c in sweep.cells:
                for a in await store.get_attempts(c["run_id"]):
                    _, js = await store.load_tree(c["run_id"], a.task_id)
                    truth = {j.node_id: j.verdict for j in js if j.role == "grader"}
                    for j in js:
                        if (j.source.startswith("model:") and j.node_id in truth
                                and j.verdict in ("correct", "incorrect", "parse_failure")):
                            tally = out.setdefault((c["strategy"], j.role), {})
                            k = (str(truth[j.node_id]), j.verdict)
                            tally[k] = tally.get(k, 0) + 1
        finally:
            await store.aclose()
        return out

    counts = asyncio.run(count())
    assert ("best_of_n", "judge") in counts and ("refine", "critic") in counts
    fig = next(f for f in sweep.report.figures if f.name == "critic-confusion")
    panels = {p["title"].split(" (")[0]: p for p in fig.data["panels"]}
    assert set(panels) == {f"{s}: {r}" for s, r in counts}
    for (strategy, role), tally in counts.items():
        p = panels[f"{strategy}: {role}"]
        expected = [[tally.get((t, v), 0) for v in ("correct", "incorrect", "parse_failure")]
                    for t in ("correct", "incorrect")]
        assert p["counts"] == expected
    # the table splits the same verdicts per cell
    rows = html_tables(sweep.html).tables["table-critics"]
    total = sum(int(cells[4]) for _, cells in rows)
    assert total == sum(sum(t.values()) for t in counts.values())


def test_paired_comparisons_recomputed_from_the_attempts(sweep: Built) -> None:
    runs = asyncio.run(read_runs(sweep.db, [c["run_id"] for c in sweep.cells]))
    by_key = {(c["strategy"], c["budget"]["name"]): c for c in sweep.cells}
    base = [c for c in sweep.cells if c["strategy"] == "best_of_n"]
    assert sweep.report.baseline == "best_of_n"
    rows = md_table(sweep.md, "Paired comparisons against best_of_n")
    assert len(rows) == 6  # every other cell, each matched with one baseline cell
    for row in rows:
        cell = by_key[(row["strategy"], row["budget"])]
        if cell["strategy"] == "self_consistency":  # same knob: same budget
            assert row["baseline at"] == row["budget"] and row["matched by"] == "same budget"
        else:  # other knobs: the baseline cell nearest in mean tokens per task
            mine = mean_tokens(runs[cell["run_id"]])
            nearest = min(base, key=lambda b: abs(math.log(
                mean_tokens(runs[b["run_id"]]) / mine)))
            assert row["baseline at"] == nearest["budget"]["name"]
            assert row["matched by"] == "nearest in tokens"
        b = by_key[("best_of_n", row["baseline at"])]
        mine_at = {a.task_id: a for a in runs[cell["run_id"]]}
        theirs = {a.task_id: a for a in runs[b["run_id"]]}
        common = sorted(set(mine_at) & set(theirs))
        xs = [float(bool(mine_at[t].correct)) for t in common]
        ys = [float(bool(theirs[t].correct)) for t in common]
        diff = (sum(xs) - sum(ys)) / len(common)
        wins = sum(x > y for x, y in zip(xs, ys, strict=True))
        losses = sum(x < y for x, y in zip(xs, ys, strict=True))
        assert row["tasks"] == str(len(common))
        assert row["difference"].startswith(f"{100 * diff:+.1f} pp [")
        assert row["sign test p"] == f"{binomial_sign_p(wins, losses):.3f}"
        assert row["W / T / L"] == f"{wins} / {len(common) - wins - losses} / {losses}"
        dtok = (sum(mine_at[t].prompt_tokens + mine_at[t].completion_tokens for t in common)
                - sum(theirs[t].prompt_tokens + theirs[t].completion_tokens
                      for t in common)) / len(common)
        assert row["Δ tokens / task"].startswith(amount(dtok) + " [")


def test_another_baseline_and_an_unknown_one(sweep: Built) -> None:
    report = asyncio.run(_report(sweep.db, sweep.sweep_id, baseline="refine", figures=False))
    assert report.baseline == "refine" and report.figures == []
    assert {c.baseline.group for c in report.comparisons} == {"refine"}
    assert len(report.comparisons) == 6
    with pytest.raises(UsageError, match=r"not a strategy of this sweep.*best_of_n"):
        asyncio.run(_report(sweep.db, sweep.sweep_id, baseline="beam", figures=False))


def test_html_is_one_self_contained_file(sweep: Built, tmp_path: Path) -> None:
    written = write_report(sweep.report, tmp_path / "out", ("html", "md", "json"))
    names = sorted(p.name for p in written)
    assert names == sorted(["report.html", "report.md", "report.json",
                            *(f"{f.name}.png" for f in sweep.report.figures)])
    html = (tmp_path / "out" / "report.html").read_text()
    parsed = html_tables(html)
    assert parsed.refs, "the figures are images"
    for tag, attr, value in parsed.refs:
        assert tag == "img" and attr == "src" and value.startswith("data:image/png;base64,")
    lowered = html.lower()
    for bad in ("<link", "@import", "url(", "<iframe", "<object", "<embed"):
        assert bad not in lowered
    assert re.findall(r"<script(?![^>]*application/json)", lowered) == []
    # the Markdown points at the PNGs written beside it
    md = (tmp_path / "out" / "report.md").read_text()
    for f in sweep.report.figures:
        assert f"](./{f.name}.png)" in md
        assert (tmp_path / "out" / f"{f.name}.png").read_bytes() == f.png
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["kind"] == "sweep" and len(data["cells"]) == 8
    assert "store.db" in data["provenance"]["store"]
    for word in ("store", "runs", "deliberate", "commit", "generated"):
        assert f"<dt>{word}</dt>" in html
    with pytest.raises(UsageError, match="unknown report format"):
        write_report(sweep.report, tmp_path / "x", ("pdf",))


def test_plots_draw_the_points_they_are_given() -> None:
    pts = (plots.Point(100.0, 0.5, 0.3, 0.7, "n=2", True),
           plots.Point(400.0, 0.75, 0.6, 0.9, "n=8", True),
           plots.Point(250.0, 0.4, 0.2, 0.6, "n=4", False))
    panel = plots.Panel("suite · model", (plots.Series("best_of_n", pts[:2]),
                                          plots.Series("other", pts[2:])))
    fig = plots.accuracy_vs_tokens([panel])
    (ax,) = [a for a in fig.axes if a.get_visible()]
    lines = {ln.get_gid(): ln for ln in ax.get_lines() if ln.get_gid()}
    assert list(lines["pareto"].get_xdata()) == [100.0, 400.0]
    drawn = {gid: (list(ln.get_xdata()), list(ln.get_ydata())) for gid, ln in lines.items()}
    assert drawn["best_of_n"] == ([100.0, 400.0], [50.0, 75.0])
    assert drawn["other"] == ([250.0], [40.0])
    assert ax.get_xlabel() and ax.get_ylabel() and fig.legends
    fig2 = plots.accuracy_vs_budget([plots.Panel("best_of_n", (plots.Series("b", pts[:2]),),
                                                 "n (count per task)")])
    (ax2,) = [a for a in fig2.axes if a.get_visible()]
    (line,) = [ln for ln in ax2.get_lines() if ln.get_gid() == "b"]
    assert list(line.get_ydata()) == [50.0, 75.0]
    assert ax2.get_xlabel() == "n (count per task)"
    fig3 = plots.per_solved_bars([plots.Series("s", (plots.Point(math.nan, 12.0, 10.0, 15.0,
                                                                  "n=2"),))],
                                 xlabel="tokens per solved task (tokens)", title="Tokens")
    (bar,) = fig3.axes[0].patches
    assert bar.get_width() == 12.0
    assert plots.png(fig3).startswith(b"\x89PNG")
    assert plots.wrap("cost in $ for a very long strategy label here", 20).count("\n") >= 1
    assert "\\$" in plots.wrap("a $ b")


# ------------------------------------------------------------------ single runs


async def test_code_run_reports_unbiased_pass_at_k_from_the_candidate_grades(
        tmp_path: Path) -> None:
    db = str(tmp_path / "code.db")
    res = await arun(RunConfig(suite="python", limit=3, strategy="best_of_n",
                               strategy_params={"n": 4}, model="sim?skill=0.4&seed=2",
                               store=db, cache=False), run_id="code")
    store = Store.open(db)
    await store.start()
    try:
        counts = []
        for a in res.attempts:
            nodes, js = await store.load_tree("code", a.task_id)
            grades = {j.node_id: j.verdict for j in js if j.role == "grader"}
            cands = [n for n in nodes if n.role == "generator"]
            counts.append((len(cands), sum(grades[n.id] == "correct" for n in cands)))
        report = await build_report(store, "code", resamples=300)
    finally:
        await store.aclose()
    assert all(n == 4 for n, _ in counts)
    md = render_markdown(report)
    (row,) = md_table(md, "pass@k of the candidates")
    for k in (1, 2, 4):
        exact = sum(1 - math.comb(n - c, k) / math.comb(n, k) for n, c in counts) / 3
        assert row[f"pass@{k}"].startswith(pct(exact) + " ["), (k, row)
    assert "pass@3" not in row  # k runs 1, 2, 4, … up to the candidates per task
    fig = next(f for f in report.figures if f.name == "pass-at-k")
    ys = [p["y"] for p in fig.data["pass_at_k"]["panels"][0]["series"][0]["points"]]
    assert ys == pytest.approx([sum(1 - math.comb(n - c, k) / math.comb(n, k)
                                    for n, c in counts) / 3 for k in (1, 2, 4)])
    assert fig.data["chosen"]["y"] == pytest.approx(
        sum(bool(a.correct) for a in res.attempts) / 3)


async def test_detection_run_reports_micro_precision_recall_from_the_grades(
        tmp_path: Path) -> None:
    db = str(tmp_path / "det.db")
    res = await arun(RunConfig(suite="solidity", limit=4, strategy="self_consistency",
                               strategy_params={"n": 3}, model="sim?skill=0.4&seed=5",
                               store=db, cache=False), run_id="det")
    store = Store.open(db)
    await store.start()
    tp = fp = fn = 0
    try:
        for a in res.attempts:
            _, js = await store.load_tree("det", a.task_id)
            (g,) = [j for j in js if j.role == "grader" and j.node_id == a.final_node_id]
            tp, fp, fn = (tp + g.meta["metrics"]["tp"], fp + g.meta["metrics"]["fp"],
                          fn + g.meta["metrics"]["fn"])
        report = await build_report(store, "det", resamples=300)
    finally:
        await store.aclose()
    assert tp + fp and tp + fn
    (row,) = html_tables(render_html(report)).tables["table-detection"]
    cells = row[1]
    assert cells[2].startswith(pct(tp / (tp + fp)) + " [")
    assert cells[3].startswith(pct(tp / (tp + fn)) + " [")
    assert cells[4].startswith(pct(2 * tp / (2 * tp + fp + fn)) + " [")
    assert cells[5].startswith(amount(fp / 4))


async def test_single_run_against_a_baseline_run(tmp_path: Path) -> None:
    db = str(tmp_path / "pair.db")
    base: dict[str, Any] = dict(suite="arithmetic", limit=6, model=MODEL, store=db,
                                cache=False)
    a = await arun(RunConfig(strategy="refine", **base), run_id="a")
    b = await arun(RunConfig(strategy="best_of_n", strategy_params={"n": 2}, **base),
                   run_id="b")
    report = await _report(db, "a", baseline="b")
    md = render_markdown(report)
    (row,) = md_table(md, "Paired comparisons against best_of_n")
    xs = [float(bool(x.correct)) for x in a.attempts]
    ys = [float(bool(y.correct)) for y in b.attempts]
    assert row["tasks"] == "6"
    assert row["difference"].startswith(f"{100 * (sum(xs) - sum(ys)) / 6:+.1f} pp")
    with pytest.raises(UsageError, match="no baseline run 'zz'"):
        await _report(db, "a", baseline="zz")


async def test_report_over_the_openai_client_path(tmp_path: Path) -> None:
    # a model string holding a URL appears as text, never as a reference
    db = str(tmp_path / "http.db")
    with SimServer(load_suite("arithmetic"), SimParams(seed=1), ServerConfig()) as srv:
        model = f"openai:sim@{srv.base_url}"
        res = await arun(RunConfig(suite="arithmetic", limit=3, strategy="best_of_n",
                                   strategy_params={"n": 2}, model=model, store=db,
                                   cache=False), run_id="http")
    report = await _report(db, "http")
    html = render_html(report)
    assert srv.base_url in html
    assert all(v.startswith("data:") for _, _, v in html_tables(html).refs)
    (row,) = html_tables(html).tables["table-accuracy"]
    assert row[1][4].startswith(pct(accuracy(res.attempts)) + " [")


async def test_text_from_runs_is_escaped(tmp_path: Path) -> None:
    db = str(tmp_path / "esc.db")
    name = "<script>alert('x')</script> | <b>bold</b>"
    await arun(RunConfig(suite="arithmetic", limit=2, strategy="best_of_n",
                         strategy_params={"n": 2}, model=MODEL, store=db, cache=False,
                         name=name), run_id="esc")
    report = await _report(db, "esc")
    html = render_html(report)
    assert "<script>alert" not in html and "<b>bold" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    md = render_markdown(report)
    assert "<script>" not in md and "<b>" not in md
    (row,) = md_table(md, "Accuracy")  # the pipe in the name does not split the row
    assert row["strategy"] == "&lt;script&gt;alert('x')&lt;/script&gt; \\| &lt;b&gt;bold&lt;/b&gt;"


async def test_unfinished_sweep_marks_missing_cells(tmp_path: Path) -> None:
    db = str(tmp_path / "part.db")
    spec = [("best_of_n", "n", (2, 4)), ("self_consistency", "n", (2,))]
    await make_sweep(db, "part", limit=2, spec=spec, skip=(1,))
    report = await _report(db, "part")
    assert [c.status for c in report.cells] == ["done", "missing", "done"]
    assert any("1 of 3 cells have not run yet" in n for n in report.notes)
    md = render_markdown(report)
    rows = md_table(md, "Accuracy")
    assert rows[1]["status"] == "not run yet" and rows[1]["accuracy"] == "—"
    assert {f.name for f in report.figures} >= {"accuracy-vs-tokens", "accuracy-vs-budget"}
    with pytest.raises(UsageError, match="no run 'nope'"):
        await _report(db, "nope")


# ------------------------------------------------------------------ critic evaluations


async def test_processbench_results_as_a_report(tmp_path: Path) -> None:
    from deliberate.evals.critics import (
        CriticEvalConfig,
        evaluate_processbench,
        load_processbench,
        subsample,
    )

    items = subsample(load_processbench(shared_data("math/processbench-gsm8k.json.gz")), 40)
    result = await evaluate_processbench(
        items, CriticEvalConfig(model="sim?sensitivity=0.7&specificity=0.8&seed=1",
                                resamples=200))
    path = tmp_path / "pb.json"
    path.write_text(json.dumps({"data": "pb", **result.as_dict()}))
    report = critic_eval_report(path)
    records = [r.as_dict() for r in result.records]
    outcomes = [r["outcome"] for r in records]
    (fig,) = report.figures
    (panel,) = fig.data["panels"]
    assert panel["counts"] == [
        [outcomes.count("exact"), outcomes.count("early") + outcomes.count("late"),
         outcomes.count("missed"), sum(o == "unanswered" and r["label"] != -1
                                       for o, r in zip(outcomes, records, strict=True))],
        [0, outcomes.count("flagged"), outcomes.count("clean"),
         sum(o == "unanswered" and r["label"] == -1
             for o, r in zip(outcomes, records, strict=True))]]
    html = render_html(report)
    err = result.metrics.erroneous_accuracy
    assert err is not None and pct(err.value) in html
    scores = html_tables(html).tables["table-critic-scores"]
    assert [cells[0] for _, cells in scores] == ["erroneous accuracy", "correct accuracy", "f1"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"form": "ranking", "metrics": {}}))
    with pytest.raises(DataError, match="known: processbench, verdict"):
        critic_eval_report(bad)
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        critic_eval_report(bad)


@pytest.mark.parametrize(("form", "metrics", "expected"), [
    ("verdict", {"wrong_outcomes": {"caught": 7, "missed": 2, "unanswered": 1},
                 "right_outcomes": {"passed": 5, "false_alarm": 3, "unanswered": 0}},
     [[7, 2, 1], [3, 5, 0]]),
    ("realcritic", {"outcomes": {"fixed": 4, "still_wrong": 6, "kept": 9, "broken": 1},
                    "change": {"value": 0.3, "low": 0.1, "high": 0.5, "n": 20}},
     [[4, 6], [9, 1]]),
    ("pairwise", {"outcomes": {"right": 30, "wrong": 8, "tie": 2, "unanswered": 1}},
     [[30, 8, 2, 1]]),
])
def test_critic_eval_forms_as_matrices(tmp_path: Path, form: str, metrics: dict[str, Any],
                                       expected: list[list[int]]) -> None:
    path = tmp_path / f"{form}.json"
    path.write_text(json.dumps({"form": form, "model": "m<1>", "metrics": {
        "accuracy": {"value": 0.75, "low": 0.5, "high": 0.9, "n": 20}, **metrics}}))
    report = critic_eval_report(path)
    (fig,) = report.figures
    assert fig.data["panels"][0]["counts"] == expected
    md = render_markdown(report)
    assert "| accuracy | 75.0% [50.0, 90.0] |" in md and "m&lt;1&gt;" in md
    if "change" in metrics:
        assert "| change | +30.0 pp [+10.0, +50.0] |" in md
    counts = html_tables(render_html(report)).tables["table-critic-counts"]
    assert sum(int(cells[2]) for _, cells in counts) == sum(map(sum, expected))


# ------------------------------------------------------------------ the command


def cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DELIBERATE_HOME": str(home), "COLUMNS": "100"}
    return subprocess.run([sys.executable, "-m", "deliberate", *args], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=120, check=False)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def test_cli_writes_the_report_and_prints_a_summary(sweep: Built, tmp_path: Path,
                                                    home: Path) -> None:
    out = tmp_path / "rep"
    proc = cli("report", sweep.sweep_id, "--store", sweep.db, "--out", str(out),
               "--format", "html,md,json", "--resamples", "300", home=home)
    assert proc.returncode == 0, proc.stderr
    for word in ("best_of_n", "self_consistency", "refine", "mcts", "accuracy %",
                 "paired with best_of_n", "wrote"):
        assert word in proc.stdout
    assert (out / "report.html").stat().st_size > 10_000
    data = json.loads((out / "report.json").read_text())
    assert [c["run_id"] for c in data["cells"]] == [c["run_id"] for c in sweep.cells]
    # the numbers do not depend on the process: same seed, same intervals
    assert data["cells"][0]["metrics"]["accuracy"] == sweep.report.cells[0].metrics.as_dict()[  # type: ignore[union-attr]
        "accuracy"]


def test_cli_starts_without_matplotlib_and_knows_the_formats() -> None:
    from deliberate.cli import report as cli_report
    from deliberate.evals.report import FORMATS

    assert cli_report.FORMATS == FORMATS
    code = "import sys, deliberate.cli; print('matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert proc.stdout.strip() == "False"


def test_cli_errors_are_one_line(sweep: Built, tmp_path: Path, home: Path) -> None:
    for args, needle in (
            (("report", "nope", "--store", sweep.db), "no run 'nope'"),
            (("report", sweep.sweep_id, "--store", sweep.db, "--format", "pdf"),
             "--format 'pdf'"),
            (("report", sweep.sweep_id, "--store", sweep.db, "--baseline", "beam",
              "--out", str(tmp_path / "o")), "not a strategy of this sweep")):
        proc = cli(*args, home=home)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
