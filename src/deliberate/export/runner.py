"""The export driver: a run's trees → one kind's rows → files split by task, and a card.

The run is read one task at a time (attempts paged in task-id order, then one
task's nodes, judgements and model calls), the kind's extractor turns that tree
into rows, and the rows stream through the filters to the writer of their split.
Memory follows the largest tree and the writer's batch, not the run — with one
exception: deduplication keeps a 16-byte digest of every distinct row it has
written (about 70 bytes each in a Python set), so with ``dedup`` on memory grows
with the number of distinct rows; ``dedup=False`` turns that off.

The filters are applied here, after the extractor (which is called with them
switched off), so the result can say how many rows each one dropped:

- ``margin``: a row whose ``provenance["margin"]`` is at most ``margin`` (pairs
  must differ by *more* than the margin; only when ``margin`` > 0);
- ``length``: a completion (``chosen``, ``rejected``, ``completion``, the
  assistant turns of ``messages``, the steps of ``steps``/``completions`` joined by
  newlines) shorter than ``min_chars`` or longer than ``max_chars``;
- ``duplicate``: a row whose TRL columns equal an earlier row's.

Split: a task is in ``test`` when a hash of (``split_seed``, task id) falls below
``test_share`` — the same task lands in the same split whatever else the run
holds, and no task is in both.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deliberate.errors import UnknownNameError, UsageError
from deliberate.export.base import Example, ExportOptions, ExportTree, describe, keep_text
from deliberate.export.card import command_line, render_card
from deliberate.export.kinds import KIND_MODULES, Kind, get_kind
from deliberate.export.writers import SUFFIX, Format, SplitWriters, require_format
from deliberate.store import Store
from deliberate.tree import AttemptRecord

__all__ = ["CARD_NAME", "ExportResult", "Filters", "aexport_run", "export_run", "load_kind",
           "row_group", "split_of"]

CARD_NAME = "README.md"
PAGE = 200
"""Attempts read per page."""

Progress = Callable[[int, int], None]
"""Called with (tasks done, tasks in all) after each task."""


@dataclass(slots=True)
class ExportResult:
    """What an export wrote, and what it left out and why."""

    kind: str
    run_id: str
    out: Path
    fmt: Format
    options: ExportOptions
    files: dict[str, Path] = field(default_factory=dict)
    """Data file per split (a split without rows has none)."""
    rows: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    """Tasks read per split."""
    tasks_with_rows: dict[str, int] = field(default_factory=dict)
    groups: dict[str, dict[str, int]] = field(default_factory=dict)
    """Rows per split and type (pair type, choice, or label)."""
    dropped: dict[str, int] = field(default_factory=lambda: {"margin": 0, "length": 0,
                                                             "duplicate": 0})
    extracted: int = 0
    """Rows the kind gave before the filters."""
    tasks_read: int = 0
    tasks_without_tree: int = 0
    columns: list[str] = field(default_factory=list)
    """The data columns the rows have (the kind's declared ones when there are no rows)."""
    provenance_keys: list[str] = field(default_factory=list)
    card: Path | None = None

    @property
    def total_rows(self) -> int:
        return sum(self.rows.values())


def split_of(task_id: str, opts: ExportOptions) -> str:
    """``test`` or ``train`` for a task: a seeded hash, independent of every other task."""
    if opts.test_share <= 0:
        return "train"
    h = hashlib.sha256(f"deliberate-split\x1f{opts.split_seed}\x1f{task_id}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2**64 < opts.test_share else "train"


def _texts(value: Any) -> list[str]:
    """The completion text(s) of a column: a string, or a message list's assistant turns."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        said = [str(m.get("content", "")) for m in value if m.get("role") == "assistant"]
        return ["\n".join(said)] if said else []
    if isinstance(value, list) and value and all(isinstance(s, str) for s in value):
        return ["\n".join(value)]
    return []


COMPLETION_COLUMNS = ("chosen", "rejected", "completion", "messages", "completions", "steps")
"""Columns the length filter reads: texts, message lists (their assistant turns), step
lists (joined by newlines)."""


class Filters:
    """Margin, length and duplicate filters, counting what each drops."""

    def __init__(self, opts: ExportOptions) -> None:
        self.opts = opts
        self.dropped: Counter[str] = Counter({"margin": 0, "length": 0, "duplicate": 0})
        self._seen: set[bytes] = set()

    def reason(self, ex: Example) -> str | None:
        """Why the row is dropped (None: kept). A kept row is remembered for dedup."""
        m = ex.provenance.get("margin")
        if (self.opts.margin > 0 and isinstance(m, int | float) and not isinstance(m, bool)
                and m <= self.opts.margin):
            return self._drop("margin")
        for col in COMPLETION_COLUMNS:
            if col in ex.data and not all(keep_text(t, self.opts) for t in _texts(ex.data[col])):
                return self._drop("length")
        if self.opts.dedup:
            digest = hashlib.blake2b(f"{ex.kind}\x1f{describe(ex.data)}".encode(),
                                     digest_size=16).digest()
            if digest in self._seen:
                return self._drop("duplicate")
            self._seen.add(digest)
        return None

    def _drop(self, why: str) -> str:
        self.dropped[why] += 1
        return why


def row_group(ex: Example) -> str:
    """The type a row is counted under in the card: its pair type, choice or group, else
    its outcome, else its label (desirable/undesirable), else the kind."""
    for key in ("pair_type", "choice", "group"):
        v = ex.provenance.get(key)
        if isinstance(v, str) and v:
            return v
    outcome = ex.data.get("outcome")
    if isinstance(outcome, str) and outcome:
        return outcome
    label = ex.data.get("label")
    if isinstance(label, bool):
        return "desirable" if label else "undesirable"
    return ex.kind


def load_kind(name: str) -> Kind:
    """The kind, with one-line errors for an unknown or not yet available one."""
    try:
        return get_kind(name)
    except ModuleNotFoundError as exc:
        if exc.name == KIND_MODULES.get(name):
            raise UnknownNameError(f"export kind {name!r} is not available in this "
                                   "installation") from exc
        raise


def _prepare_out(out: Path, force: bool) -> None:
    """Make ``out`` an empty directory for the export (``force``: replace an earlier one's
    files, leaving anything else in it)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a directory for the export")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise UsageError(f"--out {out} is not empty; choose another directory or pass "
                             "--force to replace the export in it")
        for split in ("train", "test"):
            for suffix in SUFFIX.values():
                (out / f"{split}{suffix}").unlink(missing_ok=True)
        (out / CARD_NAME).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


async def _attempts(store: Store, run_id: str,
                    tasks: list[str] | None) -> AsyncIterator[AttemptRecord]:
    if tasks is not None:
        for t in tasks:
            a = await store.get_attempt(run_id, t)
            assert a is not None
            yield a
        return
    after: str | None = None
    while True:
        page = await store.page_attempts(run_id, after=after, limit=PAGE)
        for a in page:
            yield a
        if len(page) < PAGE:
            return
        after = page[-1].task_id


async def aexport_run(
    store: str | Store | None,
    run_id: str,
    kind: str,
    out: str | Path,
    *,
    fmt: str = "jsonl",
    options: ExportOptions | None = None,
    tasks: Iterable[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export one kind from a stored run into the directory ``out``.

    Writes ``train.jsonl`` / ``test.jsonl`` (or ``.parquet``) and a ``README.md``
    dataset card. ``store`` is a URL or path (opened and closed here) or an open
    Store (left open). ``tasks`` limits the export to those task ids.
    """
    opts = options or ExportOptions()
    k = load_kind(kind)
    form = require_format(fmt)
    out = Path(out)
    own = not isinstance(store, Store)
    st = await asyncio.to_thread(Store.open, store) if not isinstance(store, Store) else store
    try:
        run = await st.get_run(run_id)
        if run is None:
            raise UsageError(f"no run {run_id!r} in {st.url}; see 'deliberate runs'")
        wanted: list[str] | None = None
        if tasks is not None:
            wanted = sorted(set(tasks))
            missing = [t for t in wanted if await st.get_attempt(run_id, t) is None]
            if missing:
                raise UsageError(f"run {run_id} has no task {missing[0]!r}"
                                 + (f" (nor {len(missing) - 1} more)" if len(missing) > 1
                                    else ""))
        total = len(wanted) if wanted is not None else await st.count_attempts(run_id)
        _prepare_out(out, force)
        res = ExportResult(kind=k.name, run_id=run_id, out=out, fmt=form, options=opts)
        raw = opts.model_copy(update={"margin": 0.0, "min_chars": 0, "max_chars": None,
                                      "dedup": False})
        filters = Filters(opts)
        keys: dict[str, None] = {}
        columns: dict[str, None] = {}
        with SplitWriters(out, form) as sink:
            async for attempt in _attempts(st, run_id, wanted):
                nodes, judgements, calls = await st.load_task(run_id, attempt.task_id)
                res.tasks_read += 1
                split = split_of(attempt.task_id, opts)
                res.tasks[split] = res.tasks.get(split, 0) + 1
                if not any(n.parent_id is None for n in nodes):
                    res.tasks_without_tree += 1
                else:
                    tree = ExportTree(run_id, attempt, nodes, judgements, calls)
                    wrote = False
                    for ex in k.extract(tree, raw):
                        res.extracted += 1
                        if filters.reason(ex) is not None:
                            continue
                        sink.write(split, {**ex.data, "provenance": ex.provenance})
                        keys.update(dict.fromkeys(ex.provenance))
                        columns.update(dict.fromkeys(ex.data))
                        res.rows[split] = res.rows.get(split, 0) + 1
                        by = res.groups.setdefault(split, {})
                        g = row_group(ex)
                        by[g] = by.get(g, 0) + 1
                        wrote = True
                    if wrote:
                        res.tasks_with_rows[split] = res.tasks_with_rows.get(split, 0) + 1
                if progress is not None:
                    progress(res.tasks_read, total)
            res.files = sink.close()
        res.dropped = dict(filters.dropped)
        res.provenance_keys = list(keys)
        res.columns = list(columns) or list(k.columns)
        models = await st.call_models(run_id)
        command = command_line(k.name, run_id, str(out), form, opts,
                               store=None if own and store is None else st.url,
                               tasks=wanted)
        card = render_card(res, run, models, description=k.description, command=command)
        res.card = out / CARD_NAME
        res.card.write_text(card, encoding="utf-8")
        return res
    finally:
        if own:
            await st.aclose()


def export_run(
    store: str | Store | None,
    run_id: str,
    kind: str,
    out: str | Path,
    *,
    fmt: str = "jsonl",
    options: ExportOptions | None = None,
    tasks: Iterable[str] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """:func:`aexport_run` from synchronous code (not from inside an event loop)."""
    return asyncio.run(aexport_run(store, run_id, kind, out, fmt=fmt, options=options,
                                   tasks=tasks, force=force, progress=progress))
