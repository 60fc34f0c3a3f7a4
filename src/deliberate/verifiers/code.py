"""Code execution: run a candidate program against tests in the sandbox, test by test.

Three shapes of tests are understood, and may be combined on one task:

- HumanEval: ``task.tests`` defines ``def check(candidate)`` full of asserts and calls
  it. Each top-level statement of ``check`` that asserts becomes one test (together
  with the set-up statements just before it), run with ``candidate`` bound to the
  entry point; the rest of the test module (``METADATA``, imports) runs first.
- MBPP: ``task.tests`` is a list of module-level ``assert`` lines; each is one test.
- plus-style input/output pairs: ``task.metadata["io_pairs"]`` = ``[{"input": [args],
  "output": value}, ...]``; the entry point is called on a copy of the inputs and the
  result compared with ``output`` (numbers within ``atol`` when the task gives one,
  lists and tuples alike).

Every test runs separately inside one sandboxed process, with its own time limit,
and reports pass/fail with the error a critic or refiner can act on: the assert
(with the value the candidate returned when the assert is ``x == y``), or the
exception type, message and the line where it was raised. The verdict is read from
the program's own process: the sandbox contains whatever a candidate does, but a
candidate written to forge its own report (reading the harness's frames for the
report key) is not prevented; see docs/sandbox.md.
"""

from __future__ import annotations

import ast
import json
import marshal
import re
import secrets
import textwrap
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from deliberate.tasks.task import Task
from deliberate.verifiers.base import VerifierResult, parse_answer
from deliberate.verifiers.sandbox import ExecResult, Sandbox, SandboxError, SandboxLimits

__all__ = ["CodeExecution", "TestOutcome", "TestReport", "build_program", "split_tests"]

