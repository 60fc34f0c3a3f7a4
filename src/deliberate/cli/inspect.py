"""``deliberate runs`` and ``deliberate show``: what is in the store."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from deliberate.cli.common import console, fmt_pct
from deliberate.errors import UsageError
from deliberate.store import Store
from deliberate.tree import JudgementRecord, NodeRecord

StoreOpt = Annotated[str | None, typer.Option(help="database URL or SQLite path")]


def runs_cmd(store: StoreOpt = None,
             limit: Annotated[int, typer.Option(help="newest N runs")] = 20) -> None:
    """List runs, newest first."""
    asyncio.run(_runs(store, limit))


async def _runs(store_url: str | None, limit: int) -> None:
    st = Store.open(store_url)
    try:
        runs = await st.list_runs(limit=limit)
    finally:
        await st.aclose()
    if not runs:
        console.print(f"no runs in {st.url} yet; try: deliberate run")
        return
    t = Table(title=f"runs in {st.url}", header_style="bold", title_justify="left")
    t.add_column("run", no_wrap=True, style="bold")
    t.add_column("created", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("strategy on suite", overflow="fold", min_width=24)
    t.add_column("tasks", justify="right", no_wrap=True)
    t.add_column("accuracy", justify="right", no_wrap=True)
    wide = console.width >= 110
    if wide:
        t.add_column("model", overflow="fold")
    for r in runs:
        cfg, s = r.config, r.summary
        t.add_row(
            r.id,
            time.strftime("%m-%d %H:%M", time.localtime(r.created_at)),
            r.status,
            f"{cfg.get('strategy', '')} on {cfg.get('suite', '')}",
            str(s.get("tasks", "—")),
            fmt_pct(s.get("accuracy")),
            *([escape(str(s.get("model") or cfg.get("model") or "default"))] if wide else []),
        )
    console.print(t)


def show_cmd(
    run_id: Annotated[str, typer.Argument(help="run id (see: deliberate runs)")],
    task_id: Annotated[str | None, typer.Argument(help="task id: draw its tree")] = None,
    store: StoreOpt = None,
    width: Annotated[int, typer.Option(help="characters of node text shown")] = 70,
) -> None:
    """Summarise a run, or draw one task's tree."""
    asyncio.run(_show(run_id, task_id, store, width))


async def _show(run_id: str, task_id: str | None, store_url: str | None, width: int) -> None:
    st = Store.open(store_url)
    try:
        run = await st.get_run(run_id)
        if run is None:
            raise UsageError(f"no run {run_id!r} in {st.url}; see 'deliberate runs'")
        attempts = await st.get_attempts(run_id)
        if task_id is None:
            _print_run(run.id, run.status, run.config, attempts)
            return
        if not any(a.task_id == task_id for a in attempts):
            known = ", ".join(a.task_id for a in attempts[:8])
            raise UsageError(f"run {run_id} has no task {task_id!r}; tasks include: {known}")
        nodes, judgements = await st.load_tree(run_id, task_id)
    finally:
        await st.aclose()
    console.print(render_tree(nodes, judgements, width=width))


def _print_run(run_id: str, status: str, config: dict[str, object], attempts: list) -> None:  # type: ignore[type-arg]
    t = Table(title=f"run {run_id} ({status}): {config.get('strategy')} on {config.get('suite')}",
              header_style="bold")
    for col in ("task", "status", "answer", "correct", "tokens", "calls", "nodes"):
        t.add_column(col)
    for a in attempts:
        t.add_row(
            a.task_id, a.status, escape(str(a.answer))[:24] if a.answer is not None else "—",
            "—" if a.correct is None else ("yes" if a.correct else "no"),
            f"{a.prompt_tokens + a.completion_tokens:,}", str(a.calls),
            str(a.stats.get("nodes", "—")),
        )
    console.print(t)
    graded = [a for a in attempts if a.correct is not None]
    if graded:
        acc = sum(1 for a in graded if a.correct) / len(graded)
        console.print(f"accuracy {fmt_pct(acc)} over {len(graded)} graded tasks")


def _label(node: NodeRecord, judgements: list[JudgementRecord], width: int) -> str:
    head = f"[bold]{node.operator}[/]"
    if node.sample_index is not None:
        head += f" #{node.sample_index}"
    if node.meta.get("chosen"):
        head = "[green]★[/] " + head
    bits = [head]
    if node.answer is not None and node.operator != "root":
        bits.append(f"answer=[cyan]{escape(node.answer[:30])}[/]")
    if node.value is not None:
        bits.append(f"value={node.value:.2f}")
    if node.visits:
        bits.append(f"visits={node.visits}")
    for j in judgements:
        if j.verdict == "parse_failure":
            bits.append(f"[red]{j.role}: unparseable[/]")
            continue
        mark = {"correct": "[green]✓[/]", "incorrect": "[red]✗[/]"}.get(j.verdict or "", "")
        score = "" if j.score is None else f" {j.score:g}"
        if j.scale_max is not None and j.score is not None:
            score += f"/{j.scale_max:g}"
        bits.append(f"{j.role}{score} {mark}".rstrip())
    text = " ".join(node.text.split())
    if len(text) > width:
        text = text[: width - 1] + "…"
    return "  ".join(bits) + f"\n[dim]{escape(text)}[/]"


def render_tree(nodes: list[NodeRecord], judgements: list[JudgementRecord], *,
                width: int = 70) -> Tree:
    """A rich tree of a task: operators, answers, values, judgements, chosen path."""
    by_parent: dict[str | None, list[NodeRecord]] = {}
    for n in nodes:
        by_parent.setdefault(n.parent_id, []).append(n)
    for kids in by_parent.values():
        kids.sort(key=lambda n: (n.sample_index if n.sample_index is not None else -1, n.created_at))
    js: dict[str, list[JudgementRecord]] = {}
    for j in judgements:
        js.setdefault(j.node_id, []).append(j)
    roots = by_parent.get(None, [])
    if not roots:
        return Tree("(empty tree)")
    root = roots[0]
    tree = Tree(f"[bold]task {escape(root.task_id)}[/]\n[dim]{escape(' '.join(root.text.split())[:width])}[/]")

    def add(branch: Tree, node: NodeRecord) -> None:
        for kid in by_parent.get(node.id, []):
            add(branch.add(_label(kid, js.get(kid.id, []), width)), kid)

    add(tree, root)
    return tree
