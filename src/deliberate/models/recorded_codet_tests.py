"""CodeT's recorded model-written tests for HumanEval → a replay file for the test writer.

``code/codet-humaneval-dev-test_case.jsonl.gz`` holds, per HumanEval prompt, 100
completions that CodeGen-Mono-16B wrote after a prompt ending ``# check the
correctness of NAME`` and ``assert `` — so each sample continues an ``assert``
statement. Many are empty or junk (about 43% are blank; most others hold no
complete assert); that is what the model wrote and the replay keeps it.

The records are matched to HumanEval exactly like the code samples
(:func:`deliberate.models.recorded.match_humaneval_prompt`) and carry the HumanEval
prompt, which the ``test_writer`` template quotes, so a replay model built on the
file answers the test writer's requests for HumanEval tasks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deliberate.models.recorded import codet_rows
from deliberate.models.replay import RecordedCompletion, ReplayRecord, write_replay

__all__ = ["CODET_TEST_PREFIX", "codet_tests_to_replay"]

CODET_TEST_PREFIX = "assert "
"""What CodeT's test prompt ends with: each recorded sample continues it."""

# CodeT's test prompt is its code prompt plus a stub body and the test preamble.
_TEST_TAIL = re.compile(r"\n[ \t]+pass[ \t]*\n\s*# check the correctness of \w+\s*\nassert\s*$")


def _code_prompt(test_prompt: str) -> str:
    """The function prompt inside CodeT's test prompt (for matching to HumanEval)."""
    m = _TEST_TAIL.search(test_prompt)
    return test_prompt[: m.start()] + "\n" if m else test_prompt


def codet_tests_to_replay(src: str | Path, dst: str | Path,
                          humaneval: str | Path | None = None) -> int:
    """CodeT's recorded test sets → replay file; returns the number of records.

    Per CodeT row: ``task_id`` is the HumanEval id when ``humaneval`` is given and
    exactly one problem matches (else ``codet-tests-<row>``); ``prompt`` is the
    HumanEval prompt when matched (else CodeT's); each completion's ``text`` is
    ``"assert " + sample``, the test set as the model wrote it, unlabelled.
    """
    def records() -> Iterator[ReplayRecord]:
        for r in codet_rows(src, humaneval, match_text=_code_prompt):
            meta: dict[str, Any] = {
                "source": "microsoft/CodeT HumanEval test_case (CodeGen-Mono-16B)",
                "row": r.row,
                "codet_prompt": r.codet_prompt,
            }
            if r.task_id is not None:
                meta["entry_point"] = r.entry_point
            yield ReplayRecord(
                task_id=r.task_id or f"codet-tests-{r.row}",
                prompt=r.prompt,
                model="codegen-mono-16b",
                completions=tuple(RecordedCompletion(CODET_TEST_PREFIX + x) for x in r.samples),
                meta=meta,
            )

    return write_replay(dst, records())
