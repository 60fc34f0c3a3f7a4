"""Buggy variants of a reference program, and telling programs apart, by AST.

Mutants are the small slips models make: a flipped comparison, an off-by-one
constant, ``+`` for ``-``, ``and`` for ``or``, returning the wrong variable, a
dropped branch. The edit is spliced into the original text where it can be, so a
mutant keeps the reference's comments and layout and differs only where the bug
is (a tell-tale reformatting would let a strategy spot wrong answers by style).
"""

from __future__ import annotations

import ast
import copy
import difflib
import random
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

_COMPARE_FLIPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Div,
    ast.Div: ast.FloorDiv,
    ast.Mod: ast.FloorDiv,
    ast.Pow: ast.Mult,
}
_NAME_SWAPS: dict[str, str] = {
    "min": "max", "max": "min", "any": "all", "all": "any",
    "upper": "lower", "lower": "upper", "startswith": "endswith", "endswith": "startswith",
    "isupper": "islower", "islower": "isupper", "isdigit": "isalpha", "isalpha": "isdigit",
    "lstrip": "rstrip", "rstrip": "lstrip", "floor": "ceil", "ceil": "floor",
    "swapcase": "upper",
}  # fmt: skip
_UNWRAPPABLE = frozenset({"sorted", "set", "list", "tuple", "abs", "reversed", "int", "round"})


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


_Scope = ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _docstring(node: ast.AST) -> ast.Expr | None:
    """The docstring statement of a module, class or function, if it has one."""
    if isinstance(node, _Scope) and node.body:
        first = node.body[0]
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            return first
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if _docstring(node) is not None:
            assert isinstance(node, _Scope)
            node.body = node.body[1:] or [ast.Pass()]
    return tree


def _parse(source: str) -> ast.Module | None:
    """Parse as given, else dedented (a reply may indent its whole program)."""
    for text in (source, textwrap.dedent(source)):
        try:
            return ast.parse(text)
        except (SyntaxError, ValueError):
            continue
    return None


def normalised_dump(source: str) -> str | None:
    """The program's AST without docstrings (comments never reach the AST), or None."""
    tree = _parse(source)
    return None if tree is None else ast.dump(_strip_docstrings(tree))


def normalised_source(source: str) -> str | None:
    """The program re-rendered from its docstring-free AST: one canonical text per program."""
    tree = _parse(source)
    return None if tree is None else ast.unparse(_strip_docstrings(tree))


def same_program(candidate: str, reference: str, prompt: str | None = None) -> bool:
    """Whether a candidate is the reference up to docstrings, comments and layout.

    A candidate that is only a function body (HumanEval-style completion) is also
    tried after the prompt.
    """
    ref = normalised_dump(reference)
    if ref is None:
        return False
    if normalised_dump(candidate) == ref:
        return True
    if prompt is not None:
        return normalised_dump(prompt.rstrip("\n") + "\n" + candidate) == ref
    return False


@dataclass(frozen=True, slots=True)
class _Site:
    index: int
    """Position of the node in ``ast.walk`` order (the same in a deep copy)."""
    kind: str


def _function_nodes(tree: ast.Module) -> set[int]:
    """Walk indices of nodes inside function bodies, docstrings excluded."""
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        doc = _docstring(node)
        if doc is not None:
            docstrings.update(id(n) for n in ast.walk(doc))
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for stmt in node.body:
                inside.update(id(n) for n in ast.walk(stmt) if id(n) not in docstrings)
    return {i for i, n in enumerate(ast.walk(tree)) if id(n) in inside}


def _local_names(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    names = [a.arg for a in func.args.args + func.args.kwonlyargs + func.args.posonlyargs]
    for node in ast.walk(func):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.append(node.id)
    return list(dict.fromkeys(names))


def _enclosing_functions(tree: ast.Module) -> dict[int, ast.FunctionDef | ast.AsyncFunctionDef]:
    out: dict[int, ast.FunctionDef | ast.AsyncFunctionDef] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                out[id(sub)] = node  # BFS: inner functions come later and win
    return out


def _sites(tree: ast.Module) -> list[_Site]:
    inside = _function_nodes(tree)
    funcs = _enclosing_functions(tree)
    parents = _parents(tree)
    sites: list[_Site] = []
    for i, node in enumerate(ast.walk(tree)):
        if i not in inside:
            continue
        if isinstance(node, ast.Compare):
            sites.append(_Site(i, "flip_comparison"))
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            sites.append(_Site(i, "off_by_one"))
        elif isinstance(node, ast.BinOp | ast.AugAssign) and type(node.op) in _BINOP_SWAPS:
            sites.append(_Site(i, "swap_operator"))
        elif isinstance(node, ast.BoolOp):
            sites.append(_Site(i, "swap_and_or"))
        elif isinstance(node, ast.Return) and isinstance(node.value, ast.Name):
            func = funcs.get(id(node))
            if func is not None and len(_local_names(func)) > 1:
                sites.append(_Site(i, "return_wrong_variable"))
        elif isinstance(node, ast.If):
            sites.append(_Site(i, "drop_branch"))
            sites.append(_Site(i, "negate_condition"))
        elif isinstance(node, ast.IfExp):
            sites.append(_Site(i, "swap_branches"))
        elif isinstance(node, ast.comprehension) and node.ifs:
            sites.append(_Site(i, "drop_filter"))
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            if name in _NAME_SWAPS:
                sites.append(_Site(i, "swap_function"))
            if (
                isinstance(node.func, ast.Name)
                and name in _UNWRAPPABLE
                and len(node.args) == 1
                and not node.keywords
            ):
                sites.append(_Site(i, "unwrap_call"))
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and len(node.value) <= 1
            and isinstance(parents.get(id(node)), ast.Attribute)
        ):
            sites.append(_Site(i, "wrong_separator"))
    return sites


