"""Detection metrics: grade a list of findings against labelled ones.

A candidate is a JSON list of findings (or an object holding one under ``findings``
or ``vulnerabilities``), each with a category (``category``, ``vulnerability`` or
``type``), a location (``function``/``function_name`` and/or ``lines``) and anything
else. Labels are ``task.metadata["findings"]``: ``{"category", "lines", "function"?}``.

**Matching rule.** A predicted finding matches a label when

1. the categories agree after :func:`normalise_category` (free text such as
   "Integer overflow" or "tx.origin authentication" maps to one of the ten
   SmartBugs categories, by the ordered synonym table below), **and**
2. the locations agree: a predicted line lies within ``line_tolerance`` (default 2)
   of a labelled line, **or** a predicted function name equals (case-insensitively,
   ignoring parameters and a ``Contract.`` prefix) the function holding a labelled
   line (the label's ``function``, else the one found in the task's source).

Each label is matched at most once and each prediction at most once, as a maximum
matching (so the order of the list does not change the counts). Then ``tp`` =
matches, ``fp`` = predictions − tp, ``fn`` = labels − tp.

**Verdict.** ``passed`` means at least one labelled finding was found and nothing false
was claimed (``tp ≥ 1 and fp == 0``; for a task with no labels, ``fp == 0``): an audit
that surfaces the real flaw without false alarms, the unit GPTLens counts. ``score`` is
the item's F1, ``2tp / (2tp + fp + fn)`` (1.0 when there is nothing to find and nothing
is claimed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from deliberate.tasks.smartbugs import enclosing_function, solidity_functions
from deliberate.tasks.task import FINDING_CATEGORIES, Task
from deliberate.verifiers.base import VerifierResult

__all__ = [
    "CATEGORY_SYNONYMS",
    "DetectionVerifier",
    "Label",
    "Prediction",
    "finding_matches",
    "labels_of",
    "match_findings",
    "normalise_category",
    "normalise_function",
    "precision_recall_f1",
    "prediction_of",
    "read_findings",
]

# Ordered: the first category whose pattern occurs in the (lower-cased, "_"/"-" → " ")
# text wins, so "reentrancy through an unchecked call" is reentrancy and "randomness
# from block.timestamp" is bad randomness.
CATEGORY_SYNONYMS: tuple[tuple[str, str], ...] = (
    ("reentrancy", r"re ?entr|recursive (call|send|withdraw)|\bdao attack"),
    ("short_addresses", r"short ?address|(input|argument|parameter|calldata) (length|padding)"),
    ("front_running", r"front ?run|transaction order|\btod\b|order dependen|race condition"
                      r"|mempool|sandwich"),
    ("bad_randomness", r"random|predictab|entropy|block ?hash|\bprng\b|\bseed\b"),
    ("arithmetic", r"overflow|underflow|wrap ?around|unchecked (math|arithmetic|block)"),
    ("time_manipulation", r"time ?stamp|time (manipulation|dependen)|block time|\bnow\b"
                          r"|miner.{0,20}time"),
    ("denial_of_service", r"denial|\bdos\b|gas limit|unbounded (loop|array|iteration)"
                          r"|out of gas|griefing|block ?stuffing"),
    ("unchecked_low_level_calls", r"unchecked|low ?level call|(return|result) value"
                                  r"|unhandled (exception|error|failure)|mishandled exception"
                                  r"|(send|call) (fail|result)|silent(ly)? fail|ignored return"
                                  r"|exception disorder|\bll calls\b"),
    ("arithmetic", r"arithmetic|integer"),
    ("access_control", r"access control|tx ?\. ?origin|txorigin|authori[sz]|authentic"
                       r"|unprotected|permission|only ?owner|\bowner|privilege|self ?destruct"
                       r"|suicide|constructor|visibility|arbitrary (storage|location|write|jump)"
                       r"|delegatecall|unrestricted"),
    ("other", r"uninitiali[sz]ed|storage pointer|\bother\b"),
)
_SYNONYMS = tuple((c, re.compile(p)) for c, p in CATEGORY_SYNONYMS)
_ALIASES = {"unchecked_ll_calls": "unchecked_low_level_calls", "dos": "denial_of_service"}


def normalise_category(text: object) -> str | None:
    """One of :data:`~deliberate.tasks.task.FINDING_CATEGORIES`, or None if unrecognised."""
    if not isinstance(text, str) or not text.strip():
        return None
    key = re.sub(r"[\s\-]+", "_", text.strip().lower())
    if key in FINDING_CATEGORIES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    words = re.sub(r"[_\-]+", " ", text.lower())
    for category, pattern in _SYNONYMS:
        if pattern.search(words):
            return category
    return None


_FALLBACK_NAMES = {"fallback", "default", "anonymous", "unnamed"}


def normalise_function(name: object) -> set[str]:
    """The function names a field mentions, normalised: ``"Bank.withdraw(uint)"`` → withdraw.

    A field naming several (``"a, b"``, ``"a and b"``) gives several; an unnamed
    ``function()`` is ``fallback``.
    """
    if not isinstance(name, str):
        return set()
    out: set[str] = set()
    for part in re.split(r"[,;/&]| and ", name):
        p = part.strip().lower()
        if p.startswith("function"):
            p = p[len("function"):].strip()
        p = p.split("(", 1)[0].strip().rsplit(".", 1)[-1].strip().strip("`'\"")
        if p in _FALLBACK_NAMES or (not p and "(" in part):
            out.add("fallback")
        elif re.fullmatch(r"\w+", p):
            out.add(p)
    return out


def _lines(value: object) -> tuple[int, ...]:
    """Line numbers from 12, "12", "12-14", "L12", or a list of those."""
    items: Iterable[object] = value if isinstance(value, list | tuple) else (value,)
    out: set[int] = set()
    for item in items:
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            out.add(item)
        elif isinstance(item, float) and item.is_integer():
            out.add(int(item))
        elif isinstance(item, str):
            for a, b in re.findall(r"(\d+)(?:\s*(?:-|–|to)\s*(\d+))?", item):
                lo, hi = int(a), int(b) if b else int(a)
                if hi < lo:
                    lo, hi = hi, lo
                out.update(range(lo, min(hi, lo + 200) + 1))
    return tuple(sorted(x for x in out if x > 0))


@dataclass(frozen=True, slots=True)
class Prediction:
    """One predicted finding, reduced to what matching needs."""

    category: str | None
    functions: frozenset[str] = frozenset()
    lines: tuple[int, ...] = ()
    text: str = ""


@dataclass(frozen=True, slots=True)
class Label:
    """One labelled finding; ``functions`` hold every line's enclosing function."""

    category: str
    lines: tuple[int, ...]
    functions: frozenset[str] = field(default_factory=frozenset)


