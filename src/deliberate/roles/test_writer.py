"""The test writer (CodeT): asks a model for ``assert`` lines that test a function.

Models write tests in many shapes: a fenced block of asserts, asserts between
prose, numbered lists, an assert whose expression runs onto the next lines (CodeT's
recorded CodeGen samples write ``assert`` and then the expression indented below),
doctest pairs (``>>> f(1)`` then ``2``), and a last assert cut off by the token
limit. :func:`parse_tests` keeps every complete assert that calls the function, in
order and without duplicates, written canonically (``ast.unparse``, the assert's
message dropped) so that the same test from two samples is one test.

There is no repair request: a test set with no usable assert is an ordinary outcome
of sampling, recorded as an empty set, and the strategy works with the others.
"""

from __future__ import annotations

import ast
import re
import warnings
from dataclasses import dataclass

from deliberate.models.base import ChatResponse, Message
from deliberate.roles.roles import RoleBase, node_tags
from deliberate.tasks.task import Task

__all__ = ["TestWriter", "parse_tests"]

_FENCE = re.compile(r"```[ \t]*[\w+-]*[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_START = re.compile(r"^\s*(?:\d+[.):]\s+|[-*]\s+)?(assert\b.*)$")
_DOCTEST = re.compile(r"^\s*>>>\s?(.*)$")
_MAX_LINES = 12


def _parse_assert(text: str) -> ast.Assert | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            return None
    if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert):
        return tree.body[0]
    return None


def _calls(node: ast.AST, name: str | None) -> bool:
    if name is None:
        return any(isinstance(n, ast.Call) for n in ast.walk(node))
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
               for n in ast.walk(node))


def _canonical(node: ast.Assert) -> str:
    return ast.unparse(ast.Assert(test=node.test, msg=None))


def _chunks(lines: list[str]) -> list[str]:
    """Each ``assert`` with the lines that continue it (indented, or inside brackets)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        m = _START.match(lines[i])
        if not m:
            doc = _DOCTEST.match(lines[i])
            if doc and i + 1 < len(lines) and lines[i + 1].strip() and not _DOCTEST.match(
                    lines[i + 1]) and not _START.match(lines[i + 1]):
                out.append(f"assert {doc.group(1).strip()} == {lines[i + 1].strip()}")
                i += 2
                continue
            i += 1
            continue
        parts = [m.group(1)]
        j = i + 1
        while (j < len(lines) and len(parts) < _MAX_LINES and lines[j].strip()
               and not _START.match(lines[j]) and not _DOCTEST.match(lines[j])
               and (lines[j][:1] in (" ", "\t", ")", "]", "}") or _open(" ".join(parts)))):
            parts.append(lines[j])
            j += 1
        out.append("\n".join(parts))
        i = j
    return out


def _open(text: str) -> bool:
    """Whether brackets are left open (so the next line continues the statement)."""
    depth = 0
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
    return depth > 0


def parse_tests(text: str, entry_point: str | None = None) -> list[str]:
    """The complete asserts in ``text`` that call ``entry_point``, canonical and unique."""
    blocks = _FENCE.findall(text)
    body = "\n".join(blocks) if blocks and any("assert" in b for b in blocks) else text
    seen: set[str] = set()
    tests: list[str] = []
    for chunk in _chunks(body.splitlines()):
        node = None
        for form in (chunk, " ".join(p.strip() for p in chunk.splitlines())):
            node = _parse_assert(form)
            if node is not None:
                break
        if node is None:
            # a cut-off last line, or prose after the expression: try its first line
            node = _parse_assert(chunk.splitlines()[0])
        if node is None or not _calls(node.test, entry_point):
            continue
        canon = _canonical(node)
        if canon not in seen:
            seen.add(canon)
            tests.append(canon)
    return tests


@dataclass(frozen=True, slots=True)
class TestWriter(RoleBase):
    """Writes sets of ``assert`` tests for a code task (CodeT's test generator)."""

    __test__ = False  # not a pytest class, whatever its name says

    max_tests: int = 5

    def messages(self, task: Task) -> tuple[Message, ...]:
        ctx = {"task": task, "max_tests": self.max_tests}
        return self.chat("test_writer", **ctx)

    async def write_tests(self, task: Task, n: int, *, offset: int = 0,
                          node_id: str | None = None) -> ChatResponse:
        """``n`` test sets in one request (samples ``offset .. offset + n - 1``)."""
        tags = node_tags("test_writer", node_id)
        return await self.model.complete(
            self.request(self.messages(task), n=n, offset=offset, tags=tags))

    def parse(self, task: Task, text: str) -> list[str]:
        return parse_tests(text, task.entry_point)
