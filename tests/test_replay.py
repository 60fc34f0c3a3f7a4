"""ReplayModel and the recorded-output converters.

The last test is the done-when check: replaying OpenAI's recorded GPT-3 GSM8K
solutions reproduces each column's accuracy and the four-column majority vote,
as computed independently from the raw file.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deliberate.errors import ConfigError, DataError, ModelResponseError
from deliberate.models.base import ChatModel, ChatRequest, Message
from deliberate.models.recorded import (
    GSM8K_SOLUTION_COLUMNS,
    codet_samples_to_replay,
    cut_at_stops,
    gsm8k_column_accuracy,
    gsm8k_final_answer,
    gsm8k_model_solutions_to_replay,
    match_humaneval_prompt,
)
from deliberate.models.replay import (
    RecordedCompletion,
    ReplayModel,
    ReplayRecord,
    count_tokens,
    read_replay,
    write_replay,
)
from deliberate.verifiers.answer import answers_match, extract_answer

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
GSM8K_SOLUTIONS = DATA / "math" / "gsm8k-model-solutions-dev.jsonl.gz"
CODET = DATA / "code" / "codet-humaneval-dev-code_solution.jsonl.gz"
HUMANEVAL = DATA / "code" / "HumanEval.jsonl.gz"


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"needs the shared data file {path} (../shared/data beside the repo)")


def _ask(prompt: str, n: int = 1, offset: int = 0, **kw: Any) -> ChatRequest:
    """A request as a generator would build it: instructions around the task prompt."""
    return ChatRequest(
        messages=(
            Message("system", "You are a careful solver."),
            Message("user", f"Solve the problem below.\n\n{prompt}\n\nShow your work."),
        ),
        n=n,
        sample_offset=offset,
        **kw,
    )


def _pool_record(k: int, task_id: str = "t1", prompt: str = "Add 2 and 3.") -> ReplayRecord:
    return ReplayRecord(
        task_id=task_id,
        prompt=prompt,
        completions=tuple(RecordedCompletion(text=f"answer {i}") for i in range(k)),
    )


def _write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text(
        "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines),
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- file format


def test_reads_both_completion_forms_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write_lines(
        tmp_path / "r.jsonl",
        [
            {"task_id": "a", "prompt": "Question A?", "completions": ["x", "y"], "model": "m"},
            "",
            {
                "prompt": "Question B?",
                "completions": [{"text": "z", "correct": True, "meta": {"k": 1}}],
                "meta": {"source": "test"},
            },
        ],
    )
    a, b = read_replay(path)
    assert a.task_id == "a"
    assert [c.text for c in a.completions] == ["x", "y"]
    assert a.completions[0].correct is None
    assert a.model == "m"
    assert b.task_id is None
    assert b.key.startswith("prompt:")
    assert b.completions[0] == RecordedCompletion("z", True, {"k": 1})
    assert b.meta == {"source": "test"}


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"prompt": "p", "completions": []}), "non-empty list"),
        (json.dumps({"completions": ["x"]}), "needs a 'prompt' or a 'task_id'"),
        (json.dumps({"prompt": "p", "completions": [{"txt": "x"}]}), r"completions\[0\]\.text"),
        (json.dumps({"prompt": "p", "completions": [{"text": "x", "correct": 1}]}), "correct"),
        (json.dumps([1, 2]), "JSON object"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, needle: str) -> None:
    path = _write_lines(tmp_path / "bad.jsonl", [{"prompt": "ok", "completions": ["x"]}, line])
    with pytest.raises(DataError, match=needle) as info:
        ReplayModel.from_path(path)
    assert f"{path}:2:" in str(info.value)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read replay file"):
        read_replay(tmp_path / "nope.jsonl")


def test_gzip_round_trip(tmp_path: Path) -> None:
    records = [_pool_record(3), _pool_record(2, "t2", "Multiply 4 by 5.")]
    path = tmp_path / "r.jsonl.gz"
    assert write_replay(path, records) == 2
    assert read_replay(path) == records
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert first == {
        "task_id": "t1",
        "prompt": "Add 2 and 3.",
        "completions": [{"text": f"answer {i}", "correct": None} for i in range(3)],
    }


def test_duplicate_tasks_and_prompts_are_refused() -> None:
    with pytest.raises(DataError, match="two records for task t1"):
        ReplayModel([_pool_record(1), _pool_record(1, prompt="Other.")])
    with pytest.raises(DataError, match="same prompt"):
        ReplayModel([_pool_record(1), _pool_record(1, "t2")])


def test_bad_options_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        ReplayModel([], order="random")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        ReplayModel([], match="fuzzy")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- serving


async def test_matches_the_prompt_inside_a_larger_message(tmp_path: Path) -> None:
    path = write_replay(tmp_path / "r.jsonl", [_pool_record(3), _pool_record(3, "t2", "Mul 4.")])
    assert path == 2
    model = ReplayModel.from_path(tmp_path / "r.jsonl", seed=1, order="recorded")
    assert isinstance(model, ChatModel)
    assert model.model_id == f"replay:{tmp_path / 'r.jsonl'}?seed=1&order=recorded"
    assert model.profile.supports_n
    resp = await model.complete(_ask("Add   2 and\n3.", n=2, offset=1))
    assert resp.texts == ["answer 1", "answer 2"]
    assert [c.sample_index for c in resp.completions] == [1, 2]
    assert resp.model == model.model_id
    await model.aclose()


async def test_unmatched_prompt_names_its_start() -> None:
    model = ReplayModel([_pool_record(2)])
    long_prompt = "A question nobody recorded, " * 5
    with pytest.raises(ModelResponseError) as info:
        await model.complete(ChatRequest(messages=(Message("user", long_prompt),)))
    msg = str(info.value)
    assert "no recorded completions for prompt" in msg
    assert long_prompt[:60].strip() in msg
    assert long_prompt[:80] not in msg


async def test_exhausted_pool_is_a_clear_error() -> None:
    model = ReplayModel([_pool_record(3)])
    await model.complete(_ask("Add 2 and 3.", n=3))
    with pytest.raises(ModelResponseError) as info:
        await model.complete(_ask("Add 2 and 3.", n=2, offset=2))
    assert str(info.value) == "replay pool for task t1 has only 3 completions; asked for sample 3"


async def test_usage_counts_approximate_tokens() -> None:
    model = ReplayModel([_pool_record(2)])
    req = _ask("Add 2 and 3.", n=2)
    resp = await model.complete(req)
    assert count_tokens("Add 2 and 3.") == 5
    assert [c.completion_tokens for c in resp.completions] == [2, 2]
    assert resp.usage.completion_tokens == 4
    assert resp.usage.prompt_tokens == sum(count_tokens(m.content) + 4 for m in req.messages)


async def test_task_id_matching_reads_extra() -> None:
    record = ReplayRecord(task_id="only-id", completions=(RecordedCompletion("x"),))
    model = ReplayModel([record], match="task_id")
    assert model.model_id.endswith("&match=task_id")
    req = ChatRequest(messages=(Message("user", "anything"),), extra={"task_id": "only-id"})
    assert (await model.complete(req)).texts == ["x"]
    with pytest.raises(ModelResponseError, match="no extra"):
        await model.complete(ChatRequest(messages=(Message("user", "anything"),)))
    with pytest.raises(DataError, match="has no prompt"):
        ReplayModel([record])


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(min_value=-(2**63), max_value=2**63), k=st.integers(1, 40))
def test_samples_are_drawn_without_replacement(seed: int, k: int) -> None:
    """For any seed, sample indices 0..K-1 serve each recorded completion exactly once,
    and sample i is the same whether asked alone or in a batch."""
    model = ReplayModel([_pool_record(k)], seed=seed)
    pool = sorted(f"answer {i}" for i in range(k))

    async def run() -> tuple[list[str], list[str]]:
        batch = await model.complete(_ask("Add 2 and 3.", n=k))
        singles = [
            (await model.complete(_ask("Add 2 and 3.", offset=i))).texts[0]
            for i in reversed(range(k))
        ]
        return batch.texts, singles[::-1]

    batch, singles = asyncio.run(run())
    assert sorted(batch) == pool
    assert singles == batch


async def test_seeded_order_is_deterministic_and_seed_dependent() -> None:
    records = [_pool_record(30)]
    a = await ReplayModel(records, seed=1).complete(_ask("Add 2 and 3.", n=30))
    b = await ReplayModel(records, seed=1).complete(_ask("Add 2 and 3.", n=30))
    c = await ReplayModel(records, seed=2).complete(_ask("Add 2 and 3.", n=30))
    recorded = await ReplayModel(records, order="recorded").complete(_ask("Add 2 and 3.", n=30))
    assert a.texts == b.texts
    assert a.texts != c.texts
    assert recorded.texts == [f"answer {i}" for i in range(30)]
    assert a.texts != recorded.texts
    # Pinned: the permutation must not change between releases (replays stay reproducible).
    assert ReplayModel(records, seed=0).permutation(records[0])[:5] == _PINNED_PERMUTATION


_PINNED_PERMUTATION = [15, 20, 18, 5, 7]


# --------------------------------------------------------------------------- converters (synthetic)


def test_cut_at_stops() -> None:
    body = "    return x\n\ndef helper():\n    pass\n"
    assert cut_at_stops(body) == "    return x\n"
    assert cut_at_stops("    return 1\n# tail\nprint(1)") == "    return 1"
    assert (
        cut_at_stops("    return 1\n    # inline comment ok\n")
        == "    return 1\n    # inline comment ok\n"
    )


def test_match_humaneval_prompt_tolerates_removed_examples() -> None:
    full = 'def add(a, b):\n    """Add.\n    >>> add(1, 2)\n    3\n    """\n'
    trimmed = 'def add(a, b):\n    """Add.\n\n    """\n'
    problems = [
        {"task_id": "HumanEval/53", "entry_point": "add", "prompt": full},
        {"task_id": "Other/1", "entry_point": "sub", "prompt": full.replace("add", "sub")},
    ]
    assert match_humaneval_prompt(trimmed, problems) == "HumanEval/53"
    assert match_humaneval_prompt("def mul(a, b):\n    pass\n", problems) is None
    twice = [*problems, {**problems[0], "task_id": "Dup/1"}]
    assert match_humaneval_prompt(trimmed, twice) is None


def _gz_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def test_codet_conversion_stores_full_programs(tmp_path: Path) -> None:
    codet_prompt = 'def add(a, b):\n    """Add two numbers.\n    """\n'
    he_prompt = 'def add(a, b):\n    """Add two numbers.\n    >>> add(1, 2)\n    3\n    """\n'
    src = _gz_jsonl(
        tmp_path / "codet.jsonl.gz",
        [
            {
                "prompt": codet_prompt,
                "samples": ["    return a + b\n\ndef junk(): pass", "    return a"],
            },
            {"prompt": "def nope():\n", "samples": ["    pass\n"]},
        ],
    )
    he = _gz_jsonl(
        tmp_path / "he.jsonl.gz",
        [{"task_id": "HumanEval/53", "entry_point": "add", "prompt": he_prompt}],
    )
    assert codet_samples_to_replay(src, tmp_path / "out.jsonl", humaneval=he) == 2
    first, second = read_replay(tmp_path / "out.jsonl")
    assert first.task_id == "HumanEval/53"
    assert first.prompt == he_prompt
    assert first.meta["codet_prompt"] == codet_prompt
    assert [c.text for c in first.completions] == [
        he_prompt + "    return a + b\n",
        he_prompt + "    return a",
    ]
    assert [c.meta["truncated"] for c in first.completions] == [True, False]
    assert all(c.correct is None for c in first.completions)
    assert second.task_id == "codet-1"
    assert second.prompt == "def nope():\n"

    assert codet_samples_to_replay(src, tmp_path / "plain.jsonl") == 2
    assert read_replay(tmp_path / "plain.jsonl")[0].task_id == "codet-0"


def test_gsm8k_conversion_on_a_tiny_file(tmp_path: Path) -> None:
    cell = {"solution": "1 + 1 = 2\nA: 2", "is_correct": True}
    wrong = {"solution": "1 + 1 = 3\nA: 3", "is_correct": False}
    row = {
        "question": "What is 1 + 1?",
        "ground_truth": "1 + 1 = <<1+1=2>>2\nA: 2",
        "6b_finetuning": cell,
        "6b_verification": wrong,
        "175b_finetuning": cell,
        "175b_verification": cell,
    }
    src = _gz_jsonl(tmp_path / "g.jsonl.gz", [row])
    assert gsm8k_model_solutions_to_replay(src, tmp_path / "g.jsonl") == 1
    (record,) = read_replay(tmp_path / "g.jsonl")
    assert record.task_id == "gsm8k-test-0"
    assert record.prompt == "What is 1 + 1?"
    assert [c.meta["column"] for c in record.completions] == list(GSM8K_SOLUTION_COLUMNS)
    assert [c.correct for c in record.completions] == [True, False, True, True]
    assert record.meta["answer"] == "2"
    acc = gsm8k_column_accuracy(src)
    assert acc["6b_verification"].labelled_accuracy == 0.0
    assert acc["6b_finetuning"].extracted_accuracy == 1.0
    assert all(a.disagreements == 0 for a in acc.values())

    gsm8k_model_solutions_to_replay(src, tmp_path / "two.jsonl", columns=["175b_finetuning"])
    assert len(read_replay(tmp_path / "two.jsonl")[0].completions) == 1
    broken = _gz_jsonl(tmp_path / "b.jsonl.gz", [{**row, "6b_finetuning": None}])
    with pytest.raises(DataError, match=r"b\.jsonl\.gz:1: field '6b_finetuning'"):
        gsm8k_model_solutions_to_replay(broken, tmp_path / "x.jsonl")


def test_gsm8k_final_answer() -> None:
    assert gsm8k_final_answer("so\nA: $1,200") == "1200"
    assert gsm8k_final_answer("A: 3\nthen\nA: -1.5 billion") == "-3/2"
    assert gsm8k_final_answer("no marker 42") is None


# --------------------------------------------------------------------------- converters (real data)


@pytest.mark.shared_data
def test_codet_conversion_on_the_real_samples(tmp_path: Path) -> None:
    _need(CODET)
    _need(HUMANEVAL)
    assert codet_samples_to_replay(CODET, tmp_path / "codet.jsonl.gz", humaneval=HUMANEVAL) == 82
    records = read_replay(tmp_path / "codet.jsonl.gz")
    ids = [r.task_id for r in records]
    assert all(i is not None and i.startswith("HumanEval/") for i in ids)
    assert len(set(ids)) == 82
    # The CodeT dev half is the first 82 HumanEval ids in *string* order (0, 1, 10, 100, ...).
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as fh:
        all_ids = sorted(json.loads(line)["task_id"] for line in fh)
    assert ids == all_ids[:82]
    assert all(len(r.completions) == 100 for r in records)
    first = records[0]
    assert first.prompt is not None
    assert all(c.text.startswith(first.prompt) for c in first.completions)


@pytest.mark.shared_data
def test_gsm8k_column_accuracy_agrees_with_labels() -> None:
    _need(GSM8K_SOLUTIONS)
    acc = gsm8k_column_accuracy(GSM8K_SOLUTIONS)
    assert list(acc) == list(GSM8K_SOLUTION_COLUMNS)
    for a in acc.values():
        assert a.total == 660
        assert a.disagreements == 0
        assert a.labelled_correct == a.extracted_correct


# --------------------------------------------------------------------------- done-when check

_INDEPENDENT_A = re.compile(r"^\s*A:\s*(.*)$")
_INDEPENDENT_NUM = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def _independent_answer(text: str) -> Fraction | None:
    """The test's own parser: first number on the last line that starts with 'A:'."""
    answer = None
    for line in text.splitlines():
        m = _INDEPENDENT_A.match(line)
        if m:
            answer = m.group(1)
    if answer is None:
        return None
    num = _INDEPENDENT_NUM.search(answer.replace("$", ""))
    return Fraction(num.group(0).replace(",", "")) if num else None


