"""Worked math solutions: normalising them, breaking them the way models do, and
finding the first step where a candidate leaves the reference.

A solution is a list of steps, one per line, ending ``Answer: N``. A step that
computes something reads ``<words> <expr> = <result> <words>`` (GSM8K style, once its
``<<...>>`` calculator annotations are stripped). Wrong solutions are made by
changing one step's result into a plausible wrong value and carrying the error
forward, so the first wrong step is known exactly; that is what step critics and
step-label exports need as ground truth.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from fractions import Fraction

_ANNOTATION_RE = re.compile(r"<<[^<>]*>>")
_HASH_LINE_RE = re.compile(r"^\s*####\s*(?P<ans>.+?)\s*$")
_ANSWER_LINE_RE = re.compile(r"^\s*(?:final\s+)?answer\s*:\s*(?P<ans>.+?)\s*$", re.IGNORECASE)
_STEP_PREFIX_RE = re.compile(r"^\s*step\s+\d+\s*[:.)]\s*", re.IGNORECASE)
_NUM = r"-?\d(?:[\d,]*\d)?(?:\.\d+)?"
# A number not glued to a word (an "x" between digits is a multiplication sign).
_NUMBER_RE = re.compile(r"(?<![\d.])(?<![A-Za-wyz_])" + _NUM + r"(?!\d)")
_NUMERIC_ANSWER_RE = re.compile(
    r"(?P<num>" + _NUM + r")(?:\s*/\s*(?P<den>\d+))?\s*(?:%|\.|\s+[A-Za-z].*)?$"
)
_RESULT_RE = re.compile(r"=\s*\$?\s*(?P<num>" + _NUM + r")(?!\d)")
_EXPR_CHARS = set("0123456789.,+-*/x×÷()$ \t")
_MUL_SIGN_RE = re.compile(r"(?<=[\d\s)])[x×*](?=[\s\d(])")


def fraction_of(text: str) -> Fraction | None:
    """A number's exact value ('1,200' -> 1200, '$0.5' -> 1/2), or None."""
    raw = text.replace(",", "").replace("$", "").strip()
    try:
        return Fraction(raw)
    except (ValueError, ZeroDivisionError):
        return None


def format_number(value: Fraction) -> str:
    """Integers as integers, other values as short decimals, as a solution would write them."""
    if value.denominator == 1:
        return str(value.numerator)
    text = f"{float(value):.4f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def _unbox(text: str) -> str:
    """``\\boxed{X}`` -> ``X``: the answer line alone states the final answer."""
    out = []
    i = 0
    while (start := text.find("\\boxed{", i)) >= 0:
        j = start + len("\\boxed{")
        depth = 1
        k = j
        while k < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[k], 0)
            k += 1
        if depth:
            break
        out.append(text[i:start] + text[j : k - 1])
        i = k
    out.append(text[i:])
    return "".join(out)


def normalise_solution(solution: str, answer: str | None = None) -> str:
    """One step per line, no calculator annotations, last line ``Answer: N``.

    ``#### N`` (GSM8K) becomes ``Answer: N``; where the solution states no final
    answer line, ``answer`` is appended.
    """
    lines: list[str] = []
    final: str | None = None
    for raw in _unbox(_ANNOTATION_RE.sub("", solution)).splitlines():
        line = raw.rstrip()
        if not line.strip():
            continue
        m = _HASH_LINE_RE.match(line) or _ANSWER_LINE_RE.match(line)
        if m:
            final = m.group("ans")
            continue
        lines.append(line)
    if final is None:
        final = answer
    if final is not None:
        lines.append(f"Answer: {final.strip()}")
    return "\n".join(lines)


def _safe_eval(expr: str) -> Fraction | None:
    """Exact value of an arithmetic expression, ignoring unit words; None if it is not one.

    Unit words are dropped ("60 students x 2/3" -> 60 * 2/3, "40 x $6/day" -> 40 * 6)
    because worked solutions carry them inside their arithmetic.
    """
    cleaned = re.sub(r"/\s*[A-Za-z]+", "", expr)
    cleaned = _MUL_SIGN_RE.sub("*", cleaned).replace("÷", "/").replace("$", "").replace(",", "")
    cleaned = re.sub(r"[A-Za-z_']+", " ", cleaned).strip()
    if not cleaned or not re.search(r"\d", cleaned):
        return None
    try:
        tree = ast.parse(cleaned, mode="eval")
    except SyntaxError:
        return None

    def ev(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp):
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Add):
                return a + b
            if isinstance(node.op, ast.Sub):
                return a - b
            if isinstance(node.op, ast.Mult):
                return a * b
            if isinstance(node.op, ast.Div):
                return a / b
        raise ValueError("not plain arithmetic")

    try:
        return ev(tree)
    except (ValueError, ZeroDivisionError):
        return None


