"""``python:`` verifiers named by file path (``path/to/file.py:function``) beside dotted paths."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from deliberate import Task
from deliberate.errors import ConfigError, UnknownNameError
from deliberate.verifiers.base import VerifierResult
from deliberate.verifiers.custom import load_object
from deliberate.verifiers.registry import build_verifier

TASK = Task(id="t", prompt="Say hello.", answer="hello")

CHECKS = '''
from dataclasses import dataclass

from deliberate.verifiers.base import VerifierResult

MARK = "{mark}"

def says_hello(task, text, answer):
    return "hello" in text

async def async_says_hello(task, text, answer):
    return "hello" in text

def mark(task, text, answer):
    return VerifierResult(True, 1.0, MARK)

@dataclass
class Exact:
    name: str = "exact_file"

    async def verify(self, task, text, answer):
        ok = text.strip() == task.answer
        return VerifierResult(ok, float(ok), "")
'''


def say_hello(task: Task, text: str, answer: str | None) -> bool:
    """Named by dotted path in the test below."""
    return "hello" in text


def write(path: Path, mark: str = "first") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(CHECKS.format(mark=mark)))
    return path


async def test_relative_and_absolute_file_paths(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    f = write(tmp_path / "checks" / "my_checks.py")
    monkeypatch.chdir(tmp_path)
    for spec in ("python:checks/my_checks.py:says_hello",
                 "python:checks/my_checks.py:async_says_hello",
                 f"python:{f}:says_hello"):
        v = build_verifier(spec)
        assert v.name == spec
        assert (await v.verify(TASK, "well hello there", None)).passed is True
        assert (await v.verify(TASK, "goodbye", None)).passed is False
    cls = build_verifier("python:checks/my_checks.py:Exact")
    assert cls.name == "exact_file"
    assert (await cls.verify(TASK, " hello ", None)).passed is True
    res = await build_verifier("python:checks/my_checks.py:mark").verify(TASK, "x", None)
    assert res == VerifierResult(True, 1.0, "first")


async def test_dotted_paths_still_work() -> None:
    v = build_verifier("python:tests.test_custom_verifier_paths:say_hello")
    assert (await v.verify(TASK, "hello", None)).passed is True
    assert load_object("deliberate.verifiers.base:VerifierResult", label="x",
                       form="f") is VerifierResult


def test_same_file_is_one_module_and_same_stem_elsewhere_is_another(tmp_path: Path) -> None:
    a = write(tmp_path / "a" / "checks.py", "from a")
    b = write(tmp_path / "b" / "checks.py", "from b")
    mark_a = load_object(f"{a}:MARK", label="x", form="f")
    mark_b = load_object(f"{b}:MARK", label="x", form="f")
    assert (mark_a, mark_b) == ("from a", "from b")
    fn = load_object(f"{a}:says_hello", label="x", form="f")
    assert load_object(f"{a}:says_hello", label="x", form="f") is fn


@pytest.mark.parametrize(("spec", "error", "words"), [
    ("python:checks/nope.py:f", UnknownNameError, "no file 'checks/nope.py'"),
    ("python:checks/my_checks.py:nope", UnknownNameError,
     "checks/my_checks.py has no attribute 'nope'"),
    ("python:checks/my_checks.py", ConfigError, "python:path/to/file.py:function"),
    ("python:checks/my_checks.py:MARK", ConfigError, "is not callable"),
    ("python:checks/broken.py:f", ConfigError,
     "importing checks/broken.py failed: ZeroDivisionError"),
])
def test_file_path_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       spec: str, error: type[Exception], words: str) -> None:
    write(tmp_path / "checks" / "my_checks.py")
    (tmp_path / "checks" / "broken.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as info:
        build_verifier(spec)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_file_that_failed_to_import_can_be_fixed_and_loaded(tmp_path: Path) -> None:
    f = tmp_path / "later.py"
    f.write_text("raise RuntimeError('not yet')\n")
    with pytest.raises(ConfigError, match="RuntimeError: not yet"):
        load_object(f"{f}:VALUE", label="x", form="f")
    f.write_text("VALUE = 3\n")
    assert load_object(f"{f}:VALUE", label="x", form="f") == 3
