"""``deliberate runs`` and ``deliberate show``: what is in the store."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from deliberate.cli.common import console, fmt_pct
from deliberate.errors import UsageError
from deliberate.store import Store
from deliberate.tree import AttemptRecord, JudgementRecord, NodeRecord, RunRecord

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
            _what(cfg),
            str(s.get("tasks", "—")),
            fmt_pct(s.get("accuracy")),
            *([escape(str(s.get("model") or cfg.get("model") or "default"))] if wide else []),
        )
    console.print(t)


def _what(cfg: dict[str, object]) -> str:
    """What a run ran: a strategy on a suite, or a sweep's cells."""
    if cfg.get("kind") == "sweep":
        cells = cfg.get("cells")
        n = len(cells) if isinstance(cells, list) else 0
        return f"sweep of {n} cells (deliberate report ID)"
    return f"{cfg.get('strategy', '')} on {cfg.get('suite', '')}"


def show_cmd(
    run_id: Annotated[str, typer.Argument(help="run id (see: deliberate runs)")],
    task_id: Annotated[str | None, typer.Argument(help="task id: draw its tree")] = None,
    store: StoreOpt = None,
    width: Annotated[int, typer.Option(help="characters of node text shown")] = 70,
    chosen_only: Annotated[bool, typer.Option(
        "--chosen-only", help="draw only the chosen path (siblings are counted)")] = False,
    depth: Annotated[int | None, typer.Option(
        min=0, help="draw nodes down to this depth (deeper ones are counted)")] = None,
    top: Annotated[int | None, typer.Option(
        min=1, help="draw the K most visited / best valued children of each node")] = None,
    critiques: Annotated[bool, typer.Option(
        "--critiques", help="show each judgement's critique, explanation and advice")] = False,
) -> None:
    """Summarise a run, or draw one task's tree with its search statistics.

    A node shows its operator, answer, value (the backed-up mean in MCTS),
    its own reward when that differs, visits, prior and judgements; ★ marks the
    chosen path, and the chosen candidate is printed in full below the tree.
    """
    view = TreeView(width=width, chosen_only=chosen_only, depth=depth, top=top,
                    critiques=critiques)
    asyncio.run(_show(run_id, task_id, store, view))


@dataclass(frozen=True, slots=True)
class TreeView:
    """How much of a tree to draw."""

    width: int = 70
    chosen_only: bool = False
    depth: int | None = None
    top: int | None = None
    critiques: bool = False


async def _show(run_id: str, task_id: str | None, store_url: str | None,
                view: TreeView) -> None:
    st = Store.open(store_url)
    try:
        run = await st.get_run(run_id)
        if run is None:
            raise UsageError(f"no run {run_id!r} in {st.url}; see 'deliberate runs'")
        if run.config.get("kind") == "sweep" and task_id is None:
            cells = run.config.get("cells")
            runs = [await st.get_run(str(c.get("run_id"))) for c in cells or []
                    if isinstance(c, dict)]
            _print_sweep(run.id, run.status, cells if isinstance(cells, list) else [], runs)
            return
        attempts = await st.get_attempts(run_id)
        if task_id is None:
            _print_run(run.id, run.status, run.config, attempts)
            return
        attempt = next((a for a in attempts if a.task_id == task_id), None)
        if attempt is None:
            known = ", ".join(a.task_id for a in attempts[:8])
            raise UsageError(f"run {run_id} has no task {task_id!r}; tasks include: {known}")
        nodes, judgements = await st.load_tree(run_id, task_id)
    finally:
        await st.aclose()
    console.print(attempt_summary(attempt))
    console.print(render_tree(nodes, judgements, view=view))
    chosen = next((n for n in nodes if n.id == attempt.final_node_id), None)
    if chosen is not None:
        whole = chosen.meta.get("candidate")
        text = whole if isinstance(whole, str) and whole else chosen.text
        console.print(f"[bold]chosen candidate[/] ({escape(chosen.id)}):")
        console.print(escape(text), markup=True, highlight=False)


def attempt_summary(a: AttemptRecord) -> Table:
    """One task's outcome, accounting, tree statistics and search statistics."""
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    correct = "—" if a.correct is None else ("[green]yes[/]" if a.correct else "[red]no[/]")
    t.add_row("task", f"{escape(a.task_id)} ({a.status})")
    t.add_row("answer", f"{escape(str(a.answer)) if a.answer is not None else '—'}  "
                        f"correct: {correct}")
    t.add_row("spent", f"{a.prompt_tokens + a.completion_tokens:,} tokens, {a.calls} calls, "
                       f"${a.cost:.4f}, {a.latency_s:.1f} s")
    st = a.stats
    if "nodes" in st:
        cpn = st.get("calls_per_node")
        t.add_row("tree", f"{st['nodes']} nodes, depth {st.get('depth', 0)}, branching "
                          f"{float(st.get('branching', 0.0)):.2f}, {st.get('judgements', 0)} "
                          f"judgements" + (f", {float(cpn):.2f} calls per node"
                                           if isinstance(cpn, int | float) else ""))
    search = st.get("search")
    if isinstance(search, dict):
        t.add_row("search", ", ".join(f"{k} {v}" for k, v in search.items()))
    notes = st.get("notes")
    if isinstance(notes, list) and notes:
        t.add_row("notes", escape("; ".join(str(n) for n in notes)))
    return t


