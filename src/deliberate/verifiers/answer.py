"""Final-answer extraction and matching for math-style tasks.

Extraction order follows how models actually end their solutions: ``\\boxed{}``
(LaTeX), ``#### N`` (GSM8K), ``Answer: N`` / ``the answer is N``, then the last
number in the text.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

_NUM = r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\.\d+"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*(.+)")
_ANSWER_RE = re.compile(r"(?:final answer|answer)\s*(?:is|:)\s*(.+)", re.IGNORECASE)
_A_RE = re.compile(r"(?m)^\s*A:\s*(.+)")


def _boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}``, with nested braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    j = i
    while j < len(text) and depth:
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
        j += 1
    return text[i : j - 1] if depth == 0 else None


def normalise_number(s: str) -> str | None:
    """Canonical text of the first number in ``s`` ('1,234.50' -> '1234.5'), else None."""
    s = s.replace("\\$", "$").replace("\\!", "")
    frac = re.search(r"\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}", s)
    if frac and int(frac.group(2)) != 0:
        return _canon(Fraction(int(frac.group(1)), int(frac.group(2))))
    simple = re.search(r"(-?\d+)\s*/\s*(\d+)", s)
    m = _NUM_RE.search(s)
    if simple and (m is None or simple.start() <= m.start()) and int(simple.group(2)) != 0:
        return _canon(Fraction(int(simple.group(1)), int(simple.group(2))))
    if not m:
        return None
    raw = m.group(0).replace("$", "").replace(",", "").replace(" ", "")
    try:
        return _canon(Fraction(raw))
    except (ValueError, ZeroDivisionError):
        return None


def _canon(f: Fraction) -> str:
    if f.denominator == 1:
        return str(f.numerator)
    as_float = float(f)
    text = repr(as_float)
    if Fraction(text) == f:
        return text.rstrip("0").rstrip(".") if "." in text else text
    return f"{f.numerator}/{f.denominator}"


def extract_answer(text: str) -> str | None:
    """The final answer of a worked solution, normalised where it is a number."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None:
        inner: str = boxed.strip()
        return normalise_number(inner) or inner or None
    for pattern in (_HASH_RE, _ANSWER_RE, _A_RE):
        matches: list[str] = pattern.findall(text)
        if matches:
            tail = matches[-1].strip()
            num = normalise_number(tail)
            if num is not None:
                return num
            cleaned: str = tail.strip(" .*`")
            if cleaned:
                return cleaned
    numbers = _NUM_RE.findall(text)
    if numbers:
        return normalise_number(numbers[-1])
    return None


def answers_match(candidate: str | None, reference: str | None, *, rel_tol: float = 1e-6) -> bool:
    """Numeric match with tolerance where both are numbers, else case-insensitive exact."""
    if candidate is None or reference is None:
        return False
    a = normalise_number(candidate)
    b = normalise_number(reference)
    if a is not None and b is not None:
        qa, qb = Fraction(a), Fraction(b)
        if qa.denominator == 1 and qb.denominator == 1:
            return qa == qb  # whole numbers: a relative tolerance would equate 3500001 and 3500000
        return math.isclose(float(qa), float(qb), rel_tol=rel_tol, abs_tol=1e-9)
    return candidate.strip().lower() == reference.strip().lower()