@dataclass(frozen=True, slots=True)
class Equation:
    """``expr = result`` inside one line, with where each part sits in the line."""

    expr: str
    expr_start: int
    result: Fraction
    result_start: int
    result_end: int

    @property
    def value(self) -> Fraction | None:
        """What ``expr`` really evaluates to (None if it is not arithmetic)."""
        return _safe_eval(self.expr)


_OP_RE = re.compile(r"(?<=[\d\s)])[-+*/×÷](?=[\s\d($])|(?<=[\d\s)])x(?=[\s\d($])")
_CLAUSE_RE = re.compile(
    r"(?:\b(?:is|are|was|were|be|makes?|gives?|has|have|had|of|for|so|then|thus|needs?|"
    r"earns?|costs?|pays?|gets?|totals?|equals?)\b|[:;,]\s|^)",
    re.IGNORECASE,
)


def find_equation(line: str) -> Equation | None:
    """The last ``expr = number`` in a line whose left side computes something.

    The expression is the arithmetic run just before ``=``; where words sit inside
    the arithmetic ("60 students x 2/3") it reaches back to the start of the clause.
    """
    for m in reversed(list(_RESULT_RE.finditer(line))):
        eq_at = m.start()
        i = eq_at
        while i > 0 and line[i - 1] in _EXPR_CHARS:
            i -= 1
        lead = re.search(r"[\d($-]", line[i:eq_at])
        start = i + lead.start() if lead else eq_at
        before = line[:start].rstrip()
        if (
            lead is None
            or not _OP_RE.search(line[start:eq_at])
            or re.search(r"[-+*/×÷]$|\sx$", before)
        ):
            # Words inside the arithmetic: take the clause the result belongs to.
            clauses = [c.end() for c in _CLAUSE_RE.finditer(line[:eq_at])]
            clause_at = max((c for c in clauses if c < eq_at), default=0)
            lead = re.search(r"[\d($]", line[clause_at:eq_at])
            if lead is None:
                continue
            start = clause_at + lead.start()
        expr = line[start:eq_at].rstrip()
        if not _OP_RE.search(expr):
            continue
        result = fraction_of(m.group("num"))
        if result is None:
            continue
        return Equation(
            expr=expr,
            expr_start=start,
            result=result,
            result_start=m.start("num"),
            result_end=m.end("num"),
        )
    return None


def _is_answer_line(line: str) -> bool:
    return _ANSWER_LINE_RE.match(line) is not None or _HASH_LINE_RE.match(line) is not None


def _answer_of(line: str) -> Fraction | None:
    m = _ANSWER_LINE_RE.match(line) or _HASH_LINE_RE.match(line)
    if not m:
        return None
    # A number, possibly a fraction, possibly followed by a unit ("18 dollars"),
    # but not an expression that starts with one ("2x+1").
    num = _NUMERIC_ANSWER_RE.match(m.group("ans").replace("$", "").strip())
    if not num:
        return None
    value = fraction_of(num.group("num"))
    den = fraction_of(num.group("den")) if num.group("den") else None
    if value is None or den == 0:
        return None
    return value / den if den is not None else value


def _replace_numbers(text: str, subs: dict[Fraction, Fraction]) -> tuple[str, bool]:
    """Replace whole numbers in ``text`` whose value is a key of ``subs``."""
    changed = False

    def repl(m: re.Match[str]) -> str:
        nonlocal changed
        v = fraction_of(m.group(0))
        if v is not None and v in subs:
            changed = True
            return format_number(subs[v])
        return m.group(0)

    return _NUMBER_RE.sub(repl, text), changed


_ERROR_KINDS: tuple[tuple[str, float], ...] = (
    ("wrong_operation", 0.3),
    ("off_by_one", 0.2),
    ("digit_swap", 0.15),
    ("off_by_ten", 0.15),
    ("double", 0.1),
    ("half", 0.1),
)
_OP_SWAPS = {"+": "-", "-": "+", "*": "+", "x": "+", "×": "+", "/": "*", "÷": "×"}


