"""Read suites from files.

Two kinds of loader live here:

- generic ones (:func:`load_jsonl`, :func:`load_json`, :func:`load_parquet`) that turn any
  table of rows into tasks through a :class:`FieldMapping`, so a user's own data needs no
  code, only the names of its columns;
- format-specific ones for the public benchmarks we test against (:func:`load_humaneval`,
  :func:`load_mbpp_plus`, :func:`load_gsm8k`), which know how each benchmark spells its
  prompt, reference and tests.

Every loader reads ``.gz`` files transparently and reports a bad row as one
:class:`~deliberate.errors.DataError` naming the file, the 1-based line (or item/row) and
what is wrong, so a user can fix the data without a traceback.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
import re
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast, get_args

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from deliberate.errors import ConfigError, DataError, MissingDependencyError
from deliberate.tasks.task import Suite, Task, TaskKind

__all__ = [
    "FieldMapping",
    "load_gsm8k",
    "load_humaneval",
    "load_json",
    "load_jsonl",
    "load_mbpp_plus",
    "load_parquet",
]

PathLike = str | os.PathLike[str]

_KINDS: frozenset[str] = frozenset(get_args(TaskKind))
_SUFFIXES = (".jsonl", ".json", ".parquet")


class FieldMapping(BaseModel):
    """Which source column feeds each :class:`Task` field.

    A value is a column name or a dotted path into nested objects (``"meta.question"``;
    a numeric segment indexes a list). ``None`` means "never read this field". Columns
    not consumed by the mapping are kept in ``metadata``, and a column named
    ``metadata`` holding an object is merged into it, so files written in the shape of
    :class:`Task` itself load with the default mapping.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str | None = "id"
    prompt: str = "prompt"
    answer: str | None = "answer"
    solution: str | None = "solution"
    tests: str | None = "tests"
    entry_point: str | None = "entry_point"
    system: str | None = "system"
    kind: str | None = "kind"

    @field_validator("*")
    @classmethod
    def _non_empty_path(cls, value: str | None) -> str | None:
        if value is not None and (not value or any(not part for part in value.split("."))):
            raise ValueError(f"{value!r} is not a column name or dotted path")
        return value


# --------------------------------------------------------------------------- reading


def _read_text(path: Path) -> str:
    """The file's text, gunzipped when it is gzip data, with read errors as DataError."""
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(f"{path.name}, line {line}: not valid UTF-8 text") from None


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"cannot read suite file {path}: No such file") from None
    except IsADirectoryError:
        raise DataError(f"cannot read suite file {path}: it is a directory") from None
    except OSError as exc:
        raise DataError(f"cannot read suite file {path}: {exc.strerror or exc}") from None
    if data[:2] == b"\x1f\x8b" or path.suffix.lower() == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"cannot read suite file {path}: not valid gzip data ({exc})") from None
    return data


def _jsonl_rows(text: str, source: str) -> Iterator[tuple[str, Any]]:
    """(location, row) for each non-blank line; a line that is not JSON is a DataError."""
    # split on "\n" only: str.splitlines would also split on U+2028, which JSON allows
    # unescaped inside strings.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{source}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        yield where, row