# The program the sandbox runs: it reads the spec (marshal) from stdin, loads the
# candidate, runs each test and reports one line per event (a Python literal) on the
# real stdout, prefixed by a key the candidate's own output never carries. It imports
# only what is built in or preloaded: every execution pays for its imports.
_HARNESS = r'''
import _signal as signal, io, marshal, os, sys

_SOURCES = {}

class _TestTimeout(BaseException):
    pass

def _on_alarm(signum, frame):
    raise _TestTimeout()

def _register(name, source):
    _SOURCES[name] = source.splitlines()

def _line(name, number):
    lines = _SOURCES.get(name, ())
    return lines[number - 1] if 0 < number <= len(lines) else ""

def _label(filename):
    if filename == "<candidate>":
        return "the program"
    if filename.startswith("<test"):
        return "the test"
    return filename

def _describe(exc):
    if isinstance(exc, _TestTimeout):
        return "TimeoutError: the test did not finish in time"
    if isinstance(exc, SyntaxError) and exc.lineno:
        text = (exc.text or "").strip()
        return f"SyntaxError: {exc.msg} (line {exc.lineno}" + (f": {text})" if text else ")")
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    where = ""
    if tb is not None:
        name = tb.tb_frame.f_code.co_filename
        line = _line(name, tb.tb_lineno).strip()
        where = f" (line {tb.tb_lineno} of {_label(name)}" + (f": {line})" if line else ")")
    msg = str(exc)
    return f"{type(exc).__name__}" + (f": {msg}" if msg else "") + where

def _short(value, limit=300):
    try:
        text = repr(value)
    except BaseException as exc:
        text = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[:limit] + "..."

def _close(got, want, atol):
    import math
    if isinstance(want, bool) or isinstance(got, bool):
        return got == want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        if isinstance(want, float) and math.isnan(want):
            return isinstance(got, float) and math.isnan(got)
        if atol:
            return abs(got - want) <= atol + 1e-7 * abs(want)
        return got == want
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        return len(got) == len(want) and all(_close(g, w, atol) for g, w in zip(got, want))
    if isinstance(want, dict) and isinstance(got, dict):
        return got.keys() == want.keys() and all(_close(got[k], want[k], atol) for k in want)
    return got == want

def _run(test, i, fn, tns):
    if test["kind"] == "io":
        import copy
        got = fn(*copy.deepcopy(test["input"]))
        if not _close(got, test["output"], test.get("atol") or 0):
            shown = _short(tuple(test["input"]))[1:-1].rstrip(",")
            return (f"wrong output for input ({shown}): got {_short(got)}, "
                    f"expected {_short(test['output'])}")
        return None
    name = f"<test {i}>"
    _register(name, test["source"])
    if test["kind"] == "eq":
        if test["head"]:
            exec(compile(test["head"], name, "exec"), tns)
        left = eval(compile("(" + test["left"] + ")", name, "eval"), tns)
        right = eval(compile("(" + test["right"] + ")", name, "eval"), tns)
        if not left == right:
            return f"AssertionError: {test['line']} -- got {_short(left)}, expected {_short(right)}"
        return None
    exec(compile(test["source"], name, "exec"), tns)
    return None

def _main():
    spec = marshal.loads(sys.stdin.buffer.read())
    sys.stdin = io.StringIO("")
    key = spec["key"].encode()
    channel = os.dup(1)

    def emit(obj):
        os.write(channel, key + repr(obj).encode() + b"\n")

    sys.stdout = sys.stderr
    signal.signal(signal.SIGALRM, _on_alarm)
    limit = float(spec["per_test_timeout"])
    ns = {"__name__": "__candidate__", "__builtins__": __builtins__}
    source = spec["candidate"]
    _register("<candidate>", source)
    try:
        signal.setitimer(signal.ITIMER_REAL, limit)
        exec(compile(source, "<candidate>", "exec"), ns)
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit({"load": _describe(exc)})
        return
    entry = spec.get("entry_point")
    fn = ns.get(entry) if entry else None
    if entry and not callable(fn):
        emit({"load": f"the program defines no function {entry!r}"})
        return
    tns = dict(ns)
    if entry and spec.get("bind"):
        tns[spec["bind"]] = fn
    emit({"load": None})
    setup = spec.get("setup") or ""
    if setup.strip():
        _register("<test setup>", setup)
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            exec(compile(setup, "<test setup>", "exec"), tns)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            emit({"setup": _describe(exc)})
            return
    for i, test in enumerate(spec["tests"]):
        timed_out = False
        try:
            signal.setitimer(signal.ITIMER_REAL, limit)
            error = _run(test, i, fn, tns)
            signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            timed_out = isinstance(exc, _TestTimeout)
            error = _describe(exc)
        emit({"test": i, "error": error})
        if timed_out and spec.get("stop_on_timeout"):
            emit({"stopped": i})
            return
    emit({"done": True})

_main()
sys.stdout.flush()
sys.stderr.flush()
'''


@dataclass(frozen=True, slots=True)
class TestOutcome:
    """One test: what it checks (its source, or the call for an input/output pair),
    whether it passed, and the error text when not."""

    __test__ = False  # not a pytest class

    name: str
    passed: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class TestReport:
    """Per-test results of one program, and how its process ended.

    ``load_error`` is set when the program itself could not run (syntax error,
    exception at import, no entry point): then every test failed.
    """

    __test__ = False  # not a pytest class

    outcomes: tuple[TestOutcome, ...]
    load_error: str | None = None
    execution: ExecResult | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def n(self) -> int:
        return len(self.outcomes)

    @property
    def passed(self) -> int:
        return sum(o.passed for o in self.outcomes)

    @property
    def all_passed(self) -> bool:
        return self.n > 0 and self.passed == self.n

    @property
    def passed_mask(self) -> tuple[bool, ...]:
        return tuple(o.passed for o in self.outcomes)

    def details(self, max_failures: int = 8, max_chars: int = 4000) -> str:
        """What a critic or refiner sees: the count, then each failure with its error."""
        lines = [f"{self.passed} of {self.n} tests passed."]
        if self.load_error:
            lines.append(f"The program does not run: {self.load_error}")
        lines.extend(self.notes)
        failures = [(i, o) for i, o in enumerate(self.outcomes) if not o.passed]
        if not self.load_error:
            for i, o in failures[:max_failures]:
                code = [ln for ln in o.name.strip().splitlines() if ln.strip()]
                if len(code) <= 1:
                    lines.append(f"FAIL test {i + 1}: {_clip(o.name, 200)}")
                else:
                    lines.append(f"FAIL test {i + 1}:")
                    lines += [f"    {_clip(ln, 200)}" for ln in code[:6]]
                    if len(code) > 6:
                        lines.append("    ...")
                if o.error:
                    lines.append(f"  -> {_clip(o.error, 600)}")
            if len(failures) > max_failures:
                lines.append(f"... and {len(failures) - max_failures} more failing tests.")
        text = "\n".join(lines)
        return text if len(text) <= max_chars else text[: max_chars - 4] + " ..."


