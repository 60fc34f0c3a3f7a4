"""Loaders and the suite registry: generic files with field mappings, benchmark formats,
clear errors for bad data, and the real benchmark files in ../shared/data."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import deliberate.tasks as tasks_pkg
from deliberate.errors import (
    ConfigError,
    DataError,
    MissingDependencyError,
    UnknownNameError,
    UsageError,
)
from deliberate.tasks import (
    FieldMapping,
    Suite,
    load_gsm8k,
    load_humaneval,
    load_json,
    load_jsonl,
    load_mbpp_plus,
    load_parquet,
    load_suite,
)
from deliberate.verifiers.answer import extract_answer

SHARED = Path(__file__).parents[1].parent / "shared" / "data"


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_public_names_exist() -> None:
    for name in tasks_pkg.__all__:
        assert hasattr(tasks_pkg, name), name


# --------------------------------------------------------------------------- generic JSONL


def test_jsonl_default_mapping_and_metadata(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "mine.jsonl",
        [
            {"id": "a", "prompt": "2+2?", "answer": 4, "level": "easy"},
            {"prompt": "Name a colour.", "kind": "text", "metadata": {"difficulty": 0.3}},
        ],
    )
    suite = load_jsonl(path, kind="math")
    assert suite.name == "mine"
    first, second = suite.tasks
    assert (first.id, first.kind, first.answer) == ("a", "math", "4")
    assert dict(first.metadata) == {"level": "easy"}
    assert second.id == "mine-1", "a missing id is <suite>-<0-based row index>"
    assert second.kind == "text"
    assert second.difficulty == 0.3
    assert dict(second.metadata) == {"difficulty": 0.3}


def test_jsonl_field_mapping_with_dotted_paths(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "nested.jsonl",
        [
            {
                "uid": 17,
                "q": {"text": "What is 6*7?", "hints": ["think", "multiply"]},
                "gold": {"final": "42"},
                "source": "quiz",
            }
        ],
    )
    mapping = FieldMapping(id="uid", prompt="q.text", answer="gold.final", system=None)
    task = load_jsonl(path, mapping, kind="math", name="quiz").tasks[0]
    assert (task.id, task.prompt, task.answer) == ("17", "What is 6*7?", "42")
    # Only columns consumed whole leave the metadata; nested parents stay.
    assert task.metadata["source"] == "quiz"
    assert "uid" not in task.metadata
    assert task.metadata["q"]["hints"] == ["think", "multiply"]

    as_dict = load_jsonl(path, {"prompt": "q.hints.1", "id": "uid"}).tasks[0]
    assert as_dict.prompt == "multiply"


def test_field_mapping_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="field mapping"):
        load_jsonl("unused.jsonl", {"promt": "question"})
    with pytest.raises(ConfigError, match="dotted path"):
        load_jsonl("unused.jsonl", {"prompt": "a..b"})


def test_jsonl_gzip_is_transparent(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "z.jsonl.gz", [{"prompt": "hi"}])
    suite = load_jsonl(path)
    assert suite.name == "z"
    assert suite.tasks[0].prompt == "hi"


def test_blank_lines_are_skipped_and_lines_counted(tmp_path: Path) -> None:
    path = tmp_path / "gaps.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n\n{"id": 3}\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"gaps\.jsonl, line 5: missing prompt \(column 'prompt'\)"):
        load_jsonl(path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "x",}', r"bad\.jsonl, line 2: invalid JSON"),
        ('["not", "an", "object"]', r"bad\.jsonl, line 2: expected an object, got a list"),
        ('{"prompt": ""}', r"bad\.jsonl, line 2: prompt .* must be non-empty text"),
        ('{"prompt": 5}', r"bad\.jsonl, line 2: prompt .* got a number"),
        (
            '{"prompt": "x", "answer": {"a": 1}}',
            r"line 2: answer \(column 'answer'\) .* got an object",
        ),
        ('{"prompt": "x", "kind": "poetry"}', r"line 2: unknown kind 'poetry'"),
        ('{"id": "one", "prompt": "x"}', r"line 2: duplicate task id 'one' \(first at line 1\)"),
    ],
)
def test_malformed_row_is_one_clear_error(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": "one", "prompt": "fine"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_jsonl(path)


def test_text_fields_accept_numbers_and_string_lists(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "t.jsonl",
        [{"prompt": "p", "answer": 2.5, "tests": ["assert f(1) == 1", "assert f(2) == 2"]}],
    )
    task = load_jsonl(path, kind="code").tasks[0]
    assert task.answer == "2.5"
    assert task.tests == "assert f(1) == 1\nassert f(2) == 2"


def test_invalid_utf8_reports_the_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin\.jsonl, line 2: not valid UTF-8"):
        load_jsonl(path)


def test_bad_kind_argument_is_a_config_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "k.jsonl", [{"prompt": "p"}])
    with pytest.raises(ConfigError, match="unknown task kind 'maths'"):
        load_jsonl(path, kind="maths")


def test_not_gzip_despite_suffix(tmp_path: Path) -> None:
    path = tmp_path / "fake.jsonl.gz"
    path.write_text('{"prompt": "x"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="not valid gzip data"):
        load_jsonl(path)


# --------------------------------------------------------------------------- JSON


def test_json_list_and_object_forms(tmp_path: Path) -> None:
    rows = [{"question": "q1", "label": "A"}, {"question": "q2", "label": "B"}]
    mapping = {"prompt": "question", "answer": "label"}

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(rows), encoding="utf-8")
    suite = load_json(plain, mapping, kind="choice")
    assert [t.answer for t in suite] == ["A", "B"]
    assert [t.id for t in suite] == ["plain-0", "plain-1"]

    wrapped = tmp_path / "wrapped.json.gz"
    wrapped.write_bytes(gzip.compress(json.dumps({"version": 2, "data": rows}).encode()))
    assert len(load_json(wrapped, mapping)) == 2

    two = tmp_path / "two.json"
    two.write_text(json.dumps({"train": rows, "test": rows[:1]}), encoding="utf-8")
    with pytest.raises(DataError, match=r"name the key .* 'train', 'test'"):
        load_json(two, mapping)
    assert len(load_json(two, mapping, key="test")) == 1
    with pytest.raises(DataError, match="no key 'dev'"):
        load_json(two, mapping, key="dev")


def test_json_errors_name_line_and_item(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n {"prompt": "a"},\n {"prompt": }\n]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.json, line 3: invalid JSON"):
        load_json(broken)

    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps([{"prompt": "a"}, {"q": "b"}]), encoding="utf-8")
    with pytest.raises(DataError, match=r"missing\.json, item 2: missing prompt"):
        load_json(missing)

    scalar = tmp_path / "scalar.json"
    scalar.write_text("42", encoding="utf-8")
    with pytest.raises(DataError, match="expected a list of rows, got a number"):
        load_json(scalar)


# --------------------------------------------------------------------------- Parquet


def test_parquet_round_trip(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"problem": ["1+1?", "2+3?"], "solution_value": [2, 5], "tag": ["x", "y"]})
    path = tmp_path / "math.parquet"
    pq.write_table(table, path)
    suite = load_parquet(path, {"prompt": "problem", "answer": "solution_value"}, kind="math")
    assert suite.name == "math"
    assert [(t.id, t.answer, t.metadata["tag"]) for t in suite] == [
        ("math-0", "2", "x"),
        ("math-1", "5", "y"),
    ]
    table = pa.table({"problem": ["ok", None]})
    pq.write_table(table, path)
    with pytest.raises(DataError, match=r"math\.parquet, row 2: missing prompt"):
        load_parquet(path, {"prompt": "problem"})


def test_parquet_garbage_is_a_data_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="not a valid Parquet file"):
        load_parquet(path)


def test_parquet_without_pyarrow_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingDependencyError, match=r'pip install "deliberate\[parquet\]"'):
        load_parquet(tmp_path / "any.parquet")


# --------------------------------------------------------------------------- benchmark formats
# Small rows in each benchmark's shape, written for these tests.

_HE_ROW = {
    "task_id": "Demo/0",
    "prompt": 'def double(x: int) -> int:\n    """Twice x."""\n',
    "canonical_solution": "    return 2 * x\n",
    "test": "\n\ndef check(candidate):\n    assert candidate(3) == 6\n",
    "entry_point": "double",
}


def test_humaneval_format(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "he.jsonl", [_HE_ROW])
    task = load_humaneval(path).tasks[0]
    assert task.kind == "code"
    assert task.solution == _HE_ROW["prompt"] + _HE_ROW["canonical_solution"]
    assert task.tests is not None
    assert task.tests.endswith("\ncheck(double)\n")
    assert task.entry_point == "double"

    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"task_id": "x", "prompt": "p"}])
    with pytest.raises(
        DataError, match=r"bad\.jsonl, line 1: missing 'canonical_solution', 'test', 'entry_point'"
    ):
        load_humaneval(bad)


def test_mbpp_plus_format(tmp_path: Path) -> None:
    row = {
        "task_id": "Demo/1",
        "prompt": '"""\nWrite a function that adds two numbers.\nassert add(1, 2) == 3\n"""\n',
        "entry_point": "add",
        "canonical_solution": "\ndef add(a: int, b: int = 0) -> int:\n    return a + b\n",
        "assertion": "\nassert add(2, 2) == 4\nassert math.isclose(add(0.5, 0.25), 0.75)\n",
        "atol": 0,
        "base_input": [[1, 2]],
        "plus_input": [[3, 4]],
    }
    path = _write_jsonl(tmp_path / "mbpp.jsonl", [row])
    task = load_mbpp_plus(path).tasks[0]
    assert task.prompt == textwrap.dedent(
        '''\
        def add(a: int, b: int=0) -> int:
            """Write a function that adds two numbers.

            >>> add(2, 2)
            4
            """
        '''
    )
    assert task.tests is not None
    assert task.tests.startswith("import math\nassert add(2, 2) == 4")
    assert task.solution == str(row["canonical_solution"]).lstrip("\n")
    assert dict(task.metadata) == {"atol": 0}
    assert load_mbpp_plus(path, with_inputs=True).tasks[0].metadata["plus_input"] == [[3, 4]]

    row["canonical_solution"] = "def plus(a, b):\n    return a + b\n"
    _write_jsonl(path, [row])
    with pytest.raises(DataError, match="line 1: canonical_solution defines no function 'add'"):
        load_mbpp_plus(path)


def test_gsm8k_formats(tmp_path: Path) -> None:
    train = _write_jsonl(
        tmp_path / "gsm8k-train.jsonl",
        [
            {
                "question": "Ann has 3 bags of 4 pears. How many pears?",
                "answer": "She has 3*4 = <<3*4=12>>12 pears.\nThat is 12 pears.\n#### 1,200",
            }
        ],
    )
    task = load_gsm8k(train).tasks[0]
    assert task.id == "gsm8k-train-0"
    assert task.answer == "1200"
    assert task.solution == "She has 3*4 = 12 pears.\nThat is 12 pears.\nAnswer: 1200"
    assert task.metadata["steps"] == 2

    model = _write_jsonl(
        tmp_path / "solutions.jsonl",
        [
            {
                "question": "q",
                "ground_truth": "2 + 2 = <<2+2=4>>4\nA: 4",
                "175b_verification": {"solution": "A: 5", "is_correct": False},
            }
        ],
    )
    task = load_gsm8k(model).tasks[0]
    assert (task.id, task.answer, task.solution) == ("gsm8k-test-0", "4", "2 + 2 = 4\nAnswer: 4")
    assert task.metadata["175b_verification"]["is_correct"] is False

    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(DataError, match="line 1: no final-answer line"):
        load_gsm8k(bad)


# --------------------------------------------------------------------------- registry


def test_registry_builtins_and_limit() -> None:
    assert len(load_suite("arithmetic", limit=5)) == 5
    assert len(load_suite("python", limit=0)) == 0
    assert len(load_suite("solidity", limit=100)) == 6
    with pytest.raises(ConfigError, match="0 or more"):
        load_suite("arithmetic", limit=-1)


def test_registry_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(UnknownNameError) as info:
        load_suite("arithmetics")
    message = str(info.value)
    for name in ("arithmetic", "python", "solidity", "humaneval", "mbpp_plus", "gsm8k", "jsonl"):
        assert name in message
    assert isinstance(info.value, UsageError)


def test_registry_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=r"cannot read suite file .*nope\.jsonl: No such file"):
        load_suite(str(missing))
    with pytest.raises(DataError, match="No such file"):
        load_suite(f"humaneval:{missing}")
    with pytest.raises(ConfigError, match="give a file after 'gsm8k:'"):
        load_suite("gsm8k:")


def test_registry_paths_resolve_against_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    _write_jsonl(tmp_path / "sub" / "mine.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    _write_jsonl(tmp_path / "sub" / "zipped.jsonl.gz", [{"prompt": "a"}])
    (tmp_path / "list.json").write_text(json.dumps([{"prompt": "c"}]), encoding="utf-8")
    _write_jsonl(tmp_path / "he.data", [_HE_ROW])

    assert len(load_suite("sub/mine.jsonl")) == 2
    assert len(load_suite("sub/mine.jsonl", limit=1)) == 1
    assert load_suite("sub/zipped.jsonl.gz").name == "zipped"
    assert load_suite("list.json").tasks[0].prompt == "c"
    assert load_suite("jsonl:sub/mine.jsonl").name == "mine"
    assert load_suite("json:list.json").name == "list"
    assert load_suite("humaneval:he.data").tasks[0].id == "Demo/0"
    with pytest.raises(UnknownNameError):
        load_suite("he.data")


def test_registry_parquet_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.chdir(tmp_path)
    pq.write_table(pa.table({"prompt": ["a", "b", "c"]}), tmp_path / "p.parquet")
    assert [t.id for t in load_suite("p.parquet")] == ["p-0", "p-1", "p-2"]
    assert len(load_suite("parquet:p.parquet", limit=2)) == 2


# --------------------------------------------------------------------------- real files

needs_shared = pytest.mark.shared_data


def _shared(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"shared data not found: {path} (the ../shared/data folder is missing)")
    return path


def _run_all(programs: dict[str, str], tmp_path: Path) -> list[str]:
    """Run each program in its own namespace inside one child interpreter; ids that fail.

    The programs are benchmark references, so one child process for all of them is
    enough isolation here, and keeps the test fast.
    """
    driver = textwrap.dedent(
        """
        import json, sys
        failed = []
        for task_id, source in json.load(sys.stdin).items():
            try:
                exec(compile(source, task_id, "exec"), {"__name__": "__check__"})
            except BaseException as exc:
                failed.append(f"{task_id}: {type(exc).__name__}: {exc}"[:300])
        print(json.dumps(failed))
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-W", "ignore", "-c", driver],
        input=json.dumps(programs),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result: list[str] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@needs_shared
