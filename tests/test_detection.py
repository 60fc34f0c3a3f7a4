"""Detection metrics: the matching rule, exact counts, and robust reading of findings."""

from __future__ import annotations

import json

import pytest

from deliberate.tasks.task import Task
from deliberate.verifiers.detection import (
    DetectionVerifier,
    Label,
    Prediction,
    labels_of,
    match_findings,
    normalise_category,
    normalise_function,
    precision_recall_f1,
    read_findings,
)

SOURCE = "\n".join([
    "contract Bank {",                                 # 1
    "  mapping(address => uint) balances;",            # 2
    "  function deposit() payable {",                  # 3
    "    balances[msg.sender] += msg.value;",          # 4
    "  }",                                             # 5
    "  function withdraw(uint amount) {",              # 6
    "    require(balances[msg.sender] >= amount);",    # 7
    "    msg.sender.call.value(amount)();",            # 8
    "    balances[msg.sender] -= amount;",             # 9
    "  }",                                             # 10
    "  function kill() { selfdestruct(msg.sender); }",  # 11
    "}",
])

TASK = Task(id="bank", prompt=SOURCE, kind="findings", metadata={"findings": [
    {"category": "reentrancy", "lines": [8], "function": "withdraw"},
    {"category": "arithmetic", "lines": [4]},  # function derived from the source
    {"category": "access_control", "lines": [11], "function": "kill"},
]})


@pytest.mark.parametrize(("text", "category"), [
    ("Reentrancy", "reentrancy"),
    ("Re-entrancy attack", "reentrancy"),
    ("reentrancy through an unchecked call", "reentrancy"),
    ("Integer overflow", "arithmetic"),
    ("integer underflow in balance", "arithmetic"),
    ("ARITHMETIC", "arithmetic"),
    ("Unchecked send", "unchecked_low_level_calls"),
    ("Unchecked call return value", "unchecked_low_level_calls"),
    ("UNCHECKED_LL_CALLS", "unchecked_low_level_calls"),
    ("unchecked_low_level_calls", "unchecked_low_level_calls"),
    ("tx.origin authentication", "access_control"),
    ("Missing access control", "access_control"),
    ("Unprotected selfdestruct", "access_control"),
    ("Wrong constructor name", "access_control"),
    ("DoS with block gas limit", "denial_of_service"),
    ("Denial of service", "denial_of_service"),
    ("Predictable randomness from block.timestamp", "bad_randomness"),
    ("Timestamp dependence", "time_manipulation"),
    ("TIME MANIPULATION", "time_manipulation"),
    ("Front-running", "front_running"),
    ("Transaction order dependence", "front_running"),
    ("Short address attack", "short_addresses"),
    ("Uninitialized storage pointer", "other"),
    ("Gas optimisation", None),
    ("", None),
])
def test_category_names_and_synonyms(text: str, category: str | None) -> None:
    assert normalise_category(text) == category


def test_function_names_are_normalised() -> None:
    assert normalise_function("Bank.withdraw(uint256)") == {"withdraw"}
    assert normalise_function("function withdraw(uint x)") == {"withdraw"}
    assert normalise_function("deposit, withdraw") == {"deposit", "withdraw"}
    assert normalise_function("function()") == {"fallback"}
    assert normalise_function("") == set()
    assert normalise_function(None) == set()


def test_labels_take_the_function_from_the_source() -> None:
    labels = labels_of(TASK)
    assert labels is not None
    assert [lab.functions for lab in labels] == [
        frozenset({"withdraw"}), frozenset({"deposit"}), frozenset({"kill"})]
    assert labels_of(Task(id="x", prompt="p")) is None


async def verify(text: str, tolerance: int = 2) -> tuple[bool | None, float | None,
                                                        dict[str, float], str]:
    res = await DetectionVerifier(tolerance).verify(TASK, text, text)
    return res.passed, res.score, dict(res.metrics), res.details