def _clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- tests


def _parse(source: str) -> ast.Module | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return ast.parse(source)
        except (SyntaxError, ValueError):
            return None


def _compiles(source: str) -> bool:
    """Parses and compiles (``return`` outside a function only fails the latter)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            compile(source, "<candidate>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            return False
    return True


def _segment(source: str, node: ast.stmt) -> str:
    text = ast.get_source_segment(source, node, padded=True)
    if text is None:
        return ast.unparse(node)
    text = textwrap.dedent(text)
    return text if _parse(text) is not None else ast.unparse(node)


def _asserts(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(node))


def _trivial(node: ast.stmt) -> bool:
    """``assert True`` and the like: HumanEval's debugging lines, not tests."""
    return (isinstance(node, ast.Assert) and isinstance(node.test, ast.Constant)
            and bool(node.test.value))


def _units(source: str, body: Sequence[ast.stmt]) -> list[str]:
    """Each statement that asserts, with the set-up statements just before it."""
    units: list[str] = []
    pending: list[str] = []
    for stmt in body:
        text = _segment(source, stmt)
        if _asserts(stmt):
            if _trivial(stmt) and not pending:
                continue
            units.append("\n".join([*pending, text]))
            pending = []
        else:
            pending.append(text)
    if pending and units:
        units[-1] = "\n".join([units[-1], *pending])
    return units


@dataclass(frozen=True, slots=True)
class SplitTests:
    """Test code cut into separately run tests."""

    setup: str
    units: tuple[str, ...]
    bind: str | None = None  # the name the entry point is bound to (``candidate``)


def split_tests(tests: str) -> SplitTests:
    """Cut HumanEval ``check`` functions and MBPP assert lists into single tests.

    Test code that does not parse, or has no ``assert`` at all, is one test.
    """
    tree = _parse(tests)
    if tree is None:
        return SplitTests("", (tests,))
    check = next((s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "check"
                  and len(s.args.args) == 1), None)
    if check is not None:
        setup = [
            _segment(tests, s) for s in tree.body
            if s is not check and not (
                isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
                and isinstance(s.value.func, ast.Name) and s.value.func.id == "check")
        ]
        units = _units(tests, check.body)
        if units:
            return SplitTests("\n".join(setup), tuple(units), check.args.args[0].arg)
        return SplitTests("", (tests,))
    units = _units(tests, tree.body)
    return SplitTests("", tuple(units) if units else (tests,))


# --------------------------------------------------------------------------- programs


def _defines(tree: ast.Module, name: str) -> bool:
    for s in tree.body:
        if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and s.name == name:
            return True
        if isinstance(s, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in s.targets
        ):
            return True
    return False


