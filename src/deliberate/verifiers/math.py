"""Math-expression equivalence: LaTeX normalisation, then sympy.

A final answer such as ``\\boxed{\\dfrac{\\sqrt{12}}{4}}``, ``$0.5\\sqrt3$`` or
``x = \\frac{\\sqrt 3}{2}`` is first rewritten, by plain string work, into text that
sympy's expression parser reads (``sqrt(3)/2``): ``\\boxed{}``, ``\\frac`` and its
``\\dfrac``/``\\tfrac`` forms, ``\\sqrt``, ``\\left``/``\\right``, ``\\cdot``/``\\times``,
powers, percent and degree signs, dollar signs, thousands separators, units written
as words or in ``\\text{}``, and a leading ``x =``. Tuples, intervals and sets are
compared item by item (sets and bare comma lists in any order, intervals with
their brackets). sympy's own LaTeX parser is not used: it needs an exact ANTLR
runtime version (or ``lark``) that the project does not pin.

Two expressions are equal when they are identical after sympy's evaluation, or
close (relative tolerance) as numbers, or — with variables — close at several
fixed pseudo-random points. Only a whitelisted alphabet reaches sympy (digits,
operators, single-letter variables and a few function names), expressions are
length-capped and power towers refused, so model text cannot run code or make
sympy compute a number with billions of digits; the async verifier also runs the
comparison in a worker thread under a time budget.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from deliberate.tasks.task import Task
from deliberate.verifiers.base import VerifierResult, answers_equal

MAX_EXPR_CHARS = 300
_MAX_DIGITS = 100_000
_FUNCTIONS = {
    "sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "asin", "acos", "atan",
    "sinh", "cosh", "tanh", "log", "ln", "exp", "pi", "oo", "Abs",
}
_LATEX_NAMES = {
    "pi": "pi", "infty": "oo", "infinity": "oo", "sin": "sin", "cos": "cos", "tan": "tan",
    "cot": "cot", "sec": "sec", "csc": "csc", "arcsin": "asin", "arccos": "acos",
    "arctan": "atan", "sinh": "sinh", "cosh": "cosh", "tanh": "tanh", "ln": "ln",
    "log": "log", "exp": "exp",
}
_DROP = re.compile(
    r"\\(?:displaystyle|textstyle|left|right|[Bb]igg?[lr]?|!|,|;|:|quad|qquad|limits)"
    r"(?![a-zA-Z])|\\ |~"
)
_TEXT_CMD = re.compile(r"\\(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|operatorname)\s*\{")
_STYLE_CMD = re.compile(r"\\(?:mathbf|mathit|boldsymbol|mathsf|bm)\s*\{")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\\circ|°|\\degree|\^\s*\{\s*\\text\{\s*o\s*\}\s*\}")
_THOUSANDS = re.compile(r"(?<![\d.,])(\d{1,3})((?:,\d{3})+)(?![\d])")
_UNIT_TAIL = re.compile(r"(?<=[\d)}])\s*(?:[A-Za-z]{2,}\.?)(?:\s+[A-Za-z]+\.?)*\s*$")
_LEAD_VAR = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*=\s*(?=[^=])")
_ALLOWED = re.compile(r"[0-9A-Za-z.+\-*/()\s]*")
_IDENT = re.compile(r"[A-Za-z]+")
_PLAIN_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\(\(\d+\)/\(\d+\)\)|\d+/\d+)")
_ANSWER_LINE = re.compile(
    r"(?:####|(?:final\s+answer|answer)\s*(?:is\s*:?|:)|(?m:^\s*A:))\s*(.+)", re.IGNORECASE
)
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|\$(.+?)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)

ShapeKind = Literal["expr", "tuple", "set", "list"]


class _NotMath(ValueError):
    """The text is not an expression this module can read."""


@dataclass(frozen=True, slots=True)
class MathShape:
    """A final answer as sympy-readable item texts: one expression, an ordered tuple
    or interval (``brackets`` holds its open and close characters), or an unordered
    set / comma list."""

    kind: ShapeKind
    items: tuple[str, ...]
    brackets: str = ""

    @property
    def is_plain_number(self) -> bool:
        return self.kind == "expr" and bool(_PLAIN_NUMBER.fullmatch(self.items[0]))

    def key(self) -> str:
        """A compact text form: equal for spellings that differ only in notation."""
        inner = ",".join(re.sub(r"\s+", "", x) for x in self.items)
        if self.kind == "expr":
            return inner
        if self.kind == "set":
            return "{" + inner + "}"
        return f"{self.brackets[:1]}{inner}{self.brackets[1:]}"


# ---------------------------------------------------------------------------------
# Extraction


def _braced(text: str, start: int) -> tuple[str, int] | None:
    """Content of the ``{...}`` opening at ``start`` and the index after it."""
    if start >= len(text) or text[start] != "{":
        return None
    depth = 0
    for j in range(start, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1 : j], j + 1
    return None


def last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced."""
    best: tuple[int, str] | None = None
    for cmd in ("\\boxed", "\\fbox"):
        at = text.rfind(cmd + "{")
        if at < 0:
            at = text.rfind(cmd + " {")
        if at >= 0:
            got = _braced(text, text.index("{", at))
            if got is not None and (best is None or at > best[0]):
                best = (at, got[0])
    return best[1] if best else None