def _print_sweep(sweep_id: str, status: str, cells: list[object],
                 runs: list[RunRecord | None]) -> None:
    t = Table(title=f"sweep {sweep_id} ({status}): {len(cells)} cells", header_style="bold")
    for col in ("cell", "run", "status", "accuracy", "tokens/task"):
        t.add_column(col)
    for cell, rec in zip(cells, runs, strict=True):
        label = str(cell.get("label", "")) if isinstance(cell, dict) else ""
        if rec is None:
            t.add_row(escape(label), "—", "not started", "—", "—")
            continue
        s = rec.summary
        tasks = s.get("tasks") or 0
        tokens = (s.get("prompt_tokens") or 0) + (s.get("completion_tokens") or 0)
        per = f"{tokens / tasks:,.0f}" if isinstance(tasks, int) and tasks else "—"
        t.add_row(escape(label), rec.id, rec.status, fmt_pct(s.get("accuracy")), per)
    console.print(t)
    console.print(f"see a cell with: deliberate show RUN; the report: deliberate report {sweep_id}")


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


def _label(node: NodeRecord, judgements: list[JudgementRecord], view: TreeView) -> str:
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
    own = node.meta.get("reward")
    if isinstance(own, int | float) and (node.value is None or abs(own - node.value) > 1e-9):
        bits.append(f"reward={own:.2f}")
    if node.visits:
        bits.append(f"visits={node.visits}")
    prior = node.meta.get("prior")
    if isinstance(prior, int | float):
        bits.append(f"prior={prior:.2f}")
    notes: list[str] = []
    for j in judgements:
        if j.verdict == "parse_failure":
            bits.append(f"[red]{j.role}: unparseable[/]")
            continue
        mark = {"correct": "[green]✓[/]", "incorrect": "[red]✗[/]"}.get(j.verdict or "", "")
        score = "" if j.score is None else f" {j.score:g}"
        if j.scale_max is not None and j.score is not None:
            score += f"/{j.scale_max:g}"
        bits.append(f"{j.role}{score} {mark}".rstrip())
        if view.critiques:
            advice = j.meta.get("advice") if isinstance(j.meta, dict) else None
            for what, words in (("", j.critique), ("advice: ", advice)):
                if isinstance(words, str) and words.strip():
                    notes.append(f"{j.role}: {what}{_clip(words, view.width)}")
    text = _clip(node.text, view.width)
    out = "  ".join(bits) + f"\n[dim]{escape(text)}[/]"
    for n in notes:
        out += f"\n[italic]{escape(n)}[/]"
    return out


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _subtree_size(by_parent: dict[str | None, list[NodeRecord]], node: NodeRecord) -> int:
    todo, count = [node], 0
    while todo:
        cur = todo.pop()
        count += 1
        todo.extend(by_parent.get(cur.id, []))
    return count


def render_tree(nodes: list[NodeRecord], judgements: list[JudgementRecord], *,
                width: int = 70, view: TreeView | None = None) -> Tree:
    """A rich tree of a task: operators, answers, values, visits, judgements, chosen path.

    Nodes left out by ``view`` (off the chosen path, beyond a depth, past the top
    K children) are counted on a line of their own, never silently dropped.
    """
    view = view or TreeView(width=width)
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
    tree = Tree(f"[bold]task {escape(root.task_id)}[/]\n"
                f"[dim]{escape(_clip(root.text, view.width))}[/]")

    def shown(kids: list[NodeRecord], depth: int) -> list[NodeRecord]:
        if view.depth is not None and depth > view.depth:
            return []
        if view.chosen_only:
            return [k for k in kids if k.meta.get("chosen")]
        if view.top is not None and len(kids) > view.top:
            best = sorted(kids, key=lambda k: (not k.meta.get("chosen"), -k.visits,
                                               -(k.value if k.value is not None else -1.0)))
            keep = {k.id for k in best[: view.top]}
            return [k for k in kids if k.id in keep]
        return kids

    def add(branch: Tree, node: NodeRecord) -> None:
        kids = by_parent.get(node.id, [])
        drawn = shown(kids, node.depth + 1)
        for kid in drawn:
            add(branch.add(_label(kid, js.get(kid.id, []), view)), kid)
        hidden = [k for k in kids if k not in drawn]
        if hidden:
            size = sum(_subtree_size(by_parent, k) for k in hidden)
            branch.add(f"[dim]… {len(hidden)} more "
                       f"{'child' if len(hidden) == 1 else 'children'} ({size} nodes) not shown[/]")

    add(tree, root)
    return tree