_CATEGORY_KEYS = ("category", "vulnerability", "type", "vulnerability_type", "kind", "title",
                  "name", "issue")
_FUNCTION_KEYS = ("function", "function_name", "func", "method", "location")
_LINE_KEYS = ("lines", "line", "line_numbers", "lineno")


def prediction_of(item: Mapping[str, Any]) -> Prediction:
    """A finding object, in the auditor's shape or the labels' own, as a :class:`Prediction`."""
    category = None
    text = ""
    for k in _CATEGORY_KEYS:
        if isinstance(item.get(k), str) and item[k].strip():
            text = item[k]
            category = normalise_category(text)
            if category is not None:
                break
    functions: set[str] = set()
    for k in _FUNCTION_KEYS:
        functions |= normalise_function(item.get(k))
    lines: tuple[int, ...] = ()
    for k in _LINE_KEYS:
        if k in item:
            lines = _lines(item[k])
            if lines:
                break
    return Prediction(category, frozenset(functions), lines, text)


# --------------------------------------------------------------------------- reading

_FENCE = re.compile(r"```[\w-]*[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _json_values(text: str) -> Iterable[Any]:
    blobs = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    for opener, closer in (("[", "]"), ("{", "}")):
        i, j = text.find(opener), text.rfind(closer)
        if 0 <= i < j:
            blobs.append(text[i : j + 1])
    for blob in blobs:
        for attempt in (blob, _TRAILING_COMMA.sub(r"\1", blob)):
            try:
                yield json.loads(attempt)
                break
            except ValueError:
                continue


def read_findings(text: str) -> list[Prediction] | None:
    """The findings a candidate claims, or None when it holds no readable list.

    Accepts a bare JSON list, one inside a code fence or prose, trailing commas, or an
    object with the list under ``findings``, ``vulnerabilities`` or ``output_list``.
    Items that are not objects are skipped.
    """
    for value in _json_values(text or ""):
        if isinstance(value, dict):
            for key in ("findings", "vulnerabilities", "output_list", "results"):
                if isinstance(value.get(key), list):
                    value = value[key]
                    break
        if isinstance(value, list):
            return [prediction_of(x) for x in value if isinstance(x, Mapping)]
    return None


def labels_of(task: Task) -> list[Label] | None:
    """The task's labelled findings, or None if it carries no ``findings`` list."""
    raw = task.metadata.get("findings")
    if not isinstance(raw, list):
        return None
    functions = None
    out: list[Label] = []
    for item in raw:
        if not isinstance(item, Mapping):
            continue
        category = normalise_category(item.get("category"))
        lines = _lines(item.get("lines", ()))
        if category is None:
            continue
        names = set(normalise_function(item.get("function")))
        if lines:
            if functions is None:
                functions = solidity_functions(task.prompt)
            for ln in lines:
                fn = enclosing_function(functions, ln)
                if fn is not None:
                    names |= normalise_function(fn)
        out.append(Label(category, lines, frozenset(names)))
    return out


# --------------------------------------------------------------------------- matching


def finding_matches(pred: Prediction, label: Label, line_tolerance: int = 2) -> bool:
    """Same category, and a predicted line near a labelled one or the same function."""
    if pred.category is None or pred.category != label.category:
        return False
    if any(abs(p - q) <= line_tolerance for p in pred.lines for q in label.lines):
        return True
    return bool(pred.functions & label.functions)


def match_findings(preds: Sequence[Prediction], labels: Sequence[Label],
                   line_tolerance: int = 2) -> list[tuple[int, int]]:
    """A maximum one-to-one matching as (prediction index, label index), in prediction order.

    Augmenting paths (Kuhn's algorithm), trying labels in order, so the result is
    deterministic and no prediction-order accident leaves a label unmatched that
    could have been matched.
    """
    edges = [[j for j, lab in enumerate(labels) if finding_matches(p, lab, line_tolerance)]
             for p in preds]
    owner: dict[int, int] = {}  # label index -> prediction index

    def augment(i: int, seen: set[int]) -> bool:
        for j in edges[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(preds)):
        augment(i, set())
    return sorted((i, j) for j, i in owner.items())


def precision_recall_f1(tp: int, fp: int, fn: int) -> tuple[float | None, float | None,
                                                            float | None]:
    """Precision, recall and F1; a ratio with a zero denominator is None.

    F1 is ``2tp / (2tp + fp + fn)``: 0 when nothing was found, None only when there
    was nothing to find and nothing claimed.
    """
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    return precision, recall, f1


def _describe(p: Prediction) -> str:
    where = ", ".join(sorted(p.functions)) or (
        f"line {', '.join(map(str, p.lines))}" if p.lines else "no location")
    return f"{p.category or repr(p.text[:40])} at {where}"


class DetectionVerifier:
    """Grades a findings list against ``task.metadata["findings"]`` (see module doc)."""

    name = "detection"

    def __init__(self, line_tolerance: int = 2) -> None:
        self.line_tolerance = line_tolerance

    async def verify(self, task: Task, text: str, answer: str | None) -> VerifierResult:
        labels = labels_of(task)
        if labels is None:
            return VerifierResult(None, None, "task has no labelled findings")
        preds = read_findings(text)
        if preds is None:
            return VerifierResult(False, 0.0, "the candidate holds no JSON list of findings",
                                  {"tp": 0, "fp": 0, "fn": len(labels)})
        pairs = match_findings(preds, labels, self.line_tolerance)
        tp = len(pairs)
        fp = len(preds) - tp
        fn = len(labels) - tp
        _, _, f1 = precision_recall_f1(tp, fp, fn)
        passed = fp == 0 and (tp >= 1 or not labels)
        matched_p = {i for i, _ in pairs}
        matched_l = {j for _, j in pairs}
        parts = [f"tp={tp} fp={fp} fn={fn}"]
        if pairs:
            parts.append("found: " + "; ".join(_describe(preds[i]) for i, _ in pairs))
        false = [_describe(p) for i, p in enumerate(preds) if i not in matched_p]
        if false:
            parts.append("false: " + "; ".join(false))
        missed = [f"{lab.category} at line {', '.join(map(str, lab.lines))}"
                  for j, lab in enumerate(labels) if j not in matched_l]
        if missed:
            parts.append("missed: " + "; ".join(missed))
        return VerifierResult(passed, 1.0 if f1 is None else f1, ". ".join(parts),
                              {"tp": tp, "fp": fp, "fn": fn})