def build_program(task: Task, program: str) -> str:
    """The program to run: the candidate, completed from the task's prompt.

    A reply holding only a function body (no top-level function of its own) gets the
    prompt's signature in front of it;
    the prompt's other top-level statements (imports, helper functions such as
    HumanEval's ``poly``) go before the candidate, which may redefine them.
    """
    entry = task.entry_point
    tree = _parse(program)
    body_only = tree is None or not any(
        isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) for s in tree.body)
    if entry and body_only and task.prompt:
        head = task.prompt if task.prompt.endswith("\n") else task.prompt + "\n"
        body = program if program[:1] in (" ", "\t") else textwrap.indent(program, "    ")
        for joined in (head + body, task.prompt + program):
            whole = _parse(joined)
            if whole is not None and _defines(whole, entry) and _compiles(joined):
                return joined
    prompt_tree = _parse(task.prompt) if task.kind == "code" and task.prompt else None
    if prompt_tree is None or tree is None:
        return program
    prelude = [
        _segment(task.prompt, s) for s in prompt_tree.body
        if not (isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef) and s.name == entry)
        and not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
    ]
    if not prelude:
        return program
    return "\n".join(prelude) + "\n\n" + program


def _expr(source: str, node: ast.expr) -> str:
    text = ast.get_source_segment(source, node)
    if text is None or _parse("(" + text + ")") is None:
        return ast.unparse(node)
    return text


def runnable_test(source: str) -> dict[str, Any]:
    """How the harness runs one test: an ``assert x == y`` last statement is split
    (so a failure can show the value the candidate returned), anything else runs as is."""
    tree = _parse(source)
    last = tree.body[-1] if tree is not None and tree.body else None
    if (tree is not None and isinstance(last, ast.Assert) and isinstance(last.test, ast.Compare)
            and len(last.test.ops) == 1 and isinstance(last.test.ops[0], ast.Eq)):
        head = "\n".join(_segment(source, s) for s in tree.body[:-1])
        line = ast.get_source_segment(source, last) or ast.unparse(last)
        return {"kind": "eq", "source": source, "head": head,
                "left": _expr(source, last.test.left),
                "right": _expr(source, last.test.comparators[0]),
                "line": " ".join(x.strip() for x in line.splitlines())}
    return {"kind": "code", "source": source}


def _io_pairs(task: Task) -> list[dict[str, Any]]:
    pairs = task.metadata.get("io_pairs") or []
    atol = task.metadata.get("atol") or 0
    out = []
    for p in pairs if isinstance(pairs, list) else []:
        if isinstance(p, dict) and "input" in p and "output" in p:
            args = p["input"] if isinstance(p["input"], list) else [p["input"]]
            out.append({"kind": "io", "input": args, "output": p["output"],
                        "atol": p.get("atol", atol)})
    return out


def _io_name(entry: str, pair: dict[str, Any]) -> str:
    args = ", ".join(json.dumps(a) for a in pair["input"])
    return f"{entry}({args}) == {json.dumps(pair['output'])}"


_ENTRY_RE = re.compile(r"[A-Za-z_]\w*")


