"""Code execution verifier: tests split and run one by one in the sandbox, per-test
errors a critic can act on, and done-when 3 on the real HumanEval tests."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from deliberate.models.sim.code_mutate import mutate_code
from deliberate.tasks import load_humaneval, load_suite
from deliberate.tasks.task import Task
from deliberate.verifiers.code import CodeExecution, build_program, split_tests
from deliberate.verifiers.sandbox import Sandbox, SandboxLimits
from tests.conftest import shared_data

HUMANEVAL_STYLE = '''
METADATA = {'author': 'x'}


def check(candidate):
    import math
    assert candidate(1, 2) == 3
    assert True, "debugging line"
    x = candidate(2, 2)
    assert x == 4
    for a in range(3):
        assert candidate(a, 0) == a
    assert math.isclose(candidate(0.1, 0.2), 0.3)

check(add)
'''

ADD = Task(id="add", kind="code", entry_point="add", tests=HUMANEVAL_STYLE,
           prompt='def add(a, b):\n    """Return a + b."""\n')


@pytest.fixture(scope="module")
def verifier() -> CodeExecution:
    return CodeExecution(Sandbox(SandboxLimits(timeout_s=5.0)), timeout_s=5.0,
                         per_test_timeout_s=1.0)


# --------------------------------------------------------------------------- splitting


def test_humaneval_check_is_split_into_one_test_per_asserting_statement() -> None:
    split = split_tests(HUMANEVAL_STYLE)
    assert split.bind == "candidate"
    assert "METADATA" in split.setup and "check(add)" not in split.setup
    assert len(split.units) == 4  # `assert True` is not a test; set-up joins its assert
    assert split.units[0].startswith("import math\nassert candidate(1, 2) == 3")
    assert split.units[1] == "x = candidate(2, 2)\nassert x == 4"
    assert split.units[2].startswith("for a in range(3):")


def test_mbpp_asserts_are_one_test_each_and_odd_tests_stay_whole() -> None:
    split = split_tests("import math\nassert f(1) == 2\nassert f(2) == 3\nprint('done')\n")
    assert split.bind is None and split.setup == ""
    assert split.units == ("import math\nassert f(1) == 2", "assert f(2) == 3\nprint('done')")
    assert split_tests("def broken(:\n").units == ("def broken(:\n",)
    assert split_tests("f(1)\n").units == ("f(1)\n",)


def test_build_program_completes_bodies_and_keeps_prompt_helpers() -> None:
    task = Task(id="t", kind="code", entry_point="g",
                prompt="import math\n\ndef helper(x):\n    return x * 2\n\n\n"
                       "def g(x):\n    \"\"\"Twice x, floored.\"\"\"\n")
    body = build_program(task, "    return math.floor(helper(x))\n")
    assert body.startswith(task.prompt) and body.endswith("return math.floor(helper(x))\n")
    unindented = build_program(task, "return math.floor(helper(x))")
    assert "    return math.floor(helper(x))" in unindented
    whole = build_program(task, "def g(x):\n    return math.floor(helper(x))\n")
    assert whole.startswith("import math") and "def helper" in whole
    assert whole.rstrip().endswith("return math.floor(helper(x))")


# --------------------------------------------------------------------------- verdicts


async def test_a_right_program_passes_every_test(verifier: CodeExecution) -> None:
    res = await verifier.verify(ADD, "```python\ndef add(a, b):\n    return a + b\n```", None)
    assert res.passed is True and res.score == 1.0
    assert res.metrics == {"tests": 4.0, "passed": 4.0}
    assert res.details.startswith("4 of 4 tests passed")


async def test_failures_are_reported_per_test_with_what_went_wrong(
        verifier: CodeExecution) -> None:
    wrong = "def add(a, b):\n    if (a, b) == (2, 2):\n        return 5\n    return a + b\n"
    res = await verifier.verify(ADD, wrong, None)
    assert res.passed is False and res.score == 0.75
    assert res.metrics == {"tests": 4.0, "passed": 3.0}
    assert "FAIL test 2:\n    x = candidate(2, 2)\n    assert x == 4\n" in res.details
    assert "got 5, expected 4" in res.details
    crashing = "def add(a, b):\n    return a / b + a\n"
    res = await verifier.verify(ADD, crashing, None)
    assert res.metrics["passed"] == 0.0
    assert "ZeroDivisionError: division by zero" in res.details
    assert "return a / b + a" in res.details  # the line where it was raised


async def test_programs_that_do_not_run(verifier: CodeExecution) -> None:
    res = await verifier.verify(ADD, "def add(a, b:\n    return a + b\n", None)
    assert res.passed is False and res.score == 0.0
    assert "does not run: SyntaxError" in res.details
    res = await verifier.verify(ADD, "def plus(a, b):\n    return a + b\n", None)
    assert "defines no function 'add'" in res.details
    res = await verifier.verify(ADD, "import nosuchmodule\ndef add(a, b):\n    return 0\n", None)
    assert "ModuleNotFoundError" in res.details
    res = await verifier.verify(ADD, "", None)
    assert res.passed is False and "no program" in res.details
    nothing = Task(id="n", kind="code", prompt="def f(): ...", entry_point="f")
    assert (await verifier.verify(nothing, "def f(): return 1", None)).passed is None


async def test_a_hanging_test_is_cut_and_the_rest_reported(verifier: CodeExecution) -> None:
    task = Task(id="h", kind="code", entry_point="f", prompt="def f(x): ...",
                tests="assert f(1) == 1\nassert f(0) == 0\nassert f(2) == 2\n")
    hangs_on_zero = "def f(x):\n    while x == 0:\n        pass\n    return x\n"
    res = await verifier.verify(task, hangs_on_zero, None)
    assert res.metrics == {"tests": 3.0, "passed": 1.0}
    assert "did not finish in time" in res.details
    keep_going = CodeExecution(verifier.sandbox, timeout_s=5.0, per_test_timeout_s=0.5,
                               stop_on_timeout=False)
    res = await keep_going.verify(task, hangs_on_zero, None)
    assert res.metrics == {"tests": 3.0, "passed": 2.0}


async def test_input_output_pairs_with_tolerance(verifier: CodeExecution) -> None:
    task = Task(id="io", kind="code", entry_point="halves", prompt="def halves(xs): ...",
                metadata={"atol": 1e-6, "io_pairs": [
                    {"input": [[1, 3]], "output": [0.5, 1.5]},
                    {"input": [[]], "output": []},
                    {"input": [[1]], "output": [0.5000001]},
                ]})
    good = "def halves(xs):\n    return tuple(x / 2 for x in xs)\n"  # tuples equal lists
    res = await verifier.verify(task, good, None)
    assert res.passed is True and res.metrics == {"tests": 3.0, "passed": 3.0}
    bad = "def halves(xs):\n    return [x // 2 for x in xs]\n"
    res = await verifier.verify(task, bad, None)
    assert res.metrics["passed"] == 1.0
    assert "wrong output for input ([1, 3]): got [0, 1], expected [0.5, 1.5]" in res.details
    mixed = Task(id="m", kind="code", entry_point="halves", prompt="def halves(xs): ...",
                 tests="assert halves([2]) == [1.0]\n",
                 metadata={"io_pairs": [{"input": [[4]], "output": [2.0]}]})
    res = await verifier.verify(mixed, good, None)
    assert res.metrics == {"tests": 2.0, "passed": 1.0}  # the assert compares a tuple


async def test_generated_tests_run_against_a_program(verifier: CodeExecution) -> None:
    report = await verifier.run_tests(ADD, "def add(a, b):\n    return a + b\n",
                                      ["assert add(1, 1) == 2", "assert add(1, 1) == 3",
                                       "assert nosuch(1) == 1"])
    assert report.passed_mask == (True, False, False)
    assert "NameError" in (report.outcomes[2].error or "")


def test_default_construction_and_the_registry() -> None:
    from deliberate.verifiers.registry import auto_verifier, build_verifier

    v = CodeExecution()
    assert v.name == "code_exec" and v.timeout_s == 10.0
    assert isinstance(build_verifier("code_exec"), CodeExecution)
    assert isinstance(auto_verifier(ADD), CodeExecution)


# --------------------------------------------------------------------------- done when 3


async def test_builtin_python_suite_reference_solutions_pass() -> None:
    suite = load_suite("python")
    v = CodeExecution()
    results = await asyncio.gather(*(v.verify(t, t.solution or "", None) for t in suite))
    assert len(results) == 30
    failed = [(t.id, r.details) for t, r in zip(suite, results, strict=True) if not r.passed]
    assert failed == []


async def test_done_when_3_humaneval_canonical_pass_and_broken_variants_fail() -> None:
    """All 164 canonical solutions pass; every stubbed body and nearly every one-slip
    mutant fails (the survivors are mutants HumanEval's tests cannot tell apart)."""
    suite = load_humaneval(shared_data("code/HumanEval.jsonl.gz"))
    assert len(suite) == 164
    v = CodeExecution()  # the verifier strategies and the engine use
    stubs = [t.prompt + "    return None\n" for t in suite]
    mutants = []
    for i, t in enumerate(suite):
        m = mutate_code(t.solution or "", random.Random(i))
        assert m is not None
        mutants.append(m.source)
    programs = [*(t.solution or "" for t in suite), *stubs, *mutants]
    tasks = [*suite, *suite, *suite]
    start = time.monotonic()
    results = await asyncio.gather(*(v.verify(t, p, None) for t, p in zip(tasks, programs,
                                                                           strict=True)))
    elapsed = time.monotonic() - start
    canonical, stubbed, mutated = results[:164], results[164:328], results[328:]
    failing = [(t.id, r.details) for t, r in zip(suite, canonical, strict=True) if not r.passed]
    assert failing == []
    assert all(r.passed is False for r in stubbed)
    survivors = [t.id for t, r in zip(suite, mutated, strict=True) if r.passed]
    assert all(r.passed is not None for r in mutated)
    assert len(survivors) <= 0.12 * 164, survivors
    print(f"\nHumanEval: 164/164 canonical pass; 164/164 stubs fail; "
          f"{164 - len(survivors)}/164 mutants fail; {elapsed:.1f} s")