def _parents(tree: ast.AST) -> dict[int, ast.AST]:
    return {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


@dataclass(frozen=True, slots=True)
class _Edit:
    """What changed: the new node, and where its text goes in the original."""

    node: ast.AST
    at: int
    """Walk index, in the original tree, of the node whose text is replaced."""
    keep: list[ast.stmt] | None = None
    """For a dropped branch: the statements left in its place (empty: removed)."""


def _apply(tree: ast.Module, site: _Site, rng: random.Random) -> _Edit:
    """Mutate ``tree`` in place at ``site``."""
    walk = list(ast.walk(tree))
    index_of = {id(n): i for i, n in enumerate(walk)}
    node = walk[site.index]
    if site.kind == "flip_comparison":
        assert isinstance(node, ast.Compare)
        k = rng.randrange(len(node.ops))
        node.ops[k] = _COMPARE_FLIPS[type(node.ops[k])]()
        return _Edit(node, site.index)
    if site.kind == "off_by_one":
        assert isinstance(node, ast.Constant)
        assert isinstance(node.value, int)
        node.value = node.value + rng.choice((1, -1)) if node.value != 0 else 1
        return _Edit(node, site.index)
    if site.kind == "swap_operator":
        assert isinstance(node, ast.BinOp | ast.AugAssign)
        node.op = _BINOP_SWAPS[type(node.op)]()
        return _Edit(node, site.index)
    if site.kind == "swap_and_or":
        assert isinstance(node, ast.BoolOp)
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        return _Edit(node, site.index)
    if site.kind == "return_wrong_variable":
        assert isinstance(node, ast.Return)
        assert isinstance(node.value, ast.Name)
        func = _enclosing_functions(tree)[id(node)]
        others = [n for n in _local_names(func) if n != node.value.id]
        node.value = ast.Name(id=rng.choice(others), ctx=ast.Load())
        return _Edit(node, site.index)
    if site.kind == "swap_branches":
        assert isinstance(node, ast.IfExp)
        node.body, node.orelse = node.orelse, node.body
        return _Edit(node, site.index)
    if site.kind == "drop_filter":
        assert isinstance(node, ast.comprehension)
        node.ifs = node.ifs[1:]
        owner = _parents(tree)[id(node)]
        return _Edit(owner, index_of[id(owner)])
    if site.kind == "swap_function":
        assert isinstance(node, ast.Call)
        if isinstance(node.func, ast.Name):
            node.func = ast.Name(id=_NAME_SWAPS[node.func.id], ctx=ast.Load())
        else:
            assert isinstance(node.func, ast.Attribute)
            node.func.attr = _NAME_SWAPS[node.func.attr]
        return _Edit(node, site.index)
    if site.kind == "unwrap_call":
        assert isinstance(node, ast.Call)
        _replace_child(_parents(tree)[id(node)], node, node.args[0])
        return _Edit(node.args[0], site.index)
    if site.kind == "wrong_separator":
        assert isinstance(node, ast.Constant)
        assert isinstance(node.value, str)
        node.value = "" if node.value else " "
        return _Edit(node, site.index)
    assert isinstance(node, ast.If)
    if site.kind == "negate_condition":
        test = node.test
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            node.test = test.operand
        else:
            node.test = ast.UnaryOp(op=ast.Not(), operand=test)
        return _Edit(node.test, index_of[id(test)])
    # drop_branch: keep only the body, only the else part, or nothing.
    parent = _parents(tree)[id(node)]
    block = next(
        b
        for b in (getattr(parent, f, None) for f in ("body", "orelse", "finalbody"))
        if isinstance(b, list) and any(s is node for s in b)
    )
    at = next(i for i, s in enumerate(block) if s is node)
    if node.orelse:
        keep = list(node.body if rng.random() < 0.5 else node.orelse)
    elif len(block) > 1:
        keep = []
    else:
        keep = [ast.Pass()]
    block[at : at + 1] = keep
    return _Edit(node, site.index, keep)


def _replace_child(parent: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for field, value in ast.iter_fields(parent):
        if value is old:
            setattr(parent, field, new)
            return
        if isinstance(value, list):
            for i, item in enumerate(value):
                if item is old:
                    value[i] = new
                    return
    raise ValueError("child not found")


def _splice(source: str, node: ast.AST, replacement: str) -> str:
    """Replace ``node``'s text in ``source``, indenting continuation lines to match."""
    lines = source.splitlines(keepends=True)
    start_line = getattr(node, "lineno", None)
    end_line = getattr(node, "end_lineno", None)
    start_col = getattr(node, "col_offset", None)
    end_col = getattr(node, "end_col_offset", None)
    if start_line is None or end_line is None or start_col is None or end_col is None:
        raise ValueError("node has no position")
    offsets = [0]
    for ln in lines:
        offsets.append(offsets[-1] + len(ln))

    # col offsets are in UTF-8 bytes; convert within the line.
    def pos(line_no: int, col: int) -> int:
        line = lines[line_no - 1]
        return offsets[line_no - 1] + len(line.encode()[:col].decode(errors="ignore"))

    a, b = pos(start_line, start_col), pos(end_line, end_col)
    indent = " " * start_col
    text = replacement.replace("\n", "\n" + indent)
    return source[:a] + text + source[b:]


def _remove_statement(source: str, node: ast.stmt) -> str:
    lines = source.splitlines(keepends=True)
    end = node.end_lineno or node.lineno
    return "".join(lines[: node.lineno - 1] + lines[end:])


def _render(source: str, edit: _Edit, original: ast.AST, parenthesise: bool) -> str:
    node, keep = edit.node, edit.keep
    if keep is None:
        text = ast.unparse(node)
        return _splice(source, original, f"({text})" if parenthesise else text)
    if not keep:
        assert isinstance(original, ast.stmt)
        return _remove_statement(source, original)
    first, last = keep[0], keep[-1]
    if hasattr(first, "lineno") and getattr(last, "end_lineno", None) is not None:
        # The kept block's own lines, comments included, re-indented in place.
        lines = source.splitlines()[first.lineno - 1 : last.end_lineno]
        text = textwrap.dedent("\n".join(lines)).strip("\n")
    else:
        text = "\n".join(ast.unparse(stmt) for stmt in keep)
    return _splice(source, original, text)


@dataclass(frozen=True, slots=True)
class Mutant:
    source: str
    kind: str
    """Which slip it is: flip_comparison, off_by_one, swap_operator, … or stub."""


def _stub(tree: ast.Module) -> ast.Module | None:
    """Last resort: the first function returns None (a model that gave up)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            doc = _docstring(node)
            node.body = [*([doc] if doc else []), ast.Return(value=ast.Constant(value=None))]
            return tree
    return None


def mutate_code(
    source: str, rng: random.Random, kinds: Callable[[str], bool] | None = None
) -> Mutant | None:
    """A buggy variant of ``source`` that still parses and differs after ``ast.unparse``.

    One site is mutated, chosen by ``rng``; ``kinds`` can restrict the slips used.
    Returns None only when ``source`` does not parse or has no function at all.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    reference = normalised_dump(source)
    reference_text = ast.unparse(tree)
    sites = [s for s in _sites(tree) if kinds is None or kinds(s.kind)]
    rng.shuffle(sites)
    originals = list(ast.walk(tree))
    for site in sites:
        mutated = copy.deepcopy(tree)
        edit = _apply(mutated, site, rng)
        if ast.unparse(mutated) == reference_text:
            continue
        want = ast.dump(_strip_docstrings(copy.deepcopy(mutated)))
        if want == reference:
            continue
        for parenthesise in (False, True):
            try:
                text = _render(source, edit, originals[edit.at], parenthesise)
            except (ValueError, AssertionError):
                break
            if normalised_dump(text) == want:
                return Mutant(text, site.kind)
        # The edit could not be placed in the original text: render the whole tree.
        return Mutant(ast.unparse(mutated), site.kind)
    stub = _stub(copy.deepcopy(tree))
    if stub is not None and ast.unparse(stub) != reference_text:
        return Mutant(ast.unparse(stub), "stub")
    return None


def describe_difference(candidate: str, reference: str) -> str | None:
    """A reviewer's sentence naming the first line where the candidate departs from the reference."""
    cand = normalised_source(candidate)
    ref = normalised_source(reference)
    if cand is None:
        return "The program does not parse: it has a syntax error."
    if ref is None or cand == ref:
        return None
    a, b = cand.splitlines(), ref.splitlines()
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        got = a[i1].strip() if i1 < i2 else ""
        want = b[j1].strip() if j1 < j2 else ""
        if tag == "replace":
            return f"The line `{got}` is wrong; it should be `{want}`."
        if tag == "delete":
            return f"The line `{got}` should not be there; it breaks the logic."
        return f"The program is missing `{want}`, so some inputs are handled wrongly."
    return None