async def test_exact_counts_by_function_and_by_line() -> None:
    preds = [
        {"function_name": "withdraw", "vulnerability": "Reentrancy"},   # tp by function
        {"vulnerability": "integer overflow", "lines": [5]},           # tp by line (4 ± 2)
        {"function_name": "kill", "vulnerability": "Reentrancy"},       # fp: wrong category
        {"function_name": "withdraw", "vulnerability": "Re-entrancy"},  # fp: label used up
    ]
    passed, score, m, details = await verify(json.dumps(preds))
    assert m == {"tp": 2, "fp": 2, "fn": 1}
    assert passed is False  # a false positive fails the item
    assert score == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert "missed: access_control at line 11" in details


async def test_line_tolerance_boundary() -> None:
    at_edge = json.dumps([{"vulnerability": "reentrancy", "lines": [10]}])  # 8 + 2
    beyond = json.dumps([{"vulnerability": "reentrancy", "lines": [11]}])   # 8 + 3
    assert (await verify(at_edge))[2]["tp"] == 1
    assert (await verify(beyond))[2]["tp"] == 0
    assert (await verify(beyond, tolerance=3))[2]["tp"] == 1


async def test_passed_means_something_found_and_nothing_false() -> None:
    one_right = json.dumps([{"function": "kill", "category": "access_control"}])
    passed, score, m, _ = await verify(one_right)
    assert passed is True and m == {"tp": 1, "fp": 0, "fn": 2}
    assert score == pytest.approx(0.5)
    passed, score, m, _ = await verify("[]")
    assert passed is False and m == {"tp": 0, "fp": 0, "fn": 3} and score == 0.0
    no_labels = Task(id="clean", prompt=SOURCE, kind="findings", metadata={"findings": []})
    res = await DetectionVerifier().verify(no_labels, "[]", "[]")
    assert res.passed is True and res.score == 1.0
    res = await DetectionVerifier().verify(Task(id="x", prompt="p"), "[]", "[]")
    assert res.passed is None and res.score is None


def test_maximum_matching_beats_greedy() -> None:
    # Prediction 0 fits both labels, prediction 1 only label 0: greedy in order would
    # give prediction 0 label 0 and leave prediction 1 unmatched.
    labels = [Label("reentrancy", (8,), frozenset({"withdraw"})),
              Label("reentrancy", (30,), frozenset({"cashout"}))]
    preds = [Prediction("reentrancy", frozenset({"withdraw", "cashout"})),
             Prediction("reentrancy", frozenset({"withdraw"}))]
    assert match_findings(preds, labels) == [(0, 1), (1, 0)]


@pytest.mark.parametrize("text", [
    'Here is what I found:\n```json\n[{"function_name": "withdraw", "vulnerability": '
    '"Reentrancy"},]\n```\nThanks.',
    '{"findings": [{"function": "withdraw", "type": "reentrancy"}]}',
    'Findings: [{"function_name": "Bank.withdraw(uint)", "vulnerability": "re-entrancy"}] done',
    '{"output_list": [{"function_name": "withdraw", "vulnerability": "Reentrancy"}]}',
])
async def test_findings_are_read_robustly(text: str) -> None:
    _, _, m, _ = await verify(text)
    assert m == {"tp": 1, "fp": 0, "fn": 2}


async def test_unreadable_candidate_finds_nothing() -> None:
    passed, score, m, details = await verify("I think withdraw is reentrant.")
    assert read_findings("I think withdraw is reentrant.") is None
    assert passed is False and score == 0.0 and m == {"tp": 0, "fp": 0, "fn": 3}
    assert "no JSON list" in details


def test_precision_recall_f1() -> None:
    p, r, f1 = precision_recall_f1(3, 1, 2)
    assert (p, r) == (0.75, 0.6) and f1 == pytest.approx(6 / 9)
    assert precision_recall_f1(0, 0, 2) == (None, 0.0, 0.0)
    assert precision_recall_f1(0, 2, 0) == (0.0, None, 0.0)
    assert precision_recall_f1(0, 0, 0) == (None, None, None)
    p, r, f1 = precision_recall_f1(2, 2, 2)
    assert p == r == f1 == 0.5
