"""``deliberate export``: a run's trees as training data (DPO, KTO, SFT, …)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from deliberate.cli.common import console, parse_params
from deliberate.errors import ConfigError
from deliberate.export.base import ExportOptions
from deliberate.export.kinds import kind_names
from deliberate.export.runner import ExportResult, export_run


def export_cmd(
    kind: Annotated[str, typer.Argument(
        help=f"what to export: {', '.join(kind_names())} (see docs/export.md)")],
    run: Annotated[str, typer.Option("--run", help="run id (see: deliberate runs)")],
    out: Annotated[Path, typer.Option(help="directory for train/test files and README.md")],
    store: Annotated[str | None, typer.Option(help="database URL or SQLite path")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or parquet")] = "jsonl",
    margin: Annotated[float, typer.Option(
        help="pairs must differ by more than this (values on 0..1; labels count 1)")] = 0.0,
    min_chars: Annotated[int, typer.Option(help="drop completions shorter than this")] = 1,
    max_chars: Annotated[int | None, typer.Option(
        help="drop completions longer than this")] = None,
    no_dedup: Annotated[bool, typer.Option(
        "--no-dedup", help="keep rows that repeat an earlier row")] = False,
    conversational: Annotated[bool, typer.Option(
        "--conversational", help="prompts and completions as chat message lists")] = False,
    test_share: Annotated[float, typer.Option(
        help="share of tasks held out as the test split (0 to <1)")] = 0.0,
    split_seed: Annotated[int, typer.Option(help="seed of the split by task")] = 0,
    task: Annotated[list[str] | None, typer.Option(
        "--task", help="only this task (repeatable)")] = None,
    kto_critic: Annotated[bool, typer.Option(
        "--kto-critic", help="kto: label candidates no verifier judged by the critic's verdict")] = False,
    sft_unverified: Annotated[bool, typer.Option(
        "--sft-unverified", help="sft: without any verifier, use the chosen candidate")] = False,
    option: Annotated[list[str] | None, typer.Option(
        "--option", "-o", help="any other export option KEY=VALUE, e.g. critique_form=pairs, "
        "step_source=mc, step_form=prm (repeatable; see docs/export.md)")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="replace an earlier export's files in --out")] = False,
) -> None:
    """Export training data from a run's trees, split by task, with a dataset card.

    Writes OUT/train.jsonl (and OUT/test.jsonl with --test-share), or .parquet,
    in the columns TRL's trainers read, plus OUT/README.md describing the data.
    """
    flags = dict(
        margin=margin, min_chars=min_chars, max_chars=max_chars, dedup=not no_dedup,
        conversational=conversational, test_share=test_share, split_seed=split_seed,
        kto_critic=kto_critic, sft_unverified=sft_unverified)
    extra = parse_params(option)
    for key in extra:
        if key in flags or key not in ExportOptions.model_fields:
            known = sorted(set(ExportOptions.model_fields) - set(flags))
            raise ConfigError(f"-o {key}: not an export option settable with -o; those are: "
                              f"{', '.join(known) or 'none'} (the others have flags)")
    try:
        opts = ExportOptions(**flags, **extra)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "-".join(str(p) for p in err["loc"])
        flag = f"-o {name}" if name in extra else "--" + name.replace("_", "-")
        raise ConfigError(f"{flag}: {err['msg']}") from None
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), console=console, transient=True)
    with bar:
        tid = bar.add_task(f"export {kind} from {run}", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(tid, total=total, completed=done)

        res = export_run(store, run, kind, out, fmt=fmt, options=opts, tasks=task,
                         force=force, progress=on_progress)
    _print_result(res)


def _print_result(res: ExportResult) -> None:
    t = Table(title=f"{res.kind} export of run {res.run_id}", title_justify="left",
              header_style="bold")
    t.add_column("split", style="bold")
    t.add_column("file")
    t.add_column("rows", justify="right")
    t.add_column("tasks (with rows / read)", justify="right")
    t.add_column("by type")
    for split in sorted(set(res.tasks) | set(res.rows), key=lambda s: (s != "train", s)):
        path = res.files.get(split)
        groups = res.groups.get(split, {})
        t.add_row(split, escape(str(path)) if path else "—", f"{res.rows.get(split, 0):,}",
                  f"{res.tasks_with_rows.get(split, 0):,} / {res.tasks.get(split, 0):,}",
                  escape(", ".join(f"{g} {n:,}" for g, n in sorted(groups.items()))) or "—")
    console.print(t)
    d = res.dropped
    console.print(f"{res.extracted:,} rows extracted; dropped: {d['margin']:,} by margin, "
                  f"{d['length']:,} by length, {d['duplicate']:,} duplicates")
    if res.total_rows == 0:
        console.print("[yellow]no rows were written[/]: the run's trees hold nothing this kind "
                      "exports under these filters (see docs/export.md)")
    if res.card is not None:
        console.print(f"dataset card: {escape(str(res.card))}")