def final_answer_text(text: str) -> str | None:
    """The final answer as written (not yet normalised): the last ``\\boxed{}``, else
    the tail of the last ``#### ``, ``answer is``/``Answer:`` or ``A:`` line, where a
    ``$...$`` span in that tail is preferred to the prose around it."""
    if not text:
        return None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip() or None
    tails = _ANSWER_LINE.findall(text)
    if not tails:
        return None
    tail: str = tails[-1].strip()
    span = _MATH_SPAN.search(tail)
    if span:
        tail = next(g for g in span.groups() if g is not None)
    tail = tail.strip().strip("*` ").rstrip(".").strip()
    return tail or None


# ---------------------------------------------------------------------------------
# LaTeX -> sympy text


def _replace_cmd_groups(s: str, pattern: re.Pattern[str], keep: Callable[[str], str]) -> str:
    while True:
        m = pattern.search(s)
        if not m:
            return s
        got = _braced(s, m.end() - 1)
        if got is None:
            raise _NotMath("unbalanced braces")
        inner, end = got
        s = s[: m.start()] + keep(inner) + s[end:]


def _text_content(inner: str) -> str:
    # \text{ cm}, \text{ dollars}: a unit, dropped; \text{5}: kept.
    return "" if re.fullmatch(r"[\sA-Za-z.]*", inner) else inner