def _wrong_value(kind: str, eq: Equation, rng: random.Random) -> tuple[Fraction, str | None] | None:
    """A plausible wrong result for one step, and a rewritten expression if the error is in it."""
    r = eq.result
    if kind == "off_by_one":
        return r + rng.choice((1, -1)), None
    if kind == "off_by_ten":
        return r + rng.choice((10, -10)), None
    if kind == "double":
        return r * 2, None
    if kind == "half":
        return (r / 2, None) if r.denominator == 1 and r.numerator % 2 == 0 else None
    if kind == "digit_swap":
        digits = str(abs(r.numerator)) if r.denominator == 1 else ""
        pairs = [i for i in range(len(digits) - 1) if digits[i] != digits[i + 1]]
        if not pairs:
            return None
        i = rng.choice(pairs)
        swapped = digits[:i] + digits[i + 1] + digits[i] + digits[i + 2 :]
        return Fraction(int(swapped)) * (1 if r >= 0 else -1), None
    # wrong_operation: change one operator of the expression and recompute.
    ops = [(m.start(), m.group(0)) for m in _OP_RE.finditer(eq.expr)]
    rng.shuffle(ops)
    for at, op in ops:
        new_expr = eq.expr[:at] + _OP_SWAPS[op] + eq.expr[at + 1 :]
        value = _safe_eval(new_expr)
        if value is not None and value != r:
            return value, new_expr
    return None


def _plausible(new: Fraction, old: Fraction) -> bool:
    return new != old and (new >= 0 or old < 0) and abs(new.denominator) <= 100


def _distractor(final: Fraction, rng: random.Random) -> Fraction:
    """A wrong final answer near the right one, for when no step can carry the error."""
    options = [final + 1, final - 1, final * 2, final + 10, final - 10, final / 2, final + 2]
    rng.shuffle(options)
    for o in options:
        if _plausible(o, final):
            return o
    return final + 1


def wrong_math_solution(solution: str, rng: random.Random) -> tuple[str, int]:
    """A worked solution with one wrong step carried through to a wrong final answer.

    Returns the text and the 1-based index of the first wrong step (line). Lines
    before it are the reference's own; the chosen step gets a plausible wrong
    result (off by one or ten, doubled or halved, digits swapped, or a wrong
    operation), and later steps that reuse the value are recomputed from it. The
    final answer always differs from the reference's.
    """
    lines = normalise_solution(solution).splitlines()
    if not lines:
        return "Answer: 1", 1
    answer_at = next((i for i in range(len(lines) - 1, -1, -1) if _is_answer_line(lines[i])), None)
    final = _answer_of(lines[answer_at]) if answer_at is not None else None
    steps = [
        (i, eq)
        for i, line in enumerate(lines)
        if i != answer_at and (eq := find_equation(line)) is not None
    ]
    kinds = [k for k, _ in _ERROR_KINDS]
    weights = [w for _, w in _ERROR_KINDS]
    chosen: tuple[int, Equation, Fraction, str | None] | None = None
    rng.shuffle(steps)
    for i, eq in steps:
        order = rng.choices(kinds, weights, k=len(kinds)) + kinds
        for kind in order:
            wrong = _wrong_value(kind, eq, rng)
            if wrong is not None and _plausible(wrong[0], eq.result):
                chosen = (i, eq, wrong[0], wrong[1])
                break
        if chosen:
            break

    if chosen is None:
        # Nothing to miscompute: the final answer itself is the wrong step.
        base = final if final is not None else Fraction(0)
        text = f"Answer: {format_number(_distractor(base, rng))}"
        if answer_at is not None and final is None:
            text = _sign_error(lines[answer_at])
        if answer_at is None:
            lines.append(text)
            return "\n".join(lines), len(lines)
        lines[answer_at] = text
        return "\n".join(lines), answer_at + 1

    k, eq, new_result, new_expr = chosen
    line = lines[k]
    head = line[: eq.expr_start] + (new_expr if new_expr is not None else eq.expr)
    middle = line[eq.expr_start + len(eq.expr) : eq.result_start]
    lines[k] = head + middle + format_number(new_result) + line[eq.result_end :]
    subs: dict[Fraction, Fraction] = {eq.result: new_result}
    for j in range(k + 1, len(lines)):
        if j == answer_at:
            continue
        later = find_equation(lines[j])
        if later is None:
            lines[j] = _replace_numbers(lines[j], subs)[0]
            continue
        lj = lines[j]
        expr, changed = _replace_numbers(later.expr, subs)
        rest, _ = _replace_numbers(
            lj[later.expr_start + len(later.expr) : later.result_start], subs
        )
        value = _safe_eval(expr) if changed else None
        result = value if value is not None else later.result
        prefix, _ = _replace_numbers(lj[: later.expr_start], subs)
        tail, _ = _replace_numbers(lj[later.result_end :], subs)
        lines[j] = prefix + expr + rest + format_number(result) + tail
        if value is not None and value != later.result:
            subs[later.result] = value
    if final is not None:
        wrong_final = subs.get(final, final + (new_result - eq.result))
        if not _plausible(wrong_final, final):
            wrong_final = _distractor(final, rng)
        text = f"Answer: {format_number(wrong_final)}"
        if answer_at is not None:
            lines[answer_at] = text
        else:
            lines.append(text)
    elif answer_at is not None:
        lines[answer_at] = _sign_error(lines[answer_at])
    return "\n".join(lines), k + 1