class CodeExecution:
    """Verifier for code tasks: the share of the task's tests the candidate passes.

    ``passed`` is all tests passing; ``score`` is passed / total; ``details`` lists
    each failing test with its error; ``metrics`` = ``{"tests": n, "passed": k}``.
    A failure of the sandbox itself gives an undecided result (``passed`` None).
    """

    name = "code_exec"

    def __init__(self, sandbox: Sandbox | None = None, timeout_s: float = 10.0,
                 per_test_timeout_s: float | None = None, stop_on_timeout: bool = True) -> None:
        self.sandbox = sandbox or Sandbox(SandboxLimits(timeout_s=timeout_s))
        self.timeout_s = timeout_s
        self.per_test_timeout_s = per_test_timeout_s or min(timeout_s, 3.0)
        self.stop_on_timeout = stop_on_timeout

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        program = answer if answer is not None else parse_answer(task, text)
        if not task.tests and not _io_pairs(task):
            return VerifierResult(None, None, "task has no tests")
        if not program:
            return VerifierResult(False, 0.0, "no program found in the candidate",
                                  {"tests": 0.0, "passed": 0.0})
        try:
            report = await self.run_tests(task, program)
        except SandboxError as exc:
            return VerifierResult(None, None, f"sandbox error: {exc}")
        if report.n == 0:
            return VerifierResult(None, None, "task has no runnable tests")
        return VerifierResult(report.all_passed, report.passed / report.n, report.details(),
                              {"tests": float(report.n), "passed": float(report.passed)})

    async def run_tests(self, task: Task, program: str,
                        tests: Sequence[str] | None = None) -> TestReport:
        """Run ``program`` against ``tests`` (assert statements), or the task's own tests.

        One sandboxed process runs every test separately; the report has one outcome
        per test in order.
        """
        if tests is None:
            split = split_tests(task.tests) if task.tests else SplitTests("", ())
            specs: list[dict[str, Any]] = [runnable_test(u) for u in split.units]
            names = [u for u in split.units]
            pairs = _io_pairs(task)
            entry = task.entry_point or ""
            specs += pairs
            names += [_io_name(entry, p) for p in pairs]
            setup, bind = split.setup, split.bind
        else:
            specs = [runnable_test(t) for t in tests]
            names = list(tests)
            setup, bind = "", None
        if not specs:
            return TestReport(())
        entry_point = task.entry_point if task.entry_point and _ENTRY_RE.fullmatch(
            task.entry_point) else None
        key = "@@deliberate-" + secrets.token_hex(16) + "@@"
        spec = {
            "key": key,
            "candidate": build_program(task, program),
            "entry_point": entry_point,
            "bind": bind,
            "setup": setup,
            "tests": specs,
            "per_test_timeout": self.per_test_timeout_s,
            "stop_on_timeout": self.stop_on_timeout,
        }
        result = await self.sandbox.run_python(_HARNESS, stdin=marshal.dumps(spec),
                                               timeout_s=self.timeout_s)
        return _read_report(result, key, names)


def _read_report(result: ExecResult, key: str, names: Sequence[str]) -> TestReport:
    events: list[dict[str, Any]] = []
    for line in result.stdout.splitlines():
        if line.startswith(key):
            try:
                obj = ast.literal_eval(line[len(key):])
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(obj, dict):
                events.append(obj)
    load = next((e for e in events if "load" in e), None)
    if load is not None and load["load"]:
        err = str(load["load"])
        return TestReport(tuple(TestOutcome(n, False, err) for n in names), err, result)
    setup = next((e for e in events if "setup" in e), None)
    if setup is not None:
        err = f"test set-up failed: {setup['setup']}"
        return TestReport(tuple(TestOutcome(n, False, err) for n in names), None, result,
                          (err,))
    errors: dict[int, str | None] = {}
    stopped: int | None = None
    for e in events:
        if "test" in e and isinstance(e["test"], int) and 0 <= e["test"] < len(names):
            errors[e["test"]] = e.get("error")
        if "stopped" in e and isinstance(e["stopped"], int):
            stopped = e["stopped"]
    notes: list[str] = []
    outcomes = []
    died = _death(result)
    first_missing = True
    for i, name in enumerate(names):
        if i in errors:
            outcomes.append(TestOutcome(name, errors[i] is None, errors[i]))
        elif stopped is not None:
            outcomes.append(TestOutcome(name, False,
                                        f"not run: test {stopped + 1} did not finish in time"))
        elif load is None:
            outcomes.append(TestOutcome(name, False, f"the program {died}"))
        elif first_missing:
            outcomes.append(TestOutcome(name, False, f"the program {died} during this test"))
            first_missing = False
        else:
            outcomes.append(TestOutcome(name, False, f"not run: the program {died} earlier"))
    load_error = None
    if load is None:
        load_error = f"the program {died} before any test ran"
    elif stopped is not None and stopped + 1 < len(names):
        notes.append(f"Test {stopped + 1} did not finish in time; the tests after it were "
                     "not run.")
    elif not first_missing:
        notes.append(f"The program {died}.")
    return TestReport(tuple(outcomes), load_error, result, tuple(notes))


def _death(result: ExecResult) -> str:
    """How the process ended, with the last line of its error output when it crashed."""
    text = result.describe()
    if result.status in ("error", "oom", "killed"):
        tail = [ln.strip() for ln in result.stderr.strip().splitlines() if ln.strip()]
        if tail:
            text += f" ({_clip(tail[-1], 200)})"
    return text
