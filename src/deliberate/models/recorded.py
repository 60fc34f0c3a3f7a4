"""Converters from published recorded-output datasets to replay files.

Real model outputs with known correctness let strategies be run, compared and
tested offline against what models actually wrote, not against a simulation.
Each converter reads the dataset as published (JSONL, optionally gzipped) and
writes replay JSONL (see ``docs/replay-format.md``); nothing here touches the
network or runs code.

This module stays inside the ``models`` layer: the GSM8K answer rule below is
the dataset's own ("the final answer follows ``A:``"), not the verifiers'.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from deliberate.errors import DataError
from deliberate.models.replay import RecordedCompletion, ReplayRecord, write_replay

__all__ = [
    "CODET_STOP_SEQUENCES",
    "GSM8K_ANSWER_RULE",
    "GSM8K_SOLUTION_COLUMNS",
    "ColumnAccuracy",
    "codet_samples_to_replay",
    "cut_at_stops",
    "gsm8k_column_accuracy",
    "gsm8k_final_answer",
    "gsm8k_model_solutions_to_replay",
    "match_humaneval_prompt",
]

GSM8K_SOLUTION_COLUMNS: tuple[str, ...] = (
    "6b_finetuning",
    "6b_verification",
    "175b_finetuning",
    "175b_verification",
)

GSM8K_ANSWER_RULE = (
    "text after the last line-initial 'A:' marker, read as a number "
    "('$' and thousands commas dropped, compared exactly as fractions); "
    "no marker or no number means no answer"
)

CODET_STOP_SEQUENCES: tuple[str, ...] = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def _read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of a JSONL or JSONL.gz file; DataError names file and line."""
    p = Path(path)
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        fh = opener(p, "rt", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read {p}: {exc.strerror or exc}") from exc
    with fh:
        try:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from exc
                if not isinstance(obj, dict):
                    raise DataError(f"{p}:{lineno}: expected a JSON object")
                yield lineno, obj
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {p}: {exc}") from exc


def _field(obj: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise DataError(f"{where}: field '{key}' missing or not a {kind.__name__}")
    return value


# --------------------------------------------------------------------------- GSM8K

_A_LINE = re.compile(r"(?m)^\s*A:\s*(.*)$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def gsm8k_final_answer(text: str) -> str | None:
    """The final answer of a grade-school-math solution, per :data:`GSM8K_ANSWER_RULE`.

    Returned in canonical form ('1,200.50' -> '2401/2'), so equal answers compare equal
    as strings.
    """
    markers = _A_LINE.findall(text)
    if not markers:
        return None
    m = _NUMBER.search(markers[-1].replace("$", ""))
    if m is None:
        return None
    try:
        value = Fraction(m.group(0).replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return str(value)


@dataclass(frozen=True, slots=True)
class ColumnAccuracy:
    """Accuracy of one recorded column, by its own labels and by the answer rule."""

    column: str
    total: int
    labelled_correct: int
    extracted_correct: int
    disagreements: int
    answer_rule: str = GSM8K_ANSWER_RULE

    @property
    def labelled_accuracy(self) -> float:
        return self.labelled_correct / self.total if self.total else 0.0

    @property
    def extracted_accuracy(self) -> float:
        return self.extracted_correct / self.total if self.total else 0.0


def _gsm8k_rows(
    src: str | Path, columns: Sequence[str]
) -> Iterator[tuple[int, str, str, list[tuple[str, str, bool]]]]:
    """(row, question, ground truth, [(column, solution, is_correct)]) per row."""
    for row, (lineno, obj) in enumerate(_read_jsonl(src)):
        where = f"{src}:{lineno}"
        question = _field(obj, "question", str, where)
        truth = _field(obj, "ground_truth", str, where)
        sols: list[tuple[str, str, bool]] = []
        for col in columns:
            cell = _field(obj, col, dict, where)
            sols.append(
                (
                    col,
                    _field(cell, "solution", str, f"{where}: {col}"),
                    _field(cell, "is_correct", bool, f"{where}: {col}"),
                )
            )
        yield row, question, truth, sols


def gsm8k_model_solutions_to_replay(
    src: str | Path,
    dst: str | Path,
    columns: Sequence[str] | None = None,
) -> int:
    """OpenAI's recorded GPT-3 GSM8K solutions → replay file; returns records written.

    One record per problem: ``task_id`` ``gsm8k-test-<row>`` (row = 0-based line
    order, which is the GSM8K test order), ``prompt`` the question, one
    completion per column in ``columns`` order with ``correct`` from the
    dataset's ``is_correct`` and ``meta.column``; the record's meta keeps the
    reference solution and its final answer.
    """
    cols = tuple(columns) if columns is not None else GSM8K_SOLUTION_COLUMNS
    if not cols:
        raise DataError("at least one solution column is needed")

    def records() -> Iterator[ReplayRecord]:
        for row, question, truth, sols in _gsm8k_rows(src, cols):
            yield ReplayRecord(
                task_id=f"gsm8k-test-{row}",
                prompt=question,
                model="gpt-3",
                completions=tuple(
                    RecordedCompletion(text=sol, correct=ok, meta={"column": col})
                    for col, sol, ok in sols
                ),
                meta={
                    "source": "openai/grade-school-math model solutions",
                    "row": row,
                    "reference": truth,
                    "answer": gsm8k_final_answer(truth),
                },
            )

    return write_replay(dst, records())


def gsm8k_column_accuracy(
    src: str | Path, columns: Sequence[str] | None = None
) -> dict[str, ColumnAccuracy]:
    """Per-column accuracy from the dataset's labels and from :func:`gsm8k_final_answer`.

    Both are reported so a reader can see the answer rule agrees with the labels
    (``disagreements`` counts rows where it does not).
    """
    cols = tuple(columns) if columns is not None else GSM8K_SOLUTION_COLUMNS
    total = 0
    labelled = dict.fromkeys(cols, 0)
    extracted = dict.fromkeys(cols, 0)
    disagree = dict.fromkeys(cols, 0)
    for _row, _q, truth, sols in _gsm8k_rows(src, cols):
        total += 1
        ref = gsm8k_final_answer(truth)
        for col, sol, ok in sols:
            got = gsm8k_final_answer(sol)
            hit = got is not None and got == ref
            labelled[col] += ok
            extracted[col] += hit
            disagree[col] += hit != ok
    return {
        c: ColumnAccuracy(
            column=c,
            total=total,
            labelled_correct=labelled[c],
            extracted_correct=extracted[c],
            disagreements=disagree[c],
        )
        for c in cols
    }


# --------------------------------------------------------------------------- CodeT / HumanEval

_TOP_DEF = re.compile(r"(?m)^def\s+(\w+)\s*\(")


def cut_at_stops(completion: str, stops: Sequence[str] = CODET_STOP_SEQUENCES) -> str:
    """The completion up to (not including) the earliest stop sequence."""
    cut = len(completion)
    for stop in stops:
        at = completion.find(stop)
        if 0 <= at < cut:
            cut = at
    return completion[:cut]


def _content_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _is_subsequence(small: Sequence[str], big: Sequence[str]) -> bool:
    it = iter(big)
    return all(any(line == other for other in it) for line in small)


def match_humaneval_prompt(prompt: str, problems: Sequence[dict[str, Any]]) -> str | None:
    """The HumanEval task id a (possibly trimmed) prompt was made from, if unique.

    CodeT's prompts are HumanEval's with the docstring examples removed, so
    exact matching fails. A problem matches when its ``entry_point`` is the last
    top-level function of ``prompt`` and the prompt's non-blank lines appear, in
    order, among the problem prompt's lines.
    """
    defs = _TOP_DEF.findall(prompt)
    if not defs:
        return None
    lines = _content_lines(prompt)
    hits = [
        str(p["task_id"])
        for p in problems
        if p.get("entry_point") == defs[-1]
        and _is_subsequence(lines, _content_lines(str(p.get("prompt", ""))))
    ]
    return hits[0] if len(hits) == 1 else None


@dataclass(frozen=True, slots=True)
class CodetRow:
    """One row of a CodeT file, matched to its HumanEval problem where one matches."""

    row: int
    task_id: str | None
    prompt: str  # the HumanEval prompt when matched, else CodeT's own
    codet_prompt: str
    samples: list[str]
    entry_point: str | None


def codet_rows(src: str | Path, humaneval: str | Path | None = None,
               match_text: Callable[[str], str] = lambda p: p) -> Iterator[CodetRow]:
    """The rows of a CodeT file (code solutions or test cases), validated and matched.

    ``match_text`` turns CodeT's prompt into the text matched against HumanEval's
    prompts (the test-case file wraps the function prompt in a test preamble).
    """
    problems: list[dict[str, Any]] = []
    if humaneval is not None:
        problems = [obj for _, obj in _read_jsonl(humaneval)]
    by_id = {str(p.get("task_id")): p for p in problems}
    seen: set[str] = set()
    for row, (lineno, obj) in enumerate(_read_jsonl(src)):
        where = f"{src}:{lineno}"
        codet_prompt = _field(obj, "prompt", str, where)
        samples = _field(obj, "samples", list, where)
        if not samples or not all(isinstance(x, str) for x in samples):
            raise DataError(f"{where}: 'samples' must be a non-empty list of strings")
        task_id = (match_humaneval_prompt(match_text(codet_prompt), problems)
                   if problems else None)
        if task_id is None:
            yield CodetRow(row, None, codet_prompt, codet_prompt, samples, None)
            continue
        if task_id in seen:
            raise DataError(f"{where}: a second CodeT row matches {task_id}")
        seen.add(task_id)
        problem = by_id[task_id]
        yield CodetRow(row, task_id, str(problem["prompt"]), codet_prompt, samples,
                       problem.get("entry_point"))


def codet_samples_to_replay(
    src: str | Path,
    dst: str | Path,
    humaneval: str | Path | None = None,
    stops: Sequence[str] = CODET_STOP_SEQUENCES,
) -> int:
    """CodeT's recorded CodeGen samples → replay file of full programs; returns records.

    Per CodeT row: ``task_id`` is the HumanEval id when ``humaneval`` is given and
    :func:`match_humaneval_prompt` finds exactly one problem, else ``codet-<row>``.
    ``prompt`` is the HumanEval prompt when matched (so replay serves requests
    built from HumanEval tasks), else CodeT's own prompt. Each completion's
    ``text`` is ``prompt + cut`` where ``cut`` is the sample cut at the first stop
    sequence: a whole program, so ``text[len(prompt):]`` recovers the cut sample.
    ``correct`` is null (the data has no labels: run the tests). Record meta keeps
    CodeT's prompt (what the model actually saw) and the entry point.
    """
    def records() -> Iterator[ReplayRecord]:
        for r in codet_rows(src, humaneval):
            meta: dict[str, Any] = {
                "source": "microsoft/CodeT HumanEval code_solution (CodeGen-Mono-16B)",
                "row": r.row,
                "stops": list(stops),
            }
            if r.task_id is not None:
                meta["codet_prompt"] = r.codet_prompt
                meta["entry_point"] = r.entry_point
            comps: list[RecordedCompletion] = []
            for sample in r.samples:
                cut = cut_at_stops(sample, stops)
                comps.append(
                    RecordedCompletion(
                        text=r.prompt + cut,
                        correct=None,
                        meta={"truncated": len(cut) < len(sample)},
                    )
                )
            yield ReplayRecord(
                task_id=r.task_id or f"codet-{r.row}",
                prompt=r.prompt,
                model="codegen-mono-16b",
                completions=tuple(comps),
                meta=meta,
            )

    return write_replay(dst, records())