def _json_rows(text: str, source: str, key: str | None) -> Iterator[tuple[str, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{source}, line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
        ) from None
    if isinstance(doc, dict):
        if key is None:
            lists = [k for k, v in doc.items() if isinstance(v, list)]
            if len(lists) != 1:
                found = ", ".join(repr(k) for k in lists) or "none"
                raise DataError(
                    f"{source}: the top level is an object; name the key holding the list "
                    f"of rows (keys holding lists: {found})"
                )
            key = lists[0]
        if key not in doc:
            raise DataError(f"{source}: no key {key!r} at the top level")
        doc = doc[key]
    elif key is not None:
        raise DataError(f"{source}: the top level is not an object, so key {key!r} cannot apply")
    if not isinstance(doc, list):
        raise DataError(f"{source}: expected a list of rows, got {_type_name(doc)}")
    for number, row in enumerate(doc, 1):
        yield f"{source}, item {number}", row


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _default_name(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".gz"):
        name = name[:-3]
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


# --------------------------------------------------------------------------- generic rows

_MISSING: Any = object()


def _lookup(row: Mapping[str, Any], path: str) -> Any:
    """The value at ``path`` (an exact key first, then a dotted path), or _MISSING."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _as_text(value: Any, field: str, column: str, where: str) -> str | None:
    """A field's value as text: numbers are written out, a list of strings is joined."""
    if value is _MISSING or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise DataError(
        f"{where}: {field} (column {column!r}) must be text or a number, got {_type_name(value)}"
    )


def _coerce_mapping(mapping: FieldMapping | Mapping[str, str | None] | None) -> FieldMapping:
    if mapping is None:
        return FieldMapping()
    if isinstance(mapping, FieldMapping):
        return mapping
    try:
        return FieldMapping.model_validate(dict(mapping))
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(x) for x in first["loc"]) or "mapping"
        raise ConfigError(f"field mapping: {loc}: {first['msg']}") from None


def _check_kind(kind: str) -> TaskKind:
    if kind not in _KINDS:
        raise ConfigError(
            f"unknown task kind {kind!r}; expected one of {', '.join(sorted(_KINDS))}"
        )
    return cast(TaskKind, kind)


def _row_to_task(
    row: Any, index: int, where: str, mapping: FieldMapping, kind: TaskKind, suite: str
) -> Task:
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {_type_name(row)}")
    prompt = _lookup(row, mapping.prompt)
    if prompt is _MISSING or prompt is None:
        raise DataError(f"{where}: missing prompt (column {mapping.prompt!r})")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(
            f"{where}: prompt (column {mapping.prompt!r}) must be non-empty text, "
            f"got {_type_name(prompt) if not isinstance(prompt, str) else 'empty text'}"
        )
    used = {mapping.prompt}
    texts: dict[str, str | None] = {}
    for field in ("id", "answer", "solution", "tests", "entry_point", "system", "kind"):
        column: str | None = getattr(mapping, field)
        if column is None:
            texts[field] = None
            continue
        used.add(column)
        texts[field] = _as_text(_lookup(row, column), field, column, where)
    task_kind = kind
    if texts["kind"] is not None:
        if texts["kind"] not in _KINDS:
            raise DataError(
                f"{where}: unknown kind {texts['kind']!r}; expected one of "
                f"{', '.join(sorted(_KINDS))}"
            )
        task_kind = cast(TaskKind, texts["kind"])
    metadata: dict[str, Any] = {k: v for k, v in row.items() if k not in used}
    nested = metadata.get("metadata")
    if isinstance(nested, dict):
        del metadata["metadata"]
        metadata.update(nested)
    return Task(
        id=texts["id"] or f"{suite}-{index}",
        prompt=prompt,
        kind=task_kind,
        answer=texts["answer"],
        solution=texts["solution"],
        tests=texts["tests"],
        entry_point=texts["entry_point"],
        system=texts["system"],
        metadata=metadata,
    )


def _collect(pairs: Iterable[tuple[str, Task]], name: str, description: str) -> Suite:
    """Build the suite, reporting a duplicate id where it occurs rather than later."""
    seen: dict[str, str] = {}
    tasks: list[Task] = []
    for where, task in pairs:
        if task.id in seen:
            raise DataError(f"{where}: duplicate task id {task.id!r} (first at {seen[task.id]})")
        seen[task.id] = where.rpartition(", ")[2]
        tasks.append(task)
    return Suite.of(name, tasks, description)


def _rows_to_suite(
    rows: Iterable[tuple[str, Any]],
    *,
    mapping: FieldMapping,
    kind: TaskKind,
    name: str,
    description: str,
) -> Suite:
    return _collect(
        (
            (where, _row_to_task(row, index, where, mapping, kind, name))
            for index, (where, row) in enumerate(rows)
        ),
        name,
        description,
    )


