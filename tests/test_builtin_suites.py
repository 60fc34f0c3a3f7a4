"""The built-in suites are ground truth, so their ground truth is checked here.

Arithmetic steps are re-computed, Python references are run against their tests in a
subprocess (never in the test process), and Solidity findings are checked against the
lines they point at.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from fractions import Fraction
from importlib.resources import files
from pathlib import Path

import pytest

from deliberate.tasks import Task, builtin_suites, load_suite
from deliberate.tasks.task import FINDING_CATEGORIES
from deliberate.verifiers.answer import answers_match, extract_answer

ARITHMETIC = load_suite("arithmetic")
PYTHON = load_suite("python")
SOLIDITY = load_suite("solidity")

_STEP_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([-+*/])\s*(\d+(?:\.\d+)?)\s*=\s*(\d+(?:\.\d+)?)")
_OPS = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}


def test_builtin_suites_are_listed_and_packaged() -> None:
    assert set(builtin_suites()) == {"arithmetic", "python", "solidity", "evidence"}
    assert all(builtin_suites().values())
    package = files("deliberate.tasks.builtin")
    for name in builtin_suites():
        assert package.joinpath(f"{name}.jsonl").is_file()
    assert (len(ARITHMETIC), len(PYTHON), len(SOLIDITY)) == (30, 30, 6)
    assert len(load_suite("evidence")) == 20


# --------------------------------------------------------------------------- arithmetic


def test_arithmetic_shape() -> None:
    assert [t.id for t in ARITHMETIC] == [f"arith-{i:02d}" for i in range(1, 31)]
    for task in ARITHMETIC:
        assert task.kind == "math"
        assert task.answer is not None
        assert task.solution is not None
        assert re.fullmatch(r"-?\d+(\.\d+)?", task.answer), task.id
        if Fraction(task.answer).denominator == 1:
            assert "." not in task.answer, f"{task.id}: integer answers are written as integers"
        assert task.solution.isascii()


@pytest.mark.parametrize("task", ARITHMETIC.tasks, ids=lambda t: t.id)
def test_arithmetic_steps_are_correct(task: Task) -> None:
    assert task.solution is not None
    lines = task.solution.split("\n")
    steps, last = lines[:-1], lines[-1]
    assert last == f"Answer: {task.answer}"
    assert 2 <= len(steps) <= 5, f"{task.id}: {len(steps)} steps"
    result = None
    for step in steps:
        found = _STEP_RE.findall(step)
        assert found, f"{task.id}: no 'a op b = c' in {step!r}"
        for a, op, b, c in found:
            value = _OPS[op](Fraction(a), Fraction(b))
            assert value == Fraction(c), f"{task.id}: {a} {op} {b} is {value}, not {c}"
            result = c
    assert result is not None
    assert Fraction(result) == Fraction(task.answer or "nan")
    assert extract_answer(task.solution) == task.answer
    assert answers_match(extract_answer(task.solution), task.answer)


def test_arithmetic_difficulty_follows_steps() -> None:
    by_steps: dict[int, list[float]] = {}
    for task in ARITHMETIC:
        assert "difficulty" in task.metadata
        assert 0.0 <= task.difficulty <= 1.0
        n = len((task.solution or "").split("\n")) - 1
        by_steps.setdefault(n, []).append(task.difficulty)
    assert min(min(v) for v in by_steps.values()) <= 0.15
    assert max(max(v) for v in by_steps.values()) >= 0.85
    ordered = [by_steps[n] for n in sorted(by_steps)]
    assert len(ordered) == 4, "every step count from 2 to 5 is represented"
    for easier, harder in itertools.pairwise(ordered):
        assert max(easier) < min(harder), "more steps never means easier"


# --------------------------------------------------------------------------- python


def _run(program: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run untrusted-by-principle code in a fresh, isolated interpreter."""
    return subprocess.run(
        [sys.executable, "-I", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )


_DOCTEST = """
import doctest as _doctest
_found = _doctest.DocTestFinder().find({name}, globs=dict(globals()))
_result = _doctest.DocTestRunner(verbose=False).run(_found[0])
assert _result.attempted >= 1 and _result.failed == 0, _result
"""


def test_python_shape() -> None:
    assert [t.id for t in PYTHON] == [f"py-{i:02d}" for i in range(1, 31)]
    names = set()
    for task in PYTHON:
        assert task.kind == "code"
        assert task.entry_point
        assert task.solution
        assert task.tests
        names.add(task.entry_point)
        assert task.prompt.startswith(f"def {task.entry_point}(")
        assert re.match(r"def \w+\(.*\) -> .+:\n    r?\"\"\"", task.prompt), task.id
        assert ">>> " in task.prompt, f"{task.id}: the docstring shows an example"
        assert task.prompt.endswith('"""\n')
        assert task.solution.startswith(task.prompt)
        assert task.tests.count("assert ") >= 5, task.id
        assert task.entry_point in task.tests
        assert 0.0 < task.difficulty < 1.0
    assert len(names) == 30
    difficulties = [t.difficulty for t in PYTHON]
    assert min(difficulties) <= 0.15
    assert max(difficulties) >= 0.85


@pytest.mark.parametrize("task", PYTHON.tasks, ids=lambda t: t.id)
def test_python_reference_passes_and_stub_fails(task: Task, tmp_path: Path) -> None:
    assert task.solution
    assert task.tests
    assert task.entry_point
    good = _run(
        task.solution + "\n" + task.tests + _DOCTEST.format(name=task.entry_point), tmp_path
    )
    assert good.returncode == 0, f"{task.id} reference fails:\n{good.stderr}"

    stub = _run(task.prompt + "    return None\n\n" + task.tests, tmp_path)
    assert stub.returncode != 0, f"{task.id}: tests accept a body that returns None"
    assert "AssertionError" in stub.stderr


# --------------------------------------------------------------------------- solidity

SMARTBUGS = set(FINDING_CATEGORIES)

# What a line flagged with each category must contain.
_CONSTRUCT = {
    "reentrancy": re.compile(r"\.call\{value:|\.call\.value\("),
    "unchecked_low_level_calls": re.compile(r"^\s*[\w.\[\]()]+\.(send|call)\b"),
    "access_control": re.compile(r"tx\.origin|selfdestruct\(|suicide\(|\bowner\s*=\s*\w"),
    "arithmetic": re.compile(r"[\w\])]\s*[-+*]=?\s*[\w(]"),
    "bad_randomness": re.compile(r"blockhash|block\.difficulty|block\.prevrandao|block\.timestamp"),
    "time_manipulation": re.compile(r"block\.timestamp|\bnow\b"),
}

_GIVEAWAYS = re.compile(
    r"vulnerab|reentr|overflow|underflow|exploit|attack|unsafe|insecure|\bbug|<yes>|todo|fixme",
    re.IGNORECASE,
)


def _enclosing_function(lines: list[str], line: int) -> str | None:
    for text in reversed(lines[:line]):
        m = re.match(r"\s*function\s+(\w+)\s*\(", text)
        if m:
            return m.group(1)
    return None


def test_solidity_shape() -> None:
    assert [t.id for t in SOLIDITY] == [f"sol-{i:02d}" for i in range(1, 7)]
    categories: set[str] = set()
    for task in SOLIDITY:
        assert task.kind == "findings"
        assert "pragma solidity" in task.prompt
        assert 15 <= len(task.prompt.splitlines()) <= 40
        findings = task.metadata["findings"]
        assert 1 <= len(findings) <= 2
        categories |= {f["category"] for f in findings}
        assert 0.0 < task.difficulty < 1.0
    assert categories <= SMARTBUGS
    # The flaws the suite promises to cover.
    joined = "\n".join(t.prompt for t in SOLIDITY)
    for construct in ("tx.origin", "selfdestruct(", ".send(", "call{value:", "block.timestamp"):
        assert construct in joined
    assert {"reentrancy", "arithmetic", "time_manipulation"} <= categories


@pytest.mark.parametrize("task", SOLIDITY.tasks, ids=lambda t: t.id)
def test_solidity_findings_point_at_the_flaw(task: Task) -> None:
    lines = task.prompt.split("\n")
    for finding in task.metadata["findings"]:
        category = finding["category"]
        assert finding["lines"], f"{task.id}: a finding names at least one line"
        for number in finding["lines"]:
            assert 1 <= number <= len(lines)
            text = lines[number - 1]
            assert _CONSTRUCT[category].search(text), f"{task.id}:{number} {text!r} {category}"
            assert _enclosing_function(lines, number) == finding["function"]
        if category == "unchecked_low_level_calls":
            assert not any("require(" in lines[n - 1] for n in finding["lines"])
        if category == "arithmetic":
            m = re.search(r"pragma solidity \^?0\.(\d+)", task.prompt)
            assert m, "no pragma"
            assert int(m.group(1)) < 8, "overflow needs a compiler before 0.8"


@pytest.mark.parametrize("task", SOLIDITY.tasks, ids=lambda t: t.id)
def test_solidity_source_gives_nothing_away(task: Task) -> None:
    assert not _GIVEAWAYS.search(task.prompt)
    for line in task.prompt.splitlines():
        if "//" in line or "/*" in line:
            assert line.startswith("// SPDX-License-Identifier:"), line
