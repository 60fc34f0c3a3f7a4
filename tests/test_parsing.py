"""Parsing structured role output as real models write it."""

from __future__ import annotations

import pytest

from deliberate.roles.parsing import ParseError, coerce_score, extract_json_object
from deliberate.roles.roles import parse_verdict

GOOD = [
    ('{"critique": "fine", "verdict": "correct", "score": 9}', 9.0),
    ('```json\n{"critique": "ok", "verdict": "correct", "score": 8}\n```', 8.0),
    ('Sure! Here is my judgement:\n{"critique": "step 2 wrong", "verdict": "incorrect", '
     '"score": 2,}\nHope that helps.', 2.0),
    ('{"critique": "x", "verdict": "Correct", "score": "7/10"}', 7.0),
    ('{"critique": "brace } in text", "verdict": "incorrect", "score": "3 out of 10"}', 3.0),
]


@pytest.mark.parametrize(("text", "score"), GOOD)
def test_awkward_but_valid_outputs_parse(text: str, score: float) -> None:
    assert parse_verdict(text, (1, 10)).score == score


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think it is correct, 9/10.",
        '{"critique": "cut off", "verdict": "corr',
        '{"critique": "x", "verdict": "maybe", "score": 5}',
        '{"critique": "x", "verdict": "correct", "score": 11}',
        '{"critique": "x", "verdict": "correct", "score": true}',
        '{"critique": "x", "verdict": "correct"}',
    ],
)
def test_bad_outputs_raise_parse_error(text: str) -> None:
    with pytest.raises(ParseError):
        parse_verdict(text, (1, 10))


def test_extract_prefers_first_parseable_object() -> None:
    assert extract_json_object('noise {bad json} then {"a": 1}') == {"a": 1}


def test_coerce_score() -> None:
    assert coerce_score("7.5 out of 10") == 7.5
    with pytest.raises(ParseError):
        coerce_score(None)
