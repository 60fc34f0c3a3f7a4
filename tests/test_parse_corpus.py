"""The parser against a recorded corpus of awkward model replies (tests/data/awkward_outputs).

Every reply either parses to exactly the recorded values or, through the real Judge
role, ends as a recorded parse failure after exactly one repair request that shows
the model the parse error. Nowhere does a failure turn into a default score.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from deliberate import FunctionModel, RunConfig, Store, Suite, Task
from deliberate.config import RoleConfig
from deliberate.engine.runner import arun
from deliberate.models.base import ChatRequest
from deliberate.parsing import ParseError, parse_structured
from deliberate.roles.prompts import Prompts
from deliberate.roles.roles import Judge, parse_verdict

CORPUS = Path(__file__).parent / "data" / "awkward_outputs"
EXPECTED: dict[str, dict[str, Any]] = {
    k: v for k, v in json.loads((CORPUS / "expected.json").read_text("utf-8")).items()
    if not k.startswith("_")
}
SCALE = (1.0, 10.0)
TASK = Task(id="t", prompt="Maila read 12 pages yesterday and twice as many today. "
                           "How many has she read?", kind="math", answer="36")


class Finding(BaseModel):
    """A finding as an auditor role might return it (shape of the findings cases)."""

    id: str
    category: str
    line: int
    description: str


def reply(name: str) -> str:
    return (CORPUS / name).read_text(encoding="utf-8")


def cases(shape: str) -> list[str]:
    return sorted(k for k, v in EXPECTED.items() if v.get("shape", "verdict") == shape)


def test_every_recorded_reply_has_an_expectation_and_back() -> None:
    files = {p.name for p in CORPUS.glob("*.txt")}
    assert files == set(EXPECTED)
    assert len(files) >= 45
    for name, e in EXPECTED.items():
        assert ("parsed" in e) != ("failure" in e), name
    # the corpus holds both outcomes in numbers
    assert sum("failure" in e for e in EXPECTED.values()) >= 15
    assert sum("parsed" in e for e in EXPECTED.values()) >= 25


@pytest.mark.parametrize("name", cases("verdict"))
def test_verdict_reply_parses_exactly_or_fails(name: str) -> None:
    expect = EXPECTED[name]
    if "parsed" in expect:
        assert parse_verdict(reply(name), SCALE).model_dump() == expect["parsed"]
    else:
        with pytest.raises(ParseError) as err:
            parse_verdict(reply(name), SCALE)
        assert expect["failure"] in str(err.value)


@pytest.mark.parametrize("name", cases("findings"))
def test_findings_reply_parses_exactly_or_fails(name: str) -> None:
    expect = EXPECTED[name]
    if "parsed" in expect:
        got = parse_structured(reply(name), list[Finding])
        assert [f.model_dump() for f in got] == expect["parsed"]
    else:
        with pytest.raises(ParseError) as err:
            parse_structured(reply(name), list[Finding])
        assert expect["failure"] in str(err.value)


def make_judge(model: FunctionModel) -> Judge:
    return Judge(model, RoleConfig(temperature=0.0), Prompts(), 0, scale=SCALE)


@pytest.mark.parametrize("name", cases("verdict"))
async def test_judge_role_on_each_reply(name: str) -> None:
    """The model repeats the same reply when asked to repair: one call when it parses,
    exactly two (the repair showing the error) when it does not."""
    text = reply(name)
    model = FunctionModel(lambda r, i: text)
    res = await make_judge(model).judge(TASK, "12 + 24 = 36\nAnswer: 36")
    expect = EXPECTED[name]
    if "parsed" in expect:
        assert len(model.requests) == 1
        assert res.verdict is not None and res.error is None and not res.repaired
        assert res.verdict.model_dump() == expect["parsed"]
        return
    assert len(model.requests) == 2
    assert res.verdict is None  # a recorded failure, no score of any kind
    assert res.error is not None and expect["failure"] in res.error
    first_error = _error_of(text)
    repair = model.requests[1]
    assert repair.messages[-2].role == "assistant" and repair.messages[-2].content == text
    assert repair.messages[-1].role == "user" and first_error in repair.messages[-1].content
    assert repair.tags.get("repair") == "1"
    assert repair.messages[:-2] == model.requests[0].messages


def _error_of(text: str) -> str:
    try:
        parse_verdict(text, SCALE)
    except ParseError as exc:
        return str(exc)
    raise AssertionError("expected a parse failure")


@pytest.mark.parametrize("bad", [n for n in cases("verdict") if "failure" in EXPECTED[n]][:6])
async def test_judge_repairs_once_from_a_failure_to_a_verdict(bad: str) -> None:
    good = '{"critique": "fixed", "verdict": "incorrect", "score": 4}'
    model = FunctionModel(lambda r, i: good if len(r.messages) > 2 else reply(bad))
    res = await make_judge(model).judge(TASK, "Answer: 35")
    assert len(model.requests) == 2
    assert res.repaired and res.verdict is not None
    assert (res.verdict.verdict, res.verdict.score, res.verdict.critique) == ("incorrect", 4, "fixed")


async def test_engine_records_every_corpus_reply_as_score_or_parse_failure(tmp_path: Path) -> None:
    """Through the engine: candidate i is judged with corpus reply i; the tree holds
    the recorded score for parsed replies and a score-less parse_failure otherwise."""
    names = cases("verdict")

    def script(r: ChatRequest, i: int) -> str:
        content = r.messages[-1].content if len(r.messages) <= 2 else r.messages[1].content
        if "<candidate>" in content:
            m = re.search(r"Answer: (\d+)", content)
            assert m is not None
            return reply(names[int(m.group(1))])
        return f"Answer: {i}"

    cfg = RunConfig.model_validate({
        "model": "scripted", "store": str(tmp_path / "s.db"), "cache": False, "suite": "one",
        "strategy": "best_of_n", "strategy_params": {"n": len(names)}, "verifier": "none",
    })
    model = FunctionModel(script)
    res = await arun(cfg, models={"scripted": model}, suite=Suite.of("one", [TASK]))
    failures = sum("failure" in EXPECTED[n] for n in names)
    assert len(model.requests) == 1 + len(names) + failures  # one repair per failure
    st = Store.open(str(tmp_path / "s.db"))
    async with st:
        nodes, judgements = await st.load_tree(res.run_id, "t")
    answer_of = {n.id: n.answer for n in nodes}
    judged = {int(answer_of[j.node_id] or -1): j for j in judgements if j.role == "judge"}
    assert sorted(judged) == list(range(len(names)))
    for k, name in enumerate(names):
        j, expect = judged[k], EXPECTED[name]
        if "parsed" in expect:
            assert (j.verdict, j.score) == (expect["parsed"]["verdict"], expect["parsed"]["score"])
        else:
            assert j.verdict == "parse_failure" and j.score is None, name
            assert expect["failure"] in (j.critique or "")
