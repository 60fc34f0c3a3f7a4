"""Done-when 6 through the whole engine: replayed GSM8K solutions, voted by self-consistency."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

from deliberate import RunConfig
from deliberate.engine.runner import arun
from deliberate.models.recorded import gsm8k_model_solutions_to_replay
from tests.conftest import shared_data

COLUMNS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")


def independent_figures(path: Path) -> tuple[dict[str, float], float]:
    """Column accuracy from the file's own labels; majority vote by our own parsing."""
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    col_acc = {c: sum(r[c]["is_correct"] for r in rows) / len(rows) for c in COLUMNS}

    def final(text: str) -> str | None:
        lines = [ln for ln in text.splitlines() if ln.strip().startswith("A:")]
        if not lines:
            return None
        m = re.search(r"-?\d[\d,]*(?:\.\d+)?", lines[-1])
        return m.group(0).replace(",", "").rstrip(".") if m else None

    def num(s: str) -> float:
        return float(s.replace(",", ""))

    right = 0
    for r in rows:
        answers = [final(r[c]["solution"]) for c in COLUMNS]
        votes = Counter(a for a in answers if a is not None)
        if not votes:
            continue
        top = max(votes.values())
        winner = next(a for a in answers if a is not None and votes[a] == top)  # first seen
        gold = final("A: " + str(r["ground_truth"])) or ""
        right += abs(num(winner) - num(gold)) < 1e-6
    return col_acc, right / len(rows)


async def test_replayed_gsm8k_vote_matches_an_independent_count(tmp_path: Path) -> None:
    src = shared_data("math/gsm8k-model-solutions-dev.jsonl.gz")
    replay = tmp_path / "gsm8k.jsonl"
    gsm8k_model_solutions_to_replay(src, replay)
    cfg = RunConfig(suite=f"gsm8k:{src}", model=f"replay:{replay}?order=recorded",
                    strategy="self_consistency", strategy_params={"n": 4},
                    store=str(tmp_path / "s.db"), concurrency=64, cache=False)
    res = await arun(cfg)
    col_acc, vote_acc = independent_figures(src)
    assert res.summary["tasks"] == 660
    assert abs(res.summary["accuracy"] - vote_acc) < 1e-9
    # every candidate is graded: the single-sample accuracy is the mean column accuracy
    assert abs(res.summary["sample_accuracy"] - sum(col_acc.values()) / 4) < 1e-9
    assert res.summary["paid_calls"] == 660  # one n=4 request per problem
