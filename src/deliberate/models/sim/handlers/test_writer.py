"""The sim as a test writer (CodeT): ``assert`` lines for a code task, some of them wrong.

Matches the ``<write_tests>`` block of the test writer's template. The asserts come
from the task's real tests (``task.tests``): every single-line ``assert`` that calls
the function (HumanEval's ``candidate`` renamed to the entry point), from which each
sample picks a few in random order. Each picked assert is right with probability

    P(test right) = 0.5 + 0.5 * P(correct)

where ``P(correct)`` is the sim's chance of writing a right program for the task
(so a stronger sim writes better tests, and harder tasks get more wrong ones), and
otherwise carries a wrong expected value. The wrong value of a given assert is the
same in every sample (drawn once per task, assert and seed), as a model's mistaken
belief about one input recurs across its samples: wrong tests can then agree with
each other, as they do in real CodeT runs.
"""

from __future__ import annotations

import ast
import hashlib
import random
import warnings
from dataclasses import dataclass

from deliberate.models.sim.core import HandlerContext
from deliberate.tasks.task import Task

TAG = "<write_tests>"


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.new, node.ctx) if node.id == self.old else node


def task_asserts(task: Task) -> list[ast.Assert]:
    """The task's single-statement asserts that call the entry point, message dropped."""
    entry = task.entry_point
    if not task.tests or not entry:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(task.tests)
        except SyntaxError:
            return []
    body: list[ast.stmt] = list(tree.body)
    bound = entry
    for stmt in tree.body:
        if isinstance(stmt, ast.FunctionDef) and stmt.name == "check" and stmt.args.args:
            body += stmt.body
            bound = stmt.args.args[0].arg
    out: list[ast.Assert] = []
    for stmt in body:
        if not isinstance(stmt, ast.Assert):
            continue
        node = ast.Assert(test=stmt.test, msg=None)
        if bound != entry:
            node = _Rename(bound, entry).visit(node)
        free = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Load)}
        calls = any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                    and n.func.id == entry for n in ast.walk(node))
        # only self-contained asserts: the function, literals and builtins
        if calls and free <= {entry, "True", "False", "None", "abs", "len", "sorted", "set",
                              "list", "tuple", "round"}:
            out.append(ast.fix_missing_locations(node))
    return out


def _wrong_value(value: object, rng: random.Random) -> object:
    """A plausible but wrong expected value."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice((1, -1, 2))
    if isinstance(value, float):
        return round(value + rng.choice((0.5, -1.0, 1.0)), 6)
    if isinstance(value, str):
        if not value:
            return " "
        return value[:-1] if len(value) > 1 and rng.random() < 0.5 else value + value[-1]
    if isinstance(value, list | tuple):
        if not value:
            return type(value)([0])
        items = list(value)
        changed = items[:-1] if rng.random() < 0.5 else [*items, items[-1]]
        return tuple(changed) if isinstance(value, tuple) else changed
    if value is None:
        return 0
    return None


def wrong_assert(node: ast.Assert, rng: random.Random) -> str:
    """The assert with a wrong expected value (or, failing that, negated)."""
    test = node.test
    if (isinstance(test, ast.Compare) and len(test.ops) == 1
            and isinstance(test.ops[0], ast.Eq)):
        try:
            value = ast.literal_eval(test.comparators[0])
        except ValueError:
            value = ...
        if value is not ...:
            wrong = _wrong_value(value, rng)
            if wrong != value:
                return f"assert {ast.unparse(test.left)} == {wrong!r}"
    return f"assert not ({ast.unparse(test)})"


@dataclass(frozen=True, slots=True)
class TestWriterHandler:
    __test__ = False

    name: str = "test_writer"

    def matches(self, text: str) -> bool:
        return TAG in text

    def respond(self, ctx: HandlerContext) -> str:
        task = ctx.task
        pool = task_asserts(task) if task is not None and task.kind == "code" else []
        if task is None or not pool:
            return ("I cannot write meaningful tests for this without knowing what the "
                    "function must return.")
        rng = ctx.draws.rng("tests")
        order = list(range(len(pool)))
        rng.shuffle(order)
        k = min(len(pool), rng.randint(3, 6))
        p_right = 0.5 + 0.5 * ctx.sim.p_correct(task)
        lines = []
        for j in order[:k]:
            if ctx.draws.uniform(f"test-{j}") < p_right:
                lines.append(ast.unparse(pool[j]))
            else:
                lines.append(wrong_assert(pool[j], _rng("wrong-test", ctx.sim.params.seed,
                                                        task.id, j)))
        intro = rng.choice(("", "Here are the tests:\n\n", "Tests:\n\n"))
        return intro + "```python\n" + "\n".join(lines) + "\n```"


HANDLER = TestWriterHandler()
