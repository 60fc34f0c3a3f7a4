"""Streaming writers: rows go to disk as they come, in JSON Lines or Parquet.

A row is the kind's TRL columns plus ``provenance``. JSON Lines keeps provenance
as a nested object. Parquet needs one schema for the whole file (and for both
splits, so they load as one dataset): the TRL columns take the types of the
first batch of rows (a message list becomes ``list<struct<role, content>>``), and
provenance, whose keys differ between kinds and pair types, is stored as a JSON
string column — one stable schema for every kind; ``json.loads`` it back.

Each file is written under a hidden ``.NAME.partial`` name and renamed when the
export finishes, so an interrupted export leaves no file that looks complete.
Memory is one batch of rows (``batch_rows``) per open Parquet file (more only
while a column has been null in every row so far: see ``_Schema``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Protocol

from deliberate.errors import DataError, MissingDependencyError

__all__ = ["FORMATS", "Format", "JsonlWriter", "ParquetWriter", "RowWriter", "SplitWriters",
           "require_format"]

Format = Literal["jsonl", "parquet"]
FORMATS: tuple[Format, ...] = ("jsonl", "parquet")
SUFFIX: dict[Format, str] = {"jsonl": ".jsonl", "parquet": ".parquet"}
PROVENANCE = "provenance"


def require_format(fmt: str) -> Format:
    """The format, checked, with pyarrow present for Parquet (one-line errors)."""
    if fmt == "jsonl":
        return "jsonl"
    if fmt == "parquet":
        try:
            import pyarrow
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise MissingDependencyError("Parquet export", "parquet", "pyarrow") from exc
        return "parquet"
    raise DataError(f"unknown export format {fmt!r}; use jsonl or parquet")


class RowWriter(Protocol):
    """One data file being written."""

    path: Path
    rows: int

    def write(self, row: dict[str, Any]) -> None: ...

    def close(self) -> None:
        """Finish the file and give it its final name."""

    def abort(self) -> None:
        """Drop the partial file."""


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


class JsonlWriter:
    """One JSON object per line, UTF-8, written as rows arrive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self._tmp = _partial(path)
        self._f: IO[str] | None = self._tmp.open("w", encoding="utf-8")

    def write(self, row: dict[str, Any]) -> None:
        assert self._f is not None, "writer is closed"
        self._f.write(json.dumps(row, ensure_ascii=False, default=str))
        self._f.write("\n")
        self.rows += 1

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            self._tmp.replace(self.path)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._tmp.unlink(missing_ok=True)


class _Schema:
    """The one Parquet schema an export's files share, fixed by the first rows.

    A column that is null in every row so far has no type yet: rows keep
    buffering until it gets one or ``patience`` rows have come, after which it is
    a string column (and a later non-string value is refused with a one-line
    error).
    """

    def __init__(self, patience: int = 8192) -> None:
        self.schema: Any = None
        self.patience = patience

    def of(self, rows: list[dict[str, Any]], *, final: bool) -> Any:
        """The schema, fixing it from ``rows`` if not yet fixed; None while a column is
        untyped and more rows may still type it."""
        import pyarrow as pa

        if self.schema is not None:
            return self.schema
        names: dict[str, None] = {}
        for r in rows:
            names.update(dict.fromkeys(r))
        fields = []
        for name in names:
            if name == PROVENANCE:
                fields.append(pa.field(name, pa.string()))
                continue
            try:
                typ = pa.array([r.get(name) for r in rows]).type
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise DataError(f"column {name!r} mixes types Parquet cannot hold in one "
                                f"column: {exc}") from exc
            if pa.types.is_null(typ):
                if not final and len(rows) < self.patience:
                    return None
                typ = pa.string()
            fields.append(pa.field(name, typ))
        self.schema = pa.schema(fields)
        return self.schema


class ParquetWriter:
    """Rows buffered into batches of ``batch_rows`` and written as Parquet row groups."""

    def __init__(self, path: Path, schema: _Schema | None = None, *,
                 batch_rows: int = 512) -> None:
        self.path = path
        self.rows = 0
        self._tmp = _partial(path)
        self._schema = schema or _Schema()
        self._batch_rows = batch_rows
        self._buf: list[dict[str, Any]] = []
        self._writer: Any = None
        self._closed = False

    def write(self, row: dict[str, Any]) -> None:
        assert not self._closed, "writer is closed"
        flat = dict(row)
        if PROVENANCE in flat:
            flat[PROVENANCE] = json.dumps(flat[PROVENANCE], ensure_ascii=False,
                                          sort_keys=True, default=str)
        self._buf.append(flat)
        self.rows += 1
        if len(self._buf) % self._batch_rows == 0:
            self._flush()

    def _flush(self, *, final: bool = False) -> None:
        if not self._buf:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = self._schema.of(self._buf, final=final)
        if schema is None:
            return  # a column has no type yet: keep buffering
        extra = set().union(*self._buf) - set(schema.names)
        if extra:
            raise DataError(f"rows of {self.path.name} gained columns the first rows did not "
                            f"have: {', '.join(sorted(extra))}")
        try:
            table = pa.Table.from_pylist(self._buf, schema=schema)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise DataError(f"rows of {self.path.name} do not fit the Parquet schema of the "
                            f"first rows ({schema.to_string(show_schema_metadata=False)!r}): "
                            f"{exc}") from exc
        if self._writer is None:
            self._writer = pq.ParquetWriter(str(self._tmp), schema)
        self._writer.write_table(table)
        self._buf = []

    def close(self) -> None:
        if self._closed:
            return
        self._flush(final=True)
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            self._tmp.replace(self.path)

    def abort(self) -> None:
        self._closed = True
        self._buf = []
        if self._writer is not None:
            self._writer.close()
        self._tmp.unlink(missing_ok=True)


class SplitWriters:
    """The data files of one export, one per split, each opened at its first row."""

    def __init__(self, out: Path, fmt: Format, *, batch_rows: int = 512) -> None:
        self.out = out
        self.fmt = fmt
        self._batch_rows = batch_rows
        self._schema = _Schema()
        self.writers: dict[str, RowWriter] = {}

    def path(self, split: str) -> Path:
        return self.out / f"{split}{SUFFIX[self.fmt]}"

    def write(self, split: str, row: dict[str, Any]) -> None:
        w = self.writers.get(split)
        if w is None:
            path = self.path(split)
            w = (JsonlWriter(path) if self.fmt == "jsonl"
                 else ParquetWriter(path, self._schema, batch_rows=self._batch_rows))
            self.writers[split] = w
        w.write(row)

    def close(self) -> dict[str, Path]:
        """Finish every file; the paths written, by split."""
        for w in self.writers.values():
            w.close()
        return {s: w.path for s, w in self.writers.items()}

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()

    def __enter__(self) -> SplitWriters:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is not None:
            self.abort()