def load_jsonl(
    path: PathLike,
    mapping: FieldMapping | Mapping[str, str | None] | None = None,
    *,
    kind: str = "text",
    name: str | None = None,
    description: str = "",
) -> Suite:
    """A suite from a JSON Lines file, one task per non-blank line.

    ``kind`` applies to rows that do not name their own; a row without an id gets
    ``"<suite>-<row index>"`` (0-based, counting rows, not blank lines).
    """
    fields, default_kind = _coerce_mapping(mapping), _check_kind(kind)
    p = Path(path)
    suite = name or _default_name(p)
    rows = _jsonl_rows(_read_text(p), p.name)
    return _rows_to_suite(
        rows, mapping=fields, kind=default_kind, name=suite, description=description
    )


def load_json(
    path: PathLike,
    mapping: FieldMapping | Mapping[str, str | None] | None = None,
    *,
    kind: str = "text",
    name: str | None = None,
    key: str | None = None,
    description: str = "",
) -> Suite:
    """A suite from a JSON file: a list of rows, or an object with the list under ``key``.

    Without ``key``, an object's only list-valued entry is used.
    """
    fields, default_kind = _coerce_mapping(mapping), _check_kind(kind)
    p = Path(path)
    suite = name or _default_name(p)
    rows = _json_rows(_read_text(p), p.name, key)
    return _rows_to_suite(
        rows, mapping=fields, kind=default_kind, name=suite, description=description
    )


def load_parquet(
    path: PathLike,
    mapping: FieldMapping | Mapping[str, str | None] | None = None,
    *,
    kind: str = "text",
    name: str | None = None,
    description: str = "",
) -> Suite:
    """A suite from a Parquet file (needs the ``parquet`` extra, i.e. pyarrow)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependencyError("Parquet suites", "parquet", "pyarrow") from exc
    fields, default_kind = _coerce_mapping(mapping), _check_kind(kind)
    p = Path(path)
    data = _read_bytes(p)
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DataError(f"cannot read suite file {p}: not a valid Parquet file ({exc})") from None
    records: list[Any] = table.to_pylist()
    rows = ((f"{p.name}, row {i}", r) for i, r in enumerate(records, 1))
    suite = name or _default_name(p)
    return _rows_to_suite(
        rows, mapping=fields, kind=default_kind, name=suite, description=description
    )


# --------------------------------------------------------------------------- benchmarks


def _require(row: Any, where: str, fields: Iterable[str]) -> dict[str, str]:
    """The named text fields of a benchmark row; all problems are reported in one message."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected an object, got {_type_name(row)}")
    missing = [f for f in fields if f not in row or row[f] is None]
    if missing:
        raise DataError(f"{where}: missing {', '.join(repr(f) for f in missing)}")
    wrong = [f for f in fields if not isinstance(row[f], str)]
    if wrong:
        raise DataError(f"{where}: {', '.join(repr(f) for f in wrong)} must be text")
    return {f: row[f] for f in fields}


def load_humaneval(path: PathLike, *, name: str = "humaneval") -> Suite:
    """HumanEval (``task_id, prompt, canonical_solution, test, entry_point``).

    ``solution`` is prompt + canonical body, and ``tests`` ends by calling the
    benchmark's ``check`` on the entry point, so ``solution + tests`` runs as is.
    """
    p = Path(path)
    fields = ("task_id", "prompt", "canonical_solution", "test", "entry_point")

    def tasks() -> Iterator[tuple[str, Task]]:
        for where, row in _jsonl_rows(_read_text(p), p.name):
            r = _require(row, where, fields)
            task = Task(
                id=r["task_id"],
                prompt=r["prompt"],
                kind="code",
                solution=r["prompt"] + r["canonical_solution"],
                tests=r["test"] + f"\ncheck({r['entry_point']})\n",
                entry_point=r["entry_point"],
            )
            yield where, task

    return _collect(tasks(), name, "HumanEval: Python functions with hidden tests")


