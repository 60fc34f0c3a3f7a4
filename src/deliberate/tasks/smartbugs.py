"""SmartBugs-curated: 143 Solidity contracts with line-level vulnerability labels.

The dataset's own annotations give the answer away: every vulnerable statement is
preceded by a ``// <yes> <report> CATEGORY`` comment, and each file's header names
its source (whose URL often spells the flaw), author and ``@vulnerable_at_lines``.
The loader **blanks** those lines (replaces them with empty lines) rather than deleting
them, so the file keeps its line count and every labelled line number in
``vulnerabilities.json`` still points at the vulnerable statement in the prompt.

Each contract becomes one ``findings`` task:

- ``id``: its path under ``dataset/`` without ``.sol`` (``reentrancy/simple_dao``);
- ``prompt``: the cleaned source;
- ``metadata["findings"]``: one entry per labelled vulnerability, ``{"category",
  "lines", "function"}``, where ``function`` (present when derivable) is the function,
  modifier or constructor whose body holds the first labelled line;
- ``metadata["difficulty"]``: from the contract's size (see :func:`difficulty_of`).

GPTLens-style preprocessing for auditors (comments stripped, whitespace collapsed) is
:func:`strip_comments`; it keeps line breaks, so line numbers survive it too.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deliberate.errors import DataError
from deliberate.tasks.task import FINDING_CATEGORIES, Suite, Task

__all__ = [
    "SourceFunction",
    "difficulty_of",
    "enclosing_function",
    "load_smartbugs",
    "solidity_functions",
    "strip_comments",
    "strip_labels",
]

_LABEL = re.compile(r"<yes>\s*<report>", re.IGNORECASE)
_HEADER_TAG = re.compile(r"^\s*\*?\s*@(source|author|vulnerable_at_lines)\b", re.IGNORECASE)

# Comments and string literals in C-like source; strings are matched so that a "//"
# inside one is not taken for a comment.
_TOKENS = re.compile(
    r'//[^\n]*|/\*.*?(?:\*/|\Z)|"(?:\\.|[^"\\\n])*"|\'(?:\\.|[^\'\\\n])*\'', re.DOTALL
)
_SPACES = re.compile(r"[ \t\f\v]+")


def strip_labels(source: str) -> tuple[str, list[int]]:
    """The source with answer-revealing lines blanked, and the 1-based numbers blanked.

    Blanked: every line holding a ``<yes> <report>`` marker, and the header lines
    ``@source``, ``@author`` and ``@vulnerable_at_lines``. Line count is unchanged.
    """
    lines = source.split("\n")
    blanked: list[int] = []
    for i, line in enumerate(lines):
        if _LABEL.search(line) or _HEADER_TAG.match(line):
            lines[i] = ""
            blanked.append(i + 1)
    return "\n".join(lines), blanked


def strip_comments(source: str) -> str:
    """GPTLens's preprocessing: comments removed, whitespace collapsed, lines kept.

    Runs of spaces and tabs become one space and each line is trimmed, but line breaks
    stay (a block comment leaves as many empty lines as it spanned), so a line number
    in the result is the same line in the original.
    """

    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        if text.startswith("//"):
            return ""
        if text.startswith("/*"):
            return "\n" * text.count("\n")
        return text

    out = _TOKENS.sub(repl, source)
    return "\n".join(_SPACES.sub(" ", line).strip() for line in out.split("\n"))


# --------------------------------------------------------------------------- functions


@dataclass(frozen=True, slots=True)
class SourceFunction:
    """A function-like block of a contract: name and 1-based first/last line."""

    name: str
    start: int
    end: int


_HEADER = re.compile(r"\b(function|modifier|constructor|fallback|receive)\b(\s*[A-Za-z_]\w*)?")


def _code_only(source: str) -> str:
    """The source with comments and string contents blanked, same length and lines."""

    def repl(m: re.Match[str]) -> str:
        text = m.group(0)
        if text.startswith(("//", "/*")):
            return re.sub(r"[^\n]", " ", text)
        return text[0] + re.sub(r"[^\n]", " ", text[1:-1]) + text[-1] if len(text) > 1 else text

    return _TOKENS.sub(repl, source)


def solidity_functions(source: str) -> list[SourceFunction]:
    """Every function, modifier, constructor and fallback with a body, in source order.

    A brace scanner over the source with comments and strings blanked: a header
    keyword starts a pending function, its first ``{`` opens the body (a ``;`` first
    means a declaration without body) and the matching ``}`` closes it. An unnamed
    ``function (…)`` is the old-style fallback, named ``fallback``.
    """
    code = _code_only(source)
    found: list[SourceFunction] = []
    depth = 0
    pending: tuple[str, int] | None = None  # (name, header line)
    open_at: list[tuple[str, int, int]] = []  # (name, header line, body depth)
    line = 1
    i = 0
    n = len(code)
    while i < n:
        ch = code[i]
        if ch == "\n":
            line += 1
        elif ch == "{":
            depth += 1
            if pending is not None:
                open_at.append((pending[0], pending[1], depth))
                pending = None
        elif ch == "}":
            if open_at and open_at[-1][2] == depth:
                name, start, _ = open_at.pop()
                found.append(SourceFunction(name, start, line))
            depth = max(0, depth - 1)
        elif ch == ";":
            pending = None
        elif pending is None and (ch.isalpha()) and (i == 0 or not (code[i - 1].isalnum()
                                                                   or code[i - 1] == "_")):
            m = _HEADER.match(code, i)
            if m:
                keyword, ident = m.group(1), (m.group(2) or "").strip()
                if keyword == "function":
                    name = ident or "fallback"
                elif keyword == "modifier":
                    name = ident or "modifier"
                else:
                    name = keyword
                pending = (name, line)
                line += m.group(0).count("\n")
                i = m.end()
                continue
        i += 1
    found.sort(key=lambda f: (f.start, f.end))
    return found


def enclosing_function(functions: list[SourceFunction], line: int) -> str | None:
    """The innermost function whose lines (header to closing brace) contain ``line``."""
    best: SourceFunction | None = None
    for f in functions:
        if f.start <= line <= f.end and (best is None or f.start >= best.start):
            best = f
    return best.name if best else None


# --------------------------------------------------------------------------- loading


def difficulty_of(source: str, n_findings: int) -> float:
    """Difficulty in [0.25, 0.9] for the ``sim`` model: longer contracts hide flaws better.

    ``0.25 + 0.0015 × code lines + 0.05 × (findings − 1)``, capped at 0.9, where code
    lines are non-blank lines once comments are stripped (20 lines → 0.28, 100 → 0.40,
    300 → 0.70).
    """
    code_lines = sum(1 for ln in strip_comments(source).split("\n") if ln)
    return round(min(0.9, 0.25 + 0.0015 * code_lines + 0.05 * max(0, n_findings - 1)), 3)


def _root(path: Path) -> tuple[Path, Path]:
    """(dataset root, vulnerabilities.json) from the root folder or the JSON file."""
    if path.is_dir():
        index = path / "vulnerabilities.json"
        root = path
    else:
        index, root = path, path.parent
    if not index.is_file():
        raise DataError(f"SmartBugs-curated: {index} not found (give the folder that holds "
                        "vulnerabilities.json and dataset/)")
    return root, index


def _entries(index: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        doc = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {index}: {exc}") from None
    if not isinstance(doc, list):
        raise DataError(f"{index}: expected a JSON list of contracts")
    for k, entry in enumerate(doc, 1):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise DataError(f"{index}, item {k}: expected an object with a 'path'")
        yield f"{index.name}, item {k}", entry


def _task_id(rel: str) -> str:
    p = rel.replace(os.sep, "/")
    if p.startswith("dataset/"):
        p = p[len("dataset/"):]
    return p[:-4] if p.endswith(".sol") else p


def _findings(entry: dict[str, Any], functions: list[SourceFunction], n_lines: int,
              where: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in entry.get("vulnerabilities") or []:
        category = str(v.get("category", "")).strip().lower()
        lines = v.get("lines")
        if category not in FINDING_CATEGORIES or not isinstance(lines, list) or not lines:
            raise DataError(f"{where}: bad vulnerability {v!r}")
        nums = sorted({int(x) for x in lines})
        if nums[0] < 1 or nums[-1] > n_lines:
            raise DataError(f"{where}: line {nums} outside the file ({n_lines} lines)")
        finding: dict[str, Any] = {"category": category, "lines": nums}
        fn = next((f for f in (enclosing_function(functions, x) for x in nums) if f), None)
        if fn is not None:
            finding["function"] = fn
        out.append(finding)
    return out


def load_smartbugs(path: str | os.PathLike[str], *, name: str = "smartbugs") -> Suite:
    """One ``findings`` task per contract listed in ``vulnerabilities.json``, by path order."""
    root, index = _root(Path(path))
    tasks: list[tuple[str, Task]] = []
    for where, entry in _entries(index):
        file = root / entry["path"]
        try:
            raw = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{where}: cannot read {file}: {exc}") from None
        raw = raw.replace("\r\n", "\n")
        prompt, _ = strip_labels(raw)
        functions = solidity_functions(prompt)
        findings = _findings(entry, functions, prompt.count("\n") + 1, where)
        metadata: dict[str, Any] = {
            "findings": findings,
            "difficulty": difficulty_of(prompt, len(findings)),
            "contract": entry.get("name") or file.name,
            "path": entry["path"],
        }
        if entry.get("source"):
            metadata["source"] = entry["source"]
        if entry.get("pragma"):
            metadata["pragma"] = entry["pragma"]
        tasks.append((where, Task(id=_task_id(entry["path"]), prompt=prompt, kind="findings",
                                  metadata=metadata)))
    tasks.sort(key=lambda wt: wt[1].id)
    seen: set[str] = set()
    for where, t in tasks:
        if t.id in seen:
            raise DataError(f"{where}: duplicate contract path {t.id!r}")
        seen.add(t.id)
    return Suite.of(name, [t for _, t in tasks],
                    "SmartBugs-curated: Solidity contracts with labelled vulnerabilities")