def test_real_humaneval(tmp_path: Path) -> None:
    suite = load_suite(f"humaneval:{_shared('code/HumanEval.jsonl.gz')}")
    assert isinstance(suite, Suite)
    assert len(suite) == 164
    first = suite.get("HumanEval/0")
    assert first.entry_point == "has_close_elements"
    assert first.tests is not None
    assert first.tests.endswith("check(has_close_elements)\n")
    programs = {t.id: f"{t.solution}\n{t.tests}" for t in suite}
    assert _run_all(programs, tmp_path) == []


@needs_shared
def test_real_mbpp_plus(tmp_path: Path) -> None:
    import ast

    suite = load_suite(f"mbpp_plus:{_shared('code/MbppPlus-v0.2.0.jsonl.gz')}")
    assert len(suite) == 378
    for task in suite:
        assert task.entry_point
        assert task.tests
        assert task.prompt.startswith(f"def {task.entry_point}(")
        assert ">>> " in task.prompt
        ast.parse(task.prompt + "    pass\n")
    assert suite.get("Mbpp/120").tests.startswith("import math\n")  # type: ignore[union-attr]
    programs = {t.id: f"{t.solution}\n{t.tests}" for t in suite}
    assert _run_all(programs, tmp_path) == []


@needs_shared
def test_real_gsm8k_train() -> None:
    suite = load_suite(f"gsm8k:{_shared('math/gsm8k-train.jsonl.gz')}")
    assert len(suite) == 7473
    expected = {
        "gsm8k-train-0": "72",
        "gsm8k-train-1": "10",
        "gsm8k-train-345": "1080",
        "gsm8k-train-5715": "-7",
        "gsm8k-train-7472": "50",
    }
    for task_id, answer in expected.items():
        assert suite.get(task_id).answer == answer
    first = suite.get("gsm8k-train-0")
    assert first.prompt.startswith("Natalia sold clips")
    assert "<<" not in (first.solution or "")
    for task in suite:
        assert task.kind == "math"
        assert extract_answer(task.solution or "") == task.answer, task.id


@needs_shared
def test_real_gsm8k_model_solutions() -> None:
    suite = load_suite(f"gsm8k:{_shared('math/gsm8k-model-solutions-dev.jsonl.gz')}")
    assert len(suite) == 660
    assert [t.id for t in suite][:2] == ["gsm8k-test-0", "gsm8k-test-1"]
    assert suite.tasks[-1].id == "gsm8k-test-659"
    janet = suite.get("gsm8k-test-0")
    assert janet.answer == "18"
    assert janet.prompt.startswith("Janet")
    assert set(janet.metadata) >= {"6b_finetuning", "175b_verification"}
    assert isinstance(janet.metadata["175b_verification"]["is_correct"], bool)
    for task in suite:
        assert extract_answer(task.solution or "") == task.answer, task.id