def clean_latex(s: str) -> str:
    """Strip notation that does not change the value (delimiters, spacing, units,
    percent, degrees, currency, thousands separators, a leading ``x =``)."""
    s = s.strip()
    boxed = last_boxed(s)
    if boxed is not None:
        s = boxed
    m = re.fullmatch(r"\s*(?:\$\$(.*)\$\$|\$(.*)\$|\\\((.*)\\\)|\\\[(.*)\\\])\s*", s, re.DOTALL)
    if m:
        s = next(g for g in m.groups() if g is not None)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _DEGREES.sub("", s)
    s = _replace_cmd_groups(s, _TEXT_CMD, _text_content)
    s = _replace_cmd_groups(s, _STYLE_CMD, lambda inner: inner)
    s = _DROP.sub(" ", s)
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:cdot|times|ast)(?![a-zA-Z])", "*", s)
    s = re.sub(r"\\div(?![a-zA-Z])", "/", s)
    s = s.replace("{,}", "").replace("−", "-").replace("·", "*").replace("×", "*")
    s = _THOUSANDS.sub(lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    s = s.strip().rstrip(".").strip()
    s = _UNIT_TAIL.sub("", s)
    s = _LEAD_VAR.sub("", s)
    return s.strip()


def _arg(s: str, i: int) -> tuple[str, int]:
    """One LaTeX argument at ``i``: a ``{group}``, a ``\\command`` or one character."""
    while i < len(s) and s[i].isspace():
        i += 1
    if i >= len(s):
        raise _NotMath("missing argument")
    if s[i] == "{":
        got = _braced(s, i)
        if got is None:
            raise _NotMath("unbalanced braces")
        return got
    if s[i] == "\\":
        m = re.match(r"\\[A-Za-z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    return s[i], i + 1


def _convert(s: str) -> str:
    """LaTeX math (already cleaned) to sympy's expression syntax."""
    out: list[str] = []
    i = 0
    while i < len(s):
        ch = s[i]
        if s.startswith("\\frac", i):
            num, i = _arg(s, i + 5)
            den, i = _arg(s, i)
            out.append(f"(({_convert(num)})/({_convert(den)}))")
        elif s.startswith("\\sqrt", i):
            i += 5
            while i < len(s) and s[i].isspace():
                i += 1
            if i < len(s) and s[i] == "[":
                close = s.find("]", i)
                if close < 0:
                    raise _NotMath("unclosed root index")
                index = s[i + 1 : close]
                body, i = _arg(s, close + 1)
                out.append(f"(({_convert(body)})**(1/({_convert(index)})))")
            else:
                body, i = _arg(s, i)
                out.append(f"sqrt({_convert(body)})")
        elif ch == "\\":
            m = re.match(r"\\([A-Za-z]+)", s[i:])
            if not m or m.group(1) not in _LATEX_NAMES:
                raise _NotMath(f"unsupported LaTeX {s[i:i + 12]!r}")
            out.append(f" {_LATEX_NAMES[m.group(1)]} ")
            i += m.end()
        elif ch == "^":
            power, i = _arg(s, i + 1)
            out.append(f"**({_convert(power)})")
        elif ch == "{":
            inner, i = _arg(s, i)
            out.append(f"({_convert(inner)})")
        elif ch in "[]":
            out.append("(" if ch == "[" else ")")
            i += 1
        else:
            out.append(ch)
            i += 1
    text = "".join(out)
    if not _ALLOWED.fullmatch(text):
        raise _NotMath(f"unsupported characters in {text!r}")
    for word in _IDENT.findall(text):
        if len(word) > 1 and word not in _FUNCTIONS:
            raise _NotMath(f"unknown name {word!r}")
    return re.sub(r"\s+", " ", text).strip()


def _split_top(s: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    start = 0
    for i, ch in enumerate(s):
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return [p.strip() for p in parts]


def math_shape(text: str) -> MathShape | None:
    """The answer's items as sympy-readable text, or None if it is not math we read."""
    try:
        s = clean_latex(text)
        if not s or len(s) > MAX_EXPR_CHARS:
            return None
        if s.startswith("\\{") and s.endswith("\\}"):
            items = _split_top(s[2:-2])
            return MathShape("set", tuple(_convert(x) for x in items))
        if len(s) >= 2 and s[0] in "([" and s[-1] in ")]" and _matching_outer(s):
            items = _split_top(s[1:-1])
            if len(items) > 1:
                return MathShape("tuple", tuple(_convert(x) for x in items), s[0] + s[-1])
        items = _split_top(s)
        if len(items) > 1:
            return MathShape("list", tuple(_convert(x) for x in items))
        return MathShape("expr", (_convert(s),))
    except _NotMath:
        return None


def _matching_outer(s: str) -> bool:
    """Whether the first bracket closes only at the end (``(1, 2)``, not ``(1)(2)``)."""
    depth = 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and i < len(s) - 1:
                return False
    return depth == 0


def is_symbolic(text: str) -> bool:
    """True when ``text`` is math we read that is not one plain number (``\\sqrt2``,
    ``2x+1``, ``(1, 2)``): such answers are kept as written, not cut to a number."""
    shape = math_shape(text)
    return shape is not None and not shape.is_plain_number


# ---------------------------------------------------------------------------------
# Equivalence


def _sympy() -> Any:
    """sympy, imported on first use: importing it costs half a second."""
    import sympy  # type: ignore[import-untyped]

    return sympy


def _parse(item: str) -> Any:
    """A sympy expression, or None when the item is not one (or is too big to evaluate)."""
    sp = _sympy()
    from sympy.parsing.sympy_parser import (  # type: ignore[import-untyped]
        convert_xor,
        function_exponentiation,
        implicit_application,
        implicit_multiplication,
        parse_expr,
        standard_transformations,
    )

    names: dict[str, Any] = {"e": sp.E, "i": sp.I, "pi": sp.pi, "oo": sp.oo, "ln": sp.log,
                             "log": sp.log, "sqrt": sp.sqrt, "Abs": sp.Abs}
    for ch in "abcdfghjklmnopqrstuvwxyzABCDFGHJKLMNOPQRSTUVWXYZ":
        names.setdefault(ch, sp.Symbol(ch))
    transforms = (*standard_transformations, implicit_multiplication, implicit_application,
                  function_exponentiation, convert_xor)
    try:
        raw = parse_expr(item, local_dict=names, transformations=transforms, evaluate=False)
        if _too_big(raw):
            return None
        expr = parse_expr(item, local_dict=names, transformations=transforms)
    except Exception:  # sympy raises many kinds on odd input; any means "not math"
        return None
    return expr if isinstance(expr, sp.Expr) else None


def _too_big(expr: Any) -> bool:
    """Refuse what sympy would take too long to evaluate exactly: power towers and
    numbers of more than ``_MAX_DIGITS`` digits, judged on the unevaluated tree."""
    return _digits(expr) > _MAX_DIGITS


def _digits(node: Any) -> float:
    """An upper bound on log10 of the magnitude of ``node`` (symbols are taken at
    the small values the comparison substitutes for them)."""
    sp = _sympy()
    if isinstance(node, sp.Integer):
        return math.log10(abs(int(node)) + 1)
    if isinstance(node, sp.Rational):
        return math.log10(abs(int(node.p)) + 1) + math.log10(abs(int(node.q)) + 1)
    if isinstance(node, sp.Float):
        return math.log10(abs(float(node)) + 1)
    if isinstance(node, sp.Pow):
        base, exp = (_digits(a) for a in node.args)
        if exp > 5:  # an exponent above 10^5
            return math.inf
        return (base + 1) * 10**exp
    if isinstance(node, sp.Add):
        return max((_digits(a) for a in node.args), default=0.0) + 1
    if isinstance(node, sp.Mul):
        return sum(_digits(a) for a in node.args)
    return max((_digits(a) for a in node.args), default=1.0)


def _as_complex(expr: Any, subs: dict[Any, Any] | None = None) -> complex | None:
    try:
        value = complex(expr.evalf(30, subs=subs) if subs else expr.evalf(30))
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None
    if not (math.isfinite(value.real) and math.isfinite(value.imag)):
        return None
    return value


def _close(x: complex, y: complex, rel_tol: float) -> bool:
    return abs(x - y) <= max(rel_tol * max(abs(x), abs(y)), 1e-9)


def _exprs_equal(a: Any, b: Any, rel_tol: float) -> bool:
    sp = _sympy()
    if a == b:
        return True
    if isinstance(a, sp.Integer) and isinstance(b, sp.Integer):
        return False  # tolerance is for decimals, not for telling whole numbers apart
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    if not symbols:
        x, y = _as_complex(a), _as_complex(b)
        if x is not None and y is not None:
            return _close(x, y, rel_tol)
    else:
        rng = random.Random(7919)  # fixed points: the verdict is deterministic
        valid = 0
        for _ in range(8):
            point = {s: sp.Float(rng.uniform(0.15, 2.85), 30) for s in symbols}
            x, y = _as_complex(a, point), _as_complex(b, point)
            if x is None or y is None:
                continue
            if not _close(x, y, rel_tol):
                return False
            valid += 1
        if valid >= 3:
            return True
    try:
        return bool(sp.simplify(a - b) == 0)
    except Exception:  # simplify can fail on odd expressions; then they differ
        return False


def _items_equal(xs: tuple[Any, ...], ys: tuple[Any, ...], ordered: bool,
                 rel_tol: float) -> bool:
    if len(xs) != len(ys):
        return False
    if ordered:
        return all(_exprs_equal(x, y, rel_tol) for x, y in zip(xs, ys, strict=True))
    left = list(ys)
    for x in xs:
        hit = next((k for k, y in enumerate(left) if _exprs_equal(x, y, rel_tol)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def math_equal(candidate: str, reference: str, *, rel_tol: float = 1e-6) -> bool:
    """Whether two final answers are the same mathematical object.

    Both are normalised and compared with sympy. If the candidate cannot be read as
    math, a plain-number reference is matched numerically against the first number
    in it (the ``answer_match`` rule); otherwise the cleaned texts must be equal.
    Synchronous and CPU-bound: async callers use :class:`MathEquivalence`.
    """
    ref_shape = math_shape(reference)
    cand_shape = math_shape(candidate)
    if ref_shape is not None and cand_shape is not None:
        if ref_shape.is_plain_number and cand_shape.is_plain_number:
            return answers_equal(_plain(cand_shape), _plain(ref_shape), rel_tol=rel_tol)
        if ref_shape.kind != cand_shape.kind or ref_shape.brackets != cand_shape.brackets:
            return False
        refs = [_parse(x) for x in ref_shape.items]
        cands = [_parse(x) for x in cand_shape.items]
        if all(r is not None for r in refs) and all(c is not None for c in cands):
            ordered = ref_shape.kind == "tuple"
            return _items_equal(tuple(cands), tuple(refs), ordered, rel_tol)
    if ref_shape is not None and ref_shape.is_plain_number and cand_shape is None:
        return answers_equal(candidate, _plain(ref_shape), rel_tol=rel_tol)
    return _squash(clean_or_raw(candidate)) == _squash(clean_or_raw(reference))


def _plain(shape: MathShape) -> str:
    """A plain-number shape as text answers.normalise_number reads ('((1)/(2))' -> '1/2')."""
    return shape.items[0].replace("(", "").replace(")", "")


def clean_or_raw(text: str) -> str:
    try:
        return clean_latex(text)
    except _NotMath:
        return text


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text).lower()


class MathEquivalence:
    """The final answer equals the reference as mathematics (sympy), not as text.

    Numbers compare with ``rel_tol``; everything else through :func:`math_equal`,
    run in a worker thread so the event loop never waits on sympy, and failed after
    ``timeout`` seconds (the thread is left to finish; inputs are capped so it does).
    """

    name = "math_equiv"

    def __init__(self, rel_tol: float = 1e-6, timeout: float = 5.0) -> None:
        self.rel_tol = rel_tol
        self.timeout = timeout

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        if task.answer is None:
            return VerifierResult(None, None, "task has no reference answer")
        candidate = final_answer_text(text) or answer
        if candidate is None:
            return VerifierResult(False, 0.0, "no final answer found in the candidate")
        try:
            ok = await asyncio.wait_for(
                asyncio.to_thread(math_equal, candidate, task.answer, rel_tol=self.rel_tol),
                self.timeout,
            )
        except TimeoutError:
            return VerifierResult(False, 0.0, f"comparing {candidate!r} with the reference "
                                              f"took over {self.timeout:g}s")
        verb = "equals" if ok else "differs from"
        return VerifierResult(ok, 1.0 if ok else 0.0, f"answer {candidate} {verb} the reference")
