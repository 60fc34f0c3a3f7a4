"""Parsing structured role output as real models write it."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel

from deliberate import FunctionModel, Task
from deliberate.config import RoleConfig
from deliberate.models.base import ChatModel, ChatRequest, ChatResponse, ModelProfile, ModelWrapper
from deliberate.models.registry import build_model
from deliberate.models.sim import SimParams
from deliberate.models.sim.server import ServerConfig, SimServer
from deliberate.parsing import (
    ParseError,
    coerce_score,
    extract_json_array,
    extract_json_object,
    json_values,
    parse_structured,
    strict_json_schema,
)
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Critic, Judge, Verdict, parse_verdict
from deliberate.tasks import load_suite

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


# --------------------------------------------------------------- generic structured parsing


class Finding(BaseModel):
    id: str
    severity: int


class Report(BaseModel):
    findings: list[Finding]
    summary: str = ""


def test_extract_json_array_from_prose_and_fences() -> None:
    assert extract_json_array('Found:\n```json\n[1, 2,]\n```') == [1, 2]
    assert extract_json_array('{"a": 1} and then [{"b": 2}]') == [{"b": 2}]
    with pytest.raises(ParseError, match="no JSON array"):
        extract_json_array('{"a": 1}')
    with pytest.raises(ParseError, match="empty"):
        extract_json_array("")


def test_parse_structured_takes_the_first_value_that_fits_the_model() -> None:
    text = 'noise {"id": "x"} then {"findings": [{"id": "F1", "severity": "7"}]} end'
    report = parse_structured(text, Report)
    assert report == Report(findings=[Finding(id="F1", severity=7)])
    # a list target reads arrays, including one nested in a wrapper object
    assert parse_structured(text, list[Finding]) == [Finding(id="F1", severity=7)]


def test_parse_structured_reports_the_first_invalid_candidate() -> None:
    with pytest.raises(ParseError, match=r"field 'findings.0.severity'"):
        parse_structured('{"findings": [{"id": "F1", "severity": "high"}]}', Report)
    with pytest.raises(ParseError, match="cut off"):
        parse_structured('{"findings": [{"id": "F1", "sev', Report)


def test_parse_structured_passes_context_to_validators() -> None:
    text = '{"critique": "", "verdict": "correct", "score": "4/5"}'
    assert parse_structured(text, Verdict, context={"scale": (1, 5)}).score == 4.0
    with pytest.raises(ParseError, match="not on the scale"):
        parse_structured(text, Verdict, context={"scale": (1, 10)})
    # without a scale the ratio's numerator is taken as is
    assert Verdict.model_validate_json(text).score == 4.0


def test_json_values_reads_in_order_and_skips_thinking() -> None:
    text = "<think>{\"draft\": 1}</think> ```json\n{\"a\": 1}\n``` and [2, 3]"
    assert list(json_values(text)) == [{"a": 1}, [2, 3]]


def test_coerce_score_refuses_what_is_not_one_number() -> None:
    assert coerce_score(" 8.5/10 ", (1, 10)) == 8.5
    assert coerce_score("7 OUT OF 10") == 7.0
    for bad in ("7 apples", "", "about 7", float("inf"), float("nan"), [7], {"v": 7}, True):
        with pytest.raises(ParseError):
            coerce_score(bad)


# --------------------------------------------------------------- JSON-schema response format


def test_strict_schema_requires_every_field_and_nothing_else() -> None:
    schema = strict_json_schema(Verdict)
    assert schema["type"] == "object"
    assert sorted(schema["required"]) == ["critique", "score", "verdict"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["verdict"]["enum"] == ["correct", "incorrect"]
    assert "default" not in json.dumps(schema) and "title" not in schema
    nested = strict_json_schema(Report)
    inner = nested["$defs"]["Finding"]
    assert inner["additionalProperties"] is False and sorted(inner["required"]) == ["id",
                                                                                      "severity"]


GOOD_VERDICT = '{"critique": "ok", "verdict": "correct", "score": 8}'


@pytest.mark.parametrize("role", [Judge, Critic])
async def test_judge_sends_json_schema_only_where_the_profile_supports_it(
        role: type[Judge]) -> None:
    task = Task(id="t", prompt="2+2?", kind="math", answer="4")
    replies = iter(["no json here", GOOD_VERDICT])
    able = FunctionModel(lambda r, i: next(replies),
                         profile=ModelProfile(supports_json_schema=True))
    res = await role(able, RoleConfig(), Prompts(), 0).judge(task, "Answer: 4")
    assert res.verdict is not None and res.repaired
    assert len(able.requests) == 2
    for req in able.requests:  # the repair request asks for the same schema
        fmt = req.response_format
        assert fmt is not None and fmt["type"] == "json_schema"
        assert fmt["json_schema"]["strict"] is True
        assert fmt["json_schema"]["schema"] == strict_json_schema(Verdict)
        assert fmt["json_schema"]["name"] == "verdict"
    unable = FunctionModel(lambda r, i: GOOD_VERDICT)
    await role(unable, RoleConfig(), Prompts(), 0).judge(task, "Answer: 4")
    assert [r.response_format for r in unable.requests] == [None]


class Recording(ModelWrapper):
    def __init__(self, inner: ChatModel) -> None:
        super().__init__(inner)
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest) -> ChatResponse:
        self.requests.append(request)
        return await self.inner.complete(request)


async def test_judge_with_json_schema_through_the_openai_client_against_sim_server() -> None:
    suite = load_suite("arithmetic")
    task = suite.tasks[0]
    with SimServer(suite, SimParams(), ServerConfig()) as srv:
        for flag, expect_format in (("true", True), ("false", False)):
            model = Recording(build_model(f"openai:sim@{srv.base_url}?json_schema={flag}"))
            try:
                judge = Judge(model, RoleConfig(temperature=0.0), Prompts(), 0)
                res = await judge.judge(task, f"Answer: {task.answer}")
            finally:
                await model.aclose()
            assert res.verdict is not None, res.error
            assert 1 <= res.verdict.score <= 10
            sent = [r.response_format is not None for r in model.requests]
            assert sent == [expect_format] * len(model.requests)
