"""The web view: HTML pages for runs, a run's tasks, a task's tree and a run's report.

Pages (``GET``)::

    /                                   → /runs
    /runs                               the runs, newest first, with their metrics
    /runs/{run_id}                      a run's metrics and tasks (a sweep's cells)
    /runs/{run_id}/tasks/{task_id}      the task's tree as a graph, a node's detail beside
                                        it (``?node=ID`` opens that node)
    /runs/{run_id}/report               the evaluation report, when ``deliberate.evals``
                                        can render one
    /static/web/{file}                  the view's one stylesheet and one script

The runs and run pages are rendered here from the same builders as the JSON API
(:mod:`deliberate.server.api`), so they need no script. The tree page is drawn in
the browser by ``web/tree.js`` from ``/api/runs/{run_id}/tasks/{task_id}/tree`` and
``…/nodes/{node_id}``: it lays the tree out itself and keeps only the expanded part
in the page. Templates are Jinja2 with autoescaping; pages carry a Content-Security-
Policy that allows only this app's own script and stylesheet (no inline code, no
other origin). The store comes from :func:`deliberate.server.api.get_store`
(``app.state.store``), like the API's.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import time
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from deliberate.errors import DeliberateError
from deliberate.export.kinds import kind_names
from deliberate.server.api import StoreDep, build_run, build_runs
from deliberate.store import Store

__all__ = ["WEB_DIR", "report_renderer", "router"]

WEB_DIR = Path(__file__).with_name("web")
STATIC = {"style.css": "text/css; charset=utf-8",
          "tree.js": "text/javascript; charset=utf-8"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")

REPORT_CSP = ("default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
              "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
"""The report page's policy: its frame (which inherits it) needs inline style and
data: images; still no script at all."""

router = APIRouter(include_in_schema=False)


# ------------------------------------------------------------------ formatting


def _pct(x: object) -> str:
    return f"{100 * x:.1f}%" if isinstance(x, int | float) and math.isfinite(x) else "—"


def _num(x: object) -> str:
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else "—"


def _cost(x: object) -> str:
    return f"${x:,.4f}" if isinstance(x, int | float) and math.isfinite(x) else "—"


def _secs(x: object) -> str:
    if not isinstance(x, int | float) or not math.isfinite(x):
        return "—"
    return f"{x * 1000:.0f} ms" if x < 1 else f"{x:,.1f} s"


def _tokens(summary: dict[str, Any]) -> int | None:
    """Prompt plus completion tokens of a run summary (None before it has any)."""
    pt, ct = summary.get("prompt_tokens"), summary.get("completion_tokens")
    if not isinstance(pt, int) and not isinstance(ct, int):
        return None
    return (pt if isinstance(pt, int) else 0) + (ct if isinstance(ct, int) else 0)


def _when(ts: object) -> str:
    if not isinstance(ts, int | float):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def _verdict(correct: object) -> str:
    return "—" if correct is None else ("✓ correct" if correct else "✗ wrong")


@cache
def _templates() -> Environment:
    """The page templates (read once per process; they ship inside the package)."""
    env = Environment(loader=FileSystemLoader(WEB_DIR / "templates"),
                      autoescape=select_autoescape(("html",), default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, cost=_cost, secs=_secs, when=_when,
                       verdict=_verdict)
    return env


def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    def link(route: str, /, **params: str) -> str:
        return request.url_for(route, **params).path

    html = _templates().get_template(template).render(link=link, **context)
    return HTMLResponse(html, status_code=status, headers={"Content-Security-Policy": CSP})


def _not_found(request: Request, message: str) -> HTMLResponse:
    return _page(request, "missing.html", status=404, title="Not found", message=message)


# ------------------------------------------------------------------ the report


ReportFn = Callable[[Store, str], Awaitable[str]]


@cache
def report_renderer() -> ReportFn | None:
    """A function rendering a run's or sweep's evaluation report to HTML, built on
    ``deliberate.evals.report`` (``build_report``, ``draw_figures``, ``render_html``);
    None when the installed evals package lacks them (the pages then offer no report)."""
    try:
        rep = importlib.import_module("deliberate.evals.report")
    except ImportError:
        return None
    build = getattr(rep, "build_report", None)
    draw = getattr(rep, "draw_figures", None)
    render = getattr(rep, "render_html", None)
    if not (callable(build) and callable(draw) and callable(render)):
        return None

    async def render_report(store: Store, run_id: str) -> str:
        report = await build(store, run_id, figures=False)
        # Drawing is CPU work (matplotlib, no pyplot): keep it off the event loop.
        report.figures = await asyncio.to_thread(draw, report)
        return str(render(report))

    return render_report


# ------------------------------------------------------------------ pages


@router.get("/", name="page_home")
async def home(request: Request) -> RedirectResponse:
    return RedirectResponse(request.url_for("page_runs").path, status_code=307)


@router.get("/runs", name="page_runs", response_class=HTMLResponse)
async def runs_page(request: Request, store: StoreDep, limit: int = 200) -> HTMLResponse:
    limit = max(1, min(limit, 10_000))
    out = await build_runs(store, limit)
    return _page(request, "runs.html", title="Runs", runs=out.runs, limit=limit,
                 store_url=store.url, has_report=report_renderer() is not None)


@router.get("/runs/{run_id}", name="page_run", response_class=HTMLResponse)
async def run_page(request: Request, run_id: str, store: StoreDep) -> HTMLResponse:
    out = await build_run(store, run_id)
    if out is None:
        return _not_found(request, f"There is no run {run_id!r} in {store.url}.")
    config, cells = out.run.config, []
    if config.get("kind") == "sweep":
        for cell in config.get("cells", []):
            if isinstance(cell, dict) and isinstance(cell.get("run_id"), str):
                rec = await store.get_run(cell["run_id"])
                summary = rec.summary if rec is not None else {}
                cells.append({"cell": cell, "run": rec, "summary": summary,
                              "tokens": _tokens(summary)})
    summary = out.run.summary
    accuracy = summary.get("accuracy")
    if config.get("kind") == "sweep":
        graded, correct = summary.get("graded"), summary.get("correct")
        accuracy = correct / graded if isinstance(graded, int) and graded and isinstance(
            correct, int) else None
    return _page(request, "run.html", title=f"Run {run_id}", run=out.run, tasks=out.tasks,
                 cells=cells, is_sweep=config.get("kind") == "sweep", accuracy=accuracy,
                 tokens=_tokens(summary),
                 export_kinds=kind_names(), has_report=report_renderer() is not None)


@router.get("/runs/{run_id}/tasks/{task_id}", name="page_tree", response_class=HTMLResponse)
async def tree_page(request: Request, run_id: str, task_id: str,
                    store: StoreDep) -> HTMLResponse:
    attempt = await store.get_attempt(run_id, task_id)
    if attempt is None:
        what = (f"run {run_id!r}" if await store.get_run(run_id) is None
                else f"task {task_id!r} in run {run_id}")
        return _not_found(request, f"There is no {what} in {store.url}.")
    return _page(request, "tree.html", title=f"{task_id} · {run_id}", run_id=run_id,
                 task_id=task_id, attempt=attempt)


@router.get("/runs/{run_id}/report", name="page_report", response_class=HTMLResponse)
async def report_page(request: Request, run_id: str, store: StoreDep) -> HTMLResponse:
    render = report_renderer()
    if render is None:
        return _not_found(request, "This installation cannot render evaluation reports.")
    if await store.get_run(run_id) is None:
        return _not_found(request, f"There is no run {run_id!r} in {store.url}.")
    try:
        html = await render(store, run_id)
    except DeliberateError as exc:
        return _page(request, "missing.html", status=422, title="No report", message=str(exc))
    # The report is the evals package's own self-contained document (inline style, PNGs
    # as data: URLs); it is shown in a sandboxed frame (no script may run) under this
    # page's header.
    page = _page(request, "report.html", title=f"Report {run_id}", run_id=run_id,
                 report_html=html)
    page.headers["Content-Security-Policy"] = REPORT_CSP
    return page


@router.get("/static/web/{file}", name="web_static")
def static(file: str) -> Response:
    """One of the view's two files (a plain function: FastAPI reads it in a thread)."""
    media = STATIC.get(file)
    if media is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response((WEB_DIR / file).read_bytes(), media_type=media,
                    headers={"Cache-Control": "no-cache"})