# Expected figures (also in docs/replay-format.md), out of 660 problems.
EXPECTED_COLUMN_CORRECT = {
    "6b_finetuning": 146,
    "6b_verification": 266,
    "175b_finetuning": 225,
    "175b_verification": 371,
}
EXPECTED_MAJORITY_CORRECT = 288


@pytest.mark.shared_data
async def test_done_when_replay_reproduces_gsm8k_recorded_accuracy(tmp_path: Path) -> None:
    """Column accuracy and majority vote through ReplayModel == independent computation.

    Majority vote over the four columns: answers that cannot be parsed do not vote;
    the answer with the most votes wins; a tie goes to the tied answer that appears
    first in column order (6b_finetuning, 6b_verification, 175b_finetuning,
    175b_verification), i.e. the earliest sample index. Both computations use that rule.
    """
    _need(GSM8K_SOLUTIONS)
    replay_path = tmp_path / "gsm8k-solutions.replay.jsonl"
    assert gsm8k_model_solutions_to_replay(GSM8K_SOLUTIONS, replay_path) == 660

    with gzip.open(GSM8K_SOLUTIONS, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    cols = list(GSM8K_SOLUTION_COLUMNS)

    # Independent: the file's own labels, and the test's own parser for the vote.
    indep_columns = {c: sum(bool(r[c]["is_correct"]) for r in rows) for c in cols}
    indep_majority = 0
    for r in rows:
        parsed = [_independent_answer(r[c]["solution"]) for c in cols]
        votes = Counter(a for a in parsed if a is not None)
        if not votes:
            continue
        top = max(votes.values())
        best = next(a for a in parsed if a is not None and votes[a] == top)
        indep_majority += best == _independent_answer(r["ground_truth"])

    # Through the replay model, as a self-consistency strategy would see it.
    model = ReplayModel.from_path(replay_path, order="recorded")
    replay_columns = dict.fromkeys(cols, 0)
    replay_majority = 0
    for r in rows:
        resp = await model.complete(_ask(r["question"], n=4, temperature=0.7))
        reference = extract_answer(r["ground_truth"])
        answers = [
            extract_answer(c.text) for c in sorted(resp.completions, key=lambda c: c.sample_index)
        ]
        for col, ans in zip(cols, answers, strict=True):
            replay_columns[col] += answers_match(ans, reference)
        groups: list[list[Any]] = []  # [representative answer, votes], in first-seen order
        for ans in answers:
            if ans is None:
                continue
            for g in groups:
                if answers_match(ans, g[0]):
                    g[1] += 1
                    break
            else:
                groups.append([ans, 1])
        if groups:
            winner = max(groups, key=lambda g: g[1])[0]  # max keeps the first of equals
            replay_majority += answers_match(winner, reference)
    await model.aclose()

    print("\nGSM8K recorded GPT-3 solutions (dev half, 660 problems)")
    for col in cols:
        print(f"  {col:<18} {replay_columns[col]:>4}/660 = {replay_columns[col] / 660:.1%}")
    print(f"  {'majority of 4':<18} {replay_majority:>4}/660 = {replay_majority / 660:.1%}")

    assert replay_columns == indep_columns
    assert replay_majority == indep_majority
    assert replay_columns == EXPECTED_COLUMN_CORRECT
    assert replay_majority == EXPECTED_MAJORITY_CORRECT