# MBPP asserts sometimes call modules they never import (Mbpp/120 uses math.isclose);
# importing them ahead of the asserts is harmless for every other task.
_MBPP_TEST_PRELUDE = "import math\n"
_DOCSTRING_QUOTES_RE = re.compile(r'^(?:"""|\'\'\')|(?:"""|\'\'\')$')


def _parse_python(source: str) -> ast.Module:
    """``ast.parse`` that tolerates what only warns (old-style escapes like ``"\\w"``)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return ast.parse(source)


def _mbpp_signature(source: str, entry_point: str, where: str) -> str:
    """The ``def`` line of the entry point, rebuilt from the canonical solution."""
    try:
        tree = _parse_python(source)
    except SyntaxError as exc:
        raise DataError(f"{where}: canonical_solution is not valid Python ({exc.msg})") from None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == entry_point:
            keyword = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
            returns = f" -> {ast.unparse(node.returns)}" if node.returns else ""
            return f"{keyword} {entry_point}({ast.unparse(node.args)}){returns}:"
    raise DataError(f"{where}: canonical_solution defines no function {entry_point!r}")


def _doctest_example(assertion: str, entry_point: str) -> str:
    """``assert f(x) == y`` as the doctest pair ``>>> f(x)`` / ``y``; others as ``>>> assert``."""
    try:
        node = _parse_python(assertion).body[0]
    except (SyntaxError, IndexError):
        return f">>> {assertion}"
    if (
        isinstance(node, ast.Assert)
        and isinstance(node.test, ast.Compare)
        and len(node.test.ops) == 1
        and isinstance(node.test.ops[0], ast.Eq)
        and isinstance(node.test.left, ast.Call)
        and isinstance(node.test.left.func, ast.Name)
        and node.test.left.func.id == entry_point
    ):
        call = ast.get_source_segment(assertion, node.test.left)
        expected = ast.get_source_segment(assertion, node.test.comparators[0])
        if call and expected:
            return f">>> {call.strip()}\n{expected.strip()}"
    return f">>> {assertion}"


def _mbpp_prompt(signature: str, description: str, example: str | None) -> str:
    """A HumanEval-shaped prompt: signature, then a docstring with the task and an example."""
    body = description.strip()
    if example:
        body += "\n\n" + example
    quote = "'''" if '"""' in body else '"""'
    prefix = "r" if "\\" in body else ""
    lines = body.split("\n")
    doc = "\n".join(("    " + line) if line.strip() else "" for line in lines[1:])
    doc = f"    {prefix}{quote}{lines[0]}" + (f"\n{doc}" if doc else "") + f"\n    {quote}\n"
    return f"{signature}\n{doc}"


def load_mbpp_plus(path: PathLike, *, name: str = "mbpp_plus", with_inputs: bool = False) -> Suite:
    """MBPP+ (evalplus release): the original asserts as ``tests``.

    MBPP's prompt is a sentence plus one assert and names no signature, so the prompt
    is rebuilt in HumanEval's shape: the entry point's ``def`` line taken from the
    canonical solution, and a docstring holding the sentence and the first assert of
    ``assertion`` as a doctest example. ``solution`` is the canonical program, and
    ``tests`` start with ``import math`` (see ``Mbpp/120``). ``metadata`` keeps ``atol``;
    ``with_inputs`` also keeps the base and plus inputs (large, and without outputs).
    """
    p = Path(path)
    fields = ("task_id", "prompt", "canonical_solution", "assertion", "entry_point")

    def tasks() -> Iterator[tuple[str, Task]]:
        for where, row in _jsonl_rows(_read_text(p), p.name):
            r = _require(row, where, fields)
            entry = r["entry_point"]
            text = _DOCSTRING_QUOTES_RE.sub("", r["prompt"].strip())
            description = "\n".join(
                line for line in text.split("\n") if not line.lstrip().startswith("assert ")
            )
            asserts = [ln.strip() for ln in r["assertion"].split("\n") if ln.startswith("assert")]
            example = _doctest_example(asserts[0], entry) if asserts else None
            signature = _mbpp_signature(r["canonical_solution"], entry, where)
            metadata: dict[str, Any] = {"atol": row.get("atol", 0)}
            if with_inputs:
                metadata["base_input"] = row.get("base_input")
                metadata["plus_input"] = row.get("plus_input")
            task = Task(
                id=r["task_id"],
                prompt=_mbpp_prompt(signature, description, example),
                kind="code",
                solution=r["canonical_solution"].lstrip("\n"),
                tests=_MBPP_TEST_PRELUDE + r["assertion"].lstrip("\n"),
                entry_point=entry,
                metadata=metadata,
            )
            yield where, task

    return _collect(tasks(), name, "MBPP+: Python functions with the original asserts")


_CALC_RE = re.compile(r"<<[^<>]*>>")
_HASH_LINE_RE = re.compile(r"^\s*####\s*(.*?)\s*$")
_A_LINE_RE = re.compile(r"^\s*A:\s*(.*?)\s*$")


def _gsm8k_solution(text: str, final: re.Pattern[str], where: str) -> tuple[str, str, int]:
    """(worked solution ending in 'Answer: N', N, number of steps) from a GSM8K answer."""
    from deliberate.verifiers.answer import normalise_number  # one normaliser for all answers

    lines = text.strip().split("\n")
    found = final.match(lines[-1]) if lines else None
    if found is None:
        raise DataError(f"{where}: no final-answer line ('{final.pattern}') at the end")
    answer = normalise_number(found.group(1))
    if answer is None:
        raise DataError(f"{where}: final answer {found.group(1)!r} is not a number")
    steps = [_CALC_RE.sub("", line).rstrip() for line in lines[:-1] if line.strip()]
    return "\n".join([*steps, f"Answer: {answer}"]), answer, len(steps)


def load_gsm8k(path: PathLike, *, name: str = "gsm8k") -> Suite:
    """GSM8K, either the original files or the recorded model solutions.

    - ``{question, answer}`` (the original train/test files): the answer follows
      ``#### ``; ids are ``gsm8k-<split>-<row index>`` where the split is ``train``
      unless the file name says ``test``.
    - ``{question, ground_truth, ...}`` (``gsm8k-model-solutions``): the answer follows
      ``A: ``; ids are ``gsm8k-test-<row index>``, the problem's position in the GSM8K
      test split (the file holds its problems in order), and the recorded model
      solutions stay in ``metadata`` under their column names.

    Row indexes are 0-based. ``solution`` drops the ``<<...>>`` calculator notes and
    ends ``Answer: N``; ``answer`` is the normalised number. ``metadata["difficulty"]``
    is a rough proxy, the number of reference steps (2 -> 0.25, +0.15 per step, max 0.9).
    """
    p = Path(path)
    split = "test" if "test" in p.name.lower() else "train"

    def tasks() -> Iterator[tuple[str, Task]]:
        for index, (where, row) in enumerate(_jsonl_rows(_read_text(p), p.name)):
            if isinstance(row, dict) and "ground_truth" in row:
                r = _require(row, where, ("question", "ground_truth"))
                text, final, task_id = r["ground_truth"], _A_LINE_RE, f"gsm8k-test-{index}"
            else:
                r = _require(row, where, ("question", "answer"))
                text, final, task_id = r["answer"], _HASH_LINE_RE, f"gsm8k-{split}-{index}"
            solution, answer, steps = _gsm8k_solution(text, final, where)
            metadata: dict[str, Any] = {
                k: v for k, v in row.items() if k not in ("question", "answer", "ground_truth")
            }
            metadata["steps"] = steps
            metadata["difficulty"] = round(min(0.9, 0.25 + 0.15 * max(0, steps - 2)), 2)
            task = Task(
                id=task_id,
                prompt=r["question"],
                kind="math",
                answer=answer,
                solution=solution,
                metadata=metadata,
            )
            yield where, task

    return _collect(tasks(), name, "GSM8K: grade-school math word problems")
