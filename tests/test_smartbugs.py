"""The SmartBugs-curated loader: labels kept, answers hidden, line numbers still true."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from deliberate.errors import DataError
from deliberate.tasks import load_suite
from deliberate.tasks.smartbugs import (
    enclosing_function,
    load_smartbugs,
    solidity_functions,
    strip_comments,
    strip_labels,
)
from deliberate.tasks.task import FINDING_CATEGORIES, Suite
from tests.conftest import shared_data

FOLDER = "contracts/smartbugs-curated"


@pytest.fixture(scope="module")
def suite() -> Suite:
    return load_smartbugs(shared_data(FOLDER))


@pytest.fixture(scope="module")
def index() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads(
        (shared_data(FOLDER) / "vulnerabilities.json").read_text())
    return data


def test_every_contract_and_label_is_loaded(suite: Suite, index: list[dict[str, object]]) -> None:
    assert len(suite) == 143 == len(index)
    findings = [f for t in suite for f in t.metadata["findings"]]
    # 207 labelled vulnerabilities covering 222 lines (a few span several lines).
    assert len(findings) == 207
    assert sum(len(f["lines"]) for f in findings) == 222
    by_category = Counter(f["category"] for f in findings)
    expected = Counter(str(v["category"]) for e in index
                       for v in e["vulnerabilities"])  # type: ignore[attr-defined]
    assert by_category == expected
    assert set(by_category) == set(FINDING_CATEGORIES)
    assert all(t.kind == "findings" for t in suite)
    assert all(0.25 <= t.difficulty <= 0.9 for t in suite)


def test_no_prompt_gives_the_answer_away(suite: Suite) -> None:
    for t in suite:
        assert "<yes>" not in t.prompt and "<report>" not in t.prompt, t.id
        assert "@vulnerable_at_lines" not in t.prompt, t.id
        assert "@source" not in t.prompt, t.id


def test_labelled_lines_still_point_at_the_vulnerable_statement(suite: Suite) -> None:
    root = shared_data(FOLDER)
    checked = 0
    for t in suite:
        original = (root / t.metadata["path"]).read_text(encoding="utf-8").split("\n")
        shown = t.prompt.split("\n")
        assert len(shown) == len(original), t.id
        marked = {i + 2 for i, line in enumerate(original) if "<yes> <report>" in line}
        labelled = {ln for f in t.metadata["findings"] for ln in f["lines"]}
        # each marker comment sits just above a labelled line
        assert marked <= labelled, t.id
        for ln in labelled:
            statement = shown[ln - 1].strip()
            assert statement == original[ln - 1].strip(), (t.id, ln)
            assert statement and not statement.startswith(("//", "/*", "*")), (t.id, ln)
            checked += 1
    assert checked >= 207


def test_task_ids_and_functions(suite: Suite) -> None:
    dao = suite.get("reentrancy/simple_dao")
    assert dao.metadata["findings"] == [
        {"category": "reentrancy", "lines": [19], "function": "withdraw"}]
    assert "msg.sender.call.value(amount)()" in dao.prompt.split("\n")[18]
    rubixi = suite.get("access_control/rubixi")
    assert rubixi.metadata["findings"][0]["function"] == "DynamicPyramid"
    # a label on a state variable has no enclosing function
    raffle = suite.get("bad_randomness/etheraffle")
    assert {"category": "bad_randomness", "lines": [49]} in raffle.metadata["findings"]
    with_fn = [f for t in suite for f in t.metadata["findings"] if "function" in f]
    assert len(with_fn) >= 200
    # the same file name in two categories gives two tasks
    assert len({t.id for t in suite}) == 143
    assert sum(t.id.endswith("0x627fa62ccbb1c1b04ffaecd72a53e37fc0e17839") for t in suite) == 2


def test_suite_spec_and_limit() -> None:
    path = shared_data(FOLDER)
    s = load_suite(f"smartbugs:{path}", limit=5)
    assert len(s) == 5 and all(t.kind == "findings" for t in s)
    assert load_suite(f"smartbugs:{path / 'vulnerabilities.json'}").tasks[0].id == s.tasks[0].id


def test_missing_folder_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"vulnerabilities\.json"):
        load_smartbugs(tmp_path)


def test_small_folder_round_trip(tmp_path: Path) -> None:
    src = (
        "/*\n * @source: https://example.org/reentrancy-demo\n * @author: someone\n"
        " * @vulnerable_at_lines: 9\n */\n"
        "contract Demo {\n"
        "  function pay() public {\n"
        "    // <yes> <report> REENTRANCY\n"
        "    msg.sender.call.value(1)();\n"
        "  }\n"
        "}\n"
    )
    (tmp_path / "dataset" / "reentrancy").mkdir(parents=True)
    (tmp_path / "dataset" / "reentrancy" / "demo.sol").write_text(src)
    (tmp_path / "vulnerabilities.json").write_text(json.dumps([{
        "name": "demo.sol", "path": "dataset/reentrancy/demo.sol",
        "vulnerabilities": [{"lines": [9], "category": "reentrancy"}]}]))
    (task,) = load_smartbugs(tmp_path).tasks
    assert task.id == "reentrancy/demo"
    assert task.metadata["findings"] == [{"category": "reentrancy", "lines": [9],
                                          "function": "pay"}]
    assert "reentrancy" not in task.prompt.lower()
    assert task.prompt.split("\n")[8].strip() == "msg.sender.call.value(1)();"
    (tmp_path / "vulnerabilities.json").write_text(json.dumps([{
        "path": "dataset/reentrancy/demo.sol",
        "vulnerabilities": [{"lines": [99], "category": "reentrancy"}]}]))
    with pytest.raises(DataError, match="outside the file"):
        load_smartbugs(tmp_path)


def test_strip_labels_blanks_and_reports_lines() -> None:
    text, blanked = strip_labels("a\n// <yes> <report> ARITHMETIC\nb\n * @author: x\nc")
    assert text == "a\n\nb\n\nc" and blanked == [2, 4]


def test_strip_comments_keeps_lines_and_strings() -> None:
    src = ('contract A {   /* one\n two */  uint x;\t\t// note\n'
           '  string s = "http://not-a-comment";  // end\n'
           "  string t = 'it''s /* not */';\n}")
    out = strip_comments(src)
    assert out.count("\n") == src.count("\n")
    lines = out.split("\n")
    assert lines[0] == "contract A {"
    assert lines[1] == "uint x;"
    assert lines[2] == 'string s = "http://not-a-comment";'
    assert "/* not */" in lines[3]
    assert strip_comments(out) == out


def test_function_scanner_on_awkward_source() -> None:
    src = "\n".join([
        "interface I { function f() external; }",          # 1: no body
        "contract C {",                                       # 2
        "  modifier only() { require(msg.sender == o); _; }",  # 3
        "  string s = \"function fake() { }\";",              # 4: inside a string
        "  // function commented() { }",                      # 5
        "  function apply(function(uint) external g) public {",  # 6: function-type param
        "    if (true) { g(1); }",                            # 7
        "  }",                                                # 8
        "  function () payable {",                            # 9: old fallback
        "    x = 1;",                                         # 10
        "  }",                                                # 11
        "  constructor() public { o = msg.sender; }",         # 12
        "}",
    ])
    fns = solidity_functions(src)
    assert [(f.name, f.start, f.end) for f in fns] == [
        ("only", 3, 3), ("apply", 6, 8), ("fallback", 9, 11), ("constructor", 12, 12)]
    assert enclosing_function(fns, 7) == "apply"
    assert enclosing_function(fns, 10) == "fallback"
    assert enclosing_function(fns, 4) is None
    assert not re.search(r"fake|commented", " ".join(f.name for f in fns))