def _sign_error(answer_line: str) -> str:
    """A non-numeric final answer made wrong the way symbolic answers go wrong: the sign."""
    m = _ANSWER_LINE_RE.match(answer_line) or _HASH_LINE_RE.match(answer_line)
    ans = m.group("ans") if m else answer_line
    return f"Answer: -({ans})"


def _strip_step_prefix(line: str) -> str:
    return _STEP_PREFIX_RE.sub("", line)


def _skeleton(line: str) -> str:
    """The words of a step without its numbers and operators, to align two solutions."""
    s = _MUL_SIGN_RE.sub(" ", _strip_step_prefix(line))
    return re.sub(r"[^a-z]", "", s.lower())


def _canonical_line(line: str) -> str:
    s = _MUL_SIGN_RE.sub("*", _strip_step_prefix(line))
    return re.sub(r"\s+", "", s.replace("$", "").replace(",", ""))


def _numbers(text: str) -> set[Fraction]:
    out: set[Fraction] = set()
    for m in _NUMBER_RE.finditer(text.replace("$", "")):
        v = fraction_of(m.group(0))
        if v is not None:
            out.add(v)
    return out


def _show(expr: str) -> str:
    return re.sub(r"\s+", " ", expr.strip())


def first_divergence(candidate: str, reference: str) -> tuple[int, str] | None:
    """The first step (1-based line) where a candidate's numbers leave the reference's.

    A step is wrong if its arithmetic is wrong, if it lines up with a reference
    step (same words) but computes something else, or if its result is no value
    the reference ever reaches. Returns the step and a sentence a critic would
    say, or None when every step agrees.
    """
    ref_lines = normalise_solution(reference).splitlines()
    ref_values = _numbers(reference)
    ref_final = next((a for a in map(_answer_of, reversed(ref_lines)) if a is not None), None)
    ref_canon = {_canonical_line(ln) for ln in ref_lines}
    cand_lines = [ln for ln in candidate.splitlines() if ln.strip()]
    for i, line in enumerate(cand_lines):
        step = i + 1
        if _canonical_line(line) in ref_canon:
            continue
        if _is_answer_line(line):
            got = _answer_of(line)
            if ref_final is not None and got is not None and got != ref_final:
                return step, (
                    f"Step {step} gives the final answer {format_number(got)}, which does not "
                    f"follow from a correct solution; it should be {format_number(ref_final)}."
                )
            continue
        eq = find_equation(line)
        if eq is None:
            continue
        shown = _show(eq.expr)
        value = eq.value
        if value is not None and value != eq.result:
            return step, (
                f"Step {step} computes {shown} = {format_number(eq.result)}, "
                f"but {shown} = {format_number(value)}."
            )
        ref_line = ref_lines[i] if i < len(ref_lines) else None
        if (
            ref_line is not None
            and _skeleton(ref_line) == _skeleton(line)
            and _canonical_line(ref_line) != _canonical_line(line)
        ):
            ref_eq = find_equation(ref_line)
            if ref_eq is not None:
                return step, (
                    f"Step {step} computes {shown} = {format_number(eq.result)}, but this step "
                    f"should compute {_show(ref_eq.expr)} = {format_number(ref_eq.result)}."
                )
            return step, f"Step {step} uses the wrong quantities: {shown}."
        if eq.result not in ref_values:
            return step, (
                f"Step {step} arrives at {format_number(eq.result)} from {shown}, which does not "
                "follow from the problem's quantities."
            )
    return None


def step_results(solution: str) -> list[tuple[int, str, Fraction]]:
    """(1-based step, expression, stated result) of every computing step in a solution."""
    out: list[tuple[int, str, Fraction]] = []
    for i, line in enumerate(ln for ln in solution.splitlines() if ln.strip()):
        eq = find_equation(line)
        if eq is not None:
            out.append((i + 1, _show(eq.expr), eq.result))
    return out
